#!/usr/bin/env bash
# Regenerates docs/status-page.png: the live status page (`/`) of a local
# 3-node cluster under a little load (and `dev --demo`), with one node stopped so the picture
# shows what a degraded cluster looks like. Needs Debian's `chromium`.
#
#   bash docs/screenshot.sh            # uses target/release/inflight (built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v chromium >/dev/null || { echo "needs chromium: apt-get install chromium" >&2; exit 1; }
BIN=${INFLIGHT_BIN:-target/release/inflight}
[ -x "$BIN" ] || cargo build --release
DIR=$(mktemp -d)
"$BIN" dev --demo --dir "$DIR/cluster" --grpc-port 7101 --http-port 8101 >"$DIR/dev.out" 2>&1 &
DEV=$!
trap 'kill $DEV 2>/dev/null || true; wait $DEV 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do grep -q "leader: node" "$DIR/dev.out" && break; sleep 0.2; done
grep -q "leader: node" "$DIR/dev.out" || { cat "$DIR/dev.out"; exit 1; }
E=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
# A little traffic: calls ringing, answered, completed.
( for i in $(seq 1 400); do
    "$BIN" --endpoints $E insert "call/$i" '{"status":"ringing"}' >/dev/null
    "$BIN" --endpoints $E update "call/$i" '{"status":"answered"}' >/dev/null
    [ $((i % 3)) = 0 ] && "$BIN" --endpoints $E complete "call/$i" >/dev/null
  done ) &
LOAD=$!
sleep 6
# Stop node 3 so the page shows a degraded cluster.
pkill -f -- "--data-dir $DIR/cluster/node-3" || true
sleep 4
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,900 \
    --virtual-time-budget=12000 --screenshot="$PWD/docs/status-page.png" http://127.0.0.1:8101/ 2>/dev/null
kill $LOAD 2>/dev/null || true
echo "wrote docs/status-page.png"

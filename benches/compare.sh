#!/usr/bin/env bash
# Side-by-side benchmark: a 3-node inflight cluster (disk durability), a
# 3-node etcd cluster and one Redis server, all on loopback on this machine,
# driven by the same closed-loop load generator (benches/load) in one run.
# Writes a markdown report to stdout and to BENCHMARKS.md.
#
# usage: benches/compare.sh [--duration SECS] [--clients N] [--workloads LIST]
#                           [--connections N] [--records N] [--failover-rounds N]
#                           [--out FILE]
#   --workloads  comma-separated subset of insert,update,get,lifecycle,mixed,memory,failover
#                (default: all)
#
# Needs etcd (Debian: etcd-server) and redis-server (Debian: redis-server);
# installs them with apt-get when run as root, else says what to install.
# Everything it starts is stopped when it exits, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=10
CLIENTS=64
CONNECTIONS=8
WORKLOADS=insert,update,get,lifecycle,mixed,memory,failover
RECORDS=1000000
ROUNDS=10
OUT=BENCHMARKS.md
COMMAND="benches/compare.sh $*"
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --clients) CLIENTS=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        --records) RECORDS=$2; shift 2 ;;
        --failover-rounds) ROUNDS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
has() { case ",$WORKLOADS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# --- prerequisites -----------------------------------------------------------
missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 \
            || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2; }
    else
        echo "compare.sh needs ${missing[*]}: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

echo "== building (release)" >&2
cargo build --release --locked -p inflight -p inflight-load >&2
INFLIGHT=$ROOT/target/release/inflight
LOAD=$ROOT/target/release/inflight-load

WORK=$(mktemp -d /tmp/inflight-compare.XXXXXX)
RESULTS=$WORK/results
mkdir -p "$RESULTS"
PIDS=()
cleanup() {
    # Keep the raw results (JSON per run) for a look after the fact.
    rm -rf "$ROOT/target/compare-last" && cp -r "$RESULTS" "$ROOT/target/compare-last" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    for f in "$WORK"/inflight/node-*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A block of free loopback ports.
BASE=$(( 31000 + (RANDOM % 200) * 40 ))
port() { echo $(( BASE + $1 )); }

# --- inflight: 3 nodes, disk durability, file sink ------------------------------
# Started through `inflight dev --node ID`, which becomes that node's
# `inflight serve` with the arguments `dev` gives it (one shared file sink in
# $WORK/inflight/postflight), so this script builds no serve flags itself and
# the failover run can kill and restart single nodes by pid.
IF_EPS=""
for i in 1 2 3; do
    IF_EPS="$IF_EPS${IF_EPS:+,}127.0.0.1:$(port $i)"
done
mkdir -p "$WORK/inflight"
cat > "$WORK/inflight/start-node.sh" <<EOF
#!/usr/bin/env bash
# Starts (or restarts) inflight node \$1 in the background; its pid goes to node-\$1.pid.
id=\$1
setsid "$INFLIGHT" dev --nodes 3 --dir "$WORK/inflight" --durability disk \\
    --grpc-port $(port 1) --http-port $(port 11) --node "\$id" < /dev/null &
echo \$! > "$WORK/inflight/node-\$id.pid"
EOF
chmod +x "$WORK/inflight/start-node.sh"
for i in 1 2 3; do "$WORK/inflight/start-node.sh" $i; done

# --- etcd: 3 members ---------------------------------------------------------
ETCD_EPS=""
ETCD_CLUSTER=""
for i in 1 2 3; do
    ETCD_EPS="$ETCD_EPS${ETCD_EPS:+,}127.0.0.1:$(port $((20 + i)))"
    ETCD_CLUSTER="$ETCD_CLUSTER${ETCD_CLUSTER:+,}e$i=http://127.0.0.1:$(port $((30 + i)))"
done
mkdir -p "$WORK/etcd"
for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$WORK/etcd/e$i" \
        --listen-client-urls "http://127.0.0.1:$(port $((20 + i)))" \
        --advertise-client-urls "http://127.0.0.1:$(port $((20 + i)))" \
        --listen-peer-urls "http://127.0.0.1:$(port $((30 + i)))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$(port $((30 + i)))" \
        --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new \
        --initial-cluster-token inflight-bench --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) \
        > "$WORK/etcd/e$i.log" 2>&1 < /dev/null &
    PIDS+=($!)
done

# --- Redis: one server, no persistence ----------------------------------------
REDIS_PORT=$(port 39)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --logfile "$WORK/redis.log" < /dev/null &
PIDS+=($!)
REDIS_EP=127.0.0.1:$REDIS_PORT

wait_until() { # what, command...
    local what=$1; shift
    for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "compare.sh: $what did not come up; logs in $WORK" >&2
    tail -n 20 "$WORK"/inflight/*.log "$WORK"/etcd/*.log "$WORK"/redis.log >&2 || true
    exit 1
}
inflight_ready() { "$INFLIGHT" --endpoints "$IF_EPS" status --json | python3 -c \
    'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["leader"] and all(m["reachable"] for m in s["members"]) else 1)'; }
etcd_ready() { for i in 1 2 3; do curl -sf "http://127.0.0.1:$(port $((20 + i)))/health" | grep -q '"health":"true"' || return 1; done; }
redis_ready() { redis-cli -p "$REDIS_PORT" ping | grep -q PONG; }
wait_until "inflight" inflight_ready
wait_until "etcd" etcd_ready
wait_until "redis" redis_ready
echo "== all three systems are up (work dir $WORK)" >&2

run() { # system endpoints workload read
    local sys=$1 eps=$2 wl=$3 read=$4
    echo "== $sys $wl ($read), ${DURATION}s, $CLIENTS clients" >&2
    "$LOAD" run --system "$sys" --endpoints "$eps" --workload "$wl" --read "$read" \
        --clients "$CLIENTS" --connections "$CONNECTIONS" --duration "${DURATION}s" \
        --json "$RESULTS/$sys-$wl-$read.json" > /dev/null
}

for wl in insert update lifecycle mixed; do
    has $wl || continue
    run inflight "$IF_EPS" $wl linearizable
    run etcd "$ETCD_EPS" $wl linearizable
    run redis "$REDIS_EP" $wl linearizable
done
if has get; then
    for r in linearizable lease stale; do run inflight "$IF_EPS" get $r; done
    for r in linearizable serializable; do run etcd "$ETCD_EPS" get $r; done
    run redis "$REDIS_EP" get linearizable
fi

rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status"; }
if has memory; then
    echo "== memory: $RECORDS records, 38-byte keys, 256-byte values" >&2
    declare -A before
    for i in 1 2 3; do before[$i]=$(rss "$(cat "$WORK/inflight/node-$i.pid")"); done
    "$LOAD" fill --system inflight --endpoints "$IF_EPS" --records "$RECORDS" \
        --clients "$CLIENTS" --connections "$CONNECTIONS" > "$RESULTS/fill-inflight.json"
    # Let followers apply everything before reading their RSS.
    wait_until "inflight followers to catch up" python3 -c "
import json, subprocess, sys
s = json.loads(subprocess.check_output(['$INFLIGHT', '--endpoints', '$IF_EPS', 'status', '--json']))
sys.exit(0 if all(m.get('lag') == 0 for m in s['members']) else 1)"
    {
        echo '{"records":'"$RECORDS"',"nodes":['
        for i in 1 2 3; do
            after=$(rss "$(cat "$WORK/inflight/node-$i.pid")")
            echo "{\"node\":$i,\"rss_before\":${before[$i]},\"rss_after\":$after}$([ $i -lt 3 ] && echo ,)"
        done
        echo ']}'
    } > "$RESULTS/memory-inflight.json"
    redis_used() { redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ {gsub("\r",""); print $2}'; }
    redis_pid=$(redis-cli -p "$REDIS_PORT" info server | awk -F: '/^process_id:/ {gsub("\r",""); print $2}')
    r_before=$(redis_used); r_rss_before=$(rss "$redis_pid")
    "$LOAD" fill --system redis --endpoints "$REDIS_EP" --records "$RECORDS" \
        --clients "$CLIENTS" --connections "$CONNECTIONS" > "$RESULTS/fill-redis.json"
    r_after=$(redis_used); r_rss_after=$(rss "$redis_pid")
    echo "{\"records\":$RECORDS,\"used_before\":$r_before,\"used_after\":$r_after,\"rss_before\":$r_rss_before,\"rss_after\":$r_rss_after}" \
        > "$RESULTS/memory-redis.json"
fi

if has failover; then
    echo "== failover: kill -9 the leader under write load, $ROUNDS times" >&2
    "$LOAD" failover --endpoints "$IF_EPS" --pid-dir "$WORK/inflight" \
        --restart-cmd "$WORK/inflight/start-node.sh {id}" --rounds "$ROUNDS" \
        > "$RESULTS/failover.json"
fi

# --- report -------------------------------------------------------------------
ETCD_VERSION=$(etcd --version | sed -n 1p)
REDIS_VERSION=$(redis-server --version | awk '{print $3}')
INFLIGHT_VERSION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo -dirty)"
MODEL=$(lscpu | sed -n 's/^Model name: *//p' | sed -n 1p)
MACHINE="$(nproc) cores ($MODEL), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, $(uname -sr)"
python3 "$ROOT/benches/report.py" "$RESULTS" \
    --command "$COMMAND" --machine "$MACHINE" --duration "$DURATION" --clients "$CLIENTS" \
    --connections "$CONNECTIONS" --versions "inflight $INFLIGHT_VERSION; $ETCD_VERSION; Redis $REDIS_VERSION" \
    | tee "$OUT"
echo "== wrote $OUT" >&2

#!/usr/bin/env bash
# Side-by-side benchmark: a 3-node inflight cluster (disk durability), a
# 3-node etcd cluster and one Redis server, all on loopback on this machine,
# driven by the same closed-loop load generator (benches/load) in one run;
# optionally a second 3-node inflight cluster with memory durability.
# Writes a markdown report to stdout and to BENCHMARKS.md (or --out).
#
# usage: benches/compare.sh [--duration SECS] [--clients N] [--workloads LIST]
#                           [--connections N] [--records N] [--failover-rounds N]
#                           [--cpus-per-node CORES] [--out FILE]
#   --cpus-per-node  hold every server process (each inflight node, each etcd
#                member, Redis) to CORES cores with a CPU quota of its own
#                (cgroup cpu controller), as if each ran on a host of that
#                size; default: no quota, all share the machine's cores
#   --workloads  comma-separated subset of (default: all)
#       insert      new keys, on all three systems; also CPU per insert: the
#                   three server processes (/proc/PID/stat) plus the load
#                   generator, for inflight and etcd
#       update      existing keys, on all three systems
#       get         inflight linearizable, lease, stale; etcd linearizable,
#                   serializable; Redis GET
#       spread      inflight linearizable gets sent to any member (follower
#                   reads) next to the leader only, on the 3-node cluster and
#                   on a 5-node one (started for these runs only); etcd
#                   linearizable gets (its clients spread over the members)
#       lifecycle   insert, 3 updates, complete, on all three systems
#       mixed       90% linearizable get, 10% update, on all three systems
#       single      one client on one connection, one op at a time: insert
#                   and linearizable get, inflight (disk) and etcd (its leader)
#       memory-durability
#                   a second 3-node inflight cluster, --durability memory,
#                   running those of insert,update,get,lifecycle,mixed that are
#                   selected (all five if none is); up only for its own runs
#       resp        redis-benchmark (the same binary and flags for both: SET
#                   and GET, 256-byte values, 1,000,000 random keys, --clients
#                   connections, -P 1 and -P 16) against the inflight
#                   leader's RESP port and against Redis
#       memory      memory per record: --records records into inflight and Redis
#       failover    kill -9 the inflight leader under writes, --failover-rounds times
#
# Needs etcd (Debian: etcd-server) and redis-server (Debian: redis-server);
# installs them with apt-get when run as root, else says what to install.
# Everything it starts is stopped when it exits, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=10
CPUS_PER_NODE=
CLIENTS=64
CONNECTIONS=8
ALL_WORKLOADS=insert,update,get,spread,lifecycle,mixed,single,resp,memory-durability,memory,failover
WORKLOADS=$ALL_WORKLOADS
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
        --cpus-per-node) CPUS_PER_NODE=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for wl in ${WORKLOADS//,/ }; do
    case ",$ALL_WORKLOADS," in
        *",$wl,"*) ;;
        *) echo "compare.sh: unknown workload $wl (one of $ALL_WORKLOADS)" >&2; exit 2 ;;
    esac
done
has() { case ",$WORKLOADS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
# The workloads the memory-durability cluster runs.
MEM_WORKLOADS=()
if has memory-durability; then
    for wl in insert update get lifecycle mixed; do has $wl && MEM_WORKLOADS+=($wl); done
    [ ${#MEM_WORKLOADS[@]} -gt 0 ] || MEM_WORKLOADS=(insert update get lifecycle mixed)
fi

# --- prerequisites -----------------------------------------------------------
missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
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

# --- --cpus-per-node: one CPU quota per server process -------------------------
# Each capped process gets a cgroup of its own (cgroup v1 `cpu`, or v2),
# named CGROUP_BASE-NAME; start-node.sh caps the inflight nodes it starts.
CGROUP_BASE=
CGROUP_KIND=
if [ -n "$CPUS_PER_NODE" ]; then
    CPU_QUOTA_US=$(python3 -c 'import sys; v = float(sys.argv[1]); print(int(v * 100000) if 0 < v <= 64 else "")' \
        "$CPUS_PER_NODE" 2>/dev/null || true)
    [ -n "$CPU_QUOTA_US" ] || { echo "compare.sh: --cpus-per-node: a number of cores, e.g. 0.5" >&2; exit 2; }
    if [ -f /sys/fs/cgroup/cpu/cgroup.procs ] && [ -w /sys/fs/cgroup/cpu ]; then
        CGROUP_KIND=v1
        CGROUP_BASE=/sys/fs/cgroup/cpu/inflight-compare-$$
    elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null && [ -w /sys/fs/cgroup ]; then
        CGROUP_KIND=v2
        CGROUP_BASE=/sys/fs/cgroup/inflight-compare-$$
        echo +cpu > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    else
        echo "compare.sh: --cpus-per-node needs a writable cgroup cpu controller (run as root)" >&2
        exit 2
    fi
fi
# cap_cpu NAME PID: hold PID (every thread of it) to --cpus-per-node cores.
cap_cpu() {
    [ -n "$CGROUP_BASE" ] || return 0
    local dir=$CGROUP_BASE-$1
    mkdir -p "$dir"
    if [ "$CGROUP_KIND" = v1 ]; then
        echo 100000 > "$dir/cpu.cfs_period_us"
        echo "$CPU_QUOTA_US" > "$dir/cpu.cfs_quota_us"
    else
        echo "$CPU_QUOTA_US 100000" > "$dir/cpu.max"
    fi
    echo "$2" > "$dir/cgroup.procs"
}

WORK=$(mktemp -d /tmp/inflight-compare.XXXXXX)
RESULTS=$WORK/results
mkdir -p "$RESULTS"
PIDS=()      # every etcd and Redis process
ETCD_PIDS=() # the etcd members' pids, in member order (also in PIDS)
cleanup() {
    # Keep the raw results (JSON per run) for a look after the fact.
    rm -rf "$ROOT/target/compare-last" && cp -r "$RESULTS" "$ROOT/target/compare-last" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    # Both inflight clusters (disk: $WORK/inflight, memory: $WORK/inflight-memory).
    for f in "$WORK"/inflight*/node-*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$CGROUP_BASE" ]; then
        sleep 0.5
        for d in "$CGROUP_BASE"-*; do [ -d "$d" ] && rmdir "$d" 2>/dev/null || true; done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A block of free loopback ports: inflight (disk) +1..3 gRPC, +5..7 peer,
# +11..13 HTTP; etcd +21..23 client, +31..33 peer; Redis +39; inflight
# (memory) +41..43 gRPC, +45..47 peer, +51..53 HTTP; inflight (5 nodes, the
# spread runs) +14..18 gRPC, +24..28 peer, +34..38 HTTP; RESP ports of the
# inflight clusters: disk +48..50, memory +8..10, 5 nodes +54..58.
# Below Linux's ephemeral range (32768-60999 by default): a listener there
# can find its port taken by an outgoing connection of an earlier run's
# clients, and the cluster does not come up.
BASE=$(( 20000 + (RANDOM % 210) * 60 ))
port() { echo $(( BASE + $1 )); }

# --- inflight: 3 nodes, disk durability, file sink ------------------------------
# Started through `inflight dev --node ID`, which becomes that node's
# `inflight serve` with the arguments `dev` gives it (one shared file sink in
# DIR/postflight), so this script builds no serve flags itself, the failover
# run can kill and restart single nodes by pid, and the pid in DIR/node-ID.pid
# is the server's own (for its CPU time).
inflight_cluster() { # dir durability grpc-port http-port peer-port resp-port [nodes]: writes dir/start-node.sh
    local dir=$1 durability=$2 grpc=$3 http=$4 peer=$5 resp=$6 nodes=${7:-3} cap=":"
    mkdir -p "$dir"
    if [ -n "$CGROUP_BASE" ]; then
        cap="d=$CGROUP_BASE-$(basename "$dir")-\$id; mkdir -p \$d"
        if [ "$CGROUP_KIND" = v1 ]; then
            cap="$cap; echo 100000 > \$d/cpu.cfs_period_us; echo $CPU_QUOTA_US > \$d/cpu.cfs_quota_us"
        else
            cap="$cap; echo '$CPU_QUOTA_US 100000' > \$d/cpu.max"
        fi
        cap="$cap; echo \$pid > \$d/cgroup.procs"
    fi
    cat > "$dir/start-node.sh" <<EOF
#!/usr/bin/env bash
# Starts (or restarts) inflight node \$1 in the background; its pid goes to node-\$1.pid.
id=\$1
setsid "$INFLIGHT" dev --nodes $nodes --dir "$dir" --durability $durability \\
    --grpc-port $grpc --http-port $http --peer-port $peer --resp-port $resp --node "\$id" < /dev/null &
pid=\$!
echo \$pid > "$dir/node-\$id.pid"
# --cpus-per-node (nothing without it)
$cap
EOF
    chmod +x "$dir/start-node.sh"
}
IF_EPS=""
IFM_EPS=""
for i in 1 2 3; do
    IF_EPS="$IF_EPS${IF_EPS:+,}127.0.0.1:$(port $i)"
    IFM_EPS="$IFM_EPS${IFM_EPS:+,}127.0.0.1:$(port $((40 + i)))"
done
inflight_cluster "$WORK/inflight" disk "$(port 1)" "$(port 11)" "$(port 5)" "$(port 48)"
for i in 1 2 3; do "$WORK/inflight/start-node.sh" $i; done
# The memory-durability cluster is started only for its own runs (below), so
# it takes no CPU from the others.
inflight_cluster "$WORK/inflight-memory" memory "$(port 41)" "$(port 51)" "$(port 45)" "$(port 8)"

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
    ETCD_PIDS+=($!)
    cap_cpu "etcd-e$i" $!
done

# --- Redis: one server, no persistence ----------------------------------------
REDIS_PORT=$(port 39)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --logfile "$WORK/redis.log" < /dev/null &
PIDS+=($!)
cap_cpu redis $!
REDIS_EP=127.0.0.1:$REDIS_PORT

wait_until() { # what, command...
    local what=$1; shift
    for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "compare.sh: $what did not come up; logs in $WORK" >&2
    tail -n 20 "$WORK"/inflight*/*.log "$WORK"/etcd/*.log "$WORK"/redis.log >&2 || true
    exit 1
}
inflight_ready() { "$INFLIGHT" --endpoints "${1:-$IF_EPS}" status --json | python3 -c \
    'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["leader"] and all(m["reachable"] for m in s["members"]) else 1)'; }
etcd_ready() { for i in 1 2 3; do curl -sf "http://127.0.0.1:$(port $((20 + i)))/health" | grep -q '"health":"true"' || return 1; done; }
redis_ready() { redis-cli -p "$REDIS_PORT" ping | grep -q PONG; }
wait_until "inflight" inflight_ready
wait_until "etcd" etcd_ready
wait_until "redis" redis_ready
echo "== all three systems are up (work dir $WORK)" >&2

# Leader changes each node of the disk cluster has seen so far, one line per
# node. A change under load is a false election (nothing is killed before the
# failover run): the report counts them, since a short election timeout buys
# faster failover at the risk of exactly these.
leader_changes() {
    local i
    for i in 1 2 3; do
        curl -sf "http://127.0.0.1:$(port $((10 + i)))/metrics" |
            awk '/^inflight_leader_changes_seen_total / {print $2; found=1} END {if (!found) print "null"}'
    done
}
mapfile -t LC_BEFORE < <(leader_changes)

# run LABEL SYSTEM ENDPOINTS WORKLOAD READ [CLIENTS CONNECTIONS]
# One load run; its JSON goes to $RESULTS/LABEL-WORKLOAD-READ.json.
# With SPREAD=1, inflight's linearizable reads go to any member (--spread-reads).
run() {
    local label=$1 sys=$2 eps=$3 wl=$4 read=$5 clients=${6:-$CLIENTS} conns=${7:-$CONNECTIONS} extra=()
    [ "${SPREAD:-0}" = 1 ] && extra=(--spread-reads)
    echo "== $label $wl ($read${extra[*]:+, ${extra[*]}}), ${DURATION}s, $clients clients, $conns connections" >&2
    "$LOAD" run --system "$sys" --endpoints "$eps" --workload "$wl" --read "$read" \
        --clients "$clients" --connections "$conns" --duration "${DURATION}s" "${extra[@]}" \
        --json "$RESULTS/$label-$wl-$read.json" > /dev/null
}

# --- CPU time of server processes ----------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
ticks() { # pid: its utime + stime so far (fields 14 and 15 of /proc/PID/stat), in clock ticks
    local stat
    stat=$(cat "/proc/$1/stat") || return 1
    # Field 2 is "(comm)" and may hold spaces: split what follows its ")".
    # There, field 3 (state) comes first, so utime is the 12th and stime the 13th.
    stat=${stat##*) }
    set -- $stat
    echo $(( ${12} + ${13} ))
}
expect_comm() { # pid name what: the process must be running the named program
    local comm
    comm=$(cat "/proc/$1/comm" 2>/dev/null || echo gone)
    [ "$comm" = "$2" ] && return 0
    echo "compare.sh: $3 has pid $1, which is '$comm', not $2: cannot measure its CPU" >&2
    exit 1
}
inflight_procs() { # dir: "node-ID=PID" for the cluster's three servers
    local dir=$1 i pid
    for i in 1 2 3; do
        pid=$(cat "$dir/node-$i.pid")
        expect_comm "$pid" inflight "inflight node $i ($dir)"
        echo "node-$i=$pid"
    done
}
etcd_procs() {
    local i
    for i in 1 2 3; do
        expect_comm "${ETCD_PIDS[$((i - 1))]}" etcd "etcd member e$i"
        echo "e$i=${ETCD_PIDS[$((i - 1))]}"
    done
}
# cpu_run LABEL SYSTEM ENDPOINTS NAME=PID... : the insert run of LABEL, with
# the CPU ticks each listed server process spent during it written to
# $RESULTS/cpu-LABEL-insert.json (the load generator's own CPU is in the run's JSON).
cpu_run() {
    local label=$1 sys=$2 eps=$3; shift 3
    local procs=("$@") before=() after=() p i json sep=""
    for p in "${procs[@]}"; do before+=("$(ticks "${p#*=}")"); done
    run "$label" "$sys" "$eps" insert linearizable
    for p in "${procs[@]}"; do after+=("$(ticks "${p#*=}")"); done
    json="{\"system\":\"$label\",\"workload\":\"insert\",\"clk_tck\":$CLK_TCK,\"processes\":["
    for i in "${!procs[@]}"; do
        p=${procs[$i]}
        json="$json$sep{\"name\":\"${p%%=*}\",\"pid\":${p#*=},\"ticks\":$(( after[i] - before[i] ))}"
        sep=,
    done
    echo "$json]}" > "$RESULTS/cpu-$label-insert.json"
}

if has insert; then
    mapfile -t IF_PROCS < <(inflight_procs "$WORK/inflight")
    mapfile -t ETCD_PROCS < <(etcd_procs)
    [ ${#IF_PROCS[@]} -eq 3 ] && [ ${#ETCD_PROCS[@]} -eq 3 ] || exit 1
    cpu_run inflight inflight "$IF_EPS" "${IF_PROCS[@]}"
    cpu_run etcd etcd "$ETCD_EPS" "${ETCD_PROCS[@]}"
    run redis redis "$REDIS_EP" insert linearizable
fi
for wl in update lifecycle mixed; do
    has $wl || continue
    run inflight inflight "$IF_EPS" $wl linearizable
    run etcd etcd "$ETCD_EPS" $wl linearizable
    run redis redis "$REDIS_EP" $wl linearizable
done
if has get; then
    for r in linearizable lease stale; do run inflight inflight "$IF_EPS" get $r; done
    for r in linearizable serializable; do run etcd etcd "$ETCD_EPS" get $r; done
    run redis redis "$REDIS_EP" get linearizable
fi

if has spread; then
    # Leader-only and etcd as in `get` (run here when `get` is not selected).
    if ! has get; then
        run inflight inflight "$IF_EPS" get linearizable
        run etcd etcd "$ETCD_EPS" get linearizable
    fi
    SPREAD=1 run inflight-spread inflight "$IF_EPS" get linearizable
    # The same two runs on 5 members: a cluster started for them only, so
    # that it takes no CPU from the other runs.
    echo "== starting a 5-node inflight cluster (disk) for the spread runs" >&2
    inflight_cluster "$WORK/inflight5" disk "$(port 14)" "$(port 34)" "$(port 24)" "$(port 54)" 5
    IF5_EPS=""
    for i in 1 2 3 4 5; do
        "$WORK/inflight5/start-node.sh" $i
        IF5_EPS="$IF5_EPS${IF5_EPS:+,}127.0.0.1:$(port $((13 + i)))"
    done
    wait_until "inflight (5 nodes)" inflight_ready "$IF5_EPS"
    run inflight5 inflight "$IF5_EPS" get linearizable
    SPREAD=1 run inflight5-spread inflight "$IF5_EPS" get linearizable
    echo "== stopping the 5-node inflight cluster" >&2
    for f in "$WORK"/inflight5/node-*.pid; do
        kill -9 "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
    done
fi

if has single; then
    # One client on one connection. inflight's client finds the leader itself;
    # etcd's connection goes to the member that leads now, so that neither
    # pays a forwarding hop (etcd's best case).
    ETCD_LEADER_EP=$(python3 - "$ETCD_EPS" <<'EOF' || true
import json, sys, urllib.request
for ep in sys.argv[1].split(","):
    try:
        req = urllib.request.Request(f"http://{ep}/v3/maintenance/status", data=b"{}", method="POST")
        s = json.load(urllib.request.urlopen(req, timeout=3))
    except Exception:
        continue
    if s.get("leader") and s["leader"] == s.get("header", {}).get("member_id"):
        print(ep)
        break
EOF
)
    if [ -z "$ETCD_LEADER_EP" ]; then
        echo "compare.sh: could not find etcd's leader; the one-client etcd runs use member 1" >&2
        ETCD_LEADER_EP=${ETCD_EPS%%,*}
        leader=false
    else
        leader=true
    fi
    echo "{\"etcd_endpoint\":\"$ETCD_LEADER_EP\",\"etcd_leader\":$leader}" > "$RESULTS/single.json"
    for wl in insert get; do
        run single-inflight inflight "$IF_EPS" $wl linearizable 1 1
        run single-etcd etcd "$ETCD_LEADER_EP" $wl linearizable 1 1
    done
fi

if has resp; then
    # The leader's RESP port: writes are served there (followers answer
    # READONLY, which redis-benchmark would count as errors).
    leader=$("$INFLIGHT" --endpoints "$IF_EPS" status --json | python3 -c \
        'import json,sys; print(json.load(sys.stdin)["leader"])')
    IF_RESP_PORT=$(( $(port 48) + leader - 1 ))
    for pipeline in 1 16; do
        for sys in inflight redis; do
            p=$IF_RESP_PORT
            [ $sys = redis ] && p=$REDIS_PORT
            echo "== redis-benchmark $sys -P $pipeline: SET, GET, $CLIENTS connections" >&2
            redis-benchmark -h 127.0.0.1 -p "$p" -t set,get -n $(( 20000 * pipeline )) \
                -c "$CLIENTS" -P "$pipeline" -r 1000000 -d 256 --csv \
                > "$RESULTS/resp-$sys-P$pipeline.csv"
        done
    done
fi

if [ ${#MEM_WORKLOADS[@]} -gt 0 ]; then
    echo "== starting the memory-durability inflight cluster" >&2
    for i in 1 2 3; do "$WORK/inflight-memory/start-node.sh" $i; done
    wait_until "inflight (memory durability)" inflight_ready "$IFM_EPS"
    for wl in "${MEM_WORKLOADS[@]}"; do
        case $wl in
            insert)
                mapfile -t IFM_PROCS < <(inflight_procs "$WORK/inflight-memory")
                [ ${#IFM_PROCS[@]} -eq 3 ] || exit 1
                cpu_run inflight-memory inflight "$IFM_EPS" "${IFM_PROCS[@]}" ;;
            get) for r in linearizable lease stale; do run inflight-memory inflight "$IFM_EPS" get $r; done ;;
            *) run inflight-memory inflight "$IFM_EPS" $wl linearizable ;;
        esac
    done
    echo "== stopping the memory-durability inflight cluster" >&2
    for f in "$WORK"/inflight-memory/node-*.pid; do
        kill -9 "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
    done
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

mapfile -t LC_AFTER < <(leader_changes)
python3 - "$RESULTS/leader-changes.json" "${LC_BEFORE[@]}" -- "${LC_AFTER[@]}" <<'EOF'
import json, sys
out, rest = sys.argv[1], sys.argv[2:]
cut = rest.index("--")
before, after = rest[:cut], rest[cut + 1:]
seen = [None if "null" in (b, a) else int(float(a)) - int(float(b)) for b, a in zip(before, after)]
json.dump({"per_node": seen}, open(out, "w"))
EOF

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
    --connections "$CONNECTIONS" --cores "$(nproc)" --cpus-per-node "$CPUS_PER_NODE" \
    --versions "inflight $INFLIGHT_VERSION; $ETCD_VERSION; Redis $REDIS_VERSION" \
    | tee "$OUT"
echo "== wrote $OUT" >&2

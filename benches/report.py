#!/usr/bin/env python3
"""Turns the JSON results of one benches/compare.sh run into BENCHMARKS.md.

usage: report.py RESULTS_DIR --command CMD --machine TEXT --versions TEXT
                 --duration S --clients N --connections N [--cores N]

Files read from RESULTS_DIR (each optional; what is missing is left out):
  SYSTEM-WORKLOAD-READ.json          inflight-load runs; SYSTEM is inflight
                                     (disk), inflight-memory, etcd or redis
  single-SYSTEM-WORKLOAD-READ.json   one client, one connection (inflight, etcd)
  single.json                        which etcd member the one-client runs used
  cpu-SYSTEM-insert.json             server CPU ticks during that insert run
  memory-*.json, fill-*.json, failover.json
  leader-changes.json                leader changes each node saw under load
  inflight-spread-get-linearizable.json, inflight5[-spread]-get-linearizable.json
                                     linearizable gets on any member (follower
                                     reads), and on a 5-node cluster
  resp-SYSTEM-PN.csv                 redis-benchmark --csv against inflight's
                                     RESP port and Redis, pipeline N
"""
import argparse
import datetime
import json
import os
import sys


def load(results, name):
    path = os.path.join(results, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def ops(r):
    return f"{r['ops_per_sec']:,.0f}" if r else "–"


def lat(r, q):
    return f"{r['latency_ms'][q]:.2f}" if r else "–"


def ratio(a, b, key=lambda r: r["ops_per_sec"]):
    if not a or not b or key(b) == 0:
        return None
    return key(a) / key(b)


def fmt_ratio(x):
    return "–" if x is None else f"{x:.2f}×"


def errors(*rs):
    notes = []
    for r in rs:
        if r and r["errors"]:
            notes.append(f"{r['system']}: {r['errors']} errors, first: {r['first_error']}")
    return notes


def p50(r):
    return r["latency_ms"]["p50"]


def cpu(results, label):
    """CPU spent in LABEL's insert run: servers (from /proc/PID/stat) and the
    load generator (getrusage around its timed loop), or None."""
    c = load(results, f"cpu-{label}-insert.json")
    r = load(results, f"{label}-insert-linearizable.json")
    if not c or not r or "cpu_s" not in r:
        return None
    procs = [(p["name"], p["ticks"] / c["clk_tck"]) for p in c["processes"]]
    servers = sum(s for _, s in procs)
    client = r["cpu_s"]["total"]
    total = servers + client
    n = r["ops"]
    return {
        "procs": procs,
        "servers_s": servers,
        "client_s": client,
        "total_s": total,
        "inserts": n,
        "duration_s": r["duration_s"],
        "us_per_insert": total / n * 1e6 if n else None,
        "servers_us": servers / n * 1e6 if n else None,
        "client_us": client / n * 1e6 if n else None,
    }


def resp_bench(results, system, pipeline):
    """{test: {"rps": float, "p50": float, "p99": float}} from a redis-benchmark
    --csv file, or None."""
    path = os.path.join(results, f"resp-{system}-P{pipeline}.csv")
    if not os.path.exists(path):
        return None
    import csv
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {r["test"]: {"rps": float(r["rps"]), "p50": float(r["p50_latency_ms"]),
                        "p99": float(r["p99_latency_ms"])} for r in rows}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("--command", required=True)
    p.add_argument("--machine", required=True)
    p.add_argument("--versions", required=True)
    p.add_argument("--duration", required=True)
    p.add_argument("--clients", required=True)
    p.add_argument("--connections", required=True)
    p.add_argument("--cores", type=int, default=None)
    p.add_argument("--cpus-per-node", default="")
    a = p.parse_args()
    R = lambda n: load(a.results, n)  # noqa: E731

    # (workload, inflight run, etcd run, Redis run): file names without the
    # system prefix.
    spec = [
        ("insert (new keys)", "insert-linearizable", "insert-linearizable", "insert-linearizable"),
        ("update (existing keys)", "update-linearizable", "update-linearizable", "update-linearizable"),
        ("get, linearizable (Redis: GET)", "get-linearizable", "get-linearizable", "get-linearizable"),
        ("get, lease (etcd: serializable)", "get-lease", "get-serializable", "get-linearizable"),
        ("get, stale (etcd: serializable)", "get-stale", "get-serializable", "get-linearizable"),
        ("lifecycle (insert, 3 updates, complete)", "lifecycle-linearizable", "lifecycle-linearizable", "lifecycle-linearizable"),
        ("mixed (90% linearizable get, 10% update)", "mixed-linearizable", "mixed-linearizable", "mixed-linearizable"),
    ]
    rows = [(name, R(f"inflight-{i}.json"), R(f"inflight-memory-{i}.json"), R(f"etcd-{e}.json"), R(f"redis-{r}.json"))
            for name, i, e, r in spec]
    any_memory = any(m for _, _, m, _, _ in rows)
    single = {(sys, wl): R(f"single-{sys}-{wl}-linearizable.json") for sys in ("inflight", "etcd") for wl in ("insert", "get")}
    single_info = R("single.json")
    cpus = {label: cpu(a.results, label) for label in ("inflight", "etcd", "inflight-memory")}
    out = []
    w = out.append
    w("# Benchmarks: inflight against etcd and Redis")
    w("")
    w(f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `{a.command.strip()}`, "
      "all three systems on this one machine, one after the other in the same run.")
    w("")
    w(f"- Machine: {a.machine}")
    if a.cpus_per_node:
        w(f"- `--cpus-per-node {a.cpus_per_node}`: every server process (each inflight node, each etcd member, "
          f"Redis) held to {a.cpus_per_node} cores by a CPU quota of its own, as if each ran on a host of that size; "
          "the load generator is not held.")
    w(f"- Versions: {a.versions}")
    w("- inflight: 3 nodes, `--durability disk` (vote and log fsynced before they count), default file sink; "
      "etcd: 3 members, default settings; Redis: one server, `--save '' --appendonly no`.")
    if any_memory:
        w("- inflight (memory): a second 3-node inflight cluster, `--durability memory` (nothing on disk), "
          "up only during its own runs; its rows are for information, every target is measured on the disk cluster.")
    w(f"- Load: `benches/load` (`inflight-load`), closed loop, {a.clients} clients over {a.connections} connections, "
      f"{a.duration} s per run, 256-byte values, 38-byte keys. Latencies in ms. "
      "On etcd and Redis, insert and update are a plain put/SET, complete is a delete.")
    w("")
    w("| workload | inflight ops/s | p50 | p99 | p99.9 | etcd ops/s | p99 | Redis ops/s | p99 | inflight/etcd | inflight/Redis |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    notes = []
    for name, i, m, e, r in rows:
        if i or e or r:
            w(f"| {name} | {ops(i)} | {lat(i, 'p50')} | {lat(i, 'p99')} | {lat(i, 'p999')} | {ops(e)} | {lat(e, 'p99')} "
              f"| {ops(r)} | {lat(r, 'p99')} | {fmt_ratio(ratio(i, e))} | {fmt_ratio(ratio(i, r))} |")
            notes += [f"{name}: {n}" for n in errors(i, e, r)]
        if m:
            # etcd and Redis as in the row above; the ratios are against them.
            w(f"| ↳ same, inflight (memory) | {ops(m)} | {lat(m, 'p50')} | {lat(m, 'p99')} | {lat(m, 'p999')} | | "
              f"| | | {fmt_ratio(ratio(m, e))} | {fmt_ratio(ratio(m, r))} |")
            notes += [f"{name}, inflight (memory): {n}" for n in errors(m)]
    for (sys, wl), r in single.items():
        notes += [f"one client, {wl}: {n}" for n in errors(r)]
    if notes:
        w("")
        w("Errors during the runs:")
        for n in notes:
            w(f"- {n}")

    targets = []

    def target(name, value, goal, ok):
        targets.append((name, value, goal, ok))

    for label, wl in (("insert", "insert"), ("update", "update")):
        i, e = R(f"inflight-{wl}-linearizable.json"), R(f"etcd-{wl}-linearizable.json")
        if i and e:
            x = ratio(i, e)
            target(f"{label} throughput", f"{x:.2f}× etcd put", "≥ 8×", x >= 8)
            p = i["latency_ms"]["p99"] / e["latency_ms"]["p99"] if e["latency_ms"]["p99"] else None
            if p is not None:
                target(f"{label} p99", f"{p:.2f}× etcd's ({i['latency_ms']['p99']:.2f} vs {e['latency_ms']['p99']:.2f} ms)", "≤ 0.25×", p <= 0.25)
    i, e = R("inflight-lifecycle-linearizable.json"), R("etcd-lifecycle-linearizable.json")
    if i and e:
        x = ratio(i, e)
        target("lifecycle", f"{x:.2f}× etcd", "≥ 8×", x >= 8)
    i, e = R("inflight-get-linearizable.json"), R("etcd-get-linearizable.json")
    if i and e:
        x = ratio(i, e)
        target("linearizable get", f"{x:.2f}× etcd linearizable range", "≥ 10×", x >= 10)
    i, l, e = R("inflight-spread-get-linearizable.json"), R("inflight-get-linearizable.json"), R("etcd-get-linearizable.json")
    if i and l:
        x = ratio(i, l)
        target("linearizable get on any member (follower reads), 3 members", f"{x:.2f}× leader-only", "≥ 2×", x >= 2)
    if i and e:
        x = ratio(i, e)
        target("linearizable get on any member, 3 members", f"{x:.2f}× etcd linearizable range", "≥ 10×", x >= 10)
    i, e = R("inflight-get-lease.json"), R("etcd-get-serializable.json")
    if i and e:
        x = ratio(i, e)
        target("lease get", f"{x:.2f}× etcd serializable range", "≥ 10×", x >= 10)
    i, r = R("inflight-get-stale.json"), R("redis-get-linearizable.json")
    if i and r:
        x = ratio(i, r)
        target("stale get", f"{x:.2f}× Redis GET", "≥ 0.5×", x >= 0.5)
    for test, goal in (("GET", 0.5), ("SET", 0.25)):
        i = (resp_bench(a.results, "inflight", 16) or {}).get(test)
        r = (resp_bench(a.results, "redis", 16) or {}).get(test)
        if i and r and r["rps"]:
            x = i["rps"] / r["rps"]
            target(f"redis-benchmark {test} -P 16", f"{x:.2f}× Redis", f"≥ {goal}×", x >= goal)
    i, e = R("inflight-mixed-linearizable.json"), R("etcd-mixed-linearizable.json")
    if i and e:
        x = ratio(i, e)
        target("mixed 90/10", f"{x:.2f}× etcd", "≥ 8×", x >= 8)
    i, e = single[("inflight", "insert")], single[("etcd", "insert")]
    if i and e and p50(e):
        x = p50(i) / p50(e)
        target("one client: write p50", f"{p50(i):.2f} vs etcd put {p50(e):.2f} ms ({x:.2f}×)", "≤ etcd's (≤ 1×)", x <= 1)
    i, e = single[("inflight", "get")], single[("etcd", "get")]
    if i and e and p50(e):
        x = p50(i) / p50(e)
        target("one client: linearizable get p50", f"{p50(i):.2f} vs etcd linearizable range {p50(e):.2f} ms ({x:.2f}×)",
               "≤ ½ etcd's (≤ 0.5×)", x <= 0.5)
    ci, ce = cpus["inflight"], cpus["etcd"]
    if ci and ce and ci["us_per_insert"] and ce["us_per_insert"]:
        x = ci["us_per_insert"] / ce["us_per_insert"]
        target("CPU per write", f"{ci['us_per_insert']:.0f} vs etcd {ce['us_per_insert']:.0f} CPU-µs per insert ({x:.2f}×)",
               "none (shown)", None)

    mi, mr = R("memory-inflight.json"), R("memory-redis.json")
    mem_lines = []
    if mi and mr:
        n = mi["records"]
        per_node = [(m["node"], (m["rss_after"] - m["rss_before"]) / n) for m in mi["nodes"]]
        redis_used = (mr["used_after"] - mr["used_before"]) / n
        redis_rss = (mr["rss_after"] - mr["rss_before"]) / n
        worst = max(b for _, b in per_node)
        target("memory per record", f"{worst:.0f} B (worst node RSS) vs Redis used_memory {redis_used:.0f} B",
               "≤ Redis", worst <= redis_used)
        mem_lines.append(f"{n:,} records, 38-byte keys, 256-byte values; growth of resident memory while they were inserted:")
        mem_lines.append("")
        mem_lines.append("| | bytes per record |")
        mem_lines.append("| --- | ---: |")
        for node, b in per_node:
            mem_lines.append(f"| inflight node {node} (RSS) | {b:.0f} |")
        mem_lines.append(f"| Redis `used_memory` | {redis_used:.0f} |")
        mem_lines.append(f"| Redis RSS | {redis_rss:.0f} |")
    lc = R("leader-changes.json")
    if lc:
        seen = [n for n in lc["per_node"] if n is not None]
        if len(seen) == len(lc["per_node"]):
            target("leader changes under load", f"{max(seen)} (most seen by one node, before the failover run)",
                   "0", max(seen) == 0)
        else:
            target("leader changes under load", "not measured (a node's /metrics did not answer)", "0", None)
    fo = R("failover.json")
    fo_lines = []
    if fo:
        target("failover", f"max {fo['max_ms']:.0f} ms, median {fo['median_ms']:.0f} ms over {fo['rounds']} kills",
               "≤ 1000 ms (max)", fo["max_ms"] <= 1000)
        fo_lines.append(f"kill -9 of the leader under write load, {fo['rounds']} times; time from the kill to the first "
                        "successful write started after it (ms): " + ", ".join(f"{x:.0f}" for x in fo["outage_ms"]))

    if any(single.values()):
        w("")
        w("## One client, one operation at a time")
        w("")
        where = ""
        if single_info:
            where = (" etcd's connection went to its leader."
                     if single_info.get("etcd_leader") else
                     " etcd's connection went to member 1 (its leader could not be found).")
        w(f"`--clients 1 --connections 1`, {a.duration} s per run; the inflight cluster is the disk one. "
          f"Latencies in ms.{where}")
        w("")
        w("| operation | inflight p50 | p99 | ops/s | etcd p50 | p99 | ops/s | inflight/etcd p50 |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for wl, name in (("insert", "insert (etcd: put)"), ("get", "linearizable get (etcd: linearizable range)")):
            i, e = single[("inflight", wl)], single[("etcd", wl)]
            if not (i or e):
                continue
            w(f"| {name} | {lat(i, 'p50')} | {lat(i, 'p99')} | {ops(i)} | {lat(e, 'p50')} | {lat(e, 'p99')} | {ops(e)} "
              f"| {fmt_ratio(ratio(i, e, key=p50))} |")
    spread = [(n, R(f"{p}-get-linearizable.json"), R(f"{p}-spread-get-linearizable.json"))
              for n, p in ((3, "inflight"), (5, "inflight5"))]
    if any(s or l for _, l, s in spread):
        w("")
        w("## Linearizable reads from every member")
        w("")
        w("The same linearizable get load sent to the leader only, and to any member (each connection to its own "
          "first endpoint, `ReadFrom::Any`): a follower asks the leader for its read index, waits until it has "
          "applied that far, and reads locally. etcd's connections are spread over its members in every run.")
        w("")
        w("| members | leader only ops/s | p99 | any member ops/s | p99 | any/leader | any/etcd |")
        w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        e = R("etcd-get-linearizable.json")
        for n, l, sp in spread:
            if l or sp:
                w(f"| {n} | {ops(l)} | {lat(l, 'p99')} | {ops(sp)} | {lat(sp, 'p99')} | {fmt_ratio(ratio(sp, l))} "
                  f"| {fmt_ratio(ratio(sp, e))} |")
                for x in errors(l, sp):
                    w(f"| | {n} members: {x} | | | | | |")
    resp = {(s, n): resp_bench(a.results, s, n) for s in ("inflight", "redis") for n in (1, 16)}
    if any(resp.values()):
        w("")
        w("## The Redis protocol (redis-benchmark)")
        w("")
        w(f"`redis-benchmark -t set,get -c {a.clients} -P N -r 1000000 -d 256`, the same binary and flags against "
          "the inflight leader's RESP port (disk durability) and against Redis. inflight's `SET` is an upsert: a "
          "linearizable read, then a conditional write, and it runs alone in a connection's pipeline; its `GET` "
          "is linearizable.")
        w("")
        w("| test | pipeline | inflight ops/s | p50 | p99 | Redis ops/s | p50 | p99 | inflight/Redis |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for test in ("SET", "GET"):
            for n in (1, 16):
                i, r = resp[("inflight", n)], resp[("redis", n)]
                i, r = (i or {}).get(test), (r or {}).get(test)
                f = lambda x, k, d=2: "–" if not x else f"{x[k]:,.{d}f}"  # noqa: E731
                x = i["rps"] / r["rps"] if i and r and r["rps"] else None
                w(f"| {test} | {n} | {f(i, 'rps', 0)} | {f(i, 'p50')} | {f(i, 'p99')} | {f(r, 'rps', 0)} "
                  f"| {f(r, 'p50')} | {f(r, 'p99')} | {fmt_ratio(x)} |")
    if any(cpus.values()):
        w("")
        w("## CPU per insert")
        w("")
        w(f"In the insert runs above ({a.clients} clients, {a.connections} connections): user + system CPU of the "
          "three server processes (`/proc/PID/stat`, before and after the run) and of the load generator "
          "(`getrusage` around its timed loop), divided by the inserts done."
          + (f" The machine has {a.cores} cores, {a.cores * float(a.duration):.0f} core-seconds per run." if a.cores else ""))
        w("")
        w("| system | inserts | server CPU s (each) | load generator CPU s | total CPU s | servers µs/insert "
          "| load generator µs/insert | **CPU-µs per insert** |")
        w("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for label, name in (("inflight", "inflight (disk)"), ("etcd", "etcd"), ("inflight-memory", "inflight (memory)")):
            c = cpus[label]
            if not c:
                continue
            each = ", ".join(f"{s:.2f}" for _, s in c["procs"])
            us = lambda x: "–" if x is None else f"{x:.0f}"  # noqa: E731
            w(f"| {name} | {c['inserts']:,} | {each} | {c['client_s']:.2f} | {c['total_s']:.2f} | {us(c['servers_us'])} "
              f"| {us(c['client_us'])} | **{us(c['us_per_insert'])}** |")
        ci, ce = cpus["inflight"], cpus["etcd"]
        if ci and ce and ci["us_per_insert"] and ce["us_per_insert"]:
            w("")
            w(f"inflight (disk) spends {ci['us_per_insert'] / ce['us_per_insert']:.2f}× etcd's CPU per insert.")
    w("")
    w("## Targets")
    w("")
    w("All ratios are from this one run; inflight is the disk-durability cluster.")
    w("")
    w("| target | measured | goal | met |")
    w("| --- | --- | --- | --- |")
    for name, value, goal, ok in targets:
        met = "–" if ok is None else "yes" if ok else "**no**"
        w(f"| {name} | {value} | {goal} | {met} |")
    if mem_lines:
        w("")
        w("## Memory")
        w("")
        out.extend(mem_lines)
    if fo_lines:
        w("")
        w("## Failover")
        w("")
        out.extend(fo_lines)
    # The hand-written analysis of missed targets (with the profiles behind
    # it) travels with every regenerated report.
    analysis = os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis.md")
    if os.path.exists(analysis):
        w("")
        with open(analysis) as f:
            out.append(f.read().rstrip())
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())

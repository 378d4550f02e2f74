#!/usr/bin/env python3
"""Turns the JSON results of one benches/compare.sh run into BENCHMARKS.md.

usage: report.py RESULTS_DIR --command CMD --machine TEXT --versions TEXT
                 --duration S --clients N --connections N
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("--command", required=True)
    p.add_argument("--machine", required=True)
    p.add_argument("--versions", required=True)
    p.add_argument("--duration", required=True)
    p.add_argument("--clients", required=True)
    p.add_argument("--connections", required=True)
    a = p.parse_args()
    R = lambda n: load(a.results, n)  # noqa: E731

    rows = [
        ("insert (new keys)", R("inflight-insert-linearizable.json"), R("etcd-insert-linearizable.json"), R("redis-insert-linearizable.json")),
        ("update (existing keys)", R("inflight-update-linearizable.json"), R("etcd-update-linearizable.json"), R("redis-update-linearizable.json")),
        ("get, linearizable (Redis: GET)", R("inflight-get-linearizable.json"), R("etcd-get-linearizable.json"), R("redis-get-linearizable.json")),
        ("get, lease (etcd: serializable)", R("inflight-get-lease.json"), R("etcd-get-serializable.json"), R("redis-get-linearizable.json")),
        ("get, stale (etcd: serializable)", R("inflight-get-stale.json"), R("etcd-get-serializable.json"), R("redis-get-linearizable.json")),
        ("lifecycle (insert, 3 updates, complete)", R("inflight-lifecycle-linearizable.json"), R("etcd-lifecycle-linearizable.json"), R("redis-lifecycle-linearizable.json")),
        ("mixed (90% linearizable get, 10% update)", R("inflight-mixed-linearizable.json"), R("etcd-mixed-linearizable.json"), R("redis-mixed-linearizable.json")),
    ]
    out = []
    w = out.append
    w("# Benchmarks: inflight against etcd and Redis")
    w("")
    w(f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `{a.command.strip()}`, "
      "all three systems on this one machine, one after the other in the same run.")
    w("")
    w(f"- Machine: {a.machine}")
    w(f"- Versions: {a.versions}")
    w("- inflight: 3 nodes, `--durability disk` (vote and log fsynced before they count), default file sink; "
      "etcd: 3 members, default settings; Redis: one server, `--save '' --appendonly no`.")
    w(f"- Load: `benches/load` (`inflight-load`), closed loop, {a.clients} clients over {a.connections} connections, "
      f"{a.duration} s per run, 256-byte values, 38-byte keys. Latencies in ms. "
      "On etcd and Redis, insert and update are a plain put/SET, complete is a delete.")
    w("")
    w("| workload | inflight ops/s | p50 | p99 | p99.9 | etcd ops/s | p99 | Redis ops/s | p99 | inflight/etcd | inflight/Redis |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    notes = []
    for name, i, e, r in rows:
        if not (i or e or r):
            continue
        w(f"| {name} | {ops(i)} | {lat(i, 'p50')} | {lat(i, 'p99')} | {lat(i, 'p999')} | {ops(e)} | {lat(e, 'p99')} "
          f"| {ops(r)} | {lat(r, 'p99')} | {fmt_ratio(ratio(i, e))} | {fmt_ratio(ratio(i, r))} |")
        notes += [f"{name}: {n}" for n in errors(i, e, r)]
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
    i, e = R("inflight-get-linearizable.json"), R("etcd-get-linearizable.json")
    if i and e:
        x = ratio(i, e)
        target("linearizable get", f"{x:.2f}× etcd linearizable range", "≥ 10×", x >= 10)
    i, r = R("inflight-get-stale.json"), R("redis-get-linearizable.json")
    if i and r:
        x = ratio(i, r)
        target("stale get", f"{x:.2f}× Redis GET", "≥ 0.5×", x >= 0.5)
    i, e = R("inflight-lifecycle-linearizable.json"), R("etcd-lifecycle-linearizable.json")
    if i and e:
        x = ratio(i, e)
        target("lifecycle", f"{x:.2f}× etcd", "≥ 8×", x >= 8)

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
    fo = R("failover.json")
    fo_lines = []
    if fo:
        target("failover", f"max {fo['max_ms']:.0f} ms, median {fo['median_ms']:.0f} ms over {fo['rounds']} kills",
               "≤ 1000 ms (max)", fo["max_ms"] <= 1000)
        fo_lines.append(f"kill -9 of the leader under write load, {fo['rounds']} times; time from the kill to the first "
                        "successful write started after it (ms): " + ", ".join(f"{x:.0f}" for x in fo["outage_ms"]))

    w("")
    w("## Targets")
    w("")
    w("| target | measured | goal | met |")
    w("| --- | --- | --- | --- |")
    for name, value, goal, ok in targets:
        w(f"| {name} | {value} | {goal} | {'yes' if ok else '**no**'} |")
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

#!/usr/bin/env python3
"""Two gateway builds side by side, in the same run, on the shapes of issue 12 (BENCHMARKS.md).

For each round, each build in turn (the order alternates between rounds) gets a fresh gateway
(2 workers, embedded broker, rate and per-IP limits off) and one `push-bench` run per shape:

- everyday: 1,000 connections, 10 groups, 10 senders at 40 messages/s spread over the period
  (40,000 deliveries/s), 64-byte messages: gateway CPU per delivery and latency;
- aligned: the same, all senders at the same instant (bursts of 1,000 deliveries);
- saturated: shape A (1,000 connections, 10 groups, 10 senders as fast as delivered);
- idle: 10,000 connections in 100 groups held 10 s: gateway PSS per connection.

    cargo build --release -p gateway -p push-bench     # then keep a copy of the old gateway
    python3 bench/ab.py --a /tmp/gateway-before --b target/release/gateway [--rounds 3]

The same push-bench (--bench, default target/release/push-bench) measures both. Prints one row
per (shape, build, round), then each shape's median per build; writes the raw results to --out
(default target/ab.json). A run with loss, duplicates or errors is marked BROKEN. Everything
listens on 127.0.0.1 and stops by itself. Wall-clock figures need a quiet machine.
"""

import argparse
import json
import os
import statistics
import subprocess

from carriers import Proc, free_port, wait_port

SHAPES = {
    "everyday": ["fanout", "--connections", "1000", "--groups", "10", "--senders", "10",
                 "--rate", "40", "--payload", "64", "--warmup", "2s"],
    "aligned": ["fanout", "--connections", "1000", "--groups", "10", "--senders", "10",
                "--rate", "40", "--aligned", "--payload", "64", "--warmup", "2s"],
    "saturated": ["fanout", "--connections", "1000", "--groups", "10", "--senders", "10",
                  "--payload", "64", "--warmup", "2s"],
    "idle": ["idle", "--connections", "10000", "--groups", "100", "--hold", "10s"],
}


def start_gateway(gateway_bin):
    """A gateway as the shapes of issue 12 run it: 2 workers, embedded broker, no admin, rate
    and per-IP limits off; returns (process, WebSocket port) once it listens."""
    port = free_port()
    gw = Proc("gateway", [
        gateway_bin, "--listen", f"127.0.0.1:{port}", "--admin", "off", "--workers", "2",
        "--broker-listen", "127.0.0.1:0", "--max-messages-per-second", "0",
        "--max-connections-per-ip", "0", "--log-format", "json"])
    try:
        wait_port(port)
    except BaseException:
        gw.stop()
        raise
    return gw, port


def run(gateway_bin, bench_bin, shape, duration):
    gw, port = start_gateway(gateway_bin)
    try:
        args = [bench_bin, "--url", f"ws://127.0.0.1:{port}", *SHAPES[shape], "--json",
                "--server-pid", str(gw.p.pid)]
        if shape != "idle":
            args += ["--duration", duration]
        out = subprocess.run(args, capture_output=True, text=True, timeout=900)
        if out.returncode not in (0, 2):
            raise RuntimeError(f"push-bench failed ({out.returncode}): {out.stderr[-2000:]}")
        result = json.loads(out.stdout)
        result["broken"] = out.returncode == 2
        return result
    finally:
        gw.stop()


def figures(shape, r):
    """The row of one run: what the shape measures."""
    if shape == "idle":
        return {"pss_per_connection": r["memory"]["pss_per_connection"],
                "joined": r["connections_joined"], "dropped": r["connections_dropped"]}
    rate = r["deliveries_per_sec"] or 1
    cpu = sum(s["cpu_percent"] for s in r["servers"])
    lat = r["latency_us"]
    return {"deliveries_per_sec": r["deliveries_per_sec"], "gateway_us_per_delivery":
            cpu / 100 * 1e6 / rate, "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000,
            "lost": r["lost"], "duplicated": r["duplicated"]}


def line(shape, build, f, broken):
    if shape == "idle":
        text = (f"pss/conn {f['pss_per_connection']:8,.0f} B   joined {f['joined']}"
                f"  dropped {f['dropped']}")
    else:
        text = (f"{f['deliveries_per_sec']:12,.0f}/s  gw {f['gateway_us_per_delivery']:6.2f} us/dlv"
                f"  p50 {f['p50_ms']:6.2f} ms  p99 {f['p99_ms']:6.2f} ms"
                f"  lost {f['lost']} dup {f['duplicated']}")
    return f"{shape:10} {build:2} {text}" + ("  BROKEN" if broken else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="gateway binary A (before)")
    ap.add_argument("--b", required=True, help="gateway binary B (after)")
    ap.add_argument("--bench", default="target/release/push-bench")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="15s", help="measured time of the fanout shapes")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--out", default="target/ab.json")
    opts = ap.parse_args()
    shapes = [s for s in opts.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shapes {unknown}; known: {list(SHAPES)}")
    builds = {"A": opts.a, "B": opts.b}
    rows = []
    for round_no in range(opts.rounds):
        order = ["A", "B"] if round_no % 2 == 0 else ["B", "A"]
        for shape in shapes:
            for build in order:
                r = run(builds[build], opts.bench, shape, opts.duration)
                f = figures(shape, r)
                rows.append({"round": round_no, "shape": shape, "build": build,
                             "figures": f, "broken": r["broken"], "result": r})
                print(line(shape, build, f, r["broken"]), flush=True)
    print("\nmedians:")
    for shape in shapes:
        for build in builds:
            runs = [x["figures"] for x in rows if x["shape"] == shape and x["build"] == build]
            median = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
            broken = any(x["broken"] for x in rows if x["shape"] == shape and x["build"] == build)
            print(line(shape, build, median, broken))
    os.makedirs(os.path.dirname(opts.out) or ".", exist_ok=True)
    with open(opts.out, "w", encoding="utf-8") as f:
        json.dump({"a": opts.a, "b": opts.b, "rows": rows}, f, indent=1)
    print(f"raw results: {opts.out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A history group's publish and delivery against a plain group's, and recovery time (BENCHMARKS.md).

One gateway (2 workers) on the standalone broker, then on one Redis server. Shape A of
`push-bench fanout` (1,000 connections, 10 groups of 100, 10 senders, 64-byte messages), as
fast as delivered and at a steady 40 messages/s per sender (40,000 deliveries/s), in three modes:

- plain: the gateway has no --history; the seed's path.
- history: --history bench-=1000,1m: every send is stored (offset, epoch) and comes back from
  the store before it is delivered; the members are raw (they get the text, as the seed).
- positioned: the same, and every member joins with positions (push-bench --positioned): each
  delivery is the {"cmd":"message",...} object.

The modes alternate within each round (plain first in odd rounds, last in even ones), each run on
a fresh engine and gateway. CPU per delivery is the gateway's and the engine's user + system time
over the measured window divided by the deliveries in it (push-bench --server-pid).

Recovery: 1,000 messages are published to a history group through the admin API while no one is
connected; `client-cli join G --resume-file F --count 1000` then starts from offset 0 of that
epoch: the wall time of the whole command (process start, connect, join, the 1,000 recovered
messages printed, exit) over 5 runs.

    cargo build --release -p gateway -p broker -p push-bench -p client-cli
    python3 bench/history.py [--target target/release] [--rounds 2] [--duration 10s]

Raw results go to --out (default target/history.json). Everything listens on 127.0.0.1 and
stops by itself.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from carriers import Proc, engine_redis, free_port, run_fanout, wait_port

MODES = ("plain", "history", "positioned")
SHAPE_A = ["--connections", "1000", "--groups", "10", "--senders", "10", "--warmup", "2s",
           "--payload", "64"]


def start(target, carrier, history):
    """(procs, gateway proc, ws port, admin port) for a gateway on `carrier`."""
    procs = []
    if carrier == "broker":
        bport = free_port()
        procs.append(Proc("broker", [f"{target}/broker", "--broker-listen", f"127.0.0.1:{bport}",
                                     "--admin", "off", "--log-format", "json"]))
        wait_port(bport)
        bus = ["--broker", f"127.0.0.1:{bport}"]
    else:
        rport = free_port()
        procs.append(engine_redis(rport))
        wait_port(rport)
        bus = ["--bus", f"redis://127.0.0.1:{rport}"]
    port, admin = free_port(), free_port()
    args = [f"{target}/gateway", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
            "--workers", "2", "--max-messages-per-second", "0", "--max-connections-per-ip", "0",
            "--log-format", "json", *bus]
    if history:
        args += ["--history", "bench-=1000,1m", "--history", "rec:=2000,10m"]
    gateway = Proc("gateway", args)
    procs.append(gateway)
    gateway.wait_log('"bus up"')
    wait_port(admin)
    return procs, gateway, port, admin


def stop(procs):
    for p in reversed(procs):
        p.stop()


def fanout(target, carrier, mode, duration, rate):
    """push-bench's result, with the gateway's and the engine's CPU µs per delivery."""
    procs, gateway, port, _ = start(target, carrier, mode != "plain")
    try:
        args = [*SHAPE_A, "--duration", duration]
        if mode == "positioned":
            args.append("--positioned")
        pids = [p.p.pid for p in procs]
        r = run_fanout(target, port, pids, args, rate)[1]
    finally:
        stop(procs)
    rate = r["deliveries_per_sec"] or 1
    cpu = {s["pid"]: s["cpu_percent"] for s in r["servers"]}
    r["gateway_us_per_delivery"] = cpu.get(gateway.p.pid, 0) / 100 * 1e6 / rate
    r["engine_us_per_delivery"] = sum(cpu.get(p.p.pid, 0) for p in procs if p is not gateway) / 100 * 1e6 / rate
    return r


def post(admin, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{admin}{path}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.load(r)


def get(admin, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=10) as r:
        return json.load(r)


def recovery(target, carrier, runs=5, missed=1000):
    """Wall times (s) of `client-cli join --resume-file` recovering `missed` messages."""
    procs, _, port, admin = start(target, carrier, True)
    times = []
    try:
        for run in range(runs):
            group = f"rec:{run}"
            for first in range(0, missed, 100):
                post(admin, "/api/publish",
                     [{"group_id": group, "message": f"m{i:05}"} for i in range(first, first + 100)])
            # The publishes are queued: wait until the store has them all.
            deadline = time.monotonic() + 10
            while (page := get(admin, f"/api/history/{group}?limit=1"))["offset"] < missed:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{group}: {page['offset']} stored, expected {missed}")
                time.sleep(0.05)
            with tempfile.TemporaryDirectory() as d:
                resume = os.path.join(d, "pos.json")
                with open(resume, "w") as f:
                    json.dump({"groups": {group: {"offset": 0, "epoch": page["epoch"]}}}, f)
                started = time.monotonic()
                out = subprocess.run([f"{target}/client-cli", "join", group, "--url", f"ws://127.0.0.1:{port}",
                                      "--resume-file", resume, "--count", str(missed), "--timeout", "30"],
                                     capture_output=True, text=True, timeout=60)
                elapsed = time.monotonic() - started
            lines = out.stdout.splitlines()
            if out.returncode != 0 or lines != [f"m{i:05}" for i in range(missed)]:
                raise RuntimeError(f"client-cli: exit {out.returncode}, {len(lines)} lines: {out.stderr[-500:]}")
            times.append(elapsed)
    finally:
        stop(procs)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="target/release")
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--carriers", default="broker,redis")
    ap.add_argument("--paces", default="full,40", help="full and/or a rate per sender (40)")
    ap.add_argument("--out", default="target/history.json")
    opts = ap.parse_args()
    results = []
    print(f"{'carrier':8} {'mode':11} {'pace':5} {'deliveries/s':>13} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'gw us/dlv':>9} {'engine us/dlv':>13} {'lost':>5} {'dup':>4}")
    for carrier in opts.carriers.split(","):
        for rnd in range(opts.rounds):
            order = MODES if rnd % 2 == 0 else tuple(reversed(MODES))
            for rate in [None if p == "full" else int(p) for p in opts.paces.split(",")]:
                for mode in order:
                    r = fanout(opts.target, carrier, mode, opts.duration, rate)
                    results.append({"carrier": carrier, "mode": mode, "rate": rate, "round": rnd, "result": r})
                    lat = r["latency_us"]
                    print(f"{carrier:8} {mode:11} {('40/s' if rate else 'full'):5} "
                          f"{r['deliveries_per_sec']:>13,.0f} {lat['p50'] / 1000:>7.2f} "
                          f"{lat['p99'] / 1000:>7.2f} {r['gateway_us_per_delivery']:>9.2f} "
                          f"{r['engine_us_per_delivery']:>13.2f} {r['lost']:>5} {r['duplicated']:>4}"
                          + ("  BROKEN RUN" if r["broken"] else ""), flush=True)
        times = recovery(opts.target, carrier)
        results.append({"carrier": carrier, "recovery_1000_s": times})
        print(f"{carrier:8} recovery of 1,000 missed messages (client-cli, 5 runs): median "
              f"{statistics.median(times) * 1000:.0f} ms, min {min(times) * 1000:.0f} ms, "
              f"max {max(times) * 1000:.0f} ms", flush=True)
    os.makedirs(os.path.dirname(opts.out) or ".", exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Cross-gateway throughput, latency and CPU per delivery on each bus carrier (BENCHMARKS.md).

Two gateway processes, one worker each, share one port (SO_REUSEPORT), so the kernel spreads the
connections over both, every group has members on both, and every message crosses the bus.
For each carrier it starts the engine (none, a standalone broker, Redis with 1 or 2 shards,
NATS) on free loopback ports, the two gateways, waits for their `bus up` log events, runs
`push-bench fanout` (shape A: 1,000 connections, 10 groups, 10 senders) at full speed and at a
steady 40k deliveries/s, measuring both gateways and the engine, then stops everything.

    cargo build --release -p gateway -p broker -p push-bench
    python3 bench/carriers.py [--target target/release] [--duration 10s] [--only redis,nats]

Prints one table row per (carrier, pace) and the raw JSON results to --out (default
target/carriers.json). Needs redis-server and nats-server on PATH for those carriers. Everything
listens on 127.0.0.1 and stops by itself; a carrier whose engine is missing is skipped, said.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

START_TIMEOUT = 20.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


class Proc:
    """A child process with its stderr in a temp file, killed on stop."""

    def __init__(self, name, args):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"carriers-{name}-", suffix=".log", delete=False)
        self.p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log)

    def wait_log(self, needle, count=1, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log.name, encoding="utf-8", errors="replace") as f:
                if f.read().count(needle) >= count:
                    return
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{self.name}: no {needle!r} within {timeout}s:\n{tail}")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        os.unlink(self.log.name)


def gateway(target, name, port, bus_args):
    args = [
        f"{target}/gateway", "--listen", f"127.0.0.1:{port}", "--admin", "off", "--workers", "1",
        "--max-messages-per-second", "0", "--max-connections-per-ip", "0", "--log-format", "json",
        "--reuse-port",
    ] + bus_args
    return Proc(name, args)


def engine_redis(port):
    return Proc(f"redis-{port}", [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
    ])


def engine_nats(port):
    return Proc(f"nats-{port}", ["nats-server", "-a", "127.0.0.1", "-p", str(port)])


def setups(target):
    """carrier name -> function returning (engine procs, bus args of gateway A, of gateway B)."""

    def embedded():
        bport = free_port()
        a = ["--broker-listen", f"127.0.0.1:{bport}"]
        b = ["--broker", f"127.0.0.1:{bport}"]
        return [], a, b, [bport]

    def broker():
        bport = free_port()
        p = Proc("broker", [f"{target}/broker", "--broker-listen", f"127.0.0.1:{bport}", "--admin", "off"])
        args = ["--broker", f"127.0.0.1:{bport}"]
        return [p], args, args, [bport]

    def redis(shards):
        def start():
            ports = [free_port() for _ in range(shards)]
            procs = [engine_redis(p) for p in ports]
            url = ",".join(f"redis://127.0.0.1:{p}" for p in ports)
            return procs, ["--bus", url], ["--bus", url], ports
        return start

    def nats():
        port = free_port()
        url = f"nats://127.0.0.1:{port}"
        return [engine_nats(port)], ["--bus", url], ["--bus", url], [port]

    return {
        "embedded": embedded,
        "broker": broker,
        "redis": redis(1),
        "redis-2-shards": redis(2),
        "nats": nats,
    }


def run_fanout(target, port, pids, fanout_args, rate):
    """Runs `push-bench fanout FANOUT_ARGS --json` against the gateways on `port`, measuring
    `pids`, at `rate` (thousands of deliveries/s; None: full speed). Returns its command line
    and its JSON result, with `broken` (exit 2: loss, duplicates or errors) and its stderr's end."""
    args = [f"{target}/push-bench", "--url", f"ws://127.0.0.1:{port}", "fanout", *fanout_args, "--json"]
    for pid in pids:
        args += ["--server-pid", str(pid)]
    if rate:
        args += ["--rate", str(rate)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if out.returncode not in (0, 2):
        raise RuntimeError(f"push-bench failed ({out.returncode}): {out.stderr[-2000:]}")
    result = json.loads(out.stdout)
    result["broken"] = out.returncode == 2
    result["stderr"] = out.stderr[-2000:]
    return args, result


def fanout(target, port, pids, duration, rate):
    shape_a = ["--connections", "1000", "--groups", "10", "--senders", "10", "--duration", duration,
               "--warmup", "2s", "--payload", "64"]
    return run_fanout(target, port, pids, shape_a, rate)[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="target/release")
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--only", default="", help="comma-separated carriers (default: all)")
    ap.add_argument("--out", default="target/carriers.json")
    opts = ap.parse_args()
    chosen = [c for c in opts.only.split(",") if c]
    results = []
    print(f"{'carrier':16} {'pace':9} {'deliveries/s':>13} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'gw us/dlv':>9} {'engine us/dlv':>13} {'lost':>5} {'dup':>4}")
    for carrier, setup in setups(opts.target).items():
        if chosen and carrier not in chosen:
            continue
        engine_bin = {"redis": "redis-server", "redis-2-shards": "redis-server", "nats": "nats-server"}.get(carrier)
        if engine_bin and shutil.which(engine_bin) is None:
            print(f"{carrier:16} skipped: {engine_bin} not on PATH")
            continue
        for pace in ("full", "40k/s"):
            engines, a_args, b_args, engine_ports = setup()
            procs = list(engines)
            try:
                for port in engine_ports:
                    if engines:
                        wait_port(port)
                port = free_port()
                a = gateway(opts.target, "gateway-a", port, a_args)
                procs.append(a)
                a.wait_log('"bus up"')
                b = gateway(opts.target, "gateway-b", port, b_args)
                procs.append(b)
                b.wait_log('"bus up"')
                pids = [a.p.pid, b.p.pid] + [e.p.pid for e in engines]
                r = fanout(opts.target, port, pids, opts.duration, 40 if pace != "full" else None)
            finally:
                for p in reversed(procs):
                    p.stop()
            rate = r["deliveries_per_sec"] or 1
            cpu = {s["pid"]: s["cpu_percent"] for s in r["servers"]}
            gw = (cpu.get(a.p.pid, 0) + cpu.get(b.p.pid, 0)) / 100 * 1e6 / rate
            eng = sum(cpu.get(e.p.pid, 0) for e in engines) / 100 * 1e6 / rate
            lat = r["latency_us"]
            print(f"{carrier:16} {pace:9} {r['deliveries_per_sec']:13,.0f} {lat['p50'] / 1000:7.2f} "
                  f"{lat['p99'] / 1000:7.2f} {gw:9.2f} {eng:13.2f} {r['lost']:5} {r['duplicated']:4}"
                  + ("  BROKEN RUN" if r["broken"] else ""), flush=True)
            results.append({"carrier": carrier, "pace": pace, "gateway_us_per_delivery": gw,
                            "engine_us_per_delivery": eng, "result": r})
    os.makedirs(os.path.dirname(opts.out) or ".", exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"raw results: {opts.out}")


if __name__ == "__main__":
    sys.exit(main())

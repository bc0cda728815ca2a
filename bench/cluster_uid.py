#!/usr/bin/env python3
"""send_to_uid against a send to a one-member group, in a 3-gateway cluster (BENCHMARKS.md).

A standalone broker and three gateway processes (one worker each) sharing one port
(--reuse-port), so the kernel spreads the connections over the three. `push-bench fanout` opens
10,000 connections with --groups 10,000: with `--address group` each connection joins its own
group and senders `send_to_group` it; with `--address uid` each binds the uid of the same name
and senders `send_to_uid` it. Everything else (senders, pacing, stamping, counting) is the same
in both. Each sender is the one connection of its group or uid, so it gets its own messages
back; every send is one delivery.

For each round, each pace (a steady --rate per sender, then with --full as fast as delivered)
and each mode (group then uid in odd rounds, uid then group in even ones), it starts a fresh
broker and gateways, runs push-bench measuring all four processes, reads the broker's and each
gateway's /api/stats once every connection is joined, then stops everything.

    cargo build --release -p gateway -p broker -p push-bench
    python3 bench/cluster_uid.py [--target target/release] [--rounds 3] [--full]
        [--duration 20s] [--quiet-wait 120]

Prints one row per run and the raw results (push-bench's JSON and the stats) to --out (default
target/cluster_uid.json). CPU per delivery is user + system time over the measured window
divided by the deliveries in it, as in bench/carriers.py. Everything listens on 127.0.0.1 and
stops by itself.
"""

import argparse
import json
import os
import sys
import threading
import time
import urllib.request

# The process helpers of the carriers benchmark (same folder).
from carriers import Proc, free_port, run_fanout, wait_port

GATEWAYS = 3
MODES = ("group", "uid")


def http_json(port, path, timeout=2.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.load(r)


class Cluster:
    """A standalone broker and GATEWAYS gateways on one --reuse-port port, each with admin."""

    def __init__(self, target):
        self.procs = []
        try:
            self.broker_port, self.broker_admin = free_port(), free_port()
            self.broker = Proc("broker", [
                f"{target}/broker", "--broker-listen", f"127.0.0.1:{self.broker_port}",
                "--admin", f"127.0.0.1:{self.broker_admin}", "--log-format", "json",
            ])
            self.procs.append(self.broker)
            wait_port(self.broker_port)
            wait_port(self.broker_admin)
            self.port = free_port()
            self.gateways = []
            for i in range(GATEWAYS):
                admin = free_port()
                g = Proc(f"gateway-{i + 1}", [
                    f"{target}/gateway", "--listen", f"127.0.0.1:{self.port}", "--reuse-port",
                    "--broker", f"127.0.0.1:{self.broker_port}", "--admin", f"127.0.0.1:{admin}",
                    "--workers", "1", "--max-messages-per-second", "0",
                    "--max-connections-per-ip", "0", "--log-format", "json",
                ])
                g.admin = admin
                self.procs.append(g)
                g.wait_log('"bus up"')
                wait_port(admin)
                self.gateways.append(g)
        except BaseException:
            self.stop()
            raise

    def pids(self):
        return [g.p.pid for g in self.gateways] + [self.broker.p.pid]

    def broker_stats(self):
        return http_json(self.broker_admin, "/api/stats")

    def gateway_stats(self):
        return [http_json(g.admin, "/api/stats") for g in self.gateways]

    def stop(self):
        for p in reversed(self.procs):
            p.stop()


def topics(broker_stats):
    return broker_stats["subscriptions"] + broker_stats["cluster_subscriptions"]


class StatsProbe(threading.Thread):
    """Polls the broker's /api/stats (cheap) until the connections' groups or uids are all
    subscribed, then reads every gateway's /api/stats once (during the warmup, as a rule)."""

    def __init__(self, cluster, connections, timeout):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.baseline = cluster.broker_stats()
        self.want = topics(self.baseline) + connections
        self.deadline = time.monotonic() + timeout
        self.stop_event = threading.Event()
        self.broker = None
        self.gateways = None
        self.error = None

    def run(self):
        try:
            while not self.stop_event.wait(0.5) and time.monotonic() < self.deadline:
                stats = self.cluster.broker_stats()
                if topics(stats) >= self.want:
                    self.broker = stats
                    self.gateways = self.cluster.gateway_stats()
                    return
            self.error = f"the broker never held {self.want} subscriptions"
        except Exception as e:  # noqa: BLE001 - reported with the run, not fatal
            self.error = f"stats: {e}"


def fanout(target, port, pids, opts, mode, rate):
    one_each = [
        "--connections", str(opts.connections), "--groups", str(opts.connections),
        "--senders", str(opts.senders), "--address", mode, "--duration", opts.duration,
        "--warmup", opts.warmup, "--payload", "64",
    ]
    return run_fanout(target, port, pids, one_each, rate)


def cpu_jiffies():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wait_quiet(limit, cores=0.25, window=3.0):
    """Waits up to `limit` seconds for `window` seconds in which the machine used less than
    `cores` cores (others' builds and tests share it); returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        busy0, total0 = cpu_jiffies()
        time.sleep(window)
        busy1, total1 = cpu_jiffies()
        if (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1) < cores:
            break
    return time.monotonic() - start


def summarize(stats):
    """What one gateway's /api/stats says about its connections and bus topics."""
    workers = stats.get("workers", [])
    return {
        "connections": stats.get("connections"),
        "groups": stats.get("groups"),
        "memberships": stats.get("memberships"),
        "bus_subscriptions": stats.get("bus", {}).get("subscriptions"),
        "worker_groups": sum(w.get("groups", 0) for w in workers),
        "cluster": {k: v for k, v in stats.get("cluster", {}).items()
                    if "topic" in k or "subscri" in k or k == "sends_to_uid"},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="target/release")
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--senders", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=5.0,
                    help="messages/s per sender at the steady pace (default 5: 5,000/s)")
    ap.add_argument("--full", action="store_true", help="also run as fast as delivered")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--warmup", default="2s")
    ap.add_argument("--out", default="target/cluster_uid.json")
    ap.add_argument("--quiet-wait", type=float, default=0, metavar="SECS",
                    help="before each run, wait up to SECS for the machine to be idle (3 s under "
                         "a quarter of a core)")
    opts = ap.parse_args()
    paces = [opts.rate] + ([None] if opts.full else [])
    results = []
    print(f"{GATEWAYS} gateways (1 worker each) + standalone broker, {opts.connections} connections, "
          f"{opts.connections} groups/uids, {opts.senders} senders, 64-byte messages")
    print(f"{'round':5} {'pace':8} {'mode':5} {'deliveries/s':>13} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'gw us/dlv':>9} {'broker us/dlv':>13} {'total us/dlv':>12} {'lost':>5} {'dup':>4} "
          f"{'broker topics':>13} {'machine':>8} {'bench':>6}")
    print("(machine: cores busy on the whole machine during the push-bench run, setup included; "
          "bench: cores push-bench itself used)")
    for rnd in range(1, opts.rounds + 1):
        for rate in paces:
            pace = f"{rate * opts.senders:,.0f}/s" if rate else "full"
            # group, uid in odd rounds and uid, group in even ones: drift hits both alike.
            for mode in (MODES if rnd % 2 else MODES[::-1]):
                waited = wait_quiet(opts.quiet_wait) if opts.quiet_wait else 0.0
                cluster = Cluster(opts.target)
                try:
                    probe = StatsProbe(cluster, opts.connections, timeout=180)
                    probe.start()
                    busy0, total0 = cpu_jiffies()
                    child0 = os.times()
                    args, r = fanout(opts.target, cluster.port, cluster.pids(), opts, mode, rate)
                    busy1, total1 = cpu_jiffies()
                    child1 = os.times()
                    probe.stop_event.set()
                    probe.join(5)
                finally:
                    cluster.stop()
                dps = r["deliveries_per_sec"] or 1
                cpu = {s["pid"]: s["cpu_percent"] for s in r["servers"]}
                gw = sum(cpu.get(g.p.pid, 0) for g in cluster.gateways) / 100 * 1e6 / dps
                br = cpu.get(cluster.broker.p.pid, 0) / 100 * 1e6 / dps
                lat = r["latency_us"]
                # The whole machine's CPU over the push-bench run (setup and drain included), in
                # cores, and push-bench's own: what else ran shows as the rest.
                machine = (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)
                wall = child1.elapsed - child0.elapsed
                bench_cores = ((child1.children_user + child1.children_system)
                               - (child0.children_user + child0.children_system)) / max(wall, 1e-9)
                b = probe.broker
                topic_note = (f"{b['subscriptions']}g+{b['cluster_subscriptions']}c" if b
                              else (probe.error or "?"))
                print(f"{rnd:5} {pace:8} {mode:5} {r['deliveries_per_sec']:13,.0f} "
                      f"{lat['p50'] / 1000:7.2f} {lat['p99'] / 1000:7.2f} {gw:9.2f} {br:13.2f} "
                      f"{gw + br:12.2f} {r['lost']:5} {r['duplicated']:4} {topic_note:>13} "
                      f"{machine:8.2f} {bench_cores:6.2f}"
                      + ("  BROKEN RUN" if r["broken"] else ""), flush=True)
                results.append({
                    "round": rnd, "pace": pace, "mode": mode, "command": " ".join(args),
                    "gateways_us_per_delivery": gw, "broker_us_per_delivery": br,
                    "gateway_cpu_percent": [cpu.get(g.p.pid, 0) for g in cluster.gateways],
                    "broker_cpu_percent": cpu.get(cluster.broker.p.pid, 0),
                    "machine_cores_busy": machine, "push_bench_cores": bench_cores,
                    "waited_for_quiet_secs": waited,
                    "broker_stats_before": probe.baseline, "broker_stats_joined": b,
                    "gateway_stats_joined": [summarize(s) for s in probe.gateways or []],
                    "stats_error": probe.error, "result": r,
                })
    os.makedirs(os.path.dirname(opts.out) or ".", exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"raw results: {opts.out}")


if __name__ == "__main__":
    sys.exit(main())

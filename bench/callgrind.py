#!/usr/bin/env python3
"""Instructions per delivery at everyday load, counted by valgrind's callgrind (BENCHMARKS.md).

A gateway (2 workers, embedded broker, the release build) runs under
`valgrind --tool=callgrind`; `push-bench fanout` keeps --connections connections in groups of
100 and --senders senders each sending 64-byte messages at --rate messages/s, so that a
delivery is rarely batched with another: each is its own write, as at everyday load. Once every
connection has joined and a second has passed, the counters are zeroed (`callgrind_control -z`)
and the gateway's deliveries read from its admin API; after --window seconds the counters are
dumped (`callgrind_control -d`) and the deliveries read again. Instructions per delivery = the
gateway's instructions in the window (every thread: workers, embedded broker, admin) / the
deliveries in the window.

Instruction counts do not depend on what else the machine runs, so two builds compare on a
noisy machine (the wall-clock benchmarks need a quiet one). They do not count the kernel's work
(the writes themselves): CPU time per delivery is bench/carriers.py's and push-bench's figure.

    cargo build --release -p gateway -p push-bench
    python3 bench/callgrind.py [--target target/release] [--rate 1] [--window 20]
    python3 bench/callgrind.py --keep target/cg.out   # then: callgrind_annotate target/cg.out

Prints one line and writes --out (default target/callgrind.json). Everything listens on
127.0.0.1 and stops by itself.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from carriers import Proc, free_port, wait_port

# valgrind runs the gateway tens of times slower: its start and the 1,000 handshakes take time.
START_TIMEOUT = 120


def stats(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/stats", timeout=30) as r:
        return json.load(r)


def deliveries(admin):
    return sum(w["deliveries"] for w in stats(admin)["workers"])


def wait_joined(admin, connections, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = stats(admin)
        if s["connections"] >= connections and s["memberships"] >= connections:
            return
        time.sleep(0.5)
    raise RuntimeError(f"not {connections} members within {timeout}s: {s}")


def instructions(dump):
    """The `totals:` (or `summary:`) of a callgrind dump: its instructions (Ir)."""
    with open(dump, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="target/release")
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=10)
    ap.add_argument("--rate", type=int, default=1, help="messages/s per sender")
    ap.add_argument("--window", type=float, default=20.0, help="seconds counted")
    ap.add_argument("--out", default="target/callgrind.json")
    ap.add_argument("--keep", metavar="FILE",
                    help="also keep the window's callgrind dump here (for callgrind_annotate)")
    opts = ap.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not on PATH (apt-get install valgrind)")
    groups = max(1, opts.connections // 100)
    work = tempfile.mkdtemp(prefix="callgrind-")
    port, admin = free_port(), free_port()
    # A later dump names only the functions the earlier ones did not: a kept one must name all.
    names = ["--compress-strings=no"] if opts.keep else []
    gateway = Proc("gateway", [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/cg.out.%p", *names,
        f"{opts.target}/gateway", "--workers", "2", "--listen", f"127.0.0.1:{port}",
        "--admin", f"127.0.0.1:{admin}", "--broker-listen", "127.0.0.1:0",
        "--max-messages-per-second", "0", "--log-format", "json"])
    bench = None
    try:
        wait_port(port, timeout=START_TIMEOUT)
        wait_port(admin, timeout=START_TIMEOUT)
        bench = subprocess.Popen(
            [f"{opts.target}/push-bench", "--url", f"ws://127.0.0.1:{port}", "fanout",
             "--connections", str(opts.connections), "--groups", str(groups),
             "--senders", str(opts.senders), "--payload", "64", "--rate", str(opts.rate),
             "--connect-timeout", "60", "--warmup", f"{START_TIMEOUT}s",
             "--duration", f"{int(opts.window) + 30}s", "--json"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_joined(admin, opts.connections)
        time.sleep(1)
        pid = str(gateway.p.pid)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True, timeout=60)
        before = deliveries(admin)
        time.sleep(opts.window)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True, timeout=60)
        after = deliveries(admin)
        dumps = sorted(glob.glob(f"{work}/cg.out.{pid}.*"), key=os.path.getmtime)
        if not dumps:
            raise RuntimeError(f"no dump in {work}")
        ir = instructions(dumps[-1])
        if opts.keep:
            shutil.copyfile(dumps[-1], opts.keep)
    finally:
        if bench is not None:
            bench.kill()
            bench.wait()
        gateway.stop()
        shutil.rmtree(work, ignore_errors=True)
    counted = after - before
    if counted <= 0:
        sys.exit(f"no deliveries in the window ({before} -> {after})")
    result = {
        "connections": opts.connections, "groups": groups, "senders": opts.senders,
        "rate_per_sender": opts.rate, "window_s": opts.window, "deliveries": counted,
        "instructions": ir, "instructions_per_delivery": ir / counted,
    }
    os.makedirs(os.path.dirname(opts.out) or ".", exist_ok=True)
    with open(opts.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"{opts.connections} connections, {groups} groups, {opts.senders} senders at "
          f"{opts.rate}/s: {counted:,} deliveries in {opts.window:g} s, {ir:,} instructions, "
          f"{ir / counted:,.0f} per delivery")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The kernel's floor under one write per delivery, beside the gateway's cost, in one run.

At everyday load (BENCHMARKS.md, issue 12) each delivery is its own write to a member's socket.
This script measures, on this machine and in the same run:

- floor: a writer process that does nothing but that: 1,000 TCP connections over loopback
  (TCP_NODELAY, as the gateway's), a reader process on the other end draining them with epoll
  (as a load generator does), and the writer sending one 66-byte WebSocket frame (64-byte text)
  per delivery in the shape of the everyday load: a burst of 100 writes (one message to a group
  of 100) every 2.5 ms, 40,000 writes/s. Its system time per write is what the kernel costs for
  one small write with the receiver's side of loopback TCP (which runs in the writer's call);
  its user time is Python's and not part of the floor.
- gateway: one gateway (2 workers, embedded broker) under `push-bench fanout` with the everyday
  shape (1,000 connections, 10 groups, 10 senders at 40 messages/s spread over the period),
  its user and system time per delivery over the measured window.

    cargo build --release -p gateway -p push-bench
    python3 bench/floor.py [--gateway target/release/gateway] [--duration 10] [--rounds 2]

Everything listens on 127.0.0.1 and stops by itself.
"""

import argparse
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from ab import SHAPES, start_gateway

TICK = os.sysconf("SC_CLK_TCK")
CONNECTIONS = 1000
BURST = 100
PERIOD = 0.0025  # a burst every 2.5 ms: 40,000 writes/s
FRAME = bytes([0x81, 64]) + b"x" * 64


def cpu_ticks(pid):
    """utime and stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]), int(rest[12])


def reader():
    """Listens (printing its port), accepts CONNECTIONS connections and drains them until the
    process is terminated."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(CONNECTIONS)
    print(listener.getsockname()[1], flush=True)
    sel = selectors.EpollSelector()
    accepted = 0
    while accepted < CONNECTIONS:
        conn, _ = listener.accept()
        conn.setblocking(False)
        sel.register(conn, selectors.EVENT_READ)
        accepted += 1
    while True:
        for key, _ in sel.select(timeout=0.1):
            try:
                data = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()


def floor_child(port, duration):
    """The writer process: connects, writes the everyday shape for `duration` s, prints its own
    user and system time per write over the measured window (after a 1 s warm-up)."""
    socks = []
    for _ in range(CONNECTIONS):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    groups = [socks[i::10] for i in range(10)]
    writes = 0
    start = time.perf_counter()
    measured_from = start + 1.0
    end = measured_from + duration
    before = None
    writes_before = 0
    due = start
    g = 0
    while True:
        now = time.perf_counter()
        if before is None and now >= measured_from:
            before = os.times()
            writes_before = writes
        if now >= end:
            break
        if now < due:
            time.sleep(max(0.0, due - now - 0.0002))
            continue
        for s in groups[g]:
            s.send(FRAME)
        writes += len(groups[g])
        g = (g + 1) % len(groups)
        due += PERIOD
    after = os.times()
    n = writes - writes_before
    if n == 0:
        sys.exit("the writer made no write in the measured window")
    print(json.dumps({
        "writes": n,
        "writes_per_sec": n / duration,
        "user_us_per_write": (after.user - before.user) * 1e6 / n,
        "system_us_per_write": (after.system - before.system) * 1e6 / n,
    }))


def run_floor(duration):
    # The reader runs in its own process, so that its time is not the writer's. It prints its
    # port once it listens (a probe connection would take one of its CONNECTIONS places).
    child = subprocess.Popen([sys.executable, __file__, "--reader"], stdout=subprocess.PIPE,
                             text=True)
    try:
        line = child.stdout.readline()
        if not line.strip():
            raise RuntimeError("the reader process ended before it listened")
        port = int(line)
        out = subprocess.run([sys.executable, __file__, "--writer", str(port),
                              "--duration", str(duration)],
                             capture_output=True, text=True, timeout=duration + 120)
        if out.returncode != 0:
            raise RuntimeError(f"writer failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout)
    finally:
        child.terminate()
        child.wait(timeout=10)


def run_gateway(gateway_bin, bench_bin, duration):
    gw, port = start_gateway(gateway_bin)
    try:
        args = [bench_bin, "--url", f"ws://127.0.0.1:{port}", *SHAPES["everyday"],
                "--duration", f"{duration}s", "--json"]
        errors = tempfile.TemporaryFile(mode="w+")
        bench = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            return _measure(gw, bench, errors, duration)
        finally:
            if bench.poll() is None:
                bench.kill()
                bench.wait()
            errors.close()
    finally:
        gw.stop()


def _measure(gw, bench, errors, duration):
    """The gateway's user and system time per delivery inside push-bench's measured window:
    push-bench connects, warms up for 2 s, then measures for `duration`; the two samples are
    taken inside that window, with a margin at each end."""
    samples = []
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline and bench.poll() is None:
        # Wait for the connections to be in place (the count includes the gateway's two
        # listeners, and the last few connections follow within milliseconds), then for
        # push-bench's warm-up to end.
        time.sleep(0.5)
        if _sockets(gw.p.pid) >= CONNECTIONS:
            time.sleep(3.0)
            samples.append((time.perf_counter(), cpu_ticks(gw.p.pid)))
            time.sleep(duration - 2.0)
            samples.append((time.perf_counter(), cpu_ticks(gw.p.pid)))
            break
    out, _ = bench.communicate(timeout=duration + 300)
    if bench.returncode not in (0, 2):
        errors.seek(0)
        raise RuntimeError(f"push-bench failed ({bench.returncode}): {errors.read()[-2000:]}")
    result = json.loads(out)
    if len(samples) != 2:
        raise RuntimeError("the gateway's CPU was not sampled inside the measured window")
    (t0, (u0, s0)), (t1, (u1, s1)) = samples
    rate = result["deliveries_per_sec"]
    if not rate:
        raise RuntimeError(f"push-bench measured no deliveries: {out[-2000:]}")
    deliveries = rate * (t1 - t0)
    return {
        "deliveries_per_sec": rate,
        "user_us_per_delivery": (u1 - u0) / TICK * 1e6 / deliveries,
        "system_us_per_delivery": (s1 - s0) / TICK * 1e6 / deliveries,
        "lost": result["lost"], "duplicated": result["duplicated"],
    }


def _sockets(pid):
    """The sockets the process holds (its listeners and its connections)."""
    try:
        return sum(1 for fd in os.listdir(f"/proc/{pid}/fd")
                   if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"))
    except OSError:
        return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", default="target/release/gateway")
    ap.add_argument("--bench", default="target/release/push-bench")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reader", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--writer", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.duration < 4:
        ap.error("--duration must be at least 4 (s): the gateway is sampled from 1 s into "
                 "push-bench's window to 1 s before its end")
    if a.reader:
        reader()
        return
    if a.writer:
        floor_child(a.writer, a.duration)
        return
    rows = []
    for r in range(a.rounds):
        for what in (["floor", "gateway"] if r % 2 == 0 else ["gateway", "floor"]):
            if what == "floor":
                f = run_floor(a.duration)
                print(f"round {r + 1} floor:   {f['writes_per_sec']:8,.0f} writes/s      "
                      f"system {f['system_us_per_write']:5.2f} µs/write  "
                      f"(Python's user {f['user_us_per_write']:5.2f})", flush=True)
            else:
                f = run_gateway(a.gateway, a.bench, a.duration)
                print(f"round {r + 1} gateway: {f['deliveries_per_sec']:8,.0f} deliveries/s  "
                      f"system {f['system_us_per_delivery']:5.2f} µs/delivery "
                      f"user {f['user_us_per_delivery']:5.2f}  lost {f['lost']} "
                      f"dup {f['duplicated']}", flush=True)
            rows.append({"round": r + 1, "what": what, **f})
    for what, key in (("floor", "system_us_per_write"), ("gateway", "system_us_per_delivery")):
        values = [row[key] for row in rows if row["what"] == what]
        print(f"median {what}: system {statistics.median(values):.2f} µs per write/delivery")
    values = [row["user_us_per_delivery"] for row in rows if row["what"] == "gateway"]
    print(f"median gateway: user {statistics.median(values):.2f} µs per delivery")


if __name__ == "__main__":
    main()

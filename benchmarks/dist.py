"""Two-node benchmarks: one-way throughput, round-trip latency, rpc.call rate.

The benchmark process is one node; the other is a separate OS process started
with :class:`pybeam.testing.LocalCluster`, both on 127.0.0.1, so every message
crosses a real TCP connection and two event loops on two cores.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from typing import Any

import pybeam
from pybeam import Pid, receive, send
from pybeam.testing import LocalCluster, free_port

ONE_WAY_MESSAGES = 300_000
ROUND_TRIPS = 10_000
RPC_CALLS = 3_000


async def sink() -> None:
    """Count messages: ("count", n, reply_to) then n messages, then "done"."""
    while True:
        match await receive():
            case ("count", n, reply_to):
                for _ in range(n):
                    await receive()
                send(reply_to, "done")


async def ponger() -> None:
    """Send every pid it receives back to it."""
    while True:
        pid = await receive()
        send(pid, pid)


def add(a: int, b: int) -> int:
    """What the rpc benchmark calls."""
    return a + b


async def one_way(peer: Pid, n: int = ONE_WAY_MESSAGES) -> float:
    """Messages per second from a process here to one on the other node."""
    me = pybeam.self()
    send(peer, ("count", n, me))
    t0 = time.perf_counter()
    for i in range(n):
        send(peer, ("msg", i))
        # As in the local benchmark: yield now and then, so the connection
        # flushes while sending goes on rather than once at the end.
        if i & 1023 == 1023:
            await asyncio.sleep(0)
    await receive("done", timeout=120)
    return n / (time.perf_counter() - t0)


async def round_trips(peer: Pid, n: int = ROUND_TRIPS) -> tuple[float, float]:
    """(p50, p99) of a message's round trip there and back, in microseconds."""
    me = pybeam.self()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        send(peer, me)
        await receive(timeout=10)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6


async def rpc_rate(node: str, n: int = RPC_CALLS) -> float:
    """Sequential rpc.call per second."""
    t0 = time.perf_counter()
    for i in range(n):
        assert await pybeam.rpc.call(node, add, i, 1) == i + 1
    return n / (time.perf_counter() - t0)


BIG_MESSAGE = 50 * 1024 * 1024
SMALL_DURING_BIG = 50


async def stamper() -> None:
    """Latencies of stamped messages, ("stamp", time.monotonic() when sent);
    ("big", ...) counted; ("report", n, reply_to): once n stamps and the big one
    arrived, send back (latencies in ms in order sent, big's arrival position)."""
    latencies: list[float] = []
    big_at = -1
    while True:
        match await receive():
            case ("stamp", float() as sent):
                latencies.append((time.monotonic() - sent) * 1e3)  # CLOCK_MONOTONIC: one clock per machine
            case ("big", _):
                big_at = len(latencies)
            case ("report", n, reply_to):
                while len(latencies) < n or big_at < 0:
                    match await receive():
                        case ("stamp", float() as sent):
                            latencies.append((time.monotonic() - sent) * 1e3)
                        case ("big", _):
                            big_at = len(latencies)
                send(reply_to, (latencies, big_at))
                latencies, big_at = [], -1


async def _big_sender(peer: Pid, payload: bytes, told: Pid) -> None:
    send(peer, ("big", payload))
    send(told, "sent")


async def small_during_big(fragment_size: int | None) -> tuple[float, float, int]:
    """Latency (ms) of small messages from one process while another sends a
    50 MB message to the same node: (the one sent right after it, the worst,
    how many arrived before the big one). ``fragment_size=0``: fragmentation off."""
    os.environ.setdefault("PYBEAM_EPMD_PORT", str(free_port()))
    name = f"bench_{secrets.token_hex(3)}@127.0.0.1"
    async with (
        pybeam.Node(name, cookie=secrets.token_hex(8), fragment_size=fragment_size),
        LocalCluster(1, prefix="bench_peer") as cluster,
    ):
        peer: Any = await pybeam.spawn_on(cluster.nodes[0], stamper)
        payload = b"x" * BIG_MESSAGE
        me = pybeam.self()
        pybeam.spawn(_big_sender, peer, payload, me)
        await receive("sent", timeout=60)
        for _ in range(SMALL_DURING_BIG):
            send(peer, ("stamp", time.monotonic()))
            await asyncio.sleep(0.002)
        send(peer, ("report", SMALL_DURING_BIG, me))
        latencies, big_at = await receive(timeout=120)
    return latencies[0], max(latencies), big_at


async def main() -> list[tuple[str, float, str, float]]:
    """Run the two-node benchmarks; rows of (name, figure, unit, target)."""
    os.environ.setdefault("PYBEAM_EPMD_PORT", str(free_port()))
    name = f"bench_{secrets.token_hex(3)}@127.0.0.1"
    rows: list[tuple[str, float, str, float]] = []
    async with (
        pybeam.Node(name, cookie=secrets.token_hex(8)),
        LocalCluster(1, prefix="bench_peer") as cluster,
    ):
        peer = cluster.nodes[0]
        sink_pid: Any = await pybeam.spawn_on(peer, sink)
        pong_pid: Any = await pybeam.spawn_on(peer, ponger)
        rows.append(("cross-node one-way send", await one_way(sink_pid), "msgs/s", 400_000.0))
        p50, p99 = await round_trips(pong_pid)
        rows.append(("cross-node round trip p50", p50, "us", 130.0))
        rows.append(("cross-node round trip p99", p99, "us (p99)", 0.0))
        rows.append(("sequential rpc.call", await rpc_rate(peer), "calls/s", 5_000.0))
    # Head-of-line blocking, fragmentation off then on (the default), same run.
    for label, size in (("unfragmented", 0), ("fragmented", None)):
        first, worst, before = await small_during_big(size)
        rows.append((f"small msg right after a 50 MB one, {label}", first, "ms", 0.0))
        rows.append((f"worst small msg during a 50 MB one, {label}", worst, "ms", 0.0))
        rows.append((f"small msgs (of {SMALL_DURING_BIG}) before a 50 MB one, {label}", before, "", 0.0))
    return rows

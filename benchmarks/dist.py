"""Two-node benchmarks: one-way throughput, round-trip latency, rpc.call rate.

The benchmark process is one node; the other is a separate OS process started
with :class:`pybeam.testing.LocalCluster`, both on 127.0.0.1, so every message
crosses a real TCP connection and two event loops on two cores. Those are
wall-clock figures, which a shared machine's load shifts a lot;
:func:`cpu_costs` adds the CPU time per round trip and per message with both
nodes in one process, beside bare asyncio's measured the same way.
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


CPU_ROUND_TRIPS = 5_000
CPU_ONE_WAY = 100_000


async def _two_nodes() -> tuple[pybeam.Node, pybeam.Node]:
    """Two started nodes in this process, on this loop, sharing a cookie."""
    os.environ.setdefault("PYBEAM_EPMD_PORT", str(free_port()))
    cookie, tag = secrets.token_hex(8), secrets.token_hex(3)
    # No busy waiting: in one process nothing waits for another to wake, and
    # the polling iterations would count as the hot path's CPU.
    a = await pybeam.Node(f"cpu_a{tag}@127.0.0.1", cookie=cookie, busy_wait=0).start()
    b = await pybeam.Node(f"cpu_b{tag}@127.0.0.1", cookie=cookie, busy_wait=0).start()
    return a, b


async def cpu_costs() -> tuple[float, float, float]:
    """CPU time per cross-node round trip and per one-way message (both in
    µs, both ends counted), with both nodes in this process on one event loop
    and a real TCP connection between them; and the bare-asyncio floor's CPU
    per round trip measured the same way (framed msgpack, a Protocol that
    answers inside data_received). CPU time is what other load on a shared
    machine disturbs least: compare these before and after a change."""
    from .compare.floor_server import Server
    from .compare.peer_asyncio import Client

    a, b = await _two_nodes()
    try:
        pong, _ = b.spawn(ponger)
        sink_pid, _ = b.spawn(sink)
        done: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop().create_future()

        async def driver() -> None:
            await round_trips(pong, 200)  # warm: connection, code, caches
            await one_way(sink_pid, 5_000)
            c0 = time.process_time()
            await round_trips(pong, CPU_ROUND_TRIPS)
            c1 = time.process_time()
            await one_way(sink_pid, CPU_ONE_WAY)
            c2 = time.process_time()
            done.set_result(((c1 - c0) / CPU_ROUND_TRIPS * 1e6, (c2 - c1) / CPU_ONE_WAY * 1e6))

        a.spawn(driver)
        rtt, one = await asyncio.wait_for(done, 300)
    finally:
        await a.stop()
        await b.stop()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Server, "127.0.0.1", 0)
    transport, client = await loop.create_connection(Client, "127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        for _ in range(200):
            await client.request(["ping", 0])
        c0 = time.process_time()
        for _ in range(CPU_ROUND_TRIPS):
            await client.request(["ping", 0])
        floor = (time.process_time() - c0) / CPU_ROUND_TRIPS * 1e6
    finally:
        transport.close()
        server.close()
    return rtt, one, floor


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
    rtt_cpu, one_cpu, floor_cpu = await cpu_costs()
    rows.append(("CPU per round trip, one process", rtt_cpu, "us", 0.0))
    rows.append(("  bare asyncio's, same way", floor_cpu, "us", 0.0))
    rows.append(("CPU per one-way msg, one process", one_cpu * 1000, "ns", 0.0))
    # Head-of-line blocking, fragmentation off then on (the default), same run.
    for label, size in (("unfragmented", 0), ("fragmented", None)):
        first, worst, before = await small_during_big(size)
        rows.append((f"small msg right after a 50 MB one, {label}", first, "ms", 0.0))
        rows.append((f"worst small msg during a 50 MB one, {label}", worst, "ms", 0.0))
        rows.append((f"small msgs (of {SMALL_DURING_BIG}) before a 50 MB one, {label}", before, "", 0.0))
    return rows


async def one_process(kind: str, n: int) -> float:
    """CPU µs per operation of ``kind`` ("rtt", "one_way" or "rpc"), ``n`` of
    them, with both nodes in this process (see :func:`cpu_costs`). Run under
    ``valgrind --tool=cachegrind --cache-sim=no`` with two values of ``n``:
    the difference of the instruction counts over that of ``n`` is the
    instructions per operation, a figure other load does not disturb."""
    a, b = await _two_nodes()
    try:
        pong, _ = b.spawn(ponger)
        sink_pid, _ = b.spawn(sink)
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        async def run(count: int) -> None:
            if kind == "rtt":
                await round_trips(pong, count)
            elif kind == "one_way":
                await one_way(sink_pid, count)
            else:
                for i in range(count):
                    await pybeam.rpc.call(b.name, add, i, 1)

        async def driver() -> None:
            await run(200)  # warm: connection, code, caches
            c0 = time.process_time()
            await run(n)
            done.set_result((time.process_time() - c0) / n * 1e6)

        a.spawn(driver)
        return await asyncio.wait_for(done, 300)
    finally:
        await a.stop()
        await b.stop()


if __name__ == "__main__":
    # python -m benchmarks.dist {rtt|one_way|rpc} N: one kind, one process.
    import sys

    kind_arg, n_arg = sys.argv[1], int(sys.argv[2])
    if kind_arg not in ("rtt", "one_way", "rpc"):
        raise SystemExit("usage: python -m benchmarks.dist {rtt|one_way|rpc} N")
    print(f"{kind_arg}: {pybeam.run(one_process, kind_arg, n_arg):.2f} us CPU per operation")

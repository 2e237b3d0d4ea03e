"""Single-node benchmarks: send throughput, ping-pong, spawn rate, memory per process.

Run through ``python -m benchmarks``.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from typing import Any

import pybeam
from pybeam import gen_server, receive, send, spawn

ONE_WAY_MESSAGES = 1_000_000
PING_PONG_ROUND_TRIPS = 200_000
SPAWNS = 100_000
IDLE_PROCESSES = 20_000


async def _sink(n: int, reply_to: pybeam.Pid) -> None:
    for _ in range(n):
        await receive()
    send(reply_to, "done")


async def one_way(n: int = ONE_WAY_MESSAGES) -> float:
    """Messages per second from one process to another (1M by default)."""
    me = pybeam.self()
    sink = spawn(_sink, n, me)
    t0 = time.perf_counter()
    # Yield now and then so the receiver drains as the sender fills, as two
    # BEAM schedulers would; one million queued tuples would measure the allocator.
    for i in range(n):
        send(sink, i)
        if i & 1023 == 1023:
            await asyncio.sleep(0)
    await receive()
    return n / (time.perf_counter() - t0)


async def _ponger() -> None:
    while True:
        msg = await receive()
        if msg is None:
            return
        send(msg, msg)


async def _pinger(n: int, ponger: pybeam.Pid, reply_to: pybeam.Pid) -> None:
    me = pybeam.self()
    t0 = time.perf_counter()
    for _ in range(n):
        send(ponger, me)
        await receive()
    send(reply_to, n / (time.perf_counter() - t0))


async def ping_pong(n: int = PING_PONG_ROUND_TRIPS) -> float:
    """Round trips per second between two spawned processes (as BEAM's are).

    The pinger is a spawned process, not the benchmark's own task: a task
    that became a process by calling pybeam (a script's main) waits in
    receive through a slower path, see :func:`ping_pong_from_main`.
    """
    ponger = spawn(_ponger)
    spawn(_pinger, n, ponger, pybeam.self())
    rate: float = await receive()
    send(ponger, None)
    return rate


async def ping_pong_from_main(n: int = PING_PONG_ROUND_TRIPS) -> float:
    """Round trips per second between the caller (an adopted process) and a spawned one."""
    me = pybeam.self()
    ponger = spawn(_ponger)
    t0 = time.perf_counter()
    for _ in range(n):
        send(ponger, me)
        await receive()
    dt = time.perf_counter() - t0
    send(ponger, None)
    return n / dt


async def _noop() -> None:
    return None


async def spawn_rate(n: int = SPAWNS) -> float:
    """Processes spawned, run to completion and reaped, per second."""
    t0 = time.perf_counter()
    for i in range(n - 1):
        spawn(_noop)
        # As in one_way: let them run while spawning goes on, as BEAM's
        # other schedulers would, instead of piling up 100k pending tasks.
        if i & 1023 == 1023:
            await asyncio.sleep(0)
    # Tasks run in the order they were spawned: when the last is down, all are.
    _, ref = pybeam.spawn_monitor(_noop)
    await receive(("DOWN", ref, pybeam.ANY, pybeam.ANY, pybeam.ANY))
    return n / (time.perf_counter() - t0)


async def _idle() -> None:
    await receive()


async def memory_per_process(n: int = IDLE_PROCESSES) -> float:
    """Bytes of Python heap per idle process (waiting in receive)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    pids = [spawn(_idle) for _ in range(n)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # The list of pids is the caller's, not the processes'.
    per = (after - before - _list_size(pids)) / n
    for p in pids:
        pybeam.exit(p, "kill")
    await asyncio.sleep(0)
    return per


def _list_size(xs: list[Any]) -> int:
    import sys

    return sys.getsizeof(xs)


async def _waits_for_stop(backlog: int, reply_to: pybeam.Pid) -> None:
    me = pybeam.self()
    for i in range(backlog):
        send(me, ("noise", i))
    send(reply_to, "waiting")
    await receive(("stop",))
    send(reply_to, "stopped")


async def selective_arrivals(backlog: int, n: int = 20_000) -> float:
    """Arrivals per second that wake a selective receive (waiting for one
    message that has not come) behind ``backlog`` messages it already looked at.

    BEAM checks each arrival once, whatever lies before it; so should pybeam.
    """
    me = pybeam.self()
    waiter = spawn(_waits_for_stop, backlog, me)
    await receive("waiting")
    await asyncio.sleep(0)  # it scans its backlog once and waits
    t0 = time.perf_counter()
    for i in range(n):
        send(waiter, ("more", i))
        await asyncio.sleep(0)  # the waiter wakes, looks at the one arrival, waits again
    dt = time.perf_counter() - t0
    send(waiter, ("stop",))
    await receive("stopped")
    return n / dt


class _Echo(gen_server.GenServer):
    def init(self, arg: Any) -> None:
        return None

    def handle_call(self, request: Any, from_: Any, state: Any) -> tuple[str, Any, Any]:
        return ("reply", request, state)


async def _caller(n: int, server: pybeam.Pid, reply_to: pybeam.Pid) -> None:
    t0 = time.perf_counter()
    for i in range(n):
        await gen_server.call(server, i)
    send(reply_to, n / (time.perf_counter() - t0))


async def gen_server_calls(n: int = 50_000) -> float:
    """``gen_server.call`` round trips per second, from a process to a server
    on the same node (each a monitor, a send, a selective receive with the
    default timeout, a reply and a demonitor, as in OTP)."""
    server = await _Echo.start(None)
    spawn(_caller, n, server, pybeam.self())
    rate: float = await receive()
    await gen_server.stop(server)
    return rate


async def main() -> list[tuple[str, float, str, float]]:
    rows = []
    rows.append(("local one-way send (1M msgs)", await one_way(), "msgs/s", 1_500_000.0))
    rows.append(("local ping-pong", await ping_pong(), "round trips/s", 200_000.0))
    rows.append(("local ping-pong, pinger is main", await ping_pong_from_main(), "round trips/s", 0.0))
    rows.append(("spawn (run to exit)", await spawn_rate(), "processes/s", 150_000.0))
    rows.append(("memory per idle process", await memory_per_process(), "bytes", 1_500.0))
    rows.append(("gen_server.call, process to server", await gen_server_calls(), "calls/s", 0.0))
    # The goal: a backlog the receive has already looked at costs its arrivals
    # nothing (at least half the rate without one).
    plain = await selective_arrivals(0)
    behind = await selective_arrivals(100_000)
    rows.append(("selective receive woken behind 100k", 100 * behind / plain, "% of no backlog", 50.0))
    return rows

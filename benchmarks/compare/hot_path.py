"""The local hot path against the bare-asyncio floor, in one process:
``python -m benchmarks.compare.hot_path [REPETITIONS [SCALE]] [--only WORKLOAD]``.

pybeam's one-way send, ping-pong (two spawned processes) and spawn-and-exit
beside the same work done with ``asyncio.Queue`` and ``create_task``, under
the same event loop, interleaved repetition by repetition. Each figure is
timed twice: by the wall clock and by this process's CPU time, which a busy
machine disturbs far less (both sides are single-threaded, so their CPU time
is their cost). Prints the medians and pybeam's ratio to the floor with the
issue's goals (one-way >= 1.3x, ping-pong >= 1.2x).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import pybeam
from benchmarks import local
from pybeam import Pid, receive, send, spawn

from . import peer_asyncio

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
Timed = Callable[[Callable[[], float], int], Awaitable[float]]


async def _pb_one_way(clock: Callable[[], float], n: int) -> float:
    sink = spawn(local._sink, n, pybeam.self())
    t0 = clock()
    for i in range(n):
        send(sink, i)
        if i & 1023 == 1023:
            await asyncio.sleep(0)
    await receive()
    return n / (clock() - t0)


async def _pinger(clock: Callable[[], float], n: int, ponger: Pid, reply_to: Pid) -> None:
    me = pybeam.self()
    t0 = clock()
    for _ in range(n):
        send(ponger, me)
        await receive()
    send(reply_to, n / (clock() - t0))


async def _pb_ping_pong(clock: Callable[[], float], n: int) -> float:
    ponger = spawn(local._ponger)
    spawn(_pinger, clock, n, ponger, pybeam.self())
    rate: float = await receive()
    send(ponger, None)
    return rate


async def _pb_spawn(clock: Callable[[], float], n: int) -> float:
    t0 = clock()
    for i in range(n - 1):
        spawn(local._noop)
        if i & 1023 == 1023:
            await asyncio.sleep(0)
    _, ref = pybeam.spawn_monitor(local._noop)
    await receive(("DOWN", ref, pybeam.ANY, pybeam.ANY, pybeam.ANY))
    return n / (clock() - t0)


def _floor(fn: Callable[[int], Awaitable[float]]) -> Timed:
    async def timed(clock: Callable[[], float], n: int) -> float:
        # The floor's functions time themselves by the wall clock: scale
        # their rate by this clock's share of the elapsed time.
        c0, w0 = clock(), time.perf_counter()
        rate = await fn(n)
        return rate * (time.perf_counter() - w0) / (clock() - c0)

    return timed


#: (name, pybeam, floor, size, goal as pybeam/floor)
PAIRS: list[tuple[str, Timed, Timed, int, float]] = [
    ("one-way", _pb_one_way, _floor(peer_asyncio.one_way), 300_000, 1.3),
    ("ping-pong", _pb_ping_pong, _floor(peer_asyncio.ping_pong), 50_000, 1.2),
    ("spawn and exit", _pb_spawn, _floor(peer_asyncio.spawn_exit), 50_000, 0.0),
]


async def main(reps: int, scale: float = 1.0, only: list[str] | None = None) -> list[str]:
    """The table's lines: ``reps`` repetitions of each workload (those in
    ``only``, if given), sizes times ``scale``."""
    lines = [f"{'workload':16} {'clock':5} {'pybeam':>12} {'asyncio':>12} {'ratio (min-max)':>20}  goal"]
    for name, mine, theirs, size, goal in PAIRS:
        if only and _slug(name) not in only:
            continue
        n = max(2_048, int(size * scale))
        for clock_name, clock in CLOCKS.items():
            a, b = [], []
            for _ in range(reps):
                a.append(await mine(clock, n))
                b.append(await theirs(clock, n))
            r = [x / y for x, y in zip(a, b, strict=True)]
            med = statistics.median(r)
            met = "" if not goal else f">= {goal}: {'yes' if med >= goal else 'NO'}"
            lines.append(
                f"{name:16} {clock_name:5} {statistics.median(a):>12,.0f} {statistics.median(b):>12,.0f} "
                f"{med:>8.2f}x ({min(r):.2f}-{max(r):.2f})  {met}"
            )
    return lines


def _slug(name: str) -> str:
    return name.replace(" and ", "-")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.compare.hot_path", description=(__doc__ or "").split("\n\n")[1]
    )
    ap.add_argument("reps", nargs="?", type=int, default=7, help="repetitions of each workload (default 7)")
    ap.add_argument("scale", nargs="?", type=float, default=1.0, help="sizes times this (default 1.0)")
    ap.add_argument(
        "--only",
        action="append",
        choices=[_slug(name) for name, *_ in PAIRS],
        help="run only this workload (repeatable)",
    )
    args = ap.parse_args(argv)
    if args.reps < 1 or not args.scale > 0:
        ap.error("REPETITIONS must be >= 1 and SCALE > 0")
    return args


if __name__ == "__main__":
    _args = parse_args(sys.argv[1:])
    print(*pybeam.run(main, _args.reps, _args.scale, _args.only), sep="\n")

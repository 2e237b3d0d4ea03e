"""How fast request/response could go in pure Python, beside pybeam and Thespian:
``python -m benchmarks.compare.ceiling [REPETITIONS [N]]``.

Issue 15 asks for local ping-pong at 10x Thespian's. This measures, in one
process and interleaved, four ways of doing the same round trips:

- ``pybeam``: two spawned processes (``benchmarks.local.ping_pong``);
- ``asyncio``: the floor, a pair of ``asyncio.Queue`` (every hop is an
  event-loop iteration);
- ``run queue``: the ceiling of a scheduler of our own, written in Python:
  two coroutines stepped from a deque, a mailbox and a receive of the
  fewest lines that work, no links, monitors, timers, exit signals,
  contexts or ``current_task``. pybeam's run queue (:mod:`pybeam.scheduler`)
  does this with all of those; any pure-Python runtime with BEAM's
  semantics costs more than this;
- ``thespian``: Thespian's ``simpleSystemBase`` ``ask`` (when installed).

It prints each median and what 10x Thespian would take. When the ceiling is
below that, no pure-Python scheduler reaches the goal on this machine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import sys
import time
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any

import pybeam
from benchmarks import local

from . import peer_asyncio


class _Park:
    """What a coroutine yields to its run queue to wait for a message."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self)


_PARK = _Park()


class _Proc:
    __slots__ = ("coro", "parked", "queue")

    def __init__(self) -> None:
        self.coro: Coroutine[Any, Any, Any] | None = None
        self.queue: deque[Any] = deque()
        self.parked = False


def run_queue(n: int) -> float:
    """Round trips per second between two coroutines stepped from a deque."""
    runnable: deque[tuple[_Proc, Any]] = deque()

    def put(proc: _Proc, msg: Any) -> None:
        if proc.parked:
            proc.parked = False
            runnable.append((proc, msg))  # handed over: it never enters the queue
        else:
            proc.queue.append(msg)

    async def receive(proc: _Proc) -> Any:
        if proc.queue:
            return proc.queue.popleft()
        proc.parked = True
        return await _PARK

    async def pinger(me: _Proc, other: _Proc) -> None:
        for i in range(n):
            put(other, (me, i))
            await receive(me)

    async def ponger(me: _Proc) -> None:
        while True:
            sender, i = await receive(me)
            put(sender, i)

    a, b = _Proc(), _Proc()
    a.coro, b.coro = pinger(a, b), ponger(b)
    runnable.extend(((b, None), (a, None)))
    t0 = time.perf_counter()
    while runnable:
        proc, value = runnable.popleft()
        assert proc.coro is not None
        try:
            proc.coro.send(value)
        except StopIteration:
            break
    rate = n / (time.perf_counter() - t0)
    b.coro.close()
    return rate


def main(argv: list[str]) -> int:
    reps = int(argv[0]) if argv else 5
    n = int(argv[1]) if len(argv) > 1 else 100_000
    thespian = importlib.util.find_spec("thespian") is not None
    figures: dict[str, list[float]] = {"pybeam": [], "asyncio": [], "run queue": [], "thespian": []}
    for _ in range(reps):
        figures["pybeam"].append(pybeam.run(local.ping_pong, n))
        with asyncio.Runner(loop_factory=pybeam.new_event_loop) as runner:  # pybeam's loop: uvloop
            figures["asyncio"].append(runner.run(peer_asyncio.ping_pong(n)))
        figures["run queue"].append(run_queue(n))
        if thespian:
            from . import peer_thespian

            figures["thespian"].append(peer_thespian.run("ping_pong", max(n // 10, 100))[0])
    medians = {k: statistics.median(v) for k, v in figures.items() if v}
    for k, v in medians.items():
        print(f"{k:10} {v:>12,.0f} round trips/s")
    if "thespian" in medians:
        goal = 10 * medians["thespian"]
        print(
            f"10x Thespian: {goal:,.0f}/s; the pure-Python ceiling is {medians['run queue'] / goal:.2f}x of it"
        )
    else:
        print("Thespian not installed: pip install -e '.[compare]'")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

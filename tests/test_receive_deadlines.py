"""Receive timeouts on the node's one shared timer (pybeam.deadlines): each
fires at its own deadline whatever the order they were set in, a receive woken
by messages it does not want still times out, and the deadlines of receives
that ended (answered or cancelled) do not pile up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import pybeam
from pybeam import Pid, receive, send, spawn

# Below a deadline by at most the loop's timer rounding (uvloop rounds to ms).
SLACK = 0.002


async def _timed_waiter(report: Pid, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        await receive(lambda m: m == "never sent", timeout=timeout)
    except TimeoutError:
        send(report, ("timed out", timeout, loop.time() - t0))


async def test_timeouts_fire_in_deadline_order_whatever_order_they_were_set_in() -> None:
    me = pybeam.self()
    timeouts = [0.4, 0.1, 0.3, 0.05, 0.2]  # a later deadline first: the timer must move earlier
    for timeout in timeouts:
        spawn(_timed_waiter, me, timeout)
    reports = [await receive(timeout=10) for _ in timeouts]
    assert [r[1] for r in reports] == sorted(timeouts)
    for _, timeout, elapsed in reports:
        assert elapsed >= timeout - SLACK, (timeout, elapsed)


async def _flooder(to: Pid, pause: float) -> None:
    while True:
        send(to, "noise")
        await asyncio.sleep(pause)


@pytest.mark.parametrize("pause", [0.001, 0.0])
async def test_a_receive_woken_by_messages_it_does_not_want_still_times_out(pause: float) -> None:
    # pause 0: a message every loop iteration, so the deadline keeps firing
    # while the receive's future is already done by a message.
    me = pybeam.self()
    loop = asyncio.get_running_loop()
    flooder = spawn(_flooder, me, pause)
    try:
        for timeout in (0.05, 0.02, 0.03):
            t0 = loop.time()
            assert await receive(lambda m: m == "never sent", timeout=timeout, default="late") == "late"
            elapsed = loop.time() - t0
            assert timeout - SLACK <= elapsed < timeout + 5, (timeout, elapsed)
    finally:
        pybeam.exit(flooder, "kill")


async def _answer_each(n: int, timeout: float | None = 10.0) -> None:
    for _ in range(n):
        match await receive(timeout=timeout):
            case ("ask", Pid() as who):
                send(who, "answer")


async def _ask_each(server: Pid, n: int, timeout: float, report: Pid) -> None:
    """Ask ``n`` times; report the most deadlines the node held meanwhile."""
    me = pybeam.self()
    deadlines = pybeam.current_node().receive_deadlines(asyncio.get_running_loop())
    peak = 0
    for _ in range(n):
        send(server, ("ask", me))
        peak = max(peak, len(deadlines))
        await receive(lambda m: m == "answer", timeout=timeout)
    send(report, ("asked", peak))


async def test_deadlines_of_answered_receives_do_not_pile_up() -> None:
    node = pybeam.current_node()
    deadlines = node.receive_deadlines(asyncio.get_running_loop())
    me = pybeam.self()
    # One at a time, as sequential calls do: the heap stays at one entry.
    server = spawn(_answer_each, 300, None)
    seen = 0
    for _ in range(300):
        send(server, ("ask", me))
        seen = max(seen, len(deadlines))
        await receive(lambda m: m == "answer", timeout=60)
    assert seen <= 1
    assert len(deadlines) == 0
    # Many at once, with different timeouts: dead entries are swept, so the
    # heap stays within twice the waiting receives and a constant.
    askers, rounds = 40, 50
    for i in range(askers):
        spawn(_ask_each, spawn(_answer_each, rounds), rounds, 30.0 + i, me)
    peak = 0
    for _ in range(askers):
        _, asker_peak = await receive(("asked", int), timeout=60)
        peak = max(peak, asker_peak)
    waiting = 2 * askers + 1  # each asker, each server, and this process
    assert peak <= 2 * waiting + 64 + 1, peak
    assert len(deadlines) == 0


async def test_a_cancelled_receive_leaves_no_deadline_and_wakes_nobody_later() -> None:
    node = pybeam.current_node()
    deadlines = node.receive_deadlines(asyncio.get_running_loop())
    me = pybeam.self()

    async def wait_long() -> Any:
        return await receive(lambda m: m == "never sent", timeout=5)

    waiting = asyncio.ensure_future(wait_long())
    await asyncio.sleep(0.01)
    assert len(deadlines) == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(deadlines) == 0
    # A later receive is neither woken early nor lost.
    pybeam.send_after(0.1, me, "later")
    assert await receive(timeout=5) == "later"


def test_a_node_restarted_on_another_loop_times_out_there() -> None:
    node = pybeam.Node()

    async def life() -> float:
        async with node:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            assert await receive(timeout=0.05, default="none") == "none"
            return loop.time() - t0

    for _ in range(2):  # each asyncio.run is a new loop
        assert asyncio.run(life()) >= 0.05 - SLACK


async def _answered_then_ends() -> None:
    await receive(timeout=30)


async def test_the_shared_timer_keeps_no_ended_process_alive() -> None:
    # The timer stays armed for the first deadline (30 s) after the receives
    # were answered. Armed in the context of the process that set it, it kept
    # that process (its context's current process) alive until it fired:
    # past the end of the loop, in a cycle only the collector frees, never
    # once the gc policy has frozen it.
    import gc

    from pybeam.process import Process

    gc.collect()
    gc.disable()
    try:
        before = {id(o) for o in gc.get_objects() if isinstance(o, Process) and not o.alive}
        pids = [spawn(_answered_then_ends) for _ in range(20)]
        await asyncio.sleep(0)  # each is waiting, its deadline added
        for pid in pids:
            send(pid, "answer")
        while any(pybeam.is_alive(pid) for pid in pids):
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        kept = [o for o in gc.get_objects() if isinstance(o, Process) and not o.alive and id(o) not in before]
    finally:
        gc.enable()
    assert kept == []

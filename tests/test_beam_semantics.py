"""Regression tests for slips from BEAM's semantics found against real Erlang
(issue 12); the differential suite in tests/conformance/ covers them too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import pybeam
from pybeam import ANY, Exit, NoProc, Pid, receive, send, spawn


async def down_of(ref: pybeam.Ref, timeout: float = 5.0) -> Any:
    msg = await receive(("DOWN", ref, "process", ANY, ANY), timeout=timeout)
    return msg[4]


# -- 1. a process that has returned is dead before anyone else runs ------------


async def _observe_last_words(ending: str) -> tuple[bool, Any, Any, Any]:
    """B sends its last message to A, then ends by ``ending``; A, which
    monitors B, reports what it sees the moment that message arrives."""
    parent = pybeam.self()

    async def b(a: Pid) -> None:
        pybeam.register("b_name", pybeam.self())
        await receive("go")
        send(a, "last words")
        if ending == "raise":
            raise ZeroDivisionError("boom")
        if ending == "exit":
            pybeam.exit("bye")

    async def a() -> None:
        pid = spawn(b, pybeam.self())
        ref = pybeam.monitor(pid)
        send(pid, "go")
        await receive("last words")
        # Nothing else may run in between: no await before these looks.
        seen = (
            pybeam.is_alive(pid),
            pybeam.whereis("b_name"),
            await receive(("DOWN", ref, "process", pid, ANY), timeout=0, default=None),
        )
        send(parent, seen)

    spawn(a)
    alive, name, down = await receive(timeout=5)
    return alive, name, down, None


@pytest.mark.parametrize(("ending", "reason"), [("return", "normal"), ("exit", "bye")])
async def test_a_returned_process_is_dead_at_once(ending: str, reason: str) -> None:
    alive, name, down, _ = await _observe_last_words(ending)
    assert alive is False
    assert name is None
    assert down is not None and down[4] == reason


async def test_a_crashed_process_is_dead_at_once() -> None:
    alive, name, down, _ = await _observe_last_words("raise")
    assert alive is False
    assert name is None
    assert down is not None and isinstance(down[4], pybeam.Crash) and down[4].kind == "ZeroDivisionError"


async def test_a_returned_process_has_fired_its_links_before_its_partner_runs() -> None:
    parent = pybeam.self()

    async def b(a: Pid) -> None:
        await receive("go")
        send(a, "last words")
        raise ValueError("x")

    async def a() -> None:
        pybeam.trap_exit(True)
        pid = pybeam.spawn_link(b, pybeam.self())
        send(pid, "go")
        await receive("last words")
        send(parent, await receive(("EXIT", pid, ANY), timeout=0, default=None))

    spawn(a)
    got = await receive(timeout=5)
    assert got is not None and got[2].kind == "ValueError"


async def test_a_plain_function_process_is_dead_at_once() -> None:
    parent = pybeam.self()

    def b(a: Pid) -> None:
        send(a, "last words")

    async def a() -> None:
        pid = spawn(b, pybeam.self())
        await receive("last words")
        send(parent, pybeam.is_alive(pid))

    spawn(a)
    assert await receive(timeout=5) is False


# -- 2. demonitor returns true unless asked for info ------------------------------


async def test_demonitor_returns_true_after_the_monitor_fired() -> None:
    _, ref = pybeam.spawn_monitor(lambda: None)
    assert await down_of(ref) == "normal"
    assert pybeam.demonitor(ref) is True
    assert pybeam.demonitor(ref, flush=True) is True
    assert pybeam.demonitor(ref, info=True) is False
    ref2 = pybeam.monitor(spawn(receive))
    assert pybeam.demonitor(ref2, info=True) is True


# -- 3. linking to a dead process while trapping exits ------------------------------


async def test_link_to_a_dead_process_while_trapping_gives_exit_noproc() -> None:
    pid, ref = pybeam.spawn_monitor(lambda: None)
    await down_of(ref)
    pybeam.trap_exit(True)
    pybeam.link(pid)
    assert await receive(timeout=0) == ("EXIT", pid, "noproc")
    pybeam.trap_exit(False)
    with pytest.raises(NoProc):
        pybeam.link(pid)


# -- 4. exit(self(), reason) stops the caller at once --------------------------------


@pytest.mark.parametrize(("reason", "expected"), [("boom", "boom"), ("kill", "killed"), ("normal", "normal")])
async def test_exit_self_stops_the_caller_at_once(reason: str, expected: str) -> None:
    parent = pybeam.self()

    def b() -> None:
        pybeam.exit(pybeam.self(), reason)
        send(parent, "ran on")

    _, ref = pybeam.spawn_monitor(b)
    assert await down_of(ref) == expected
    assert await receive(timeout=0.05, default=None) is None


async def test_exit_self_while_trapping_is_a_message() -> None:
    pybeam.trap_exit(True)
    me = pybeam.self()
    pybeam.exit(me, "boom")
    assert await receive(timeout=0) == ("EXIT", me, "boom")
    assert pybeam.is_alive(me)


async def test_exit_self_raises_exit_with_the_reason() -> None:
    parent = pybeam.self()

    def b() -> None:
        pybeam.trap_exit(True)
        try:
            pybeam.exit(pybeam.self(), "kill")
        except Exit as e:
            send(parent, e.reason)
            raise

    _, ref = pybeam.spawn_monitor(b)
    # Dead already (its DOWN is out) when the Exit reaches its code.
    assert await down_of(ref) == "killed"
    assert await receive("killed", timeout=5) == "killed"


# -- 5. timers die with their target ----------------------------------------------


async def test_a_timer_dies_with_its_target() -> None:
    pid = spawn(receive)
    tref = pybeam.send_after(60, pid, "late")
    assert isinstance(pybeam.read_timer(tref), float)
    ref = pybeam.monitor(pid)
    pybeam.exit(pid, "kill")
    assert await down_of(ref) == "killed"
    assert pybeam.read_timer(tref) is False
    assert pybeam.cancel_timer(tref) is False
    assert not pybeam.current_node()._timers


async def test_a_timer_aimed_at_a_dead_pid_never_runs() -> None:
    pid, ref = pybeam.spawn_monitor(lambda: None)
    await down_of(ref)
    tref = pybeam.send_after(60, pid, "late")
    assert pybeam.read_timer(tref) is False
    assert pybeam.cancel_timer(tref) is False


async def test_timers_to_a_live_process_still_fire_and_cancel() -> None:
    me = pybeam.self()
    pybeam.send_after(0, me, "soon")
    t = pybeam.send_after(60, me, "late")
    assert await receive(timeout=5) == "soon"
    left = pybeam.cancel_timer(t)
    assert isinstance(left, float) and left > 0
    assert not pybeam.current_node()._pid_timers
    await asyncio.sleep(0)


# -- 6. a node that stops cleanly: its processes end with shutdown (deliberate) --------


async def test_a_node_that_stops_cleanly_ends_its_processes_with_shutdown(cluster: Any) -> None:
    """BEAM's init:stop leaves processes outside supervision trees to die after
    distribution is down (remote watchers see noconnection); pybeam ends them
    all with shutdown first, and says so: see docs/semantics.md."""
    async with cluster(1) as c:
        (n1,) = c.nodes
        pybeam.trap_exit(True)
        linked = await pybeam.spawn_on(n1, "asyncio:sleep", 3600, link=True)
        watched, ref = await pybeam.spawn_on(n1, "asyncio:sleep", 3600, monitor=True)
        assert await c.stop_node(n1) == 0
        assert await down_of(ref) == "shutdown"
        assert await receive(("EXIT", linked, ANY), timeout=5) == ("EXIT", linked, "shutdown")
        assert watched.node == n1


# -- found by the conformance suite --------------------------------------------------


async def test_monitoring_oneself_makes_no_monitor() -> None:
    me = pybeam.self()
    ref = pybeam.monitor(me)
    assert pybeam.demonitor(ref, info=True) is False
    pybeam.register("me_myself")
    assert pybeam.demonitor(pybeam.monitor("me_myself"), info=True) is False
    assert pybeam.process_info(me)["monitors"] == []  # type: ignore[index]

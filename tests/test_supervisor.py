"""Supervisor and DynamicSupervisor: strategies, restart types, intensity,
start and stop order, shutdown, failing starts, nested trees, the API."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pybeam
from pybeam import ANY, Crash, Pid, Ref, dynamic_supervisor, gen_server, receive, send, supervisor
from pybeam.dynamic_supervisor import MaxChildren
from pybeam.gen_server import IGNORE, GenServer, StartError
from pybeam.supervisor import ChildInfo, ChildNotFound, ChildSpec, SupervisorError
from pybeam.testing import eventually


class Worker(GenServer):
    """Traps exits (so terminate runs on shutdown) and reports to the test:
    ``("started", id, pid)`` and ``("stopped", id, reason)``."""

    def init(self, arg: tuple[Pid, str]) -> Any:
        test, id = arg
        pybeam.trap_exit(True)
        send(test, ("started", id, pybeam.self()))
        return arg

    def handle_call(self, request: Any, from_: Any, state: Any) -> Any:
        match request:
            case "ping":
                return ("reply", "pong", state)
            case ("stop", reason):
                return ("stop", reason, "ok", state)
        return ("reply", None, state)

    def terminate(self, reason: Any, state: tuple[Pid, str]) -> Any:
        test, id = state
        send(test, ("stopped", id, reason))


def worker(id: str, restart: Any = "permanent", shutdown: Any = 5.0) -> ChildSpec:
    return Worker.child_spec((pybeam.self(), id), id=id, restart=restart, shutdown=shutdown)


async def started(id: str) -> Pid:
    msg = await receive(("started", id, ANY), timeout=5)
    pid: Pid = msg[2]
    return pid


async def stopped(id: str) -> Any:
    return (await receive(("stopped", id, ANY), timeout=5))[2]


async def events(n: int) -> list[tuple[str, str]]:
    """The next ``n`` started/stopped events, as (kind, id)."""
    out = []
    for _ in range(n):
        msg = await receive(lambda m: type(m) is tuple and m[0] in ("started", "stopped"), timeout=5)
        out.append((msg[0], msg[1]))
    return out


async def down_of(ref: Ref, timeout: float = 5.0) -> Any:
    return (await receive(("DOWN", ref, "process", ANY, ANY), timeout=timeout))[4]


async def pids(sup: Pid) -> dict[Any, Pid | None]:
    return {c.id: c.pid for c in await supervisor.which_children(sup)}


async def kill_and_wait(pid: Pid, reason: Any = "kill") -> None:
    ref = pybeam.monitor(pid)
    pybeam.exit(pid, reason)
    await down_of(ref)


# -- start and stop order --------------------------------------------------------------


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    slow_b = SlowStop.child_spec((pybeam.self(), "b"), id="b")
    sup = await supervisor.start_link([worker("a"), slow_b, worker("c")])
    assert await events(3) == [("started", "a"), ("started", "b"), ("started", "c")]
    children = await supervisor.which_children(sup)
    assert [c.id for c in children] == ["a", "b", "c"]
    assert all(isinstance(c, ChildInfo) and pybeam.is_alive(c.pid) for c in children)  # type: ignore[arg-type]
    await supervisor.stop(sup)
    assert await events(3) == [("stopped", "c"), ("stopped", "b"), ("stopped", "a")]
    assert not any(pybeam.is_alive(c.pid) for c in children)  # type: ignore[arg-type]


async def test_shutdown_reason_reaches_children() -> None:
    sup = await supervisor.start_link([worker("a")])
    await started("a")
    await supervisor.stop(sup)
    assert await stopped("a") == "shutdown"


async def test_parent_exit_stops_the_tree() -> None:
    me = pybeam.self()
    specs = [worker("a"), worker("b")]  # made here: they report to the test process

    async def parent() -> None:
        send(me, ("sup", await supervisor.start_link(specs)))
        await receive()
        pybeam.exit("shutdown")

    p = pybeam.spawn(parent)
    _, sup = await receive(("sup", ANY), timeout=5)
    await events(2)
    ref = pybeam.monitor(sup)
    send(p, "go")
    assert await down_of(ref) == "shutdown"
    assert await events(2) == [("stopped", "b"), ("stopped", "a")]


# -- strategies ----------------------------------------------------------------------


async def test_one_for_one_restarts_only_the_child() -> None:
    sup = await supervisor.start_link([worker("a"), worker("b"), worker("c")])
    await events(3)
    before = await pids(sup)
    await kill_and_wait(before["b"])  # type: ignore[arg-type]
    new_b = await started("b")
    after = await pids(sup)
    assert after == {**before, "b": new_b}
    assert new_b != before["b"]
    assert await receive(timeout=0, default=None) is None  # a and c never stopped


async def test_one_for_all_restarts_everyone() -> None:
    sup = await supervisor.start_link([worker("a"), worker("b"), worker("c")], strategy="one_for_all")
    await events(3)
    before = await pids(sup)
    await kill_and_wait(before["b"])  # type: ignore[arg-type]
    # The others stop last started first, then all start again in order.
    assert await events(5) == [
        ("stopped", "c"),
        ("stopped", "a"),
        ("started", "a"),
        ("started", "b"),
        ("started", "c"),
    ]
    after = await pids(sup)
    assert all(after[k] != before[k] for k in "abc")


async def test_rest_for_one_restarts_the_child_and_those_after_it() -> None:
    sup = await supervisor.start_link(
        [worker("a"), worker("b"), worker("c"), worker("d")], strategy="rest_for_one"
    )
    await events(4)
    before = await pids(sup)
    await kill_and_wait(before["b"])  # type: ignore[arg-type]
    assert await events(5) == [
        ("stopped", "d"),
        ("stopped", "c"),
        ("started", "b"),
        ("started", "c"),
        ("started", "d"),
    ]
    after = await pids(sup)
    assert after["a"] == before["a"]
    assert all(after[k] != before[k] for k in "bcd")


# -- restart types -------------------------------------------------------------------


async def test_permanent_is_restarted_even_after_a_normal_exit() -> None:
    sup = await supervisor.start_link([worker("p")])
    pid = await started("p")
    assert await gen_server.call(pid, ("stop", "normal")) == "ok"
    new = await started("p")
    assert (await pids(sup))["p"] == new != pid


@pytest.mark.parametrize("reason", ["normal", "shutdown", ("shutdown", "done")])
async def test_transient_is_not_restarted_after_a_normal_exit(reason: Any) -> None:
    sup = await supervisor.start_link([worker("t", "transient")])
    pid = await started("t")
    ref = pybeam.monitor(pid)
    await gen_server.call(pid, ("stop", reason))
    await down_of(ref)
    assert await supervisor.which_children(sup) == [ChildInfo("t", None, "worker")]
    assert await receive(("started", "t", ANY), timeout=0.05, default=None) is None


async def test_transient_is_restarted_after_an_abnormal_exit() -> None:
    sup = await supervisor.start_link([worker("t", "transient")])
    pid = await started("t")
    await gen_server.call(pid, ("stop", "oops"))
    new = await started("t")
    assert (await pids(sup))["t"] == new


@pytest.mark.parametrize("reason", ["normal", "oops"])
async def test_temporary_is_never_restarted_and_is_forgotten(reason: Any) -> None:
    sup = await supervisor.start_link([worker("a"), worker("tmp", "temporary")])
    await events(2)
    pid = (await pids(sup))["tmp"]
    ref = pybeam.monitor(pid)
    await gen_server.call(pid, ("stop", reason))  # type: ignore[arg-type]
    await down_of(ref)
    await eventually(lambda: _ids_are(sup, ["a"]), 5.0, every=0.005)


async def _ids_are(sup: Pid, ids: list[str]) -> bool:
    return [c.id for c in await supervisor.which_children(sup)] == ids


async def test_plain_process_children() -> None:
    me = pybeam.self()

    async def loop(tag: str) -> None:
        send(me, ("up", tag, pybeam.self()))
        while True:
            if await receive() == "crash":
                raise RuntimeError("plain crash")

    sup = await supervisor.start_link([supervisor.process_spec(loop, "x", id="x")])
    _, _, first = await receive(("up", "x", ANY), timeout=5)
    send(first, "crash")
    _, _, second = await receive(("up", "x", ANY), timeout=5)
    assert second != first
    assert (await pids(sup))["x"] == second
    await supervisor.stop(sup)
    assert not pybeam.is_alive(second)


# -- restart intensity -------------------------------------------------------------------


async def test_too_many_restarts_stop_the_supervisor_and_its_children(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pybeam.trap_exit(True)
    sup = await supervisor.start_link([worker("a"), worker("b")], max_restarts=2, max_seconds=60)
    await events(2)
    with caplog.at_level(logging.ERROR, logger="pybeam"):
        for _ in range(2):
            await kill_and_wait((await pids(sup))["b"])  # type: ignore[arg-type]
            await started("b")
        last_a = (await pids(sup))["a"]
        last_b = (await pids(sup))["b"]
        await kill_and_wait(last_b)  # type: ignore[arg-type]
        assert await receive(("EXIT", sup, ANY), timeout=5) == ("EXIT", sup, "shutdown")
    assert await stopped("a") == "shutdown"
    assert not pybeam.is_alive(last_a)  # type: ignore[arg-type]
    assert "maximum restart intensity" in caplog.text


async def test_zero_max_restarts_means_no_restart() -> None:
    sup = await supervisor.start([worker("a")], max_restarts=0)
    ref = pybeam.monitor(sup)
    await kill_and_wait(await started("a"))
    assert await down_of(ref) == "shutdown"


async def test_restarts_outside_the_period_do_not_count() -> None:
    sup = await supervisor.start([worker("a")], max_restarts=1, max_seconds=0.05)
    pid = await started("a")
    for _ in range(3):
        await asyncio.sleep(0.1)
        await kill_and_wait(pid)
        pid = await started("a")
    assert pybeam.is_alive(sup)


# -- shutdown -------------------------------------------------------------------------


class Stubborn(GenServer):
    """Traps exits and takes forever to terminate."""

    def init(self, test: Pid) -> Pid:
        pybeam.trap_exit(True)
        send(test, ("started", "stubborn", pybeam.self()))
        return test

    async def terminate(self, reason: Any, test: Pid) -> None:
        send(test, ("terminating", reason))
        await asyncio.sleep(3600)


async def test_shutdown_timeout_then_kill() -> None:
    spec = Stubborn.child_spec(pybeam.self(), id="stubborn", shutdown=0.05)
    sup = await supervisor.start_link([spec])
    pid = await started("stubborn")
    ref = pybeam.monitor(pid)
    await supervisor.terminate_child(sup, "stubborn")
    assert await receive(("terminating", ANY), timeout=0) == ("terminating", "shutdown")
    assert await down_of(ref, timeout=0) == "killed"
    assert await supervisor.which_children(sup) == [ChildInfo("stubborn", None, "worker")]


async def test_brutal_kill_does_not_run_terminate() -> None:
    spec = Stubborn.child_spec(pybeam.self(), id="stubborn", shutdown="brutal_kill")
    sup = await supervisor.start_link([spec])
    pid = await started("stubborn")
    ref = pybeam.monitor(pid)
    await supervisor.stop(sup)
    assert await down_of(ref, timeout=0) == "killed"
    assert await receive(("terminating", ANY), timeout=0, default=None) is None


class SlowStop(Worker):
    """A Worker that takes a while to terminate."""

    async def terminate(self, reason: Any, state: tuple[Pid, str]) -> None:
        await asyncio.sleep(0.05)
        super().terminate(reason, state)


async def test_infinity_shutdown_waits_for_a_slow_child() -> None:
    spec = SlowStop.child_spec((pybeam.self(), "slow"), id="slow", shutdown="infinity")
    sup = await supervisor.start_link([spec])
    await started("slow")
    await supervisor.stop(sup)
    assert await stopped("slow") == "shutdown"


# -- failing starts -------------------------------------------------------------------


class Failing(GenServer):
    def init(self, arg: Any) -> Any:
        raise RuntimeError("cannot start")


async def test_a_failing_child_stops_the_started_ones_and_the_start() -> None:
    # b is slow to stop: a must still wait for it (one at a time, last first).
    slow_b = SlowStop.child_spec((pybeam.self(), "b"), id="b")
    children = [worker("a"), slow_b, Failing.child_spec(id="bad"), worker("d")]
    with pytest.raises(StartError) as info:
        await supervisor.start_link(children)
    match info.value.reason:
        case ("shutdown", ("failed_to_start_child", "bad", Crash() as crash)):
            assert crash.kind == "RuntimeError"
        case other:
            pytest.fail(f"unexpected reason {other!r}")
    assert await events(4) == [("started", "a"), ("started", "b"), ("stopped", "b"), ("stopped", "a")]
    assert await receive(timeout=0, default=None) is None  # d never started


class FailsOnRestart(GenServer):
    def init(self, starts: list[int]) -> Any:
        starts.append(1)
        if len(starts) > 1:
            raise RuntimeError("cannot restart")
        return starts


async def test_a_child_that_cannot_restart_ends_the_supervisor() -> None:
    starts: list[int] = []
    sup = await supervisor.start([FailsOnRestart.child_spec(starts, id="f")], max_restarts=3)
    ref = pybeam.monitor(sup)
    await kill_and_wait((await pids(sup))["f"])  # type: ignore[arg-type]
    # Each failed attempt counts as a restart.
    assert await down_of(ref) == "shutdown"
    assert len(starts) == 1 + 3


class Ignoring(GenServer):
    def init(self, arg: Any) -> Any:
        return IGNORE


async def test_ignored_children() -> None:
    sup = await supervisor.start_link(
        [Ignoring.child_spec(id="ign"), Ignoring.child_spec(id="tmp", restart="temporary"), worker("a")]
    )
    a = await started("a")
    assert await supervisor.which_children(sup) == [
        ChildInfo("ign", None, "worker"),
        ChildInfo("a", a, "worker"),
    ]


async def test_bad_specs_and_flags_are_refused_up_front() -> None:
    with pytest.raises(pybeam.BadArg):
        ChildSpec("x", (pybeam.spawn_link, ()), restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(pybeam.BadArg):
        ChildSpec("x", (pybeam.spawn_link, ()), shutdown=-1)
    with pytest.raises(pybeam.BadArg):
        ChildSpec("x", (pybeam.spawn_link, []))  # type: ignore[arg-type]
    with pytest.raises(pybeam.BadArg):
        await supervisor.start_link([worker("a"), worker("a")])
    with pytest.raises(pybeam.BadArg):
        await supervisor.start_link([], strategy="all_for_none")  # type: ignore[arg-type]
    with pytest.raises(pybeam.BadArg):
        await supervisor.start_link([], max_restarts=-1)


# -- the API --------------------------------------------------------------------------


async def test_child_management_api() -> None:
    sup = await supervisor.start_link([worker("a"), worker("b")], name="sup")
    await events(2)
    assert await supervisor.count_children("sup") == {"specs": 2, "active": 2, "supervisors": 0, "workers": 2}

    await supervisor.terminate_child("sup", "a")
    assert await stopped("a") == "shutdown"
    assert (await pids(sup))["a"] is None
    assert (await supervisor.count_children(sup))["active"] == 1

    with pytest.raises(SupervisorError) as info:
        await supervisor.delete_child(sup, "b")
    assert info.value.reason == "running"
    with pytest.raises(SupervisorError) as info:
        await supervisor.restart_child(sup, "b")
    assert info.value.reason == "running"

    new_a = await supervisor.restart_child(sup, "a")
    assert new_a == await started("a")
    await supervisor.terminate_child(sup, "a")
    await supervisor.delete_child(sup, "a")
    assert list(await pids(sup)) == ["b"]

    for fn in (supervisor.terminate_child, supervisor.restart_child, supervisor.delete_child):
        with pytest.raises(ChildNotFound):
            await fn(sup, "nope")

    c = await supervisor.start_child(sup, worker("c"))
    assert c == await started("c")
    assert list(await pids(sup)) == ["b", "c"]
    with pytest.raises(SupervisorError) as info:
        await supervisor.start_child(sup, worker("c"))
    assert info.value.reason == ("already_started", c)
    await supervisor.terminate_child(sup, "c")
    with pytest.raises(SupervisorError) as info:
        await supervisor.start_child(sup, worker("c"))
    assert info.value.reason == "already_present"

    with pytest.raises(SupervisorError) as info:
        await supervisor.start_child(sup, Failing.child_spec(id="bad"))
    assert isinstance(info.value.reason, Crash)
    assert "bad" not in await pids(sup)  # a spec that failed to start is not kept


async def test_terminate_child_forgets_a_temporary_child() -> None:
    sup = await supervisor.start_link([worker("tmp", "temporary")])
    await started("tmp")
    await supervisor.terminate_child(sup, "tmp")
    assert await supervisor.which_children(sup) == []


async def test_calls_to_a_missing_supervisor() -> None:
    with pytest.raises(gen_server.NoServer):
        await supervisor.which_children("no_such_sup")


# -- trees ------------------------------------------------------------------------


async def test_nested_supervisors() -> None:
    sub = supervisor.supervisor_spec([worker("b"), worker("c")], id="sub", strategy="one_for_all")
    top = await supervisor.start_link([worker("a"), sub])
    assert await events(3) == [("started", "a"), ("started", "b"), ("started", "c")]
    assert await supervisor.count_children(top) == {"specs": 2, "active": 2, "supervisors": 1, "workers": 1}
    sub_pid = (await pids(top))["sub"]
    assert sub_pid is not None
    a = (await pids(top))["a"]

    # A crash below is handled below.
    await kill_and_wait((await pids(sub_pid))["c"])  # type: ignore[arg-type]
    assert await events(3) == [("stopped", "b"), ("started", "b"), ("started", "c")]
    assert (await pids(top)) == {"a": a, "sub": sub_pid}

    # The sub-supervisor dying is handled above: a new one, with new children.
    # (Its old children trap exits: they see their parent go, and terminate.)
    await kill_and_wait(sub_pid)
    got = await events(4)
    assert sorted(got) == [("started", "b"), ("started", "c"), ("stopped", "b"), ("stopped", "c")]
    assert got.index(("started", "b")) < got.index(("started", "c"))
    new_sub = (await pids(top))["sub"]
    assert new_sub not in (None, sub_pid)

    # Stopping the top stops the whole tree, depth first, last started first.
    await supervisor.stop(top)
    assert await events(3) == [("stopped", "c"), ("stopped", "b"), ("stopped", "a")]
    assert not pybeam.is_alive(new_sub)


async def test_sub_supervisor_giving_up_is_restarted_by_its_parent() -> None:
    sub = supervisor.supervisor_spec([worker("b")], id="sub", max_restarts=0)
    top = await supervisor.start_link([sub])
    b = await started("b")
    sub_pid = (await pids(top))["sub"]
    await kill_and_wait(b)
    await started("b")  # by a new sub-supervisor
    assert (await pids(top))["sub"] not in (None, sub_pid)


# -- dynamic supervisor -------------------------------------------------------------------


async def test_dynamic_supervisor_start_which_count_terminate() -> None:
    sup = await dynamic_supervisor.start_link(name="dyn")
    assert await dynamic_supervisor.which_children("dyn") == []
    a = await dynamic_supervisor.start_child("dyn", worker("a"))
    b = await dynamic_supervisor.start_child(sup, worker("b"))
    assert await events(2) == [("started", "a"), ("started", "b")]
    assert await dynamic_supervisor.which_children(sup) == [
        ChildInfo("a", a, "worker"),
        ChildInfo("b", b, "worker"),
    ]
    assert await dynamic_supervisor.count_children(sup) == {
        "specs": 2,
        "active": 2,
        "supervisors": 0,
        "workers": 2,
    }
    await dynamic_supervisor.terminate_child(sup, a)  # type: ignore[arg-type]
    assert await stopped("a") == "shutdown"
    with pytest.raises(ChildNotFound):
        await dynamic_supervisor.terminate_child(sup, a)  # type: ignore[arg-type]
    assert [c.pid for c in await dynamic_supervisor.which_children(sup)] == [b]
    await dynamic_supervisor.stop(sup)
    assert await stopped("b") == "shutdown"


async def test_dynamic_supervisor_max_children() -> None:
    sup = await dynamic_supervisor.start_link(max_children=2)
    a = await dynamic_supervisor.start_child(sup, worker("a"))
    await dynamic_supervisor.start_child(sup, worker("b"))
    with pytest.raises(MaxChildren):
        await dynamic_supervisor.start_child(sup, worker("c"))
    await dynamic_supervisor.terminate_child(sup, a)  # type: ignore[arg-type]
    assert await dynamic_supervisor.start_child(sup, worker("c")) is not None


async def test_dynamic_supervisor_restarts_by_restart_type() -> None:
    sup = await dynamic_supervisor.start_link()
    perm = await dynamic_supervisor.start_child(sup, worker("perm"))
    tmp = await dynamic_supervisor.start_child(sup, worker("tmp", "temporary"))
    trans = await dynamic_supervisor.start_child(sup, worker("trans", "transient"))
    await events(3)
    await kill_and_wait(perm)  # type: ignore[arg-type]
    new_perm = await started("perm")
    await kill_and_wait(tmp)  # type: ignore[arg-type]
    await gen_server.call(trans, ("stop", "normal"))  # type: ignore[arg-type]
    await eventually(lambda: _dyn_pids_are(sup, [new_perm]), 5.0, every=0.005)


async def _dyn_pids_are(sup: Pid, expected: list[Pid]) -> bool:
    return [c.pid for c in await dynamic_supervisor.which_children(sup)] == expected


async def test_dynamic_supervisor_intensity_and_failing_start() -> None:
    sup = await dynamic_supervisor.start(max_restarts=1)
    ref = pybeam.monitor(sup)
    with pytest.raises(SupervisorError) as info:
        await dynamic_supervisor.start_child(sup, Failing.child_spec())
    assert isinstance(info.value.reason, Crash)
    assert await dynamic_supervisor.start_child(sup, Ignoring.child_spec()) is None
    a = await dynamic_supervisor.start_child(sup, worker("a"))
    b = await dynamic_supervisor.start_child(sup, worker("b"))
    await events(2)
    await kill_and_wait(a)  # type: ignore[arg-type]
    await started("a")
    await kill_and_wait(b)  # type: ignore[arg-type]
    assert await down_of(ref) == "shutdown"
    assert await stopped("a") == "shutdown"


# -- property: one_for_one under random exits -----------------------------------------------

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RESTARTS = ["permanent", "transient", "temporary"]


async def _plain_child() -> None:
    match await receive():
        case "normal":
            return
        case "crash":
            pybeam.exit("crashed")


@SETTINGS
@given(
    kinds=st.lists(st.sampled_from(RESTARTS), min_size=1, max_size=5),
    exits=st.lists(
        st.tuples(st.integers(min_value=0, max_value=4), st.sampled_from(["normal", "crash", "kill"])),
        max_size=12,
    ),
)
def test_one_for_one_keeps_exactly_the_children_it_should(
    kinds: list[str], exits: list[tuple[int, str]]
) -> None:
    async def main() -> None:
        specs = [
            supervisor.process_spec(_plain_child, id=i, restart=kind)  # type: ignore[arg-type]
            for i, kind in enumerate(kinds)
        ]
        sup = await supervisor.start(specs, max_restarts=100)
        # The model: which children should be listed, and which running.
        listed = dict(enumerate(kinds))
        running = set(listed)
        for index, how in exits:
            i = index % len(kinds)
            current = await pids(sup)
            pid = current.get(i)
            if pid is None:
                continue
            ref = pybeam.monitor(pid)
            if how == "kill":
                pybeam.exit(pid, "kill")
            else:
                send(pid, how)
            await down_of(ref)
            restart = listed[i]
            normal = how == "normal"
            if restart == "temporary":
                del listed[i]
                running.discard(i)
            elif restart == "transient" and normal:
                running.discard(i)
            # The EXIT reached the supervisor before our DOWN: the next call sees its effect.
            now = await pids(sup)
            assert set(now) == set(listed)
            assert {k for k, v in now.items() if v is not None} == running
            assert all(pybeam.is_alive(v) for v in now.values() if v is not None)
            if i in running:
                assert now[i] != pid
        last = [v for v in (await pids(sup)).values() if v is not None]
        await supervisor.stop(sup)
        assert not any(pybeam.is_alive(v) for v in last)

    pybeam.run(main)

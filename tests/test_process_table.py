"""The process table is keyed by pid number (issue 15): a lookup still
matches the whole pid (node name, number and creation), a remote pid never
reaches a local process that shares its number, and the shortcuts taken at a
process's start and end keep what the slow paths do."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import TYPE_CHECKING, Any

import pytest

import pybeam
from pybeam import ANY, Crash, Pid, Ref, receive, send, spawn
from pybeam.errors import BadArg
from pybeam.mailbox import Mailbox
from pybeam.process import Process
from pybeam.testing import eventually

if TYPE_CHECKING:
    from conftest import Cycles


async def _echo_once() -> None:
    sender, msg = await receive()
    send(sender, msg)


async def _forward_all(to: Pid) -> None:
    while True:
        msg = await receive()
        send(to, ("got", msg))


async def _register_and_wait(name: str, reply: Pid) -> None:
    pybeam.register(name, pybeam.self())
    send(reply, "registered")
    sender, msg = await receive()
    send(sender, ("via name", msg))


def _twins(pid: Pid) -> list[Pid]:
    # Pids equal to pid in number only.
    return [
        Pid(pid.node, pid.id, pid.creation ^ 1),  # the node's earlier life
        Pid("other@elsewhere", pid.id, pid.creation),  # another node
    ]


async def test_a_pid_equal_only_in_number_is_not_the_live_process() -> None:
    node = pybeam.current_node()
    pid = spawn(_echo_once)
    assert node.process(pid) is not None
    assert node.process(copy.copy(pid)) is node.process(pid)
    for twin in _twins(pid):
        assert node.process(twin) is None
        assert not pybeam.is_alive(twin)
        assert pybeam.process_info(twin) is None
        assert not node.deliver(twin, "not for it")
        assert not node.is_alive(twin)
    send(pid, (pybeam.self(), "only mine"))
    assert await receive(timeout=5) == "only mine"


async def test_a_message_to_a_pid_equal_only_in_number_is_not_delivered() -> None:
    me = pybeam.self()
    pid = spawn(_forward_all, me)
    for twin in _twins(pid):
        send(twin, "dropped")  # a dead pid of this node, or a node nobody reaches
        pybeam.current_node().send(twin, "dropped too")
    send(pid, "last")
    assert await receive(timeout=5) == ("got", "last")
    assert await receive(timeout=0, default=None) is None
    pybeam.exit(pid, "kill")


async def test_something_not_a_pid_is_no_process() -> None:
    node = pybeam.current_node()
    bad: Any = "a string"
    assert node.process(bad) is None
    assert not pybeam.is_alive(bad)


async def test_processes_lists_pids() -> None:
    me = pybeam.self()
    pid = spawn(_echo_once)
    pids = pybeam.processes()
    assert pid in pids and me in pids
    assert all(type(p) is Pid for p in pids)
    pybeam.exit(pid, "kill")
    assert pid not in pybeam.processes()


async def test_deliver_reaches_the_process_by_its_own_pid_and_by_a_copy() -> None:
    node = pybeam.current_node()
    me = pybeam.self()
    pid = spawn(_forward_all, me)
    assert node.deliver(pid, 1)
    assert node.deliver(copy.copy(pid), 2)
    assert [await receive(timeout=5), await receive(timeout=5)] == [("got", 1), ("got", 2)]
    pybeam.exit(pid, "kill")
    assert not node.deliver(pid, 3)
    assert not node.deliver(copy.copy(pid), 3)


async def test_a_name_receives_from_a_process_and_from_code_outside_one() -> None:
    me = pybeam.self()
    spawn(_register_and_wait, "table_named", me)
    assert await receive(timeout=5) == "registered"

    async def sender() -> None:
        send("table_named", (me, "from a process"))

    spawn(sender)
    assert await receive(timeout=5) == ("via name", "from a process")
    await eventually(lambda: pybeam.whereis("table_named") is None)
    with pytest.raises(BadArg):
        send("table_named", "nobody has it now")


async def test_a_name_send_hands_the_message_to_a_waiting_receive_and_queues_otherwise() -> None:
    me = pybeam.self()
    pid = spawn(_forward_all, me)
    pybeam.register("table_forward", pid)
    await eventually(lambda: pybeam.process_info(pid)["status"] == "waiting")  # type: ignore[index]

    async def burst() -> None:
        for i in range(5):
            send("table_forward", i)  # the first is handed over, the rest queue

    spawn(burst)
    assert [await receive(timeout=5) for _ in range(5)] == [("got", i) for i in range(5)]
    pybeam.exit(pid, "kill")


async def _returns_at_once() -> None:
    return None


async def _named_returns(name: str) -> None:
    pybeam.register(name, pybeam.self())


async def test_a_process_that_returns_leaves_the_table_and_frees_its_pid() -> None:
    node = pybeam.current_node()
    pid, ref = pybeam.spawn_monitor(_returns_at_once)
    assert await receive(("DOWN", ref, pybeam.ANY, pybeam.ANY, pybeam.ANY), timeout=5) == (
        "DOWN",
        ref,
        "process",
        pid,
        "normal",
    )
    assert node.process(pid) is None and pid._proc is None
    plain = spawn(_returns_at_once)
    await eventually(lambda: not pybeam.is_alive(plain))
    assert plain._proc is None
    assert plain not in pybeam.processes()


async def test_a_process_that_returns_with_a_name_or_a_timer_ends_the_slow_way() -> None:
    named = spawn(_named_returns, "table_returns")
    await eventually(lambda: not pybeam.is_alive(named))
    assert pybeam.whereis("table_returns") is None

    async def waits(reply: Pid) -> None:
        sender = await receive()
        send(sender, "bye")

    timed = spawn(waits, pybeam.self())
    tref = pybeam.send_after(60, timed, "later")
    send(timed, pybeam.self())
    assert await receive(timeout=5) == "bye"
    await eventually(lambda: not pybeam.is_alive(timed))
    assert pybeam.read_timer(tref) is False  # it died with the process


def _slots(cls: type) -> set[str]:
    return {name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())}


async def test_spawn_sets_every_slot_of_its_process_and_pid_as_their_constructors_do() -> None:
    # Node.spawn builds the two without their __init__ calls: a slot added
    # to a class and not set there would be missing on every spawned process.
    pid = spawn(_echo_once)
    proc = pybeam.current_node().process(pid)
    assert proc is not None and proc.task is not None
    made = Process(pybeam.current_node(), Pid(pid.node, 0, pid.creation))
    assert _slots(Process) >= _slots(Mailbox) and _slots(Process)
    for name in sorted(_slots(Process)):
        assert getattr(proc, name) == getattr(made, name) or name in {"pid", "task", "_coro"}, name
    assert proc.pid is pid and pid._proc is proc and proc.task is not None
    assert {name: getattr(pid, name) for name in _slots(Pid) - {"_proc"}} == {
        "node": pybeam.node_name(),
        "id": pid.id,
        "creation": pybeam.current_node().creation,
    }
    # Its task steps the function's own coroutine.
    assert proc.task.get_coro() is proc._coro
    assert getattr(proc._coro, "cr_code", None) is _echo_once.__code__
    send(pid, (pybeam.self(), "still works"))
    assert await receive(timeout=5) == "still works"


async def test_make_ref_builds_the_same_ref_as_its_constructor() -> None:
    # Node.make_ref skips Ref.__init__: equal refs must hash alike, or a
    # decoded ref would miss its monitor or call in every dict.
    ref = pybeam.make_ref()
    same = Ref(ref.node, ref.id, ref.creation)
    assert ref == same and hash(ref) == hash(same) and {same: 1}[ref] == 1
    assert all(getattr(ref, name) == getattr(same, name) for name in _slots(Ref))
    assert pybeam.make_ref() != ref


# -- a spawned process is its task's coroutine -------------------------------------


async def _cancelled_by_someone_else() -> None:
    # Awaits a future another party cancels: a CancelledError nobody asked
    # this process's task for, which is a crash like any other.
    fut = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(fut.cancel)
    await fut


async def _raises_exit() -> None:
    raise SystemExit(3)


async def _crashes() -> None:
    raise ValueError("boom")


@pytest.mark.parametrize(
    "fn, kind",
    [
        (_returns_at_once, None),
        (_crashes, "ValueError"),
        (_cancelled_by_someone_else, "asyncio.exceptions.CancelledError"),
        (_raises_exit, "SystemExit"),
    ],
)
async def test_an_ended_process_leaves_nothing_behind(fn: Any, kind: str | None, cycles: Cycles) -> None:
    # Whatever way it ends, the process leaves the node's tables and no
    # reference cycle (the task runs the process itself, and the exit
    # reason's traceback would hold the frame that stepped it): reference
    # counting alone frees it, with the cyclic collector off.
    node = pybeam.current_node()
    pybeam.self()  # the test's own task becomes a process before the count
    table, names, timers = len(node._procs), len(node._names), len(node._pid_timers)
    logger = logging.getLogger("pybeam")
    quiet, logger.disabled = logger.disabled, True  # crash reports kept by the log capture would hold them
    try:
        pids = [spawn(fn) for _ in range(20)]
        last, ref = pybeam.spawn_monitor(fn)
        down = await receive(("DOWN", ref, ANY, ANY, ANY), timeout=5)
        reason = down[4]
        if kind is None:
            assert reason == "normal"
        else:
            assert isinstance(reason, Crash) and reason.kind == kind
            # The runtime's own frame that stepped the coroutine is not in the report.
            assert "process.py" not in reason.traceback, reason.traceback
        del down, reason
        await asyncio.sleep(0)  # the tasks' last steps are over
        assert not any(pybeam.is_alive(p) or p._proc is not None for p in [*pids, last])
        assert (len(node._procs), len(node._names), len(node._pid_timers)) == (table, names, timers)
        left, kept = cycles()
        assert not left, kept
    finally:
        logger.disabled = quiet


async def test_asyncio_shows_a_process_task_by_its_function() -> None:
    # The process stands in for the function's coroutine in its task: the
    # task's repr and stack are the function's, as with a plain task.
    pid = spawn(_echo_once)
    await eventually(lambda: pybeam.process_info(pid)["status"] == "waiting")  # type: ignore[index]
    proc = pybeam.current_node().process(pid)
    assert proc is not None and proc.task is not None
    assert "coro=<_echo_once() running at" in repr(proc.task)
    assert [f.f_code for f in proc.task.get_stack()] == [_echo_once.__code__]
    assert pybeam.process_info(pid)["initial_call"].endswith(":_echo_once")  # type: ignore[index]
    send(pid, (pybeam.self(), "bye"))
    assert await receive(timeout=5) == "bye"


async def test_a_spawn_with_arguments_its_function_does_not_take_leaves_no_process() -> None:
    # The call that makes the function's coroutine raises TypeError; the
    # spawn used to raise it after the process was in the table, left there
    # alive forever with nothing to run (linked to, or monitored by, the caller).
    node = pybeam.current_node()
    me = pybeam.self()
    before = set(pybeam.processes())

    async def takes_one(x: int) -> None:
        return None

    with pytest.raises(TypeError):
        spawn(takes_one)
    with pytest.raises(TypeError):
        pybeam.spawn_link(takes_one, 1, 2)
    with pytest.raises(TypeError):
        pybeam.spawn_monitor(takes_one)
    assert set(pybeam.processes()) == before
    proc = node.process(me)
    assert proc is not None and not proc.links and not proc.monitors

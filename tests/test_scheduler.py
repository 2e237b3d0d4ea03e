"""The run queue steps processes itself (see pybeam.scheduler); to the code
inside a process its task still behaves as an asyncio task: current_task,
timeouts, task groups, foreign futures, cancellation, and a bare yield that
lets the event loop run."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import pytest

import pybeam
from pybeam import ANY, Pid, receive, send, spawn
from pybeam.scheduler import BUDGET, ProcessTask, Wake
from pybeam.testing import eventually


def _task(pid: Pid) -> Any:
    proc = pybeam.current_node().process(pid)
    assert proc is not None
    return proc.task


async def _who_am_i(reply: Pid) -> None:
    task = asyncio.current_task()
    send(reply, (task, task in asyncio.all_tasks()))
    await receive()


async def test_current_task_in_a_process_is_its_task_and_all_tasks_has_it() -> None:
    pid = spawn(_who_am_i, pybeam.self())
    task, listed = await receive(timeout=5)
    assert type(task) is ProcessTask
    assert task is _task(pid)
    assert listed
    assert task.get_coro() is pybeam.current_node().process(pid)._coro  # type: ignore[union-attr]
    send(pid, "bye")
    await asyncio.wait_for(asyncio.shield(task), 5)
    assert task.done() and task.result() is None


async def _times_out_then_receives(reply: Pid) -> None:
    try:
        async with asyncio.timeout(0.01):
            await receive()
    except TimeoutError:
        send(reply, ("timed out", asyncio.current_task().cancelling()))  # type: ignore[union-attr]
    send(reply, ("then", await receive()))


async def test_asyncio_timeout_around_a_receive_in_a_process() -> None:
    pid = spawn(_times_out_then_receives, pybeam.self())
    # The timeout took back its cancellation (uncancel): the task is not cancelling.
    assert await receive(timeout=5) == ("timed out", 0)
    send(pid, "late")
    assert await receive(timeout=5) == ("then", "late")


async def _child(n: int) -> int:
    await asyncio.sleep(0)
    return n * 2


async def _failing_child() -> None:
    await asyncio.sleep(0)
    raise ValueError("child failed")


async def _with_task_groups(reply: Pid) -> None:
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(_child(i)) for i in range(3)]
    send(reply, [t.result() for t in tasks])
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_failing_child())
            tg.create_task(asyncio.sleep(60))
    except* ValueError as group:
        send(reply, ("failed", str(group.exceptions[0])))


async def test_task_groups_in_a_process() -> None:
    spawn(_with_task_groups, pybeam.self())
    assert await receive(timeout=5) == [0, 2, 4]
    # The failing child cancelled its sibling and the group, and the group's
    # cancellation of the process's task was taken back.
    assert await receive(timeout=5) == ("failed", "child failed")


async def _awaits(fut: asyncio.Future[Any], reply: Pid) -> None:
    send(reply, ("got", await fut))


async def test_a_process_awaits_a_foreign_future_and_its_failure_is_its_exit_reason() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()
    pybeam.spawn(_awaits, fut, pybeam.self())
    await asyncio.sleep(0)
    loop.call_later(0.01, fut.set_result, "value")
    assert await receive(timeout=5) == ("got", "value")

    failing: asyncio.Future[Any] = loop.create_future()
    _, ref = pybeam.spawn_monitor(_awaits, failing, pybeam.self())
    loop.call_later(0.01, failing.set_exception, ValueError("boom"))
    _, _, _, _, reason = await receive(("DOWN", ref, ANY, ANY, ANY), timeout=5)
    assert isinstance(reason, pybeam.Crash) and "ValueError: boom" in str(reason)


async def test_killing_a_process_cancels_the_foreign_future_it_awaits() -> None:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    pid, ref = pybeam.spawn_monitor(_awaits, fut, pybeam.self())
    await eventually(lambda: _task(pid)._fut_waiter is fut)
    pybeam.exit(pid, "kill")
    assert (await receive(("DOWN", ref, ANY, ANY, ANY), timeout=5))[4] == "killed"
    assert fut.cancelled()


class _BadYield:
    def __await__(self) -> Generator[Any, None, None]:
        yield 42


async def _yields_badly() -> None:
    await _BadYield()


async def _awaits_itself() -> None:
    task = asyncio.current_task()
    assert task is not None
    await task


async def test_a_bad_yield_or_awaiting_itself_crashes_the_process_not_the_node() -> None:
    for fn, text in ((_yields_badly, "bad yield: 42"), (_awaits_itself, "cannot await on itself")):
        _, ref = pybeam.spawn_monitor(fn)
        _, _, _, _, reason = await receive(("DOWN", ref, ANY, ANY, ANY), timeout=5)
        assert isinstance(reason, pybeam.Crash) and "RuntimeError" in str(reason) and text in str(reason)
    ponger = spawn(_ponger)  # the node goes on
    send(ponger, pybeam.self())
    assert await receive(timeout=5) == pybeam.self()
    send(ponger, None)


async def _ponger() -> None:
    while True:
        msg = await receive()
        if msg is None:
            return
        send(msg, msg)


async def _pinger(n: int, ponger: Pid, reply: Pid) -> None:
    me = pybeam.self()
    for _ in range(n):
        send(ponger, me)
        await receive()
    send(reply, "done")


async def test_a_storm_of_messages_between_processes_leaves_the_event_loop_room() -> None:
    # Two processes keep each other runnable for 8 x BUDGET round trips: the
    # run queue still hands the event loop back every BUDGET steps, so other
    # tasks (and I/O, and timers) run during the storm, not after it.
    iterations = 0
    finished = False

    async def count() -> None:
        nonlocal iterations
        while not finished:
            iterations += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count())
    ponger = spawn(_ponger)
    spawn(_pinger, 8 * BUDGET, ponger, pybeam.self())
    during = 0
    assert await receive(timeout=30) == "done"
    during = iterations
    finished = True
    send(ponger, None)
    await counter
    assert during >= 8, during


async def _yields_to_the_loop(reply: Pid, flag: list[bool]) -> None:
    send(reply, "started")
    while not flag:
        await asyncio.sleep(0)
    send(reply, "saw the flag")


async def test_sleep_0_in_a_process_lets_other_tasks_run() -> None:
    flag: list[bool] = []
    spawn(_yields_to_the_loop, pybeam.self(), flag)
    assert await receive(timeout=5) == "started"
    asyncio.get_running_loop().call_soon(flag.append, True)
    assert await receive(timeout=5) == "saw the flag"


async def _gathers(reply: Pid) -> None:
    send(reply, "ready")
    both = await asyncio.gather(receive(), asyncio.sleep(0, "slept"))
    send(reply, both)
    shielded = await asyncio.shield(receive())
    send(reply, ("shielded", shielded))


async def test_a_receive_awaited_through_gather_and_shield() -> None:
    pid = spawn(_gathers, pybeam.self())
    assert await receive(timeout=5) == "ready"
    send(pid, "one")
    assert await receive(timeout=5) == ["one", "slept"]
    send(pid, "two")
    assert await receive(timeout=5) == ("shielded", "two")


async def _receive_cancelled_by_another(reply: Pid) -> None:
    send(reply, "ready")
    try:
        await receive()
    except asyncio.CancelledError:
        send(reply, "cancelled")
        send(reply, ("then", await receive()))


async def test_a_receive_cancelled_by_another_task_raises_in_the_process() -> None:
    # Anyone holding the wake a process waits on may cancel it, as any future.
    pid = spawn(_receive_cancelled_by_another, pybeam.self())
    assert await receive(timeout=5) == "ready"
    await eventually(lambda: type(_task(pid)._fut_waiter) is Wake)
    assert _task(pid)._fut_waiter.cancel()
    assert await receive(timeout=5) == "cancelled"
    send(pid, "after")
    assert await receive(timeout=5) == ("then", "after")


async def test_a_process_task_shows_its_state_when_done_and_refuses_set_result() -> None:
    pid = spawn(_ponger)
    task = _task(pid)
    assert "pending" in repr(task) and "_ponger" in repr(task)
    with pytest.raises(RuntimeError, match="does not support"):
        task.set_result(1)
    with pytest.raises(RuntimeError, match="does not support"):
        task.set_exception(ValueError())
    send(pid, None)
    await asyncio.wait_for(asyncio.shield(task), 5)
    assert "finished" in repr(task)


async def _wrapped_receive_cancelled_after_the_hand_off(reply: Pid) -> None:
    wrapped = asyncio.ensure_future(receive())  # a task of its own awaits the receive
    await asyncio.sleep(0)  # it runs, and waits on the process's wake
    send(pybeam.self(), "precious")  # handed to the wake: the wrapping task is due to resume
    wrapped.cancel()  # ... but is cancelled first
    try:
        await wrapped
    except asyncio.CancelledError:
        send(reply, ("then", await receive(timeout=5, default="lost")))


async def test_a_message_handed_to_a_wrapped_receive_that_is_cancelled_is_given_back() -> None:
    spawn(_wrapped_receive_cancelled_after_the_hand_off, pybeam.self())
    assert await receive(timeout=10) == ("then", "precious")


async def _echo_one(reply: Pid) -> None:
    send(reply, ("echo", await receive()))


async def test_a_wake_awaited_directly_by_another_task_and_by_its_process_wakes_both() -> None:
    # Whoever awaits a process's wake as a future gets the message handed to
    # it; the process waiting on the same wake is woken with it too.
    pid = spawn(_echo_one, pybeam.self())
    await eventually(lambda: type(_task(pid)._fut_waiter) is Wake)
    wake = _task(pid)._fut_waiter
    awaiting = asyncio.ensure_future(_await(wake))
    await asyncio.sleep(0)  # it waits on the wake now
    send(pid, "hello")
    assert await asyncio.wait_for(awaiting, 5) == "hello"
    assert await receive(timeout=5) == ("echo", "hello")


async def _await(wake: Any) -> Any:
    return await wake

"""Processes on one node: spawn, send, receive, exits, links, monitors."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import pytest

import pybeam
from pybeam import ANY, BadArg, Crash, NoProc, Pid, receive, send, spawn


async def echo() -> None:
    while True:
        match await receive():
            case ("echo", sender, payload):
                send(sender, ("reply", payload))
            case "stop":
                return


async def sleeper() -> None:
    await asyncio.sleep(3600)


async def waiter() -> None:
    await receive(lambda m: m == "never sent")


async def down_of(ref: pybeam.Ref, timeout: float = 5.0) -> Any:
    """The reason in the DOWN for ``ref``."""
    msg = await receive(("DOWN", ref, "process", ANY, ANY), timeout=timeout)
    return msg[4]


# -- spawn, self, send, receive ------------------------------------------------


async def test_spawn_returns_pid_and_self_is_that_pid() -> None:
    me = pybeam.self()

    async def report() -> None:
        send(me, ("me", pybeam.self()))

    pid = spawn(report)
    assert isinstance(pid, Pid)
    assert await receive(timeout=5) == ("me", pid)
    assert pid != me


_SPAWNER_STATE: contextvars.ContextVar[str] = contextvars.ContextVar("spawner_state", default="unset")


async def test_a_process_inherits_no_context_variable_from_its_spawner() -> None:
    async def child(parent: Pid) -> None:
        send(parent, ("child sees", _SPAWNER_STATE.get()))

    async def parent(test: Pid) -> None:
        _SPAWNER_STATE.set("the parent's")
        spawn(child, pybeam.self())
        send(test, await receive())

    _SPAWNER_STATE.set("the test's")
    spawn(parent, pybeam.self())
    assert await receive(timeout=5) == ("child sees", "unset")


async def test_spawn_passes_arguments_and_runs_plain_functions() -> None:
    me = pybeam.self()

    def plain(a: int, b: int) -> None:
        send(me, a + b)

    spawn(plain, 2, 3)
    assert await receive(timeout=5) == 5


async def test_messages_arrive_in_order_sent() -> None:
    pid = spawn(echo)
    me = pybeam.self()
    for i in range(100):
        send(pid, ("echo", me, i))
    assert [await receive(timeout=5) for _ in range(100)] == [("reply", i) for i in range(100)]


async def test_send_returns_the_message() -> None:
    assert send(pybeam.self(), "x") == "x"
    assert await receive(timeout=0) == "x"


async def test_receive_timeout_zero_polls() -> None:
    assert await receive(timeout=0, default="empty") == "empty"
    with pytest.raises(TimeoutError):
        await receive(timeout=0)
    send(pybeam.self(), 1)
    assert await receive(timeout=0) == 1


async def test_receive_times_out_after_waiting() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await receive(timeout=0.05, default=None) is None
    assert loop.time() - t0 >= 0.04
    with pytest.raises(TimeoutError):
        await receive(lambda m: False, timeout=0.01)


async def test_receive_wakes_when_a_message_arrives() -> None:
    me = pybeam.self()
    pybeam.send_after(0.01, me, "late")
    assert await receive(timeout=5) == "late"


async def test_selective_receive_takes_first_match_and_keeps_the_rest_in_order() -> None:
    me = pybeam.self()
    for m in [1, ("b", 1), 2, ("b", 2), 3]:
        send(me, m)
    assert await receive(("b", ANY), timeout=0) == ("b", 1)
    assert await receive(lambda m: m == 3, timeout=0) == 3
    assert [await receive(timeout=0) for _ in range(3)] == [1, 2, ("b", 2)]


async def test_selective_receive_waits_for_a_later_match() -> None:
    me = pybeam.self()
    send(me, "noise")

    async def later() -> None:
        await asyncio.sleep(0.01)
        send(me, "other")
        send(me, ("wanted", 7))

    spawn(later)
    assert await receive(("wanted", int), timeout=5) == ("wanted", 7)
    assert await receive(timeout=0) == "noise"
    assert await receive(timeout=0) == "other"


async def test_match_statement_on_messages() -> None:
    send(pybeam.self(), ("add", 2, 3))
    match await receive(timeout=1):
        case ("add", a, b):
            assert a + b == 5
        case _:
            pytest.fail("no match")


async def test_send_to_dead_pid_is_silently_dropped() -> None:
    pid, ref = pybeam.spawn_monitor(echo)
    send(pid, "stop")
    assert await down_of(ref) == "normal"
    send(pid, "into the void")
    assert not pybeam.is_alive(pid)


async def test_send_to_unknown_pid_is_dropped() -> None:
    send(Pid(pybeam.node_name(), 999_999, 1), "x")
    send(Pid("elsewhere@nowhere", 1, 1), "x")


async def test_send_to_unregistered_name_is_an_error() -> None:
    with pytest.raises(BadArg, match="no process is registered as 'nobody'"):
        send("nobody", "hi")


async def test_send_to_name_node_pair_unregistered_is_dropped() -> None:
    send(("nobody", pybeam.node_name()), "hi")


async def test_send_to_bad_destination_is_an_error() -> None:
    with pytest.raises(BadArg):
        send(42, "hi")


async def test_wait_for_around_receive_keeps_the_process() -> None:
    me = pybeam.self()
    pybeam.send_after(0.01, me, "x")
    assert await asyncio.wait_for(receive(), 5) == "x"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(receive(), 0.01)
    send(me, "y")
    assert await receive(timeout=0) == "y"


async def test_cancelled_receive_loses_no_message() -> None:
    me = pybeam.self()
    task = asyncio.ensure_future(receive())
    await asyncio.sleep(0)
    send(me, "kept")
    task.cancel()
    await asyncio.sleep(0)
    if task.cancelled():
        assert await receive(timeout=0) == "kept"
    else:
        assert task.result() == "kept"


# -- exits -------------------------------------------------------------------


async def test_normal_return_is_exit_normal() -> None:
    _, ref = pybeam.spawn_monitor(echo)
    send(_, "stop")
    assert await down_of(ref) == "normal"


async def test_exception_is_a_crash_reason_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def boom() -> None:
        raise ZeroDivisionError("division by zero")

    with caplog.at_level(logging.ERROR, logger="pybeam"):
        pid, ref = pybeam.spawn_monitor(boom)
        reason = await down_of(ref)
    assert isinstance(reason, Crash)
    assert reason.kind == "ZeroDivisionError"
    assert reason.message == "division by zero"
    assert isinstance(reason.exception, ZeroDivisionError)
    assert "Traceback" in reason.traceback
    assert f"Error in process {pid!r}" in caplog.text
    assert "ZeroDivisionError" in caplog.text


async def test_exit_with_reason() -> None:
    async def quit_() -> None:
        pybeam.exit(("shutdown", "done"))

    _, ref = pybeam.spawn_monitor(quit_)
    assert await down_of(ref) == ("shutdown", "done")


async def test_exit_kill_cannot_be_trapped() -> None:
    async def trapper() -> None:
        pybeam.trap_exit(True)
        await receive(lambda m: False)

    pid, ref = pybeam.spawn_monitor(trapper)
    await asyncio.sleep(0)
    pybeam.exit(pid, "kill")
    assert await down_of(ref) == "killed"


async def test_exit_signal_kills_a_process_stuck_in_other_awaits() -> None:
    pid, ref = pybeam.spawn_monitor(sleeper)
    await asyncio.sleep(0)
    pybeam.exit(pid, "boom")
    assert await down_of(ref) == "boom"


async def test_exit_normal_is_ignored_unless_trapped() -> None:
    pid, ref = pybeam.spawn_monitor(waiter)
    await asyncio.sleep(0)
    pybeam.exit(pid, "normal")
    await asyncio.sleep(0.01)
    assert pybeam.is_alive(pid)
    pybeam.exit(pid, "kill")
    assert await down_of(ref) == "killed"


async def test_exit_normal_to_self_ends_the_process() -> None:
    async def self_exit() -> None:
        pybeam.exit(pybeam.self(), "normal")
        await asyncio.sleep(3600)

    _, ref = pybeam.spawn_monitor(self_exit)
    assert await down_of(ref) == "normal"


async def test_trapped_exit_signal_becomes_a_message() -> None:
    me = pybeam.self()

    async def trapper() -> None:
        pybeam.trap_exit(True)
        send(me, "ready")
        send(me, await receive())

    pid = spawn(trapper)
    assert await receive(timeout=5) == "ready"
    pybeam.exit(pid, "please")
    assert await receive(timeout=5) == ("EXIT", me, "please")


async def test_trap_exit_returns_old_value_and_process_flag() -> None:
    assert pybeam.trap_exit(True) is False
    assert pybeam.process_flag("trap_exit", False) is True
    with pytest.raises(BadArg):
        pybeam.process_flag("priority", "high")


async def test_exit_needs_a_pid() -> None:
    with pytest.raises(BadArg):
        pybeam.exit("somebody", "kill")  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        pybeam.exit(1, 2, 3)  # type: ignore[call-overload]


# -- links ---------------------------------------------------------------------


async def test_link_propagates_abnormal_exit() -> None:
    me = pybeam.self()

    async def parent() -> None:
        child = pybeam.spawn_link(sleeper)
        send(me, ("child", child))
        await receive(lambda m: False)

    parent_pid, parent_ref = pybeam.spawn_monitor(parent)
    (_, child) = await receive(("child", Pid), timeout=5)
    child_ref = pybeam.monitor(child)
    pybeam.exit(child, "crashed")
    assert await down_of(child_ref) == "crashed"
    assert await down_of(parent_ref) == "crashed"
    assert not pybeam.is_alive(parent_pid)


async def test_link_does_not_propagate_normal_exit() -> None:
    me = pybeam.self()

    async def parent() -> None:
        pybeam.spawn_link(lambda: None)
        await asyncio.sleep(0.02)
        send(me, "still alive")

    spawn(parent)
    assert await receive(timeout=5) == "still alive"


async def test_trapping_process_gets_exit_message_from_link() -> None:
    pybeam.trap_exit(True)

    async def boom() -> None:
        raise RuntimeError("bad")

    pid = pybeam.spawn_link(boom)
    msg = await receive(("EXIT", pid, ANY), timeout=5)
    assert msg[2] == Crash("RuntimeError", "bad")


async def test_killed_propagates_through_links_as_killed() -> None:
    pybeam.trap_exit(True)
    pid = pybeam.spawn_link(sleeper)
    await asyncio.sleep(0)
    pybeam.exit(pid, "kill")
    assert await receive(("EXIT", pid, ANY), timeout=5) == ("EXIT", pid, "killed")


async def test_kill_as_exit_reason_through_a_link_is_trappable() -> None:
    # Only exit/2 with "kill" is untrappable; a process ending with reason
    # "kill" sends an ordinary signal to its links.
    pybeam.trap_exit(True)

    async def die_with_kill() -> None:
        pybeam.exit("kill")

    pid = pybeam.spawn_link(die_with_kill)
    assert await receive(("EXIT", pid, ANY), timeout=5) == ("EXIT", pid, "kill")


async def test_link_is_bidirectional() -> None:
    pybeam.trap_exit(True)
    me = pybeam.self()

    async def linker() -> None:
        pybeam.link(me)
        send(me, "linked")
        await receive(lambda m: False)

    pid = spawn(linker)
    assert await receive("linked", timeout=5) == "linked"
    info = pybeam.process_info(me)
    assert info is not None and pid in info["links"]
    pybeam.exit(pid, "bye")
    assert await receive(("EXIT", pid, ANY), timeout=5) == ("EXIT", pid, "bye")


async def test_unlink_stops_propagation() -> None:
    pybeam.trap_exit(True)
    pid = pybeam.spawn_link(sleeper)
    pybeam.unlink(pid)
    ref = pybeam.monitor(pid)
    pybeam.exit(pid, "boom")
    assert await down_of(ref) == "boom"
    assert await receive(("EXIT", ANY, ANY), timeout=0.02, default=None) is None


async def test_link_to_dead_local_pid_raises_noproc() -> None:
    pid, ref = pybeam.spawn_monitor(lambda: None)
    await down_of(ref)
    with pytest.raises(NoProc):
        pybeam.link(pid)


async def test_link_to_self_and_twice_is_harmless() -> None:
    pybeam.link(pybeam.self())
    pid = pybeam.spawn_link(waiter)
    pybeam.link(pid)
    info = pybeam.process_info(pid)
    assert info is not None and info["links"] == [pybeam.self()]
    pybeam.unlink(pid)


async def test_link_to_unreachable_node_gives_noconnection() -> None:
    pybeam.trap_exit(True)
    far = Pid("far@away", 1, 1)
    pybeam.link(far)
    assert await receive(timeout=1) == ("EXIT", far, "noconnection")


# -- monitors ------------------------------------------------------------------


async def test_monitor_gets_one_down_per_monitor() -> None:
    pid = spawn(waiter)
    refs = [pybeam.monitor(pid) for _ in range(3)]
    pybeam.exit(pid, "gone")
    for ref in refs:
        assert await receive(("DOWN", ref, "process", pid, "gone"), timeout=5)
    assert await receive(timeout=0.01, default=None) is None


async def test_monitor_dead_pid_gives_noproc_at_once() -> None:
    pid, ref = pybeam.spawn_monitor(lambda: None)
    await down_of(ref)
    ref2 = pybeam.monitor(pid)
    assert await receive(timeout=0) == ("DOWN", ref2, "process", pid, "noproc")


async def test_monitor_remote_unreachable_gives_noconnection() -> None:
    far = Pid("far@away", 1, 1)
    ref = pybeam.monitor(far)
    assert await receive(timeout=0) == ("DOWN", ref, "process", far, "noconnection")


async def test_demonitor_stops_down() -> None:
    pid = spawn(waiter)
    ref = pybeam.monitor(pid)
    assert pybeam.demonitor(ref) is True
    pybeam.exit(pid, "kill")
    assert await receive(timeout=0.02, default=None) is None
    # As BEAM's demonitor/2: true, unless asked for info (was it active?).
    assert pybeam.demonitor(ref) is True
    assert pybeam.demonitor(ref, info=True) is False


async def test_demonitor_flush_removes_a_delivered_down() -> None:
    _, ref = pybeam.spawn_monitor(lambda: None)
    await asyncio.sleep(0.01)
    send(pybeam.self(), "other")
    assert pybeam.demonitor(ref, flush=True, info=True) is False
    assert await receive(timeout=0) == "other"
    assert await receive(timeout=0, default=None) is None


async def test_monitor_by_name() -> None:
    pid = spawn(waiter)
    pybeam.register("watched", pid)
    ref = pybeam.monitor("watched")
    pybeam.exit(pid, "bye")
    assert await receive(timeout=5) == ("DOWN", ref, "process", ("watched", pybeam.node_name()), "bye")


async def test_monitor_unregistered_name_gives_noproc() -> None:
    ref = pybeam.monitor("ghost")
    assert await receive(timeout=0) == ("DOWN", ref, "process", ("ghost", pybeam.node_name()), "noproc")


async def test_monitor_bad_target() -> None:
    with pytest.raises(BadArg):
        pybeam.monitor(3.5)


async def test_watcher_death_drops_its_monitors() -> None:
    target = spawn(waiter)

    async def watcher() -> None:
        pybeam.monitor(target)

    _, ref = pybeam.spawn_monitor(watcher)
    await down_of(ref)
    info = pybeam.process_info(target)
    assert info is not None and info["monitored_by"] == []


# -- registered names ---------------------------------------------------------


async def test_register_whereis_unregister() -> None:
    pid = spawn(waiter)
    pybeam.register("svc", pid)
    assert pybeam.whereis("svc") == pid
    assert "svc" in pybeam.registered()
    send("svc", "hello")
    info = pybeam.process_info(pid)
    assert info is not None and info["registered_name"] == "svc"
    pybeam.unregister("svc")
    assert pybeam.whereis("svc") is None
    with pytest.raises(BadArg):
        pybeam.unregister("svc")


async def test_register_self_by_default() -> None:
    pybeam.register("tester")
    assert pybeam.whereis("tester") == pybeam.self()


async def test_register_errors() -> None:
    a = spawn(waiter)
    b = spawn(waiter)
    pybeam.register("taken", a)
    with pytest.raises(BadArg, match="already registered"):
        pybeam.register("taken", b)
    with pytest.raises(BadArg, match="already registered as"):
        pybeam.register("second", a)
    dead, ref = pybeam.spawn_monitor(lambda: None)
    await down_of(ref)
    with pytest.raises(BadArg, match="not a live local process"):
        pybeam.register("dead", dead)
    with pytest.raises(BadArg):
        pybeam.register("", b)


async def test_name_is_freed_when_process_ends() -> None:
    pid, ref = pybeam.spawn_monitor(waiter)
    pybeam.register("short_lived", pid)
    pybeam.exit(pid, "kill")
    await down_of(ref)
    assert pybeam.whereis("short_lived") is None
    pybeam.register("short_lived", spawn(waiter))


# -- timers --------------------------------------------------------------------


async def test_send_after_and_cancel_timer() -> None:
    me = pybeam.self()
    ref = pybeam.send_after(10, me, "never")
    left = pybeam.read_timer(ref)
    assert isinstance(left, float) and 9 < left <= 10
    remaining = pybeam.cancel_timer(ref)
    assert isinstance(remaining, float) and 9 < remaining <= 10
    assert pybeam.cancel_timer(ref) is False
    assert pybeam.read_timer(ref) is False
    fired = pybeam.send_after(0, me, "now")
    assert await receive(timeout=5) == "now"
    assert pybeam.cancel_timer(fired) is False


async def test_send_after_to_a_name_resolves_when_it_fires() -> None:
    pybeam.send_after(0.01, "late_name", "hi")
    pybeam.register("late_name")
    assert await receive(timeout=5) == "hi"
    pybeam.send_after(0, "nobody_here", "dropped")
    await asyncio.sleep(0.01)


# -- the node ---------------------------------------------------------------------


async def test_make_ref_is_unique() -> None:
    refs = {pybeam.make_ref() for _ in range(1000)}
    assert len(refs) == 1000


async def test_processes_and_process_info() -> None:
    pid = spawn(waiter)
    send(pid, "queued")
    assert pid in pybeam.processes()
    info = pybeam.process_info(pid)
    assert info is not None
    assert info["message_queue_len"] == 1
    assert info["messages"] == ["queued"]
    assert info["trap_exit"] is False
    pybeam.exit(pid, "kill")
    assert pybeam.process_info(pid) is None


async def test_node_stop_kills_its_processes() -> None:
    async with pybeam.Node("stopper@localhost", distributed=False) as node:
        pid = spawn(sleeper)
        assert pid.node == "stopper@localhost"
        assert node.process(pid) is not None
    assert node.process(pid) is None
    assert not node.running


async def test_nodes_have_distinct_creations_and_pids() -> None:
    async with pybeam.Node("same@localhost", distributed=False) as first:
        a = pybeam.self()
    async with pybeam.Node("same@localhost", distributed=False) as second:
        b = pybeam.self()
    assert first.creation != second.creation
    assert a != b


async def test_bad_node_name() -> None:
    for bad in ("no-at-sign", "a@b@c", "@host", "name@"):
        with pytest.raises(BadArg):
            pybeam.Node(bad)
    with pytest.raises(BadArg):
        pybeam.Node(distributed=True)


def test_run_returns_the_result_and_uses_uvloop() -> None:
    async def main(x: int) -> tuple[int, str]:
        pid = spawn(echo)
        send(pid, ("echo", pybeam.self(), x))
        (_, got) = await receive(timeout=5)
        return got, type(asyncio.get_running_loop()).__module__

    got, loop_module = pybeam.run(main, 21)
    assert got == 21
    assert loop_module.startswith("uvloop")


async def test_a_task_inheriting_an_ended_adopted_process_becomes_a_new_one() -> None:
    async def first() -> pybeam.Pid:
        return pybeam.self()

    # The task ends, and with it its process; a task created afterwards with
    # that task's context (as pytest-asyncio does from fixture to test) must
    # not act as the dead process.
    import contextvars

    ctx = contextvars.copy_context()
    task = asyncio.get_running_loop().create_task(first(), context=ctx)
    old = await task
    await asyncio.sleep(0)
    assert not pybeam.is_alive(old)

    async def second() -> tuple[pybeam.Pid, Any]:
        me = pybeam.self()
        send(me, "hi")
        return me, await receive(timeout=1)

    new, msg = await asyncio.get_running_loop().create_task(second(), context=ctx)
    assert new != old
    assert msg == "hi"


async def test_finished_processes_are_freed_without_the_cycle_collector() -> None:
    import gc

    from pybeam.process import Process

    def live() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is Process)

    gc.collect()
    gc.disable()
    try:
        before = live()
        refs = [pybeam.spawn_monitor(lambda: None)[1] for _ in range(100)]
        for ref in refs:
            await receive(("DOWN", ref, ANY, ANY, ANY), timeout=5)
        await asyncio.sleep(0)
        assert live() - before < 5
    finally:
        gc.enable()


# -- a process's SystemExit or KeyboardInterrupt ends the process, not the node -------


def _sys_exit() -> None:
    import sys

    sys.exit(3)


async def _interrupted() -> None:
    await asyncio.sleep(0)
    raise KeyboardInterrupt


def _builtins_exit() -> None:
    exit(4)  # the site builtin, as a careless script would call it


def _argparse_error() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--count", type=int)
    parser.parse_args(["--count", "many"])


class _ExitingServer(pybeam.GenServer):
    def handle_call(self, request: Any, from_: Any, state: Any) -> Any:
        raise SystemExit(request)


def _survives(scenario: Any) -> Any:
    """Run ``scenario`` on a fresh loop and node; fail (rather than end pytest)
    if something escapes the event loop."""
    try:
        return pybeam.run(scenario)
    except BaseException as e:
        pytest.fail(f"the node stopped: {e!r} escaped the event loop")


@pytest.mark.parametrize(
    ("fn", "kind", "message"),
    [
        (_sys_exit, "SystemExit", "3"),
        (_interrupted, "KeyboardInterrupt", ""),
        (_builtins_exit, "SystemExit", "4"),
        (_argparse_error, "SystemExit", "2"),
    ],
)
def test_system_exit_and_keyboard_interrupt_end_the_process_not_the_node(
    fn: Any, kind: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> Any:
        _, ref = pybeam.spawn_monitor(fn)
        reason = await down_of(ref)
        # The node still runs processes, and a linked one gets the same reason.
        me = pybeam.self()
        pybeam.trap_exit(True)
        linked = pybeam.spawn_link(fn)
        exit_msg = await receive(("EXIT", linked, ANY), timeout=5)
        pid = spawn(echo)
        send(pid, ("echo", me, "still here"))
        return reason, exit_msg[2], await receive(("reply", ANY), timeout=5)

    with caplog.at_level(logging.ERROR, logger="pybeam"):
        reason, linked_reason, reply = _survives(scenario)
    assert reason == Crash(kind, message)
    assert linked_reason == reason
    assert reply == ("reply", "still here")
    assert kind in caplog.text  # a crash report, as for any other exception


def test_a_gen_server_callback_calling_sys_exit_ends_only_the_server() -> None:
    async def scenario() -> Any:
        server = await pybeam.gen_server.start(_ExitingServer)
        ref = pybeam.monitor(server)
        with pytest.raises(pybeam.gen_server.CallExit):
            await pybeam.gen_server.call(server, 5)
        reason = await down_of(ref)
        return reason, await pybeam.gen_server.call(await pybeam.gen_server.start(_Echo), "hi")

    reason, reply = _survives(scenario)
    assert reason == Crash("SystemExit", "5")
    assert reply == "hi"


class _Echo(pybeam.GenServer):
    def handle_call(self, request: Any, from_: Any, state: Any) -> Any:
        return ("reply", request, state)


def test_sys_exit_in_an_adopted_process_still_exits_the_program() -> None:
    # main is the program's own task, not one pybeam runs: sys.exit there
    # means what it means in any Python program.
    async def main() -> None:
        pybeam.self()
        _sys_exit()

    with pytest.raises(SystemExit) as info:
        pybeam.run(main)
    assert info.value.code == 3


def _raise_huge(size: int) -> None:
    raise ValueError("x" * size)


async def test_a_crash_report_of_a_huge_exception_stays_small(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="pybeam"):
        _, ref = pybeam.spawn_monitor(_raise_huge, 10_000_000)
        reason = await down_of(ref)
    assert len(reason.message) == 10_000_000  # the reason itself is whole
    assert "characters omitted" in caplog.text
    assert len(caplog.text) < 20_000


async def test_a_gen_server_crash_report_with_huge_state_and_reason_stays_small(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Huge(pybeam.GenServer):
        def handle_call(self, request: Any, from_: Any, state: Any) -> Any:
            raise ValueError("y" * 5_000_000)

    with caplog.at_level(logging.ERROR, logger="pybeam"):
        server = await pybeam.gen_server.start(Huge, ["z" * 5_000_000] * 3)
        with pytest.raises(pybeam.gen_server.CallExit):
            await pybeam.gen_server.call(server, "w" * 5_000_000)
    assert "terminating" in caplog.text
    assert len(caplog.text) < 40_000


class _Halt(BaseException):
    pass


async def _raises_base_exception() -> None:
    raise _Halt("stop")


async def _awaits_a_cancelled_future() -> None:
    fut = asyncio.get_running_loop().create_future()
    fut.cancel()
    await fut


async def test_any_other_base_exception_is_a_crash_too() -> None:
    _, ref = pybeam.spawn_monitor(_raises_base_exception)
    reason = await down_of(ref)
    assert reason.kind.endswith("_Halt") and reason.message == "stop"
    # A CancelledError the process did not receive as a kill is a crash, not "killed".
    _, ref = pybeam.spawn_monitor(_awaits_a_cancelled_future)
    reason = await down_of(ref)
    assert isinstance(reason, Crash) and reason.kind.endswith("CancelledError")
    pid = spawn(sleeper)
    ref = pybeam.monitor(pid)
    pybeam.exit(pid, "kill")
    assert await down_of(ref) == "killed"

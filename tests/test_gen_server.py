"""GenServer: starting, callbacks, calls and their errors, stop, crash reports."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import pybeam
from pybeam import ANY, Crash, NodeDown, NoProc, Pid, Ref, gen_server, global_, receive, rpc, send, spawn
from pybeam.gen_server import (
    IGNORE,
    AlreadyStarted,
    CallExit,
    CallTimeout,
    GenServer,
    GenServerError,
    NoServer,
    StartError,
    StartIgnored,
    StartTimeout,
)


async def down_of(ref: Ref, timeout: float = 5.0) -> Any:
    msg = await receive(("DOWN", ref, "process", ANY, ANY), timeout=timeout)
    return msg[4]


class Counter(GenServer):
    """Plain (sync) callbacks."""

    def init(self, n: int) -> int:
        return n

    def handle_call(self, request: Any, from_: Any, n: int) -> Any:
        match request:
            case "get":
                return ("reply", n, n)
            case ("add", k):
                return ("reply", n + k, n + k)
            case "from":
                return ("reply", from_, n)
        return super().handle_call(request, from_, n)

    def handle_cast(self, request: Any, n: int) -> Any:
        match request:
            case "inc":
                return ("noreply", n + 1)
            case ("report", pid):
                send(pid, ("count", n))
                return ("noreply", n)
        return super().handle_cast(request, n)


class Recorder(GenServer):
    """Async callbacks; tells the test process (its ``arg``) what happens to it."""

    async def init(self, arg: Any) -> Any:
        test, trap = arg if type(arg) is tuple else (arg, False)
        if trap:
            pybeam.trap_exit(True)
        await asyncio.sleep(0)
        return {"test": test, "pending": None}

    async def handle_call(self, request: Any, from_: Any, state: dict[str, Any]) -> Any:
        await asyncio.sleep(0)
        match request:
            case "hold":  # reply later, on the "release" cast
                return ("noreply", {**state, "pending": from_})
            case ("helper_replies", value):  # another process replies
                spawn(gen_server.reply, from_, value)
                return ("noreply", state)
            case ("stop_with_reply", reason):
                return ("stop", reason, "bye", state)
            case ("stop_no_reply", reason):
                return ("stop", reason, state)
            case "crash":
                raise ValueError("crash in handle_call")
            case "bad":
                return ("nonsense",)
            case ("exit", reason):
                pybeam.exit(reason)
            case "ping":
                return ("reply", "pong", state)
        return ("reply", ("unknown", request), state)

    async def handle_cast(self, request: Any, state: dict[str, Any]) -> Any:
        match request:
            case ("release", value):
                gen_server.reply(state["pending"], value)
                return ("noreply", {**state, "pending": None})
            case ("stop", reason):
                return ("stop", reason, state)
            case "crash":
                raise RuntimeError("crash in handle_cast")
        return ("noreply", state)

    async def handle_info(self, msg: Any, state: dict[str, Any]) -> Any:
        match msg:
            case ("stop", reason):
                return ("stop", reason, state)
            case "bad":
                return "not a tuple"
        send(state["test"], ("info", msg))
        return ("noreply", state)

    async def terminate(self, reason: Any, state: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        send(state["test"], ("terminated", reason))


# -- starting ---------------------------------------------------------------------


async def test_start_link_call_cast_with_plain_callbacks() -> None:
    pid = await gen_server.start_link(Counter, 5)
    assert isinstance(pid, Pid)
    assert pybeam.self() in pybeam.process_info(pid)["links"]  # type: ignore[index]
    assert await gen_server.call(pid, "get") == 5
    gen_server.cast(pid, "inc")
    gen_server.cast(pid, "inc")
    assert await gen_server.call(pid, ("add", 10)) == 17
    me = pybeam.self()
    gen_server.cast(pid, ("report", me))
    assert await receive(("count", ANY), timeout=5) == ("count", 17)


async def test_start_without_link_and_with_an_instance() -> None:
    pid = await gen_server.start(Counter(), 1)
    assert pybeam.self() not in pybeam.process_info(pid)["links"]  # type: ignore[index]
    assert await gen_server.call(pid, "get") == 1


async def test_from_is_the_caller_and_a_unique_tag() -> None:
    pid = await gen_server.start(Counter, 0)
    caller, tag = await gen_server.call(pid, "from")
    assert caller == pybeam.self()
    assert isinstance(tag, Ref)
    assert (await gen_server.call(pid, "from"))[1] != tag


async def test_classmethod_sugar_and_local_names() -> None:
    pid = await Counter.start_link(3, name="counter")
    assert pybeam.whereis("counter") == pid
    assert await gen_server.call("counter", "get") == 3
    assert await gen_server.call(("counter", pybeam.node_name()), "get") == 3
    gen_server.cast("counter", "inc")
    gen_server.cast(("counter", pybeam.node_name()), "inc")
    assert await gen_server.call("counter", "get") == 5
    other = await Counter.start(0)
    assert await gen_server.call(other, "get") == 0


async def test_name_taken_is_already_started_and_freed_after_stop() -> None:
    pid = await Counter.start(0, name="taken")
    with pytest.raises(AlreadyStarted) as info:
        await Counter.start(1, name="taken")
    assert info.value.pid == pid
    assert info.value.reason == ("already_started", pid)
    await gen_server.stop("taken")
    assert pybeam.whereis("taken") is None
    assert await gen_server.call(await Counter.start(7, name="taken"), "get") == 7


async def test_bad_arguments_are_refused_up_front() -> None:
    with pytest.raises(pybeam.BadArg):
        await gen_server.start(Counter, 0, name=42)  # type: ignore[arg-type]
    with pytest.raises(pybeam.BadArg):
        await gen_server.start(object, 0)  # type: ignore[arg-type]
    with pytest.raises(pybeam.BadArg):
        await gen_server.call(42, "get")  # type: ignore[call-overload]


class StopsInInit(GenServer):
    def init(self, reason: Any) -> Any:
        return ("stop", reason)


class RaisesInInit(GenServer):
    async def init(self, arg: Any) -> Any:
        raise KeyError("missing config")


class ExitsInInit(GenServer):
    def init(self, arg: Any) -> Any:
        pybeam.exit(("shutdown", "no thanks"))


class IgnoresInInit(GenServer):
    def init(self, arg: Any) -> Any:
        return IGNORE


class SlowInit(GenServer):
    async def init(self, arg: Any) -> Any:
        await asyncio.sleep(3600)


async def test_init_stop_makes_start_link_raise_and_the_caller_survive() -> None:
    # The caller traps no exits: it must get the error, not the exit signal.
    with pytest.raises(StartError) as info:
        await gen_server.start_link(StopsInInit, "bad config", name="stopper")
    assert info.value.reason == "bad config"
    assert pybeam.whereis("stopper") is None  # the process is gone, its name free
    assert await receive(timeout=0, default=None) is None  # nothing left in the mailbox


async def test_init_stop_while_trapping_exits_leaves_no_exit_message() -> None:
    pybeam.trap_exit(True)
    with pytest.raises(StartError):
        await gen_server.start_link(StopsInInit, "boom")
    assert await receive(timeout=0, default=None) is None


async def test_init_raising_is_a_start_error_with_the_crash(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="pybeam"), pytest.raises(StartError) as info:
        await gen_server.start_link(RaisesInInit, "the arg")
    reason = info.value.reason
    assert isinstance(reason, Crash)
    assert reason.kind == "KeyError"
    assert "missing config" in reason.message
    assert "RaisesInInit" in caplog.text
    assert "crashed in init" in caplog.text
    assert "'the arg'" in caplog.text
    assert "Traceback" in caplog.text


async def test_init_exit_is_a_start_error_with_that_reason() -> None:
    with pytest.raises(StartError) as info:
        await gen_server.start(ExitsInInit)
    assert info.value.reason == ("shutdown", "no thanks")


async def test_init_ignore() -> None:
    with pytest.raises(StartIgnored) as info:
        await gen_server.start_link(IgnoresInInit, name="ignored")
    assert info.value.reason == "ignore"
    assert pybeam.whereis("ignored") is None


async def test_init_too_slow_is_killed() -> None:
    with pytest.raises(StartTimeout) as info:
        await gen_server.start_link(SlowInit, name="slow", timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert info.value.reason == "timeout"
    assert pybeam.whereis("slow") is None
    assert await receive(timeout=0, default=None) is None


async def test_start_error_when_the_process_is_killed_during_init() -> None:
    pybeam.trap_exit(True)

    async def killer() -> None:
        for _ in range(1000):
            pid = pybeam.whereis("victim")
            if pid is not None:
                pybeam.exit(pid, "kill")
                return
            await asyncio.sleep(0.001)

    spawn(killer)
    with pytest.raises(StartError) as info:
        await gen_server.start_link(SlowInit, name="victim")
    assert info.value.reason == "killed"
    assert await receive(timeout=0, default=None) is None  # the EXIT was flushed


# -- calls ----------------------------------------------------------------------


async def test_async_callbacks_and_deferred_reply() -> None:
    me = pybeam.self()
    pid = await Recorder.start_link(me)

    async def client() -> None:
        send(me, ("held", await gen_server.call(pid, "hold")))

    spawn(client)
    # The server keeps serving while the first call waits.
    assert await gen_server.call(pid, "ping") == "pong"
    assert await receive(("held", ANY), timeout=0.01, default=None) is None
    gen_server.cast(pid, ("release", 42))
    assert await receive(("held", ANY), timeout=5) == ("held", 42)


async def test_reply_from_another_process() -> None:
    pid = await Recorder.start_link(pybeam.self())
    assert await gen_server.call(pid, ("helper_replies", "from a helper")) == "from a helper"


async def test_handle_info_gets_other_messages() -> None:
    pid = await Recorder.start_link(pybeam.self())
    send(pid, ("hello", 1))
    assert await receive(("info", ANY), timeout=5) == ("info", ("hello", 1))


async def test_call_timeout_leaves_the_server_running() -> None:
    pid = await Recorder.start_link(pybeam.self())
    with pytest.raises(CallTimeout) as info:
        await gen_server.call(pid, "hold", timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert pybeam.is_alive(pid)
    assert await gen_server.call(pid, "ping") == "pong"


async def test_late_reply_to_a_plain_process_is_tagged_with_the_abandoned_ref() -> None:
    pid = await Recorder.start_link(pybeam.self())
    with pytest.raises(CallTimeout):
        await gen_server.call(pid, "hold", timeout=0.05)
    gen_server.cast(pid, ("release", "late"))
    _, value = await receive((Ref, ANY), timeout=5)
    assert value == "late"
    # The next call is not confused by it.
    assert await gen_server.call(pid, "ping") == "pong"


class Caller(GenServer):
    """Calls another server with a short timeout; records what handle_info sees."""

    def init(self, arg: Any) -> list[Any]:
        return []

    async def handle_call(self, request: Any, from_: Any, infos: list[Any]) -> Any:
        match request:
            case ("call", target, timeout):
                try:
                    return ("reply", await gen_server.call(target, "hold", timeout), infos)
                except CallTimeout:
                    return ("reply", "timed out", infos)
            case "infos":
                return ("reply", infos, infos)
        return ("reply", None, infos)

    def handle_info(self, msg: Any, infos: list[Any]) -> Any:
        return ("noreply", [*infos, msg])


async def test_late_reply_to_a_gen_server_is_dropped() -> None:
    target = await Recorder.start_link(pybeam.self())
    caller = await Caller.start_link()
    assert await gen_server.call(caller, ("call", target, 0.05)) == "timed out"
    gen_server.cast(target, ("release", "late"))
    # Once target answered this, its late reply is in caller's mailbox,
    # ahead of the next call.
    assert await gen_server.call(target, "ping") == "pong"
    assert await gen_server.call(caller, "infos") == []
    send(caller, "a real message")
    assert await gen_server.call(caller, "infos") == ["a real message"]


async def test_call_to_a_dead_pid_is_no_server() -> None:
    pid = await gen_server.start(Counter, 0)
    await gen_server.stop(pid)
    with pytest.raises(NoServer) as info:
        await gen_server.call(pid, "get")
    assert isinstance(info.value, NoProc)
    assert isinstance(info.value, GenServerError)


async def test_call_to_an_unregistered_name_is_no_server() -> None:
    with pytest.raises(NoServer):
        await gen_server.call("nobody", "get")
    with pytest.raises(NoServer):
        await gen_server.call(("nobody", pybeam.node_name()), "get")


async def test_call_to_an_unreachable_node_is_node_down() -> None:
    # This node is not distributed: every other node is out of reach.
    with pytest.raises(NodeDown):
        await gen_server.call(("server", "elsewhere@127.0.0.1"), "get")
    with pytest.raises(NodeDown):
        await gen_server.call(Pid("elsewhere@127.0.0.1", 1, 1), "get")


async def test_crash_during_a_call_is_call_exit_with_the_crash() -> None:
    pid = await Recorder.start(pybeam.self())
    with pytest.raises(CallExit) as info:
        await gen_server.call(pid, "crash")
    reason = info.value.reason
    assert isinstance(reason, Crash)
    assert reason.kind == "ValueError"
    assert reason.message == "crash in handle_call"
    assert info.value.server == pid
    assert not pybeam.is_alive(pid)


async def test_exit_during_a_call_is_call_exit_with_that_reason() -> None:
    pid = await Recorder.start(pybeam.self())
    with pytest.raises(CallExit) as info:
        await gen_server.call(pid, ("exit", "my reason"))
    assert info.value.reason == "my reason"
    assert await receive(("terminated", ANY), timeout=5) == ("terminated", "my reason")


async def test_stop_without_reply_during_a_call() -> None:
    pid = await Recorder.start(pybeam.self())
    ref = pybeam.monitor(pid)
    with pytest.raises(CallExit) as info:
        await gen_server.call(pid, ("stop_no_reply", "normal"))
    assert info.value.reason == "normal"
    assert await receive(("terminated", ANY), timeout=5) == ("terminated", "normal")
    assert await down_of(ref) == "normal"


async def test_stop_with_reply_replies_after_terminate() -> None:
    pid = await Recorder.start(pybeam.self())
    ref = pybeam.monitor(pid)
    assert await gen_server.call(pid, ("stop_with_reply", "shutdown")) == "bye"
    # terminate had run (and told us) before the reply was sent.
    assert await receive(("terminated", ANY), timeout=0) == ("terminated", "shutdown")
    assert await down_of(ref) == "shutdown"


async def test_calling_itself_is_an_error() -> None:
    class SelfCaller(GenServer):
        async def handle_call(self, request: Any, from_: Any, state: Any) -> Any:
            try:
                await gen_server.call(pybeam.self(), "again")
            except GenServerError as e:
                return ("reply", str(e), state)
            return ("reply", "no error", state)

    pid = await SelfCaller.start_link()
    assert "calling_self" in await gen_server.call(pid, "go")


async def test_bad_return_value_crashes_the_server(caplog: pytest.LogCaptureFixture) -> None:
    pid = await Recorder.start(pybeam.self())
    with caplog.at_level(logging.ERROR, logger="pybeam"), pytest.raises(CallExit) as info:
        await gen_server.call(pid, "bad")
    reason = info.value.reason
    assert isinstance(reason, Crash)
    assert reason.kind == "pybeam.gen_server.BadReturn"
    assert "handle_call returned a bad value: ('nonsense',)" in reason.message
    assert "BadReturn" in caplog.text


async def test_bad_return_from_handle_info_crashes_the_server() -> None:
    pid, ref = await start_monitored(Recorder, pybeam.self())
    send(pid, "bad")
    reason = await down_of(ref)
    assert isinstance(reason, Crash)
    assert "handle_info returned a bad value: 'not a tuple'" in reason.message


async def start_monitored(cls: type[GenServer], arg: Any = None) -> tuple[Pid, Ref]:
    pid = await gen_server.start(cls, arg)
    return pid, pybeam.monitor(pid)


# -- casts and info -----------------------------------------------------------------


async def test_cast_never_fails_for_a_missing_server() -> None:
    pid = await gen_server.start(Counter, 0)
    await gen_server.stop(pid)
    gen_server.cast(pid, "inc")
    gen_server.cast("nobody", "inc")
    gen_server.cast(("nobody", pybeam.node_name()), "inc")
    gen_server.cast(("nobody", "elsewhere@127.0.0.1"), "inc")


async def test_stop_from_handle_cast_and_handle_info() -> None:
    pid, ref = await start_monitored(Recorder, pybeam.self())
    gen_server.cast(pid, ("stop", ("shutdown", "cast")))
    assert await receive(("terminated", ANY), timeout=5) == ("terminated", ("shutdown", "cast"))
    assert await down_of(ref) == ("shutdown", "cast")

    pid, ref = await start_monitored(Recorder, pybeam.self())
    send(pid, ("stop", "normal"))
    assert await receive(("terminated", ANY), timeout=5) == ("terminated", "normal")
    assert await down_of(ref) == "normal"


async def test_crash_in_handle_cast_calls_terminate_with_the_crash() -> None:
    pid, ref = await start_monitored(Recorder, pybeam.self())
    gen_server.cast(pid, "crash")
    _, reason = await receive(("terminated", ANY), timeout=5)
    assert isinstance(reason, Crash)
    assert reason.kind == "RuntimeError"
    assert await down_of(ref) == reason


class Defaults(GenServer):
    pass


async def test_defaults_init_is_arg_unknown_call_or_cast_crashes_info_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pid, ref = await start_monitored(Defaults, "state")
    with caplog.at_level(logging.WARNING, logger="pybeam"):
        send(pid, "stray")
        with pytest.raises(CallExit) as info:
            await gen_server.call(pid, "anything")
    assert "unexpected message: 'stray'" in caplog.text
    assert info.value.reason.kind == "NotImplementedError"
    assert "no handle_call" in info.value.reason.message
    assert "When server state == 'state'" in caplog.text

    pid, ref = await start_monitored(Defaults, "state")
    gen_server.cast(pid, "anything")
    reason = await down_of(ref)
    assert reason.kind == "NotImplementedError"
    assert "no handle_cast" in reason.message


# -- stop and terminate ---------------------------------------------------------------


async def test_stop_is_synchronous_and_runs_terminate() -> None:
    pid = await Recorder.start_link(pybeam.self(), name="to_stop")
    await gen_server.stop("to_stop")
    assert not pybeam.is_alive(pid)
    assert await receive(("terminated", ANY), timeout=0) == ("terminated", "normal")


async def test_stop_with_a_reason() -> None:
    pybeam.trap_exit(True)
    pid = await Recorder.start_link(pybeam.self())
    await gen_server.stop(pid, ("shutdown", "maintenance"))
    assert await receive(("terminated", ANY), timeout=0) == ("terminated", ("shutdown", "maintenance"))
    assert await receive(("EXIT", pid, ANY), timeout=5) == ("EXIT", pid, ("shutdown", "maintenance"))


async def test_stop_a_missing_server_is_no_server() -> None:
    with pytest.raises(NoServer):
        await gen_server.stop("nobody")
    pid = await gen_server.start(Counter, 0)
    await gen_server.stop(pid)
    with pytest.raises(NoServer):
        await gen_server.stop(pid)


class SlowTerminate(GenServer):
    async def terminate(self, reason: Any, state: Any) -> None:
        await asyncio.sleep(3600)


class BadTerminate(GenServer):
    def terminate(self, reason: Any, state: Any) -> None:
        raise OSError("cannot clean up")


async def test_stop_timeout_leaves_the_server() -> None:
    pid = await gen_server.start(SlowTerminate)
    with pytest.raises(CallTimeout):
        await gen_server.stop(pid, timeout=0.05)
    assert pybeam.is_alive(pid)
    pybeam.exit(pid, "kill")


async def test_terminate_raising_changes_the_exit_reason(caplog: pytest.LogCaptureFixture) -> None:
    pid = await gen_server.start(BadTerminate)
    with caplog.at_level(logging.ERROR, logger="pybeam"), pytest.raises(CallExit) as info:
        await gen_server.stop(pid)
    assert info.value.reason.kind == "OSError"
    assert "cannot clean up" in caplog.text


async def test_parent_exit_runs_terminate_when_trapping_exits() -> None:
    me = pybeam.self()

    async def parent(trap: bool) -> None:
        pid = await Recorder.start_link((me, trap))
        send(me, ("server", pid))
        await receive()
        pybeam.exit("shutdown")

    for trap in (True, False):
        p = spawn(parent, trap)
        _, server = await receive(("server", ANY), timeout=5)
        ref = pybeam.monitor(server)
        send(p, "go")
        assert await down_of(ref) == "shutdown"
        got = await receive(("terminated", ANY), timeout=0, default=None)
        # A server that traps exits runs terminate; one that does not is just killed.
        assert got == (("terminated", "shutdown") if trap else None)


async def test_exit_from_a_non_parent_goes_to_handle_info_when_trapping() -> None:
    pid = await Recorder.start_link((pybeam.self(), True))
    other = spawn(pybeam.exit, pid, ("from", "other"))
    assert await receive(("info", ANY), timeout=5) == ("info", ("EXIT", other, ("from", "other")))
    assert pybeam.is_alive(pid)


# -- crash reports ----------------------------------------------------------------


class BigState(GenServer):
    def init(self, arg: Any) -> Any:
        return {"items": list(range(10_000)), "blob": "x" * 100_000}

    def handle_cast(self, request: Any, state: Any) -> Any:
        return state["missing key"]


async def test_crash_report_names_server_message_state_reason_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pid = await gen_server.start(BigState, name="big")
    ref = pybeam.monitor(pid)
    with caplog.at_level(logging.ERROR, logger="pybeam"):
        gen_server.cast("big", ("do", "it"))
        reason = await down_of(ref)
    assert isinstance(reason, Crash)
    assert reason.kind == "KeyError"
    text = caplog.text
    assert f"GenServer 'big' ({pid!r}) (BigState) terminating" in text
    assert "Last message in was ('$gen_cast', ('do', 'it'))" in text
    assert "When server state == {" in text
    assert "Reason for termination == Crash(KeyError: 'missing key')" in text
    assert "Traceback" in text
    assert 'return state["missing key"]' in text
    # The state is summarised, not dumped.
    assert len(text) < 5_000


async def test_no_crash_report_for_normal_or_shutdown_exits(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="pybeam"):
        for reason in ("normal", "shutdown", ("shutdown", 1)):
            pid = await gen_server.start(Counter, 0)
            await gen_server.stop(pid, reason)
    assert "terminating" not in caplog.text


async def test_abnormal_stop_reason_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    pid, ref = await start_monitored(Recorder, pybeam.self())
    with caplog.at_level(logging.ERROR, logger="pybeam"):
        gen_server.cast(pid, ("stop", "disk full"))
        await down_of(ref)
    assert "Reason for termination == 'disk full'" in caplog.text


# -- global names ------------------------------------------------------------------


async def test_global_names() -> None:
    pid = await Counter.start_link(1, name=("global", "gcounter"))
    assert global_.whereis_name("gcounter") == pid
    assert await gen_server.call(("global", "gcounter"), "get") == 1
    gen_server.cast(("global", "gcounter"), "inc")
    assert await gen_server.call(("global", "gcounter"), "get") == 2
    with pytest.raises(AlreadyStarted) as info:
        await Counter.start(0, name=("global", "gcounter"))
    assert info.value.pid == pid
    await gen_server.stop(("global", "gcounter"))
    for _ in range(500):  # the name server learns of the exit from its monitor
        if global_.whereis_name("gcounter") is None:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(NoServer):
        await gen_server.call(("global", "gcounter"), "get")
    with pytest.raises(NoServer):
        await gen_server.stop(("global", "gcounter"))
    gen_server.cast(("global", "gcounter"), "inc")  # dropped, no error


# -- across nodes (real nodes, each its own OS process) ----------------------------------


async def start_counter(n: int) -> Pid:
    """Runs on a cluster node: a counter registered there as "counter"."""
    return await gen_server.start(Counter, n, name="counter")


class Holder(GenServer):
    """Never replies; tells ``test`` each call it holds."""

    def handle_call(self, request: Any, from_: Any, test: Pid) -> Any:
        send(test, ("holding", request))
        return ("noreply", test)


async def start_holder(test: Pid) -> Pid:
    return await gen_server.start(Holder, test)


async def test_calls_across_nodes(cluster: Any) -> None:
    async with cluster(1) as c:
        (node,) = c.nodes
        pid = await rpc.call(node, start_counter, 10)
        assert pid.node == node
        assert await gen_server.call(pid, "get") == 10
        assert await gen_server.call(("counter", node), ("add", 5)) == 15
        gen_server.cast(("counter", node), "inc")
        assert await gen_server.call(("counter", node), "get") == 16
        caller, tag = await gen_server.call(pid, "from")
        assert caller == pybeam.self()
        assert isinstance(tag, Ref)
        with pytest.raises(NoServer):
            await gen_server.call(("nobody", node), "get")
        await gen_server.stop(("counter", node))
        with pytest.raises(NoServer):
            await gen_server.call(pid, "get")


async def test_pending_call_raises_node_down_when_the_node_dies(cluster: Any) -> None:
    me = pybeam.self()
    async with cluster(1) as c:
        (node,) = c.nodes
        pid = await rpc.call(node, start_holder, me)

        async def client() -> None:
            try:
                await gen_server.call(pid, "wait", timeout=30)
            except Exception as e:
                send(me, ("raised", e))

        spawn(client)
        assert await receive(("holding", ANY), timeout=10) == ("holding", "wait")
        c.kill(node)
        _, error = await receive(("raised", ANY), timeout=10)
        assert isinstance(error, NodeDown)
        assert error.node == node
        with pytest.raises(NodeDown):
            await gen_server.call(pid, "again", timeout=30)


async def test_sys_exit_in_a_callback_crashes_the_server_through_terminate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    me = pybeam.self()

    class Exiting(pybeam.GenServer):
        def handle_cast(self, request: Any, state: Any) -> Any:
            raise SystemExit(request)

        def terminate(self, reason: Any, state: Any) -> None:
            send(me, ("terminated", reason))

    server = await gen_server.start(Exiting)
    ref = pybeam.monitor(server)
    with caplog.at_level(logging.ERROR, logger="pybeam"):
        gen_server.cast(server, 7)
        assert await receive(("terminated", ANY), timeout=5) == ("terminated", Crash("SystemExit", "7"))
        assert (await receive(("DOWN", ref, ANY, ANY, ANY), timeout=5))[4] == Crash("SystemExit", "7")
    assert "terminating" in caplog.text  # the server's own crash report

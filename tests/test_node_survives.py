"""A node survives what its processes do: real nodes, separate OS processes.

A function run by ``rpc.call`` that calls ``sys.exit`` (or fails argparse, or
raises KeyboardInterrupt) ends its process with a reason; the caller gets a
clear error and the node goes on serving.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

import pytest

import pybeam
from pybeam import ANY, receive, rpc, send, spawn
from pybeam.testing import LocalCluster, eventually

ClusterFactory = Callable[..., LocalCluster]


# -- functions the other nodes run (module-level: they import this module) -----


def node_here() -> str:
    return pybeam.node_name()


def calls_sys_exit() -> None:
    sys.exit()


async def interrupted() -> None:
    raise KeyboardInterrupt


def bad_arguments() -> None:
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--count", type=int, required=True)
    parser.parse_args([])


# -- SystemExit and KeyboardInterrupt ------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "kind"),
    [(calls_sys_exit, "SystemExit"), (interrupted, "KeyboardInterrupt"), (bad_arguments, "SystemExit")],
)
async def test_rpc_of_a_function_that_exits_the_interpreter_leaves_the_node_serving(
    cluster: ClusterFactory, fn: Callable[[], object], kind: str
) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        with pytest.raises(rpc.RemoteError) as info:
            await rpc.call(n1, fn, timeout=10)
        assert info.value.kind == kind
        assert kind in str(info.value)
        assert await rpc.call(n1, node_here, timeout=10) == n1
        assert c.alive(n1)
        # As erpc: the caller reports the failure, the called node does not.
        assert "Error in process" not in c.logs(n1)


# -- results and exit reasons too large for a frame ------------------------------------

#: Over the default 64 MiB frame limit.
HUGE = 70_000_000


def huge_result(size: int) -> bytes:
    return b"x" * size


async def exit_huge_when_told(size: int) -> None:
    await pybeam.receive("go")
    pybeam.exit(("too big", b"x" * size))


async def watch_locally(target: pybeam.Pid, report_to: pybeam.Pid) -> None:
    # On the same node as ``target``: its DOWN carries the real reason.
    ref = pybeam.monitor(target)
    send(report_to, "watching")
    _, _, _, _, reason = await pybeam.receive(("DOWN", ref, ANY, ANY, ANY))
    send(report_to, ("local_down", reason[0], len(reason[1])))


async def linked_watcher(target: pybeam.Pid, report_to: pybeam.Pid) -> None:
    pybeam.trap_exit(True)
    pybeam.link(target)
    send(report_to, ("linked", pybeam.self()))
    _, _, reason = await pybeam.receive(("EXIT", target, ANY))
    send(report_to, ("link_exit", pybeam.self(), reason))


def _no_long_line(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


async def test_rpc_result_over_the_frame_limit_is_a_prompt_system_limit_error(
    cluster: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        # timeout=None: without an answer the call would wait for ever; the
        # outer timeout makes that a failure rather than a hang.
        with pytest.raises(rpc.RemoteError) as info:
            await asyncio.wait_for(rpc.call(n1, huge_result, HUGE, timeout=None), 60)
        assert info.value.kind == "system_limit"
        assert "system_limit" in str(info.value) and "frame limit" in str(info.value)
        assert await rpc.call(n1, node_here, timeout=10) == n1
        # Nothing logged the value: both logs stay small, in short lines.
        log = c.logs(n1)
        assert len(log) < 100_000 and _no_long_line(log) < 10_000
        assert len(caplog.text) < 100_000


async def test_every_link_and_monitor_hears_of_an_exit_reason_too_large_to_send(
    cluster: ClusterFactory,
) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        me = pybeam.self()
        pybeam.trap_exit(True)
        target = await pybeam.spawn_on(n1, exit_huge_when_told, HUGE)
        pybeam.link(target)
        refs = {pybeam.monitor(target) for _ in range(3)}
        watchers = [spawn(linked_watcher, target, me) for _ in range(3)]
        for w in watchers:
            await receive(("linked", w), timeout=10)
        await pybeam.spawn_on(n1, watch_locally, target, me)
        await receive("watching", timeout=10)
        await rpc.call(n1, node_here, timeout=10)  # the links and monitors are in place there

        send(target, "go")

        async def everything() -> None:
            for _ in refs:
                _, ref, _, _, reason = await receive(("DOWN", ANY, "process", target, ANY))
                assert ref in refs
                assert reason.kind == "system_limit", reason
            _, _, reason = await receive(("EXIT", target, ANY))
            assert reason.kind == "system_limit"
            for w in watchers:
                _, _, reason = await receive(("link_exit", w, ANY))
                assert reason.kind == "system_limit"
            assert await receive(("local_down", ANY, ANY)) == ("local_down", "too big", HUGE)

        await asyncio.wait_for(everything(), 60)
        assert await rpc.call(n1, node_here, timeout=10) == n1
        log = c.logs(n1)
        assert len(log) < 100_000 and _no_long_line(log) < 10_000
        # Found too large once, not once per link and monitor.
        assert log.count("cannot be sent") == 1, log


async def echo() -> None:
    while True:
        sender, payload = await receive()
        send(sender, ("echo", payload))


async def test_a_message_over_the_frame_limit_is_an_error_for_its_sender(cluster: ClusterFactory) -> None:
    from pybeam.distribution.connection import SystemLimit

    async with cluster(1) as c:
        (n1,) = c.nodes
        me = pybeam.self()
        pid = await pybeam.spawn_on(n1, echo)
        with pytest.raises(SystemLimit, match=r"system_limit.*frame limit"):
            send(pid, (me, b"x" * HUGE))
        # Not connected yet: refused just the same, before connecting.
        assert pybeam.disconnect(n1)
        await eventually(lambda: n1 not in pybeam.nodes())
        with pytest.raises(SystemLimit):
            send(pid, (me, b"x" * HUGE))
        with pytest.raises(SystemLimit):
            send(("anyone", n1), b"x" * HUGE)
        # The connection and the process are fine: a small message connects again.
        send(pid, (me, "small"))
        assert await receive(("echo", "small"), timeout=10)

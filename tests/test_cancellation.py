"""Every awaiting API is cancellation-safe, and the distribution layer's
background tasks hold no process's context (issue 8).

A cancelled call cleans up what it set up: no stray message in the caller's
mailbox, the remote work stopped where the protocol allows, no lock left
held. Real nodes in OS processes (LocalCluster), over real TCP.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import secrets
import signal
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import pybeam
from pybeam import ANY, global_, net, pg, rpc
from pybeam.distribution.net_kernel import NetKernel
from pybeam.process import _current
from pybeam.testing import LocalCluster, eventually, run_in_process

# -- run on the cluster nodes ---------------------------------------------------------------


async def sleep_then_tell(whom: pybeam.Pid, seconds: float) -> str:
    """The remote work: it would tell ``whom`` once done; killed, it never does."""
    await asyncio.sleep(seconds)
    pybeam.send(whom, ("late", pybeam.node_name()))
    return "done"


async def idle() -> None:
    await pybeam.receive()


# -- helpers ---------------------------------------------------------------------------------


def mailbox() -> list[Any]:
    info = pybeam.process_info(pybeam.self())
    assert info is not None
    messages: list[Any] = info["messages"]
    return messages


async def nothing_comes(seconds: float) -> None:
    """The caller's mailbox stays empty for ``seconds`` (longer than the remote
    work would take): no late message, no DOWN, no spawn reply."""
    assert await pybeam.receive(timeout=seconds, default=None) is None, mailbox()


async def cancel_soon(coro: Any, after: float | None) -> None:
    """Run ``coro`` as a task of the caller's process; cancel it after ``after``
    seconds (None: before it has had a reply from anywhere)."""
    task = asyncio.ensure_future(coro)
    if after is None:
        await asyncio.sleep(0)  # it has sent its request, no reply can have come
    else:
        await asyncio.sleep(after)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- rpc ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("after", [None, 0.5], ids=["before-the-spawn-reply", "while-it-runs"])
async def test_a_cancelled_rpc_call_leaves_nothing_behind(
    cluster: Callable[..., LocalCluster], after: float | None
) -> None:
    async with cluster(1) as c:
        (node,) = c.nodes
        me = pybeam.self()
        await cancel_soon(rpc.call(node, sleep_then_tell, me, 1.5, timeout=None), after)
        await nothing_comes(3.0)
        # And the node is as before.
        assert await rpc.call(node, sleep_then_tell, me, 0.0) == "done"
        assert await pybeam.receive(("late", node), timeout=5)


async def test_rpc_call_under_wait_for_leaves_nothing_behind(cluster: Callable[..., LocalCluster]) -> None:
    async with cluster(1) as c:
        (node,) = c.nodes
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(rpc.call(node, sleep_then_tell, pybeam.self(), 1.5), 0.5)
        await nothing_comes(3.0)


async def test_a_cancelled_multicall_leaves_nothing_behind(cluster: Callable[..., LocalCluster]) -> None:
    async with cluster(2) as c:
        me = pybeam.self()
        await cancel_soon(rpc.multicall(c.nodes, sleep_then_tell, me, 1.5, timeout=None), 0.5)
        await nothing_comes(3.0)
        await cancel_soon(rpc.multicall(c.nodes, sleep_then_tell, me, 1.5, timeout=None), None)
        await nothing_comes(3.0)


async def test_a_cancelled_spawn_on_kills_what_it_spawned(cluster: Callable[..., LocalCluster]) -> None:
    async with cluster(1) as c:
        (node,) = c.nodes
        me = pybeam.self()
        await cancel_soon(net.spawn_on(node, sleep_then_tell, me, 1.5, link=True, monitor=True), None)
        await nothing_comes(3.0)
        assert pybeam.process_info(me)["links"] == []  # type: ignore[index]


# -- global ------------------------------------------------------------------------------------


async def test_a_cancelled_registration_leaves_no_lock(epmd_port: int) -> None:
    # Ticks far apart: the stopped node is not seen down while it is stopped.
    manager = pybeam.Node(
        f"t_{secrets.token_hex(3)}@127.0.0.1",
        cookie=secrets.token_hex(16),
        ticktime=30.0,
        epmd_port=epmd_port,
    )
    async with manager, LocalCluster(1, node=manager) as c:
        (node,) = c.nodes
        await rpc.call(node, global_.ensure_started)
        await global_.start()
        name = ("cancelled", secrets.token_hex(3))
        holder = pybeam.spawn(idle)
        os.kill(c.processes[node].pid, signal.SIGSTOP)  # a peer that does not answer
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(global_.register_name(name, holder), 0.5)
        finally:
            os.kill(c.processes[node].pid, signal.SIGCONT)
        assert name not in global_.registered_names()
        # Another process registers the name, promptly: no lock was left held.
        other = pybeam.spawn(idle)
        registered = await asyncio.wait_for(run_in_process(global_.register_name, name, other), 10)
        assert registered is True
        assert global_.whereis_name(name) == other

        async def seen_there() -> bool:
            return bool(await rpc.call(node, global_.whereis_name, name) == other)

        await eventually(seen_there)
        assert mailbox() == []


async def test_a_cancelled_start_leaves_nothing_behind(beam_node: pybeam.Node) -> None:
    pybeam.self()  # the test is the caller process (the task below inherits it)
    task = asyncio.ensure_future(global_.start())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await global_.register_name(("after", secrets.token_hex(3)), pybeam.self()) is True
    assert mailbox() == []


# -- pg ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["monitor", "monitor_scope"])
async def test_a_cancelled_pg_monitor_leaves_no_subscription(beam_node: pybeam.Node, kind: str) -> None:
    pybeam.self()  # the test is the caller process (the task below inherits it)
    group = ("g", secrets.token_hex(3))
    call = pg.monitor(group) if kind == "monitor" else pg.monitor_scope()
    await cancel_soon(call, None)
    await pg.join(group, pybeam.spawn(idle))
    await nothing_comes(0.3)


async def test_a_subscription_made_for_a_cancelled_caller_is_undone(beam_node: pybeam.Node) -> None:
    # The other order: the scope process subscribed the caller, and the caller
    # was cancelled before it learnt the ref; its $forget comes next.
    group = ("g", secrets.token_hex(3))
    server = pg.ensure_started()
    token = pybeam.make_ref()
    mref, _ = await pg._call(server, ("monitor", group, pybeam.self(), token))
    await pg.join(group, pybeam.spawn(idle))
    assert await pybeam.receive((mref, "join", group, ANY), timeout=5)
    await pg.join(group, pybeam.spawn(idle))  # sent to the caller before the $forget is seen
    pybeam.send(server, ("$forget", token))
    await pg.join(group, pybeam.spawn(idle))
    assert mailbox() == []
    assert await pg.demonitor(mref) is False  # already gone


# -- contexts ------------------------------------------------------------------------------------


def _contexts_of(task: asyncio.Task[Any] | asyncio.Handle) -> list[contextvars.Context]:
    """The contexts a task holds (its own, and its first done-callback's), or a handle's."""
    found = [r for r in gc.get_referents(task) if isinstance(r, contextvars.Context)]
    assert found
    return found


async def test_a_connection_holds_no_process_context(cluster: Callable[..., LocalCluster]) -> None:
    async with cluster(1) as c:
        (node,) = c.nodes
        kernel = pybeam.current_node().dist
        assert isinstance(kernel, NetKernel)
        net.disconnect(node)
        await eventually(lambda: node not in net.nodes())
        kept: list[weakref.ref[_Marker]] = []

        async def sender() -> None:
            # Something only this process's context holds.
            marker = _Marker()
            _marker.set(marker)
            kept.append(weakref.ref(marker))
            pybeam.send(("nobody", node), "auto-connect")  # connects from inside this process

        pybeam.spawn(sender)
        await eventually(lambda: node in net.nodes(), what="auto-connected")
        conn = kernel.connection(node)
        assert conn is not None
        # It reads in its transport's callbacks (no task of its own) and ticks on a timer.
        assert conn._tick_handle is not None
        holders: list[asyncio.Task[Any] | asyncio.Handle] = [conn._tick_handle, *kernel._tasks]
        for holder in holders:
            for ctx in _contexts_of(holder):
                assert ctx.get(_current) is None, holder
                assert ctx.get(_marker) is None, holder
        gc.collect()
        assert kept and kept[0]() is None, "the ended process's context is kept alive"


class _Marker:
    pass


_marker: contextvars.ContextVar[_Marker | None] = contextvars.ContextVar("marker", default=None)


async def test_a_service_holds_no_context_of_the_process_that_started_it(beam_node: pybeam.Node) -> None:
    kept: list[weakref.ref[_Marker]] = []

    async def first_user() -> None:
        marker = _Marker()
        _marker.set(marker)
        kept.append(weakref.ref(marker))
        global_.ensure_started()
        pg.ensure_started()

    pybeam.spawn(first_user)
    await eventually(lambda: bool(kept) and pybeam.whereis(pg.DEFAULT_SCOPE) is not None)
    for name in (global_.NAME, pg.DEFAULT_SCOPE):
        pid = pybeam.whereis(name)
        assert pid is not None
        proc = beam_node.process(pid)
        assert proc is not None and proc.task is not None
        for ctx in _contexts_of(proc.task):
            assert ctx.get(_marker) is None, name
    gc.collect()
    assert kept[0]() is None, "the first user's context is kept alive by a service"

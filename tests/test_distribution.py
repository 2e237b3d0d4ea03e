"""Distribution with real nodes: separate OS processes talking TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

import pybeam
from pybeam import ANY, Crash, NodeDown, Pid, SpawnError, receive, rpc, send
from pybeam.testing import LocalCluster, eventually, heal, partition

ClusterFactory = Callable[..., LocalCluster]


# -- functions the other nodes run (module-level: they import this module) -----


async def echo() -> None:
    while True:
        match await receive():
            case (sender, payload):
                send(sender, ("echo", payload))


async def idle() -> None:
    await receive(lambda m: False)


async def in_order(n: int, reply_to: Pid) -> None:
    for i in range(n):
        msg = await receive()
        if msg != ("n", i):
            send(reply_to, ("out_of_order", i, msg))
            return
    send(reply_to, ("in_order", n))


async def register_idle(name: str) -> Pid:
    pid = pybeam.spawn(idle)
    pybeam.register(name, pid)
    return pid


def all_nodes_here() -> list[str]:
    return pybeam.nodes(hidden=True)


def nodes_here() -> list[str]:
    return pybeam.nodes()


def node_here() -> str:
    return pybeam.node_name()


def fail(message: str) -> None:
    raise KeyError(message)


async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


async def send_to(dest: Any, msg: Any) -> None:
    send(dest, msg)


def unencodable() -> object:
    return object()


def disconnect_from(node: str) -> bool:
    return pybeam.disconnect(node)


async def connect_to(node: str) -> bool:
    return await pybeam.connect(node)


# -- connecting ---------------------------------------------------------------------


async def test_nodes_connect_ping_and_form_a_full_mesh(cluster: ClusterFactory) -> None:
    async with cluster(2) as c:
        n1, n2 = c.nodes
        assert set(pybeam.nodes()) == {n1, n2}
        assert await pybeam.ping(n1) == "pong"
        assert await pybeam.ping("nobody@127.0.0.1") == "pang"
        # Transitive: each child connected to the manager only, and so to each other.
        me = pybeam.node_name()
        assert set(await rpc.call(n1, nodes_here)) == {me, n2}
        assert set(await rpc.call(n2, nodes_here)) == {me, n1}


async def test_wrong_cookie_is_refused_on_both_sides(
    cluster: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        assert pybeam.disconnect(n1)
        await eventually(lambda: n1 not in pybeam.nodes())
        pybeam.set_cookie("not-the-cookie", n1)
        with caplog.at_level(logging.INFO, logger="pybeam.distribution"):
            assert await pybeam.connect(n1) is False
        assert "cookie" in caplog.text
        await eventually(lambda: "cookie" in c.logs(n1))
        kernel = pybeam.current_node().dist
        assert kernel is not None
        kernel.clear_cookie(n1)  # type: ignore[attr-defined]
        assert await pybeam.connect(n1) is True


async def test_connect_by_explicit_port(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        port = await pybeam.distribution.epmd.lookup(n1)
        assert port is not None
        assert pybeam.disconnect(n1)
        await eventually(lambda: n1 not in pybeam.nodes())
        assert await pybeam.connect(f"{n1}:{port}")
        assert n1 in pybeam.nodes()


async def test_a_connection_that_cannot_be_set_up_fails_the_connect(
    cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while installing a connection must not leave connect() waiting for ever."""
    from pybeam.distribution import net_kernel

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no connection today")

    async with cluster(1) as c:
        (n1,) = c.nodes
        assert pybeam.disconnect(n1)
        await eventually(lambda: n1 not in pybeam.nodes())
        monkeypatch.setattr(net_kernel, "Connection", broken)
        assert await asyncio.wait_for(pybeam.connect(n1), 30) is False
        monkeypatch.undo()
        assert await pybeam.connect(n1)


async def test_monitor_nodes_and_disconnect(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        pybeam.monitor_nodes(True)
        assert pybeam.disconnect(n1)
        assert await receive(("nodedown", n1), timeout=5)
        assert pybeam.disconnect(n1) is False
        assert await pybeam.connect(n1)
        assert await receive(("nodeup", n1), timeout=5)
        pybeam.monitor_nodes(False)


async def test_simultaneous_connects_leave_one_connection(cluster: ClusterFactory) -> None:
    async with cluster(2) as c:
        n1, n2 = c.nodes
        for _ in range(5):
            assert await rpc.call(n1, disconnect_from, n2)
            await eventually(lambda: _async_call(n2, nodes_here, lambda ns: n1 not in ns))
            rpc.cast(n1, connect_to, n2)
            rpc.cast(n2, connect_to, n1)
            await eventually(lambda: _async_call(n1, nodes_here, lambda ns: n2 in ns))
            await eventually(lambda: _async_call(n2, nodes_here, lambda ns: n1 in ns))
        # The pair still works both ways.
        target = await pybeam.spawn_on(n2, echo)
        await rpc.call(n1, send_to, target, (pybeam.self(), "via n1"))
        assert await receive(("echo", "via n1"), timeout=5)


async def test_hidden_node_is_not_listed(beam_node: pybeam.Node, epmd_port: int, tmp_path: Any) -> None:
    name = f"hidden_{os.getpid()}@127.0.0.1"
    kernel = beam_node.dist
    assert kernel is not None
    cookie = kernel.cookie  # type: ignore[attr-defined]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pybeam", "node", "--name", name, "--cookie", cookie, "--hidden"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYBEAM_EPMD_PORT": str(epmd_port), "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
        assert await pybeam.connect(name)
        assert name not in pybeam.nodes()
        assert name in pybeam.nodes(hidden=True)
        assert await rpc.call(name, node_here) == name
        # Hidden on its side too, as in OTP: it lists no visible node, only hidden ones.
        me = pybeam.node_name()
        assert await rpc.call(name, nodes_here) == []
        assert me in await rpc.call(name, all_nodes_here)
    finally:
        proc.kill()
        proc.wait()


# -- messages ------------------------------------------------------------------------


async def test_send_to_remote_pid_and_registered_name(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        pid = await pybeam.spawn_on(n1, echo)
        assert pid.node == n1
        send(pid, (pybeam.self(), "hello"))
        assert await receive(timeout=5) == ("echo", "hello")
        named = await rpc.call(n1, register_idle, "worker")
        ref = pybeam.monitor(("worker", n1))
        pybeam.exit(named, "done")
        assert await receive(timeout=5) == ("DOWN", ref, "process", ("worker", n1), "done")
        # To a name nobody holds there: dropped, as in BEAM.
        send(("nobody", n1), "lost")


async def test_100k_messages_between_a_pair_arrive_in_order(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        n = 100_000
        checker = await pybeam.spawn_on(n1, in_order, n, pybeam.self())
        for i in range(n):
            send(checker, ("n", i))
            if i % 5000 == 0:
                await asyncio.sleep(0)
        assert await receive(timeout=60) == ("in_order", n)


async def test_unencodable_message_raises_at_the_sender(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        pid = await pybeam.spawn_on(n1, echo)
        with pytest.raises(pybeam.codec.EncodeError, match="set"):
            send(pid, (pybeam.self(), {1, 2}))
        send(pid, (pybeam.self(), "still fine"))
        assert await receive(timeout=5) == ("echo", "still fine")


# -- links, monitors, exits ------------------------------------------------------------


async def test_remote_link_propagates_exits_both_ways(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        pybeam.trap_exit(True)
        pid = await pybeam.spawn_on(n1, idle, link=True)
        pybeam.exit(pid, "boom")
        assert await receive(("EXIT", pid, ANY), timeout=5) == ("EXIT", pid, "boom")
        # A link made after the spawn; the remote side dies of our exit.
        other = await pybeam.spawn_on(n1, idle)
        pybeam.link(other)
        ref = pybeam.monitor(other)
        pybeam.unlink(other)
        pybeam.exit(other, "kill")
        assert await receive(("DOWN", ref, ANY, ANY, ANY), timeout=5) == (
            "DOWN",
            ref,
            "process",
            other,
            "killed",
        )
        assert await receive(("EXIT", other, ANY), timeout=0.2, default=None) is None


async def test_remote_process_dies_with_its_linked_partner(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes

        async def partner() -> None:
            pybeam.link(remote)
            send(me, "linked")
            await receive(lambda m: False)

        me = pybeam.self()
        remote = await pybeam.spawn_on(n1, idle)
        ref = pybeam.monitor(remote)
        local = pybeam.spawn(partner)
        assert await receive("linked", timeout=5)
        pybeam.exit(local, "crashed")
        assert await receive(("DOWN", ref, ANY, ANY, ANY), timeout=5) == (
            "DOWN",
            ref,
            "process",
            remote,
            "crashed",
        )


async def test_remote_monitor_demonitor_and_noproc(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        pid, ref = await pybeam.spawn_on(n1, fail, "oops", monitor=True)
        down = await receive(("DOWN", ref, ANY, ANY, ANY), timeout=5)
        assert down[3] == pid
        assert isinstance(down[4], Crash) and down[4].kind == "KeyError"
        ref2 = pybeam.monitor(pid)
        assert await receive(timeout=5) == ("DOWN", ref2, "process", pid, "noproc")
        live = await pybeam.spawn_on(n1, idle)
        ref3 = pybeam.monitor(live)
        assert pybeam.demonitor(ref3)
        pybeam.exit(live, "kill")
        assert await receive(("DOWN", ref3, ANY, ANY, ANY), timeout=0.3, default=None) is None
        ref4 = pybeam.monitor(("ghost", n1))
        assert await receive(timeout=5) == ("DOWN", ref4, "process", ("ghost", n1), "noproc")


async def test_killed_node_gives_noconnection_to_links_monitors_and_calls(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        pybeam.trap_exit(True)
        pybeam.monitor_nodes(True)
        linked = await pybeam.spawn_on(n1, idle, link=True)
        watched, ref = await pybeam.spawn_on(n1, idle, monitor=True)
        pybeam.spawn(_call_and_report, pybeam.self(), n1)
        await asyncio.sleep(0.2)
        c.kill(n1)
        assert await receive(("DOWN", ref, ANY, ANY, ANY), timeout=5) == (
            "DOWN",
            ref,
            "process",
            watched,
            "noconnection",
        )
        assert await receive(("EXIT", linked, ANY), timeout=5) == ("EXIT", linked, "noconnection")
        assert await receive(("nodedown", n1), timeout=5)
        assert await receive(("call", ANY), timeout=5) == ("call", "NodeDown")


async def test_frozen_node_is_declared_down_within_the_tick_window(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        _, ref = await pybeam.spawn_on(n1, idle, monitor=True)
        os_pid = c.processes[n1].pid
        loop = asyncio.get_running_loop()
        os.kill(os_pid, signal.SIGSTOP)
        try:
            t0 = loop.time()
            down = await receive(("DOWN", ref, ANY, ANY, ANY), timeout=10)
            waited = loop.time() - t0
        finally:
            os.kill(os_pid, signal.SIGCONT)
        assert down[4] == "noconnection"
        # ticktime is 1 s: down after 1 to 1.25 s of silence (plus scheduling slack).
        assert waited < 5


# -- partitions ------------------------------------------------------------------


async def test_partition_drops_messages_across_and_heal_reconnects(cluster: ClusterFactory) -> None:
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        target = await pybeam.spawn_on(n3, echo)
        await partition([n1, n2])
        await eventually(lambda: _async_call(n1, nodes_here, lambda ns: n3 not in ns and n2 in ns))
        await eventually(lambda: _async_call(n3, nodes_here, lambda ns: n1 not in ns and n2 not in ns))
        # From n1 to n3: the connect attempt fails (cookies differ), the message is lost.
        await rpc.call(n1, send_to, target, (pybeam.self(), "lost"))
        # The send started a connect attempt with the message queued on it (as
        # BEAM queues it): wait until that attempt has failed, or a heal that
        # comes while it is still under way would let it through.
        assert await rpc.call(n1, pybeam.net.connect, n3) is False
        # n3's own call to n1 fails with NodeDown, which reaches us as n3's error.
        with pytest.raises(rpc.RemoteError, match="NodeDown"):
            await rpc.call(n3, rpc.call, n1, "operator:add", 1, 2)
        # The manager still reaches both sides (Schism keeps it connected).
        assert await rpc.call(n1, node_here) == n1
        assert await rpc.call(n3, node_here) == n3
        await heal([n1, n2])
        await eventually(lambda: _async_call(n1, nodes_here, lambda ns: {n2, n3} <= set(ns)))
        await rpc.call(n1, send_to, target, (pybeam.self(), "after heal"))
        assert await receive(timeout=5) == ("echo", "after heal")
        assert await receive(timeout=0.1, default=None) is None


# -- remote spawn and rpc ------------------------------------------------------------------


async def test_spawn_on_by_name_and_errors(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        pid = await pybeam.spawn_on(n1, f"{__name__}:echo")
        send(pid, (pybeam.self(), 1))
        assert await receive(timeout=5) == ("echo", 1)
        with pytest.raises(SpawnError, match="no_such_function"):
            await pybeam.spawn_on(n1, f"{__name__}:no_such_function")
        with pytest.raises(NodeDown):
            await pybeam.spawn_on("nobody@127.0.0.1", echo)
        with pytest.raises(pybeam.BadArg):
            await pybeam.spawn_on(n1, lambda: None)


async def test_rpc_results_and_each_kind_of_error(cluster: ClusterFactory) -> None:
    async with cluster(2) as c:
        n1, n2 = c.nodes
        assert await rpc.call(n1, "operator:add", 2, 3) == 5
        assert await rpc.call(n1, slow, 0.01) == "done"
        with pytest.raises(rpc.RemoteError) as err:
            await rpc.call(n1, fail, "missing")
        assert err.value.kind == "KeyError"
        assert "missing" in err.value.message
        assert "in fail" in err.value.remote_traceback
        with pytest.raises(rpc.RpcTimeout):
            await rpc.call(n1, slow, 10, timeout=0.2)
        with pytest.raises(NodeDown):
            await rpc.call("nobody@127.0.0.1", node_here)
        with pytest.raises(rpc.RemoteError, match="EncodeError"):
            await rpc.call(n1, unencodable)
        results, bad = await rpc.multicall([n1, n2, "nobody@127.0.0.1"], node_here)
        assert results == [n1, n2]
        assert bad == ["nobody@127.0.0.1"]
        # Nothing was left behind in the caller's mailbox.
        assert await receive(timeout=0.3, default=None) is None


# -- helpers ---------------------------------------------------------------------------


async def _async_call(node: str, fn: Callable[..., Any], check: Callable[[Any], bool]) -> bool:
    try:
        return check(await rpc.call(node, fn))
    except (NodeDown, rpc.RpcError):
        return False


async def _call_and_report(me: Pid, node: str) -> None:
    # rpc.call in a process of its own, so the test can wait for other things meanwhile.
    try:
        await rpc.call(node, slow, 30, timeout=None)
        send(me, ("call", "returned"))
    except Exception as e:
        send(me, ("call", type(e).__name__))


async def test_spawn_request_reply_and_abandon(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        ref = pybeam.spawn_request(n1, idle, monitor=True)
        _, _, status, pid = await receive(("spawn_reply", ref, ANY, ANY), timeout=5)
        assert status == "ok" and pid.node == n1
        pybeam.exit(pid, "bye")
        assert await receive(("DOWN", ref, ANY, ANY, ANY), timeout=5) == ("DOWN", ref, "process", pid, "bye")
        bad = pybeam.spawn_request(n1, f"{__name__}:missing")
        assert (await receive(("spawn_reply", bad, ANY, ANY), timeout=5))[2] == "error"
        # Abandoned before the reply: the process is killed, no reply comes.
        gone = pybeam.spawn_request(n1, register_self_and_idle, "abandoned", pybeam.self())
        assert pybeam.spawn_request_abandon(gone)
        # It did start (so the check below is not vacuous), and then was killed.
        assert await receive(("started", "abandoned"), timeout=5)
        await eventually(lambda: _async_call(n1, whereis_abandoned, lambda found: found is None))
        assert await receive(("spawn_reply", gone, ANY, ANY), timeout=0.3, default=None) is None
        assert pybeam.spawn_request_abandon(gone) is False


async def register_self_and_idle(name: str, notify: Pid) -> None:
    pybeam.register(name)
    send(notify, ("started", name))
    await receive(lambda m: False)


def whereis_abandoned() -> Pid | None:
    return pybeam.whereis("abandoned")


async def test_spawn_request_on_this_node() -> None:
    ref = pybeam.spawn_request(pybeam.node_name(), idle, link=True)
    _, _, status, pid = await receive(("spawn_reply", ref, ANY, ANY), timeout=5)
    assert status == "ok"
    info = pybeam.process_info(pid)
    assert info is not None and info["links"] == [pybeam.self()]
    pybeam.unlink(pid)
    pybeam.exit(pid, "kill")
    bad = pybeam.spawn_request(pybeam.node_name(), "no_such_module_here:f")
    assert (await receive(("spawn_reply", bad, ANY, ANY), timeout=5))[2] == "error"
    assert pybeam.spawn_request_abandon(bad) is False


def stall(seconds: float) -> None:
    time.sleep(seconds)  # blocks this node's event loop, as a long computation would


async def test_a_node_whose_own_loop_stalls_does_not_declare_its_peers_down(
    epmd_port: int,
) -> None:
    # The manager tolerates 4 s of silence, the child 1 s. The child then
    # blocks its own loop for 1.5 s: the manager's ticks wait unread in its
    # socket, so the child must count that as one quiet period, not as
    # the manager's silence.
    name = f"stall_{os.getpid()}@127.0.0.1"
    async with (
        pybeam.Node(name, cookie="stall-cookie", ticktime=4.0, epmd_port=epmd_port),
        LocalCluster(1, ticktime=1.0) as c,
    ):
        (n1,) = c.nodes
        pybeam.monitor_nodes(True)
        rpc.cast(n1, stall, 1.5)
        await asyncio.sleep(2.5)
        assert await rpc.call(n1, nodes_here) == [name]
        assert await receive(("nodedown", ANY), timeout=0, default=None) is None
        assert "net_tick_timeout" not in c.logs(n1)

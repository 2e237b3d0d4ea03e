"""LocalCluster, partition and heal: real nodes in real OS processes, over real TCP.

Needs the fixtures of pybeam.testing.pytest_plugin (beam_node, cluster). The
module-level functions below run on the cluster nodes, which import this very
module by name (that is one of the things under test).
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import time
import weakref
from typing import Any

import pytest

import pybeam
from pybeam import ANY, rpc
from pybeam.testing import ClusterError, LocalCluster, eventually, heal, partition, partitioned

# -- run on the cluster nodes ---------------------------------------------------------------


def whoami() -> str:
    return pybeam.node_name()


async def sleeper() -> None:
    await pybeam.receive()


async def echo() -> None:
    while True:
        match await pybeam.receive():
            case (pybeam.Pid() as sender, msg):
                pybeam.send(sender, ("echo", msg))


async def node_watcher() -> None:
    """Records every nodeup/nodedown its node sees; answers ("events", pid) with them."""
    pybeam.monitor_nodes(True)
    events: list[tuple[str, str]] = []
    while True:
        match await pybeam.receive():
            case ("events", pybeam.Pid() as sender):
                pybeam.send(sender, ("events", list(events)))
            case (str() as kind, str() as node):
                events.append((kind, node))


def start_watcher() -> pybeam.Pid:
    pid = pybeam.spawn(node_watcher)
    pybeam.register("watcher", pid)
    return pid


async def watcher_events() -> list[tuple[str, str]]:
    pybeam.send("watcher", ("events", pybeam.self()))
    _, events = await pybeam.receive(("events", ANY), timeout=5)
    return [(str(kind), str(node)) for kind, node in events]


async def call_from_here(node: str, fn: str, *args: Any) -> tuple[str, Any]:
    """An rpc made by this node (to test what it can reach)."""
    try:
        return ("ok", await rpc.call(node, fn, *args, timeout=3))
    except pybeam.NodeDown:
        return ("nodedown", node)


# -- helpers ------------------------------------------------------------------------------------


async def sees(node: str, others: set[str]) -> bool:
    """True if ``node`` (here or on a cluster node) is connected to every one of ``others``."""
    if node == pybeam.node_name():
        return others <= set(pybeam.nodes())
    return others <= set(await rpc.call(node, "pybeam.net:nodes"))


async def sees_none(node: str, others: set[str]) -> bool:
    if node == pybeam.node_name():
        return not others & set(pybeam.nodes())
    return not others & set(await rpc.call(node, "pybeam.net:nodes"))


async def full_mesh(everyone: list[str]) -> bool:
    for node in everyone:
        if not await sees(node, set(everyone) - {node}):
            return False
    return True


def assert_all_exited(c: LocalCluster) -> None:
    assert c.processes, "the cluster started no process"
    for name, proc in c.processes.items():
        assert proc.poll() is not None, f"{name} is still running"


# -- tests --------------------------------------------------------------------------------------------


async def test_cluster_starts_connects_and_runs_test_module_code(cluster: Any) -> None:
    async with cluster(2) as c:
        n1, n2 = c.nodes
        assert {n1, n2} <= set(pybeam.nodes())
        for node in c.nodes:
            assert await rpc.call(node, "operator:add", 2, 3) == 5
            # A function of this test module, imported by name on the child.
            assert await rpc.call(node, whoami) == node
        # Started as a full mesh.
        assert await sees(n1, {n2, pybeam.node_name()})
        assert await sees(n2, {n1, pybeam.node_name()})
        assert c.logs(n1) != "" or c.alive(n1)  # logs are readable
    assert_all_exited(c)
    assert all(proc.returncode == 0 for proc in c.processes.values()), "stopped nodes exit cleanly"


async def test_kill_is_seen_as_nodedown_and_down_noconnection(cluster: Any) -> None:
    async with cluster(2) as c:
        n1, n2 = c.nodes
        pid = await pybeam.spawn_on(n1, sleeper)
        ref = pybeam.monitor(pid)
        pybeam.monitor_nodes(True)
        started = time.monotonic()
        c.kill(n1)
        assert await pybeam.receive(("nodedown", n1), timeout=5) == ("nodedown", n1)
        assert await pybeam.receive(("DOWN", ref, "process", pid, ANY), timeout=5) == (
            "DOWN",
            ref,
            "process",
            pid,
            "noconnection",
        )
        # The tick window is 1 s; a killed process's sockets close at once anyway.
        assert time.monotonic() - started < 3.0
        assert not c.alive(n1)
        assert await rpc.call(n2, whoami) == n2
        await eventually(lambda: sees_none(n2, {n1}), what=f"{n2} sees {n1} down")
    assert_all_exited(c)


async def test_child_exits_when_its_stdin_closes(cluster: Any) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        proc = c.processes[n1]
        assert proc.stdin is not None
        proc.stdin.close()  # what the manager's death does to the pipe

        async def exited() -> bool:
            return proc.poll() is not None

        await eventually(exited, what=f"{n1} exits")
        assert proc.returncode == 0
        await eventually(lambda: sees_none(pybeam.node_name(), {n1}), what=f"{n1} is down")
    assert_all_exited(c)


async def test_partition_and_heal(cluster: Any) -> None:
    me = pybeam.node_name()
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        await rpc.call(n1, start_watcher)
        echo_pid = await pybeam.spawn_on(n1, echo)
        pybeam.send(echo_pid, (pybeam.self(), "before"))
        assert await pybeam.receive(("echo", ANY), timeout=5) == ("echo", "before")
        ref = pybeam.monitor(echo_pid)

        await partition([n1, n2], keep_manager=False)
        assert set(partitioned()) == {n1, n2}

        # The manager and n3 see neither n1 nor n2; the monitor across fired.
        await eventually(lambda: sees_none(me, {n1, n2}), what="manager lost n1, n2")
        await eventually(lambda: sees_none(n3, {n1, n2}), what="n3 lost n1, n2")
        down = await pybeam.receive(("DOWN", ref, "process", echo_pid, ANY), timeout=5)
        assert down[4] == "noconnection"
        # Nothing crosses: a message is dropped, a call fails, nobody reconnects.
        pybeam.send(echo_pid, (pybeam.self(), "during"))
        assert await pybeam.receive(("echo", ANY), timeout=0.5, default=None) is None
        assert await pybeam.ping(n1) == "pang"
        assert await rpc.call(n3, call_from_here, n1, "operator:add", 1, 1) == ("nodedown", n1)
        assert n1 not in pybeam.nodes()
        with pytest.raises(pybeam.NodeDown):
            await rpc.call(n2, whoami, timeout=3)

        await heal([n1, n2])
        assert partitioned() == {}
        await eventually(lambda: full_mesh([me, n1, n2, n3]), what="full mesh after heal")
        # The echo process lived through it.
        pybeam.send(echo_pid, (pybeam.self(), "after"))
        assert await pybeam.receive(("echo", ANY), timeout=5) == ("echo", "after")
        # Inside the partition n1 kept n2 and lost the others.
        events = await rpc.call(n1, watcher_events)
        assert ("nodedown", n3) in events
        assert ("nodedown", me) in events
        assert ("nodedown", n2) not in events
    assert_all_exited(c)


async def test_partition_keeping_the_manager_connected(cluster: Any) -> None:
    me = pybeam.node_name()
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        await partition([n1, n2], keep_manager=True)
        await eventually(lambda: sees_none(n3, {n1, n2}), what="n3 lost n1, n2")
        await eventually(lambda: sees_none(n1, {n3}), what="n1 lost n3")
        # The manager still reaches both sides, and the group still sees itself.
        assert await sees(me, {n1, n2, n3})
        assert await sees(n1, {n2, me})
        assert await rpc.call(n3, call_from_here, n1, "operator:add", 1, 1) == ("nodedown", n1)
        await heal([n1, n2])
        await eventually(lambda: full_mesh([me, n1, n2, n3]), what="full mesh after heal")
        # Healed: the manager no longer holds a cookie for n1 alone.
        assert partitioned() == {}
    assert_all_exited(c)


async def test_partitions_come_and_go(cluster: Any) -> None:
    """The training's scenario: every 100 ms partition {1,2}, heal, partition {1,3},
    heal all, partition {1}, heal all."""
    me = pybeam.node_name()
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        everyone = [n1, n2, n3]

        await partition([n1, n2], keep_manager=False)
        await eventually(lambda: sees_none(me, {n1, n2}))
        await eventually(lambda: sees_none(n3, {n1, n2}))
        await asyncio.sleep(0.1)
        await heal([n1, n2])
        await asyncio.sleep(0.1)

        await partition([n1, n3], keep_manager=False)
        await eventually(lambda: sees_none(me, {n1, n3}))
        await eventually(lambda: sees_none(n2, {n1, n3}))
        assert await sees(n2, {me})
        await asyncio.sleep(0.1)
        await heal(everyone)
        await asyncio.sleep(0.1)

        await partition([n1], keep_manager=False)
        await eventually(lambda: sees_none(me, {n1}))
        await eventually(lambda: sees(n2, {n3, me}))
        await eventually(lambda: sees_none(n2, {n1}))
        await asyncio.sleep(0.1)
        await heal(everyone)

        await eventually(lambda: full_mesh([me, *everyone]), what="full mesh at the end")
        assert partitioned() == {}
    assert_all_exited(c)


async def test_two_partitions_at_once_and_moving_a_node(cluster: Any) -> None:
    me = pybeam.node_name()
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        await partition([n1], keep_manager=False)
        await partition([n2, n3], keep_manager=False)
        await eventually(lambda: sees_none(me, {n1, n2, n3}))
        # Move n3 out of {n2, n3} into its own partition.
        await partition([n3], keep_manager=False)
        await heal([n2])
        await eventually(lambda: sees(me, {n2}))
        await eventually(lambda: sees_none(n2, {n1, n3}))
        await heal([n1, n3])
        await eventually(lambda: full_mesh([me, n1, n2, n3]), what="full mesh at the end")
    assert_all_exited(c)


async def test_manager_inside_a_partition(cluster: Any) -> None:
    me = pybeam.node_name()
    async with cluster(2) as c:
        n1, n2 = c.nodes
        await partition([me, n1], keep_manager=False)
        await eventually(lambda: sees_none(me, {n2}))
        assert await sees(me, {n1})
        assert await rpc.call(n1, whoami) == n1
        await eventually(lambda: sees_none(n1, {n2}))
        assert await pybeam.ping(n2) == "pang"
        await heal([me, n1])
        await eventually(lambda: full_mesh([me, n1, n2]), what="full mesh after heal")
    assert_all_exited(c)


async def test_start_node_and_stop_node(cluster: Any) -> None:
    async with cluster(1) as c:
        n2 = await c.start_node()
        assert c.nodes[1] == n2
        assert await rpc.call(n2, whoami) == n2
        assert await c.stop_node(c.nodes[0]) == 0
        await eventually(lambda: sees_none(pybeam.node_name(), {c.nodes[0]}))
    assert_all_exited(c)


async def test_restart_node_is_a_new_incarnation_under_the_same_name(cluster: Any) -> None:
    async with cluster(2) as c:
        n1, n2 = c.nodes
        old = await pybeam.spawn_on(n1, sleeper)
        with pytest.raises(ClusterError, match="still running"):
            await c.restart_node(n1)
        c.kill(n1)
        await eventually(lambda: sees_none(pybeam.node_name(), {n1}))
        assert await c.restart_node(n1) == n1
        assert c.nodes == [n1, n2] and c.alive(n1)
        assert await rpc.call(n1, whoami) == n1
        await eventually(lambda: full_mesh([pybeam.node_name(), n1, n2]), what="full mesh after restart")
        new = await pybeam.spawn_on(n1, sleeper)
        assert new.creation != old.creation  # a new incarnation: the old pid stays dead
        ref = pybeam.monitor(old)
        assert await pybeam.receive(("DOWN", ref, ANY, ANY, ANY), timeout=10)
    assert_all_exited(c)


async def test_a_cluster_with_its_own_cookie(cluster: Any) -> None:
    async with cluster(2, cookie="ANOTHERCOOKIE", prefix="own", unique=False) as c:
        assert [n.partition("@")[0] for n in c.nodes] == ["own1", "own2"]
        n1, n2 = c.nodes
        assert await rpc.call(n1, "pybeam.net:get_cookie") == "ANOTHERCOOKIE"
        assert await sees(n2, {n1, pybeam.node_name()})
    assert_all_exited(c)


async def test_a_node_that_cannot_start_is_reported_with_its_log(beam_node: pybeam.Node) -> None:
    c = LocalCluster(1, prefix="bad@name", node=beam_node)
    with pytest.raises(ClusterError, match="exited with status 1") as info:
        await c.start()
    assert "node name must look like" in str(info.value)
    assert_all_exited(c)


async def test_forgotten_cluster_is_killed_by_the_safety_net(beam_node: pybeam.Node) -> None:
    c = LocalCluster(1, node=beam_node)
    await c.start()
    procs: list[subprocess.Popen[bytes]] = list(c.processes.values())
    gone = weakref.ref(c)
    del c
    gc.collect()
    assert gone() is None
    assert all(p.poll() is not None for p in procs)

"""LocalCluster.restart_node under the faults in force: a node restarted
during a partition comes back on its side, and one restarted during a
refusal (per-pair cookies, as a replayed ``Drop``) keeps refusing; neither
waits for the fault to end. Real nodes, each its own OS process, real TCP."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from typing import Any

import pytest

import pybeam
from pybeam import net, rpc
from pybeam.testing import eventually, heal, partition, partitioned
from test_cluster import assert_all_exited, call_from_here, full_mesh, sees, sees_none

# -- run on the cluster nodes ---------------------------------------------------------------


async def connect(peer: str) -> bool:
    return await net.connect(peer)


def refuse(peer: str) -> None:
    """A cookie for ``peer`` alone that it does not have: handshakes to it fail."""
    net.set_cookie(f"REFUSED{secrets.token_hex(8)}", peer)


def unrefuse(peer: str) -> None:
    net.set_cookie(net.get_cookie(), peer)


# -- tests ------------------------------------------------------------------------------------------


async def kill(c: Any, node: str) -> None:
    c.kill(node)
    await eventually(lambda: sees_none(pybeam.node_name(), {node}), what=f"{node} is down")


async def cut_off(inside: str, outside: str) -> None:
    """Neither can reach the other: a call fails, a connect fails, and they stay unconnected."""
    assert await rpc.call(inside, call_from_here, outside, "operator:add", 1, 1) == ("nodedown", outside)
    assert await rpc.call(outside, call_from_here, inside, "operator:add", 1, 1) == ("nodedown", inside)
    assert not await rpc.call(inside, connect, outside)
    assert not await rpc.call(outside, connect, inside)
    assert await sees_none(inside, {outside}) and await sees_none(outside, {inside})


async def test_a_node_restarted_during_a_partition_comes_back_on_its_side(cluster: Any) -> None:
    me = pybeam.node_name()
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        await partition([n1, n2])  # 2 | 1, the manager kept on both sides
        await kill(c, n1)
        assert await c.restart_node(n1) == n1
        assert n1 in partitioned()
        # Its side and the manager, at once; the other side cannot reach it.
        assert await sees(n1, {n2, me}) and await sees(n2, {n1})
        await cut_off(n1, n3)
        await heal([n1, n2])
        assert partitioned() == {}
        await eventually(lambda: full_mesh([me, n1, n2, n3]), what="full mesh after heal")
    assert_all_exited(c)


async def test_the_node_alone_in_a_partition_comes_back_alone(cluster: Any) -> None:
    me = pybeam.node_name()
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        await kill(c, n3)
        # Down when partitioned: nothing to cut off, a member all the same.
        assert await partition([n3]) == [n3]
        await c.restart_node(n3)
        assert await sees(n3, {me})
        await cut_off(n3, n1)
        await cut_off(n3, n2)
        assert await sees(n1, {n2})
        await heal([n3])
        await eventually(lambda: full_mesh([me, n1, n2, n3]), what="full mesh after heal")
    assert_all_exited(c)


async def test_a_partition_that_keeps_the_manager_out_keeps_it_out_after_a_restart(cluster: Any) -> None:
    me = pybeam.node_name()
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        await partition([n1, n2], keep_manager=False)
        await eventually(lambda: sees_none(me, {n1, n2}), what="manager lost n1, n2")
        c.kill(n1)
        await c.restart_node(n1)
        assert await sees_none(me, {n1, n2})
        assert await pybeam.ping(n1) == "pang"
        assert await rpc.call(n3, call_from_here, n1, "operator:add", 1, 1) == ("nodedown", n1)
        await heal([n1, n2])
        # Healed with n2, with which it had connected inside the partition.
        await eventually(lambda: full_mesh([me, n1, n2, n3]), what="full mesh after heal")
    assert_all_exited(c)


async def test_a_node_restarted_during_a_refusal_keeps_refusing_until_it_ends(cluster: Any) -> None:
    me = pybeam.node_name()
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        # A Drop as replay_schedule makes it: each of the pair refuses the other.
        await rpc.call(n1, refuse, n2)
        await rpc.call(n2, refuse, n1)
        await rpc.call(n1, "pybeam.net:disconnect", n2)
        await kill(c, n1)
        await c.restart_node(n1, refuse=[n2])
        assert await sees(n1, {n3, me})
        await cut_off(n1, n2)
        # The refusal ends on both sides: the pair connects again.
        await rpc.call(n1, unrefuse, n2)
        await rpc.call(n2, unrefuse, n1)
        assert await rpc.call(n2, connect, n1)
        await eventually(lambda: full_mesh([me, n1, n2, n3]), what="full mesh after the refusal")
    assert_all_exited(c)


# -- faults that change while a node restarts, or while a partition is made -----------------------


async def on_its_side(me: str, n1: str, n2: str, n3: str) -> None:
    """n1 and n2 are a partition (the manager kept), n3 is outside."""
    assert set(partitioned()) == {n1, n2}
    assert await sees(n1, {n2, me}) and await sees(n2, {n1, me})
    await cut_off(n1, n3)
    await cut_off(n2, n3)


@pytest.mark.parametrize("first", ["restart", "heal"])
async def test_a_restart_and_a_heal_at_once_take_turns(cluster: Any, first: str) -> None:
    # Before, the restart chose the partition's cookie while the heal gave the
    # group the original one back (and dropped the manager's cookie for the
    # restarted node): the new incarnation kept a cookie nobody had, and the
    # restart timed out. Now one waits for the other: either order ends healed.
    me = pybeam.node_name()
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        await kill(c, n1)
        assert await partition([n1, n2]) == [n1]  # down when partitioned: a member all the same
        restart = c.restart_node(n1)
        healing = heal([n1, n2])
        if first == "restart":
            done = await asyncio.gather(restart, healing)
        else:
            done = (await asyncio.gather(healing, restart))[::-1]
        assert done[0] == n1
        assert partitioned() == {}
        await eventually(lambda: full_mesh([me, n1, n2, n3]), what="full mesh after the heal")
    assert_all_exited(c)


async def test_a_restart_and_a_partition_at_once_take_turns(cluster: Any) -> None:
    # Before, a partition made while a node restarted tried to give it its
    # cookie while it booted, gave up (a boot slower than the partition's
    # retries: a loaded machine; here the new process is frozen meanwhile) and
    # recorded it as a member, while the new incarnation came up with the
    # cluster's cookie and joined everyone; its restart then timed out.
    me = pybeam.node_name()
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        await kill(c, n1)
        restart = asyncio.ensure_future(c.restart_node(n1))
        await asyncio.sleep(0)  # its first step launches the new process
        booting = c.processes[n1]
        os.kill(booting.pid, signal.SIGSTOP)
        try:
            parting = asyncio.ensure_future(partition([n1, n2]))
            # Frozen until the partition is over, or for longer than it tries
            # to reach a node (it waits for the restart to finish).
            await asyncio.wait({parting}, timeout=3)
        finally:
            os.kill(booting.pid, signal.SIGCONT)
        restarted, unreached = await asyncio.gather(restart, parting)
        assert restarted == n1 and unreached == []
        await on_its_side(me, n1, n2, n3)
        await heal([n1, n2])
        await eventually(lambda: full_mesh([me, n1, n2, n3]), what="full mesh after the heal")
    assert_all_exited(c)


def end_when_cut_off(how: str) -> None:
    """On a node: when a partition has it cut itself off, end the OS process
    at once (``how`` "crash", as a SIGKILL would) or stop the node ("stop",
    as the SIGTERM of LocalCluster.stop_node does)."""
    from pybeam.testing import schism

    async def end(*args: Any) -> None:
        if how == "crash":
            os._exit(9)
        os.kill(os.getpid(), signal.SIGTERM)
        await pybeam.receive("never comes")  # ended by the node's stop

    schism._isolate = end  # type: ignore[assignment]


@pytest.mark.parametrize("how", ["crash", "stop"])
async def test_a_member_that_ends_while_the_partition_is_made_stays_a_member_and_the_rest_is_cut_off(
    cluster: Any, how: str
) -> None:
    # Before, the partition raised half-way (NodeDown for a crash, RpcError
    # "shutdown" for a stop): the nodes after the dead one kept the
    # partition's cookie and their connections across, recorded as
    # partitioned yet reaching the other side.
    me = pybeam.node_name()
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        await rpc.call(n1, end_when_cut_off, how)
        assert await partition([n1, n2]) == [n1]
        await eventually(lambda: not c.alive(n1), what=f"{n1} ended")
        assert set(partitioned()) == {n1, n2}
        await cut_off(n2, n3)
        # Down, it is a member all the same: it comes back on its side.
        await c.restart_node(n1)
        await on_its_side(me, n1, n2, n3)
        await heal([n1, n2])
        await eventually(lambda: full_mesh([me, n1, n2, n3]), what="full mesh after the heal")
    assert_all_exited(c)


async def test_a_node_killed_while_partitioned_stays_a_member_until_healed_while_down(cluster: Any) -> None:
    # As documented: a member that goes down stays one (a restart brings it
    # back on its side); a heal that names it while it is down takes it out
    # of the partition, and a restart then brings it back into the healed cluster.
    me = pybeam.node_name()
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        await partition([n1, n2])
        await kill(c, n1)
        assert set(partitioned()) == {n1, n2}
        assert await heal([n1, n2]) == [n1]
        assert partitioned() == {}
        await c.restart_node(n1)
        await eventually(lambda: full_mesh([me, n1, n2, n3]), what="full mesh after the restart")
    assert_all_exited(c)

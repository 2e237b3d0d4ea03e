"""A node restarted during a partition or a refusal, in simulation and on
real nodes (replay_schedule on a LocalCluster): it comes back on its side
of the partition, still refused by its dropped peer, and the restart does
not wait for either fault to end."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest_asyncio

import pybeam
from pybeam.testing.sim import Drop, Heal, Kill, Partition, Restart, SimCluster, Step, Wait, run_schedule
from pybeam.testing.sim.replay import replay_schedule

from .test_replay_real_faults import Probe, connect


@pytest_asyncio.fixture
async def manager(epmd_port: int) -> AsyncIterator[pybeam.Node]:
    # Ticktime 2: schedule seconds are half real ones (the scenarios' is 4).
    name = f"test_{secrets.token_hex(4)}@127.0.0.1"
    async with pybeam.Node(name, cookie=secrets.token_hex(16), ticktime=2.0, epmd_port=epmd_port) as node:
        yield node


# -- a restart inside a partition --------------------------------------------------------------


class RestartedInPartition(Probe):
    """Nodes 0 and 1 on one side, 2 on the other; 0 crashes and restarts
    while the partition holds: it reaches 1 only, until the heal."""

    nodes = 3

    async def during(self, cluster: SimCluster, step: int) -> None:
        a, b, c = cluster.names
        if step == 3:  # just restarted
            assert await cluster.call(a, connect, b), "the restarted node reaches its side"
            assert not await cluster.call(a, connect, c), "the restarted node reaches across"
            assert not await cluster.call(c, connect, a), "the other side reaches the restarted node"
        elif step == 5:  # healed
            assert await cluster.call(c, connect, a)


# The wait outlasts the tick timeout: in simulation the partition holds the
# crash's FIN too, so until then the other side still counts the old
# incarnation as connected (on real nodes the partition broke it at once).
IN_PARTITION: list[Step] = [Partition((0, 1)), Kill(0, fin=True), Wait(6.0), Restart(0), Wait(1.0), Heal()]


def test_a_restart_inside_a_partition_in_simulation() -> None:
    run_schedule(RestartedInPartition, IN_PARTITION)


async def test_a_restart_inside_a_partition_on_real_nodes(manager: pybeam.Node) -> None:
    await replay_schedule(RestartedInPartition, IN_PARTITION)


class RestartedInGroupPartition(Probe):
    """0 is cut from 1 alone (2 reaches both); 0 restarts inside that cut."""

    nodes = 3

    async def during(self, cluster: SimCluster, step: int) -> None:
        a, b, c = cluster.names
        if step == 3:
            assert await cluster.call(a, connect, c)
            assert not await cluster.call(a, connect, b)
            assert not await cluster.call(b, connect, a)
        elif step == 4:
            assert await cluster.call(b, connect, a)


IN_GROUP_PARTITION: list[Step] = [Partition((0,), (1,)), Kill(0, fin=True), Wait(6.0), Restart(0), Heal()]


def test_a_restart_inside_a_group_partition_in_simulation() -> None:
    run_schedule(RestartedInGroupPartition, IN_GROUP_PARTITION)


async def test_a_restart_inside_a_group_partition_on_real_nodes(manager: pybeam.Node) -> None:
    await replay_schedule(RestartedInGroupPartition, IN_GROUP_PARTITION)


# -- a restart during a refusal ----------------------------------------------------------------


class RestartedDuringRefusal(Probe):
    """0 and 1's link is dropped and refused for a long while; 0 restarts
    within it: it reaches 2 at once and still not 1."""

    nodes = 3

    async def during(self, cluster: SimCluster, step: int) -> None:
        a, b, c = cluster.names
        if step == 2:  # restarted, well within the refusal
            assert await cluster.call(a, connect, c)
            assert not await cluster.call(a, connect, b), "the refusal ended before the restart did"
            assert not await cluster.call(b, connect, a)


DURING_REFUSAL: list[Step] = [Drop(0, 1, 20.0), Kill(0, fin=True), Restart(0)]


def test_a_restart_during_a_refusal_in_simulation() -> None:
    run_schedule(RestartedDuringRefusal, DURING_REFUSAL)


async def test_a_restart_during_a_refusal_on_real_nodes(manager: pybeam.Node) -> None:
    await replay_schedule(RestartedDuringRefusal, DURING_REFUSAL)

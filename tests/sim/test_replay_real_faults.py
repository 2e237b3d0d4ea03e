"""The faults a FaultProxy or per-pair cookies make replayable: each schedule
runs once in simulation and once on real nodes (OS processes, real TCP), and
the same scenario checks the same outcome on both.

The scenarios look at the cluster only through what a node sees: a monitor's
DOWN, a message logged, ``nodes()``, ``net.connect``, and a node's own clock
(``loop.time()``: virtual in simulation, the host's monotonic clock on real
nodes, the same for every node of the host). Durations are in schedule
seconds times the cluster's ``time_scale`` (1 in simulation).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

import pybeam
from pybeam import ANY, net, receive, send
from pybeam.testing.sim import (
    Delay,
    Drop,
    Heal,
    Kill,
    Partition,
    Restart,
    Scenario,
    SimCluster,
    Step,
    Wait,
    run_schedule,
)
from pybeam.testing.sim.replay import replay_schedule

from .test_gcounter import BuggyCounter, CounterConverges

# A manager (and so a cluster) with a ticktime of 2 s: schedule seconds are
# half real ones (the scenarios' ticktime is 4), and what a step's check must
# do before a tick timeout has 2 s for it on a loaded machine.
TICKTIME = 2.0


@pytest_asyncio.fixture
async def manager(epmd_port: int) -> AsyncIterator[pybeam.Node]:
    name = f"test_{secrets.token_hex(4)}@127.0.0.1"
    async with pybeam.Node(
        name, cookie=secrets.token_hex(16), ticktime=TICKTIME, epmd_port=epmd_port
    ) as node:
        yield node


# -- on the nodes ---------------------------------------------------------------------------


async def _sleeper() -> None:
    pybeam.register("sleeper")
    await receive(lambda m: False)


async def _log() -> None:
    pybeam.register("log")
    seen: list[Any] = []
    while True:
        msg = await receive()
        match msg:
            case ("get", pid):
                send(pid, ("log", list(seen)))
            case ("echo", pid, i):
                send(pid, ("echoed", i))
            case _:
                seen.append(msg)


async def boot() -> None:
    """A sleeper to monitor and a log of what arrives, both registered."""
    pybeam.spawn(_sleeper)
    pybeam.spawn(_log)


async def _watch(target: str) -> None:
    ref = pybeam.monitor(("sleeper", target))
    _, _, _, _, reason = await receive(("DOWN", ref, ANY, ANY, ANY))
    send("log", ("down", target, reason, asyncio.get_running_loop().time()))


async def watch(target: str) -> None:
    """Monitor ``target``'s sleeper; its DOWN goes to the log (with the time it came)."""
    pybeam.spawn(_watch, target)


async def logged() -> list[Any]:
    """What this node's log holds."""
    send("log", ("get", pybeam.self()))
    _, seen = await receive(("log", ANY))
    result: list[Any] = seen
    return result


async def downs() -> dict[str, tuple[str, float]]:
    """The DOWNs this node's watchers got: watched node -> (reason, when)."""
    return {m[1]: (m[2], m[3]) for m in await logged() if isinstance(m, tuple) and m[0] == "down"}


async def hello(target: str) -> None:
    """Send ``("hello", me)`` to ``target``'s log."""
    send(("log", target), ("hello", pybeam.node_name()))


async def roundtrip(target: str, n: int) -> tuple[list[int], float]:
    """Send ``n`` numbered echoes to ``target``'s log at once; the replies'
    order and the seconds until the last one."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    me = pybeam.self()
    for i in range(n):
        send(("log", target), ("echo", me, i))
    order = []
    for _ in range(n):
        _, i = await receive(("echoed", ANY))
        order.append(i)
    return order, loop.time() - started


async def now() -> float:
    return asyncio.get_running_loop().time()


async def nodes() -> list[str]:
    return net.nodes()


async def connect(target: str) -> bool:
    return await net.connect(target)


def scale(cluster: Any) -> float:
    """Real seconds per schedule second (1 in simulation)."""
    value: float = getattr(cluster, "time_scale", 1.0)
    return value


class Probe(Scenario):
    """Every node boots a sleeper and a log; subclasses check per step."""

    nodes = 2
    settle = 0.0

    async def start(self, cluster: SimCluster, node: str) -> None:
        await cluster.call(node, boot)


# -- a delayed link keeps the order and delivers late --------------------------------------------

DELAY = 1.0


class DelayedLink(Probe):
    async def during(self, cluster: SimCluster, step: int) -> None:
        a, b = cluster.names
        order, elapsed = await cluster.call(a, roundtrip, b, 20)
        assert order == list(range(20)), f"reordered: {order}"
        if step == 0:
            # Each way delayed: a round trip takes at least twice the delay.
            assert elapsed >= 2 * DELAY * scale(cluster), f"a round trip of {elapsed}s"
        # After the delay is ended the link is fast again (no timing bound:
        # the point is that the replies still come, in order).


DELAYED: list[Step] = [Delay(0, 1, DELAY), Delay(0, 1, 0.0)]


def test_a_delayed_link_keeps_order_and_delivers_late_in_simulation() -> None:
    run_schedule(DelayedLink, DELAYED)


async def test_a_delayed_link_keeps_order_and_delivers_late_on_real_nodes(manager: pybeam.Node) -> None:
    await replay_schedule(DelayedLink, DELAYED)


# -- a one-way partition: held one way, then noconnection on the tick timeout -------------------


class OneWay(Probe):
    """0 -> 1 is cut, 1 -> 0 flows: until the tick timeout, what 1 sends
    arrives and what 0 sends is held; then both sides get noconnection, and
    the pair stays apart."""

    async def during(self, cluster: SimCluster, step: int) -> None:
        a, b = cluster.names
        if step == 0:
            await cluster.call(a, watch, b)
            await cluster.call(b, watch, a)
        elif step == 1:  # just cut
            await cluster.call(b, hello, a)
            await cluster.call(a, hello, b)
        elif step == 2:  # well past the tick timeout
            assert ("hello", b) in await cluster.call(a, logged), "1 -> 0 did not flow"
            assert ("hello", a) not in await cluster.call(b, logged), "0 -> 1 was not held"
            assert (await cluster.call(a, downs))[b][0] == "noconnection"
            assert (await cluster.call(b, downs))[a][0] == "noconnection"
            assert b not in await cluster.call(a, nodes)
            assert a not in await cluster.call(b, nodes)


ONE_WAY: list[Step] = [Wait(1.0), Partition((0,), (1,), oneway=True), Wait(12.0)]


def test_a_one_way_partition_ends_in_noconnection_in_simulation() -> None:
    run_schedule(OneWay, ONE_WAY)


async def test_a_one_way_partition_ends_in_noconnection_on_real_nodes(manager: pybeam.Node) -> None:
    await replay_schedule(OneWay, ONE_WAY)


# -- a partition between two groups leaves the other links alone -------------------------------


class TwoGroups(Probe):
    nodes = 3

    async def during(self, cluster: SimCluster, step: int) -> None:
        a, b, c = cluster.names
        if step == 0:
            for x, y in ((a, b), (b, a), (a, c), (c, a)):
                await cluster.call(x, watch, y)
        elif step == 2:
            assert {n: r for n, (r, _) in (await cluster.call(a, downs)).items()} == {b: "noconnection"}
            assert {n: r for n, (r, _) in (await cluster.call(b, downs)).items()} == {a: "noconnection"}
            assert await cluster.call(c, downs) == {}
            # (Real nodes are connected to the manager too: not one of the names.)
            names = set(cluster.names)
            assert set(await cluster.call(a, nodes)) & names == {c}
            assert set(await cluster.call(b, nodes)) & names == {c}
            assert set(await cluster.call(c, nodes)) & names == {a, b}


TWO_GROUPS: list[Step] = [Wait(1.0), Partition((0,), (1,)), Wait(12.0)]


def test_a_partition_between_two_groups_in_simulation() -> None:
    run_schedule(TwoGroups, TWO_GROUPS)


async def test_a_partition_between_two_groups_on_real_nodes(manager: pybeam.Node) -> None:
    await replay_schedule(TwoGroups, TWO_GROUPS)


# -- a silent kill: no FIN, peers notice by their tick timeout ----------------------------------


class SilentKill(Probe):
    killed_at = 0.0

    async def during(self, cluster: SimCluster, step: int) -> None:
        a, b = cluster.names
        if step == 0:
            await cluster.call(a, watch, b)
            # Before the kill (the next step): later never makes the gap below smaller.
            self.killed_at = await cluster.call(a, now)
        elif step == 2:
            reason, at = (await cluster.call(a, downs))[b]
            assert reason == "noconnection"
            # No FIN: noticed only by the tick timeout, not at once.
            assert at - self.killed_at >= self.ticktime / 2 * scale(cluster), at - self.killed_at
            assert not cluster.alive(b)


SILENT_KILL: list[Step] = [Wait(1.0), Kill(1), Wait(12.0)]


def test_a_silent_kill_is_noticed_by_the_tick_timeout_in_simulation() -> None:
    run_schedule(SilentKill, SILENT_KILL)


async def test_a_silent_kill_is_noticed_by_the_tick_timeout_on_real_nodes(manager: pybeam.Node) -> None:
    await replay_schedule(SilentKill, SILENT_KILL)


# -- a dropped link refuses new connections for a while ----------------------------------------


class Dropped(Probe):
    async def during(self, cluster: SimCluster, step: int) -> None:
        a, b = cluster.names
        if step == 0:
            await cluster.call(a, watch, b)
        elif step == 2:  # within the refusal
            assert (await cluster.call(a, downs))[b][0] == "noconnection"
            assert not await cluster.call(a, connect, b)
            assert not await cluster.call(b, connect, a)
        elif step == 3:  # after it
            assert await cluster.call(a, connect, b)


DROPPED: list[Step] = [Wait(1.0), Drop(0, 1, 8.0), Wait(2.0), Wait(10.0)]


def test_a_dropped_link_refuses_new_connections_for_a_while_in_simulation() -> None:
    run_schedule(Dropped, DROPPED)


async def test_a_dropped_link_refuses_new_connections_for_a_while_on_real_nodes(
    manager: pybeam.Node,
) -> None:
    await replay_schedule(Dropped, DROPPED)


# -- all of it at once, on the counter of docs/testing_failures.md ------------------------------

MIXED: list[Step] = [
    Delay(0, 1, 0.5),
    Partition((0,), (1, 2), oneway=True),
    Wait(6.0),
    Heal(),
    Kill(2),
    Drop(0, 1, 2.0),
    Wait(1.0),
    Restart(2),
    Kill(1, fin=True),
    Wait(1.0),
]


def test_the_counter_converges_under_a_mixed_schedule_in_simulation() -> None:
    run_schedule(CounterConverges, MIXED)
    with pytest.raises(AssertionError, match="the replicas disagree"):
        run_schedule(BuggyCounter, MIXED)


async def test_the_counter_converges_under_a_mixed_schedule_on_real_nodes(manager: pybeam.Node) -> None:
    await replay_schedule(CounterConverges, MIXED)

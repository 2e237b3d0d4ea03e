"""pybeam.global_: cluster-wide names.

The first tests run on one node; the others on real nodes, each its own OS
process (the fixtures of pybeam.testing.pytest_plugin). The module-level
functions below run on those nodes, which import this module by name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

import pybeam
from pybeam import ANY, BadArg, Pid, global_, receive, rpc, send
from pybeam.testing import LocalCluster, eventually, heal, partition

ClusterFactory = Callable[..., LocalCluster]


# -- run on the cluster nodes (and here) -------------------------------------------------


async def sleeper() -> None:
    await receive(lambda m: False)


async def forwarder(to: Pid) -> None:
    """Sends everything it gets to ``to``, tagged with its own pid."""
    while True:
        send(to, ("forwarded", pybeam.self(), await receive()))


def alive(pid: Pid) -> bool:
    return pybeam.is_alive(pid)


async def spawn_and_register(name: str) -> tuple[Pid, bool]:
    pid = pybeam.spawn(sleeper)
    return pid, await global_.register_name(name, pid)


async def kill_and_register(name: str, holder: Pid) -> tuple[Pid, bool]:
    """Kills ``holder`` (on another node) and, at once, registers a new process as ``name``."""
    pybeam.exit(holder, "kill")
    return await spawn_and_register(name)


async def racer(name: str, report_to: Pid) -> None:
    """Registers itself as ``name`` when told ``"go"``; reports the result."""
    await receive("go")
    ok = await global_.register_name(name, pybeam.self())
    send(report_to, ("raced", name, pybeam.self(), ok))
    await sleeper()


async def register_when_cut_off(name: str, away: list[str], resolve: str | None) -> None:
    """Waits until none of ``away`` is connected (a partition), then registers
    itself as ``name``. Answers ``("report", sender)`` with ``("report", name,
    registered, [every other message it got])``."""
    pybeam.monitor_nodes(True)

    def node_event(m: Any) -> bool:
        return type(m) is tuple and len(m) == 2 and m[0] in ("nodeup", "nodedown")

    while set(away) & set(pybeam.nodes()):
        await receive(node_event, timeout=0.05, default=None)
    ok = await global_.register_name(name, pybeam.self(), resolve)
    inbox: list[Any] = []
    while True:
        match await receive():
            case ("report", Pid() as sender):
                send(sender, ("report", name, ok, inbox))
            case ("nodeup" | "nodedown", _):
                pass
            case msg:
                inbox.append(msg)


def keep_higher_and_notify(name: Any, pid1: Pid, pid2: Pid) -> Pid:
    """A resolver: the pid on the higher node keeps the name; the other one is
    told (it keeps running), with the node the resolver ran on."""
    send(pid1, ("lost_name", name, pid2, pybeam.node_name()))
    return pid2


# -- one node ------------------------------------------------------------------------------


async def test_register_whereis_send_unregister() -> None:
    pid = pybeam.spawn(forwarder, pybeam.self())
    assert global_.whereis_name("a") is None
    assert await global_.register_name("a", pid) is True
    assert global_.whereis_name("a") == pid
    assert global_.registered_names() == ["a"]
    assert global_.send("a", "hi") == pid
    assert await receive(("forwarded", pid, ANY), timeout=5) == ("forwarded", pid, "hi")
    await global_.unregister_name("a")
    assert global_.whereis_name("a") is None
    assert global_.registered_names() == []
    await global_.unregister_name("a")  # a free name: nothing happens


async def test_a_taken_name_is_refused_and_a_pid_may_hold_several() -> None:
    p, q = pybeam.spawn(sleeper), pybeam.spawn(sleeper)
    assert await global_.register_name("a", p)
    assert not await global_.register_name("a", q)
    assert not await global_.register_name("a", p)
    assert await global_.register_name(("b", 1), p)
    assert sorted(map(str, global_.registered_names())) == ["('b', 1)", "a"]
    assert global_.whereis_name(("b", 1)) == p


async def test_send_to_an_unregistered_name_raises_badarg() -> None:
    with pytest.raises(BadArg):
        global_.send("nobody", "hi")


async def test_bad_arguments() -> None:
    pid = pybeam.spawn(sleeper)
    with pytest.raises(BadArg):
        await global_.register_name(["unhashable"], pid)
    with pytest.raises(BadArg):
        await global_.register_name("a", "not a pid")  # type: ignore[arg-type]
    with pytest.raises(BadArg):
        await global_.register_name("a", pid, resolve=lambda n, p, q: p)


async def test_a_dead_pid_is_not_registered_and_a_name_dies_with_its_process() -> None:
    pid = pybeam.spawn(sleeper)
    assert await global_.register_name("a", pid)
    assert await global_.register_name("b", pid)
    pybeam.exit(pid, "kill")
    assert not await global_.register_name("c", pid)
    await asyncio.sleep(0)  # the server handles the DOWN
    assert global_.whereis_name("a") is None
    assert global_.registered_names() == []
    other = pybeam.spawn(sleeper)
    assert await global_.register_name("a", other)


async def test_re_register_name_moves_the_name() -> None:
    p, q = pybeam.spawn(sleeper), pybeam.spawn(sleeper)
    assert await global_.re_register_name("a", p)  # a free name too
    assert await global_.re_register_name("a", q)
    assert global_.whereis_name("a") == q
    assert pybeam.is_alive(p)
    pybeam.exit(p, "kill")
    await asyncio.sleep(0)
    assert global_.whereis_name("a") == q


async def test_local_racers_get_the_name_once() -> None:
    me = pybeam.self()
    racers = [pybeam.spawn(racer, "prize", me) for _ in range(20)]
    for pid in racers:
        send(pid, "go")
    results = [await receive(("raced", "prize", ANY, ANY), timeout=10) for _ in racers]
    winners = [pid for _, _, pid, ok in results if ok]
    assert len(winners) == 1
    assert global_.whereis_name("prize") == winners[0]


async def test_start_and_ensure_started_give_the_one_server() -> None:
    pid = await global_.start()
    assert pybeam.whereis(global_.NAME) == pid
    assert global_.ensure_started() == pid


async def test_a_restarted_server_starts_empty() -> None:
    p = pybeam.spawn(sleeper)
    assert await global_.register_name("a", p)
    pybeam.exit(global_.ensure_started(), "kill")
    assert global_.whereis_name("a") is None  # a new server, which knows nothing
    assert await global_.register_name("a", p)


async def test_resolvers(caplog: pytest.LogCaptureFixture) -> None:
    me = pybeam.self()
    p, q = pybeam.spawn(forwarder, me), pybeam.spawn(forwarder, me)
    global_.notify_all_name("n", p, q)
    assert await receive(("forwarded", p, ANY), timeout=5) == (
        "forwarded",
        p,
        ("global_name_conflict", "n", q),
    )
    assert await receive(("forwarded", q, ANY), timeout=5) == (
        "forwarded",
        q,
        ("global_name_conflict", "n", p),
    )
    # Here both are on one node: the lower pid wins; the loser's end is logged.
    with caplog.at_level(logging.WARNING, logger="pybeam.global"):
        assert global_.lower_node_wins("n", q, p) == p
    assert f"global: Name conflict terminating ('n', {q!r})" in caplog.text
    assert pybeam.is_alive(p) and not pybeam.is_alive(q)


# -- real nodes ------------------------------------------------------------------------------


async def test_register_whereis_send_across_nodes(cluster: ClusterFactory) -> None:
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        pid = await pybeam.spawn_on(n1, forwarder, pybeam.self())
        assert await rpc.call(n2, global_.register_name, "svc", pid) is True
        # Visible everywhere once register_name returned (it waits for every node).
        for node in c.nodes:
            assert await rpc.call(node, global_.whereis_name, "svc") == pid
            assert await rpc.call(node, global_.registered_names) == ["svc"]
        assert global_.whereis_name("svc") == pid  # the manager is a node of the cluster too
        assert await rpc.call(n3, global_.send, "svc", "hello") == pid
        assert await receive(("forwarded", pid, ANY), timeout=5) == ("forwarded", pid, "hello")
        # Taken anywhere means taken.
        other = await pybeam.spawn_on(n3, sleeper)
        assert await rpc.call(n3, global_.register_name, "svc", other) is False
        assert await rpc.call(n2, global_.re_register_name, "svc", other) is True
        for node in c.nodes:
            assert await rpc.call(node, global_.whereis_name, "svc") == other
        await rpc.call(n1, global_.unregister_name, "svc")
        for node in c.nodes:
            assert await rpc.call(node, global_.whereis_name, "svc") is None
        with pytest.raises(rpc.RemoteError, match="BadArg"):
            await rpc.call(n2, global_.send, "svc", "hello")


async def test_a_name_is_freed_when_its_process_ends_or_its_node_dies(cluster: ClusterFactory) -> None:
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        p1, ok = await rpc.call(n1, spawn_and_register, "one")
        assert ok
        _, ok = await rpc.call(n2, spawn_and_register, "two")
        assert ok
        pybeam.exit(p1, "kill")

        async def freed(name: str, nodes: list[str]) -> bool:
            return all([await rpc.call(n, global_.whereis_name, name) is None for n in nodes])

        await eventually(lambda: freed("one", c.nodes), what="'one' freed everywhere")
        c.kill(n2)
        await eventually(lambda: freed("two", [n1, n3]), what="'two' freed when its node died")
        assert global_.whereis_name("two") is None
        # And free for others to take.
        _, ok = await rpc.call(n3, spawn_and_register, "two")
        assert ok


async def test_a_name_is_free_everywhere_once_its_holder_died_on_its_node(cluster: ClusterFactory) -> None:
    # Regression: the other servers' claims on the dead holder (the owner's
    # drop still on its way) refused the registration; the owner's server,
    # locked too, knows the holder is gone (see global_._holders).
    # On real nodes the drop sometimes wins the race anyway: ten rounds.
    async with cluster(3) as c:
        n1, _, n3 = c.nodes
        for round_ in range(10):
            name = f"dead{round_}"
            holder, ok = await rpc.call(n1, spawn_and_register, name)
            assert ok
            for node in c.nodes:  # every node has the claim
                assert await rpc.call(node, global_.whereis_name, name) == holder
            pid, ok = await rpc.call(n3, kill_and_register, name, holder)
            assert ok, f"round {round_}: {name} refused after its holder died"
            for node in c.nodes:
                assert await rpc.call(node, global_.whereis_name, name) == pid


async def test_racing_nodes_never_both_get_a_name(cluster: ClusterFactory) -> None:
    me = pybeam.self()
    async with cluster(3) as c:
        for round_ in range(10):
            name = f"race{round_}"
            racers = [await pybeam.spawn_on(node, racer, name, me) for node in c.nodes]
            for pid in racers:
                send(pid, "go")
            results = [await receive(("raced", name, ANY, ANY), timeout=20) for _ in racers]
            winners = [pid for _, _, pid, ok in results if ok]
            assert len(winners) == 1, results
            for node in c.nodes:
                assert await rpc.call(node, global_.whereis_name, name) == winners[0]


async def test_partition_heal_keeps_the_pid_of_the_lower_node(cluster: ClusterFactory) -> None:
    async with cluster(3) as c:
        n1, n2, n3 = sorted(c.nodes)
        # n2's agent registers "x" and "y" once cut off with n3; on our side
        # (the manager, n1) n1 registers "x"; n3 is on the agents' side.
        away = [n1, pybeam.node_name()]
        agent_x = await pybeam.spawn_on(n2, register_when_cut_off, "x", away, None)
        agent_y = await pybeam.spawn_on(n3, register_when_cut_off, "y", away, None)
        # The manager is cut off too: connected to both sides, it would bridge
        # them (see test_a_node_connected_to_both_sides_bridges_them).
        await partition([n2, n3], keep_manager=False)
        await eventually(lambda: _not_connected({n2, n3}), what="partitioned")
        ours_x, ok = await rpc.call(n1, spawn_and_register, "x")
        assert ok, "the other side's name is not seen during a partition"
        ours_y, ok = await rpc.call(n1, spawn_and_register, "y")
        assert ok
        await heal([n2, n3])

        # "x": n1 sorts before n2, so n1's pid keeps it and n2's agent is killed.
        # "y": n1 sorts before n3 as well; both agents lose.
        await _converged(c.nodes, {"x": ours_x, "y": ours_y})
        await eventually(lambda: _dead(agent_x), what="loser on n2 killed")
        await eventually(lambda: _dead(agent_y), what="loser on n3 killed")
        # The node that resolved the conflicts says whom it killed, as OTP's global does.
        await eventually(lambda: f"Name conflict terminating ('x', {agent_x!r})" in c.logs(n1))
        await eventually(lambda: f"Name conflict terminating ('y', {agent_y!r})" in c.logs(n1))
        assert await rpc.call(n1, alive, ours_x) and await rpc.call(n1, alive, ours_y)


async def test_partition_heal_winner_can_be_on_the_cut_off_side(cluster: ClusterFactory) -> None:
    async with cluster(3) as c:
        n1, n2, n3 = sorted(c.nodes)
        away = [n2, n3, pybeam.node_name()]
        agent = await pybeam.spawn_on(n1, register_when_cut_off, "x", away, None)
        await partition([n1], keep_manager=False)
        await eventually(lambda: _not_connected({n1}), what="partitioned")
        ours, ok = await rpc.call(n3, spawn_and_register, "x")
        assert ok
        await heal([n1])
        await _converged(c.nodes, {"x": agent})
        await eventually(lambda: _dead(ours), what="the pid on n3 is killed")
        assert (await _report(agent))[:2] == ("x", True)


async def test_custom_resolver_runs_on_the_lower_node(cluster: ClusterFactory) -> None:
    resolver = "test_global:keep_higher_and_notify"
    async with cluster(3) as c:
        n1, n2, n3 = sorted(c.nodes)
        away = [n2, n3, pybeam.node_name()]
        agent = await pybeam.spawn_on(n1, register_when_cut_off, "x", away, resolver)
        await partition([n1], keep_manager=False)
        await eventually(lambda: _not_connected({n1}), what="partitioned")
        ours = await pybeam.spawn_on(n2, sleeper)
        assert await rpc.call(n2, global_.register_name, "x", ours, resolver)
        await heal([n1])
        # keep_higher_and_notify: n2's pid keeps the name, n1's agent is told and lives.
        await _converged(c.nodes, {"x": ours})

        async def told() -> bool:
            return bool((await _report(agent))[2])

        await eventually(told, what="the agent is told it lost")
        await asyncio.sleep(0.5)  # room for a second call, which must not come
        name, ok, inbox = await _report(agent)
        assert (name, ok) == ("x", True)
        assert inbox == [("lost_name", "x", ours, n1)]  # called once, on the lower node
        assert await rpc.call(n1, alive, agent)


async def test_a_node_connected_to_both_sides_bridges_them(cluster: ClusterFactory) -> None:
    async with cluster(3) as c:
        n1, n2, _ = sorted(c.nodes)
        agent = await pybeam.spawn_on(n1, register_when_cut_off, "x", [n2], None)
        await partition([n1])  # the manager stays connected to n1 and to the others
        await eventually(lambda: _nodes_of_not(n2, {n1}), what="partitioned")
        _, ours = await rpc.call(n2, spawn_and_register, "x")
        # Both sides lock the manager's server too: one of them wins, not both.
        agent_ok = (await _report(agent))[1]
        assert [agent_ok, ours].count(True) == 1


async def test_servers_start_on_nodes_that_join_later(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        pid, ok = await rpc.call(n1, spawn_and_register, "early")
        assert ok
        n2 = await c.start_node()
        # Nobody called anything on n2: n1's server started n2's and synced it.
        await eventually(lambda: _whereis_is(n2, "early", pid), what="n2 learns 'early'")


# -- helpers ----------------------------------------------------------------------------------------


async def _report(agent: Pid) -> tuple[str, bool, list[Any]]:
    send(agent, ("report", pybeam.self()))
    _, name, ok, inbox = await receive(("report", ANY, ANY, ANY), timeout=5)
    return name, ok, inbox


async def _nodes_of_not(node: str, others: set[str]) -> bool:
    return not others & set(await rpc.call(node, pybeam.nodes))


async def _not_connected(nodes: set[str]) -> bool:
    return not nodes & set(pybeam.nodes())


async def _dead(pid: Pid) -> bool:
    return not await rpc.call(pid.node, alive, pid, timeout=2)


async def _whereis_is(node: str, name: str, pid: Pid | None) -> bool:
    return bool(await rpc.call(node, global_.whereis_name, name) == pid)


async def _converged(nodes: list[str], expected: dict[str, Pid], timeout: float = 15.0) -> None:
    """Wait until every node (the manager too) maps each name as ``expected``."""

    async def check() -> bool:
        for node in [*nodes, pybeam.node_name()]:
            for name, pid in expected.items():
                if not await _whereis_is(node, name, pid):
                    return False
        return True

    try:
        await eventually(check, timeout=timeout, what=f"every node agrees on {expected}")
    except BaseException:
        for node in nodes:
            logging.getLogger(__name__).error(
                "%s: %s", node, {n: await rpc.call(node, global_.whereis_name, n) for n in expected}
            )
        raise

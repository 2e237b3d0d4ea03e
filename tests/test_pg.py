"""pybeam.pg: process groups.

The first tests run on one node; the others on real nodes, each its own OS
process (the fixtures of pybeam.testing.pytest_plugin), ending with a
stateful property test that also covers pybeam.global_. The module-level
functions below run on those nodes, which import this module by name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

import pybeam
from pybeam import ANY, BadArg, Pid, Ref, global_, pg, receive, rpc, send
from pybeam.testing import LocalCluster, eventually, heal, partition, run_in_process

ClusterFactory = Callable[..., LocalCluster]


# -- run on the cluster nodes (and here) -------------------------------------------------


async def sleeper() -> None:
    await receive(lambda m: False)


def members(group: Any, scope: str = "pg") -> list[Pid]:
    return sorted(pg.get_members(group, scope))


async def subscriber(group: Any, scope: str) -> None:
    """Subscribes to ``group`` (or, if None, to the whole scope) and records
    what it hears; answers ``("events", sender)`` with the record."""
    if group is None:
        ref, current = await pg.monitor_scope(scope)
        events: list[Any] = [("now", {g: sorted(p) for g, p in current.items()})]
    else:
        ref, now = await pg.monitor(group, scope)
        events = [("now", sorted(now))]
    while True:
        match await receive():
            case ("events", Pid() as sender):
                send(sender, ("events", list(events)))
            case (Ref() as r, str() as kind, g, list() as pids) if r == ref:
                events.append((kind, g, sorted(pids)))


async def spawn_and_join(group: Any, times: int = 1, scope: str = "pg") -> Pid:
    pid = pybeam.spawn(sleeper)
    await pg.join(group, [pid] * times, scope)
    return pid


async def join_when_cut_off(group: Any, away: list[str]) -> None:
    """Waits until none of ``away`` is connected (a partition), then joins
    ``group``; then just lives."""
    pybeam.monitor_nodes(True)
    while set(away) & set(pybeam.nodes()):
        await receive(
            lambda m: type(m) is tuple and m[0] in ("nodeup", "nodedown"), timeout=0.05, default=None
        )
    await pg.join(group, pybeam.self())
    await sleeper()


def view(
    groups: list[Any], names: list[Any]
) -> tuple[dict[Any, list[Pid]], dict[Any, Pid | None], list[Any]]:
    """This node's view: members of ``groups``, holders of ``names``, and which groups exist."""
    return (
        {g: members(g) for g in groups},
        {n: global_.whereis_name(n) for n in names},
        sorted(g for g in pg.which_groups() if g in groups),
    )


def alive(pid: Pid) -> bool:
    return pybeam.is_alive(pid)


# -- one node ------------------------------------------------------------------------------


async def test_join_leave_get_members() -> None:
    p, q = pybeam.spawn(sleeper), pybeam.spawn(sleeper)
    assert pg.get_members("g") == []
    assert await pg.join("g", p) == "ok"
    assert await pg.join("g", [q, p]) == "ok"
    assert await pg.join(("h", 1), q) == "ok"
    assert sorted(pg.get_members("g")) == sorted([p, p, q])
    assert sorted(pg.get_local_members("g")) == sorted([p, p, q])
    assert sorted(map(str, pg.which_groups())) == ["('h', 1)", "g"]
    assert sorted(map(str, pg.which_local_groups())) == ["('h', 1)", "g"]
    # Joined twice: leaves twice.
    assert await pg.leave("g", p) == "ok"
    assert sorted(pg.get_members("g")) == sorted([p, q])
    assert await pg.leave("g", [p, q]) == "ok"
    assert pg.get_members("g") == []
    assert pg.which_groups() == [("h", 1)]
    assert await pg.leave("g", p) == "not_joined"
    assert await pg.leave("g", [p, q]) == "not_joined"
    assert await pg.join("g", []) == "ok"
    assert pg.get_members("g") == []


async def test_bad_arguments() -> None:
    p = pybeam.spawn(sleeper)
    remote = Pid("elsewhere@127.0.0.1", 1, 1)
    with pytest.raises(BadArg):
        await pg.join("g", remote)
    with pytest.raises(BadArg):
        await pg.join("g", [p, remote])
    with pytest.raises(BadArg):
        await pg.leave("g", remote)
    with pytest.raises(BadArg):
        await pg.join("g", "not a pid")  # type: ignore[arg-type]
    with pytest.raises(BadArg):
        await pg.join(["unhashable"], p)
    assert pg.get_members("g") == []


async def test_a_member_that_ends_leaves_every_group() -> None:
    p, q = pybeam.spawn(sleeper), pybeam.spawn(sleeper)
    await pg.join("g", [p, p, q])
    await pg.join("h", p)
    pybeam.exit(p, "kill")
    await asyncio.sleep(0)  # the scope process handles the DOWN
    assert pg.get_members("g") == [q]
    assert pg.get_members("h") == []
    assert pg.which_groups() == ["g"]


async def test_monitor_and_monitor_scope_report_joins_and_leaves() -> None:
    p, q = pybeam.spawn(sleeper), pybeam.spawn(sleeper)
    await pg.join("g", p)
    ref, now = await pg.monitor("g")
    assert now == [p]
    sref, groups = await pg.monitor_scope()
    assert groups == {"g": [p]}
    await pg.join("g", [q, q])
    await pg.join("other", q)
    await pg.leave("g", q)
    pybeam.exit(p, "kill")
    expected_g = [("join", "g", [q, q]), ("leave", "g", [q]), ("leave", "g", [p])]
    for kind, group, pids in expected_g:
        assert await receive((ref, ANY, ANY, ANY), timeout=5) == (ref, kind, group, pids)
    scope_events = [("join", "g", [q, q]), ("join", "other", [q]), *expected_g[1:]]
    for kind, group, pids in scope_events:
        assert await receive((sref, ANY, ANY, ANY), timeout=5) == (sref, kind, group, pids)
    # demonitor also drops what is already in the mailbox.
    await pg.join("g", q)
    await asyncio.sleep(0)
    assert await pg.demonitor(ref) is True
    assert await pg.demonitor(ref) is False
    assert await receive((ref, ANY, ANY, ANY), timeout=0, default=None) is None
    assert await pg.demonitor(sref) is True
    await pg.join("g", q)
    assert await receive((sref, ANY, ANY, ANY), timeout=0.05, default=None) is None


async def test_scopes_are_independent() -> None:
    p = pybeam.spawn(sleeper)
    await pg.join("g", p, scope="other")
    assert pg.get_members("g", "other") == [p]
    assert pg.get_members("g") == []
    assert pybeam.whereis("other") == pg.ensure_started("other")
    assert await pg.start("other") == pg.ensure_started("other")


async def test_a_scope_name_taken_by_another_process_is_refused() -> None:
    pybeam.register("taken", pybeam.spawn(sleeper))
    with pytest.raises(BadArg):
        pg.get_members("g", "taken")
    with pytest.raises(BadArg):
        pg.ensure_started("")


# -- real nodes ------------------------------------------------------------------------------


async def _views_equal(nodes: list[str], group: Any, expected: list[Pid], scope: str = "pg") -> bool:
    want = sorted(expected)
    for node in nodes:
        if await rpc.call(node, members, group, scope) != want:
            return False
    return members(group, scope) == want


async def test_join_leave_across_nodes_with_duplicates(cluster: ClusterFactory) -> None:
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        a = await rpc.call(n1, spawn_and_join, "g", 2)
        b = await rpc.call(n2, spawn_and_join, "g")
        await eventually(lambda: _views_equal(c.nodes, "g", [a, a, b]), what="every node sees a, a, b")
        assert await rpc.call(n1, pg.get_local_members, "g") == [a, a]
        assert await rpc.call(n3, pg.get_local_members, "g") == []
        assert await rpc.call(n3, pg.which_groups) == ["g"]
        assert await rpc.call(n1, pg.leave, "g", a) == "ok"
        await eventually(lambda: _views_equal(c.nodes, "g", [a, b]), what="a left once")
        assert await rpc.call(n2, pg.leave, "g", [b]) == "ok"
        assert await rpc.call(n2, pg.leave, "g", [b]) == "not_joined"
        await eventually(lambda: _views_equal(c.nodes, "g", [a]), what="b left")
        # Only local processes may join.
        with pytest.raises(rpc.RemoteError, match="BadArg"):
            await rpc.call(n3, pg.join, "g", a)
        with pytest.raises(BadArg):
            await pg.join("g", a)
        # Another scope, started on demand, spreads to every node as well.
        s = await rpc.call(n3, spawn_and_join, "g", 1, "elsewhere")
        await eventually(lambda: _views_equal(c.nodes, "g", [s], "elsewhere"), what="scope 'elsewhere'")
        assert await _views_equal(c.nodes, "g", [a])


async def test_dead_members_and_dead_nodes_are_dropped(cluster: ClusterFactory) -> None:
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        a = await rpc.call(n1, spawn_and_join, "g")
        b = await rpc.call(n2, spawn_and_join, "g", 2)
        d = await rpc.call(n3, spawn_and_join, "g")
        await eventually(lambda: _views_equal(c.nodes, "g", [a, b, b, d]))
        pybeam.exit(a, "kill")
        await eventually(lambda: _views_equal(c.nodes, "g", [b, b, d]), what="a's death seen everywhere")
        c.kill(n2)
        await eventually(lambda: _views_equal([n1, n3], "g", [d]), what="n2's members dropped")


async def test_notifications_across_nodes(cluster: ClusterFactory) -> None:
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        sub = await pybeam.spawn_on(n3, subscriber, "g", "pg")
        scope_sub = await pybeam.spawn_on(n3, subscriber, None, "pg")
        a = await rpc.call(n1, spawn_and_join, "g", 2)
        b = await rpc.call(n2, spawn_and_join, "h")
        await eventually(lambda: _views_equal(c.nodes, "g", [a, a]))
        await eventually(lambda: _views_equal(c.nodes, "h", [b]))
        await rpc.call(n1, pg.leave, "g", a)
        pybeam.exit(a, "kill")
        c.kill(n2)
        g_events = [("now", []), ("join", "g", [a, a]), ("leave", "g", [a]), ("leave", "g", [a])]
        await eventually(lambda: _heard(sub, len(g_events)), what="the group subscriber hears 3 changes")
        assert await _events(sub) == g_events
        # The scope subscriber hears both groups: each node's changes in order.
        await eventually(lambda: _heard(scope_sub, 6), what="the scope subscriber hears 5 changes")
        events = await _events(scope_sub)
        assert events[0] == ("now", {})
        assert [e for e in events[1:] if e[1] == "g"] == g_events[1:]
        assert [e for e in events[1:] if e[1] == "h"] == [("join", "h", [b]), ("leave", "h", [b])]


async def _events(subscriber: Pid) -> list[Any]:
    send(subscriber, ("events", pybeam.self()))
    _, events = await receive(("events", ANY), timeout=5)
    return events  # type: ignore[no-any-return]


async def _heard(subscriber: Pid, count: int) -> bool:
    return len(await _events(subscriber)) >= count


async def test_members_resync_after_a_partition_heals(cluster: ClusterFactory) -> None:
    me = pybeam.node_name()
    async with cluster(3) as c:
        n1, n2, n3 = c.nodes
        a = await rpc.call(n1, spawn_and_join, "g")
        b = await rpc.call(n2, spawn_and_join, "g")
        late = await pybeam.spawn_on(n1, join_when_cut_off, "g", [n2, n3, me])
        await eventually(lambda: _views_equal(c.nodes, "g", [a, b]))
        await partition([n1], keep_manager=False)
        # Our side (the manager, n2, n3) drops n1's members and carries on.
        await eventually(lambda: _views_equal([n2, n3], "g", [b]), what="n1's members dropped")
        d = await rpc.call(n3, spawn_and_join, "g")
        pybeam.exit(b, "kill")
        await eventually(lambda: _views_equal([n2, n3], "g", [d]))
        await heal([n1])
        # n1 saw b leave (nodedown) and never saw d; after the sync every
        # node sees the live members: a, late (joined during the partition), d.
        await eventually(
            lambda: _views_equal(c.nodes, "g", [a, late, d]), timeout=15, what="views after heal"
        )


# -- a stateful property test on a small cluster ------------------------------------------------------


class _Model:
    """What the cluster should hold, from the operations made on it."""

    def __init__(self) -> None:
        #: live processes we made -> their node
        self.procs: dict[Pid, str] = {}
        #: pg: live member -> its groups (once per join)
        self.groups_of: dict[Pid, list[str]] = {}
        #: global: name -> the live pids that registered it and still should hold it
        self.holders: dict[str, set[Pid]] = {}

    def members(self, group: str) -> list[Pid]:
        return sorted(p for p, gs in self.groups_of.items() for g in gs if g == group)

    def holder(self, name: str) -> Pid | None:
        pids = self.holders.get(name)
        return min(pids) if pids else None

    def forget(self, pid: Pid) -> None:
        self.procs.pop(pid, None)
        self.groups_of.pop(pid, None)
        for pids in self.holders.values():
            pids.discard(pid)


def _cluster_machine(loop: asyncio.AbstractEventLoop, manager: pybeam.Node, nodes: list[str]) -> type:
    """A state machine class driving ``nodes`` from a thread, on ``loop``."""

    def run(fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float = 60.0) -> Any:
        future = asyncio.run_coroutine_threadsafe(run_in_process(fn, *args, node=manager), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    class ClusterMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            tag = secrets.token_hex(2)
            self.groups = [f"g{tag}{i}" for i in range(3)]
            self.names = [f"n{tag}{i}" for i in range(2)]
            self.model = _Model()
            self.cut: list[str] = []  # the nodes of the partition in force (the manager may be one)

        # -- where we can act ------------------------------------------------------------

        def reachable(self) -> list[str]:
            if not self.cut:
                return list(nodes)
            if manager.name in self.cut:
                return [n for n in nodes if n in self.cut]
            return [n for n in nodes if n not in self.cut]

        def reachable_procs(self, pids: Any) -> list[Pid]:
            here = set(self.reachable())
            return sorted(p for p in pids if self.model.procs[p] in here)

        # -- rules -------------------------------------------------------------------------

        @initialize(data=st.data())
        def seed(self, data: st.DataObject) -> None:
            # Every name held and a member on every node: so that what a side
            # does during a partition meets something when it heals.
            for node in nodes:
                pid = run(rpc.call, node, spawn_and_join, self.groups[0], 1)
                self.model.procs[pid] = node
                self.model.groups_of[pid] = [self.groups[0]]
            for name in self.names:
                node = data.draw(st.sampled_from(nodes), label=f"holder of {name}")
                pid = run(pybeam.spawn_on, node, sleeper)
                self.model.procs[pid] = node
                assert run(rpc.call, node, global_.register_name, name, pid)
                self.model.holders[name] = {pid}

        @rule(data=st.data())
        def join(self, data: st.DataObject) -> None:
            node = data.draw(st.sampled_from(self.reachable()), label="node")
            group = data.draw(st.sampled_from(self.groups), label="group")
            known = [p for p in self.reachable_procs(self.model.groups_of) if self.model.procs[p] == node]
            times = data.draw(st.integers(1, 2), label="times")
            reuse: bool = data.draw(st.booleans(), label="existing member")
            if known and reuse:
                pid = data.draw(st.sampled_from(known), label="member")
                assert run(rpc.call, node, pg.join, group, [pid] * times) == "ok"
            else:
                pid = run(rpc.call, node, spawn_and_join, group, times)
                self.model.procs[pid] = node
                self.model.groups_of[pid] = []
            self.model.groups_of[pid] += [group] * times

        @precondition(lambda self: any(self.model.groups_of.values()))
        @rule(data=st.data())
        def leave(self, data: st.DataObject) -> None:
            candidates = [p for p in self.reachable_procs(self.model.groups_of) if self.model.groups_of[p]]
            if not candidates:
                return
            pid = data.draw(st.sampled_from(candidates), label="member")
            group = data.draw(st.sampled_from(sorted(set(self.model.groups_of[pid]))), label="group")
            assert run(rpc.call, pid.node, pg.leave, group, pid) == "ok"
            self.model.groups_of[pid].remove(group)

        @precondition(lambda self: bool(self.model.procs))
        @rule(data=st.data())
        def kill(self, data: st.DataObject) -> None:
            candidates = self.reachable_procs(self.model.procs)
            if not candidates:
                return
            pid = data.draw(st.sampled_from(candidates), label="victim")
            run(_kill, pid)
            self.model.forget(pid)

        @rule(data=st.data())
        def register(self, data: st.DataObject) -> None:
            node = data.draw(st.sampled_from(self.reachable()), label="node")
            name = data.draw(st.sampled_from(self.names), label="name")
            pid = run(pybeam.spawn_on, node, sleeper)
            self.model.procs[pid] = node
            if run(rpc.call, node, global_.register_name, name, pid):
                # Never two holders on one side of a partition.
                rivals = self.reachable_procs(self.model.holders.get(name, ()))
                assert not rivals, f"{name} given to {pid} while {rivals} hold it"
                self.model.holders.setdefault(name, set()).add(pid)

        def held_elsewhere(self) -> list[str]:
            """Names held only on the far side of the partition in force."""
            return [
                n
                for n in self.names
                if self.model.holders.get(n) and not self.reachable_procs(self.model.holders[n])
            ]

        @precondition(lambda self: bool(self.cut and self.held_elsewhere()))
        @rule(data=st.data())
        def register_held_elsewhere(self, data: st.DataObject) -> None:
            # The split-brain case: this side cannot see the holder, so it
            # gives the name again; the heal must settle it.
            node = data.draw(st.sampled_from(self.reachable()), label="node")
            name = data.draw(st.sampled_from(self.held_elsewhere()), label="name")
            pid = run(pybeam.spawn_on, node, sleeper)
            self.model.procs[pid] = node
            assert run(rpc.call, node, global_.register_name, name, pid)
            self.model.holders[name].add(pid)

        @rule(data=st.data())
        def unregister(self, data: st.DataObject) -> None:
            node = data.draw(st.sampled_from(self.reachable()), label="node")
            name = data.draw(st.sampled_from(self.names), label="name")
            run(rpc.call, node, global_.unregister_name, name)
            for pid in self.reachable_procs(self.model.holders.get(name, ())):
                self.model.holders[name].discard(pid)

        @precondition(lambda self: not self.cut)
        @rule(data=st.data())
        def split(self, data: st.DataObject) -> None:
            group = data.draw(
                st.lists(st.sampled_from(nodes), min_size=1, max_size=len(nodes) - 1, unique=True)
            )
            if data.draw(st.booleans(), label="manager inside"):
                group.append(manager.name)
            self.cut = group
            run(_partition, group, nodes)

        @precondition(lambda self: bool(self.cut))
        @rule()
        def heal(self) -> None:
            self.heal_and_check()

        def heal_and_check(self) -> None:
            if self.cut:
                run(_heal, self.cut, nodes)
                self.cut = []
            # The heal's conflicts: the pid on the lowest node keeps each name.
            losers = []
            for pids in self.model.holders.values():
                for loser in sorted(pids)[1:]:
                    losers.append(loser)
                    self.model.forget(loser)
            expected = (
                {g: self.model.members(g) for g in self.groups},
                {n: self.model.holder(n) for n in self.names},
                sorted(g for g in self.groups if self.model.members(g)),
            )
            run(_converge, [*nodes, manager.name], self.groups, self.names, expected, losers)

        def teardown(self) -> None:
            try:
                self.heal_and_check()
            finally:
                for pid in list(self.model.procs):
                    run(_kill, pid)

    return ClusterMachine


async def _kill(pid: Pid) -> None:
    pybeam.exit(pid, "kill")


async def _partition(group: list[str], nodes: list[str]) -> None:
    # The manager is cut off too, or it would bridge the two sides.
    await partition(group, keep_manager=False)
    me = pybeam.node_name()
    inside = set(group) if me in group else set(nodes) - set(group) | {me}
    outside = (set(nodes) | {me}) - inside

    async def split() -> bool:
        for node in inside:
            seen = set(pybeam.nodes()) if node == me else set(await rpc.call(node, pybeam.nodes))
            if seen & outside:
                return False
        return True

    await eventually(split, what=f"partition {group}")


async def _heal(group: list[str], nodes: list[str]) -> None:
    await heal(group)
    everyone = {*nodes, pybeam.node_name()}

    async def mesh() -> bool:
        for node in nodes:
            if not everyone - {node} <= set(await rpc.call(node, pybeam.nodes)):
                return False
        return everyone - {pybeam.node_name()} <= set(pybeam.nodes())

    await eventually(mesh, timeout=20, what="full mesh after heal")


async def _converge(
    nodes: list[str], groups: list[str], names: list[str], expected: Any, losers: list[Pid]
) -> None:
    last: dict[str, Any] = {}

    async def agreed() -> bool:
        ok = True
        for node in nodes:
            got = (
                view(groups, names)
                if node == pybeam.node_name()
                else await rpc.call(node, view, groups, names)
            )
            last[node] = got
            ok = ok and tuple(got) == tuple(expected)
        return ok

    try:
        await eventually(agreed, timeout=20, what="every node's view equals the live members and holders")
    except BaseException:
        raise AssertionError(f"expected {expected}, views: {last}") from None
    for pid in losers:

        async def dead(pid: Pid = pid) -> bool:
            return not await rpc.call(pid.node, alive, pid)

        await eventually(dead, what=f"{pid} lost a name conflict and is killed")


async def test_stateful_groups_and_names_under_partitions(
    cluster: ClusterFactory, beam_node: pybeam.Node
) -> None:
    async with cluster(3) as c:
        machine = _cluster_machine(asyncio.get_running_loop(), beam_node, sorted(c.nodes))
        config = settings(
            max_examples=10,
            stateful_step_count=15,
            deadline=None,
            database=None,
            phases=(Phase.explicit, Phase.generate),
            suppress_health_check=list(HealthCheck),
        )
        await asyncio.to_thread(run_state_machine_as_test, machine, settings=config)


def test_model_counts_duplicates() -> None:
    model = _Model()
    pid = Pid("a@b", 1, 1)
    model.procs[pid] = "a@b"
    model.groups_of[pid] = ["g", "g", "h"]
    assert Counter(model.members("g")) == Counter({pid: 2})
    model.forget(pid)
    assert model.members("g") == []

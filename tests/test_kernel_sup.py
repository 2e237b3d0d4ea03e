"""pybeam.kernel_sup: global and pg as GenServers under the kernel supervisor
every node starts, restarted when they crash, rebuilding their view from the
cluster as OTP's do.

The first tests run on one node; the others on real nodes, each its own OS
process (the fixtures of pybeam.testing.pytest_plugin). The module-level
functions below run on those nodes, which import this module by name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import pybeam
from pybeam import ANY, BadArg, GenServer, Pid, gen_server, global_, kernel_sup, pg, receive, rpc, supervisor
from pybeam.testing import LocalCluster, eventually

ClusterFactory = Callable[..., LocalCluster]
SERVICES = [global_.NAME, pg.DEFAULT_SCOPE]


# -- run on the cluster nodes (and here) -------------------------------------------------


async def sleeper() -> None:
    await receive(lambda m: False)


def alive(pid: Pid) -> bool:
    return pybeam.is_alive(pid)


async def children() -> dict[Any, Pid | None]:
    """The kernel supervisor's children: id -> pid."""
    return {c.id: c.pid for c in await supervisor.which_children(kernel_sup.NAME)}


def kill(name: str) -> Pid:
    """Kill the process registered as ``name``; returns its pid."""
    pid = pybeam.whereis(name)
    assert pid is not None, name
    pybeam.exit(pid, "kill")
    return pid


async def restarted(name: str, old: Pid) -> bool:
    """The kernel supervisor runs a new ``name``, and it is the registered one."""
    pid = (await children()).get(name)
    return pid is not None and pid != old and pybeam.whereis(name) == pid and pybeam.is_alive(pid)


async def spawn_and_join(group: Any) -> Pid:
    pid = pybeam.spawn(sleeper)
    await pg.join(group, pid)
    return pid


async def join(group: Any, pid: Pid) -> str:
    return await pg.join(group, pid)


def members(group: Any) -> list[Pid]:
    return sorted(pg.get_members(group))


async def spawn_and_register(name: Any) -> tuple[Pid, bool]:
    pid = pybeam.spawn(sleeper)
    return pid, await global_.register_name(name, pid)


async def _same_everywhere(nodes: list[str], fn: Callable[..., Any], arg: Any, want: Any) -> bool:
    for node in nodes:
        if await rpc.call(node, fn, arg) != want:
            return False
    return bool(fn(arg) == want)  # the manager is a node of the cluster too


# -- one node ------------------------------------------------------------------------------


async def test_every_started_node_runs_global_and_pg_under_kernel_sup() -> None:
    async with pybeam.Node("kern@localhost", distributed=False) as node:
        # Running as soon as start returned.
        sup = pybeam.whereis(kernel_sup.NAME)
        assert sup is not None and node.kernel is not None
        assert [c.id for c in await supervisor.which_children(sup)] == SERVICES
        kids = await children()
        for name in SERVICES:
            pid = kids[name]
            assert pid is not None and pybeam.whereis(name) == pid
            info = pybeam.process_info(pid)
            assert info is not None and sup in info["links"]
        assert global_.ensure_started() == kids[global_.NAME]
        assert pg.ensure_started() == kids[pg.DEFAULT_SCOPE]
    assert node.processes() == []


async def test_the_default_node_starts_its_kernel_on_first_use() -> None:
    assert pg.get_members("g") == []  # the first use: the scope runs at once
    scope = pybeam.whereis(pg.DEFAULT_SCOPE)
    await eventually(lambda: pybeam.whereis(kernel_sup.NAME) is not None, what="kernel_sup started")
    # The scope started on demand was taken over, not started twice.
    assert (await children())[pg.DEFAULT_SCOPE] == scope
    assert [c.id for c in await supervisor.which_children(kernel_sup.NAME)] == SERVICES


async def test_a_killed_scope_is_restarted_and_its_local_members_are_lost() -> None:
    global_.ensure_started()
    await eventually(lambda: pybeam.whereis(kernel_sup.NAME) is not None)
    p = pybeam.spawn(sleeper)
    await pg.join("g", p)
    ref, _ = await pg.monitor("g")
    old = kill(pg.DEFAULT_SCOPE)
    await eventually(lambda: restarted(pg.DEFAULT_SCOPE, old), what="pg restarted")
    # As OTP: the memberships were the dead scope's; the member lives on.
    assert pg.get_members("g") == [] and pg.which_groups() == []
    assert pybeam.is_alive(p)
    assert await pg.leave("g", p) == "not_joined"
    await pg.join("g", p)
    assert pg.get_members("g") == [p]
    # A subscription ends with the scope that held it.
    assert await receive((ref, ANY, ANY, ANY), timeout=0.1, default=None) is None


async def test_a_killed_global_is_restarted_and_its_local_names_are_lost() -> None:
    p = pybeam.spawn(sleeper)
    assert await global_.register_name("svc", p)
    old = kill(global_.NAME)
    await eventually(lambda: restarted(global_.NAME, old), what="global restarted")
    assert global_.whereis_name("svc") is None
    assert pybeam.is_alive(p)
    assert await global_.register_name("svc", p)
    assert global_.whereis_name("svc") == p


async def test_global_survives_an_unexpected_call(caplog: pytest.LogCaptureFixture) -> None:
    # As OTP's: a warning and no answer, not a crash that would cost the node's names.
    p = pybeam.spawn(sleeper)
    assert await global_.register_name("kept", p)
    server = global_.ensure_started()
    with caplog.at_level(logging.WARNING, logger="pybeam.global"), pytest.raises(gen_server.CallTimeout):
        await gen_server.call(global_.NAME, "junk", timeout=0.2)
    assert "received an unexpected call: 'junk'" in caplog.text
    assert global_.ensure_started() == server
    assert global_.whereis_name("kept") == p


async def test_a_read_right_after_a_crash_gets_the_server_its_supervisor_takes_over() -> None:
    global_.ensure_started()
    await eventually(lambda: pybeam.whereis(kernel_sup.NAME) is not None)
    old = kill(global_.NAME)
    # Before the supervisor has seen the EXIT: the name is never free.
    assert global_.whereis_name("anything") is None
    now = pybeam.whereis(global_.NAME)
    assert now is not None and now != old
    await eventually(lambda: restarted(global_.NAME, old))
    assert pybeam.whereis(global_.NAME) == now  # the same one: taken over, not doubled


async def test_another_scope_joins_the_kernel_supervisor_and_is_restarted() -> None:
    p = pybeam.spawn(sleeper)
    await pg.join("g", p, scope="other")
    scope = pybeam.whereis("other")
    assert scope is not None

    async def supervised() -> bool:
        return (await children()).get("other") == scope

    await eventually(supervised, what="'other' supervised")
    kill("other")
    await eventually(lambda: restarted("other", scope), what="'other' restarted")
    assert pg.get_members("g", "other") == []


async def test_a_kernel_sup_past_its_intensity_exits_and_the_node_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    global_.ensure_started()
    await eventually(lambda: pybeam.whereis(kernel_sup.NAME) is not None)
    sup = pybeam.whereis(kernel_sup.NAME)
    assert sup is not None
    ref = pybeam.monitor(sup)
    with caplog.at_level(logging.ERROR, logger="pybeam"):
        for _ in range(kernel_sup.MAX_RESTARTS):
            old = kill(pg.DEFAULT_SCOPE)
            await eventually(lambda old=old: restarted(pg.DEFAULT_SCOPE, old))  # type: ignore[misc]
        kill(pg.DEFAULT_SCOPE)
        assert await receive(("DOWN", ref, "process", sup, "shutdown"), timeout=10)
        await eventually(lambda: "the kernel supervisor exited" in caplog.text)
    # Unsupervised from now on, but served.
    p = pybeam.spawn(sleeper)
    await pg.join("g", p)
    assert pg.get_members("g") == [p]
    assert await global_.register_name("n", p)


# -- shutdown order ---------------------------------------------------------------------------

EVENTS: list[Any] = []


class Member(GenServer):
    """Joins "g" when it starts; leaves it in terminate, which needs the scope."""

    async def init(self, arg: Any) -> Any:
        pybeam.trap_exit(True)
        await pg.join("g", pybeam.self())
        assert await global_.register_name("member", pybeam.self())
        return arg

    async def terminate(self, reason: Any, state: Any) -> None:
        EVENTS.append(("leave", await pg.leave("g", pybeam.self())))
        EVENTS.append(("whereis", global_.whereis_name("member") == pybeam.self()))


async def start_member_app() -> Pid:
    return await supervisor.start_link([Member.child_spec(None)])


async def test_node_stop_stops_the_kernel_after_the_applications() -> None:
    EVENTS.clear()
    node = pybeam.Node()
    await node.start()
    try:
        await pybeam.application.start(start_member_app, node=node)
    finally:
        await node.stop()
    # The application stopped while pg and global still ran: its member was
    # still joined and still registered.
    assert EVENTS == [("leave", "ok"), ("whereis", True)]
    assert node.processes() == []


# -- gen_server.enter_loop -----------------------------------------------------------------------


class Counter(GenServer):
    def handle_call(self, request: Any, from_: Any, n: int) -> Any:
        return ("reply", n, n)

    def handle_cast(self, request: Any, n: int) -> Any:
        return ("noreply", n + request)


async def counter_process(start: int) -> None:
    await gen_server.enter_loop(Counter(), start)


async def test_enter_loop_makes_a_process_a_server() -> None:
    pid = pybeam.spawn(counter_process, 40)
    pybeam.register("counter", pid)
    gen_server.cast("counter", 2)
    assert await gen_server.call("counter", "get") == 42
    await gen_server.stop(pid)
    assert not pybeam.is_alive(pid)
    with pytest.raises(BadArg):
        await gen_server.enter_loop(object(), 0)  # type: ignore[arg-type]


# -- real nodes ------------------------------------------------------------------------------


async def test_a_killed_scope_on_one_node_resyncs_with_the_cluster(cluster: ClusterFactory) -> None:
    async with cluster(2) as c:
        a, b = c.nodes
        pa = await rpc.call(a, spawn_and_join, "g")
        pb = await rpc.call(b, spawn_and_join, "g")
        both = sorted([pa, pb])
        await eventually(lambda: _same_everywhere([a, b], members, "g", both), what="both joined")
        old = await rpc.call(b, kill, pg.DEFAULT_SCOPE)
        await eventually(lambda: rpc.call(b, restarted, pg.DEFAULT_SCOPE, old), what="b's pg restarted")
        # b gets a's members back from a; b's own were the dead scope's, so
        # every node drops them (as OTP), while pb lives on.
        await eventually(lambda: _same_everywhere([a, b], members, "g", [pa]), what="resynced")
        assert await rpc.call(b, alive, pb)
        # b's new scope serves b: a join there reaches every node.
        await rpc.call(b, join, "g", pb)
        await eventually(lambda: _same_everywhere([a, b], members, "g", both), what="pb joined again")
        # And the other way round: a's scope dies; b keeps its member and gets a's new ones.
        old = await rpc.call(a, kill, pg.DEFAULT_SCOPE)
        await eventually(lambda: rpc.call(a, restarted, pg.DEFAULT_SCOPE, old), what="a's pg restarted")
        await eventually(lambda: _same_everywhere([a, b], members, "g", [pb]), what="a's members dropped")
        await rpc.call(a, join, "g", pa)
        await eventually(lambda: _same_everywhere([a, b], members, "g", both), what="pa joined again")


async def test_a_killed_global_on_one_node_resyncs_with_the_cluster(cluster: ClusterFactory) -> None:
    async with cluster(2) as c:
        a, b = c.nodes
        pa, ok = await rpc.call(a, spawn_and_register, "on_a")
        assert ok
        pb, ok = await rpc.call(b, spawn_and_register, "on_b")
        assert ok
        old = await rpc.call(b, kill, global_.NAME)
        await eventually(lambda: rpc.call(b, restarted, global_.NAME, old), what="b's global restarted")
        # b learns a's names again; b's names died with its server, everywhere.
        await eventually(lambda: _same_everywhere([a, b], global_.whereis_name, "on_a", pa), what="on_a")
        await eventually(lambda: _same_everywhere([a, b], global_.whereis_name, "on_b", None), what="on_b")
        assert await rpc.call(b, alive, pb)
        # Names are still one per cluster: b cannot take a's, and gets its own back.
        assert await rpc.call(b, global_.register_name, "on_a", pb) is False
        assert await rpc.call(b, global_.register_name, "on_b", pb) is True
        for node in (a, b):
            assert await rpc.call(node, global_.whereis_name, "on_b") == pb
        assert global_.whereis_name("on_b") == pb

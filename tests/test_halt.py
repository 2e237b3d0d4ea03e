"""Node.halt, as erlang:halt/0: every process ends at once with ``killed`` (no
application shutdown, no ``shutdown``; other nodes are sent nothing, and get
``noconnection``), then the distribution closes and the node unregisters from
the port mapper. Real nodes: the cluster's are OS
processes, and the halted node of the in-process tests talks to them over TCP.

Needs the fixtures of pybeam.testing.pytest_plugin (beam_node, cluster). The
module-level functions below run on the cluster nodes.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import pybeam
from pybeam import ANY, application, supervisor
from pybeam.gen_server import GenServer
from pybeam.testing import LocalCluster, eventually

# -- run on the cluster nodes ---------------------------------------------------------------


async def watch(target: pybeam.Pid, report: pybeam.Pid) -> None:
    """Link to ``target`` (trapping exits) and monitor it; send ``report``
    the exit and the DOWN that come of it."""
    pybeam.trap_exit(True)
    pybeam.link(target)
    pybeam.monitor(target)
    # Behind the link and the monitor on the way to target: once it answers,
    # both are in place there.
    pybeam.send(target, ("ping", pybeam.self()))
    await pybeam.receive("pong", timeout=30)
    pybeam.send(report, ("watching", pybeam.self()))
    while True:
        match await pybeam.receive():
            case ("EXIT", pid, reason) if pid == target:
                pybeam.send(report, ("exit", pid, reason))
            case ("DOWN", _, "process", pid, reason) if pid == target:
                pybeam.send(report, ("down", pid, reason))


async def trapper(name: str) -> None:
    """Registered as ``name``, trapping exits: under a stop it would get
    ``shutdown``; under a halt it is killed."""
    pybeam.trap_exit(True)
    pybeam.register(name)
    while True:
        match await pybeam.receive():
            case ("ping", pybeam.Pid() as sender):
                pybeam.send(sender, "pong")


async def halt_when_told() -> None:
    """Halt this node when told to."""
    await pybeam.receive("halt")
    pybeam.current_node().halt()
    await pybeam.receive()


# -- helpers ------------------------------------------------------------------------------------


async def watched_from(other: str, target: pybeam.Pid) -> pybeam.Pid:
    """A watcher (see :func:`watch`) of ``target`` on node ``other``, reporting here."""
    await pybeam.spawn_on(other, watch, target, pybeam.self())
    _, watcher = await pybeam.receive(("watching", ANY), timeout=30)
    return watcher  # type: ignore[no-any-return]


async def saw_noconnection(target: pybeam.Pid) -> None:
    """The watcher of ``target`` on another node saw its link's exit and its
    DOWN, both ``noconnection``: a halt sends other nodes nothing."""
    got = {await pybeam.receive((ANY, target, ANY), timeout=30) for _ in range(2)}
    assert got == {("exit", target, "noconnection"), ("down", target, "noconnection")}, got


# -- the tests ------------------------------------------------------------------------------------


async def test_a_halt_from_one_of_its_processes_ends_a_real_node_and_other_nodes_see_noconnection(
    beam_node: pybeam.Node, cluster: Callable[..., LocalCluster]
) -> None:
    async with cluster(2) as c:
        halted, other = c.nodes
        target = await pybeam.spawn_on(halted, trapper, "halt_trapper")
        await eventually(lambda: pybeam.rpc.call(halted, "pybeam.kernel:whereis", "halt_trapper"))
        await watched_from(other, target)
        ref = pybeam.monitor(target)
        halter, halter_ref = await pybeam.spawn_on(halted, halt_when_told, monitor=True)
        pybeam.monitor_nodes(True)

        pybeam.send(halter, "halt")

        # The links and monitors on the other nodes get noconnection, as
        # from BEAM's halt: neither shutdown (a stop) nor killed (no exit
        # signal leaves a halting node).
        await saw_noconnection(target)
        assert await pybeam.receive(("DOWN", ref, ANY, ANY, ANY), timeout=30) == (
            "DOWN",
            ref,
            "process",
            target,
            "noconnection",
        )
        assert await pybeam.receive(("DOWN", halter_ref, ANY, ANY, ANY), timeout=30) == (
            "DOWN",
            halter_ref,
            "process",
            halter,
            "noconnection",
        )
        await pybeam.receive(("nodedown", halted), timeout=30)
        # The node stopped: its OS process (pybeam node waits for that) exits.
        await eventually(lambda: not c.alive(halted), 30, what="the halted node's process exits")
        assert c.processes[halted].returncode == 0, c.logs(halted)
        # Its name is free at the port mapper: a new incarnation registers it.
        await c.restart_node(halted)
        assert await pybeam.rpc.call(halted, "pybeam.kernel:whereis", "halt_trapper") is None


async def test_a_halted_node_is_stopped_its_names_freed_and_a_new_node_takes_its_name(
    beam_node: pybeam.Node, epmd_port: int, cluster: Callable[..., LocalCluster]
) -> None:
    cookie = pybeam.get_cookie()
    name = f"halted_{secrets.token_hex(3)}@127.0.0.1"
    node = pybeam.Node(name, cookie=cookie, ticktime=1.0, epmd_port=epmd_port)
    await node.start()
    try:
        async with cluster(1) as c:
            (other,) = c.nodes
            target, _ = node.spawn(trapper, ("halt_trapper",))
            await eventually(lambda: node.whereis("halt_trapper") == target)
            await watched_from(other, target)
            sleeper, _ = node.spawn(pybeam.receive, ())

            node.halt()  # from outside the node's processes

            # At once: every process has ended, every name is free.
            assert node.processes() == []
            assert node.registered() == []
            assert not node.running
            assert not node.is_alive(target) and not node.is_alive(sleeper)
            await saw_noconnection(target)
            await asyncio.wait_for(node.wait_stopped(), 30)
            await node.stop()  # a stopped node: at once
            node.halt()  # a no-op on a stopped node
            # Unregistered from the port mapper: a new node object takes the name.
            again = pybeam.Node(name, cookie=cookie, ticktime=1.0, epmd_port=epmd_port)
            await again.start()
            try:
                assert again.running and again.creation != node.creation
                new_target, _ = again.spawn(trapper, ("halt_trapper",))
                await watched_from(other, new_target)
                again.halt()
                await saw_noconnection(new_target)
                await asyncio.wait_for(again.wait_stopped(), 30)
            finally:
                await again.stop()
    finally:
        await node.stop()


async def test_a_halt_from_a_process_of_an_in_process_node_ends_it_too(
    beam_node: pybeam.Node, epmd_port: int
) -> None:
    # As Node.stop from one of its processes: halt returns to it, and the
    # caller, one of the killed, is cancelled at its next await.
    name = f"halted_{secrets.token_hex(3)}@127.0.0.1"
    node = pybeam.Node(name, cookie=pybeam.get_cookie(), ticktime=1.0, epmd_port=epmd_port)
    await node.start()
    try:
        ran_on: list[str] = []

        async def halt_when_told() -> None:
            await pybeam.receive("halt")
            node.halt()
            ran_on.append("before its next await")
            await asyncio.sleep(0)
            ran_on.append("after its next await")

        halter, _ = node.spawn(halt_when_told, ())
        ref = pybeam.monitor(halter)
        pybeam.send(halter, "halt")
        await asyncio.wait_for(node.wait_stopped(), 30)
        assert not node.running and node.processes() == []
        # This test's node is another node to it: noconnection, as from BEAM's halt.
        assert await pybeam.receive(("DOWN", ref, ANY, ANY, ANY), timeout=30) == (
            "DOWN",
            ref,
            "process",
            halter,
            "noconnection",
        )
        await asyncio.sleep(0.05)
        assert ran_on == ["before its next await"]  # halt returned to it, and it was cancelled
    finally:
        await node.stop()


def test_halt_on_a_node_never_started_does_nothing() -> None:
    node = pybeam.Node()
    node.halt()
    assert not node.running


class Recorder(GenServer):
    """Traps exits, so its terminate runs when a stop shuts it down."""

    def init(self, events: list[str]) -> Any:
        pybeam.trap_exit(True)
        return events

    def terminate(self, reason: Any, events: list[str]) -> None:
        events.append(f"terminate {reason}")


async def test_a_halt_stops_no_application_it_kills_their_processes() -> None:
    events: list[str] = []

    async def start_app() -> pybeam.Pid:
        return await supervisor.start_link([Recorder.child_spec(events, id="recorder")])

    node = pybeam.Node()
    await node.start()
    try:
        top = await application.start(start_app, node=node)
        assert node.process(top) is not None and len(node.processes()) >= 3
        node.send_after(0.01, "nobody_here", "late")  # a timer, dropped with the node
        node.halt()
        assert node.processes() == []
        await asyncio.wait_for(node.wait_stopped(), 30)
        await asyncio.sleep(0.05)
        assert events == []  # no terminate: nothing was shut down, all was killed
        assert application.which_applications(node) == []
    finally:
        await node.stop()

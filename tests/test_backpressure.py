"""Backpressure as BEAM's dist_buf_busy_limit: a sender to a peer that does not read.

The peer is a real node in another OS process, frozen with SIGSTOP (it reads
nothing; the kernel's socket buffers fill, then ours). Behaviour, not timing:
while it is frozen a process that sent past the busy limit is suspended at its
next receive, and ``pybeam.drain`` waits; once it thaws both go on. Past the
hard limit the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

import pybeam
from pybeam.testing import eventually, free_port

CHUNK = b"x" * (256 * 1024)
BUSY_LIMIT = 256 * 1024


@dataclass
class Frozen:
    name: str
    proc: subprocess.Popen[str]

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


def _start(name: str, cookie: str, epmd_port: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "pybeam", "node", "--name", name, "--cookie", cookie]
    argv += ["--epmd-port", str(epmd_port), "--exit-on-stdin-close"]
    # Our sys.path, so the peer imports this module's functions (spawn_on).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert " up " in line, line + proc.stdout.read()
    return proc


@contextlib.asynccontextmanager
async def frozen_peer(
    busy_limit: int, hard_limit: int | None = None, freeze: bool = True
) -> AsyncIterator[tuple[pybeam.Node, Frozen]]:
    """This node (ticktime 60: the frozen peer is not found down during the
    test) connected to a peer node, frozen (``freeze=False``: the test
    freezes it when it is ready)."""
    cookie, port, tag = secrets.token_hex(8), free_port(), secrets.token_hex(3)
    async with pybeam.Node(
        f"bp{tag}@127.0.0.1",
        cookie=cookie,
        epmd_port=port,
        ticktime=60,
        busy_limit=busy_limit,
        hard_limit=hard_limit,
    ) as node:
        peer = f"peer{tag}@127.0.0.1"
        proc = await asyncio.to_thread(_start, peer, cookie, port)
        frozen = Frozen(peer, proc)
        try:
            assert await pybeam.connect(peer)
            if freeze:
                frozen.freeze()
            yield node, frozen
        finally:
            frozen.thaw()
            proc.kill()
            proc.wait(10)


def busy(node: pybeam.Node, peer: str) -> bool:
    conn = node.dist.connection(peer)  # type: ignore[union-attr]
    return conn is not None and conn.busy


async def test_a_sender_past_the_busy_limit_is_suspended_at_its_next_receive_until_it_drains() -> None:
    async with frozen_peer(busy_limit=BUSY_LIMIT) as (node, peer):
        me = pybeam.self()

        async def sender() -> None:
            for _ in range(400):  # at most 100 MB: far more than the socket buffers hold
                pybeam.send(("nobody", peer.name), CHUNK)
                await asyncio.sleep(0)  # not a pybeam await point: it lets the chunk go to the kernel
                if busy(node, peer.name):
                    break
            pybeam.send(me, "sent")
            assert await pybeam.receive() == "go"  # suspended here while the peer is frozen
            pybeam.send(me, "received")

        pid = pybeam.spawn(sender)
        await pybeam.receive("sent", timeout=30)
        assert busy(node, peer.name)
        pybeam.send(pid, "go")
        pybeam.send(pid, "again")
        # Its mailbox holds "go", yet it does not take it: it waits for the connection.
        assert await pybeam.receive("received", timeout=1.0, default=None) is None
        peer.thaw()
        assert await pybeam.receive("received", timeout=60) == "received"
        assert not busy(node, peer.name)


@pytest.mark.parametrize("to", ["pid", "name"])
async def test_a_sender_of_one_small_message_per_iteration_is_suspended_too(to: str) -> None:
    # Each message is the first of its loop iteration, so it is written at
    # once rather than batched: the buffer it leaves behind must count too.
    small = b"x" * (16 * 1024)  # not fragmented
    async with frozen_peer(busy_limit=BUSY_LIMIT) as (node, peer):
        me = pybeam.self()
        dest = pybeam.Pid(peer.name, 1_000_000, 1) if to == "pid" else ("nobody", peer.name)

        async def sender() -> None:
            for _ in range(4000):  # at most 64 MB
                pybeam.send(dest, small)
                await asyncio.sleep(0)
                if busy(node, peer.name):
                    break
            pybeam.send(me, "sent")
            assert await pybeam.receive() == "go"  # suspended here while the peer is frozen
            pybeam.send(me, "received")

        pid = pybeam.spawn(sender)
        await pybeam.receive("sent", timeout=60)
        assert busy(node, peer.name)
        pybeam.send(pid, "go")
        pybeam.send(pid, "again")
        assert await pybeam.receive("received", timeout=1.0, default=None) is None
        peer.thaw()
        assert await pybeam.receive("received", timeout=60) == "received"


async def fill(node: pybeam.Node, peer: str, report: pybeam.Pid) -> None:
    """Send to ``peer`` until the connection is busy, then say so (and end)."""
    for _ in range(400):
        pybeam.send(("nobody", peer), CHUNK)
        await asyncio.sleep(0)
        if busy(node, peer):
            break
    pybeam.send(report, "full")


async def watch(kind: str, target: pybeam.Pid, report: pybeam.Pid) -> None:
    """On the peer: link to ``target`` or monitor it (``kind``), then tell
    ``report`` what comes of it."""
    pybeam.trap_exit(True)
    if kind == "link":
        pybeam.link(target)
    elif kind == "monitor":
        pybeam.monitor(target)
    pybeam.send(report, ("watching", pybeam.self()))
    while True:
        pybeam.send(report, ("saw", await pybeam.receive()))


async def victim(report: pybeam.Pid) -> None:
    """Monitor the pid it is sent (its DEMONITOR goes out when it ends), then idle."""
    watcher = await pybeam.receive()
    pybeam.monitor(watcher)
    pybeam.send(report, "monitoring")
    await pybeam.receive()


@pytest.mark.parametrize("kind", ["link", "monitor", "demonitor"])
async def test_a_process_that_kills_another_is_not_suspended_for_the_dead_ones_signals(kind: str) -> None:
    # The killed process's link exit, DOWN or DEMONITOR goes to a busy
    # connection, sent on its behalf: as in BEAM, that suspends nobody (the
    # killer once waited at its next receive until the peer read again).
    async with frozen_peer(busy_limit=BUSY_LIMIT, freeze=False) as (node, peer):
        me = pybeam.self()
        target = pybeam.spawn(victim, me)
        await pybeam.spawn_on(peer.name, watch, kind, target, me)
        _, watcher = await pybeam.receive(("watching", pybeam.ANY), timeout=30)
        if kind == "demonitor":
            pybeam.send(target, watcher)
            await pybeam.receive("monitoring", timeout=30)
        peer.freeze()
        pybeam.spawn(fill, node, peer.name, me)
        await pybeam.receive("full", timeout=60)

        async def killer() -> None:
            pybeam.exit(target, "kill")
            pybeam.send(me, ("killed", busy(node, peer.name)))
            assert await pybeam.receive() == "go"
            pybeam.send(me, "received")

        pid = pybeam.spawn(killer)
        assert await pybeam.receive(("killed", pybeam.ANY), timeout=30) == ("killed", True)
        pybeam.send(pid, "go")
        assert await pybeam.receive("received", timeout=30, default=None) == "received", (
            "the killer was suspended"
        )
        peer.thaw()
        if kind != "demonitor":
            # The signal did go to the peer (while the connection was busy).
            _, seen = await pybeam.receive(("saw", pybeam.ANY), timeout=60)
            assert seen[0] in ("EXIT", "DOWN") and seen[-1] == "killed", seen


async def test_a_timers_message_to_a_busy_connection_does_not_suspend_the_process_that_set_it() -> None:
    # As BEAM's timers send on their own: the setter is not the sender when it fires.
    async with frozen_peer(busy_limit=BUSY_LIMIT) as (node, peer):
        me = pybeam.self()
        pybeam.spawn(fill, node, peer.name, me)
        await pybeam.receive("full", timeout=60)

        async def setter() -> None:
            ref = pybeam.send_after(0.0, ("nobody", peer.name), "from a timer")
            pybeam.send(me, ("set", ref))
            assert await pybeam.receive() == "go"  # the timer has fired
            assert await pybeam.receive() == "again"  # where it would wait if suspended
            pybeam.send(me, "received")

        pid = pybeam.spawn(setter)
        _, ref = await pybeam.receive(("set", pybeam.ANY), timeout=30)
        await eventually(lambda: pybeam.read_timer(ref) is False, 30, what="the timer fires")
        assert busy(node, peer.name)
        pybeam.send(pid, "go")
        pybeam.send(pid, "again")
        assert await pybeam.receive("received", timeout=30, default=None) == "received", (
            "the process that set the timer was suspended"
        )


@pytest.mark.parametrize("signal_kind", ["exit", "link", "monitor"])
async def test_a_process_that_sends_a_signal_to_a_busy_connection_itself_is_suspended(
    signal_kind: str,
) -> None:
    # Not only messages: an exit signal, link or monitor a process sends
    # itself past the busy limit suspends it at its next receive.
    async with frozen_peer(busy_limit=BUSY_LIMIT, freeze=False) as (node, peer):
        me = pybeam.self()
        remote = await pybeam.spawn_on(peer.name, "asyncio:sleep", 3600)
        peer.freeze()
        pybeam.spawn(fill, node, peer.name, me)
        await pybeam.receive("full", timeout=60)

        async def sender() -> None:
            if signal_kind == "exit":
                pybeam.exit(remote, "bye")
            elif signal_kind == "link":
                pybeam.link(remote)
            else:
                pybeam.monitor(remote)
            pybeam.send(me, ("sent", busy(node, peer.name)))
            assert await pybeam.receive() == "go"  # suspended here while the peer is frozen
            pybeam.send(me, "received")

        pid = pybeam.spawn(sender)
        assert await pybeam.receive(("sent", pybeam.ANY), timeout=30) == ("sent", True)
        pybeam.send(pid, "go")
        assert await pybeam.receive("received", timeout=1.0, default=None) is None
        peer.thaw()
        assert await pybeam.receive("received", timeout=60) == "received"


async def test_drain_waits_outside_processes_until_the_peer_reads() -> None:
    async with frozen_peer(busy_limit=BUSY_LIMIT) as (node, peer):
        for _ in range(400):
            pybeam.send(("nobody", peer.name), CHUNK)  # code outside a process: nothing suspends it
            await asyncio.sleep(0)
            if busy(node, peer.name):
                break
        assert busy(node, peer.name)
        waiting = asyncio.ensure_future(pybeam.drain(peer.name))
        done, _ = await asyncio.wait([waiting], timeout=1.0)
        assert not done, "drain returned while the peer read nothing"
        peer.thaw()
        await asyncio.wait_for(waiting, 60)
        assert not busy(node, peer.name)
        await pybeam.drain(peer.name)  # not busy: at once


async def test_past_the_hard_limit_the_connection_is_closed() -> None:
    async with frozen_peer(busy_limit=BUSY_LIMIT, hard_limit=8 * BUSY_LIMIT) as (_, peer):
        pybeam.monitor_nodes(True)
        sent = 0
        while peer.name in pybeam.nodes() and sent < 400:
            pybeam.send(("nobody", peer.name), CHUNK)  # never awaiting: only the hard limit stops it
            sent += 1
        assert peer.name not in pybeam.nodes(), "the connection outlived the hard limit"
        assert await pybeam.receive(("nodedown", peer.name), timeout=10) == ("nodedown", peer.name)
        assert sent <= 8 + 1, f"{sent} chunks of 256 KiB queued past a 2 MiB hard limit"


@pytest.mark.parametrize("limit", [BUSY_LIMIT, 1 << 40], ids=["small", "huge"])
async def test_a_healthy_peer_never_makes_a_sender_wait(limit: int) -> None:
    await healthy(limit)


def test_a_huge_limit_is_backpressure_off_on_pybeams_own_event_loop() -> None:
    # pybeam.run uses uvloop when installed, whose water marks are C ints: a
    # limit of 1 TiB once failed there (and nowhere else) when connecting.
    pybeam.run(healthy, 1 << 40)


async def healthy(limit: int) -> None:
    cookie, port, tag = secrets.token_hex(8), free_port(), secrets.token_hex(3)
    async with pybeam.Node(
        f"bp{tag}@127.0.0.1", cookie=cookie, epmd_port=port, busy_limit=limit, hard_limit=limit
    ):
        peer = f"peer{tag}@127.0.0.1"
        proc = await asyncio.to_thread(_start, peer, cookie, port)
        try:
            assert await pybeam.connect(peer)
            for _ in range(40):
                pybeam.send(("nobody", peer), CHUNK)
                await pybeam.drain(peer)  # returns once it is read: the peer reads
            assert await pybeam.ping(peer) == "pong"
        finally:
            proc.kill()
            proc.wait(10)

"""Whose lane a control message takes (order is kept per sender while large
messages travel in fragments): the sender named in the message, or the
process that ended for a DOWN, never whichever process happens to run.

The multi-node tests of the order itself are in tests/test_dist_fragments.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

import pybeam
from pybeam import Node, net, receive
from pybeam.distribution.connection import Op
from pybeam.distribution.net_kernel import NetKernel, _sender_of
from pybeam.terms import Pid, Ref

A = Pid("a@h", 1, 1)
B = Pid("b@h", 2, 1)
REF = Ref("a@h", 7, 1)


def test_signals_that_name_their_sender_take_its_lane() -> None:
    assert _sender_of((Op.LINK, A, B)) == A
    assert _sender_of((Op.UNLINK, A, B)) == A
    assert _sender_of((Op.EXIT, A, B, "kill")) == A
    assert _sender_of((Op.LINK_EXIT, A, B, "normal")) == A
    assert _sender_of((Op.MONITOR, A, B, REF)) == A
    assert _sender_of((Op.DEMONITOR, A, ("name", "b@h"), REF)) == A
    assert _sender_of((Op.SPAWN_REQUEST, REF, A, "m:f", (), {})) == A
    # A spawn reply goes ahead of anything the new process sends.
    assert _sender_of((Op.SPAWN_REPLY, REF, A, B)) == B
    assert _sender_of((Op.SPAWN_REPLY, REF, A, ("error", "why"))) is None


def test_a_down_takes_the_lane_of_the_monitored_pid_and_a_down_by_name_none() -> None:
    assert _sender_of((Op.DOWN, B, REF, A, "normal")) == A
    assert _sender_of((Op.DOWN, B, REF, ("name", "a@h"), "normal")) is None


def test_messages_take_the_running_process_lane_outside_any_process_none() -> None:
    assert _sender_of((Op.SEND, B, "hi")) is None
    assert _sender_of((Op.SEND_NAME, "name", "hi")) is None
    assert _sender_of((Op.NODES, ["x@h"])) is None


async def test_only_messages_take_the_lane_of_the_process_running_them(beam_node: Node) -> None:
    me = pybeam.self()
    assert _sender_of((Op.SEND, B, "hi")) == me
    assert _sender_of((Op.SEND_NAME, "name", "hi")) == me
    # Not what the running process did: whose DOWN, or the kernel's own.
    assert _sender_of((Op.DOWN, B, REF, ("name", "a@h"), "killed")) is None
    assert _sender_of((Op.DOWN, B, REF, A, "killed")) == A
    assert _sender_of((Op.NODES, ["x@h"])) is None


@contextlib.asynccontextmanager
async def silent_peer(node: Node) -> AsyncIterator[str]:
    """A node name whose connection stays pending: it listens, and never answers a handshake."""
    conns: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    name = "silent@127.0.0.1"
    connecting = asyncio.ensure_future(net.connect(f"{name}:{port}"))
    try:
        await asyncio.sleep(0)
        kernel = node.dist
        assert isinstance(kernel, NetKernel)
        peer = kernel.peer(name)
        assert peer is not None and peer.pending
        yield name
    finally:
        connecting.cancel()  # the attempt itself ends with the node (or its timeout)
        for writer in conns:
            writer.close()
        server.close()


async def registered_sender(to: Pid, told: Pid) -> None:
    pybeam.register("lanes_sender")
    pybeam.send(to, "before its end")
    pybeam.send(told, "sent")
    await receive("never comes")


@pytest.mark.parametrize("by_name", [True, False], ids=["by name", "by pid"])
async def test_a_down_sent_while_another_process_kills_takes_the_lane_of_the_one_killed(
    beam_node: Node, by_name: bool
) -> None:
    # The DOWN is queued on the pending connection in the killer's context.
    kernel = beam_node.dist
    assert isinstance(kernel, NetKernel)
    async with silent_peer(beam_node) as name:
        watcher = Pid(name, 5, 1)
        pid = pybeam.spawn(registered_sender, Pid(name, 6, 1), pybeam.self())
        await receive("sent", timeout=10)
        ref = beam_node.make_ref()
        item: Any = ("lanes_sender", beam_node.name) if by_name else pid
        assert beam_node.add_monitor("lanes_sender" if by_name else pid, watcher, ref, item) == pid
        pybeam.exit(pid, "kill")
        peer = kernel.peer(name)
        assert peer is not None and peer.pending
        senders = [sender for sender, _ in peer.queue]
        assert senders == [pid, pid]  # its message, then its DOWN: one lane

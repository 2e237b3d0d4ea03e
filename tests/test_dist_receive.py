"""How a connection reads: in its transport's callback, from the end of the handshake on.

The target is a real node (a separate OS process); the other end is a raw
peer in this process that runs the genuine handshake and then writes bytes
exactly as the test wants them cut: glued to the last handshake message,
split over many segments, or with a length prefix over the frame limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import pytest

import pybeam
from pybeam import ANY, Pid, codec, receive, rpc
from pybeam.distribution import epmd, handshake
from pybeam.distribution.connection import Op
from pybeam.distribution.framing import DEFAULT_MAX_FRAME, encode_frame
from pybeam.testing import LocalCluster, eventually


async def recorder() -> None:
    """Keep every message; ("log", asker) gets them back."""
    seen: list[Any] = []
    while True:
        match await receive():
            case ("log", Pid() as asker):
                pybeam.send(asker, ("log", seen))
            case msg:
                seen.append(msg)


async def log_of(rec: Pid) -> list[Any]:
    pybeam.send(rec, ("log", pybeam.self()))
    _, seen = await receive(("log", ANY), timeout=10)
    return list(seen)


def frame_of(*controls: tuple[Any, ...]) -> bytes:
    """One frame holding these control messages, as a node sends them."""
    return encode_frame(codec.encode(list(controls)))


@dataclass
class Target:
    cluster: LocalCluster
    name: str
    port: int
    cookie: str
    rec: Pid


@pytest.fixture
async def target(cluster: Any) -> AsyncIterator[Target]:
    c = await cluster(1).start()
    name = c.nodes[0]
    port = await epmd.lookup(name)
    assert port is not None
    rec = await pybeam.spawn_on(name, recorder)
    assert isinstance(rec, Pid)
    kernel = pybeam.current_node().dist
    yield Target(c, name, port, kernel.cookie, rec)  # type: ignore[union-attr]


class Piggyback:
    """A StreamWriter whose ``nth`` write carries ``extra`` in the same call,
    so that it leaves in one segment with that handshake message."""

    def __init__(self, writer: asyncio.StreamWriter, nth: int, extra: bytes) -> None:
        self._writer = writer
        self._nth = nth
        self._extra = extra
        self._writes = 0

    def write(self, data: bytes) -> None:
        self._writes += 1
        self._writer.write(data + self._extra if self._writes == self._nth else data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


@contextlib.asynccontextmanager
async def raw_peer(
    target: Target, *, glued: bytes = b""
) -> AsyncIterator[tuple[str, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to the target after a genuine handshake (``glued`` goes
    out in the same write as our proof, the last message the target reads)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    name = f"raw_{secrets.token_hex(4)}@127.0.0.1"
    try:
        await handshake.initiate(
            reader,
            cast(asyncio.StreamWriter, Piggyback(writer, 2, glued)),  # hello, then proof
            my_name=name,
            my_creation=1,
            cookie=target.cookie,
            expected_peer=target.name,
            timeout=10,
        )
        yield name, reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def hung_up_on(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(30):
        while await reader.read(65536):
            pass


async def still_serving(target: Target) -> None:
    """This node's own connection to the target is up and served."""
    assert target.name in pybeam.nodes()
    assert await rpc.call(target.name, "os:getpid", timeout=10) > 0


@pytest.mark.parametrize("size", [10, 1024 * 1024], ids=["small", "over_the_streams_limit"])
async def test_messages_glued_to_the_initiators_last_handshake_message_are_read_in_order(
    target: Target, size: int
) -> None:
    # A megabyte glued on fills the handshake's stream past its limit, so it
    # stops reading the socket: the connection must start it again.
    payload = b"p" * size
    glued = frame_of((Op.SEND, target.rec, ("early", 1, payload)), (Op.SEND, target.rec, ("early", 2)))
    async with raw_peer(target, glued=glued) as (_, _reader, writer):
        writer.write(frame_of((Op.SEND, target.rec, ("late", 3))))
        await writer.drain()

        async def all_three() -> bool:
            return len(await log_of(target.rec)) >= 3

        await eventually(all_three, timeout=20)
    assert await log_of(target.rec) == [("early", 1, payload), ("early", 2), ("late", 3)]


async def test_messages_glued_to_the_acceptors_last_handshake_message_are_read(target: Target) -> None:
    # The target dials us: our "ok" and a message leave in one write.
    fake = f"fake_{secrets.token_hex(4)}@127.0.0.1"
    glued = frame_of((Op.SEND, target.rec, ("early", 1)))
    served: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(writer)
        with contextlib.suppress(handshake.HandshakeError, OSError):
            await handshake.accept(
                reader,
                cast(asyncio.StreamWriter, Piggyback(writer, 2, glued)),  # challenge, then ok
                my_name=fake,
                my_creation=1,
                cookie=target.cookie,
                accept_peer=lambda *_: "ok",
                timeout=10,
            )
            writer.write(frame_of((Op.SEND, target.rec, ("late", 2))))
            await hung_up_on(reader)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        assert await rpc.call(target.name, "pybeam.net:connect", f"{fake}:{port}", timeout=20) is True

        async def both() -> bool:
            return len(await log_of(target.rec)) >= 2

        await eventually(both, timeout=20)
        assert await log_of(target.rec) == [("early", 1), ("late", 2)]
    finally:
        for writer in served:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_frames_cut_into_many_small_segments_arrive_whole_and_in_order(target: Target) -> None:
    payload = bytes(range(256)) * 4
    data = b"".join(frame_of((Op.SEND, target.rec, ("cut", i, payload))) for i in range(3))
    async with raw_peer(target) as (_, _reader, writer):
        # Cuts of 1 to 7 bytes, each its own segment (asyncio sets TCP_NODELAY).
        pos, cut = 0, 1
        while pos < len(data):
            writer.write(data[pos : pos + cut])
            await writer.drain()
            await asyncio.sleep(0.001)
            pos += cut
            cut = cut % 7 + 1

        async def all_three() -> bool:
            return len(await log_of(target.rec)) >= 3

        await eventually(all_three, timeout=30)
    assert await log_of(target.rec) == [("cut", i, payload) for i in range(3)]
    await still_serving(target)


async def test_a_length_prefix_over_the_frame_limit_closes_only_that_connection(target: Target) -> None:
    async with raw_peer(target) as (name, reader, writer):
        writer.write(struct.pack(">I", DEFAULT_MAX_FRAME + 1) + b"x" * 64)
        await writer.drain()
        await hung_up_on(reader)
    expected = f"bad input from {name}: frame of {DEFAULT_MAX_FRAME + 1} bytes exceeds the limit"
    await eventually(lambda: expected in target.cluster.logs(target.name), timeout=20)
    await still_serving(target)


async def test_a_peer_hanging_up_mid_frame_is_told_apart(target: Target) -> None:
    async with raw_peer(target) as (name, _reader, writer):
        writer.write(frame_of((Op.SEND, target.rec, ("whole", 1))))
        await writer.drain()

        async def whole_one() -> bool:
            return await log_of(target.rec) == [("whole", 1)]

        await eventually(whole_one, timeout=20)
        # Then the start of a frame, and at once the end of the stream (before
        # the target could find us silent for a tick time). Half-closed, and
        # read until the target hangs up: a socket closed with bytes unread
        # (the target's first messages, in flight) resets the connection, a
        # different end than the one this test is about.
        writer.write(frame_of((Op.SEND, target.rec, ("half", 2)))[:9])
        writer.write_eof()
        await hung_up_on(_reader)
    expected = f"connection to {name} down: connection closed by peer mid-frame"
    await eventually(lambda: expected in target.cluster.logs(target.name), timeout=20)
    assert await log_of(target.rec) == [("whole", 1)]
    await still_serving(target)


async def burst_sender(rec: Pid, n: int) -> None:
    for i in range(n):
        pybeam.send(rec, ("burst", i))  # one loop iteration: the first leaves at once, then a frame
    for i in range(n, 2 * n):
        pybeam.send(rec, ("burst", i))
        if i % 7 == 0:
            await asyncio.sleep(0)  # each iteration's first message leaves at once again


async def test_bursts_keep_their_order_across_immediate_and_batched_writes(target: Target) -> None:
    n = 3000
    pybeam.spawn(burst_sender, target.rec, n)

    async def all_of_them() -> bool:
        return len(await log_of(target.rec)) >= 2 * n

    await eventually(all_of_them, timeout=30)
    assert await log_of(target.rec) == [("burst", i) for i in range(2 * n)]


async def lone_sender(rec: Pid, n: int) -> None:
    for i in range(n):
        pybeam.send(rec, ("lone", i))
        await asyncio.sleep(0)  # a later loop iteration, mostly with nothing arrived in between


async def test_lone_messages_with_no_answer_between_them_all_arrive_in_order(target: Target) -> None:
    # The first message after an arrival leaves at once; the next one, with
    # nothing arrived since, waits for the end of its loop iteration, which
    # the connection schedules then: none may be left behind, none overtaken.
    n = 500
    pybeam.spawn(lone_sender, target.rec, n)

    async def all_of_them() -> bool:
        return len(await log_of(target.rec)) >= n

    await eventually(all_of_them, timeout=30)
    assert await log_of(target.rec) == [("lone", i) for i in range(n)]

"""Tests for pybeam.distribution.framing, over real TCP connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import struct
import sys
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pybeam.distribution.framing import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    FrameError,
    FrameReader,
    FrameTooLarge,
    FrameWriter,
    StreamClosed,
    encode_frame,
    read_frame,
)


class Pair(NamedTuple):
    """Both ends of one TCP connection."""

    client_r: asyncio.StreamReader
    client_w: asyncio.StreamWriter
    server_r: asyncio.StreamReader
    server_w: asyncio.StreamWriter


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.get_running_loop().create_future()
    )

    async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.set_result((r, w))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client_r, client_w = await asyncio.open_connection("127.0.0.1", port)
    server_r, server_w = await accepted
    try:
        yield Pair(client_r, client_w, server_r, server_w)
    finally:
        for w in (client_w, server_w):
            w.close()
        server.close()
        await server.wait_closed()


def header(n: int) -> bytes:
    return struct.pack(">I", n)


# --- encode_frame / read_frame


def test_encode_frame_is_length_prefixed() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"x" * 300)[:4] == b"\x00\x00\x01\x2c"


def test_default_max_frame() -> None:
    assert DEFAULT_MAX_FRAME == 64 * 1024 * 1024


async def test_read_frame_returns_payloads_in_order(pair: Pair) -> None:
    payloads = [b"a", b"hello", bytes(range(256)) * 100]
    pair.client_w.write(b"".join(encode_frame(p) for p in payloads))
    for p in payloads:
        assert await read_frame(pair.server_r, 1 << 20) == p


async def test_read_frame_waits_for_a_frame_split_across_writes(pair: Pair) -> None:
    frame = encode_frame(b"split payload")
    task = asyncio.create_task(read_frame(pair.server_r, 1024))
    for i in range(len(frame)):
        pair.client_w.write(frame[i : i + 1])
        await pair.client_w.drain()
        await asyncio.sleep(0)
    assert await task == b"split payload"


async def test_oversized_prefix_is_refused_without_reading_the_body(pair: Pair) -> None:
    # Only the 4-byte prefix is ever sent: a reader that tried to read (or
    # allocate) 2 GiB would hang here instead of failing at once.
    pair.client_w.write(header(0x7FFF_FFFF))
    with pytest.raises(FrameTooLarge, match="exceeds the limit of 1024") as info:
        await asyncio.wait_for(read_frame(pair.server_r, 1024), 2)
    assert info.value.size == 0x7FFF_FFFF
    assert info.value.max_size == 1024


async def test_frame_of_exactly_max_size_is_accepted(pair: Pair) -> None:
    pair.client_w.write(encode_frame(b"z" * 1024))
    assert await read_frame(pair.server_r, 1024) == b"z" * 1024


async def test_zero_length_frame_is_an_error_by_default(pair: Pair) -> None:
    pair.client_w.write(header(0))
    with pytest.raises(FrameError, match="zero-length"):
        await read_frame(pair.server_r, 1024)


async def test_zero_length_frame_is_a_tick_when_allowed(pair: Pair) -> None:
    pair.client_w.write(header(0) + encode_frame(b"after"))
    assert await read_frame(pair.server_r, 1024, allow_empty=True) == b""
    assert await read_frame(pair.server_r, 1024, allow_empty=True) == b"after"


async def test_clean_eof_between_frames(pair: Pair) -> None:
    pair.client_w.write(encode_frame(b"last"))
    pair.client_w.close()
    assert await read_frame(pair.server_r) == b"last"
    with pytest.raises(StreamClosed) as info:
        await read_frame(pair.server_r)
    assert not info.value.mid_frame


@pytest.mark.parametrize("partial", [b"\x00\x00", header(10) + b"12345"])
async def test_eof_mid_frame(pair: Pair, partial: bytes) -> None:
    pair.client_w.write(partial)
    pair.client_w.close()
    with pytest.raises(StreamClosed, match="middle of a frame") as info:
        await read_frame(pair.server_r)
    assert info.value.mid_frame
    assert isinstance(info.value, FrameError)


# --- FrameDecoder / FrameReader


def split_points(draw: st.DrawFn, size: int) -> list[int]:
    cuts = draw(st.lists(st.integers(0, size), max_size=20))
    return sorted(set(cuts))


@st.composite
def chunked_stream(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    payloads = draw(st.lists(st.binary(min_size=1, max_size=300), max_size=30))
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = [0, *split_points(draw, len(stream)), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(cuts)]
    return payloads, chunks


@settings(max_examples=200, deadline=None)
@given(chunked_stream())
def test_decoder_reassembles_any_chunking(case: tuple[list[bytes], list[bytes]]) -> None:
    payloads, chunks = case
    decoder = FrameDecoder(1024)
    out: list[bytes] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    assert out == payloads
    assert decoder.buffered == 0


def test_decoder_keeps_incomplete_tail() -> None:
    decoder = FrameDecoder(1024)
    data = encode_frame(b"one") + encode_frame(b"two")
    assert decoder.feed(data[:-1]) == [b"one"]
    assert decoder.buffered == len(encode_frame(b"two")) - 1
    assert decoder.feed(data[-1:]) == [b"two"]
    assert decoder.buffered == 0


def test_decoder_refuses_oversized_and_empty_frames() -> None:
    with pytest.raises(FrameTooLarge):
        FrameDecoder(10).feed(header(11))
    with pytest.raises(FrameError, match="zero-length"):
        FrameDecoder(10).feed(header(0))
    assert FrameDecoder(10, allow_empty=True).feed(header(0) + encode_frame(b"x")) == [b"", b"x"]

    # One whole frame arriving in one piece takes a shorter way: the same limits.
    with pytest.raises(FrameTooLarge):
        FrameDecoder(10).feed(encode_frame(b"x" * 11))
    assert FrameDecoder(10).feed(encode_frame(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(FrameError, match="zero-length"):
        FrameDecoder(10).feed(header(0) + b"x")


async def test_frame_reader_returns_all_buffered_frames(pair: Pair) -> None:
    reader = FrameReader(pair.server_r, 1024)
    pair.client_w.write(b"".join(encode_frame(b"m%d" % i) for i in range(100)))
    got: list[bytes] = []
    while len(got) < 100:
        batch = await reader.read_frames()
        assert batch
        got += batch
    assert got == [b"m%d" % i for i in range(100)]


async def test_frame_reader_eof(pair: Pair) -> None:
    reader = FrameReader(pair.server_r, 1024)
    pair.client_w.write(encode_frame(b"x") + header(5) + b"ab")
    pair.client_w.close()
    assert await reader.read_frames() == [b"x"]
    with pytest.raises(StreamClosed) as info:
        await reader.read_frames()
    assert info.value.mid_frame


async def test_frame_reader_refuses_oversized(pair: Pair) -> None:
    reader = FrameReader(pair.server_r, 1024)
    pair.client_w.write(header(1 << 30))
    with pytest.raises(FrameTooLarge):
        await asyncio.wait_for(reader.read_frames(), 2)


# --- FrameWriter


async def test_writer_batches_one_flush_per_iteration(pair: Pair) -> None:
    fw = FrameWriter(pair.client_w)
    before = fw.last_write_time
    for i in range(1000):
        fw.write(b"msg%d" % i)
    # Nothing reaches the transport until the loop turns, then all of it at once.
    assert fw.bytes_sent == 0
    assert fw.frames_sent == 0
    await asyncio.sleep(0)
    expected = sum(4 + len(b"msg%d" % i) for i in range(1000))
    assert fw.bytes_sent == expected
    assert fw.frames_sent == 1000
    assert fw.last_write_time >= before
    assert fw.last_write_time <= time.monotonic()
    reader = FrameReader(pair.server_r)
    got: list[bytes] = []
    while len(got) < 1000:
        got += await reader.read_frames()
    assert got == [b"msg%d" % i for i in range(1000)]


async def test_writer_flush_and_drain_send_immediately(pair: Pair) -> None:
    fw = FrameWriter(pair.client_w)
    fw.write(b"now")
    fw.flush()
    assert fw.bytes_sent == 7
    fw.write(b"drained")
    await fw.drain()
    assert fw.bytes_sent == 7 + 11
    assert await read_frame(pair.server_r) == b"now"
    assert await read_frame(pair.server_r) == b"drained"


async def test_writer_tick_is_an_empty_frame(pair: Pair) -> None:
    fw = FrameWriter(pair.client_w)
    fw.write_tick()
    fw.write(b"x")
    await fw.drain()
    assert fw.bytes_sent == 4 + 5
    assert await read_frame(pair.server_r, allow_empty=True) == b""
    assert await read_frame(pair.server_r) == b"x"


async def test_writer_refuses_empty_and_oversized_payloads(pair: Pair) -> None:
    fw = FrameWriter(pair.client_w, max_size=8)
    with pytest.raises(FrameError, match="empty"):
        fw.write(b"")
    with pytest.raises(FrameTooLarge):
        fw.write(b"123456789")
    fw.write(b"12345678")
    await fw.drain()
    assert await read_frame(pair.server_r) == b"12345678"


async def test_writer_close_flushes_then_refuses_writes(pair: Pair) -> None:
    fw = FrameWriter(pair.client_w)
    fw.write(b"bye")
    fw.close()
    with pytest.raises(ConnectionResetError):
        fw.write(b"more")
    assert await read_frame(pair.server_r) == b"bye"
    with pytest.raises(StreamClosed):
        await read_frame(pair.server_r)


async def test_writes_to_a_closing_transport_are_dropped(pair: Pair) -> None:
    fw = FrameWriter(pair.client_w)
    pair.client_w.transport.abort()
    fw.write(b"lost")
    await asyncio.sleep(0)
    assert fw.bytes_sent == 0


async def test_drain_waits_while_the_peer_does_not_read(pair: Pair) -> None:
    fw = FrameWriter(pair.client_w)
    chunk = b"\xab" * (1 << 20)
    n = 32  # 32 MiB: more than loopback socket buffers hold
    for _ in range(n):
        fw.write(chunk)
    drain = asyncio.create_task(fw.drain())
    await asyncio.sleep(0.05)
    assert not drain.done()
    reader = FrameReader(pair.server_r)
    got = 0
    while got < n:
        got += len(await reader.read_frames())
    await asyncio.wait_for(drain, 5)
    assert fw.bytes_sent == n * (len(chunk) + 4)


class _Forwarding(asyncio.Protocol):
    """A bare protocol that forwards flow control to its FrameWriter, as documented."""

    def __init__(self) -> None:
        self.fw: FrameWriter | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        assert self.fw is not None
        self.fw.pause_writing()

    def resume_writing(self) -> None:
        assert self.fw is not None
        self.fw.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.fw is not None:
            self.fw.connection_lost(exc)
        self.lost.set_result(None)


async def test_writer_over_a_bare_transport() -> None:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, proto = await loop.create_connection(_Forwarding, "127.0.0.1", port)
    server_r, server_w = await accepted.get()
    try:
        fw = FrameWriter(transport)
        proto.fw = fw
        chunk = b"\xcd" * (1 << 20)
        for _ in range(32):
            fw.write(chunk)
        drain = asyncio.create_task(fw.drain())
        await asyncio.sleep(0.05)
        assert not drain.done()  # paused: the peer is not reading
        reader = FrameReader(server_r)
        got = 0
        while got < 32:
            got += len(await reader.read_frames())
        await asyncio.wait_for(drain, 5)
        # A lost connection fails drain().
        server_w.transport.abort()
        await asyncio.wait_for(proto.lost, 5)
        with pytest.raises(ConnectionResetError):
            await fw.drain()
    finally:
        transport.close()
        server_w.close()
        server.close()
        await server.wait_closed()


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not available on Windows")
def test_writer_and_reader_under_uvloop() -> None:
    # uvloop's transports are not asyncio's classes; the node may run on either.
    import uvloop

    async def scenario() -> None:
        got: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()

        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            reader = FrameReader(r)
            frames: list[bytes] = []
            while len(frames) < 1000:
                frames += await reader.read_frames()
            got.set_result(frames)
            w.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            fw = FrameWriter(writer)
            for i in range(1000):
                fw.write(b"u%d" % i)
            await fw.drain()
            assert await asyncio.wait_for(got, 5) == [b"u%d" % i for i in range(1000)]
            assert fw.frames_sent == 1000
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())

"""Tests for pybeam.distribution.handshake, between real TCP endpoints on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from pybeam import Pid, codec
from pybeam.distribution.framing import encode_frame, read_frame
from pybeam.distribution.handshake import (
    HANDSHAKE_MAX_FRAME,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    HandshakeError,
    PeerInfo,
    accept,
    initiate,
)

COOKIE = "GOODCOOKIE"
A = "a@host"
B = "b@host"

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Acceptor:
    """A listening node: runs accept() on each connection and queues the outcome."""

    name: str = B
    creation: int = 7
    cookie: str = COOKIE
    decision: str = "ok"
    timeout: float = 5.0
    flags: dict[str, Any] = field(default_factory=lambda: {"hidden": False})
    port: int = 0
    seen: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    #: What ``proven`` answers, and whom it was asked about (after their proof).
    proven_decision: str = "ok"
    proven_seen: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    results: asyncio.Queue[PeerInfo | BaseException] = field(default_factory=asyncio.Queue)

    def accept_peer(self, name: str, creation: int, flags: Mapping[str, Any]) -> str:
        self.seen.append((name, creation, dict(flags)))
        return self.decision

    def proven(self, name: str, creation: int, flags: Mapping[str, Any]) -> str:
        self.proven_seen.append((name, creation, dict(flags)))
        return self.proven_decision

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = await accept(
                reader,
                writer,
                my_name=self.name,
                my_creation=self.creation,
                cookie=self.cookie,
                accept_peer=self.accept_peer,
                proven=self.proven,
                flags=self.flags,
                timeout=self.timeout,
            )
            await self.results.put(peer)
            # Prove the stream is still usable, and ours to use, after the handshake.
            frame = await read_frame(reader)
            writer.write(encode_frame(frame[::-1]))
            await writer.drain()
        except Exception as e:
            await self.results.put(e)
        finally:
            writer.close()

    async def result(self) -> PeerInfo | BaseException:
        return await asyncio.wait_for(self.results.get(), 5)


class Net:
    """Servers and client connections made by one test, all closed at the end."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def listen(
        self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            self.writers.append(writer)
            try:
                await handler(reader, writer)
            finally:
                self.tasks.discard(task)

        server = await asyncio.start_server(tracked, "127.0.0.1", 0)
        self.servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def start(self, acceptor: Acceptor) -> Acceptor:
        acceptor.port = await self.listen(acceptor.handle)
        return acceptor

    async def connect(self, port: int) -> Streams:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writers.append(writer)
        return reader, writer

    async def close(self) -> None:
        # Closing every connection ends every handler (their reads fail); no
        # cancelling needed, which asyncio 3.11 would log as an error.
        for writer in self.writers:
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 5)
        for server in self.servers:
            server.close()
            await server.wait_closed()


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    n = Net()
    try:
        yield n
    finally:
        await n.close()


async def initiate_to(
    net: Net, port: int, *, cookie: str = COOKIE, expected_peer: str | None = B, timeout: float = 5.0
) -> tuple[PeerInfo, Streams]:
    reader, writer = await net.connect(port)
    peer = await initiate(
        reader,
        writer,
        my_name=A,
        my_creation=3,
        cookie=cookie,
        expected_peer=expected_peer,
        flags={"hidden": True},
        timeout=timeout,
    )
    return peer, (reader, writer)


async def send_term(writer: asyncio.StreamWriter, term: Any) -> None:
    writer.write(encode_frame(codec.encode(term)))
    await writer.drain()


async def recv_term(reader: asyncio.StreamReader) -> Any:
    return codec.decode(await asyncio.wait_for(read_frame(reader, HANDSHAKE_MAX_FRAME), 5))


async def assert_closed(reader: asyncio.StreamReader) -> None:
    """The other side closed the connection (maybe after some last frames)."""
    async with asyncio.timeout(5):
        while await reader.read(4096):
            pass


def hello(name: str = A, version: Any = PROTOCOL_VERSION) -> tuple[Any, ...]:
    return ("hello", version, name, 3, secrets.token_bytes(NONCE_SIZE), {})


async def test_good_cookie_both_ways(net: Net) -> None:
    acceptor = await net.start(Acceptor())
    peer, (reader, writer) = await initiate_to(net, acceptor.port)
    assert peer == PeerInfo(B, 7, {"hidden": False})
    assert await acceptor.result() == PeerInfo(A, 3, {"hidden": True})
    # Data sent straight after the handshake arrives, on the same stream.
    writer.write(encode_frame(b"ping"))
    assert await read_frame(reader) == b"gnip"
    assert acceptor.seen == [(A, 3, {"hidden": True})]


async def test_wrong_cookie_is_refused_on_both_sides(net: Net) -> None:
    acceptor = await net.start(Acceptor())
    with pytest.raises(HandshakeError) as info:
        await initiate_to(net, acceptor.port, cookie="BADCOOKIE")
    assert info.value.reason == "cookie"
    server_side = await acceptor.result()
    assert isinstance(server_side, HandshakeError)
    assert server_side.reason == "cookie"
    # The cookie never shows up in what is reported.
    assert "COOKIE" not in str(info.value) + str(server_side)


async def test_acceptor_with_wrong_proof_is_refused_by_initiator(net: Net) -> None:
    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await recv_term(reader)
        await send_term(writer, ("challenge", PROTOCOL_VERSION, B, 1, secrets.token_bytes(NONCE_SIZE), {}))
        await recv_term(reader)
        await send_term(writer, ("ok", bytes(32)))  # says ok, but cannot prove the cookie
        await assert_closed(reader)

    port = await net.listen(impostor)
    with pytest.raises(HandshakeError) as info:
        await initiate_to(net, port)
    assert info.value.reason == "cookie"


async def test_version_mismatch_is_refused(net: Net) -> None:
    acceptor = await net.start(Acceptor())
    reader, writer = await net.connect(acceptor.port)
    # A future version may change the rest of the hello; the refusal still says "version".
    await send_term(writer, ("hello", PROTOCOL_VERSION + 1, "whatever", "new", "fields"))
    assert await recv_term(reader) == ("refused", "version")
    await assert_closed(reader)
    server_side = await acceptor.result()
    assert isinstance(server_side, HandshakeError)
    assert server_side.reason == "version"
    assert acceptor.seen == []


async def test_initiator_reports_version_refusal(net: Net) -> None:
    async def old_node(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await recv_term(reader)
        await send_term(writer, ("refused", "version"))
        writer.close()

    port = await net.listen(old_node)
    with pytest.raises(HandshakeError) as info:
        await initiate_to(net, port)
    assert info.value.reason == "version"


@pytest.mark.parametrize("decision", ["duplicate", "not_allowed"])
async def test_accept_peer_can_refuse(net: Net, decision: str) -> None:
    acceptor = await net.start(Acceptor(decision=decision))
    with pytest.raises(HandshakeError) as info:
        await initiate_to(net, acceptor.port)
    assert info.value.reason == decision
    server_side = await acceptor.result()
    assert isinstance(server_side, HandshakeError)
    assert server_side.reason == decision
    assert acceptor.seen == [(A, 3, {"hidden": True})]


async def test_accept_peer_bad_answer_is_a_bug_not_a_refusal(net: Net) -> None:
    acceptor = await net.start(Acceptor(decision="maybe"))
    with pytest.raises(HandshakeError) as info:
        await initiate_to(net, acceptor.port)
    assert info.value.reason == "closed"
    server_side = await acceptor.result()
    assert isinstance(server_side, ValueError)


async def test_peer_claiming_our_own_name_is_refused(net: Net) -> None:
    # The reflection defence: a hello with the acceptor's own name.
    acceptor = await net.start(Acceptor())
    reader, writer = await net.connect(acceptor.port)
    await send_term(writer, hello(name=B))
    assert await recv_term(reader) == ("refused", "not_allowed")
    server_side = await acceptor.result()
    assert isinstance(server_side, HandshakeError)
    assert server_side.reason == "not_allowed"
    assert acceptor.seen == []


async def test_unexpected_peer_name_stops_the_initiator(net: Net) -> None:
    acceptor = await net.start(Acceptor(name="c@host"))
    with pytest.raises(HandshakeError) as info:
        await initiate_to(net, acceptor.port, expected_peer=B)
    assert info.value.reason == "wrong_peer"
    server_side = await acceptor.result()
    assert isinstance(server_side, HandshakeError)
    assert server_side.reason == "closed"


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # the prefix reads as ~1.2 GB: refused unread
        encode_frame(b"\xc1\xc1\xc1"),  # a frame, but not a term
        encode_frame(codec.encode(("hello", PROTOCOL_VERSION, "a@host"))),  # a term, wrong shape
        encode_frame(codec.encode(("proof", b"x" * 32))),  # a term, wrong step
        encode_frame(codec.encode(("hello", PROTOCOL_VERSION, A, 3, b"short", {}))),  # bad nonce
        struct.pack(">I", 0),  # an empty frame
    ],
)
async def test_garbage_before_hello_is_a_protocol_error_and_the_server_survives(
    net: Net, garbage: bytes
) -> None:
    acceptor = await net.start(Acceptor())
    reader, writer = await net.connect(acceptor.port)
    writer.write(garbage)
    await writer.drain()
    server_side = await acceptor.result()
    assert isinstance(server_side, HandshakeError)
    assert server_side.reason == "protocol"
    await assert_closed(reader)
    # The node keeps accepting: a good peer gets in next.
    peer, (reader, writer) = await initiate_to(net, acceptor.port)
    assert peer.name == B
    assert await acceptor.result() == PeerInfo(A, 3, {"hidden": True})
    writer.write(encode_frame(b"ok?"))
    assert await read_frame(reader) == b"?ko"


async def test_oversized_length_prefix_is_refused_without_waiting_for_it(net: Net) -> None:
    acceptor = await net.start(Acceptor(timeout=30))
    reader, writer = await net.connect(acceptor.port)
    # Just a 4-byte prefix claiming 2 GiB: refused at once, long before the
    # timeout, so the acceptor neither read nor allocated the body.
    writer.write(struct.pack(">I", 0x7FFF_FFFF))
    await writer.drain()
    server_side = await acceptor.result()
    assert isinstance(server_side, HandshakeError)
    assert server_side.reason == "protocol"
    assert "exceeds the limit" in str(server_side)
    await assert_closed(reader)


async def test_acceptor_times_out_on_a_silent_peer(net: Net) -> None:
    acceptor = await net.start(Acceptor(timeout=0.2))
    reader, _ = await net.connect(acceptor.port)
    server_side = await acceptor.result()
    assert isinstance(server_side, HandshakeError)
    assert server_side.reason == "timeout"
    await assert_closed(reader)


async def test_initiator_times_out_on_a_silent_peer(net: Net) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await assert_closed(reader)

    port = await net.listen(silent)
    with pytest.raises(HandshakeError) as info:
        await initiate_to(net, port, timeout=0.2)
    assert info.value.reason == "timeout"
    assert "await challenge" in str(info.value)


async def test_peer_hanging_up_is_reported_as_closed(net: Net) -> None:
    acceptor = await net.start(Acceptor())
    reader, writer = await net.connect(acceptor.port)
    await send_term(writer, hello())
    challenge = await recv_term(reader)
    assert challenge[0] == "challenge"
    writer.close()
    server_side = await acceptor.result()
    assert isinstance(server_side, HandshakeError)
    assert server_side.reason == "closed"


async def test_many_handshakes_at_once(net: Net) -> None:
    acceptor = await net.start(Acceptor())
    peers = await asyncio.gather(*(initiate_to(net, acceptor.port) for _ in range(20)))
    assert all(p.name == B for p, _ in peers)
    for _ in peers:
        assert isinstance(await acceptor.result(), PeerInfo)
    for _, (reader, writer) in peers:
        writer.write(encode_frame(b"ab"))
        assert await read_frame(reader) == b"ba"


async def test_bad_own_arguments_are_refused_up_front(net: Net) -> None:
    acceptor = await net.start(Acceptor())
    reader, writer = await net.connect(acceptor.port)
    for kwargs in ({"my_name": ""}, {"my_creation": -1}, {"cookie": ""}):
        args: dict[str, Any] = {"my_name": A, "my_creation": 1, "cookie": COOKIE, **kwargs}
        with pytest.raises(ValueError):
            await initiate(reader, writer, **args)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(acceptor.results.get(), 0.01)


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not available on Windows")
def test_handshake_under_uvloop() -> None:
    import uvloop

    async def scenario() -> None:
        net = Net()
        try:
            acceptor = await net.start(Acceptor())
            peer, _ = await initiate_to(net, acceptor.port)
            assert peer.name == B
            assert await acceptor.result() == PeerInfo(A, 3, {"hidden": True})
            with pytest.raises(HandshakeError) as info:
                await initiate_to(net, acceptor.port, cookie="WRONG")
            assert info.value.reason == "cookie"
        finally:
            await net.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# -- before the cookie is proven, a stranger gets nothing ------------------------------


async def test_proven_is_asked_only_once_the_proof_checks_out(net: Net) -> None:
    acceptor = await net.start(Acceptor())
    with pytest.raises(HandshakeError):
        await initiate_to(net, acceptor.port, cookie="WRONG")
    assert isinstance(await acceptor.result(), HandshakeError)
    assert acceptor.seen == [(A, 3, {"hidden": True})]  # asked, as a claim
    assert acceptor.proven_seen == []  # never recorded as proven
    peer, _ = await initiate_to(net, acceptor.port)
    assert peer.name == B
    assert acceptor.proven_seen == [(A, 3, {"hidden": True})]


@pytest.mark.parametrize("decision", ["duplicate", "not_allowed"])
async def test_proven_can_still_refuse(net: Net, decision: str) -> None:
    acceptor = await net.start(Acceptor(proven_decision=decision))
    with pytest.raises(HandshakeError) as info:
        await initiate_to(net, acceptor.port)
    assert info.value.reason == decision
    server_side = await acceptor.result()
    assert isinstance(server_side, HandshakeError) and server_side.reason == decision


# -- "alive": the acceptor is connected to the initiator already ----------------------


async def initiate_alive(net: Net, port: int, wanted: bool) -> tuple[PeerInfo, Streams]:
    reader, writer = await net.connect(port)
    peer = await initiate(
        reader, writer, my_name=A, my_creation=3, cookie=COOKIE, expected_peer=B, still_wanted=lambda: wanted
    )
    return peer, (reader, writer)


async def test_alive_goes_on_when_the_initiator_still_wants_the_connection(net: Net) -> None:
    acceptor = await net.start(Acceptor(proven_decision="alive"))
    peer, (reader, writer) = await initiate_alive(net, acceptor.port, True)
    assert peer.name == B
    server_side = await acceptor.result()
    assert isinstance(server_side, PeerInfo) and server_side.name == A
    # The stream is the caller's after the extra exchange, on both sides.
    writer.write(encode_frame(b"abc"))
    assert await asyncio.wait_for(read_frame(reader), 5) == b"cba"


async def test_alive_fails_on_both_sides_when_the_initiator_gave_the_attempt_up(net: Net) -> None:
    acceptor = await net.start(Acceptor(proven_decision="alive"))
    with pytest.raises(HandshakeError) as info:
        await initiate_alive(net, acceptor.port, False)
    assert info.value.reason == "duplicate"
    server_side = await acceptor.result()
    assert isinstance(server_side, HandshakeError) and server_side.reason == "duplicate"


async def test_alive_before_the_proof_is_a_bug_not_a_decision(net: Net) -> None:
    # Only a proven peer may be asked: before its proof the name is a claim.
    acceptor = await net.start(Acceptor(decision="alive"))
    with pytest.raises(HandshakeError):
        await initiate_to(net, acceptor.port)
    assert isinstance(await acceptor.result(), ValueError)


@pytest.mark.parametrize(
    "frame",
    [
        # Terms the general codec would build, at a cost a stranger chooses.
        encode_frame(codec.encode(("hello", PROTOCOL_VERSION, A, 3, bytes(32), {"pid": Pid("x@y", 1, 1)}))),
        encode_frame(codec.encode(("hello", PROTOCOL_VERSION, A, 3, bytes(32), {"deep": {"er": 1}}))),
        encode_frame(
            codec.encode(("hello", PROTOCOL_VERSION, A, 3, bytes(32), {f"{i}": i for i in range(17)}))
        ),
        encode_frame(codec.encode(("hello", PROTOCOL_VERSION, A, 3, bytes(32), {"x": "y" * 5000}))),
        struct.pack(">I", HANDSHAKE_MAX_FRAME + 1),
    ],
)
async def test_handshake_frames_are_decoded_strictly(net: Net, frame: bytes) -> None:
    assert HANDSHAKE_MAX_FRAME <= 4096
    acceptor = await net.start(Acceptor())
    reader, writer = await net.connect(acceptor.port)
    writer.write(frame)
    server_side = await acceptor.result()
    assert isinstance(server_side, HandshakeError) and server_side.reason == "protocol"
    assert acceptor.seen == []
    await assert_closed(reader)


async def test_own_flags_must_pass_the_peers_strict_decoding(net: Net) -> None:
    reader, writer = await net.connect(await net.listen(assert_closed_handler))
    with pytest.raises(ValueError, match="flags"):
        await initiate(reader, writer, my_name=A, my_creation=1, cookie=COOKIE, flags={"k": [1]})


async def assert_closed_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        await assert_closed(reader)


async def test_a_trickling_peer_is_cut_off_at_the_timeout(net: Net) -> None:
    # A slowloris: a valid hello, one byte at a time, never complete in time.
    acceptor = await net.start(Acceptor(timeout=0.5))
    reader, writer = await net.connect(acceptor.port)
    data = encode_frame(codec.encode(hello()))
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def trickle() -> None:
        with contextlib.suppress(OSError):
            for byte in data:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

    task = asyncio.ensure_future(trickle())
    try:
        server_side = await acceptor.result()
        assert isinstance(server_side, HandshakeError) and server_side.reason == "timeout"
        await assert_closed(reader)
        assert loop.time() - start < 2.0
    finally:
        task.cancel()


async def test_names_in_errors_are_escaped(net: Net) -> None:
    acceptor = await net.start(Acceptor())
    reader, writer = await net.connect(acceptor.port)
    await send_term(writer, hello(name="evil\nFORGED\x1b[2J" + "x" * 200))
    assert (await recv_term(reader))[0] == "challenge"
    await send_term(writer, ("proof", bytes(32)))
    assert await recv_term(reader) == ("refused", "cookie")
    server_side = await acceptor.result()
    assert isinstance(server_side, HandshakeError)
    text = str(server_side)
    assert "\n" not in text and "\x1b" not in text and "evil\\nFORGED" in text
    assert len(text) < 250

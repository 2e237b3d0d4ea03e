"""Tests for pybeam.distribution.epmd: the port mapper and its client, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pybeam import Pid, codec
from pybeam.distribution import epmd
from pybeam.distribution.epmd import EpmdError, EpmdServer, alive_name, ensure_epmd, lookup, names, register
from pybeam.distribution.framing import encode_frame, read_frame


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def mapper() -> AsyncIterator[EpmdServer]:
    async with EpmdServer(port=0) as server:
        yield server


async def raw_request(port: int, term: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode_frame(codec.encode(term)))
    await writer.drain()
    return reader, writer


async def read_reply(reader: asyncio.StreamReader) -> Any:
    return codec.decode(await asyncio.wait_for(read_frame(reader), 5))


async def hung_up(reader: asyncio.StreamReader) -> bool:
    """Whether the mapper closes the connection (after any last frames)."""
    async with asyncio.timeout(5):
        while await reader.read(4096):
            pass
    return True


async def eventually_free(name: str, port: int) -> None:
    async with asyncio.timeout(5):
        while await lookup(name, port) is not None:
            await asyncio.sleep(0.01)


def test_alive_name() -> None:
    assert alive_name("alice@box1") == "alice"
    assert alive_name("alice") == "alice"
    with pytest.raises(ValueError):
        alive_name("@box1")


def test_port_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(epmd.PORT_ENV, raising=False)
    assert epmd.epmd_port() == 4370
    monkeypatch.setenv(epmd.PORT_ENV, "5555")
    assert epmd.epmd_port() == 5555
    assert epmd.epmd_port(6666) == 6666
    monkeypatch.setenv(epmd.PORT_ENV, "nope")
    with pytest.raises(ValueError, match=epmd.PORT_ENV):
        epmd.epmd_port()


async def test_register_lookup_names(mapper: EpmdServer) -> None:
    async with await register("alice@box1", 5001, mapper.port) as alice:
        bob = await register("bob", 5002, mapper.port)
        assert alice.name == "alice"
        assert alice.port == 5001
        assert 0 < alice.creation < 2**32
        assert await lookup("alice", mapper.port) == 5001
        assert await lookup("alice@box1", mapper.port) == 5001
        assert await lookup("bob@anywhere", mapper.port) == 5002
        assert await lookup("carol", mapper.port) is None
        assert sorted(await names(mapper.port)) == [("alice", 5001), ("bob", 5002)]
        assert sorted(mapper.registered()) == [("alice", 5001), ("bob", 5002)]
        await bob.close()
    assert await names(mapper.port) == []


async def test_env_port_is_used_by_default(mapper: EpmdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(epmd.PORT_ENV, str(mapper.port))
    async with await register("dave", 5003):
        assert await lookup("dave") == 5003


async def test_close_frees_the_name_before_returning(mapper: EpmdServer) -> None:
    reg = await register("alice", 5001, mapper.port)
    await reg.close()
    assert reg.closed
    assert await lookup("alice", mapper.port) is None
    await reg.close()  # idempotent


async def test_name_is_freed_when_the_connection_drops(mapper: EpmdServer) -> None:
    reader, writer = await raw_request(mapper.port, ("register", "alice", 5001))
    assert (await read_reply(reader))[0] == "ok"
    assert await lookup("alice", mapper.port) == 5001
    writer.transport.abort()  # no goodbye, as when a node dies
    await eventually_free("alice", mapper.port)


async def test_creation_changes_on_each_registration(mapper: EpmdServer) -> None:
    creations = []
    for _ in range(3):
        reg = await register("alice", 5001, mapper.port)
        creations.append(reg.creation)
        await reg.close()
    first = creations[0]
    assert creations == [first, first % 0xFFFF_FFFF + 1, (first % 0xFFFF_FFFF + 1) % 0xFFFF_FFFF + 1]


async def test_creation_starts_at_random() -> None:
    starts = set()
    for _ in range(3):
        async with EpmdServer(port=0) as server, await register("alice", 5001, server.port) as reg:
            starts.add(reg.creation)
    assert len(starts) == 3


async def test_name_taken(mapper: EpmdServer) -> None:
    async with await register("alice", 5001, mapper.port) as first:
        with pytest.raises(EpmdError) as info:
            await register("alice@elsewhere", 5009, mapper.port)
        assert info.value.reason == "name_taken"
        assert await lookup("alice", mapper.port) == 5001
        assert not first.closed
    async with await register("alice", 5009, mapper.port):
        assert await lookup("alice", mapper.port) == 5009


@pytest.mark.parametrize(
    "junk",
    [
        struct.pack(">I", 0x7FFF_FFFF),  # huge length prefix, refused unread
        b"GET / HTTP/1.1\r\n\r\n",
        encode_frame(b"\xc1"),  # not a term
        struct.pack(">I", 0),  # empty frame
        encode_frame(codec.encode(("lookup", 42))),
        encode_frame(codec.encode(("register", "x", 0))),  # port out of range
        encode_frame(codec.encode(("register", "", 5000))),
        encode_frame(codec.encode(("bogus",))),
        encode_frame(codec.encode({"lookup": "alice"})),
        struct.pack(">I", 10) + b"trunc",  # then hang up mid-frame
    ],
)
async def test_malformed_requests_close_only_that_connection(mapper: EpmdServer, junk: bytes) -> None:
    async with await register("alice", 5001, mapper.port) as alice:
        reader, writer = await asyncio.open_connection("127.0.0.1", mapper.port)
        try:
            writer.write(junk)
            if junk.endswith(b"trunc"):
                writer.write_eof()
            await writer.drain()
            assert await hung_up(reader)
        finally:
            writer.close()
        # The mapper goes on serving, and kept the registration it had.
        assert await lookup("alice", mapper.port) == 5001
        assert not alice.closed
        async with await register("bob", 5002, mapper.port):
            assert sorted(await names(mapper.port)) == [("alice", 5001), ("bob", 5002)]


async def test_data_after_register_ends_the_registration(mapper: EpmdServer) -> None:
    reader, writer = await raw_request(mapper.port, ("register", "alice", 5001))
    try:
        assert (await read_reply(reader))[0] == "ok"
        writer.write(b"more")
        assert await hung_up(reader)
        await eventually_free("alice", mapper.port)
    finally:
        writer.close()


async def test_registration_sees_the_mapper_go_away() -> None:
    server = EpmdServer(port=0)
    await server.start()
    try:
        reg = await register("alice", 5001, server.port)
        waiter = asyncio.create_task(reg.wait_closed())
        await asyncio.sleep(0)
        assert not waiter.done()
    finally:
        await server.close()
    await asyncio.wait_for(waiter, 5)
    assert reg.closed
    await reg.close()


async def test_ensure_epmd_starts_one_or_uses_the_running_one() -> None:
    port = free_port()
    first = await ensure_epmd(port)
    assert first is not None
    try:
        assert first.port == port
        assert await ensure_epmd(port) is None
        async with await register("alice", 5001, port):
            assert await lookup("alice", port) == 5001
    finally:
        await first.close()


async def test_ensure_epmd_refuses_a_port_held_by_something_else() -> None:
    async def not_a_mapper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        writer.close()

    other = await asyncio.start_server(not_a_mapper, "127.0.0.1", 0)
    try:
        with pytest.raises(EpmdError) as info:
            await ensure_epmd(other.sockets[0].getsockname()[1])
        assert info.value.reason == "not_a_mapper"
    finally:
        other.close()
        await other.wait_closed()


async def test_ensure_epmd_says_when_what_holds_the_port_does_not_answer() -> None:
    # A mapper too busy to answer (its loop starved) is not "something that is
    # not a port mapper": the error says it did not answer in time.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client hangs up
        writer.close()

    other = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        with pytest.raises(EpmdError) as info:
            await ensure_epmd(other.sockets[0].getsockname()[1], timeout=0.3)
        assert info.value.reason == "timeout"
        assert "did not answer within 0.3s" in str(info.value)
    finally:
        other.close()
        await other.wait_closed()


async def test_unreachable_mapper() -> None:
    with pytest.raises(EpmdError) as info:
        await lookup("alice", free_port())
    assert info.value.reason == "unreachable"


async def test_silent_mapper_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        with pytest.raises(EpmdError) as info:
            await names(server.sockets[0].getsockname()[1], timeout=0.1)
        assert info.value.reason == "timeout"
    finally:
        server.close()
        await server.wait_closed()


async def test_standalone_mapper_process() -> None:
    port = free_port()
    env = {**os.environ, epmd.PORT_ENV: str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pybeam.distribution.epmd"], env=env, stderr=subprocess.PIPE
    )
    try:
        async with asyncio.timeout(8):
            while True:
                try:
                    assert await names(port) == []
                    break
                except EpmdError:
                    await asyncio.sleep(0.02)
        async with await register("alice", 5001, port):
            assert await lookup("alice", port) == 5001
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


# -- strangers at the mapper -------------------------------------------------------------


async def test_registrations_are_capped_and_the_registered_keep_their_names() -> None:
    async with EpmdServer(port=0, max_registrations=3) as server:
        held = [await register(f"n{i}", 5000 + i, server.port) for i in range(3)]
        with pytest.raises(EpmdError) as info:
            await register("one_too_many", 5100, server.port)
        assert info.value.reason == "full"
        assert sorted(server.registered()) == [("n0", 5000), ("n1", 5001), ("n2", 5002)]
        assert await lookup("n1", server.port) == 5001  # lookups still served
        await held[0].close()
        async with await register("one_too_many", 5100, server.port):
            assert await lookup("one_too_many", server.port) == 5100
        for reg in held[1:]:
            await reg.close()


async def test_connections_without_a_request_are_capped_oldest_first() -> None:
    async with EpmdServer(port=0, max_requests=4) as server:
        silent = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(10)]
        # The six oldest were closed to make room; the four newest wait for their request.
        for i, (reader, _) in enumerate(silent[:6]):
            assert await hung_up(reader), i
        assert await lookup("nobody", server.port) is None  # a real client still gets in
        for _, writer in silent:
            writer.close()
        with pytest.raises(ValueError):
            EpmdServer(port=0, max_registrations=0)


@pytest.mark.parametrize(
    "request_term",
    [
        ("lookup", Pid("x@y", 1, 1)),
        ("register", "a", 5000, {"extra": 1}),
        ("names", [1, 2]),
        ("lookup", 2**70),
    ],
)
async def test_requests_are_decoded_strictly(
    mapper: EpmdServer, request_term: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pybeam.distribution.epmd"):
        reader, writer = await raw_request(mapper.port, request_term)
        assert await hung_up(reader)
        writer.close()
    assert any("malformed request" in r.getMessage() for r in caplog.records)
    assert mapper.registered() == []


async def test_untrusted_names_are_escaped_in_the_log(
    mapper: EpmdServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pybeam.distribution.epmd"):
        async with await register("evil\nFORGED line", 5000, mapper.port):
            pass
    assert caplog.records
    assert not any("\n" in r.getMessage() for r in caplog.records)

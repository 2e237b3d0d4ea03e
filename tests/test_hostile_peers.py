"""Strangers without the cookie against real nodes (separate OS processes on 127.0.0.1).

Each test runs one attack from this process with raw sockets and checks what
the issue asks of a node under attack: a legitimate ``rpc.call`` keeps its
latency (p99 under 50 ms), the real peer can still connect, and afterwards the
node's file descriptors and memory are back to about where they were. Attacks
are bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import msgpack
import pytest

import pybeam
from pybeam import codec, rpc
from pybeam.distribution import epmd, handshake
from pybeam.distribution.framing import FrameError, encode_frame, read_frame
from pybeam.testing import LocalCluster, eventually, free_port

ClusterFactory = Callable[..., LocalCluster]

#: The issue's bound on a legitimate call's latency during an attack.
P99_LIMIT = 0.050
#: Slack allowed on the victim's descriptors and memory once an attack is over.
FD_SLACK = 8
RSS_SLACK_KB = 16 * 1024


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def peak_fds(pid: int, seconds: float) -> int:
    """The most descriptors ``pid`` had open, sampled over ``seconds``."""
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, fd_count(pid))
        await asyncio.sleep(0.02)
    return peak


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def rpc_latencies(node: str, count: int = 60, gap: float = 0.01) -> list[float]:
    """``count`` sequential calls to ``node``, each timed."""
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        assert await rpc.call(node, "operator:add", 2, 3, timeout=5) == 5
        out.append(time.perf_counter() - t0)
        await asyncio.sleep(gap)
    return out


@dataclass
class Victim:
    name: str
    port: int
    pid: int
    cluster: LocalCluster

    def usage(self) -> tuple[int, int]:
        return fd_count(self.pid), rss_kb(self.pid)


@pytest.fixture
async def victim(cluster: ClusterFactory) -> AsyncIterator[Victim]:
    c = await cluster(1).start()
    name = c.nodes[0]
    port = await epmd.lookup(name)
    assert port is not None
    await rpc_latencies(name, count=20, gap=0)  # warm up both ends
    yield Victim(name, port, c.processes[name].pid, c)


async def back_to_normal(pid: int, before: tuple[int, int]) -> None:
    """The victim's descriptors and memory return to about their level before the attack."""
    fds, rss = before
    await eventually(lambda: fd_count(pid) <= fds + FD_SLACK, timeout=15, what="descriptors back")
    assert rss_kb(pid) <= rss + RSS_SLACK_KB, (rss, rss_kb(pid))


async def assert_fast_during(node: str, attack: Awaitable[object]) -> list[float]:
    """Time legitimate calls while ``attack`` runs; the attack is stopped afterwards."""
    task = asyncio.ensure_future(attack)
    try:
        await asyncio.sleep(0.2)  # let it get going
        samples = await rpc_latencies(node)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert p99(samples) < P99_LIMIT, f"p99 {p99(samples) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms"
    return samples


def hello(name: str) -> bytes:
    return encode_frame(
        codec.encode(("hello", handshake.PROTOCOL_VERSION, name, 1, secrets.token_bytes(32), {}))
    )


class Sockets:
    """The attacker's connections, all closed at the end."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writers.append(writer)
        return reader, writer

    def close(self) -> None:
        for w in self.writers:
            w.close()
        self.writers.clear()


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    s = Sockets()
    yield s
    s.close()


# -- name squatting ------------------------------------------------------------------


async def test_hellos_claiming_a_name_do_not_keep_the_real_node_out(
    victim: Victim, beam_node: pybeam.Node, sockets: Sockets
) -> None:
    before = victim.usage()
    me = beam_node.name
    # Hellos that claim to be this node, answered with a challenge, then silence.
    for _ in range(10):
        reader, writer = await sockets.open(victim.port)
        writer.write(hello(me))
        assert (await read_frame(reader, handshake.HANDSHAKE_MAX_FRAME))[:1]
    assert pybeam.disconnect(victim.name)
    await eventually(lambda: victim.name not in pybeam.nodes())
    # The real node gets in at once, squatters or not.
    t0 = time.monotonic()
    assert await pybeam.connect(victim.name)
    assert time.monotonic() - t0 < 2.0
    await assert_fast_during(victim.name, asyncio.sleep(3600))
    sockets.close()
    await back_to_normal(victim.pid, before)


# -- costly terms before the cookie ----------------------------------------------------


def colliding_pid_map(size: int) -> bytes:
    """A dict of ``size`` pid keys that all hash alike (``id ^ creation`` is 0)."""
    node = b"x@y"
    keys = {msgpack.ExtType(codec.EXT_PID, struct.pack(">QI", i, i) + node): None for i in range(size)}
    data: bytes = msgpack.packb(keys)
    return data


async def test_hash_collision_frames_cost_the_victim_nothing(victim: Victim, sockets: Sockets) -> None:
    payload = colliding_pid_map(3400)
    assert len(payload) < 64 * 1024  # what the general codec used to accept before the cookie
    before = victim.usage()
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while sent < 40:
            reader, writer = await sockets.open(victim.port)
            writer.write(encode_frame(payload))
            sent += 1
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1):
                    while await reader.read(4096):
                        pass
            writer.close()

    await assert_fast_during(victim.name, asyncio.gather(flood(), flood()))
    assert sent >= 2
    sockets.close()
    await back_to_normal(victim.pid, before)


# -- connection caps -------------------------------------------------------------------


async def test_half_open_sockets_are_capped(victim: Victim, beam_node: pybeam.Node, sockets: Sockets) -> None:
    before = victim.usage()
    cap = await rpc.call(victim.name, "pybeam.distribution.net_kernel:default_max_handshakes")
    count = cap + 250
    for i in range(count):
        _, writer = await sockets.open(victim.port)
        writer.write(b"\x00\x00" if i % 2 else b"")  # half a length prefix, or nothing
    # The victim holds at most its cap of them, not one descriptor each.
    peak = await peak_fds(victim.pid, 1.0)
    assert peak <= before[0] + cap + FD_SLACK, (before[0], peak, cap)
    assert pybeam.disconnect(victim.name)
    await eventually(lambda: victim.name not in pybeam.nodes())
    assert await pybeam.connect(victim.name)
    await assert_fast_during(victim.name, asyncio.sleep(3600))
    assert fd_count(victim.pid) <= before[0] + cap + FD_SLACK
    sockets.close()
    await back_to_normal(victim.pid, before)


@pytest.fixture
async def mapper_node(beam_node: pybeam.Node) -> AsyncIterator[tuple[str, int, int, subprocess.Popen[bytes]]]:
    """A node that hosts its own port mapper (the first node on a host does): (name, port, mapper port, proc)."""
    mapper_port = free_port()
    name = f"mapped_{secrets.token_hex(3)}@127.0.0.1"
    cookie = beam_node.dist.cookie  # type: ignore[union-attr]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pybeam", "node", "--name", name, "--exit-on-stdin-close"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "PYBEAM_EPMD_PORT": str(mapper_port),
            "PYBEAM_COOKIE": cookie,
            "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path),
        },
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)  # type: ignore[union-attr]
        match = re.search(rb"\(port (\d+)\)", line)
        assert match, line
        yield name, int(match.group(1)), mapper_port, proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_registration_flood_at_the_port_mapper_is_capped(
    mapper_node: tuple[str, int, int, subprocess.Popen[bytes]], sockets: Sockets
) -> None:
    name, port, mapper_port, proc = mapper_node
    assert await pybeam.connect(f"{name}:{port}")
    await rpc_latencies(name, count=20, gap=0)
    before = fd_count(proc.pid), rss_kb(proc.pid)
    cap = epmd.default_max_registrations() + epmd.default_max_requests()
    count = cap + 200
    prefix = secrets.token_hex(3)

    async def register(i: int) -> None:
        reader, writer = await sockets.open(mapper_port)
        writer.write(encode_frame(codec.encode(("register", f"squat{prefix}_{i}", 40000))))
        with contextlib.suppress(OSError, TimeoutError, FrameError):
            await asyncio.wait_for(read_frame(reader), 5)

    for start in range(0, count, 100):
        await asyncio.gather(*(register(i) for i in range(start, min(count, start + 100))))
    # The mapper (in the node's process) holds at most its caps, not one descriptor each.
    peak = await peak_fds(proc.pid, 0.5)
    assert peak <= before[0] + cap + FD_SLACK, (before[0], peak, cap)
    # The registered node is still found, and served.
    assert await epmd.lookup(name, mapper_port) == port
    await assert_fast_during(name, asyncio.sleep(3600))
    sockets.close()
    await back_to_normal(proc.pid, before)
    assert await epmd.lookup(name, mapper_port) == port


# -- wrong cookies, hostile names ------------------------------------------------------


async def test_wrong_cookie_flood_with_hostile_names_cannot_forge_or_flood_the_log(
    victim: Victim, sockets: Sockets
) -> None:
    before = victim.usage()
    log_before = len(victim.cluster.logs(victim.name))
    forged = "2026-01-01 00:00:00,000 pybeam.distribution CRITICAL: FORGED"
    attempts = 300

    async def wrong_cookie(i: int) -> None:
        reader, writer = await sockets.open(victim.port)
        try:
            writer.write(hello(f"evil{i}\n{forged} {i}\x1b[2J@127.0.0.1"))
            await read_frame(reader, handshake.HANDSHAKE_MAX_FRAME)  # the challenge
            writer.write(encode_frame(codec.encode(("proof", secrets.token_bytes(32)))))
            await read_frame(reader, handshake.HANDSHAKE_MAX_FRAME)  # ("refused", "cookie")
        finally:
            writer.close()

    async def flood() -> None:
        for start in range(0, attempts, 10):
            await asyncio.gather(*(wrong_cookie(i) for i in range(start, start + 10)))

    done = asyncio.ensure_future(flood())
    await assert_fast_during(victim.name, asyncio.shield(done))
    await asyncio.wait_for(done, 30)
    written = victim.cluster.logs(victim.name)[log_before:]
    assert not any(line.startswith(forged[:20]) for line in written.splitlines()), written[:2000]
    assert "\x1b" not in written
    assert "evil" in written  # refusals are still reported, escaped
    assert len(written) < 4000, f"{len(written)} bytes logged for {attempts} refusals"
    sockets.close()
    await back_to_normal(victim.pid, before)


# -- what a stranger leaves behind -------------------------------------------------------


async def fail_handshake(port: int, name: str, how: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(hello(name))
        await read_frame(reader, handshake.HANDSHAKE_MAX_FRAME)  # the challenge
        if how == "wrong proof":
            writer.write(encode_frame(codec.encode(("proof", secrets.token_bytes(32)))))
            with contextlib.suppress(FrameError):
                await read_frame(reader, handshake.HANDSHAKE_MAX_FRAME)
    finally:
        writer.close()


async def test_failed_handshakes_leave_no_state_behind(beam_node: pybeam.Node) -> None:
    kernel = beam_node.dist
    assert kernel is not None
    port = kernel.port  # type: ignore[attr-defined]
    for start in range(0, 300, 30):
        await asyncio.gather(
            *(
                fail_handshake(port, f"claimed{i}@127.0.0.1", "wrong proof" if i % 2 else "hang up")
                for i in range(start, start + 30)
            )
        )
    # Nothing keyed by a stranger's claim outlives its connection.
    assert kernel.peers() == []  # type: ignore[attr-defined]
    await eventually(lambda: len(kernel._handshakes) == 0)  # type: ignore[attr-defined]


async def test_a_strangers_failed_hello_does_not_make_our_connect_give_up(beam_node: pybeam.Node) -> None:
    """Our connect to B lost a simultaneous connect and waits for B's own attempt;
    a stranger claiming B and failing must not make it give up."""
    kernel = beam_node.dist
    assert kernel is not None
    peer = "zz_peer@127.0.0.1"  # greater than ours: its attempt wins
    assert peer > beam_node.name
    hello_seen = asyncio.Event()

    async def busy_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # B is connecting to us at the same time, and its attempt wins.
        await read_frame(reader, handshake.HANDSHAKE_MAX_FRAME)
        writer.write(encode_frame(codec.encode(("refused", "duplicate"))))
        hello_seen.set()
        with contextlib.suppress(OSError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(busy_peer, "127.0.0.1", 0)
    b_writer: asyncio.StreamWriter | None = None
    try:
        b_port = server.sockets[0].getsockname()[1]
        connecting = asyncio.ensure_future(pybeam.connect(f"{peer}:{b_port}"))
        await asyncio.wait_for(hello_seen.wait(), 5)
        await asyncio.sleep(0.1)  # our attempt has its "duplicate" and waits for B's
        my_port = kernel.port  # type: ignore[attr-defined]
        await fail_handshake(my_port, peer, "wrong proof")
        await fail_handshake(my_port, peer, "hang up")
        await asyncio.sleep(0.1)
        assert not connecting.done(), "a stranger made our connect give up"
        # B's real attempt arrives and carries the connection.
        b_reader, b_writer = await asyncio.open_connection("127.0.0.1", my_port)
        await handshake.initiate(
            b_reader,
            b_writer,
            my_name=peer,
            my_creation=1,
            cookie=kernel.cookie,  # type: ignore[attr-defined]
            expected_peer=beam_node.name,
        )
        assert await asyncio.wait_for(connecting, 5) is True
    finally:
        if b_writer is not None:
            b_writer.close()
        pybeam.disconnect(peer)
        server.close()
        await server.wait_closed()

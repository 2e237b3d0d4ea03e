"""Bad input never takes a node down: hypothesis throws garbage at a listening node.

The target is a real node (a separate OS process). Attacks come on fresh TCP
connections: raw bytes, malformed frames, a length prefix far over the limit,
bad handshake messages, and — after a genuine handshake — undecodable frames
and malformed control messages. After each one the target must still serve a
well-behaved peer: this node's connection to it stays up and answers rpc.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pybeam
from pybeam import ANY, Pid, Ref, codec, receive, rpc
from pybeam.distribution import epmd, handshake
from pybeam.distribution.framing import encode_frame
from pybeam.testing import LocalCluster


async def idle() -> None:
    await receive(lambda m: False)


def node_here() -> str:
    return pybeam.node_name()


async def watcher(node: str, ready: Pid) -> None:
    """Watch a process on ``node`` and the connection to it; report what happened."""
    pybeam.monitor_nodes(True)
    watched = await pybeam.spawn_on(node, idle)
    pybeam.monitor(watched)
    pybeam.send(ready, "watching")
    events: list[Any] = []
    while True:
        match await receive():
            case ("events", asker):
                pybeam.send(asker, ("events", events))
            case ("DOWN", *_) as down:
                events.append(down)
            case ("nodedown", _) as nodedown:
                events.append(nodedown)


class Target:
    def __init__(self, cluster: LocalCluster, port: int, watcher: Pid, cookie: str) -> None:
        self.cluster = cluster
        self.name = cluster.nodes[0]
        self.port = port
        self.watcher = watcher
        self.cookie = cookie

    async def events(self) -> list[Any]:
        """What the watcher saw: DOWNs and nodedowns (there should be none)."""
        pybeam.send(self.watcher, ("events", pybeam.self()))
        _, events = await receive(("events", ANY), timeout=5)
        return list(events)


@pytest.fixture
async def target(cluster: Any) -> AsyncIterator[Target]:
    c = await cluster(1).start()
    name = c.nodes[0]
    port = await epmd.lookup(name)
    assert port is not None
    # A process of its own, not this task's: hypothesis runs each example in
    # a task of its own, and the watching must span all of them.
    watching = pybeam.spawn(watcher, name, pybeam.self())
    await receive("watching", timeout=5)
    kernel = pybeam.current_node().dist
    yield Target(c, port, watching, kernel.cookie)  # type: ignore[union-attr]


# -- attacks -----------------------------------------------------------------------

terms = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple),
    max_leaves=10,
)
fake_pids = st.builds(
    Pid, st.sampled_from(["x@127.0.0.1", "ghost@nowhere"]), st.integers(0, 50), st.integers(0, 5)
)
fake_refs = st.builds(Ref, st.just("x@127.0.0.1"), st.integers(0, 50), st.integers(0, 5))
# Control messages with real op codes and wrong or random fields. Not spawn
# requests (they import modules by name) nor NODES (they make the target
# connect to the addresses given): both are trusted once the cookie is proven,
# as in Erlang.
SAFE_OPS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 99, -1]
control = st.tuples(st.sampled_from(SAFE_OPS)) | st.builds(
    lambda op, rest: (op, *rest),
    st.sampled_from(SAFE_OPS),
    st.lists(terms | fake_pids | fake_refs, max_size=5),
)

before_handshake = st.one_of(
    st.binary(min_size=1, max_size=300).map(lambda b: ("raw", b)),
    st.binary(max_size=200).map(lambda b: ("raw", encode_frame(b) if b else b"\x00\x00\x00\x00")),
    st.integers(70_000, 2**32 - 1).map(lambda n: ("raw", struct.pack(">I", n) + b"x" * 16)),
    terms.map(lambda t: ("raw", encode_frame(codec.encode(t)))),
    st.tuples(st.just("hello"), terms, terms, terms).map(lambda t: ("raw", encode_frame(codec.encode(t)))),
)
after_handshake = st.one_of(
    st.binary(min_size=1, max_size=300).map(lambda b: ("after", b)),
    st.integers(2**26 + 1, 2**32 - 1).map(lambda n: ("after", struct.pack(">I", n))),
    st.binary(min_size=1, max_size=100).map(lambda b: ("after", encode_frame(b))),
    terms.map(lambda t: ("after", encode_frame(codec.encode(t)))),
    st.lists(control, min_size=1, max_size=4).map(lambda batch: ("after", encode_frame(codec.encode(batch)))),
)


async def attack(target: Target, kind: str, payload: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    try:
        if kind == "after":
            await handshake.initiate(
                reader,
                writer,
                my_name=f"attacker_{secrets.token_hex(4)}@127.0.0.1",
                my_creation=1,
                cookie=target.cookie,
                expected_peer=target.name,
                timeout=5,
            )
        writer.write(payload)
        await writer.drain()
        # Give the target a moment to read it (and, usually, to hang up on us).
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(0.05):
                while await reader.read(65536):
                    pass
    except (OSError, handshake.HandshakeError):
        pass
    finally:
        writer.close()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=st.one_of(before_handshake, after_handshake))
async def test_garbage_never_takes_the_node_down(target: Target, case: tuple[str, bytes]) -> None:
    kind, payload = case
    await attack(target, kind, payload)
    # The well-behaved peer (this node) is still connected and served.
    assert target.name in pybeam.nodes()
    assert await rpc.call(target.name, node_here, timeout=5) == target.name
    assert await target.events() == []
    assert target.cluster.alive(target.name)

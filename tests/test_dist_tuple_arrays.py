"""The tuple-native term format between nodes (the ``tuple_arrays`` flag).

Two nodes that both offer it use it after the handshake; a node that does not
(as a pybeam before it) is spoken to in the base format; either way every
term arrives with exactly its types (tuples, lists, dicts of them, pids,
refs...), whole or in fragments, and signals queued before the handshake
(encoded then in the base format) arrive intact. A peer that sends bad input
in the format it negotiated is disconnected and the node keeps serving. Real
nodes (separate OS processes), real TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

import pybeam
from pybeam import ANY, Pid, codec, net, receive, rpc
from pybeam.distribution import epmd, handshake
from pybeam.distribution.connection import Op
from pybeam.distribution.framing import encode_frame
from pybeam.testing import LocalCluster, eventually


def same(a: Any, b: Any) -> bool:
    """Equal, with the same type at every level (a list is not a tuple)."""
    if type(a) is not type(b):
        return False
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def native_to(node: str) -> bool:
    """Whether this node's connection to ``node`` uses the tuple-native format."""
    conn = pybeam.current_node().dist.connection(node)  # type: ignore[union-attr]
    assert conn is not None
    return conn.native  # type: ignore[no-any-return]


def echo_back(term: Any) -> Any:
    """What an rpc returns: its argument."""
    return term


async def echo() -> None:
    """Send every (from, term) back to from as ("echo", term)."""
    while True:
        sender, term = await receive()
        pybeam.send(sender, ("echo", term))


def samples() -> list[Any]:
    me = pybeam.self()
    return [
        (),
        [],
        [[]],
        [()],
        ([],),
        ("msg", 1),
        ["msg", 1],
        (1, [2, (3, [4, []])]),
        {"k": [1, 2], (1, (2,)): (me, [pybeam.make_ref()])},
        [{"a": [{"b": ()}]}],
        ("$gen_call", (me, pybeam.make_ref()), ("get", [1, 2])),
        list(range(300)),
        2**70,
        ("big", [b"x" * 100_000, (1, [2])]),  # fragmented (over 64 KiB)
    ]


async def _round_trips(peer: str) -> None:
    """Every sample there and back, as messages and as rpc arguments and results."""
    me = pybeam.self()
    box = await pybeam.spawn_on(peer, echo)
    for term in samples():
        pybeam.send(box, (me, term))
        _, back = await receive(("echo", ANY), timeout=30)
        assert same(back, term), (back, term)
        assert same(await rpc.call(peer, echo_back, term, timeout=30), term)
    # A burst, batched into frames, in order.
    for i in range(200):
        pybeam.send(box, (me, (i, [i])))
    for i in range(200):
        _, back = await receive(("echo", ANY), timeout=30)
        assert same(back, (i, [i]))


async def test_nodes_that_both_offer_it_use_the_tuple_native_format(cluster: Any) -> None:
    c = await cluster(1).start()
    peer = c.nodes[0]
    await _round_trips(peer)
    assert native_to(peer)
    assert await rpc.call(peer, native_to, pybeam.current_node().name, timeout=10)


async def test_a_peer_that_does_not_offer_it_is_spoken_to_in_the_base_format(epmd_port: int) -> None:
    name = f"basefmt_{secrets.token_hex(3)}@127.0.0.1"
    async with pybeam.Node(name, cookie=secrets.token_hex(8), epmd_port=epmd_port, ticktime=5):
        kernel: Any = pybeam.current_node().dist
        kernel.options.tuple_arrays = False  # as a pybeam before the flag
        async with LocalCluster(1) as c:
            peer = c.nodes[0]
            await _round_trips(peer)
            assert not native_to(peer)
            # The peer offers it, and speaks the base format all the same.
            assert not await rpc.call(peer, native_to, name, timeout=10)


async def test_signals_queued_before_the_handshake_arrive_intact(cluster: Any) -> None:
    # Queued while connecting, they are encoded in the base format; the
    # connection turns out to be tuple-native and re-encodes them.
    c = await cluster(1).start()
    peer = c.nodes[0]
    me = pybeam.self()
    box = await pybeam.spawn_on(peer, echo)
    assert native_to(peer)
    for _ in range(3):
        assert net.disconnect(peer)

        def gone() -> bool:
            return peer not in pybeam.nodes()

        await eventually(gone, timeout=20)
        terms = samples()
        for term in terms:
            pybeam.send(box, (me, term))  # the first one connects; all wait for it
        for term in terms:
            _, back = await receive(("echo", ANY), timeout=30)
            assert same(back, term), (back, term)
        assert native_to(peer)


async def _hostile(port: int, cookie: str, target: str, frame: bytes, flags: dict[str, Any]) -> None:
    """After a genuine handshake offering ``flags``, send ``frame``; wait to be hung up on."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await handshake.initiate(
            reader,
            writer,
            my_name=f"hostile_{secrets.token_hex(4)}@127.0.0.1",
            my_creation=1,
            cookie=cookie,
            expected_peer=target,
            flags=flags,
            timeout=10,
        )
        writer.write(encode_frame(frame))
        await writer.drain()
        async with asyncio.timeout(30):
            while await reader.read(65536):
                pass  # until the target closes the connection
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_bad_input_in_either_format_closes_that_connection_only(cluster: Any) -> None:
    c = await cluster(1).start()
    target = c.nodes[0]
    port = await epmd.lookup(target)
    assert port is not None
    cookie = pybeam.current_node().dist.cookie  # type: ignore[union-attr]
    assert await rpc.call(target, "os:getpid", timeout=10) > 0
    native = {"tuple_arrays": True}
    to = Pid(target, 1, 1)
    attacks: list[tuple[bytes, dict[str, Any], str]] = [
        # The base format's tuple marker, to a node that agreed on the native one.
        (codec.encode([(Op.SEND, to, "x")]), native, "not where the tuple-native format"),
        # A list marker where none goes.
        (bytes.fromhex("91 93 00 c70006 01".replace(" ", "")), native, "misplaced list marker"),
        # A frame that is a list rather than an array (tuple) of control messages.
        (codec.encode_native([(Op.SEND, to, "x")]), native, "must hold an array of control messages"),
        # The native list marker to a node that did not agree on it.
        (codec.encode_native(((Op.SEND, to, ["x"]),)), {}, "unknown ext type 6"),
        # An operation that cannot even be looked up (unhashable): bad input, not a bug.
        (codec.encode_native((({"op": 1}, to),)), native, "unknown or malformed control message ({'op'"),
    ]
    for frame, flags, expected in attacks:
        await _hostile(port, cookie, target, frame, flags)

        def logged(expected: str = expected) -> bool:
            return expected in c.logs(target)

        await eventually(logged, timeout=20)
        assert target in pybeam.nodes()
        assert await rpc.call(target, echo_back, [("still", ["served"])], timeout=10) == [
            ("still", ["served"])
        ]

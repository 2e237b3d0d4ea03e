"""Large messages travel in fragments: they do not hold up other senders.

As OTP 22+ fragments distribution messages: a 50 MB message from one process
is sent in pieces, and a small message another process sends meanwhile to the
same node arrives before it; the big message's own sender keeps its order
(per pair of processes, as BEAM guarantees). A large message whose connection
is cut mid-transfer is never delivered; a peer sending a fragment stream over
the limits, or inconsistent, is disconnected with a log line and the node
keeps serving. Real nodes (separate OS processes), real TCP; order of arrival
is asserted, never timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from typing import Any

import pytest

import pybeam
from pybeam import ANY, Pid, codec, receive, rpc
from pybeam.distribution import epmd, handshake
from pybeam.distribution.connection import Op
from pybeam.distribution.framing import encode_frame
from pybeam.testing import LocalCluster, eventually

BIG = b"x" * (50 * 1024 * 1024)


async def recorder() -> None:
    """Record the tag of every message, in order of arrival; report on ("log", asker)."""
    seen: list[Any] = []
    while True:
        msg = await receive()
        match msg:
            case ("log", Pid() as asker):
                pybeam.send(asker, ("log", seen))
            case (tag, *_):
                seen.append(tag)


async def log_of(rec: Pid) -> list[Any]:
    pybeam.send(rec, ("log", pybeam.self()))
    _, seen = await receive(("log", ANY), timeout=30)
    return list(seen)


async def big_sender(rec: Pid, told: Pid) -> None:
    pybeam.send(rec, ("big", BIG))
    pybeam.send(told, "big sent")
    pybeam.send(rec, ("a-after",))


async def small_sender(rec: Pid) -> None:
    pybeam.send(rec, ("b-small",))


async def test_small_messages_of_another_sender_overtake_a_large_one_but_not_its_own(cluster: Any) -> None:
    c = await cluster(1).start()
    rec = await pybeam.spawn_on(c.nodes[0], recorder)
    assert await log_of(rec) == []  # connected, the recorder runs
    pybeam.spawn(big_sender, rec, pybeam.self())
    await receive("big sent", timeout=30)
    pybeam.spawn(small_sender, rec)

    async def all_three() -> bool:
        return len(await log_of(rec)) == 3

    await eventually(all_three, timeout=60)
    # B's message first: it did not wait for the whole 50 MB; A's own later
    # message after A's big one (per-pair order).
    assert await log_of(rec) == ["b-small", "big", "a-after"]


async def test_a_large_message_cut_mid_transfer_is_not_delivered_and_later_traffic_works(
    cluster: Any,
) -> None:
    c = await cluster(1).start()
    node = c.nodes[0]
    rec = await pybeam.spawn_on(node, recorder)
    assert await log_of(rec) == []
    pybeam.spawn(big_sender, rec, pybeam.self())
    await receive("big sent", timeout=30)
    # Cut once a few fragments have left, long before all 50 MB have.
    sent_at_start = (pybeam.net.node_info(node) or {}).get("bytes_out", 0)
    while (info := pybeam.net.node_info(node)) is not None and info["bytes_out"] < sent_at_start + 2**20:
        await asyncio.sleep(0)
    assert pybeam.disconnect(node)
    pybeam.send(rec, ("after-cut",))  # reconnects

    async def arrived() -> bool:
        return "after-cut" in await log_of(rec)

    await eventually(arrived, timeout=30)
    assert await log_of(rec) == ["after-cut"]  # neither the big one nor what queued behind it
    assert await rpc.call(node, "os:getpid", timeout=10) > 0


async def digest_recorder() -> None:
    """As recorder, but a message (tag, payload) is recorded as (tag, its size, its sha256)."""
    seen: list[Any] = []
    while True:
        match await receive():
            case ("log", Pid() as asker):
                pybeam.send(asker, ("log", seen))
            case (tag, bytes() as payload):
                seen.append((tag, len(payload), hashlib.sha256(payload).hexdigest()))
            case (tag, *_):
                seen.append(tag)


async def tagged_big_sender(rec: Pid, tag: str, payload: bytes) -> None:
    pybeam.send(rec, (tag, payload))
    pybeam.send(rec, (f"{tag}-after",))


async def test_two_large_messages_at_once_arrive_whole_each_in_its_senders_order(cluster: Any) -> None:
    c = await cluster(1).start()
    rec = await pybeam.spawn_on(c.nodes[0], digest_recorder)
    assert await log_of(rec) == []
    # Together over the 64 MiB frame limit: the second waits for room, its sender's order kept.
    one = bytes(range(256)) * (40 * 4096)  # 40 MiB
    two = secrets.token_bytes(30 * 1024 * 1024)
    pybeam.spawn(tagged_big_sender, rec, "one", one)
    pybeam.spawn(tagged_big_sender, rec, "two", two)
    pybeam.spawn(small_sender, rec)

    async def all_five() -> bool:
        return len(await log_of(rec)) == 5

    await eventually(all_five, timeout=60)
    seen = await log_of(rec)
    assert ("one", len(one), hashlib.sha256(one).hexdigest()) in seen
    assert ("two", len(two), hashlib.sha256(two).hexdigest()) in seen
    tags = [e[0] if type(e) is tuple else e for e in seen]
    assert tags.index("one") < tags.index("one-after")
    assert tags.index("two") < tags.index("two-after")
    assert tags.index("b-small") < tags.index("one")


async def _hostile(port: int, cookie: str, target: str, batch: list[Any]) -> None:
    """After a genuine handshake, send one frame holding ``batch``; wait to be hung up on."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await handshake.initiate(
            reader,
            writer,
            my_name=f"hostile_{secrets.token_hex(4)}@127.0.0.1",
            my_creation=1,
            cookie=cookie,
            expected_peer=target,
            flags={"fragments": True},
            timeout=10,
        )
        writer.write(encode_frame(codec.encode(batch)))
        await writer.drain()
        async with asyncio.timeout(30):
            while await reader.read(65536):
                pass  # until the target closes the connection
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_hostile_fragment_streams_close_that_connection_only(cluster: Any) -> None:
    c = await cluster(1).start()
    target = c.nodes[0]
    port = await epmd.lookup(target)
    assert port is not None
    kernel = pybeam.current_node().dist
    cookie = kernel.cookie  # type: ignore[union-attr]
    assert await rpc.call(target, "os:getpid", timeout=10) > 0
    frag = Op.FRAGMENT
    attacks = {
        "over the": [(frag, 1, 2**40, 0, b"x" * 10)],  # declares far more than a frame
        "inconsistent fragment": [(frag, 1, 1000, 0, b"x" * 10), (frag, 1, 1000, 500, b"y")],
        "never started": [(frag, 7, 1000, 10, b"x")],
        "first fragment holds it all": [(frag, 3, 5, 0, b"x" * 5)],
        "inconsistent fragment of stream 2": [(frag, 2, 1000, 0, b"x" * 10), (frag, 2, 999, 10, b"y")],
    }
    for expected, batch in attacks.items():
        await _hostile(port, cookie, target, batch)

        def logged(expected: str = expected) -> bool:
            return expected in c.logs(target)

        await eventually(logged, timeout=20)
        # The well-behaved peer (this node) is still connected and served.
        assert target in pybeam.nodes()
        assert await rpc.call(target, "os:getpid", timeout=10) > 0
    assert "bad input from hostile_" in c.logs(target)


def fragmenting_to(node: str) -> int | None:
    """This node's fragment size on its connection to ``node`` (None: whole messages)."""
    conn = pybeam.current_node().dist.connection(node)  # type: ignore[union-attr]
    assert conn is not None
    return conn.fragment_size  # type: ignore[no-any-return]


async def test_a_peer_that_does_not_offer_fragments_gets_whole_messages(epmd_port: int) -> None:
    # This node does not fragment (as a pybeam before fragments): neither side does, and
    # a large message still arrives, whole and in order.
    name = f"nofrag_{secrets.token_hex(3)}@127.0.0.1"
    async with (
        pybeam.Node(name, cookie=secrets.token_hex(8), epmd_port=epmd_port, fragment_size=0, ticktime=5),
        LocalCluster(1) as c,
    ):
        peer = c.nodes[0]
        rec = await pybeam.spawn_on(peer, recorder)
        assert await log_of(rec) == []
        assert fragmenting_to(peer) is None
        assert await rpc.call(peer, fragmenting_to, name, timeout=10) is None
        pybeam.spawn(big_sender, rec, pybeam.self())
        await receive("big sent", timeout=30)

        async def both() -> bool:
            return len(await log_of(rec)) == 2

        await eventually(both, timeout=60)
        assert await log_of(rec) == ["big", "a-after"]


async def test_a_bad_fragment_size_is_refused_when_the_node_starts(epmd_port: int) -> None:
    bad: Any
    for bad in (-1, 10, 1.5):
        node = pybeam.Node(
            f"bad_{secrets.token_hex(3)}@127.0.0.1", cookie="c", epmd_port=epmd_port, fragment_size=bad
        )
        with pytest.raises(ValueError, match="fragment_size"):
            await node.start()


async def watching_recorder() -> None:
    """As recorder; ("watch", target, asker) monitors target (a pid or a (name, node))."""
    seen: list[Any] = []
    while True:
        match await receive():
            case ("watch", target, Pid() as asker):
                pybeam.monitor(target)
                pybeam.send(asker, "watching")
            case ("log", Pid() as asker):
                pybeam.send(asker, ("log", seen))
            case (tag, *_):
                seen.append(tag)


async def named_big_sender(rec: Pid, told: Pid) -> None:
    pybeam.register("fragments_big_sender")
    pybeam.send(told, "registered")
    await receive("go", timeout=30)
    pybeam.send(rec, ("big", BIG))  # then it ends: its DOWN must not overtake this


async def test_a_down_by_name_does_not_overtake_the_large_message_sent_before_it(cluster: Any) -> None:
    c = await cluster(1).start()
    rec = await pybeam.spawn_on(c.nodes[0], watching_recorder)
    pid = pybeam.spawn(named_big_sender, rec, pybeam.self())
    await receive("registered", timeout=30)
    pybeam.send(rec, ("watch", ("fragments_big_sender", pybeam.node_name()), pybeam.self()))
    await receive("watching", timeout=30)
    pybeam.send(pid, "go")

    async def both() -> bool:
        return len(await log_of(rec)) == 2

    await eventually(both, timeout=60)
    assert await log_of(rec) == ["big", "DOWN"]


async def echo() -> None:
    """Send every (pid, payload) payload back to the pid."""
    while True:
        match await receive():
            case (Pid() as to, payload):
                pybeam.send(to, payload)


async def test_large_messages_one_after_another_each_arrive(cluster: Any) -> None:
    # Each is over the busy limit (1 MB): its sender waits in drain() for the
    # fragment pump at its next receive. After the first message's pump had
    # ended, the second's drain() once found the pump's last event still set
    # and looped without ever yielding to the new pump: the node hung.
    c = await cluster(1).start()
    peer = await pybeam.spawn_on(c.nodes[0], echo)
    for size in (2 << 20, 2 << 20, 3 << 20, 100):
        payload = secrets.token_bytes(size)
        pybeam.send(peer, (pybeam.self(), payload))
        assert await receive(timeout=30) == payload


#: Several MB: many rounds of the fragment pump, so a signal that skipped the
#: sender's lane would arrive long before the message's last fragment.
SEVERAL_MB = b"y" * (8 * 1024 * 1024)


async def linking_recorder() -> None:
    """As watching_recorder; ("link", pid, asker) traps exits and links to pid."""
    seen: list[Any] = []
    while True:
        match await receive():
            case ("watch", target, Pid() as asker):
                pybeam.monitor(target)
                pybeam.send(asker, "watching")
            case ("link", Pid() as pid, Pid() as asker):
                pybeam.trap_exit(True)
                pybeam.link(pid)
                pybeam.send(asker, "linked")
            case ("log", Pid() as asker):
                pybeam.send(asker, ("log", seen))
            case (tag, *_):
                seen.append(tag)


async def big_sender_that_waits(rec: Pid, told: Pid, name: str | None) -> None:
    """Register as ``name`` (if any), then on "go" send ``rec`` several MB and
    wait to be ended by someone else."""
    if name is not None:
        pybeam.register(name)
    pybeam.send(told, "ready")
    await receive("go", timeout=30)
    pybeam.send(rec, ("big", SEVERAL_MB))
    pybeam.send(told, "sent")
    await receive("never comes")


async def crash_linked(to: Pid, told: Pid) -> None:
    """Link to ``to``, then crash on "crash": the link's exit ends ``to``."""
    pybeam.link(to)
    pybeam.send(told, "linked")
    await receive("crash", timeout=30)
    raise RuntimeError("crashes on purpose, taking its linked process along")


async def _sent_then_ended_by_another(rec: Pid, name: str | None, how: str, setup: Any) -> list[Any]:
    """Start the big sender (registered as ``name``), let ``setup(pid)`` have
    the recorder watch it, have it send its large message, end it from another
    process (``how``: "exit" for exit/2 from this one, "link" for a linked
    process that crashes), and return what the recorder saw once it saw both."""
    me = pybeam.self()
    pid = pybeam.spawn(big_sender_that_waits, rec, me, name)
    await receive("ready", timeout=30)
    await setup(pid)
    if how == "link":
        crasher = pybeam.spawn(crash_linked, pid, me)
        await receive("linked", timeout=30)
    pybeam.send(pid, "go")
    await receive("sent", timeout=30)
    # The large message is still being sent in fragments: the sender ends now,
    # in the context of another process.
    if how == "exit":
        pybeam.exit(pid, "kill")
    else:
        pybeam.send(crasher, "crash")

    async def both() -> bool:
        return len(await log_of(rec)) == 2

    await eventually(both, timeout=60)
    return await log_of(rec)


@pytest.mark.parametrize("how", ["exit", "link"])
async def test_a_down_by_name_of_a_process_ended_by_another_does_not_overtake_its_large_message(
    cluster: Any, how: str
) -> None:
    # The DOWN is sent while the dying process's links and monitors fire,
    # which runs in whoever ended it (the killer, or the crashed linked
    # process): its lane must still be the dead process's, behind the message.
    c = await cluster(1).start()
    rec = await pybeam.spawn_on(c.nodes[0], linking_recorder)
    name = f"fragments_ended_{how}"

    async def watch(pid: Pid) -> None:
        pybeam.send(rec, ("watch", (name, pybeam.node_name()), pybeam.self()))
        await receive("watching", timeout=30)

    assert await _sent_then_ended_by_another(rec, name, how, watch) == ["big", "DOWN"]


@pytest.mark.parametrize("how", ["exit", "link"])
async def test_a_link_exit_of_a_process_ended_by_another_does_not_overtake_its_large_message(
    cluster: Any, how: str
) -> None:
    c = await cluster(1).start()
    rec = await pybeam.spawn_on(c.nodes[0], linking_recorder)

    async def link(pid: Pid) -> None:
        pybeam.send(rec, ("link", pid, pybeam.self()))
        await receive("linked", timeout=30)

    assert await _sent_then_ended_by_another(rec, None, how, link) == ["big", "EXIT"]

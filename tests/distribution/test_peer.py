"""The per-peer record and its state machine (pybeam.distribution.peer).

First the transitions themselves, event by event; then the net kernel carrying
them out against a scripted peer over real TCP on 127.0.0.1 (the peer's side
of the handshake run by hand, so that each race happens in the order a test
chooses): simultaneous connect won and lost, a peer that is up connecting
again (its new attempt replaces ours only if it still wants it: "alive"), a
setup failing with signals queued (``noconnection`` once each), a message
queued while pending encoded once.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import pybeam
from pybeam import codec
from pybeam.distribution import handshake
from pybeam.distribution.connection import Op
from pybeam.distribution.framing import FrameReader, encode_frame, read_frame
from pybeam.distribution.net_kernel import NetKernel
from pybeam.distribution.peer import PENDING, TRANSITIONS, Action, Event, Peer, State, TransitionError
from pybeam.terms import NOCONNECTION, Pid
from pybeam.testing import eventually

A, E, S = Action, Event, State


def at(state: State, name: str = "b@h", **fields: Any) -> Peer:
    """A record in ``state`` (as a run of events would leave it)."""
    return Peer(name, state=state, history=[], **fields)


def state(peer: Peer) -> State:
    """Its state (a function: mypy would narrow ``peer.state`` across fire())."""
    return peer.state


# -- the transitions -----------------------------------------------------------------


def test_a_signal_for_an_unknown_node_dials() -> None:
    peer = at(S.IDLE)
    assert peer.fire(E.WANTED) == (A.DIAL,)
    assert state(peer) is S.CONNECTING and peer.pending
    # More signals while connecting change nothing: they wait in the queue.
    assert peer.fire(E.WANTED) == ()
    assert state(peer) is S.CONNECTING


def test_our_dial_comes_up() -> None:
    peer = at(S.CONNECTING)
    assert peer.fire(E.DIAL_UP) == (A.UP,)
    assert state(peer) is S.UP and not peer.pending


def test_our_dial_fails() -> None:
    peer = at(S.CONNECTING)
    assert peer.fire(E.DIAL_FAILED) == (A.FAIL,)
    assert state(peer) is S.IDLE


def test_an_incoming_attempt_of_an_unknown_node_is_accepted() -> None:
    for event in (E.PROVEN_WE_WIN, E.PROVEN_PEER_WINS):
        peer = at(S.IDLE)
        assert peer.fire(event) == (A.ACCEPT,)
        assert state(peer) is S.ACCEPTING and peer.accepting
        assert peer.fire(E.WANTED) == ()  # a signal now waits for that attempt
        assert peer.fire(E.ACCEPT_UP) == (A.UP,)
        assert state(peer) is S.UP


def test_a_second_incoming_attempt_is_refused() -> None:
    for st in (S.ACCEPTING, S.UP_PENDING):
        for event in (E.PROVEN_WE_WIN, E.PROVEN_PEER_WINS):
            peer = at(st)
            assert peer.fire(event) == (A.REFUSE,)
            assert state(peer) is st


def test_simultaneous_connect_won_by_the_greater_name() -> None:
    # On b (greater): a's attempt arrives while b dials a: refused, b's dial goes on.
    on_b = at(S.IDLE, "a@h")
    on_b.fire(E.WANTED)
    event = on_b.proven_event("b@h")
    assert event is E.PROVEN_WE_WIN
    assert on_b.fire(event) == (A.REFUSE,)
    assert state(on_b) is S.CONNECTING
    assert on_b.fire(E.DIAL_UP) == (A.UP,)
    # On a: b's attempt arrives while a dials b: a gives its own up (OTP's
    # "remarked") and accepts b's; what a queued goes over b's connection.
    on_a = at(S.IDLE, "b@h")
    on_a.fire(E.WANTED)
    event = on_a.proven_event("a@h")
    assert event is E.PROVEN_PEER_WINS
    assert on_a.fire(event) == (A.CANCEL_DIAL, A.ACCEPT)
    assert state(on_a) is S.ACCEPTING
    assert on_a.fire(E.ACCEPT_UP) == (A.UP,)
    assert state(on_a) is S.UP


def test_simultaneous_connect_lost_before_the_peers_attempt_arrives() -> None:
    # a's dial is refused as a duplicate before b's attempt reached a: wait for it.
    on_a = at(S.CONNECTING, "b@h")
    assert on_a.fire(E.DIAL_LOST_RACE) == (A.START_TIMER,)
    assert state(on_a) is S.AWAITING_PEER and on_a.pending
    assert on_a.fire(E.WANTED) == ()
    assert on_a.fire(on_a.proven_event("a@h")) == (A.CANCEL_TIMER, A.ACCEPT)
    assert state(on_a) is S.ACCEPTING
    # ...or it never does.
    on_a = at(S.AWAITING_PEER, "b@h")
    assert on_a.fire(E.TIMEOUT) == (A.FAIL,)
    assert state(on_a) is S.IDLE


def test_a_failed_incoming_attempt() -> None:
    # Nothing waits: the record goes.
    peer = at(S.ACCEPTING)
    assert peer.accept_failed_event() is E.ACCEPT_FAILED
    assert peer.fire(E.ACCEPT_FAILED) == (A.FAIL,)
    assert state(peer) is S.IDLE
    # Signals wait and we never dialled: dial ourselves.
    peer = at(S.ACCEPTING, queue=[b"queued"])
    assert peer.accept_failed_event() is E.ACCEPT_FAILED_REDIAL
    assert peer.fire(E.ACCEPT_FAILED_REDIAL) == (A.DIAL,)
    assert state(peer) is S.CONNECTING
    # Our dial lost the race to that attempt: the queue shares its fate.
    peer = at(S.ACCEPTING, queue=[b"queued"], dialled=True)
    assert peer.accept_failed_event() is E.ACCEPT_FAILED


def test_the_peer_connects_again_while_up() -> None:
    peer = at(S.UP)
    # Its initiator is asked whether it still wants it (OTP's alive).
    assert peer.fire(E.PROVEN_PEER_WINS) == (A.ALIVE,)
    assert state(peer) is S.UP_PENDING and not peer.pending  # signals still go on the old connection
    # The new connection replaces the old one: down, then up.
    assert peer.fire(E.ACCEPT_UP) == (A.CLOSE_OLD, A.DOWN, A.UP)
    assert state(peer) is S.UP
    # If the new attempt fails, or its initiator gave it up, the old connection stays.
    peer = at(S.UP_PENDING)
    assert peer.fire(E.ACCEPT_FAILED) == ()
    assert state(peer) is S.UP
    # If the old connection dies first, the new attempt carries on, pending (OTP's up_pending_nodedown).
    peer = at(S.UP_PENDING)
    assert peer.fire(E.CONN_LOST) == (A.DOWN,)
    assert state(peer) is S.ACCEPTING


def test_the_connection_is_lost() -> None:
    peer = at(S.UP)
    assert peer.fire(E.CONN_LOST) == (A.DOWN,)
    assert state(peer) is S.IDLE


def test_stopping_fails_every_pending_setup() -> None:
    for st in PENDING:
        peer = at(st)
        assert peer.fire(E.STOPPED) == (A.FAIL,)
        assert state(peer) is S.IDLE


#: The transitions as docs/distribution.md describes them, written out again:
#: every one is taken below and must land where the documentation says.
DOCUMENTED = [
    (S.IDLE, E.WANTED, S.CONNECTING, (A.DIAL,)),
    (S.IDLE, E.PROVEN_WE_WIN, S.ACCEPTING, (A.ACCEPT,)),
    (S.IDLE, E.PROVEN_PEER_WINS, S.ACCEPTING, (A.ACCEPT,)),
    (S.CONNECTING, E.WANTED, S.CONNECTING, ()),
    (S.CONNECTING, E.PROVEN_WE_WIN, S.CONNECTING, (A.REFUSE,)),
    (S.CONNECTING, E.PROVEN_PEER_WINS, S.ACCEPTING, (A.CANCEL_DIAL, A.ACCEPT)),
    (S.CONNECTING, E.DIAL_UP, S.UP, (A.UP,)),
    (S.CONNECTING, E.DIAL_LOST_RACE, S.AWAITING_PEER, (A.START_TIMER,)),
    (S.CONNECTING, E.DIAL_FAILED, S.IDLE, (A.FAIL,)),
    (S.CONNECTING, E.STOPPED, S.IDLE, (A.FAIL,)),
    (S.AWAITING_PEER, E.WANTED, S.AWAITING_PEER, ()),
    (S.AWAITING_PEER, E.PROVEN_WE_WIN, S.ACCEPTING, (A.CANCEL_TIMER, A.ACCEPT)),
    (S.AWAITING_PEER, E.PROVEN_PEER_WINS, S.ACCEPTING, (A.CANCEL_TIMER, A.ACCEPT)),
    (S.AWAITING_PEER, E.TIMEOUT, S.IDLE, (A.FAIL,)),
    (S.AWAITING_PEER, E.STOPPED, S.IDLE, (A.FAIL,)),
    (S.ACCEPTING, E.WANTED, S.ACCEPTING, ()),
    (S.ACCEPTING, E.PROVEN_WE_WIN, S.ACCEPTING, (A.REFUSE,)),
    (S.ACCEPTING, E.PROVEN_PEER_WINS, S.ACCEPTING, (A.REFUSE,)),
    (S.ACCEPTING, E.ACCEPT_UP, S.UP, (A.UP,)),
    (S.ACCEPTING, E.ACCEPT_FAILED, S.IDLE, (A.FAIL,)),
    (S.ACCEPTING, E.ACCEPT_FAILED_REDIAL, S.CONNECTING, (A.DIAL,)),
    (S.ACCEPTING, E.STOPPED, S.IDLE, (A.FAIL,)),
    (S.UP, E.WANTED, S.UP, ()),
    (S.UP, E.PROVEN_WE_WIN, S.UP_PENDING, (A.ALIVE,)),
    (S.UP, E.PROVEN_PEER_WINS, S.UP_PENDING, (A.ALIVE,)),
    (S.UP, E.CONN_LOST, S.IDLE, (A.DOWN,)),
    (S.UP_PENDING, E.WANTED, S.UP_PENDING, ()),
    (S.UP_PENDING, E.PROVEN_WE_WIN, S.UP_PENDING, (A.REFUSE,)),
    (S.UP_PENDING, E.PROVEN_PEER_WINS, S.UP_PENDING, (A.REFUSE,)),
    (S.UP_PENDING, E.ACCEPT_UP, S.UP, (A.CLOSE_OLD, A.DOWN, A.UP)),
    (S.UP_PENDING, E.ACCEPT_FAILED, S.UP, ()),
    (S.UP_PENDING, E.ACCEPT_FAILED_REDIAL, S.UP, ()),
    (S.UP_PENDING, E.CONN_LOST, S.ACCEPTING, (A.DOWN,)),
]


@pytest.mark.parametrize(("start", "event", "end", "actions"), DOCUMENTED)
def test_each_transition(start: State, event: Event, end: State, actions: tuple[Action, ...]) -> None:
    peer = at(start)
    assert peer.fire(event) == actions
    assert state(peer) is end
    assert peer.history == [(start, event, end)]


def test_the_table_holds_the_documented_transitions_and_no_others() -> None:
    assert {(s, e): (n, a) for s, e, n, a in DOCUMENTED} == TRANSITIONS


def test_an_event_that_cannot_happen_is_an_error() -> None:
    for st in State:
        for event in Event:
            if (st, event) in TRANSITIONS:
                continue
            peer = at(st)
            with pytest.raises(TransitionError, match=event.name):
                peer.fire(event)
            assert state(peer) is st and peer.history == []


def test_every_pending_state_has_a_way_up_and_a_way_out() -> None:
    for state in PENDING:
        outcomes = {TRANSITIONS[key][0] for key in TRANSITIONS if key[0] is state}
        assert S.IDLE in outcomes or S.CONNECTING in outcomes, state
        ups = {e for (s, e), (n, acts) in TRANSITIONS.items() if s is state and A.UP in acts}
        failures = {e for (s, e), (n, acts) in TRANSITIONS.items() if s is state and A.FAIL in acts}
        assert failures, state
        assert ups or state is S.AWAITING_PEER, state  # that one goes up through ACCEPTING


def test_what_crossed_is_handed_over_once() -> None:
    peer = at(S.UP, links={("l", "r")}, monitors_out={"ref": ("w", "t")}, spawns={"s": ("q", {})})
    links, monitors_out, _, spawns = peer.take_tracked()
    assert links == {("l", "r")} and monitors_out == {"ref": ("w", "t")} and spawns == {"s": ("q", {})}
    assert peer.take_tracked() == (set(), {}, {}, {})


# -- the net kernel carrying them out ------------------------------------------------------


class ScriptedPeer:
    """The far side of a connection, played by hand: a listening socket whose
    connections wait for ``release`` before answering our hello, and a way to
    dial the node under test as that peer."""

    def __init__(self, name: str, cookie: str) -> None:
        self.name = name
        self.cookie = cookie
        self.release = asyncio.Event()
        self.refuse = False
        self.hellos = 0
        self.received: list[Any] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.Future[None]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        self.hellos += 1
        await self.release.wait()
        if self.refuse:
            writer.close()
            return
        with contextlib.suppress(Exception):
            await handshake.accept(
                reader,
                writer,
                my_name=self.name,
                my_creation=1,
                cookie=self.cookie,
                accept_peer=lambda *_: "ok",
            )
            await self._read(reader)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        frames = FrameReader(reader, allow_empty=True)
        while True:
            for frame in await frames.read_frames():
                if frame:
                    self.received.extend(codec.decode(frame))

    async def dial(self, port: int, node: str) -> asyncio.StreamWriter:
        """Connect to the node under test as this peer (handshake done)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writers.append(writer)
        await handshake.initiate(
            reader, writer, my_name=self.name, my_creation=1, cookie=self.cookie, expected_peer=node
        )
        self.readers.append(asyncio.ensure_future(self._read(reader)))
        return writer

    async def abandoned_attempt(self, port: int) -> Any:
        """Dial the node under test as this peer and give the attempt up right
        after proving the cookie, as a dial cancelled by the net kernel does
        (it lost a simultaneous connect): what the node answered the proof."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            nonce = secrets.token_bytes(handshake.NONCE_SIZE)
            hello = codec.encode(("hello", handshake.PROTOCOL_VERSION, self.name, 1, nonce, {}))
            writer.write(encode_frame(hello))
            challenge = await asyncio.wait_for(read_frame(reader, handshake.HANDSHAKE_MAX_FRAME), 10)
            proof = handshake._proof(self.cookie, handshake._INITIATOR_LABEL, hello, challenge)
            writer.write(encode_frame(codec.encode(("proof", proof))))
            answer = await asyncio.wait_for(read_frame(reader, handshake.HANDSHAKE_MAX_FRAME), 10)
            return codec.decode(answer)
        finally:
            writer.close()

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def kernel(beam_node: pybeam.Node) -> NetKernel:
    dist = beam_node.dist
    assert isinstance(dist, NetKernel)
    return dist


@contextlib.asynccontextmanager
async def scripted(kernel: NetKernel, name: str) -> AsyncIterator[ScriptedPeer]:
    peer = ScriptedPeer(name, kernel.cookie)
    await peer.start()
    try:
        yield peer
    finally:
        kernel.disconnect(name)
        await peer.close()


def state_of(kernel: NetKernel, name: str) -> State:
    peer = kernel.peer(name)
    return State.IDLE if peer is None else peer.state


async def wait_state(kernel: NetKernel, name: str, state: State) -> None:
    await eventually(lambda: state_of(kernel, name) is state, 10, what=f"{name} {state.name}")


async def test_simultaneous_connect_our_attempt_wins(beam_node: pybeam.Node, kernel: NetKernel) -> None:
    name = "aa_peer@127.0.0.1"  # smaller than ours: our attempt wins
    assert name < beam_node.name
    async with scripted(kernel, name) as peer:
        connecting = asyncio.ensure_future(pybeam.connect(f"{name}:{peer.port}"))
        await eventually(lambda: peer.hellos == 1, 10, what="our dial reached the peer")
        assert state_of(kernel, name) is State.CONNECTING
        # The peer's own attempt arrives meanwhile: refused, ours goes on.
        with pytest.raises(handshake.HandshakeError) as refused:
            await peer.dial(kernel.port, beam_node.name)
        assert refused.value.reason == "duplicate"
        assert state_of(kernel, name) is State.CONNECTING
        peer.release.set()
        assert await asyncio.wait_for(connecting, 10) is True
        assert state_of(kernel, name) is State.UP


async def test_simultaneous_connect_the_peers_attempt_wins(beam_node: pybeam.Node, kernel: NetKernel) -> None:
    name = "zz_peer@127.0.0.1"  # greater than ours: its attempt wins
    assert name > beam_node.name
    async with scripted(kernel, name) as peer:
        target = Pid(name, 1, 1)
        connecting = asyncio.ensure_future(pybeam.connect(f"{name}:{peer.port}"))
        await eventually(lambda: peer.hellos == 1, 10, what="our dial reached the peer")
        record = kernel.peer(name)
        assert record is not None and record.state is State.CONNECTING
        dial = record.dial
        pybeam.send(target, "queued while connecting")
        # The peer's attempt arrives: we give ours up and take the peer's.
        await peer.dial(kernel.port, beam_node.name)
        assert await asyncio.wait_for(connecting, 10) is True
        assert state_of(kernel, name) is State.UP
        assert dial is not None and dial.cancelled()
        # What was queued went over the peer's connection.
        await eventually(
            lambda: (Op.SEND, target, "queued while connecting") in peer.received, 10, what="delivered"
        )


async def test_an_attempt_its_initiator_gave_up_does_not_replace_the_live_connection(
    kernel: NetKernel,
) -> None:
    # A simultaneous connect in which our dial is up before the peer's own
    # attempt proves the cookie here: the peer gave that attempt up when ours
    # reached it (it lost the race), so it must not replace ours. Before the
    # "alive" question (OTP's up_pending) it did: the live connection was
    # closed for one already abandoned, and the pair ended up with none.
    name = "aa_peer@127.0.0.1"
    async with scripted(kernel, name) as peer:
        peer.release.set()
        assert await pybeam.connect(f"{name}:{peer.port}")
        live = kernel.connection(name)
        assert live is not None
        pybeam.monitor_nodes(True)
        answer = await peer.abandoned_attempt(kernel.port)
        assert answer[0] == "alive"  # asked whether it still wants a new connection
        await eventually(lambda: state_of(kernel, name) is not State.UP_PENDING, 10, what="attempt over")
        assert state_of(kernel, name) is State.UP
        assert kernel.connection(name) is live and not live.closed
        assert await pybeam.receive(timeout=0.3, default=None) is None  # no nodedown
        pybeam.monitor_nodes(False)


async def test_an_attempt_its_initiator_still_wants_replaces_the_live_connection(
    beam_node: pybeam.Node, kernel: NetKernel
) -> None:
    # The peer lost the old connection (or restarted) before we noticed, and
    # connects again: its attempt answers "alive" with yes and replaces ours.
    name = "aa_peer@127.0.0.1"
    async with scripted(kernel, name) as peer:
        peer.release.set()
        assert await pybeam.connect(f"{name}:{peer.port}")
        live = kernel.connection(name)
        assert live is not None
        pybeam.monitor_nodes(True)
        await peer.dial(kernel.port, beam_node.name)
        assert await pybeam.receive(("nodedown", name), timeout=10)
        assert await pybeam.receive(("nodeup", name), timeout=10)
        assert live.closed and kernel.connection(name) not in (None, live)
        assert state_of(kernel, name) is State.UP
        pybeam.monitor_nodes(False)


async def collect(n: int, timeout: float = 10) -> list[Any]:
    """The next ``n`` messages, then a check that no more come."""
    got = [await pybeam.receive(timeout=timeout) for _ in range(n)]
    extra = await pybeam.receive(timeout=0.3, default=None)
    assert extra is None, f"one more message: {extra!r}"
    return got


async def _links_and_monitors(name: str) -> tuple[Pid, Any]:
    pybeam.trap_exit(True)
    target = Pid(name, 7, 1)
    pybeam.link(target)
    ref = pybeam.monitor(target)
    return target, ref


async def test_a_failed_dial_gives_queued_links_and_monitors_noconnection_once(
    kernel: NetKernel,
) -> None:
    name = "ghost@127.0.0.1"
    async with scripted(kernel, name) as peer:
        peer.refuse = True  # it hangs up on our hello
        connecting = asyncio.ensure_future(pybeam.connect(f"{name}:{peer.port}"))
        await eventually(lambda: peer.hellos == 1, 10, what="our dial reached the peer")
        target, ref = await _links_and_monitors(name)
        record = kernel.peer(name)
        assert record is not None and record.pending and len(record.queue) == 2
        peer.release.set()
        assert await asyncio.wait_for(connecting, 10) is False
        got = await collect(2)
        assert sorted(map(repr, got)) == sorted(
            map(repr, [("EXIT", target, NOCONNECTION), ("DOWN", ref, "process", target, NOCONNECTION)])
        )
        assert kernel.peer(name) is None
    pybeam.trap_exit(False)


async def test_links_and_monitors_queued_then_lost_get_noconnection_once(
    beam_node: pybeam.Node, kernel: NetKernel
) -> None:
    name = "zz_ghost@127.0.0.1"  # its attempt wins: ours is given up for it
    async with scripted(kernel, name) as peer:
        connecting = asyncio.ensure_future(pybeam.connect(f"{name}:{peer.port}"))
        await eventually(lambda: peer.hellos == 1, 10, what="our dial reached the peer")
        target, ref = await _links_and_monitors(name)
        # The peer's attempt comes up (the queued link and monitor go over
        # it), then the peer vanishes.
        writer = await peer.dial(kernel.port, beam_node.name)
        assert await asyncio.wait_for(connecting, 10) is True
        await eventually(lambda: len(peer.received) >= 2, 10, what="the link and monitor sent")
        writer.transport.abort()
        got = await collect(2)
        assert sorted(map(repr, got)) == sorted(
            map(repr, [("EXIT", target, NOCONNECTION), ("DOWN", ref, "process", target, NOCONNECTION)])
        )
        await wait_state(kernel, name, State.IDLE)
    pybeam.trap_exit(False)


async def test_a_message_queued_while_pending_is_encoded_once(
    kernel: NetKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "encoded_once@127.0.0.1"
    marker = ("encode me once", 12345)
    encodes = 0
    encode: Callable[[Any], bytes] = codec.encode

    def counting(term: Any) -> bytes:
        nonlocal encodes
        if type(term) is tuple and term[:1] == (Op.SEND,) and term[-1] == marker:
            encodes += 1
        return encode(term)

    monkeypatch.setattr(codec, "encode", counting)
    async with scripted(kernel, name) as peer:
        target = Pid(name, 1, 1)
        connecting = asyncio.ensure_future(pybeam.connect(f"{name}:{peer.port}"))
        await eventually(lambda: peer.hellos == 1, 10, what="our dial reached the peer")
        pybeam.send(target, marker)
        assert encodes == 1
        peer.release.set()
        assert await asyncio.wait_for(connecting, 10) is True
        await eventually(lambda: (Op.SEND, target, marker) in peer.received, 10, what="delivered")
        assert encodes == 1


async def test_signals_queued_while_pending_keep_their_order(kernel: NetKernel) -> None:
    """An unlink (or demonitor) after a link (or monitor) queued while
    connecting waits behind it, as on a pending connection in BEAM, rather
    than being dropped and leaving the peer linked."""
    name = "ordered@127.0.0.1"
    async with scripted(kernel, name) as peer:
        target = Pid(name, 3, 1)
        me = pybeam.self()
        connecting = asyncio.ensure_future(pybeam.connect(f"{name}:{peer.port}"))
        await eventually(lambda: peer.hellos == 1, 10, what="our dial reached the peer")
        pybeam.link(target)
        pybeam.unlink(target)
        ref = pybeam.monitor(target)
        pybeam.demonitor(ref)
        record = kernel.peer(name)
        assert record is not None and not record.links and not record.monitors_out
        peer.release.set()
        assert await asyncio.wait_for(connecting, 10) is True
        await eventually(lambda: len(peer.received) >= 4, 10, what="all four sent")
        assert [c[0] for c in peer.received[:4]] == [Op.LINK, Op.UNLINK, Op.MONITOR, Op.DEMONITOR]
        assert peer.received[0] == (Op.LINK, me, target)


async def test_a_lost_race_whose_winner_never_comes_fails_on_a_timer(epmd_port: int) -> None:
    """Our dial is refused as a duplicate (the peer says it is dialling us)
    and the peer's attempt never arrives: the queued link and monitor get
    noconnection once each, when the connect timeout runs out."""
    name = "zz_silent@127.0.0.1"  # greater than ours: its attempt would win

    async def refuse_as_duplicate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader, handshake.HANDSHAKE_MAX_FRAME)
        writer.write(encode_frame(codec.encode(("refused", "duplicate"))))
        with contextlib.suppress(OSError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(refuse_as_duplicate, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cookie = secrets.token_hex(8)
    try:
        async with pybeam.Node(
            "aa_timer@127.0.0.1", cookie=cookie, epmd_port=epmd_port, connect_timeout=1.0
        ) as node:
            kernel = node.dist
            assert isinstance(kernel, NetKernel)
            connecting = asyncio.ensure_future(kernel.connect(f"{name}:{port}"))
            await wait_state(kernel, name, State.AWAITING_PEER)
            target, ref = await _links_and_monitors(name)
            assert await asyncio.wait_for(connecting, 10) is False
            got = await collect(2)
            assert sorted(map(repr, got)) == sorted(
                map(repr, [("EXIT", target, NOCONNECTION), ("DOWN", ref, "process", target, NOCONNECTION)])
            )
            assert kernel.peer(name) is None
            failure = kernel.connect_failure(name)
            assert failure is not None and "did not reach us" in failure
            pybeam.trap_exit(False)
    finally:
        server.close()
        await server.wait_closed()

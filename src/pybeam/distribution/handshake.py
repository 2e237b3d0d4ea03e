"""The handshake that opens a connection between two nodes (Erlang's ``dist_util``).

Both nodes prove they hold the same cookie without sending it, learn each
other's name, creation and flags, and then hand the stream over to the
connection layer. Every message is one frame (:mod:`pybeam.distribution.framing`)
holding one term (:mod:`pybeam.codec`); frames are at most
:data:`HANDSHAKE_MAX_FRAME` bytes, so junk sent to a node's port cannot make it
allocate much. Received frames are decoded by :mod:`pybeam.distribution.strict`,
not by the general codec: a flat tuple of scalars and at most one flat dict of
str keys (the flags), with bounded sizes, so a stranger cannot make a node
build costly terms (e.g. dicts of pids with colliding hashes) before it has
proved anything.

Wire protocol, version :data:`PROTOCOL_VERSION`. A is the initiator (it
connected), B the acceptor::

    A -> B  ("hello", version, a_name, a_creation, a_nonce, a_flags)
    B -> A  ("refused", "version")                  if version differs; B closes
            ("refused", "duplicate" | "not_allowed") if B's node says so; B closes
            ("challenge", version, b_name, b_creation, b_nonce, b_flags)
    A -> B  ("proof", a_proof)                      (A closes instead if B is not the
                                                     node it expected or claims A's name)
    B -> A  ("ok", b_proof)                         if a_proof is right
            ("alive", b_proof)                      if a_proof is right but B's node is
                                                     connected to A already (see accept)
            ("refused", "cookie")                    otherwise; B closes
            ("refused", "duplicate" | "not_allowed") if a_proof is right but B's
                                                     node says so now; B closes
    A checks b_proof; if it is wrong A closes.
    After "alive" only:
    A -> B  ("alive", True | False)                 whether A still wants this connection;
                                                     False: both close

Nonces are 32 random bytes, fresh per handshake. Flags are a dict with str keys
(e.g. ``{"hidden": True}``) and scalar values (at most 16 entries, keys of at
most 64 bytes); unknown keys are ignored, for forward compatibility.
The proofs are HMAC-SHA256 keyed with the cookie (UTF-8) over a role label and
the exact bytes of the two messages that opened the session::

    a_proof = HMAC(cookie, b"pybeam-dist-v1 initiator proof\\0" || len(hello) || hello
                                                                || len(challenge) || challenge)
    b_proof = HMAC(cookie, b"pybeam-dist-v1 acceptor proof\\0"  || ...same...)

where ``hello`` and ``challenge`` are the encoded terms as sent and ``len`` is a
4-byte big-endian length. So each proof covers both names, both creations, both
nonces, the version and both flag sets: a MITM without the cookie can change
none of them, and a proof from one session or role is worthless in another.

Why the initiator proves first (unlike a plain "challenge carries the answer"
design): anyone who can reach a node's port can start a handshake, but only
someone who holds the cookie gets a MAC out of the acceptor. So port scanners
learn nothing they could brute-force offline. (The initiator only talks to
addresses it chose, and it gives its proof only after B has answered.)

Reflection: an attacker could try to replay B's own hello to B, so that B, as
acceptor, asks for exactly the proof B computes as initiator. Such a hello
carries B's own name, so both roles refuse a peer that claims to be themselves.

Like Erlang's distribution, this authenticates the peers, not the traffic: after
the handshake the stream is plain TCP. Use a private network or a tunnel.

Both sides run the whole handshake under one timeout (default
:data:`DEFAULT_TIMEOUT`, 7 s like ``net_setuptime``). Any failure raises
:class:`HandshakeError` with a :attr:`~HandshakeError.reason` and closes the
writer; on success the caller owns the (reader, writer) pair, and any bytes the
peer sent after the handshake are still in the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import logging
import secrets
import struct
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pybeam import codec

from . import strict
from .framing import FrameError, FrameTooLarge, StreamClosed, encode_frame, read_frame
from .guard import untrusted

__all__ = [
    "DEFAULT_TIMEOUT",
    "HANDSHAKE_MAX_FRAME",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "AcceptPeer",
    "Decision",
    "HandshakeError",
    "PeerInfo",
    "Reason",
    "accept",
    "initiate",
]

log = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = 1
#: Largest handshake frame. A hello holds a name (at most 1020 bytes of UTF-8),
#: a nonce and a few flags; this bounds what a stranger can make us read
#: before we know who they are.
HANDSHAKE_MAX_FRAME: Final = 4096
#: Seconds for the whole handshake, like Erlang's ``net_setuptime``.
DEFAULT_TIMEOUT: Final = 7.0
NONCE_SIZE: Final = 32
MAX_NAME_LENGTH: Final = 255
MAX_CREATION: Final = 0xFFFF_FFFF

_INITIATOR_LABEL: Final = b"pybeam-dist-v1 initiator proof\0"
_ACCEPTOR_LABEL: Final = b"pybeam-dist-v1 acceptor proof\0"
_pack_len = struct.Struct(">I").pack

#: Why a handshake failed. "wrong_peer": the acceptor is not the node we meant to
#: reach (or claims to be us); the others are as named in the module docstring,
#: "protocol" covering malformed or unexpected frames and "closed" a peer that
#: hung up.
Reason = Literal[
    "cookie", "version", "duplicate", "not_allowed", "timeout", "protocol", "closed", "wrong_peer"
]

#: The acceptor's verdict on a peer, before and after the cookie is checked (see
#: :func:`accept`); "alive" only after.
Decision = Literal["ok", "alive", "duplicate", "not_allowed"]
#: ``accept_peer(peer_name, peer_creation, peer_flags) -> "ok" | "duplicate" | "not_allowed"``
AcceptPeer = Callable[[str, int, Mapping[str, Any]], str]

# Refusals a peer may send us, and which reason each becomes.
_REFUSALS: Final[dict[str, Reason]] = {
    "version": "version",
    "duplicate": "duplicate",
    "not_allowed": "not_allowed",
    "cookie": "cookie",
}
# accept_peer's answers that refuse the peer, and the reason each becomes.
_DECISIONS: Final[dict[str, Reason]] = {"duplicate": "duplicate", "not_allowed": "not_allowed"}


class HandshakeError(Exception):
    """The handshake failed; :attr:`reason` says why (see :data:`Reason`)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who is at the other end of a finished handshake."""

    name: str
    creation: int
    flags: dict[str, Any] = field(default_factory=dict)


class State(enum.Enum):
    """Where a handshake is. Initiator: SEND_HELLO -> AWAIT_CHALLENGE -> SEND_PROOF
    -> AWAIT_OK -> UP. Acceptor: AWAIT_HELLO -> CHECK_PEER -> SEND_CHALLENGE ->
    AWAIT_PROOF -> SEND_OK -> UP. After an "alive" the initiator passes through
    SEND_ALIVE and the acceptor through AWAIT_ALIVE."""

    SEND_HELLO = "send hello"
    AWAIT_CHALLENGE = "await challenge"
    SEND_PROOF = "send proof"
    AWAIT_OK = "await ok"
    AWAIT_HELLO = "await hello"
    CHECK_PEER = "check peer"
    SEND_CHALLENGE = "send challenge"
    AWAIT_PROOF = "await proof"
    SEND_OK = "send ok"
    SEND_ALIVE = "send alive"
    AWAIT_ALIVE = "await alive"
    UP = "up"


def _proof(cookie: str, label: bytes, hello: bytes, challenge: bytes) -> bytes:
    mac = hmac.new(cookie.encode("utf-8"), label, hashlib.sha256)
    mac.update(_pack_len(len(hello)))
    mac.update(hello)
    mac.update(_pack_len(len(challenge)))
    mac.update(challenge)
    return mac.digest()


def _valid_name(name: object) -> bool:
    return type(name) is str and 0 < len(name) <= MAX_NAME_LENGTH


def _valid_creation(creation: object) -> bool:
    # type() rather than isinstance(): True is an int, but not a creation.
    return type(creation) is int and 0 <= creation <= MAX_CREATION


def _valid_nonce(nonce: object) -> bool:
    return type(nonce) is bytes and len(nonce) == NONCE_SIZE


def _valid_flags(flags: object) -> bool:
    return isinstance(flags, dict) and all(type(k) is str for k in flags)


def _valid_intro(name: object, creation: object, nonce: object, flags: object) -> bool:
    """Whether the fields of a hello or challenge have the right types and sizes."""
    return _valid_name(name) and _valid_creation(creation) and _valid_nonce(nonce) and _valid_flags(flags)


def _check_own(
    my_name: str, my_creation: int, cookie: str, flags: Mapping[str, Any] | None
) -> dict[str, Any]:
    if not _valid_name(my_name):
        raise ValueError(f"node name must be a str of 1..{MAX_NAME_LENGTH} characters")
    if not _valid_creation(my_creation):
        raise ValueError(f"creation must be an int in 0..{MAX_CREATION}")
    if not cookie:
        raise ValueError("cookie must not be empty")
    own = dict(flags or {})
    if not _valid_flags(own):
        raise ValueError("flag names must be str")
    # What we send must pass the peer's strict decoding (see strict).
    try:
        strict.decode(codec.encode(("flags", own)))
    except (codec.EncodeError, codec.DecodeError) as e:
        raise ValueError(f"flags must be a small dict of str keys to scalar values: {e}") from None
    return own


class _Session:
    """One side of a handshake in progress: its stream and its state."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str) -> None:
        self.reader = reader
        self.writer = writer
        self.role = role
        self.state: State = State.SEND_HELLO if role == "initiator" else State.AWAIT_HELLO

    def error(self, reason: Reason, detail: str) -> HandshakeError:
        return HandshakeError(reason, f"{detail} ({self.role}, state {self.state.value!r})")

    async def send(self, msg: tuple[Any, ...]) -> bytes:
        """Send one term; return its encoding (the proofs cover hello and challenge)."""
        payload = codec.encode(msg)
        self.writer.write(encode_frame(payload))
        try:
            await self.writer.drain()
        except ConnectionError as e:
            raise self.error("closed", f"connection lost while sending: {e}") from None
        return payload

    async def refuse(self, reason: str) -> None:
        """Tell the peer why we give up; best effort, as we close right after."""
        with contextlib.suppress(HandshakeError):
            await self.send(("refused", reason))

    async def recv(self) -> tuple[bytes, Any]:
        """Receive one frame; return its bytes and the term it holds."""
        try:
            payload = await read_frame(self.reader, HANDSHAKE_MAX_FRAME)
        except StreamClosed as e:
            raise self.error("closed", str(e)) from None
        except FrameTooLarge as e:
            raise self.error("protocol", f"{e}; is this a pybeam node?") from None
        except FrameError as e:
            raise self.error("protocol", str(e)) from None
        except ConnectionError as e:
            raise self.error("closed", f"connection lost: {e}") from None
        try:
            return payload, strict.decode(payload)
        except codec.DecodeError as e:
            raise self.error("protocol", f"malformed handshake message: {e}") from None

    def refused(self, reason: object) -> HandshakeError:
        """The error for a ("refused", reason) from the peer."""
        if isinstance(reason, str) and reason in _REFUSALS:
            return self.error(_REFUSALS[reason], f"refused by peer: {reason}")
        return self.error("protocol", f"refused by peer for an unknown reason {untrusted(reason)}")

    def unexpected(self, msg: object) -> HandshakeError:
        # Show only the start of the term: it may be large, and it is not ours to log.
        return self.error("protocol", f"unexpected message {_abbrev(msg)}")


def _abbrev(msg: object) -> str:
    return untrusted(msg)


async def _run(session: _Session, flow: Coroutine[Any, Any, PeerInfo], timeout: float) -> PeerInfo:
    """Run one side's steps under the timeout; on any failure close the writer."""
    try:
        async with asyncio.timeout(timeout):
            peer = await flow
    except TimeoutError:
        err = session.error("timeout", f"no complete handshake within {timeout} s")
        # Not close(): with a peer that does not read, close() would keep the
        # socket open until our unsent bytes drained, which may be never.
        session.writer.transport.abort()
    except HandshakeError as e:
        err = e
    except BaseException:
        # Cancellation, or a bug such as accept_peer raising: not a handshake
        # failure, so let it through, but do not leave the socket open.
        session.writer.close()
        raise
    else:
        session.state = State.UP
        return peer
    session.writer.close()
    log.debug("handshake failed: %s", err)
    raise err


async def initiate(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    my_name: str,
    my_creation: int,
    cookie: str,
    expected_peer: str | None = None,
    flags: Mapping[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    still_wanted: Callable[[], bool] | None = None,
) -> PeerInfo:
    """Run the initiator's side over a connection we opened; return who answered.

    ``expected_peer``, if given, is the node name we meant to reach: any other
    name fails with reason ``"wrong_peer"`` before we send our proof. When the
    acceptor is connected to us already and asks whether we still want this
    new connection ("alive"), ``still_wanted()`` answers (None: yes); no fails
    with reason ``"duplicate"``. Raises :class:`HandshakeError`; the writer is
    closed on failure.
    """
    own_flags = _check_own(my_name, my_creation, cookie, flags)
    session = _Session(reader, writer, "initiator")
    return await _run(
        session,
        _initiator_steps(session, my_name, my_creation, cookie, expected_peer, own_flags, still_wanted),
        timeout,
    )


async def _initiator_steps(
    s: _Session,
    my_name: str,
    my_creation: int,
    cookie: str,
    expected_peer: str | None,
    flags: dict[str, Any],
    still_wanted: Callable[[], bool] | None,
) -> PeerInfo:
    s.state = State.SEND_HELLO
    nonce = secrets.token_bytes(NONCE_SIZE)
    hello = await s.send(("hello", PROTOCOL_VERSION, my_name, my_creation, nonce, flags))

    s.state = State.AWAIT_CHALLENGE
    challenge, msg = await s.recv()
    match msg:
        case ("challenge", version, name, creation, peer_nonce, peer_flags):
            pass
        case ("refused", reason):
            raise s.refused(reason)
        case _:
            raise s.unexpected(msg)
    if version != PROTOCOL_VERSION:
        raise s.error("version", f"peer speaks version {_abbrev(version)}, we speak {PROTOCOL_VERSION}")
    if not _valid_intro(name, creation, peer_nonce, peer_flags):
        raise s.error("protocol", f"malformed challenge {_abbrev(msg)}")
    if name == my_name:
        # See "Reflection" in the module docstring.
        raise s.error("wrong_peer", "the peer claims to be this node")
    if expected_peer is not None and name != expected_peer:
        raise s.error("wrong_peer", f"expected {expected_peer!r} but {untrusted(name)} answered")

    s.state = State.SEND_PROOF
    await s.send(("proof", _proof(cookie, _INITIATOR_LABEL, hello, challenge)))

    s.state = State.AWAIT_OK
    _, msg = await s.recv()
    match msg:
        case ("ok" | "alive" as answer, proof):
            expected = _proof(cookie, _ACCEPTOR_LABEL, hello, challenge)
            if type(proof) is not bytes or not hmac.compare_digest(proof, expected):
                raise s.error(
                    "cookie", f"{untrusted(name)} accepted us but its proof is wrong: different cookie"
                )
        case ("refused", reason):
            raise s.refused(reason)
        case _:
            raise s.unexpected(msg)
    if answer == "alive":
        # The peer is connected to us already (dist_util's "alive" status):
        # it replaces that connection with this one only if we still want
        # this one, rather than an attempt of ours that has been given up.
        s.state = State.SEND_ALIVE
        wanted = still_wanted is None or still_wanted()
        await s.send(("alive", wanted))
        if not wanted:
            raise s.error("duplicate", "the peer is connected to us already, and this attempt was given up")
    return PeerInfo(name, creation, peer_flags)


async def accept(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    my_name: str,
    my_creation: int,
    cookie: str,
    accept_peer: AcceptPeer,
    proven: AcceptPeer | None = None,
    flags: Mapping[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cookie_for: Callable[[str], str] | None = None,
) -> PeerInfo:
    """Run the acceptor's side over a connection a peer opened; return who it is.

    ``cookie_for(peer_name)``, if given, picks the cookie to check that peer's
    proof with and to prove ours (``cookie`` otherwise): as OTP's
    ``dist_util`` takes ``auth:get_cookie(Node)`` for an incoming connection,
    so that a cookie set for one node (``erlang:set_cookie/2``) holds both
    ways. A stranger claiming that name still needs that cookie.

    ``accept_peer(peer_name, peer_creation, peer_flags)`` is the node's policy,
    called once the hello is in and before we send our challenge. It returns
    ``"ok"`` to go on, ``"not_allowed"`` to refuse the peer, or ``"duplicate"``
    when the node already has (or is setting up) a connection to that peer.
    Anything else is a bug and raises :class:`ValueError`. It runs *before* the
    peer has proved the cookie, when the name is only a claim: it must only
    decide, never record or act, or a stranger could use any name to change
    the node's state.

    ``proven``, if given, is called the same way once the peer's proof has
    checked out and before we answer ``"ok"``: the first moment the name is
    known to be the peer's. Its answer means the same; ``"ok"`` from it may
    record the peer (e.g. reserve the name so that a second incoming attempt is
    a duplicate), since from then on only a failure to send ``"ok"`` can stop
    the handshake. It may also answer ``"alive"``: the node is connected to
    that peer already, so the initiator is asked whether it still wants this
    new connection, and the handshake succeeds only if it answers yes (it fails
    with reason ``"duplicate"`` if no, ``"closed"`` if the initiator hung up).

    Simultaneous connect, as Erlang resolves it (``net_kernel``'s
    ``accept_pending`` and ``dist_util``'s ``mark_pending``): when A and B
    connect to each other at once, each acceptor finds its own outgoing attempt
    to the peer pending. The node with the greater name answers ``nok`` (here
    ``"duplicate"``) and keeps its own attempt; the smaller one kills its own
    attempt and answers ``ok_simultaneous`` (here ``"ok"``). So the connection
    that survives is the one *initiated by the node with the greater name*, on
    both sides, with no extra round trip. When the acceptor finds the peer
    already *up*, Erlang asks the initiator whether it still wants a new
    connection (``alive``, answered ``true``/``false``): yes from a peer that
    restarted or lost the old connection before we noticed, no (or no answer)
    from an attempt the initiator gave up, e.g. one that lost a simultaneous
    connect but proved the cookie here only after the winner was up. So does
    ``proven``'s ``"alive"``, which the net kernel answers for a peer that is up.
    The net kernel applies the simultaneous-connect rule in ``proven``, after
    the peer's proof: a peer without the cookie is then refused for that, at
    once, rather than told to wait for an attempt of ours.

    Raises :class:`HandshakeError`; the writer is closed on failure.
    """
    own_flags = _check_own(my_name, my_creation, cookie, flags)
    session = _Session(reader, writer, "acceptor")
    return await _run(
        session,
        _acceptor_steps(session, my_name, my_creation, cookie, accept_peer, proven, own_flags, cookie_for),
        timeout,
    )


async def _acceptor_steps(
    s: _Session,
    my_name: str,
    my_creation: int,
    cookie: str,
    accept_peer: AcceptPeer,
    proven: AcceptPeer | None,
    flags: dict[str, Any],
    cookie_for: Callable[[str], str] | None = None,
) -> PeerInfo:
    s.state = State.AWAIT_HELLO
    hello, msg = await s.recv()
    match msg:
        # Check the version before the shape, so that a later version may change
        # the rest of the hello and still get a clear "version" refusal.
        case ("hello", version, *_) if version != PROTOCOL_VERSION:
            await s.refuse("version")
            raise s.error("version", f"peer speaks version {_abbrev(version)}, we speak {PROTOCOL_VERSION}")
        case ("hello", _, name, creation, peer_nonce, peer_flags) if _valid_intro(
            name, creation, peer_nonce, peer_flags
        ):
            pass
        case _:
            raise s.unexpected(msg)

    s.state = State.CHECK_PEER
    if name == my_name:
        # See "Reflection" in the module docstring.
        await s.refuse("not_allowed")
        raise s.error("not_allowed", "the peer claims to be this node")
    await _decide(s, accept_peer, name, creation, peer_flags)
    if cookie_for is not None:
        cookie = cookie_for(name)

    s.state = State.SEND_CHALLENGE
    nonce = secrets.token_bytes(NONCE_SIZE)
    challenge = await s.send(("challenge", PROTOCOL_VERSION, my_name, my_creation, nonce, flags))

    s.state = State.AWAIT_PROOF
    _, msg = await s.recv()
    match msg:
        case ("proof", proof):
            expected = _proof(cookie, _INITIATOR_LABEL, hello, challenge)
            if type(proof) is not bytes or not hmac.compare_digest(proof, expected):
                await s.refuse("cookie")
                raise s.error("cookie", f"{untrusted(name)}'s proof is wrong: different cookie")
        case ("refused", reason):
            raise s.refused(reason)
        case _:
            raise s.unexpected(msg)
    alive = False
    if proven is not None:
        alive = await _decide(s, proven, name, creation, peer_flags, alive_ok=True)

    s.state = State.SEND_OK
    await s.send(("alive" if alive else "ok", _proof(cookie, _ACCEPTOR_LABEL, hello, challenge)))
    if alive:
        s.state = State.AWAIT_ALIVE
        _, msg = await s.recv()
        match msg:
            case ("alive", True):
                pass
            case ("alive", False):
                raise s.error("duplicate", f"{untrusted(name)} gave this attempt up")
            case _:
                raise s.unexpected(msg)
    return PeerInfo(name, creation, peer_flags)


async def _decide(
    s: _Session,
    policy: AcceptPeer,
    name: str,
    creation: int,
    flags: dict[str, Any],
    *,
    alive_ok: bool = False,
) -> bool:
    """Ask the node's policy about the peer; refuse it and raise unless the
    answer is "ok" (or, with ``alive_ok``, "alive": then return True)."""
    decision = policy(name, creation, flags)
    refusal = _DECISIONS.get(decision)
    if refusal is not None:
        await s.refuse(refusal)
        raise s.error(refusal, f"{untrusted(name)} refused by this node")
    if decision == "alive" and alive_ok:
        return True
    if decision != "ok":
        allowed = "'ok', 'alive'" if alive_ok else "'ok'"
        raise ValueError(f"accept_peer returned {decision!r}, not {allowed}, 'duplicate' or 'not_allowed'")
    return False

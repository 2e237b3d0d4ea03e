"""One connection to another node, after the handshake: framing, batching, ticks.

Signals to the peer are *control messages*: tuples whose first item is an
operation code (:class:`Op`). Each is encoded when it is queued, so a value that
cannot travel raises at the sender's ``send`` and nothing else is affected.
The first control message of an event-loop iteration is written at once (in a
frame of its own) when nothing waits before it, so a request or a reply waits
for no flush; everything else queued during the iteration leaves in one frame,
at its end, whose term is the list of those control messages: one system call
and one decode for a burst, instead of one per message. An empty frame is a
tick. This batching is the only one on the way out: the frame writer under it
hands each frame to the transport at once (:meth:`FrameWriter.write_now`).

Reading: once started, the connection is its transport's protocol, and each
arrival is split into frames, decoded and dispatched in ``data_received``,
with no reader task in between (see :meth:`Connection.start`).

Large messages, as OTP 22+'s fragmented distribution messages: one encoded
larger than ``fragment_size`` (when both sides offered the ``fragments``
handshake flag) goes to its sender's *lane*, and a pump task sends it as
:attr:`Op.FRAGMENT` control messages, a few at a time, only as the transport
empties; other senders' messages go between them. The sender's later signals
wait in its lane, so order is kept per sender (``sender_of`` says whose a
control message is, unless the caller of :meth:`Connection.send` does). The
reader reassembles each stream within the frame limit and dispatches the
whole message; anything inconsistent closes the connection. A connection
closed mid-stream loses the message (at most once).

Heartbeats follow ``net_ticktime``: a tick is sent when nothing else was sent for
``ticktime / 4``, and the peer is declared down when nothing at all arrived in
four consecutive periods of ``ticktime / 4`` (so after ``ticktime`` to
``1.25 * ticktime`` of silence). Then the connection closes, and its owner (the net kernel) fires
``noconnection`` for every link and monitor that crossed it.

Backpressure, as BEAM's ``dist_buf_busy_limit``: the bytes queued to the peer
(not yet taken by the kernel) are watched. Above ``busy_limit`` the connection
is *busy*: the net kernel suspends the sending process at its next ``receive``
until :meth:`Connection.drain` sees the buffer below the limit again. Above
``hard_limit`` (far higher: reached only by code that sends without ever
awaiting) the connection is closed, as for a peer that stopped answering: a
nodedown, ``noconnection`` for every link and monitor, rather than unbounded memory.

What a connection does not know: what the signals mean, and what crossed it
(the net kernel's per-peer record, :class:`~pybeam.distribution.peer.Peer`,
keeps that). It hands every decoded control message to the function its
owner gave it.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import traceback
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Final, cast

from .. import codec
from ..logtext import clip, short
from ..terms import Pid, Ref
from .busy_wait import BusyWait
from .framing import DEFAULT_MAX_FRAME, HEADER_SIZE, FrameDecoder, FrameError, FrameWriter, StreamClosed
from .handshake import PeerInfo

__all__ = [
    "DEFAULT_BUSY_LIMIT",
    "DEFAULT_FRAGMENT_SIZE",
    "DEFAULT_HARD_LIMIT",
    "DEFAULT_TICKTIME",
    "MIN_FRAGMENT_SIZE",
    "Connection",
    "Op",
    "ProtocolError",
    "SystemLimit",
    "encode_control",
]

logger = logging.getLogger("pybeam.distribution")

#: Seconds, as Erlang's ``net_ticktime`` default.
DEFAULT_TICKTIME: Final = 60.0
#: Most control messages put in one frame.
_MAX_BATCH: Final = 4096
#: Bytes queued to a peer above which senders are suspended (BEAM's dist_buf_busy_limit).
DEFAULT_BUSY_LIMIT: Final = 1024 * 1024
#: The largest write buffer water mark a transport takes (uvloop's are C ints).
_MAX_WATER_MARK: Final = 2**31 - 1
#: Bytes queued to a peer above which the connection is closed.
DEFAULT_HARD_LIMIT: Final = 128 * 1024 * 1024
#: Encoded control messages larger than this travel in fragments of this
#: size (as OTP 22+ fragments distribution messages), so that a large message
#: does not hold up other senders' messages for its whole transfer.
DEFAULT_FRAGMENT_SIZE: Final = 64 * 1024
#: The smallest fragment size a node may be given (smaller only costs).
MIN_FRAGMENT_SIZE: Final = 1024
#: Fragments of one sender's message sent per round, at most (other
#: senders' messages go between rounds).
_ROUND: Final = 16
#: Fragment streams being reassembled from one peer, at most.
MAX_FRAGMENT_STREAMS: Final = 64


class Op:
    """Operation codes of control messages; the fields follow each name.

    Plain ints, not an IntEnum: the codec sends exact types only.
    """

    SEND = 1  # (to_pid, msg)
    SEND_NAME = 2  # (name, msg)
    LINK = 3  # (from_pid, to_pid)
    UNLINK = 4  # (from_pid, to_pid)
    EXIT = 5  # (from_pid, to_pid, reason)                 exit/2
    LINK_EXIT = 6  # (from_pid, to_pid, reason)            a linked process ended
    MONITOR = 7  # (watcher_pid, target_pid_or_name, ref)
    DEMONITOR = 8  # (watcher_pid, target_pid_or_name, ref)
    DOWN = 9  # (watcher_pid, ref, item, reason)
    SPAWN_REQUEST = 10  # (ref, from_pid, "module:function", args, {"link": bool, "monitor": bool, "reply": bool | "error_only"})
    SPAWN_REPLY = 11  # (ref, to_pid, pid | ("error", message))
    NODES = 12  # (["name@host:port", ...])                 for the full mesh
    FRAGMENT = 13  # (stream_id, total_size, offset, chunk)   a piece of a large control message


_SEND: Final = Op.SEND
_FRAGMENT: Final = Op.FRAGMENT


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed control message."""


class SystemLimit(ValueError):
    """A control message too large for a frame (BEAM's ``system_limit``).

    Raised to whoever tried to send it, before anything is queued: the
    message, or the term in it, must be made smaller (or the node's
    ``max_frame`` larger, on both sides).
    """

    def __init__(self, size: int, max_frame: int) -> None:
        super().__init__(
            f"system_limit: the term is {size:,} bytes encoded, over the {max_frame:,}-byte frame limit"
        )
        self.size = size
        self.max_frame = max_frame


#: Bytes of a frame not available to control messages: its length prefix and
#: the array header of its batch.
_FRAME_OVERHEAD: Final = 8


def encode_control(control: tuple[Any, ...], max_frame: int) -> bytes:
    """Encode a control message (in the base format) for a connection whose
    frames are at most ``max_frame``.

    Raises :class:`pybeam.codec.EncodeError` if it holds something that cannot
    travel and :class:`SystemLimit` if it is too large for a frame.
    """
    data = codec.encode(control)
    if len(data) > max_frame - _FRAME_OVERHEAD:
        raise SystemLimit(len(data), max_frame)
    return data


_pack_length = struct.Struct(">I").pack
#: An empty frame: the tick.
_TICK: Final = _pack_length(0)
_TICK_SIZE: Final = len(_TICK)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


#: The header of a frame holding one control message: length, then a 1-item array.
_single_frame: Final = struct.Struct(">IB").pack
_ONE: Final = 0x91


def _single_frame_of(data: bytes) -> bytes:
    return _single_frame(len(data) + 1, _ONE) + data


#: (Op.SEND, to, msg) is encoded as this head, then ``msg``: the encoding of
#: the tuple up to its last item, which is the same for every message to
#: ``to``. Keyed by id(to), holding ``to`` (so the id is not reused while cached).
_send_heads: dict[int, tuple[Pid, bytes]] = {}
#: The same in the tuple-native format.
_native_send_heads: dict[int, tuple[Pid, bytes]] = {}
_SEND_HEADS_LIMIT: Final = 4096


def _send_head(to: Pid, native: bool) -> bytes:
    # What encode((Op.SEND, to, msg)) puts before msg's encoding.
    if native:
        heads, head = _native_send_heads, codec.encode_native((Op.SEND, to, None))[:-1]
    else:
        heads, head = _send_heads, codec.encode((Op.SEND, to, None))[:-1]
    if len(heads) >= _SEND_HEADS_LIMIT:
        heads.clear()
    heads[id(to)] = (to, head)
    return head


#: A frame's length prefix, read (FrameDecoder's, for data_received's shortcut).
_frame_length: Final = struct.Struct(">I").unpack_from

# What the tuple-native encodings of a DOWN and of a spawn request start
# with: a fixarray header and the operation (a positive fixint).
_DOWN_HEAD: Final = bytes((0x95, Op.DOWN))
_SPAWN_REQUEST_HEAD: Final = bytes((0x96, Op.SPAWN_REQUEST))
#: The encodings of the spawn requests' options the net kernel makes (a few).
_opts_encodings: dict[tuple[Any, ...], bytes] = {}


def _down_bytes(watcher: Pid, ref: Ref, item: Any, reason: Any) -> bytes:
    """``codec.encode_native((Op.DOWN, watcher, ref, item, reason))``, put
    together from the cached encodings of the pids and the ref."""
    return b"".join(
        (
            _DOWN_HEAD,
            codec.pid_bytes(watcher),
            codec.ref_bytes(ref),
            codec.pid_bytes(item) if type(item) is Pid else codec.encode_native(item),
            codec.encode_native(reason),
        )
    )


def _spawn_request_bytes(
    ref: Ref, requester: Pid, fn: str, args: tuple[Any, ...], opts: dict[str, Any]
) -> bytes:
    """``codec.encode_native((Op.SPAWN_REQUEST, ref, requester, fn, args, opts))``
    as :func:`_down_bytes` does it, for ``opts`` with the keys ``link``,
    ``monitor`` and ``reply`` (the net kernel's), whose encoding is cached."""
    key = (opts["link"], opts["monitor"], opts["reply"])
    tail = _opts_encodings.get(key)
    if tail is None:
        if len(_opts_encodings) >= 64:
            _opts_encodings.clear()
        tail = _opts_encodings[key] = codec.encode_native(opts)
    return b"".join(
        (
            _SPAWN_REQUEST_HEAD,
            codec.ref_bytes(ref),
            codec.pid_bytes(requester),
            # (fn, args) as one tuple of two, less its 1-byte array header.
            codec.encode_native((fn, args))[1:],
            tail,
        )
    )


def _take_buffered(reader: asyncio.StreamReader) -> tuple[bytes, bool, BaseException | None, bool]:
    """What the handshake's stream holds and knows: (bytes read past the
    handshake, eof seen, error seen, reading paused). Empties it.

    StreamReader has no public way to take its buffer without awaiting; these
    attributes have been the same since Python 3.4 (and uvloop uses asyncio's).
    """
    buf: bytearray = reader._buffer  # type: ignore[attr-defined]
    data = bytes(buf)
    buf.clear()
    eof: bool = reader._eof  # type: ignore[attr-defined]
    exc: BaseException | None = reader.exception()
    paused: bool = reader._paused  # type: ignore[attr-defined]
    return data, eof, exc, paused


def _no_sender(control: tuple[Any, ...]) -> Hashable:
    return None


#: :meth:`Connection.send`'s default sender: the one ``sender_of`` names.
_OF_CONTROL: Final[Hashable] = object()


Dispatch = Callable[[Any, tuple[Any, ...]], None]
Closed = Callable[["Connection", str], None]


class Connection(asyncio.Protocol):
    """A live connection to ``peer``: batching, ticks, backpressure, reading.

    ``dispatch(owner, control)`` gets every control message read (``owner``:
    whatever the caller gave, the net kernel's record of the peer); ``on_closed(conn,
    reason)`` is called once when the connection closes, whatever closed it.
    ``deliver(pid, msg)``, if given, takes a ``SEND`` first (the hot path); when it
    answers False (no such local process) the message goes to ``dispatch``.
    """

    def __init__(
        self,
        peer: PeerInfo,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        dispatch: Dispatch,
        owner: Any = None,
        on_closed: Closed,
        ticktime: float = DEFAULT_TICKTIME,
        max_frame: int = DEFAULT_MAX_FRAME,
        busy_limit: int = DEFAULT_BUSY_LIMIT,
        hard_limit: int = DEFAULT_HARD_LIMIT,
        fragment_size: int | None = DEFAULT_FRAGMENT_SIZE,
        sender_of: Callable[[tuple[Any, ...]], Hashable] | None = None,
        deliver: Callable[[Pid, Any], bool] | None = None,
        tuple_arrays: bool = False,
        busy_wait: BusyWait | None = None,
    ) -> None:
        self.peer = peer
        #: Both sides offered the ``tuple_arrays`` flag: every control message
        #: after the handshake is in the tuple-native format (see :mod:`pybeam.codec`).
        self.native = tuple_arrays and peer.flags.get("tuple_arrays") is True
        self._encode: Callable[[Any], bytes] = codec.encode_native if self.native else codec.encode
        self._decode: Callable[[bytes], Any] = codec.decode_native if self.native else codec.decode
        #: What a frame decodes to: an array is a tuple in the tuple-native format.
        self._batch_type: Any = tuple if self.native else list
        self._send_heads = _native_send_heads if self.native else _send_heads
        self.busy_limit = busy_limit
        self.hard_limit = max(hard_limit, busy_limit)
        #: Over the busy limit: senders are to wait in drain().
        self.busy = False
        #: What the transport held after the last flush.
        self._buffered = 0
        self.name = peer.name
        self.hidden = bool(peer.flags.get("hidden", False))
        self.ticktime = ticktime
        self.max_frame = max_frame
        self._reader = reader
        self._writer = writer
        # drain() waits for the transport to go below the busy limit (it
        # resumes at half of it, so a waiting sender is not woken per frame).
        # (uvloop takes C ints: a larger limit is as good as none anyway.)
        high = min(busy_limit, _MAX_WATER_MARK)
        # Fragments go out only as the transport empties (below a few of
        # them), so another sender's message waits behind at most that much
        # rather than behind a whole large message. Both sides must agree.
        self.fragment_size = fragment_size if fragment_size and peer.flags.get("fragments") is True else None
        if self.fragment_size:
            high = min(high, 4 * self.fragment_size)
        #: Encoded sizes above this are fragmented (never, when not).
        self._fragment_above = self.fragment_size or max_frame
        self._sender_of = sender_of or _no_sender
        #: Per sender: its messages waiting behind its own large one, whose
        #: head is being sent in fragments (or waits for room to start).
        self._lanes: dict[Hashable, deque[bytes]] = {}
        #: Per sender with a stream under way: (stream id, bytes of its head sent).
        self._streams: dict[Hashable, tuple[int, int]] = {}
        self._streaming = 0  # bytes of the messages being streamed
        self._backlog = 0  # bytes waiting in lanes (not yet sent)
        self._next_stream = 0
        self._pump_task: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()
        #: Streams being reassembled: id -> (declared size, bytes so far).
        self._assembling: dict[int, tuple[int, bytearray]] = {}
        self._assembling_size = 0
        self._pace = high
        #: The transport's high-water mark, set when reading starts (see start()).
        self._high = high
        # (No isinstance check: uvloop's transports do not subclass asyncio's.)
        self._transport = cast(asyncio.Transport, writer.transport)
        # On the bare transport: once started, this connection is the
        # transport's protocol and forwards the flow-control callbacks.
        self._frames = FrameWriter(self._transport, max_size=max_frame)
        self._dispatch = dispatch
        self._deliver = deliver
        #: Largest encoded control message a frame takes.
        self._max_control = max_frame - _FRAME_OVERHEAD
        self._owner = owner
        self._on_closed: Closed | None = on_closed
        self._loop = asyncio.get_running_loop()
        # The batch: its first item is where the frame's header goes at flush.
        self._out: list[bytes] = [b""]
        self._out_size = 0
        #: A flush is due at the end of this loop iteration: whatever is sent
        #: until then is batched (the first message of an iteration leaves at once).
        self._flush_scheduled = False
        #: A message went out at once and nothing was scheduled after it: the
        #: next one is batched (and schedules the flush) unless data arrived
        #: in between (see _wrote_at_once_check).
        self._wrote_at_once = False
        self._decoder = FrameDecoder(max_frame, allow_empty=True)
        self._bytes_in = 0
        #: What the handshake's reader held past the handshake, until read.
        self._early: bytes | None = None
        self._started = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self.last_received = self._loop.time()
        self._received = False
        self._quiet_ticks = 0
        self.closed = False
        #: Told of every read and write (not of heartbeats): see :mod:`.busy_wait`.
        self._poke = busy_wait.poke if busy_wait is not None and busy_wait.threshold else None

    def __repr__(self) -> str:
        return f"<Connection to {self.name}{' (closed)' if self.closed else ''}>"

    def start(self) -> None:
        """Start reading and ticking.

        The connection becomes the transport's protocol: each arrival is split
        into frames, decoded and dispatched in the transport's own callback
        (:meth:`data_received`), with no reader task and no stream buffer
        between. Bytes the peer sent right behind its last handshake message
        are still in the handshake's reader; they are read first.
        """
        if self._started or self.closed:
            return
        self._started = True
        transport = self._transport
        early, eof, exc, paused = _take_buffered(self._reader)
        transport.set_protocol(self)
        # After the swap, so that the flow-control callbacks come here.
        transport.set_write_buffer_limits(high=self._high, low=self._high // 2)
        if paused or not transport.is_reading():
            transport.resume_reading()  # the stream paused it when its buffer filled
        self._early = early
        # Read on the next iteration, as the reader task did: the owner
        # finishes bringing the connection up first.
        self._loop.call_soon(self._begin, eof, exc)
        self._tick_handle = self._loop.call_later(self.ticktime / 4, self._tick)

    # -- sending -----------------------------------------------------------------

    def send(self, control: tuple[Any, ...], sender: Hashable = _OF_CONTROL) -> None:
        """Queue a control message; it leaves at the end of this loop iteration.

        ``sender``: whose message it is (its order is kept per sender), for a
        caller that knows it (a DOWN by name, sent while the process that
        ended is ended from another's context); by default ``sender_of`` says.

        Raises :class:`pybeam.codec.EncodeError` if it holds something that
        cannot travel, and :class:`SystemLimit` if it is larger than a frame
        may be. Queued to a closed connection, it is dropped (as BEAM drops
        messages to a node that went down).
        """
        data = self._encode(control)
        if len(data) > self._max_control:
            raise SystemLimit(len(data), self.max_frame)
        if sender is _OF_CONTROL and (self._lanes or len(data) > self._fragment_above):
            # Whose it is matters only for a lane (a look hashes it, a Python call).
            sender = self._sender_of(control)
        self._send_data(data, sender)

    def _wrote_at_once_check(self) -> None:
        """A message was just written at once. If the kernel took all of it,
        nothing is left for the end of the iteration:
        the next message is batched behind it unless data arrives first (the
        peer's answer, whose own answer goes at once again). Otherwise the end
        of the iteration accounts for what the transport holds, as for a batch."""
        if not self._transport.get_write_buffer_size():
            self._wrote_at_once = True
            if self._poke is not None:
                self._poke()  # a reply may come soon: see busy_wait
        else:
            self._flush_scheduled = True
            self._loop.call_soon(self._end_of_iteration)

    def send_message(self, to: Pid, msg: Any) -> None:
        """Queue ``(Op.SEND, to, msg)``, as :meth:`send` does: its hot path
        (the tuple is not built, the part naming ``to`` is encoded once)."""
        entry = self._send_heads.get(id(to))
        head = entry[1] if entry is not None and entry[0] is to else _send_head(to, self.native)
        data = head + self._encode(msg)
        size = len(data)
        if size > self._max_control:
            raise SystemLimit(size, self.max_frame)
        if self.closed:
            return
        if self._lanes or size > self._fragment_above:
            key = self._sender_of((Op.SEND, to, msg))
            if key in self._lanes or size > self._fragment_above:
                self._to_lane(key, data)
                return
        if not self._flush_scheduled:
            if not self._wrote_at_once and not self._buffered:
                # FrameWriter.write_now's work, inlined (the hot path; nothing
                # is ever queued in this connection's frame writer).
                transport = self._transport
                if not transport.is_closing():
                    frame = _single_frame(size + 1, _ONE) + data
                    transport.write(frame)
                    frames = self._frames
                    frames.bytes_sent += len(frame)
                    frames.frames_sent += 1
                    frames.last_write_time = self._loop.time()
                # _wrote_at_once_check's body, inlined
                if not transport.get_write_buffer_size():
                    self._wrote_at_once = True
                    if self._poke is not None:
                        self._poke()
                else:
                    self._flush_scheduled = True
                    self._loop.call_soon(self._end_of_iteration)
                return
            self._flush_scheduled = True
            self._loop.call_soon(self._end_of_iteration)
        elif self._out_size + size > self._max_control or len(self._out) > _MAX_BATCH:
            self._flush()
        self._out.append(data)
        self._out_size += size
        if self._out_size + self._buffered > self.busy_limit:
            self._over_busy_limit()

    def send_down(self, watcher: Pid, ref: Ref, item: Any, reason: Any, sender: Hashable) -> None:
        """Queue ``(Op.DOWN, watcher, ref, item, reason)`` as :meth:`send`
        does: in the tuple-native format the encoding is put together from
        the cached ones of the pids and the ref (an rpc's answer)."""
        if not self.native:
            self.send((Op.DOWN, watcher, ref, item, reason), _OF_CONTROL if sender is None else sender)
            return
        data = _down_bytes(watcher, ref, item, reason)
        if len(data) > self._max_control:
            raise SystemLimit(len(data), self.max_frame)
        self._send_data(data, item if sender is None and type(item) is Pid else sender)

    def send_spawn_request(
        self, ref: Ref, requester: Pid, fn: str, args: tuple[Any, ...], opts: dict[str, Any]
    ) -> None:
        """Queue ``(Op.SPAWN_REQUEST, ref, requester, fn, args, opts)`` as
        :meth:`send_down` does (``opts`` of the net kernel's making: its
        encoding is cached)."""
        if not self.native:
            self.send((Op.SPAWN_REQUEST, ref, requester, fn, args, opts))
            return
        data = _spawn_request_bytes(ref, requester, fn, args, opts)
        if len(data) > self._max_control:
            raise SystemLimit(len(data), self.max_frame)
        self._send_data(data, requester)

    def _send_data(self, data: bytes, sender: Hashable) -> None:
        """Queue an encoded control message (of this connection's format, at
        most a frame's worth) of ``sender``'s: what :meth:`send`,
        :meth:`send_encoded`, :meth:`send_down` and :meth:`send_spawn_request`
        share (:meth:`send_message`, every message's, inlines it)."""
        if self.closed:
            return
        # (An empty dict is not looked in: a look hashes the sender, a Python call.)
        if (self._lanes and sender in self._lanes) or len(data) > self._fragment_above:
            self._to_lane(sender, data)
            return
        if not self._flush_scheduled:
            # The first message since the last flush or arrival: out at once
            # when nothing waits before it (a round trip costs no iteration);
            # what follows is batched into one frame at the end of the iteration.
            if not self._wrote_at_once and not self._buffered and not self._out_size:
                self._frames.write_now(_single_frame_of(data))
                self._wrote_at_once_check()
                return
            self._flush_scheduled = True
            self._loop.call_soon(self._end_of_iteration)
        elif self._out_size + len(data) > self.max_frame - _FRAME_OVERHEAD or len(self._out) > _MAX_BATCH:
            self._flush()
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size + self._buffered > self.busy_limit:
            self._over_busy_limit()

    def send_encoded(self, data: bytes, sender: Hashable = None) -> None:
        """Queue a control message encoded by :func:`encode_control` (for this
        connection's ``max_frame``): one queued while connecting is encoded once.
        ``sender``: whose it is, as :meth:`send` takes it (its order is kept per sender).

        Queued before the handshake said which format the peer takes, it is in
        the base format: re-encoded here for a peer that takes the tuple-native one."""
        if self.closed:
            return
        if self.native:
            data = codec.encode_native(codec.decode(data))
            if len(data) > self._max_control:
                # Only a message within a few bytes of the limit (lists take
                # 3 more bytes each in this format) and then lost, as one sent
                # to a node that went down; said rather than silent.
                logger.warning("dropped a %d-byte message to %s: over the frame limit", len(data), self.name)
                return
        self._send_data(data, sender)

    # -- large messages: fragments ----------------------------------------------

    def _to_lane(self, key: Hashable, data: bytes) -> None:
        """Queue ``data`` behind the sender's large message (or start one)."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
        lane.append(data)
        self._backlog += len(data)
        if self._out_size + self._buffered + self._backlog > self.busy_limit:
            self._over_busy_limit()
        if self._pump_task is None and not self.closed:
            self._pump_task = self._loop.create_task(self._pump(), name=f"pybeam-dist-fragments-{self.name}")

    async def _pump(self) -> None:
        """Send the lanes' messages, a few fragments of each large one per
        round, whenever the transport holds less than a few fragments."""
        try:
            while self._lanes and not self.closed:
                if self._frames.buffer_size > self._pace:
                    try:
                        await self._frames.drain()  # waits for the low-water mark
                    except ConnectionError:
                        return
                    if self._frames.buffer_size > self._pace:
                        await asyncio.sleep(0)
                    continue
                self._flush()  # what other senders queued goes first
                for key in list(self._lanes):
                    # A few fragments per sender per round, while the kernel
                    # takes them: as fast as unfragmented when nothing else waits.
                    for _ in range(_ROUND):
                        if key not in self._lanes or self._frames.buffer_size > self._pace:
                            break
                        data = self._next_piece(key)
                        if data is None:
                            break
                        self._batch(data)
                        self._flush()
                self._buffered = self._frames.buffer_size
                self._tell_progress()
                await asyncio.sleep(0)
        except Exception as e:  # a bug must not leave the lanes stuck: drop this connection
            tb = "".join(traceback.format_exception(e)).rstrip()
            logger.error("closing connection to %s:\n%s", self.name, clip(tb))
            self.close(f"internal error sending fragments to {self.name}: {short(e)}")
        finally:
            self._pump_task = None
            self._tell_progress()

    def _tell_progress(self) -> None:
        """Wake the drain() calls waiting for the pump; later ones wait for its next round."""
        # A fresh event each time: one left set would let the next drain()
        # loop without ever yielding to the pump it waits for.
        self._progress.set()
        self._progress = asyncio.Event()

    def _next_piece(self, key: Hashable) -> bytes | None:
        """Take what the sender's lane sends next: a small message waiting
        behind its large one, or the next fragment; None if the large one
        must wait for room to start."""
        lane = self._lanes[key]
        data = lane[0]
        size = len(data)
        if size <= self._fragment_above:
            self._backlog -= size
            piece = data
        else:
            stream = self._streams.get(key)
            if stream is None:
                # Bounded as the receiver bounds reassembly: the first stream
                # always fits (a message is at most a frame).
                if self._streams and (
                    len(self._streams) >= MAX_FRAGMENT_STREAMS
                    or self._streaming + size > self.max_frame - _FRAME_OVERHEAD
                ):
                    return None
                self._next_stream += 1
                stream = (self._next_stream, 0)
                self._streaming += size
            sid, offset = stream
            end = min(offset + self._fragment_above, size)
            chunk = data[offset:end]
            self._backlog -= len(chunk)
            if end < size:
                self._streams[key] = (sid, end)
                return self._encode((Op.FRAGMENT, sid, size, offset, chunk))
            self._streams.pop(key, None)
            self._streaming -= size
            piece = self._encode((Op.FRAGMENT, sid, size, offset, chunk))
        lane.popleft()
        if not lane:
            del self._lanes[key]
        return piece

    def _batch(self, data: bytes) -> None:
        if self._out_size + len(data) > self.max_frame - _FRAME_OVERHEAD or len(self._out) > _MAX_BATCH:
            self._flush()
        self._out.append(data)
        self._out_size += len(data)

    def _end_of_iteration(self) -> None:
        self._flush_scheduled = self._wrote_at_once = False
        if self._poke is not None:
            self._poke()  # a reply may come soon: see busy_wait
        if len(self._out) > 1:
            self._flush()
        elif not self.closed:
            # The message written at once may wait in the transport:
            # _check_buffered's body, without its two calls (this runs after
            # every message of a round trip).
            buffered = self._buffered = self._transport.get_write_buffer_size()
            if buffered + self._backlog > self.busy_limit:
                self._over_busy_limit()
            elif self.busy:
                self.busy = False

    def _check_buffered(self) -> None:
        buffered = self._buffered = self._frames.buffer_size
        if buffered + self._backlog > self.busy_limit:
            self._over_busy_limit()
        elif self.busy:
            self.busy = False

    def _flush(self) -> None:
        out = self._out
        count = len(out) - 1
        if not count or self.closed:
            return
        self._out = [b""]
        header = _array_header(count)
        out[0] = _pack_length(self._out_size + len(header)) + header
        self._frames.write_now(b"".join(out))
        self._out_size = 0
        self._check_buffered()

    def _over_busy_limit(self) -> None:
        self.busy = True
        queued = self._out_size + self._buffered + self._backlog
        if queued > self.hard_limit:
            self.close(
                f"{queued:,} bytes queued to {self.name}, over the hard limit of {self.hard_limit:,}: "
                "the peer does not read (or a sender never awaits)"
            )

    def info(self) -> dict[str, Any]:
        """Traffic and heartbeat figures, for observers (``pybeam top``):
        ``bytes_out`` and ``bytes_in`` (headers and ticks included), ``queued``
        (bytes waiting to be sent), ``busy``, ``last_received`` and
        ``last_sent`` (seconds since), and ``ticktime``."""
        now = self._loop.time()
        return {
            "bytes_out": self._frames.bytes_sent,
            "bytes_in": self._bytes_in,
            "queued": self.queued(),
            "busy": self.busy,
            "last_received": max(now - self.last_received, 0.0),
            "last_sent": max(now - self._frames.last_write_time, 0.0),
            "ticktime": self.ticktime,
        }

    def queued(self) -> int:
        """Bytes queued to the peer and not yet taken by the kernel."""
        return self._out_size + self._backlog + (self._frames.buffer_size if not self.closed else 0)

    async def drain(self) -> None:
        """Wait until the bytes queued to the peer are below the busy limit
        (at once if they are, or if the connection is closed). Cancellation-safe."""
        while self.busy and not self.closed:
            self._flush()
            if self._frames.buffer_size + self._backlog <= self.busy_limit:
                self.busy = False
                return
            if self._frames.buffer_size <= self.busy_limit:
                # What remains waits in the lanes: the pump sends it.
                if self._pump_task is None:
                    return  # nothing left to send (cannot happen: the lanes start one)
                await self._progress.wait()
                continue
            try:
                await self._frames.drain()
            except ConnectionError:
                return
            self._buffered = self._frames.buffer_size

    def _tick(self) -> None:
        if self.closed:
            return
        # Count tick periods in which nothing arrived, as Erlang does, rather
        # than compare clocks: if this node's own loop stalled, the peer's data
        # is waiting unread and the stall counts as one quiet period, not as
        # the peer's silence.
        if self._received:
            self._received = False
            self._quiet_ticks = 0
        else:
            self._quiet_ticks += 1
            if self._quiet_ticks >= 4:
                quiet = self._loop.time() - self.last_received
                self.close(f"net_tick_timeout: nothing received for {quiet:.1f}s (ticktime {self.ticktime}s)")
                return
        if self._loop.time() - self._frames.last_write_time >= self.ticktime / 4 - 0.001:
            self._frames.write_now(_TICK)
        self._tick_handle = self._loop.call_later(self.ticktime / 4, self._tick)

    # -- receiving ---------------------------------------------------------------

    def _begin(self, eof: bool, exc: BaseException | None) -> None:
        """Read what the handshake's reader held, and what it saw of the end."""
        early, self._early = self._early, None
        if early:
            self.data_received(early)
        if exc is not None:
            self.connection_lost(exc)
        elif eof:
            self.eof_received()

    # asyncio.Protocol: the transport calls these once start() made this its protocol.

    def data_received(self, data: bytes) -> None:
        """Split what arrived into frames, decode them and dispatch each control message."""
        if self.closed:
            return
        if self._early is not None:  # arrived before _begin ran: keep the order
            data = self._early + data
            self._early = None
        if self._poke is not None and len(data) > _TICK_SIZE:
            self._poke()  # more may follow soon (a lone heartbeat: no)
        # What this node sends next answers what came: out at once again.
        self._wrote_at_once = False
        self._bytes_in += len(data)
        self.last_received = self._loop.time()
        self._received = True
        dispatch = self._dispatch
        deliver = self._deliver
        owner = self._owner
        decode = self._decode
        try:
            # FrameDecoder.feed's commonest case, without the call: exactly
            # one whole frame, nothing held back (a message, a reply).
            decoder = self._decoder
            n = len(data)
            if (
                n > HEADER_SIZE
                and not decoder._buf
                and (size := _frame_length(data)[0]) + HEADER_SIZE == n
                and size <= decoder.max_size
            ):
                frames: Any = (data[HEADER_SIZE:],)
            else:
                frames = decoder.feed(data)
            for frame in frames:
                if not frame:
                    continue  # a tick
                batch = decode(frame)
                if type(batch) is not self._batch_type:
                    raise ProtocolError(
                        f"a frame must hold an array of control messages, got {type(batch).__name__}"
                    )
                for control in batch:
                    if type(control) is not tuple or not control:
                        raise ProtocolError(f"malformed control message {control!r:.100}")
                    op = control[0]
                    # The hot path: a message to a live local process.
                    if op == _SEND and len(control) == 3 and deliver is not None:
                        to = control[1]
                        if type(to) is Pid and deliver(to, control[2]):
                            continue
                    elif op == _FRAGMENT:
                        control = self._reassemble(control)
                        if control is None:
                            continue
                    dispatch(owner, control)
                    if self.closed:
                        return
        except (FrameError, codec.DecodeError, ProtocolError) as e:
            reason = f"bad input from {self.name}: {clip(str(e), 1000)}"
            logger.warning("closing connection to %s: %s", self.name, reason)
            self.close(reason)
        except Exception as e:  # a bug must not take the node down: drop this connection
            tb = "".join(traceback.format_exception(e)).rstrip()
            logger.error("closing connection to %s:\n%s", self.name, clip(tb))
            self.close(f"internal error handling a message from {self.name}: {short(e)}")

    def eof_received(self) -> bool:
        """The peer closed its end: so does this connection."""
        held = self._decoder.buffered
        if held:
            e = StreamClosed(True, f"{held} bytes of an unfinished frame")
            self.close(f"connection closed by peer mid-frame: {e}")
        else:
            self.close("connection closed by peer")
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        """The transport is gone (closed by either side, or lost)."""
        self._frames.connection_lost(exc)
        if exc is not None:
            self.close(f"connection lost: {exc}")
        else:
            self.close("connection closed by peer")

    def pause_writing(self) -> None:
        """The transport's buffer went above its high-water mark."""
        self._frames.pause_writing()

    def resume_writing(self) -> None:
        """The transport's buffer went below its low-water mark."""
        self._frames.resume_writing()

    def _reassemble(self, fragment: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Add a fragment to its stream; the control message once complete.

        Reassembly is bounded as a frame is: streams' declared sizes add up
        to at most ``max_frame``, at most :data:`MAX_FRAGMENT_STREAMS` at once.
        Anything inconsistent is a ProtocolError (the connection closes)."""
        match fragment:
            case (_, int() as sid, int() as total, int() as offset, bytes() as chunk) if chunk:
                pass
            case _:
                raise ProtocolError(f"malformed fragment {fragment!r:.100}")
        entry = self._assembling.get(sid)
        if entry is None:
            if offset != 0:
                raise ProtocolError(f"fragment at offset {offset:,} of stream {sid}, which never started")
            if len(self._assembling) >= MAX_FRAGMENT_STREAMS:
                raise ProtocolError(f"more than {MAX_FRAGMENT_STREAMS} fragmented messages at once")
            if total <= len(chunk):
                raise ProtocolError(
                    f"fragmented message of {total:,} bytes whose first fragment holds it all"
                )
            if total > self.max_frame - self._assembling_size:
                raise ProtocolError(
                    f"fragmented message of {total:,} bytes: over the {self.max_frame:,}-byte frame limit "
                    f"({self._assembling_size:,} bytes already being reassembled)"
                )
            entry = self._assembling[sid] = (total, bytearray())
            self._assembling_size += total
        size, buf = entry
        if total != size or offset != len(buf) or offset + len(chunk) > size:
            raise ProtocolError(
                f"inconsistent fragment of stream {sid}: size {total:,} offset {offset:,} "
                f"length {len(chunk):,}, expected size {size:,} offset {len(buf):,}"
            )
        buf += chunk
        if len(buf) < size:
            return None
        del self._assembling[sid]
        self._assembling_size -= size
        control = self._decode(bytes(buf))
        if type(control) is not tuple or not control or control[0] == Op.FRAGMENT:
            raise ProtocolError(f"malformed fragmented control message {control!r:.100}")
        return control

    # -- closing -----------------------------------------------------------------

    def close(self, reason: str = "disconnected") -> None:
        """Close the connection (idempotent) and tell the owner why."""
        if self.closed:
            return
        self._flush()
        self.closed = True
        # A large message not yet wholly sent is lost, as anything in flight
        # (the peer discards the fragments it has).
        self._lanes.clear()
        self._streams.clear()
        self._streaming = self._backlog = 0
        pump = self._pump_task
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()
        self._tell_progress()  # a pump cancelled before its first step would not
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._frames.close()
        on_closed, self._on_closed = self._on_closed, None
        if on_closed is not None:
            on_closed(self, reason)

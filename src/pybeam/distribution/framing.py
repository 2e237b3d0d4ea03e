"""Framing: how terms travel over a byte stream between nodes.

A frame is a 4-byte big-endian unsigned length followed by that many bytes, the
encoding of one term (:mod:`pybeam.codec`). It is Erlang's ``{packet, 4}``.

A zero-length frame carries no term. Erlang uses it as the connection *tick*
(keepalive), and so do we: :meth:`FrameWriter.write_tick` sends one. Readers
refuse it by default (it is malformed input during the handshake or to the port
mapper); the connection layer, which expects ticks, reads with
``allow_empty=True`` and gets ``b""`` for a tick.

Reading: :func:`read_frame` reads one frame from an :class:`asyncio.StreamReader`;
:class:`FrameReader` reads every complete frame already received in one call and
:class:`FrameDecoder` does the same without I/O (for an :class:`asyncio.Protocol`).
The length prefix is checked against ``max_size`` before anything is read or
allocated, so a hostile or confused peer cannot make us buffer gigabytes.

Writing: :class:`FrameWriter` batches. Every frame written during one event-loop
iteration goes to the transport in one ``write`` at the end of that iteration,
which turns a burst of small messages into one system call. A caller that
batches itself (a node's connection, which puts a burst of control messages in
one frame) hands its frames over with :meth:`FrameWriter.write_now` instead.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Final

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "MAX_FRAME_LIMIT",
    "FrameDecoder",
    "FrameError",
    "FrameReader",
    "FrameTooLarge",
    "FrameWriter",
    "StreamClosed",
    "encode_frame",
    "read_frame",
]

HEADER_SIZE: Final = 4
#: The default largest frame accepted: 64 MiB.
DEFAULT_MAX_FRAME: Final = 64 * 1024 * 1024
#: The largest length the 4-byte prefix can express.
MAX_FRAME_LIMIT: Final = 0xFFFF_FFFF

_HEADER: Final = struct.Struct(">I")
_pack = _HEADER.pack
_unpack = _HEADER.unpack
_unpack_from = _HEADER.unpack_from
_TICK: Final = _pack(0)
#: How much FrameReader asks the StreamReader for at once.
_READ_CHUNK: Final = 256 * 1024


class FrameError(Exception):
    """The byte stream does not hold well-formed frames, or it ended."""


class FrameTooLarge(FrameError):
    """A frame's length prefix exceeds the reader's (or writer's) ``max_size``."""

    def __init__(self, size: int, max_size: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {max_size} bytes")
        self.size = size
        self.max_size = max_size


class StreamClosed(FrameError):
    """The stream ended. ``mid_frame`` tells whether it ended inside a frame (truncation)."""

    def __init__(self, mid_frame: bool, detail: str = "") -> None:
        msg = "stream ended in the middle of a frame" if mid_frame else "stream closed"
        super().__init__(f"{msg} ({detail})" if detail else msg)
        self.mid_frame = mid_frame


def encode_frame(payload: bytes) -> bytes:
    """Return ``payload`` with its length prefix: one frame, ready to write."""
    n = len(payload)
    if n > MAX_FRAME_LIMIT:
        raise FrameTooLarge(n, MAX_FRAME_LIMIT)
    return _pack(n) + payload


def _check_length(n: int, max_size: int, allow_empty: bool) -> None:
    if n > max_size:
        raise FrameTooLarge(n, max_size)
    if n == 0 and not allow_empty:
        raise FrameError("unexpected zero-length frame")


async def read_frame(
    reader: asyncio.StreamReader, max_size: int = DEFAULT_MAX_FRAME, *, allow_empty: bool = False
) -> bytes:
    """Read one frame and return its payload.

    Raises :class:`FrameTooLarge` if the prefix exceeds ``max_size`` (nothing more is
    read), :class:`FrameError` for a zero-length frame unless ``allow_empty`` (then
    ``b""`` is returned), and :class:`StreamClosed` if the stream ends, with
    ``mid_frame`` true if it ended inside a frame.
    """
    try:
        header = await reader.readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as e:
        raise StreamClosed(bool(e.partial), f"{len(e.partial)} of {HEADER_SIZE} header bytes") from None
    (n,) = _unpack(header)
    if n == 0 or n > max_size:
        _check_length(n, max_size, allow_empty)  # raises unless this is an allowed tick
        return b""
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        raise StreamClosed(True, f"{len(e.partial)} of {n} payload bytes") from None


class FrameDecoder:
    """Split a byte stream into frames, without I/O: feed it data, get whole frames back.

    For use from :meth:`asyncio.Protocol.data_received` or by :class:`FrameReader`.
    Each call to :meth:`feed` returns every frame completed by the data so far and
    keeps the incomplete tail for next time.
    """

    __slots__ = ("_buf", "_need", "allow_empty", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME, *, allow_empty: bool = False) -> None:
        self.max_size = max_size
        self.allow_empty = allow_empty
        self._buf = bytearray()
        # Bytes the buffer must hold before the next frame is complete, so a big
        # frame arriving in many chunks is not re-parsed on every chunk.
        self._need = HEADER_SIZE

    @property
    def buffered(self) -> int:
        """Bytes held back: the start of a frame not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return the payloads of the frames it completes (possibly none).

        Raises :class:`FrameTooLarge` or :class:`FrameError` as :func:`read_frame`
        does; after that the decoder is unusable (the stream is out of sync).
        """
        buf = self._buf
        if not buf:
            end = len(data)
            if end > HEADER_SIZE:
                # Commonest of all: exactly one whole frame (a message, a reply).
                (n,) = _unpack_from(data)
                if n + HEADER_SIZE == end and n <= self.max_size:
                    return [data[HEADER_SIZE:]]
            # Common case: nothing held back, so split the chunk in place and keep
            # only its incomplete tail.
            frames, pos = self._split(data)
            if pos < len(data):
                buf += memoryview(data)[pos:]
            return frames
        buf += data
        if len(buf) < self._need:
            return []
        with memoryview(buf) as view:
            frames, pos = self._split(view)
        del buf[:pos]
        return frames

    def _split(self, src: bytes | memoryview) -> tuple[list[bytes], int]:
        """Return the complete frames at the start of ``src`` and where the rest begins."""
        frames: list[bytes] = []
        append = frames.append
        end = len(src)
        pos = 0
        max_size = self.max_size
        while end - pos >= HEADER_SIZE:
            (n,) = _unpack_from(src, pos)
            if n == 0 or n > max_size:
                _check_length(n, max_size, self.allow_empty)
            stop = pos + HEADER_SIZE + n
            if stop > end:
                self._need = stop - pos
                return frames, pos
            # bytes() copies a memoryview slice and returns a bytes slice as is.
            append(bytes(src[pos + HEADER_SIZE : stop]))
            pos = stop
        self._need = HEADER_SIZE
        return frames, pos


class FrameReader:
    """Read frames from a StreamReader in batches: all frames already received per call.

    Faster than :func:`read_frame` per frame when many small frames arrive together.
    Once a FrameReader has read from a StreamReader, read only through it: it
    buffers the start of the next frame.
    """

    __slots__ = ("_decoder", "_reader", "bytes_received")

    def __init__(
        self, reader: asyncio.StreamReader, max_size: int = DEFAULT_MAX_FRAME, *, allow_empty: bool = False
    ) -> None:
        self._reader = reader
        self._decoder = FrameDecoder(max_size, allow_empty=allow_empty)
        #: Bytes read so far, headers and ticks included.
        self.bytes_received = 0

    async def read_frames(self) -> list[bytes]:
        """Wait for at least one frame and return all complete ones (never an empty list).

        Raises as :func:`read_frame` does.
        """
        while True:
            data = await self._reader.read(_READ_CHUNK)
            if not data:
                held = self._decoder.buffered
                raise StreamClosed(bool(held), f"{held} bytes of an unfinished frame" if held else "")
            self.bytes_received += len(data)
            frames = self._decoder.feed(data)
            if frames:
                return frames


class FrameWriter:
    """Write frames to a StreamWriter or transport, batching per event-loop iteration.

    :meth:`write` only appends the length prefix and the payload to a pending list
    and, for the first frame of an iteration, schedules one flush with
    ``loop.call_soon``; that flush joins the list and makes one transport write.
    Call :meth:`drain` now and then (e.g. every N messages, or when
    :attr:`buffer_size` is large) to respect backpressure.

    With a bare transport (no StreamWriter) the owning protocol must forward its
    ``pause_writing``/``resume_writing``/``connection_lost`` callbacks to the
    methods of the same names, so that :meth:`drain` can wait.

    :attr:`bytes_sent`, :attr:`frames_sent` and :attr:`last_write_time`
    (the event loop's ``time()`` at the last flush that wrote anything) tell the
    connection whether it has been quiet long enough to need a tick.

    Once the connection is closing, flushed frames are dropped silently (as Erlang
    drops messages to a lost node); whoever reads the connection sees it end.
    :meth:`write` after :meth:`close` raises :class:`ConnectionResetError`.

    Not thread-safe: use it from its event loop's thread only. Payloads must not
    change after :meth:`write` (they are sent later); ``bytes`` never do.
    """

    __slots__ = (
        "_append",
        "_closed",
        "_drain_waiter",
        "_exc",
        "_loop",
        "_paused",
        "_pending",
        "_scheduled",
        "_stream",
        "_transport",
        "bytes_sent",
        "frames_sent",
        "last_write_time",
        "max_size",
    )

    def __init__(
        self, writer: asyncio.StreamWriter | asyncio.WriteTransport, *, max_size: int = DEFAULT_MAX_FRAME
    ) -> None:
        if isinstance(writer, asyncio.StreamWriter):
            self._stream: asyncio.StreamWriter | None = writer
            # No isinstance check on it: uvloop's transports do not subclass asyncio's.
            self._transport: asyncio.WriteTransport = writer.transport
        else:
            self._stream = None
            self._transport = writer
        if not 0 < max_size <= MAX_FRAME_LIMIT:
            raise ValueError(f"max_size must be in 1..{MAX_FRAME_LIMIT}")
        self.max_size = max_size
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._append = self._pending.append
        self._scheduled = False
        self._closed = False
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._exc: BaseException | None = None
        self.bytes_sent = 0
        self.frames_sent = 0
        self.last_write_time = self._loop.time()

    def write(self, payload: bytes) -> None:
        """Queue one frame holding ``payload`` (an encoded term, not empty, at most ``max_size``)."""
        n = len(payload)
        if not 0 < n <= self.max_size or self._closed:
            self._refuse(n)
        append = self._append
        append(_pack(n))
        append(payload)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def write_tick(self) -> None:
        """Queue a zero-length frame: the keepalive tick."""
        if self._closed:
            self._refuse(0)
        self._append(_TICK)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def write_now(self, frames: bytes) -> None:
        """Hand ``frames`` (whole frames, length prefixes included: see
        :func:`encode_frame`) to the transport now, after anything queued by
        :meth:`write`: for a caller that batches itself, so that batching
        happens in one place."""
        if self._closed:
            self._refuse(0)
        if self._pending:
            self.flush()
        transport = self._transport
        if transport.is_closing():
            return  # as in flush()
        transport.write(frames)
        self.bytes_sent += len(frames)
        self.frames_sent += 1
        self.last_write_time = self._loop.time()

    def _refuse(self, n: int) -> None:
        if self._closed:
            raise ConnectionResetError("frame writer is closed")
        if n == 0:
            raise FrameError("cannot write an empty payload (use write_tick for a tick)")
        raise FrameTooLarge(n, self.max_size)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Hand every queued frame to the transport now, in one write."""
        pending = self._pending
        if not pending:
            return
        data = b"".join(pending)
        # A tick is one item, a frame two; ticks are rare, so this count is close enough
        # to be useful without a per-write counter.
        frames = len(pending) >> 1 or 1
        pending.clear()
        transport = self._transport
        if transport.is_closing():
            # The connection is going away; whoever reads it will see that. Writing
            # now would only make asyncio log "socket.send() raised exception".
            return
        transport.write(data)
        self.bytes_sent += len(data)
        self.frames_sent += frames
        self.last_write_time = self._loop.time()

    @property
    def buffer_size(self) -> int:
        """Bytes handed to the transport but not yet sent (the kernel may hold more)."""
        return self._transport.get_write_buffer_size()

    async def drain(self) -> None:
        """Flush, then wait until the transport's buffer is below its high-water mark.

        Raises :class:`ConnectionError` if the connection is lost.
        """
        self.flush()
        if self._stream is not None:
            await self._stream.drain()
            return
        if self._exc is not None:
            raise ConnectionResetError("connection lost") from self._exc
        if self._transport.is_closing():
            raise ConnectionResetError("connection lost")
        if not self._paused:
            return
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = self._loop.create_future()
        await asyncio.shield(self._drain_waiter)

    # Forwarded from the owning Protocol when writing to a bare transport.

    def pause_writing(self) -> None:
        """The transport's buffer went above its high-water mark."""
        self._paused = True

    def resume_writing(self) -> None:
        """The transport's buffer drained below its low-water mark."""
        self._paused = False
        self._wake(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is gone: fail waiting and future :meth:`drain` calls."""
        self._exc = exc if exc is not None else ConnectionResetError("connection lost")
        self._pending.clear()
        self._wake(self._exc)

    def _wake(self, exc: BaseException | None) -> None:
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is None or waiter.done():
            return
        if exc is None:
            waiter.set_result(None)
        else:
            err = ConnectionResetError("connection lost")
            err.__cause__ = exc
            waiter.set_exception(err)

    def close(self) -> None:
        """Flush what is queued and close the underlying writer; later writes raise."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._stream is not None:
            self._stream.close()
        else:
            self._transport.close()

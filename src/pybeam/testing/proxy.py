"""A fault-injecting TCP proxy for tests: delay, stall, cut and half-open a real connection.

Placed between two real nodes, :class:`FaultProxy` forwards bytes both ways
and, on command, breaks the connection in the ways a network does:

- :meth:`~FaultProxy.delay`: hold every byte for a while before passing it
  on, per direction, without ever reordering (a slow link);
- :meth:`~FaultProxy.stall`: stop passing one direction on while the socket
  stays open (a one-way stall: the receiver hears nothing, the sender's
  writes still go out; :meth:`~FaultProxy.resume` lets the held bytes through);
- :meth:`~FaultProxy.cut`: close both sides, with RST (``reset=True``) or FIN;
- :meth:`~FaultProxy.half_open`: forward nothing, close one side, and never
  close the other: the *silent* side keeps an open socket that nothing ever
  arrives on, not even a FIN (a peer whose host lost power);
- :meth:`~FaultProxy.blackhole`: forward nothing and close nothing (a pulled
  cable, both sides silent).

The proxy's *client* side is whoever connected to it, its *server* side the
target it connects on to; a direction is named by where the bytes go
(``"to_server"``, ``"to_client"``). Delay and stall apply to the connections
open now and to those made later; cut, half-open and blackhole to the
connections open now.

To put the proxy between two nodes, make one node dial the other at the
proxy's port: :func:`route_through` does that for nodes of a
:class:`~pybeam.testing.LocalCluster` (``net.connect("b@host:port")`` tries
that port first, for as long as it works). See ``docs/reliability.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from typing import Literal, get_args

from .. import net, rpc
from .eventually import eventually

__all__ = ["Direction", "FaultProxy", "ProxiedConnection", "Side", "route_through"]

Side = Literal["client", "server"]
Direction = Literal["to_server", "to_client"]
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)

#: Bytes read at a time.
_CHUNK = 64 * 1024
#: Chunks a direction holds before it stops reading (TCP backpressure then
#: reaches the sender): at most 16 MiB per direction.
_HELD = 256
#: Seconds the proxy waits for its target to accept a connection.
_CONNECT_TIMEOUT = 5.0


def _directions(direction: Direction | None) -> tuple[Direction, ...]:
    if direction is None:
        return DIRECTIONS
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS} or None, got {direction!r}")
    return (direction,)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: linger 0 makes the kernel drop the socket without a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ProxiedConnection:
    """One client connection through a :class:`FaultProxy`, and the proxy's connection to the target."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self._readers = {"to_server": client[0], "to_client": server[0]}
        self._writers: dict[Side, asyncio.StreamWriter] = {"client": client[1], "server": server[1]}
        #: Bytes passed on so far, per direction.
        self.forwarded: dict[Direction, int] = dict.fromkeys(DIRECTIONS, 0)
        #: Why it stopped forwarding: ``"closed"`` (both sides sent FIN), ``"reset"``,
        #: ``"cut"``, ``"half_open"`` or ``"blackhole"``; None while it forwards.
        self.ended: str | None = None
        #: The side that is held open and silent after :meth:`FaultProxy.half_open`.
        self.silent: Side | Literal["both"] | None = None
        self._eof: set[Direction] = set()
        self._tasks: list[asyncio.Task[None]] = []
        for direction in DIRECTIONS:
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_HELD)
            self._tasks.append(asyncio.ensure_future(self._read(direction, queue)))
            self._tasks.append(asyncio.ensure_future(self._write(direction, queue)))

    def __repr__(self) -> str:
        state = self.ended or (f"silent {self.silent}" if self.silent else "open")
        return f"<ProxiedConnection {state} forwarded={self.forwarded}>"

    @property
    def open(self) -> bool:
        """True while it forwards. A half-open or blackholed connection is not open in
        this sense, though its silent side's socket stays open until the proxy closes."""
        return self.ended is None

    def _dest(self, direction: Direction) -> asyncio.StreamWriter:
        return self._writers["server" if direction == "to_server" else "client"]

    async def _read(self, direction: Direction, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        last = 0.0
        try:
            while True:
                data = await self._readers[direction].read(_CHUNK)
                # Never earlier than the chunk before: a delay that shrinks must not reorder.
                last = max(loop.time() + self.proxy._delays[direction], last)
                await queue.put((last, data))
                if not data:
                    return
        except OSError:
            self._end("reset", reset=True)  # the peer reset its side: pass the reset on

    async def _write(self, direction: Direction, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        flowing = self.proxy._flowing[direction]
        dest = self._dest(direction)
        try:
            while True:
                at, data = await queue.get()
                if (wait := at - loop.time()) > 0:
                    await asyncio.sleep(wait)
                await flowing.wait()
                if not data:
                    if dest.can_write_eof():
                        dest.write_eof()  # a FIN, in order after everything before it
                    self._eof.add(direction)
                    if len(self._eof) == len(DIRECTIONS):
                        self._end("closed")
                    return
                dest.write(data)
                self.forwarded[direction] += len(data)
                await dest.drain()
        except OSError:
            self._end("reset", reset=True)

    def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    def _end(self, why: str, *, reset: bool = False, keep: Side | None = None) -> None:
        """Stop forwarding and close each side (but ``keep``), with RST if ``reset``."""
        if self.ended is not None:
            return
        self.ended = why
        self._stop_tasks()
        for side, writer in self._writers.items():
            if side == keep:
                continue
            if reset:
                _reset(writer)
            else:
                writer.close()
        self.proxy._ended(self)

    def cut(self, *, reset: bool = True) -> None:
        """Close both sides now, with RST if ``reset`` (else FIN), dropping anything held."""
        self._end("cut", reset=reset)
        self._drop_silent()

    def half_open(self, silent: Side) -> None:
        """Forward nothing more; close the side that is not ``silent`` (FIN), keep
        ``silent`` open and never send it anything, a FIN included."""
        if silent not in get_args(Side):
            raise ValueError(f"silent must be 'client' or 'server', got {silent!r}")
        if self.ended is None:
            self.silent = silent
            self._end("half_open", keep=silent)

    def blackhole(self) -> None:
        """Forward nothing more and close nothing: both sides hear silence."""
        if self.ended is None:
            self.silent = "both"
            self.ended = "blackhole"
            self._stop_tasks()
            self.proxy._ended(self)

    def _drop_silent(self) -> None:
        """Close the sockets a half-open or blackhole kept open (at the proxy's close)."""
        if self.silent is not None:
            for side, writer in self._writers.items():
                if self.silent in (side, "both"):
                    _reset(writer)
            self.silent = None


class FaultProxy:
    """A TCP proxy to ``target_host:target_port`` that can delay, stall, cut and half-open.

    ::

        async with FaultProxy(target_port) as proxy:
            # clients connect to 127.0.0.1:proxy.port
            proxy.delay(0.05, "to_server")
            proxy.stall("to_client")
            proxy.resume()
            proxy.half_open("client")

    ``port=0`` (the default) listens on a free port; :attr:`port` is the one
    bound once started. Closing the proxy (``async with`` exit, :meth:`close`)
    closes every connection, silent ones included.
    """

    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = port
        #: Connections accepted so far.
        self.accepted = 0
        #: Every connection accepted, open or not, in order.
        self.history: list[ProxiedConnection] = []
        self._live: list[ProxiedConnection] = []
        self._held: list[ProxiedConnection] = []  # silent: open sockets, nothing forwarded
        self._server: asyncio.Server | None = None
        self._delays: dict[Direction, float] = dict.fromkeys(DIRECTIONS, 0.0)
        self._flowing: dict[Direction, asyncio.Event] = {d: asyncio.Event() for d in DIRECTIONS}
        for event in self._flowing.values():
            event.set()

    def __repr__(self) -> str:
        return f"<FaultProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]}>"

    def address(self, node: str) -> str:
        """``node`` at the proxy's address (``name@host:port``), for :func:`pybeam.connect`."""
        return f"{node.partition('@')[0]}@{self.host}:{self.port}"

    @property
    def connections(self) -> list[ProxiedConnection]:
        """The connections forwarding now (not silent, not ended)."""
        return list(self._live)

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> FaultProxy:
        """Start listening."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and close every connection (RST), silent ones too."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in [*self._live, *self._held]:
            conn.cut(reset=True)
        self._held.clear()
        # Let the cancelled forwarding tasks finish, so none outlives the proxy.
        tasks = [t for conn in self.history for t in conn._tasks if t is not asyncio.current_task()]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- faults ----------------------------------------------------------------

    def delay(self, seconds: float, direction: Direction | None = None) -> None:
        """Hold each chunk ``seconds`` before passing it on (``direction``, or both); order is kept."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        for d in _directions(direction):
            self._delays[d] = float(seconds)

    def stall(self, direction: Direction | None = None) -> None:
        """Stop passing bytes on in ``direction`` (or both); sockets stay open, bytes are held."""
        for d in _directions(direction):
            self._flowing[d].clear()

    def resume(self, direction: Direction | None = None) -> None:
        """Undo :meth:`stall` and :meth:`delay` in ``direction`` (or both): held bytes go on, in order."""
        for d in _directions(direction):
            self._delays[d] = 0.0
            self._flowing[d].set()

    def cut(self, *, reset: bool = True) -> int:
        """Close every open connection on both sides (RST, or FIN if not ``reset``); how many."""
        conns = list(self._live)
        for conn in conns:
            conn.cut(reset=reset)
        return len(conns)

    def half_open(self, silent: Side) -> int:
        """Half-open every open connection: ``silent``'s side is kept open and hears
        nothing, ever; the other side is closed. How many connections."""
        conns = list(self._live)
        for conn in conns:
            conn.half_open(silent)
            self._held.append(conn)
        return len(conns)

    def blackhole(self) -> int:
        """Every open connection forwards nothing more and is never closed; how many."""
        conns = list(self._live)
        for conn in conns:
            conn.blackhole()
            self._held.append(conn)
        return len(conns)

    async def wait_connections(self, count: int = 1, timeout: float = 10.0) -> list[ProxiedConnection]:
        """Wait until at least ``count`` connections are open through the proxy; they."""
        await eventually(lambda: len(self._live) >= count, timeout, what=f"{count} connections via {self}")
        return self.connections

    # -- inside ----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            server = await asyncio.wait_for(asyncio.open_connection(*self.target), _CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            _reset(writer)  # the target refused: so does the proxy, as a closed port would
            return
        if self._server is None:  # closed while we were connecting
            _reset(writer)
            _reset(server[1])
            return
        self.accepted += 1
        conn = ProxiedConnection(self, (reader, writer), server)
        self.history.append(conn)
        if conn.ended is None:
            self._live.append(conn)

    def _ended(self, conn: ProxiedConnection) -> None:
        with contextlib.suppress(ValueError):
            self._live.remove(conn)


# -- between two nodes of a cluster ------------------------------------------------------------


async def _redial(target: str, address: str) -> bool:
    """On the dialing node (by rpc): drop the connection to ``target``, dial it at ``address``."""
    net.disconnect(target)
    return await net.connect(address)


async def route_through(proxy: FaultProxy, dialer: str, target: str, *, timeout: float = 20.0) -> None:
    """Make the connection between nodes ``dialer`` and ``target`` go through ``proxy``.

    ``proxy`` must forward to ``target``'s listening port. Run on a node
    connected to both (a cluster's manager): ``dialer`` drops its connection
    to ``target`` and dials it at the proxy; tried again until the live
    connection between the two is the proxied one (``target`` may dial back
    directly in between, and one of two simultaneous connections loses).
    """

    async def routed() -> bool:
        tried = len(proxy.history)
        if not await rpc.call(dialer, _redial, target, proxy.address(target), timeout=10):
            return False
        # A connection that lost a simultaneous connect closes at once: give it a moment.
        await asyncio.sleep(0.2)
        ours = proxy.history[tried:]
        connected = target in await rpc.call(dialer, net.nodes, timeout=10)
        return connected and len(ours) == 1 and ours[0].open

    await eventually(routed, timeout, every=0.2, what=f"{dialer} connected to {target} through {proxy}")


async def listening_port(node: str) -> int:
    """The port ``node`` listens on for distribution (asked by rpc)."""
    port: int = await rpc.call(node, _own_port, timeout=10)
    return port


def _own_port() -> int:
    from ..node import current_node

    dist = current_node().dist
    port = getattr(dist, "port", None)
    if not isinstance(port, int):
        raise RuntimeError(f"cannot tell which port {current_node().name} listens on (not distributed?)")
    return port

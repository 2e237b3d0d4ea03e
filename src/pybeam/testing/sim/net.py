"""An in-memory network for a :class:`~pybeam.testing.sim.loop.VirtualLoop`.

Connections are pairs of asyncio transports that hand bytes to each other
through the loop, in order, after the link's latency: the real distribution
(port mapper, handshake, framing, ticks) runs over them unchanged. Each end
belongs to the node whose code opened it (or accepted it), so faults are
operations on links between nodes:

- :meth:`SimNetwork.partition` (symmetric or one-way): traffic on the cut
  direction is held, as a black-holed TCP link holds it; new connections
  hang. Healed before the tick timeout, it is all delivered; otherwise the
  connection breaks on the tick timeout and what was held is lost with it.
- :meth:`SimNetwork.delay`: traffic on a link arrives that much later (in
  order).
- :meth:`SimNetwork.drop`: the connections of a link break now (both sides
  see a reset: queued messages are lost, links and monitors get
  ``noconnection``) and new ones are refused for a while.
- :meth:`SimNetwork.sever`: a crashed host: its ends vanish with no FIN,
  the peers' ends stay open and silent until their tick timeout.
- :meth:`SimNetwork.freeze`: a stopped node: its traffic both ways is held
  until :meth:`thaw` (the loop stops its callbacks: see
  :meth:`VirtualLoop.freeze <pybeam.testing.sim.loop.VirtualLoop.freeze>`).

The network never reorders bytes within a connection.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...node import Node

__all__ = ["SimNetwork", "SimServer", "SimTransport"]

_DATA, _EOF, _RESET = 0, 1, 2
_KINDS = ("data", "eof", "reset")

Address = tuple[str, int]
Owner = str | None


class _Socket:
    """What ``server.sockets[i]`` offers the code that asks for its port."""

    def __init__(self, address: Address) -> None:
        self._address = address

    def getsockname(self) -> Address:
        return self._address


class SimServer:
    """A listening address on the simulated network (an ``asyncio.Server`` look-alike)."""

    def __init__(
        self, net: SimNetwork, owner: Owner, addresses: list[Address], factory: Callable[[], Any]
    ) -> None:
        self.net = net
        self.owner = owner
        self.addresses = addresses
        self.factory = factory
        self.sockets = [_Socket(a) for a in addresses]
        self._serving = True
        self._closed = net.loop.create_future()

    def close(self) -> None:
        if self._serving:
            self._serving = False
            self.net._unlisten(self)
            self._closed.set_result(None)

    def is_serving(self) -> bool:
        return self._serving

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.net.loop

    async def start_serving(self) -> None:
        return None

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def serve_forever(self) -> None:
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> SimServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


class SimTransport(asyncio.Transport):
    """One end of a simulated TCP connection."""

    def __init__(self, net: SimNetwork, owner: Owner, local: Address, remote: Address, protocol: Any) -> None:
        super().__init__()
        self.net = net
        self.owner = owner
        self.local = local
        self.remote = remote
        self._protocol = protocol
        self.peer: SimTransport | None = None
        #: What has arrived for this end: (deliverable at, kind, bytes).
        self.inbox: deque[tuple[float, int, bytes]] = deque()
        self._last_arrival = 0.0
        self._made = False
        self._closing = False
        #: The protocol has had connection_lost: this end is gone.
        self.lost = False
        #: The host of this end crashed: nothing in or out, nobody told.
        self.dead = False
        self._reading = True
        self._pump_handle: asyncio.Handle | None = None
        self._limits = (65536, 16384)

    def __repr__(self) -> str:
        return f"<SimTransport {self.owner} {self.local}->{self.remote}>"

    # -- asyncio.Transport ---------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.remote, "sockname": self.local}.get(name, default)

    def is_closing(self) -> bool:
        return self._closing or self.lost

    def set_protocol(self, protocol: Any) -> None:
        self._protocol = protocol

    def get_protocol(self) -> Any:
        return self._protocol

    def is_reading(self) -> bool:
        return self._reading and not self.lost

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self.pump()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._limits = (high if high is not None else 65536, low if low is not None else 16384)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._limits[1], self._limits[0]

    def get_write_buffer_size(self) -> int:
        return 0  # the simulated kernel takes every byte at once

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self.lost or self.dead or not data:
            return
        self.net._send(self, _DATA, bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self.lost or self.dead:
            return
        self.net._send(self, _EOF, b"")

    def close(self) -> None:
        if self._closing or self.lost:
            return
        self._closing = True
        if not self.dead:
            self.net._send(self, _EOF, b"")
        self.net.loop.call_soon(self._lose, None)

    def abort(self) -> None:
        if self.lost:
            return
        self._closing = True
        if not self.dead:
            self.net._send(self, _RESET, b"")
        self._lose(None)

    # -- the network's side -----------------------------------------------------------

    def _connection_made(self) -> None:
        if self.lost:
            return
        self._made = True
        self._protocol.connection_made(self)
        self.pump()

    def _lose(self, exc: BaseException | None) -> None:
        if self.lost:
            return
        self.lost = True
        self._closing = True
        self.inbox.clear()
        if self._pump_handle is not None:
            self._pump_handle.cancel()
            self._pump_handle = None
        self.net._forget(self)
        if self._made:
            self._protocol.connection_lost(exc)

    def arrive(self, at: float, kind: int, data: bytes) -> None:
        """Queue what the peer sent, deliverable at virtual time ``at`` (never
        before what came earlier)."""
        if self.lost or self.dead:
            return
        at = max(at, self._last_arrival)
        self._last_arrival = at
        self.inbox.append((at, kind, data))
        self.pump()

    def pump(self) -> None:
        """Deliver what is due, unless the link is cut or this end does not read."""
        if self._pump_handle is not None or self.lost or self.dead or not self._made:
            return
        inbox = self.inbox
        if not inbox:
            return
        net = self.net
        peer = self.peer
        if peer is not None and net.blocked(peer.owner, self.owner):
            return  # held: a heal or thaw pumps again
        now = net.loop.time()
        at = inbox[0][0]
        if at > now:
            self._pump_handle = net.loop.call_at(at, self._pumped)
            return
        # One chunk per callback: other tasks run between, as they would
        # between the reads of a real socket.
        self._pump_handle = net.loop.call_soon(self._pumped)

    def _pumped(self) -> None:
        self._pump_handle = None
        if self.lost or self.dead or not self.inbox:
            return
        peer = self.peer
        if peer is not None and self.net.blocked(peer.owner, self.owner):
            return
        if self.inbox[0][0] > self.net.loop.time():
            self.pump()
            return
        if not self._reading and self.inbox[0][1] == _DATA:
            return  # resume_reading pumps again
        _, kind, data = self.inbox.popleft()
        net = self.net
        if net.record:
            net.deliveries.append(
                (round(net.loop.time(), 6), peer.owner if peer else None, self.owner, _KINDS[kind], len(data))
            )
        if kind == _DATA:
            net.delivered_bytes += len(data)
            self._protocol.data_received(data)
        elif kind == _EOF:
            keep_open = self._protocol.eof_received()
            if not keep_open:
                self.close()
        else:
            self._lose(ConnectionResetError(errno.ECONNRESET, "connection reset by peer"))
            return
        self.pump()


class SimNetwork:
    """Addresses, connections and the faults between the nodes of one simulation."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, latency: float = 0.001) -> None:
        self.loop = loop
        #: Seconds every byte takes to cross a link (before any delay fault).
        self.latency = latency
        self._servers: dict[Address, SimServer] = {}
        self._ports = itertools.count(20000)
        # Dicts, not sets: iteration in insertion order keeps runs deterministic.
        self._ends: dict[Owner, dict[SimTransport, None]] = {}
        #: Directed links whose traffic is held: (from, to).
        self._cut: set[tuple[str, str]] = set()
        self._frozen: set[str] = set()
        self._crashed: weakref.WeakSet[Node] = weakref.WeakSet()
        self._delays: dict[tuple[str, str], float] = {}
        #: Links refused until a virtual time: (a, b) with a < b.
        self._refused: dict[tuple[str, str], float] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self.delivered_bytes = 0
        self.connections = 0
        #: With :attr:`record` on, every delivery: (virtual time, from, to, kind, bytes).
        self.record = False
        self.deliveries: list[tuple[float, Owner, Owner, str, int]] = []

    # -- the state of a link -----------------------------------------------------------

    def blocked(self, src: Owner, dst: Owner) -> bool:
        """Whether traffic from ``src``'s ends to ``dst``'s is held now."""
        if src is None or dst is None or src == dst:
            return False
        if src in self._frozen or dst in self._frozen:
            return True
        return (src, dst) in self._cut

    def _delay(self, src: Owner, dst: Owner) -> float:
        if src is None or dst is None or src == dst:
            return self.latency
        return self.latency + self._delays.get((src, dst), 0.0)

    # -- faults ---------------------------------------------------------------------------

    def partition(self, side: Iterable[str], other: Iterable[str], *, oneway: bool = False) -> None:
        """Hold traffic from ``side`` to ``other`` (and back, unless ``oneway``)."""
        a, b = list(side), list(other)
        for x in a:
            for y in b:
                if x != y:
                    self._cut.add((x, y))
                    if not oneway:
                        self._cut.add((y, x))

    def heal(self, nodes: Iterable[str] | None = None) -> None:
        """End every cut (or those touching ``nodes``); held traffic flows again."""
        if nodes is None:
            self._cut.clear()
        else:
            names = set(nodes)
            self._cut = {(x, y) for x, y in self._cut if x not in names and y not in names}
        self._release()

    def delay(self, src: str, dst: str, seconds: float) -> None:
        """Traffic from ``src`` to ``dst`` arrives ``seconds`` later from now on (0: no delay)."""
        if seconds <= 0:
            self._delays.pop((src, dst), None)
        else:
            self._delays[(src, dst)] = seconds

    def drop(self, a: str, b: str, refuse_for: float = 0.0) -> int:
        """Break every connection between ``a`` and ``b`` now, as a reset both
        sides see; refuse new ones for ``refuse_for`` seconds. Returns how many broke."""
        key = (min(a, b), max(a, b))
        if refuse_for > 0:
            self._refused[key] = self.loop.time() + refuse_for
        broken = 0
        for end in list(self._ends.get(a, ())):
            peer = end.peer
            if peer is not None and peer.owner == b:
                reset = ConnectionResetError(errno.ECONNRESET, "connection reset (link dropped)")
                end._lose(reset)
                peer._lose(reset)
                broken += 1
        return broken

    def clear_delays(self) -> None:
        """End every delay and every refusal of a dropped link."""
        self._delays.clear()
        self._refused.clear()

    def freeze(self, node: str) -> None:
        """Hold everything ``node`` sends and everything sent to it."""
        self._frozen.add(node)

    def thaw(self, node: str) -> None:
        """Let a frozen node's traffic flow again."""
        self._frozen.discard(node)
        self._release()

    def crashed(self, node: Node) -> None:
        """Mark this incarnation of a node as crashed: it can open nothing any more."""
        self._crashed.add(node)

    def sever(self, node: str, *, fin: bool = False) -> None:
        """``node`` crashed: its listeners and ends vanish. With ``fin`` its
        peers get a FIN (a process killed on a live host); without, nothing
        (a host gone): they notice by their tick timeout. Ends to owner-less
        services (the port mapper) always get their FIN: that mapper runs on
        the crashed node's host and sees its client die."""
        for server in list(self._servers.values()):
            if server.owner == node:
                server.close()
        for end in list(self._ends.get(node, ())):
            peer = end.peer
            if peer is not None and self.blocked(node, peer.owner):
                # Held by a cut link: those bytes were lost in the network,
                # and the crashed host will never send them again.
                peer.inbox.clear()
            if peer is not None and (fin or peer.owner is None) and not end.is_closing():
                self._send(end, _EOF, b"")
            end.dead = True
            end.inbox.clear()
            end._lose(ConnectionResetError(errno.ECONNRESET, "host crashed"))
        self._frozen.discard(node)

    def _release(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        for ends in list(self._ends.values()):
            for end in list(ends):
                end.pump()

    # -- connections ------------------------------------------------------------------

    def listen(self, node: Node | None, factory: Callable[[], Any], host: Any, port: Any) -> SimServer:
        if node is not None and node in self._crashed:
            raise OSError(errno.ENETDOWN, f"{node.name} has crashed")
        owner = node.name if node is not None else None
        given = [host] if isinstance(host, str) or host is None else list(host)
        hosts: list[str] = list(dict.fromkeys(str(h or "0.0.0.0") for h in given))
        port = int(port or 0)
        if port == 0:
            port = next(self._ports)
            while any((h, port) in self._servers for h in hosts):
                port = next(self._ports)
        addresses = [(h, port) for h in hosts]
        for address in addresses:
            if address in self._servers:
                raise OSError(errno.EADDRINUSE, f"address already in use: {address[0]}:{address[1]}")
        server = SimServer(self, owner, addresses, factory)
        for address in addresses:
            self._servers[address] = server
        return server

    def _unlisten(self, server: SimServer) -> None:
        for address in server.addresses:
            if self._servers.get(address) is server:
                del self._servers[address]

    def _server_at(self, address: Address) -> SimServer | None:
        return self._servers.get(address) or self._servers.get(("0.0.0.0", address[1]))

    async def connect(
        self, node: Node | None, factory: Callable[[], Any], host: Any, port: Any
    ) -> tuple[SimTransport, Any]:
        """Open a connection from ``node`` (None: the harness) to ``host:port``."""
        if node is not None and node in self._crashed:
            # What is left of a crashed node (its tasks being cancelled) must
            # not reach anyone: a re-registration with the mapper, say.
            raise OSError(errno.ENETDOWN, f"{node.name} has crashed")
        owner = node.name if node is not None else None
        address = (str(host), int(port))
        while True:
            server = self._server_at(address)
            if server is None:
                raise ConnectionRefusedError(
                    errno.ECONNREFUSED, f"connect to {address[0]}:{address[1]}: connection refused"
                )
            target = server.owner
            if owner is not None and target is not None:
                key = (min(owner, target), max(owner, target))
                until = self._refused.get(key)
                if until is not None and until > self.loop.time():
                    raise ConnectionRefusedError(
                        errno.ECONNREFUSED,
                        f"connect to {address[0]}:{address[1]}: connection refused (link dropped)",
                    )
            if not (self.blocked(owner, target) or self.blocked(target, owner)):
                break
            # A SYN into a black hole: wait until the link heals (the caller's
            # own timeout ends the wait, as a real connect times out).
            fut = self.loop.create_future()
            self._waiters.append(fut)
            await fut
        rtt = self._delay(owner, target) + self._delay(target, owner)
        if rtt > 0:
            await asyncio.sleep(rtt)
            if not server.is_serving():
                raise ConnectionRefusedError(
                    errno.ECONNREFUSED, f"connect to {address[0]}:{address[1]}: connection refused"
                )
        local = ("127.0.0.1", next(self._ports))
        client_protocol = factory()
        server_protocol = server.factory()
        client = SimTransport(self, owner, local, address, client_protocol)
        accepted = SimTransport(self, target, address, local, server_protocol)
        client.peer, accepted.peer = accepted, client
        self._ends.setdefault(owner, {})[client] = None
        self._ends.setdefault(target, {})[accepted] = None
        self.connections += 1
        self.loop.call_soon(accepted._connection_made)
        client._connection_made()
        return client, client_protocol

    def _send(self, end: SimTransport, kind: int, data: bytes) -> None:
        peer = end.peer
        if peer is None:
            return
        peer.arrive(self.loop.time() + self._delay(end.owner, peer.owner), kind, data)

    def _forget(self, end: SimTransport) -> None:
        ends = self._ends.get(end.owner)
        if ends is not None:
            ends.pop(end, None)

    def ends(self, owner: Owner) -> list[SimTransport]:
        """The open ends that belong to ``owner``."""
        return list(self._ends.get(owner, ()))

"""The net kernel: a node's connections to other nodes (Erlang's ``net_kernel``).

It listens for peers, registers the node with the port mapper, connects on
demand (the first signal to a node that is not connected connects to it, as in
BEAM), keeps one connection per node pair, turns the node's remote signals into
control messages and the peer's control messages back into local signals, and
— when a connection goes down — gives every link across it the exit
``noconnection`` and every monitor across it a DOWN ``noconnection``.

Signals that only make sense on a connection (an unlink, a link's exit, a
demonitor, a DOWN) are dropped when there is none, neither up nor being set
up: the other side has already seen ``noconnection``. Everything else (send,
link, monitor, exit/2, spawn) connects first if needed. While a connection is
being set up every signal waits in order (as BEAM queues them on a pending
connection); what was queued is dropped if connecting fails, with
``noconnection`` for links, monitors and spawns.

Connecting to a node also connects to the nodes it is connected to (a full
mesh, as dist-erl builds), unless either node is hidden.

Each peer node has one record (:class:`~pybeam.distribution.peer.Peer`, as
OTP's ``#connection{}``): the state of its connection's setup, what is queued
while it is pending and what crosses it. Its transitions are in
:mod:`pybeam.distribution.peer`; this module carries out their actions. The
kernel uses the node only through :class:`~pybeam.distribution.local.LocalNode`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import codec
from ..functions import function_name, resolve_function
from ..logtext import clip, short
from ..node import set_distribution_factory
from ..nodename import check_node_name, parse_address
from ..process import current_process
from ..terms import Crash, Pid, Ref
from . import epmd, guard, handshake
from .busy_wait import BusyWait, busy_wait_from_env, parse_busy_wait, run_queue
from .connection import (
    DEFAULT_BUSY_LIMIT,
    DEFAULT_FRAGMENT_SIZE,
    DEFAULT_HARD_LIMIT,
    DEFAULT_TICKTIME,
    MIN_FRAGMENT_SIZE,
    Connection,
    Op,
    SystemLimit,
    encode_control,
)
from .cookie import resolve_cookie
from .framing import DEFAULT_MAX_FRAME
from .handshake import HandshakeError, PeerInfo
from .local import LocalNode
from .peer import Action, Event, Peer, State
from .signals import Signals, track
from .tls import TLSOptions

# function_name and resolve_function live in pybeam.functions; re-exported
# here for code that imported them from this module.
__all__ = ["DistOptions", "NetKernel", "function_name", "resolve_function"]

logger = logging.getLogger("pybeam.distribution")

# Signals worth opening a connection for; the rest only follow an existing one.
_CONNECTING_OPS = frozenset({Op.SEND, Op.SEND_NAME, Op.LINK, Op.MONITOR, Op.EXIT, Op.SPAWN_REQUEST})


@dataclass
class DistOptions:
    """How a node takes part in distribution."""

    cookie: str
    #: Where to listen; None: the host the node's name names (resolved if a
    #: hostname). Peers always dial the name's host, whatever this is.
    listen: str | None = None
    port: int = 0
    epmd_port: int | None = None
    ticktime: float = DEFAULT_TICKTIME
    hidden: bool = False
    max_frame: int = DEFAULT_MAX_FRAME
    connect_timeout: float = handshake.DEFAULT_TIMEOUT
    #: Incoming connections that have not proved the cookie yet, at most; one
    #: more closes the oldest. None: :func:`default_max_handshakes`.
    max_handshakes: int | None = None
    #: TLS with mutual authentication for every connection and the port
    #: mapper (see :mod:`pybeam.distribution.tls`); None: plain TCP.
    tls: TLSOptions | None = None
    #: Bytes queued to one peer above which a sending process is suspended
    #: at its next receive until they drain (BEAM's dist_buf_busy_limit).
    busy_limit: int = DEFAULT_BUSY_LIMIT
    #: Bytes queued to one peer above which the connection is closed.
    hard_limit: int = DEFAULT_HARD_LIMIT
    #: Encoded messages over this many bytes travel in fragments of it,
    #: interleaved with other senders' messages; 0: never (nor offered).
    fragment_size: int = DEFAULT_FRAGMENT_SIZE
    #: Offer the tuple-native term format (the ``tuple_arrays`` flag); used
    #: with a peer that offers it too. Off: this node speaks as one before it.
    tuple_arrays: bool = True
    #: Seconds (or a level name: ``"medium"``) the loop keeps polling after
    #: traffic before it sleeps, as BEAM's ``+sbwt``; None: ``$PYBEAM_BUSY_WAIT``
    #: or ``medium``. See :mod:`pybeam.distribution.busy_wait`.
    busy_wait: float | str | None = None

    def __post_init__(self) -> None:
        self.busy_wait = busy_wait_from_env() if self.busy_wait is None else parse_busy_wait(self.busy_wait)
        size = self.fragment_size
        if type(size) is not int or not (size == 0 or size >= MIN_FRAGMENT_SIZE):
            raise ValueError(
                f"fragment_size must be 0 (never fragment) or an int >= {MIN_FRAGMENT_SIZE}, got {size!r}"
            )


def _sender_of(control: tuple[Any, ...]) -> Any:
    """Who sends a control message: its order is kept per sender (as BEAM
    keeps it per pair of processes) while a large message is in fragments."""
    op = control[0]
    if op == Op.SEND or op == Op.SEND_NAME:
        # Sent by the running process (messages carry no sender).
        proc = current_process()
        return None if proc is None else proc.pid
    if op == Op.NODES:
        return None  # the net kernel's own, whatever process's signal set the connection up
    if op == Op.DOWN:
        # The process that ended: the monitored pid. A DOWN by name has no
        # pid in it, and the process that ended need not be the one running
        # (another may have killed it): NetKernel.down is told whose it is.
        item = control[3]
        return item if isinstance(item, Pid) else None
    if op == Op.SPAWN_REQUEST:
        return control[2]
    if op == Op.SPAWN_REPLY:
        # Ahead of anything the new process sends.
        return control[3] if isinstance(control[3], Pid) else None
    return control[1]  # LINK, UNLINK, EXIT, LINK_EXIT, MONITOR, DEMONITOR: from this pid


def default_max_handshakes() -> int:
    """The default cap on unauthenticated incoming connections: an eighth of the
    file descriptor limit, within 16..256, so most descriptors stay for
    authenticated connections and everything else the node does."""
    return guard.default_cap(8, 16, 256)


def _sendable(of: Any, node: str, error: Exception) -> Crash:
    """The exit reason sent instead of one that cannot cross to ``node``.

    A process may end with any Python value, but a link's exit or a DOWN is
    sent while the process ends, where an error would help nobody: the far
    side gets a Crash that says what could not be sent instead (``of`` is
    the process the reason was about), ``system_limit`` for a reason too
    large for a frame, as BEAM answers.
    """
    if isinstance(error, SystemLimit):
        crash = Crash(
            "system_limit",
            f"the exit reason of {of!r} is too large to send to {node}: {error.size:,} bytes encoded, "
            f"over the {error.max_frame:,}-byte frame limit",
        )
    else:
        why = clip(str(error), 1000)
        crash = Crash("pybeam.codec.EncodeError", f"the exit reason cannot be sent to another node: {why}")
    return crash


def _parse_address(node: object, arg: str = "node") -> tuple[str, str, int | None]:
    """``name@host[:port]`` -> (node name, host, port or None); :class:`BadArg`
    (a ``ValueError``) naming the problem if it is no valid address."""
    return parse_address(node, arg)


def _failure(error: BaseException) -> str:
    """A connect failure told so that a user sees its cause."""
    if isinstance(error, HandshakeError) and error.reason == "cookie":
        return "cookie refused by peer (the two nodes do not use the same cookie)"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused ({error})"
    if isinstance(error, TimeoutError):
        return "timed out while connecting"
    return str(error) or type(error).__name__


class NetKernel:
    """The distribution layer of one node; the node's :class:`~pybeam.node.RemoteRouter`."""

    def __init__(self, node: LocalNode, options: DistOptions) -> None:
        self.node = node
        self.options = options
        self.cookie = options.cookie
        self.port = 0
        self._server: asyncio.Server | None = None
        #: With TLS: the listening socket and the task accepting on it.
        self._tls_listener: socket.socket | None = None
        self._tls_accepting: asyncio.Task[None] | None = None
        self._epmd_server: epmd.EpmdServer | None = None
        self._registration: epmd.Registration | None = None
        self._reregister_task: asyncio.Task[None] | None = None
        #: One record per peer we are connected to or connecting with.
        self._peers: dict[str, Peer] = {}
        # Why the last attempt to connect to a node failed, for the caller to tell its user.
        self._failures: dict[str, str] = {}
        #: Where each peer was last reached, was told to be (``connect`` with a
        #: port) or is said to be by the mesh. Tried first when connecting; one
        #: that fails is forgotten and the port mapper asked (see _reach).
        self._addresses: dict[str, tuple[str, int]] = {}
        #: Peers whose connection was lost (not closed by disconnect()) and not
        #: made again: for them the port mapper is asked first (they may have
        #: restarted elsewhere).
        self._lost: set[str] = set()
        self._node_monitors: set[Pid] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Control messages from peers turned into local signals, and back.
        self._signals = Signals(node, join_mesh=self._join_mesh)
        self._node_cookies: dict[str, str] = {}
        #: Incoming connections still in their handshake (not proven yet).
        cap = options.max_handshakes
        self._handshakes = guard.ConnectionCap(default_max_handshakes() if cap is None else cap)
        #: Refused handshakes: a flood of them must not flood the log.
        self._refusals = guard.RefusalLog(logger, what="refused incoming connections")
        self._stopping = False
        tls = options.tls
        self._tls_server = tls.server_context(on_refused=self._tls_refused) if tls is not None else None
        self._tls_client = tls.client_context() if tls is not None else None
        #: For the port mapper: the CA check, no hostname check (nodes register over loopback).
        self._tls_epmd = tls.client_context(check_hostname=False) if tls is not None else None
        #: Set when started (it needs the loop).
        self.busy_wait: BusyWait | None = None

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> int:
        """Listen, register with the port mapper; returns the node's creation."""
        opts = self.options
        self.busy_wait = BusyWait(
            asyncio.get_running_loop(), float(opts.busy_wait or 0), run_queue=run_queue()
        )
        # In a clean context: every accepted connection's task inherits the
        # context the server was started in (see _background).
        host = self.node.name.partition("@")[2]
        listen = opts.listen or host
        try:
            if self._tls_server is None:
                self._server = await _background(asyncio.start_server(self._accept, listen, opts.port))
                self.port = self._server.sockets[0].getsockname()[1]
            else:
                # The TLS handshake is ours to start (see _accept_tls): it
                # counts against max_handshakes as a plaintext handshake does.
                listener = self._tls_listener = await _listening_socket(listen, opts.port)
                self.port = listener.getsockname()[1]
                self._tls_accepting = _background(self._accept_tls(listener))
        except OSError as e:
            why = e.strerror or str(e)
            raise OSError(
                e.errno,
                f"node {self.node.name} cannot listen on {listen} port {opts.port}: {why}"
                + (
                    ""
                    if opts.listen
                    else " (the host of its name; pass listen= / --listen to choose another)"
                ),
            ) from e
        try:
            # Clean contexts too: the mapper's server and the registration's
            # watch on its socket are tasks that outlive this call. A mapper
            # started here serves this host and other hosts (the name's address).
            self._epmd_server = await _background(self._ensure_epmd())
            self._registration = await _background(self._register())
        except BaseException:
            await self._close_listeners()
            raise
        self._reregister_task = _background(self._keep_registered())
        return self._registration.creation

    async def _ensure_epmd(self) -> epmd.EpmdServer | None:
        # A mapper started here listens on loopback (where nodes register) and
        # the host of the node's name (where other hosts look up).
        hosts = list(dict.fromkeys([epmd.DEFAULT_HOST, self.node.name.partition("@")[2]]))
        return await epmd.ensure_epmd(
            self.options.epmd_port, hosts, tls=self._tls_server, client_tls=self._tls_epmd
        )

    async def _register(self) -> epmd.Registration:
        return await epmd.register(self.node.name, self.port, self.options.epmd_port, tls=self._tls_epmd)

    async def _keep_registered(self) -> None:
        # The mapper may live in another node's process and die with it: then
        # register again (starting a mapper here if none runs), keeping our
        # creation, so that other nodes can still find us by name.
        while True:
            reg = self._registration
            if reg is None:
                return
            await reg.wait_closed()
            if self._stopping:
                return
            for delay in (0.05, 0.1, 0.2, 0.5, 1.0, 2.0):
                await asyncio.sleep(delay)
                try:
                    if self._epmd_server is None:
                        self._epmd_server = await self._ensure_epmd()
                    self._registration = await self._register()
                    break
                except (OSError, epmd.EpmdError) as e:
                    logger.debug("re-registering %s with the port mapper failed: %s", self.node.name, e)
            else:
                logger.warning("node %s could not register with a port mapper again", self.node.name)
                return

    async def stop(self) -> None:
        """Close every connection (nodedown everywhere), stop listening, unregister."""
        self._stopping = True
        if self.busy_wait is not None:
            self.busy_wait.stop()
        for peer in list(self._peers.values()):
            if peer.conn is not None:
                peer.conn.close("node stopping")
        for peer in list(self._peers.values()):
            if peer.pending:
                self._fire(peer, Event.STOPPED, why="node stopping")
        for task in list(self._tasks):
            task.cancel()
        self._handshakes.drop_all()
        await self._close_listeners()

    async def _close_listeners(self) -> None:
        if self._reregister_task is not None:
            self._reregister_task.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self._tls_accepting is not None:
            self._tls_accepting.cancel()
            with contextlib.suppress(BaseException):
                await self._tls_accepting
        if self._tls_listener is not None:
            self._tls_listener.close()
        if self._registration is not None:
            await self._registration.close()
            self._registration = None
        if self._epmd_server is not None:
            await self._epmd_server.close()
            self._epmd_server = None

    def _spawn_task(self, coro: Any) -> None:
        task = _background(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the user's view -----------------------------------------------------------

    def nodes(self, *, hidden: bool = False) -> list[str]:
        """Connected nodes (visible ones; with ``hidden``, hidden ones too)."""
        return sorted(
            name for name, p in self._peers.items() if p.conn is not None and (hidden or not p.hidden)
        )

    def is_connected(self, node: str) -> bool:
        """True if a connection to ``node`` is up."""
        peer = self._peers.get(node)
        return peer is not None and peer.conn is not None

    def peers(self) -> list[str]:
        """Nodes connected or being connected with (every node with a record)."""
        return sorted(self._peers)

    def peer(self, node: str) -> Peer | None:
        """The record of ``node``'s connection (None if neither connected nor connecting)."""
        return self._peers.get(node)

    def connection(self, node: str) -> Connection | None:
        """The live connection to ``node``, if any."""
        peer = self._peers.get(node)
        return None if peer is None else peer.conn

    def connection_info(self, node: str) -> dict[str, Any] | None:
        """Traffic and heartbeat figures of the live connection to ``node``
        (see :meth:`Connection.info`), or None if it is not up."""
        conn = self.connection(node)
        return None if conn is None or conn.closed else conn.info()

    async def connect(self, node: str) -> bool:
        """Connect to ``node`` (``name@host`` or ``name@host:port``); True once up.

        A port given here is tried first from now on, for as long as it works:
        once connecting there fails, the port mapper is asked instead.
        """
        name, host, port = _parse_address(node)
        if name == self.node.name:
            return True
        peer = self._peers.get(name)
        if peer is not None and peer.conn is not None:
            return True
        if port is not None:
            self._addresses[name] = (host, port)
            self._lost.discard(name)  # the caller says where it is now
        if self._stopping:
            return False
        if peer is None:
            peer = Peer(name)
            self._fire(peer, Event.WANTED)
        if peer.done is None:
            peer.done = asyncio.get_running_loop().create_future()
        return await asyncio.shield(peer.done)

    def disconnect(self, node: str) -> bool:
        """Close the connection to ``node``; False if there was none."""
        conn = self.connection(_parse_address(node)[0])
        if conn is None:
            return False
        conn.close("disconnected")
        # Closed by us, not lost: the node is still where it was.
        self._lost.discard(conn.name)
        return True

    async def drain(self, node: str) -> None:
        """Wait until what is queued to ``node`` is below the busy limit (at
        once if it is, or if ``node`` is not connected)."""
        conn = self.connection(node)
        if conn is not None:
            await conn.drain()

    def monitor_nodes(self, pid: Pid, flag: bool) -> None:
        """Subscribe ``pid`` to ``("nodeup", node)`` / ``("nodedown", node)`` or unsubscribe it."""
        if flag:
            self._node_monitors.add(pid)
        else:
            self._node_monitors.discard(pid)

    def set_cookie(self, cookie: str, node: str | None = None) -> None:
        """Use ``cookie`` for every later handshake (live connections stay up).

        With ``node``, use it only with that node, for connections either
        side opens (``erlang:set_cookie/2``).
        """
        if not cookie:
            raise ValueError("a cookie cannot be empty")
        if node is not None:
            check_node_name(node)
        if node is None:
            self.cookie = cookie
        else:
            self._node_cookies[node] = cookie

    def clear_cookie(self, node: str) -> None:
        """Forget the cookie set for ``node`` alone."""
        self._node_cookies.pop(node, None)

    def _cookie_for(self, node: str) -> str:
        return self._node_cookies.get(node, self.cookie)

    # -- connecting ---------------------------------------------------------------

    def _flags(self) -> dict[str, Any]:
        flags: dict[str, Any] = {"hidden": self.options.hidden, "port": self.port}
        if self.options.fragment_size:
            flags["fragments"] = True
        if self.options.tuple_arrays:
            flags["tuple_arrays"] = True
        return flags

    def connect_failure(self, node: str) -> str | None:
        """Why the last attempt to connect to ``node`` failed; None if it did not fail."""
        return self._failures.get(node)

    async def _resolve(self, name: str) -> tuple[str, int]:
        """Where the port mapper on the node's host says ``name`` listens."""
        host = name.partition("@")[2]
        port = await epmd.lookup(name, self.options.epmd_port, host=host, tls=self._tls_epmd)
        if port is None:
            raise OSError(f"node {name} is not registered with the port mapper on {host}")
        return host, port

    async def _reach(
        self, name: str, still_wanted: Callable[[], bool] | None = None
    ) -> tuple[PeerInfo, asyncio.StreamReader, asyncio.StreamWriter]:
        """Dial ``name`` and shake hands at its known address and where the
        port mapper says it is, in turn, until one answers.

        The known address comes first, unless the connection to ``name`` was
        lost since: the node may have restarted under the same name, on a new
        port (it registered that with the mapper). A known address that fails
        is forgotten at once.
        """
        known = self._addresses.get(name)
        order = ("mapper", "known") if known is None or name in self._lost else ("known", "mapper")
        failure: Exception | None = None
        tried: set[tuple[str, int]] = set()
        for source in order:
            if source == "known":
                address = known
            else:
                try:
                    address = await self._resolve(name)
                except (OSError, TimeoutError, epmd.EpmdError, ValueError) as e:
                    failure = failure or e
                    continue
            if address is None or address in tried:
                continue
            tried.add(address)
            try:
                return await self._dial(name, *address, still_wanted=still_wanted)
            except HandshakeError as e:
                if e.reason in ("duplicate", "cookie", "not_allowed", "version"):
                    raise  # the node we meant answered there: asking elsewhere changes nothing
                failure = e
            except (OSError, TimeoutError) as e:
                failure = e
            if address == known and self._addresses.get(name) == known:
                del self._addresses[name]
                self._lost.discard(name)
        assert failure is not None
        raise failure

    async def _dial(
        self, name: str, host: str, port: int, still_wanted: Callable[[], bool] | None = None
    ) -> tuple[PeerInfo, asyncio.StreamReader, asyncio.StreamWriter]:
        opts = self.options
        if self._tls_client is None:
            connecting = asyncio.open_connection(host, port)
        else:
            # The TLS handshake (both certificates) comes first, within the same timeout.
            connecting = asyncio.open_connection(
                host,
                port,
                ssl=self._tls_client,
                server_hostname=host,
                ssl_handshake_timeout=opts.connect_timeout,
            )
        reader, writer = await asyncio.wait_for(connecting, opts.connect_timeout)
        peer = await handshake.initiate(
            reader,
            writer,
            my_name=self.node.name,
            my_creation=self.node.creation,
            cookie=self._cookie_for(name),
            expected_peer=name,
            flags=self._flags(),
            timeout=opts.connect_timeout,
            still_wanted=still_wanted,
        )
        return peer, reader, writer

    async def _dial_peer(self, peer: Peer) -> None:
        """Our own attempt to connect to ``peer`` (the task of a CONNECTING record)."""
        name = peer.name
        task = asyncio.current_task()

        def still_wanted() -> bool:
            # Asked when the peer is up with us already: this dial is still
            # the record's own (a dial given up is cancelled, but say so).
            return peer.dial is task and self._peers.get(name) is peer

        try:
            info, reader, writer = await self._reach(name, still_wanted)
        except HandshakeError as e:
            logger.info("cannot connect to %s: %s", name, e)
            lost = e.reason == "duplicate"  # the peer is dialling us, and its attempt wins
            self._dial_ended(peer, Event.DIAL_LOST_RACE if lost else Event.DIAL_FAILED, _failure(e))
        except (OSError, TimeoutError, epmd.EpmdError, ValueError) as e:
            logger.info("cannot connect to %s: %s", name, e)
            self._dial_ended(peer, Event.DIAL_FAILED, _failure(e))
        except Exception as e:
            # A bug must not leave the signals queued and connect() waiting forever.
            logger.exception("node %s: connecting to %s failed", self.node.name, name)
            self._dial_ended(peer, Event.DIAL_FAILED, f"internal error: {e!r}")
        else:
            if peer.dial is not asyncio.current_task() or self._peers.get(name) is not peer:
                writer.close()  # superseded meanwhile (see _install)
                return
            peer.dial = None
            self._install(peer, Event.DIAL_UP, info, reader, writer)

    def _dial_ended(self, peer: Peer, event: Event, why: str) -> None:
        if peer.dial is not asyncio.current_task() or self._peers.get(peer.name) is not peer:
            return  # this attempt was abandoned meanwhile
        peer.dial = None
        self._fire(peer, event, why=why)

    def _awaiting_timeout(self, peer: Peer, why: str) -> None:
        peer.timer = None
        if self._peers.get(peer.name) is peer and peer.state is State.AWAITING_PEER:
            self._fire(peer, Event.TIMEOUT, why=f"{why}, and its own attempt did not reach us")

    # -- the state machine's actions (see pybeam.distribution.peer) ---------------

    def _fire(
        self, peer: Peer, event: Event, *, why: str = "", conn: Connection | None = None
    ) -> tuple[Action, ...]:
        """Take ``event``'s transition on ``peer`` and carry out its actions."""
        actions = peer.fire(event)
        if peer.state is State.IDLE:
            if self._peers.get(peer.name) is peer:
                del self._peers[peer.name]
        else:
            self._peers[peer.name] = peer
        for action in actions:
            if action is Action.DIAL:
                self._do_dial(peer)
            elif action is Action.CANCEL_DIAL:
                self._cancel_dial(peer)
            elif action is Action.START_TIMER:
                loop = asyncio.get_running_loop()
                peer.timer = loop.call_later(self.options.connect_timeout, self._awaiting_timeout, peer, why)
            elif action is Action.CANCEL_TIMER:
                self._cancel_timer(peer)
            elif action is Action.CLOSE_OLD:
                old, peer.conn = peer.conn, None
                why = why or "replaced by a new connection (the peer restarted or reconnected)"
                if old is not None:
                    old.close(why)  # its end is told by the DOWN that follows, once
            elif action is Action.DOWN:
                self._do_down(peer, why)
            elif action is Action.UP:
                assert conn is not None
                self._do_up(peer, conn)
            elif action is Action.FAIL:
                self._do_fail(peer, why)
            # ACCEPT, ALIVE and REFUSE are answers for the incoming handshake (see _incoming).
        return actions

    def _do_dial(self, peer: Peer) -> None:
        self._failures.pop(peer.name, None)
        peer.dialled = True
        if peer.done is None:
            peer.done = asyncio.get_running_loop().create_future()
        # Not in the context of the process whose signal started it: the
        # connection outlives it (see _background).
        peer.dial = _background(self._dial_peer(peer))

    def _cancel_dial(self, peer: Peer) -> None:
        dial, peer.dial = peer.dial, None
        if dial is not None and dial is not asyncio.current_task():
            dial.cancel()

    def _cancel_timer(self, peer: Peer) -> None:
        timer, peer.timer = peer.timer, None
        if timer is not None:
            timer.cancel()

    def _do_up(self, peer: Peer, conn: Connection) -> None:
        name = peer.name
        peer.conn = conn
        # Hidden if either end is, as in OTP: a hidden node's connections are
        # hidden on both sides, so it lists none of them in nodes() and its
        # global and pg do not sync with the nodes it talks to.
        peer.hidden = conn.hidden or self.options.hidden
        peer.acceptor = None
        peer.dialled = False
        self._cancel_dial(peer)
        self._cancel_timer(peer)
        self._failures.pop(name, None)
        self._lost.discard(name)
        port = conn.peer.flags.get("port")
        if type(port) is int and 0 < port <= 65535:
            # The port this incarnation listens on (it said so itself): a
            # restarted node replaces what we knew of the earlier one.
            self._addresses[name] = (name.partition("@")[2], port)
        # Its read task and ticks must not hold the context of whatever
        # process's signal led here (see _background).
        contextvars.Context().run(conn.start)
        queue, peer.queue = peer.queue, []
        for sender, data in queue:
            conn.send_encoded(data, sender)  # encoded when queued, once
        done, peer.done = peer.done, None
        if done is not None and not done.done():
            done.set_result(True)
        logger.info("node %s: connected to %s", self.node.name, name)
        if not peer.hidden:
            self._notify_nodes(("nodeup", name))
            if not self.options.hidden:
                conn.send((Op.NODES, self._mesh_addresses(exclude=name)))

    def _do_fail(self, peer: Peer, why: str) -> None:
        self._failures[peer.name] = why or "unknown"
        self._cancel_dial(peer)
        self._cancel_timer(peer)
        peer.acceptor = None
        peer.dialled = False
        peer.queue = []  # what it held is tracked: undone below
        self._signals.undo(peer)
        done, peer.done = peer.done, None
        if done is not None and not done.done():
            done.set_result(False)

    def _do_down(self, peer: Peer, why: str) -> None:
        logger.info("node %s: connection to %s down: %s", self.node.name, peer.name, why)
        self._signals.undo(peer)
        if not peer.hidden:
            self._notify_nodes(("nodedown", peer.name))

    def _install(
        self,
        peer: Peer,
        event: Event,
        info: PeerInfo,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """A handshake of ``peer``'s finished (``event``: DIAL_UP or ACCEPT_UP): bring it up."""
        if self._stopping:
            writer.close()
            return
        try:
            conn = Connection(
                info,
                reader,
                writer,
                dispatch=self._signals.dispatch,
                owner=peer,
                on_closed=self._closed,
                ticktime=self.options.ticktime,
                max_frame=self.options.max_frame,
                busy_limit=self.options.busy_limit,
                hard_limit=self.options.hard_limit,
                fragment_size=self.options.fragment_size or None,
                sender_of=_sender_of,
                deliver=self.node.deliver,
                tuple_arrays=self.options.tuple_arrays,
                busy_wait=self.busy_wait,
            )
        except Exception:
            # A bug, not the peer's doing; but whoever waits for this
            # connection must hear that it failed rather than wait for ever.
            logger.exception("node %s: cannot set up the connection to %s", self.node.name, info.name)
            writer.close()
            failed = Event.DIAL_FAILED if event is Event.DIAL_UP else peer.accept_failed_event()
            self._fire(peer, failed, why="cannot set up the connection (an internal error: see the log)")
            return
        self._fire(peer, event, conn=conn)

    def _mesh_addresses(self, exclude: str) -> list[str]:
        out = []
        for name, p in self._peers.items():
            if name == exclude or p.conn is None or p.hidden:
                continue
            addr = self._addresses.get(name)
            out.append(f"{name}:{addr[1]}" if addr is not None else name)
        return out

    def _notify_nodes(self, msg: tuple[str, str]) -> None:
        for pid in list(self._node_monitors):
            if not self.node.deliver(pid, msg):
                self._node_monitors.discard(pid)

    def _closed(self, conn: Connection, reason: str) -> None:
        peer = self._peers.get(conn.name)
        if peer is None or peer.conn is not conn:
            # Replaced (CLOSE_OLD undid it already, and its DOWN said so) or never installed.
            logger.debug("node %s: connection to %s closed: %s", self.node.name, conn.name, reason)
            return
        peer.conn = None
        if conn.name in self._addresses:
            self._lost.add(conn.name)
        self._fire(peer, Event.CONN_LOST, why=reason)

    # -- incoming connections -----------------------------------------------------

    def _accept_peer(self, peer: str, creation: int, flags: Any) -> str:
        """Whether to go on with an incoming handshake from ``peer``. Asked before
        its proof, when the name is only a claim: decide, record nothing."""
        if peer == self.node.name or self._stopping:
            return "not_allowed"
        record = self._peers.get(peer)
        if record is not None and record.accepting:
            return "duplicate"  # that peer is already coming in on another connection
        return "ok"

    def _admit(self, key: Any, drop: Callable[[], None]) -> None:
        """Count an incoming connection against max_handshakes until it proves the cookie."""
        if self._handshakes.admit(key, drop):
            self._refusals.log(
                logging.WARNING,
                "node %s: more than %d connections without a proven cookie: closed the oldest",
                self.node.name,
                self._handshakes.limit,
            )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """An incoming plaintext connection."""
        self._admit(writer, writer.transport.abort)
        await self._incoming(reader, writer, writer)

    async def _accept_tls(self, listener: socket.socket) -> None:
        """Accept connections of a TLS node. Each counts against max_handshakes
        from the start, its TLS handshake included."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as e:  # out of descriptors, say: keep serving
                self._refusals.log(logging.WARNING, "node %s cannot accept: %s", self.node.name, e)
                await asyncio.sleep(0.1)
                continue
            incoming = _Incoming(sock)
            self._admit(incoming, incoming.drop)
            task = _background(self._start_tls(incoming))
            incoming.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _start_tls(self, incoming: _Incoming) -> None:
        """The TLS handshake of an incoming connection (both certificates),
        under the connect timeout, then the cookie handshake inside. A failed
        TLS handshake is logged by the context (see tls)."""
        assert self._tls_server is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                incoming.sock,
                ssl=self._tls_server,
                ssl_handshake_timeout=self.options.connect_timeout,
            )
        except (OSError, TimeoutError, ValueError, RuntimeError) as e:  # ssl.SSLError is an OSError
            logger.debug("node %s: TLS handshake of an incoming connection failed: %s", self.node.name, e)
            self._handshakes.release(incoming)
            incoming.sock.close()
            return
        except asyncio.CancelledError:
            self._handshakes.release(incoming)
            incoming.sock.close()
            raise
        writer = incoming.writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self._incoming(reader, writer, incoming)

    async def _incoming(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: Any) -> None:
        """The cookie handshake of an incoming connection (``key``: its place in
        the max_handshakes cap), and the connection once it is up."""
        owned: list[Peer] = []

        def proven(name: str, creation: int, flags: Any) -> str:
            # Only now is the name known to be the peer's: the first moment
            # the record may change (a stranger's claim must not keep a node out).
            self._handshakes.release(key)  # authenticated: no longer the cap's business
            decision = self._accept_peer(name, creation, flags)
            if decision != "ok":
                return decision
            peer = self._peers.get(name) or Peer(name)
            actions = self._fire(peer, peer.proven_event(self.node.name))
            if Action.REFUSE in actions:
                return "duplicate"  # a simultaneous connect that our own attempt wins
            peer.acceptor = writer
            owned.append(peer)
            # Up already: the peer's attempt replaces the connection only if
            # the peer still wants it (it may be one it gave up meanwhile).
            return "alive" if Action.ALIVE in actions else "ok"

        info: PeerInfo | None = None
        try:
            info = await self._handshake_in(reader, writer, proven)
        finally:
            self._handshakes.release(key)
            for peer in owned:
                if info is None and peer.acceptor is writer and self._peers.get(peer.name) is peer:
                    peer.acceptor = None
                    self._fire(
                        peer, peer.accept_failed_event(), why="its connection failed during the handshake"
                    )
        if info is not None:
            peer = owned[0]
            if peer.acceptor is not writer or self._peers.get(peer.name) is not peer:
                writer.close()  # superseded meanwhile
                return
            self._install(peer, Event.ACCEPT_UP, info, reader, writer)

    def _tls_refused(self, why: str) -> None:
        self._refusals.log(logging.WARNING, "node %s refused a connection: %s", self.node.name, why)

    async def _handshake_in(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        proven: Callable[[str, int, Any], str],
    ) -> PeerInfo | None:
        try:
            return await handshake.accept(
                reader,
                writer,
                my_name=self.node.name,
                my_creation=self.node.creation,
                cookie=self.cookie,
                cookie_for=self._cookie_for,
                accept_peer=self._accept_peer,
                proven=proven,
                flags=self._flags(),
                timeout=self.options.connect_timeout,
            )
        except HandshakeError as e:
            # The error's text escapes whatever the peer chose (names, terms).
            if e.reason in ("cookie", "protocol", "version"):
                self._refusals.log(logging.WARNING, "node %s refused a connection: %s", self.node.name, e)
            else:
                logger.debug("node %s refused a connection: %s", self.node.name, e)
            return None
        except (OSError, ValueError) as e:
            self._refusals.log(logging.INFO, "incoming connection failed: %s", e)
            writer.close()
            return None

    # -- outgoing signals (the RemoteRouter protocol) ---------------------------------

    def _out(self, node: str, control: tuple[Any, ...], sender: Pid | None = None) -> None:
        """Send ``control`` to ``node`` (``sender``: whose signal it is, if
        :func:`_sender_of` cannot tell from the control message)."""
        peer = self._peers.get(node)
        if peer is not None:
            conn = peer.conn
            if conn is not None:
                self._route(peer, conn, control, sender)
                return
            # Pending: every signal waits in the queue, in order, as BEAM
            # queues them on a pending connection.
        elif control[0] not in _CONNECTING_OPS:
            return  # only follows a connection: the other side saw noconnection
        if self._stopping:
            return
        # Encoded now, once: what cannot travel is refused now, not when connected.
        data = encode_control(control, self.options.max_frame)
        if peer is None:
            # A malformed node is the caller's error (send to {Name, BadNode}
            # is badarg in BEAM), raised before any network activity.
            check_node_name(node)
            peer = Peer(node)
            self._fire(peer, Event.WANTED)
        peer.queue.append((_sender_of(control) if sender is None else sender, data))
        track(peer, control)

    def _route(self, peer: Peer, conn: Connection, control: tuple[Any, ...], sender: Pid | None) -> None:
        if sender is None:
            conn.send(control)
        else:
            conn.send(control, sender)
        if conn.busy:
            self._suspend_if_sender(conn, _sender_of(control) if sender is None else sender)
        track(peer, control)

    def _suspend_if_sender(self, conn: Connection, sender: Any) -> None:
        # As BEAM: only a process that sends to a busy channel itself is
        # suspended. A signal sent on behalf of another (the links, monitors
        # and DOWNs of a process that whoever runs killed) or by the net
        # kernel suspends nobody.
        proc = current_process()
        if proc is not None and proc.pid == sender:
            self.node.suspend_sender(conn.drain)

    def send(self, to: Pid, msg: Any) -> None:
        peer = self._peers.get(to.node)
        conn = None if peer is None else peer.conn
        if conn is not None:
            conn.send_message(to, msg)  # the hot path: nothing to track
            if conn.busy:
                self.node.suspend_sender(conn.drain)
        else:
            self._out(to.node, (Op.SEND, to, msg))

    def send_name(self, name: str, node: str, msg: Any) -> None:
        peer = self._peers.get(node)
        conn = None if peer is None else peer.conn
        if conn is not None:
            conn.send((Op.SEND_NAME, name, msg))
            if conn.busy:
                self.node.suspend_sender(conn.drain)
        else:
            self._out(node, (Op.SEND_NAME, name, msg))

    def link(self, sender: Pid, to: Pid) -> None:
        self._out(to.node, (Op.LINK, sender, to))

    def unlink(self, sender: Pid, to: Pid) -> None:
        self._out(to.node, (Op.UNLINK, sender, to))

    def exit(self, sender: Pid, to: Pid, reason: Any, from_link: bool) -> None:
        self._out_reason(to.node, (Op.LINK_EXIT if from_link else Op.EXIT, sender, to), reason, sender)

    #: The last exit reason that could not be sent, and why, until the end of
    #: this loop iteration: a process that ends with a huge reason and has
    #: many links and monitors elsewhere is encoded once, not once for each.
    _unsendable: tuple[Any, Exception] | None = None

    def _out_reason(
        self, node: str, head: tuple[Any, ...], reason: Any, of: Any, sender: Pid | None = None
    ) -> None:
        """Send the signal ``head + (reason,)``; if the reason cannot travel,
        the Crash that says so instead (see :func:`_sendable`)."""
        bad = self._unsendable
        if bad is None or bad[0] is not reason:
            try:
                self._out(node, (*head, reason), sender)
                return
            except (codec.EncodeError, SystemLimit) as e:
                if bad is None:
                    asyncio.get_running_loop().call_soon(self._forget_unsendable)
                bad = self._unsendable = (reason, e)
                logger.warning(
                    "node %s: the exit reason of %s cannot be sent: %s",
                    self.node.name,
                    short(of),
                    clip(str(e), 1000),
                )
        self._out(node, (*head, _sendable(of, node, bad[1])), sender)

    def _forget_unsendable(self) -> None:
        self._unsendable = None

    def monitor(self, watcher: Pid, target: Pid | tuple[str, str], ref: Ref) -> None:
        if isinstance(target, Pid):
            self._out(target.node, (Op.MONITOR, watcher, target, ref))
        else:
            self._out(target[1], (Op.MONITOR, watcher, target, ref))

    def demonitor(self, watcher: Pid, target: Pid | tuple[str, str], ref: Ref) -> None:
        node = target.node if isinstance(target, Pid) else target[1]
        self._out(node, (Op.DEMONITOR, watcher, target, ref))

    def down(self, watcher: Pid, ref: Ref, item: Any, reason: Any, sender: Pid | None = None) -> None:
        # Behind whatever the process that ended sent before (its lane): the
        # DOWN is its last signal to the watcher, as BEAM orders them.
        peer = self._peers.get(watcher.node)
        conn = None if peer is None else peer.conn
        bad = self._unsendable
        if peer is not None and conn is not None and (bad is None or bad[0] is not reason):
            # An rpc's answer: _route's work, with the DOWN encoded from its
            # parts. A reason that cannot travel takes the general way below.
            try:
                conn.send_down(watcher, ref, item, reason, sender)
            except (codec.EncodeError, SystemLimit):
                pass
            else:
                if conn.busy:
                    self._suspend_if_sender(conn, item if sender is None and type(item) is Pid else sender)
                peer.monitors_in.pop(ref, None)  # track()'s part for a DOWN
                return
        self._out_reason(watcher.node, (Op.DOWN, watcher, ref, item), reason, item, sender)

    def spawn_request(
        self,
        requester: Pid,
        node: str,
        fn: str,
        args: tuple[Any, ...],
        *,
        link: bool = False,
        monitor: bool = False,
        reply: bool | str = True,
    ) -> Ref:
        """Ask ``node`` to spawn ``fn(*args)``; the answer comes to ``requester`` as
        ``("spawn_reply", ref, "ok", pid)`` or ``("spawn_reply", ref, "error", why)``
        (nothing with ``reply=False``, only an error with ``"error_only"``).
        A monitor's ref is the request's ref."""
        ref = self.node.make_ref()
        opts: dict[str, Any] = {"link": link, "monitor": monitor, "reply": reply}
        peer = self._peers.get(node)
        conn = None if peer is None else peer.conn
        if peer is None or conn is None:
            self._out(node, (Op.SPAWN_REQUEST, ref, requester, fn, tuple(args), opts))
            return ref
        # _route's work, with the request encoded from its parts (an rpc's).
        conn.send_spawn_request(ref, requester, fn, tuple(args), opts)
        if conn.busy:
            self._suspend_if_sender(conn, requester)
        if reply:
            peer.spawns[ref] = (requester, opts)  # track()'s part for a spawn request
        return ref

    def abandon_spawn(self, ref: Ref) -> bool:
        """The requester gave up waiting: when the reply comes, kill what was
        spawned and deliver nothing (``spawn_request_abandon``). False if no
        reply is awaited for ``ref``."""
        awaited = any(ref in p.spawns for p in self._peers.values())
        if awaited:
            self._signals.abandoned.add(ref)
        return awaited

    @property
    def foreign_signals_dropped(self) -> int:
        """Signals peers sent naming a target not on this node (dropped)."""
        return self._signals.foreign_dropped

    def _join_mesh(self, address: str) -> None:
        try:
            name, host, port = _parse_address(address)
        except ValueError:
            return
        if name == self.node.name or self._stopping or name in self._peers:
            return
        if port is not None:
            # The peer that told us is connected to it now: fresher than ours.
            self._addresses[name] = (host, port)
            self._lost.discard(name)
        self._fire(Peer(name), Event.WANTED)


class _Incoming:
    """An incoming connection of a TLS node, for the max_handshakes cap: it can
    be closed during its TLS handshake (by cancelling it) and after."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None

    def drop(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        elif self.task is not None:
            self.task.cancel()  # the TLS handshake is abandoned, the socket closed
        else:
            self.sock.close()


async def _listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host`` (an address, or a name resolved to its first one)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.create_server(address[:2], family=family, backlog=128)
    sock.setblocking(False)
    return sock


def _background(coro: Any) -> asyncio.Task[Any]:
    """Run ``coro`` as a task in an empty context.

    A task inherits the context it is created in: one started by a signal
    would hold the sending process as its current process (and keep it
    alive) long after that process ended.
    """
    return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())


def _make_net_kernel(node: LocalNode, options: dict[str, Any]) -> NetKernel:
    opts = dict(options)
    cookie = resolve_cookie(opts.pop("cookie", None))
    return NetKernel(node, DistOptions(cookie=cookie, **opts))


set_distribution_factory(_make_net_kernel)

"""The net kernel: a node's connections to other nodes (Erlang's ``net_kernel``).

It listens for peers, registers the node with the port mapper, connects on
demand (the first signal to a node that is not connected connects to it, as in
BEAM), keeps one connection per node pair, turns the node's remote signals into
control messages and the peer's control messages back into local signals, and
— when a connection goes down — gives every link across it the exit
``noconnection`` and every monitor across it a DOWN ``noconnection``.

Signals that only make sense on a live connection (an unlink, a link's exit,
a demonitor, a DOWN) are dropped when there is none: the other side has
already seen ``noconnection``. Everything else (send, link, monitor, exit/2,
spawn) connects first if needed; what was queued while connecting is dropped
if connecting fails, with ``noconnection`` for links, monitors and spawns.

Connecting to a node also connects to the nodes it is connected to (a full
mesh, as dist-erl builds), unless either node is hidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import codec
from ..logtext import clip, short
from ..node import set_distribution_factory
from ..nodename import check_node_name, parse_address
from ..process import current_process
from ..terms import NOCONNECTION, NOPROC, Crash, Pid, Ref
from . import epmd, guard, handshake
from .connection import (
    DEFAULT_BUSY_LIMIT,
    DEFAULT_HARD_LIMIT,
    DEFAULT_TICKTIME,
    Connection,
    Op,
    ProtocolError,
    SystemLimit,
    encode_control,
)
from .cookie import resolve_cookie
from .framing import DEFAULT_MAX_FRAME
from .handshake import HandshakeError, PeerInfo
from .tls import TLSOptions

if TYPE_CHECKING:
    from ..node import Node
    from ..process import Process

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


def default_max_handshakes() -> int:
    """The default cap on unauthenticated incoming connections: an eighth of the
    file descriptor limit, within 16..256, so most descriptors stay for
    authenticated connections and everything else the node does."""
    return guard.default_cap(8, 16, 256)


@dataclass
class _Pending:
    """An outgoing connection being set up, and the signals waiting for it."""

    queue: list[tuple[Any, ...]] = field(default_factory=list)
    done: asyncio.Future[bool] | None = None
    task: asyncio.Task[None] | None = None
    #: When our attempt lost a simultaneous connect and the queue started to
    #: share the fate of the peer's attempt (time.monotonic()), if it did.
    deferred: float | None = None


def function_name(fn: Callable[..., Any] | str) -> str:
    """``"module:qualname"`` for a module-level function (or the string itself,
    checked to have that form: a ``ValueError`` if not)."""
    if isinstance(fn, str):
        head, sep, tail = fn.partition(":")
        if not sep or not head or not tail:
            raise ValueError(f"a function is named 'module:function', got {fn!r}")
        return fn
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ValueError(f"{fn!r} is not a module-level function: another node cannot find it by name")
    if module == "__main__":
        # Run with ``python -m pkg.mod``, __main__ has an importable name; a
        # script run by path has none another node could import.
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is None or not spec.name:
            raise ValueError(
                f"{qualname} is defined in a script run by path: another node cannot import it; "
                "move it to a module, or run the script with python -m"
            )
        module = spec.name
    return f"{module}:{qualname}"


def resolve_function(name: str) -> Callable[..., Any]:
    """Import ``"module:qualname"`` and return that function."""
    module_name, sep, qualname = name.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"a function is named 'module:function', got {name!r}")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{name} is not callable")
    return obj  # type: ignore[no-any-return]


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

    def __init__(self, node: Node, options: DistOptions) -> None:
        self.node = node
        self.options = options
        self.cookie = options.cookie
        self.port = 0
        self._server: asyncio.Server | None = None
        self._epmd_server: epmd.EpmdServer | None = None
        self._registration: epmd.Registration | None = None
        self._reregister_task: asyncio.Task[None] | None = None
        self._conns: dict[str, Connection] = {}
        self._pending: dict[str, _Pending] = {}
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
        self._abandoned: set[Ref] = set()
        self._node_cookies: dict[str, str] = {}
        #: Peers whose incoming handshake has proved the cookie and that are
        #: not up yet: dialling them now would make a second connection. Only
        #: proven names go here: a stranger's claim must not keep a node out.
        self._accepting: dict[str, asyncio.Future[bool]] = {}
        #: When a proven incoming handshake of a peer we are connecting to
        #: failed before coming up (time.monotonic()); pruned as it ages.
        self._incoming_failed: dict[str, float] = {}
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

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> int:
        """Listen, register with the port mapper; returns the node's creation."""
        opts = self.options
        # In a clean context: every accepted connection's task inherits the
        # context the server was started in (see _background).
        host = self.node.name.partition("@")[2]
        listen = opts.listen or host
        if self._tls_server is None:
            serving = asyncio.start_server(self._accept, listen, opts.port)
        else:
            # The TLS handshake (both certificates) runs before _accept, under
            # its own timeout; a failed one is logged by the context (see tls).
            serving = asyncio.start_server(
                self._accept,
                listen,
                opts.port,
                ssl=self._tls_server,
                ssl_handshake_timeout=opts.connect_timeout,
            )
        try:
            self._server = await _background(serving)
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
        self.port = self._server.sockets[0].getsockname()[1]
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
        for pending in list(self._pending.values()):
            if pending.task is not None:
                pending.task.cancel()
        for conn in list(self._conns.values()):
            conn.close("node stopping")
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
        return sorted(name for name, c in self._conns.items() if hidden or not c.hidden)

    def is_connected(self, node: str) -> bool:
        """True if a connection to ``node`` is up."""
        return node in self._conns

    async def connect(self, node: str) -> bool:
        """Connect to ``node`` (``name@host`` or ``name@host:port``); True once up.

        A port given here is tried first from now on, for as long as it works:
        once connecting there fails, the port mapper is asked instead.
        """
        name, host, port = _parse_address(node)
        if name == self.node.name:
            return True
        if port is not None and name not in self._conns:
            self._addresses[name] = (host, port)
            self._lost.discard(name)  # the caller says where it is now
        if name in self._conns:
            return True
        pending = self._pending.get(name) or self._start_connect(name)
        assert pending.done is not None
        return await asyncio.shield(pending.done)

    def disconnect(self, node: str) -> bool:
        """Close the connection to ``node``; False if there was none."""
        conn = self._conns.get(_parse_address(node)[0])
        if conn is None:
            return False
        conn.close("disconnected")
        # Closed by us, not lost: the node is still where it was.
        self._lost.discard(conn.name)
        return True

    async def drain(self, node: str) -> None:
        """Wait until what is queued to ``node`` is below the busy limit (at
        once if it is, or if ``node`` is not connected)."""
        conn = self._conns.get(node)
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

        With ``node``, use it only when this node connects to that one
        (``erlang:set_cookie/2``); the peer's own connects still need ours.
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
        """Forget the cookie set for connecting to ``node`` alone."""
        self._node_cookies.pop(node, None)

    # -- connecting ---------------------------------------------------------------

    def _flags(self) -> dict[str, Any]:
        return {"hidden": self.options.hidden, "port": self.port}

    def connect_failure(self, node: str) -> str | None:
        """Why the last attempt to connect to ``node`` failed; None if it did not fail."""
        return self._failures.get(node)

    def _start_connect(self, name: str) -> _Pending:
        self._failures.pop(name, None)
        pending = _Pending(done=asyncio.get_running_loop().create_future())
        self._pending[name] = pending
        # Not in the context of the process whose signal started it: the
        # connection outlives it (see _background).
        pending.task = _background(self._connect(name, pending))
        return pending

    async def _resolve(self, name: str) -> tuple[str, int]:
        """Where the port mapper on the node's host says ``name`` listens."""
        host = name.partition("@")[2]
        port = await epmd.lookup(name, self.options.epmd_port, host=host, tls=self._tls_epmd)
        if port is None:
            raise OSError(f"node {name} is not registered with the port mapper on {host}")
        return host, port

    async def _reach(self, name: str) -> tuple[PeerInfo, asyncio.StreamReader, asyncio.StreamWriter]:
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
                return await self._dial(name, *address)
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
        self, name: str, host: str, port: int
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
            cookie=self._node_cookies.get(name, self.cookie),
            expected_peer=name,
            flags=self._flags(),
            timeout=opts.connect_timeout,
        )
        return peer, reader, writer

    async def _peer_attempt_wins(self, name: str, pending: _Pending, started: float) -> bool:
        """Our attempt lost a simultaneous connect: wait for the peer's attempt,
        whose fate the signals queued here share (as in OTP). True if it came up.

        Its handshake may have failed already (then give up at once: waiting
        could deliver what was queued much later, on some other connection),
        be under way (wait for it), or not have reached us yet (wait for it
        to arrive, within the connect timeout)."""
        assert pending.done is not None
        pending.deferred = started
        deadline = started + self.options.connect_timeout
        while not pending.done.done():
            now = time.monotonic()
            if self._incoming_failed.get(name, float("-inf")) >= started or now >= deadline:
                return False
            accepting = self._accepting.get(name)
            waiting_on = accepting if accepting is not None else pending.done
            with contextlib.suppress(TimeoutError):
                # Short waits while nothing is under way: the peer's hello may
                # be about to arrive.
                step = deadline - now if accepting is not None else 0.01
                await asyncio.wait_for(asyncio.shield(waiting_on), max(step, 0.0))
        return pending.done.result()

    async def _connect(self, name: str, pending: _Pending) -> None:
        opts = self.options
        started = time.monotonic()
        accepting = self._accepting.get(name)
        if accepting is not None:
            # The peer is connecting to us right now: _install resolves this
            # pending if that succeeds; if it fails, dial ourselves.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(accepting), opts.connect_timeout)
            if name in self._conns:
                return
        try:
            peer, reader, writer = await self._reach(name)
        except HandshakeError as e:
            if e.reason == "duplicate" and await self._peer_attempt_wins(name, pending, started):
                return
            logger.info("cannot connect to %s: %s", name, e)
            self._connect_failed(name, pending, _failure(e))
        except (OSError, TimeoutError, epmd.EpmdError, ValueError) as e:
            logger.info("cannot connect to %s: %s", name, e)
            self._connect_failed(name, pending, _failure(e))
        except Exception as e:
            # A bug must not leave the signals queued and connect() waiting forever.
            logger.exception("node %s: connecting to %s failed", self.node.name, name)
            self._connect_failed(name, pending, f"internal error: {e!r}")
        else:
            self._install(peer, reader, writer)

    def _connect_failed(self, name: str, pending: _Pending, why: str = "unknown") -> None:
        self._failures[name] = why
        if self._pending.get(name) is pending:
            del self._pending[name]
        for control in pending.queue:
            self._undeliverable(control)
        if pending.done is not None and not pending.done.done():
            pending.done.set_result(False)

    def _accept_peer(self, peer: str, creation: int, flags: Any) -> str:
        """Whether to go on with an incoming handshake from ``peer``. Asked before
        its proof, when the name is only a claim: decide, record nothing."""
        if peer == self.node.name or self._stopping:
            return "not_allowed"
        if peer in self._accepting:
            return "duplicate"  # that peer is already coming in on another connection
        return "ok"

    def _peer_proven(self, peer: str, creation: int, flags: Any) -> str:
        """Asked once ``peer`` has proved the cookie, before it is told "ok"."""
        decision = self._accept_peer(peer, creation, flags)
        if decision == "ok" and peer in self._pending and self.node.name > peer:
            # Simultaneous connect: ours wins (see handshake.accept). Decided
            # only now, so that a peer without our cookie is refused for that
            # and fails at once, rather than being told to wait for our attempt.
            return "duplicate"
        return decision

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._handshakes.admit(writer, writer.transport.abort):
            self._refusals.log(
                logging.WARNING,
                "node %s: more than %d connections without a proven cookie: closed the oldest",
                self.node.name,
                self._handshakes.limit,
            )
        reserved: list[str] = []

        def proven(peer: str, creation: int, flags: Any) -> str:
            self._handshakes.release(writer)  # authenticated: no longer the cap's business
            decision = self._peer_proven(peer, creation, flags)
            if decision == "ok":
                self._accepting[peer] = asyncio.get_running_loop().create_future()
                reserved.append(peer)
            return decision

        try:
            await self._handshake_in(reader, writer, proven)
        finally:
            self._handshakes.release(writer)
            for peer in reserved:
                fut = self._accepting.pop(peer, None)
                up = peer in self._conns
                if not up:
                    self._note_incoming_failed(peer)
                if fut is not None and not fut.done():
                    fut.set_result(up)

    def _tls_refused(self, why: str) -> None:
        self._refusals.log(logging.WARNING, "node %s refused a connection: %s", self.node.name, why)

    def _note_incoming_failed(self, peer: str) -> None:
        # Our own attempt to this peer may be waiting on this one
        # (_peer_attempt_wins): it gives up when it sees this. Recorded for
        # proven peers we are connecting to only, and pruned, so the table
        # stays as small as our own pending connects.
        now = time.monotonic()
        horizon = now - self.options.connect_timeout
        for name, when in list(self._incoming_failed.items()):
            if when < horizon:
                del self._incoming_failed[name]
        if peer in self._pending:
            self._incoming_failed[peer] = now

    async def _handshake_in(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        proven: Callable[[str, int, Any], str],
    ) -> None:
        try:
            peer = await handshake.accept(
                reader,
                writer,
                my_name=self.node.name,
                my_creation=self.node.creation,
                cookie=self.cookie,
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
            return
        except (OSError, ValueError) as e:
            self._refusals.log(logging.INFO, "incoming connection failed: %s", e)
            writer.close()
            return
        self._install(peer, reader, writer)

    def _install(self, peer: PeerInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stopping:
            writer.close()
            return
        old = self._conns.pop(peer.name, None)
        if old is not None:
            old.close("replaced by a new connection (the peer restarted or reconnected)")
        try:
            conn = Connection(
                peer,
                reader,
                writer,
                dispatch=self._dispatch,
                on_closed=self._closed,
                ticktime=self.options.ticktime,
                max_frame=self.options.max_frame,
                busy_limit=self.options.busy_limit,
                hard_limit=self.options.hard_limit,
            )
        except Exception:
            # A bug, not the peer's doing; but whoever waits for this
            # connection must hear that it failed rather than wait for ever.
            logger.exception("node %s: cannot set up the connection to %s", self.node.name, peer.name)
            writer.close()
            pending = self._pending.get(peer.name)
            if pending is not None:
                self._connect_failed(
                    peer.name, pending, "cannot set up the connection (an internal error: see the log)"
                )
            return
        self._conns[peer.name] = conn
        self._lost.discard(peer.name)
        port = peer.flags.get("port")
        if type(port) is int and 0 < port <= 65535:
            # The port this incarnation listens on (it said so itself): a
            # restarted node replaces what we knew of the earlier one.
            self._addresses[peer.name] = (peer.name.partition("@")[2], port)
        # Its read task and ticks must not hold the context of whatever
        # process's signal led here (see _background).
        contextvars.Context().run(conn.start)
        pending = self._pending.pop(peer.name, None)
        if pending is not None:
            deferred = pending.deferred
            if deferred is not None and self._incoming_failed.get(peer.name, float("-inf")) >= deferred:
                # The peer's attempt the queue waited on failed (_peer_attempt_wins
                # had not woken up to see it yet): this connection is a later
                # one, and what was queued shares that failure.
                for control in pending.queue:
                    self._undeliverable(control)
                pending.queue = []
            for control in pending.queue:
                self._route(conn, control)
            if pending.done is not None and not pending.done.done():
                pending.done.set_result(True)
            if pending.task is not None and pending.task is not asyncio.current_task():
                pending.task.cancel()
        logger.info("node %s: connected to %s", self.node.name, peer.name)
        if not conn.hidden:
            self._notify_nodes(("nodeup", peer.name))
            if not self.options.hidden:
                conn.send((Op.NODES, self._mesh_addresses(exclude=peer.name)))

    def _mesh_addresses(self, exclude: str) -> list[str]:
        out = []
        for name, c in self._conns.items():
            if name == exclude or c.hidden:
                continue
            addr = self._addresses.get(name)
            out.append(f"{name}:{addr[1]}" if addr is not None else name)
        return out

    def _notify_nodes(self, msg: tuple[str, str]) -> None:
        for pid in list(self._node_monitors):
            proc = self.node.process(pid)
            if proc is None:
                self._node_monitors.discard(pid)
            else:
                proc.put(msg)

    def _closed(self, conn: Connection, reason: str) -> None:
        if self._conns.get(conn.name) is conn:
            del self._conns[conn.name]
            if conn.name in self._addresses:
                self._lost.add(conn.name)
        logger.info("node %s: connection to %s down: %s", self.node.name, conn.name, reason)
        node = self.node
        links, conn.links = conn.links, set()
        for local, remote in links:
            node.link_exit(remote, local, NOCONNECTION)
        monitors_out, conn.monitors_out = conn.monitors_out, {}
        for ref, (watcher, item) in monitors_out.items():
            node.deliver_down(watcher, ref, item, NOCONNECTION)
        monitors_in, conn.monitors_in = conn.monitors_in, {}
        for ref, target in monitors_in.items():
            node.remove_monitor(target, ref)
        spawns, conn.spawns = conn.spawns, {}
        for ref, (requester, _) in spawns.items():
            if ref in self._abandoned:
                self._abandoned.discard(ref)
            else:
                node.send(requester, ("spawn_reply", ref, "error", NOCONNECTION))
        if not conn.hidden:
            self._notify_nodes(("nodedown", conn.name))

    # -- outgoing signals (the RemoteRouter protocol) ---------------------------------

    def _out(self, node: str, control: tuple[Any, ...]) -> None:
        conn = self._conns.get(node)
        if conn is not None:
            self._route(conn, control)
            return
        if control[0] not in _CONNECTING_OPS or self._stopping:
            return
        encode_control(control, self.options.max_frame)  # refuse what cannot travel now, not when connected
        pending = self._pending.get(node)
        if pending is None:
            # A malformed node is the caller's error (send to {Name, BadNode}
            # is badarg in BEAM), raised before any network activity.
            check_node_name(node)
            pending = self._start_connect(node)
        pending.queue.append(control)

    def _route(self, conn: Connection, control: tuple[Any, ...]) -> None:
        conn.send(control)
        if conn.busy:
            _suspend_sender(conn)
        match control:
            case (Op.LINK, local, remote):
                conn.links.add((local, remote))
            case (Op.UNLINK | Op.LINK_EXIT, local, remote, *_):
                conn.links.discard((local, remote))
            case (Op.MONITOR, watcher, target, ref):
                conn.monitors_out[ref] = (watcher, target)
            case (Op.DEMONITOR, _, _, ref):
                conn.monitors_out.pop(ref, None)
            case (Op.DOWN, _, ref, _, _):
                conn.monitors_in.pop(ref, None)
            case (Op.SPAWN_REQUEST, ref, requester, _, _, opts) if opts.get("reply", True):
                conn.spawns[ref] = (requester, opts)

    def _undeliverable(self, control: tuple[Any, ...]) -> None:
        node = self.node
        match control:
            case (Op.LINK, local, remote):
                node.link_exit(remote, local, NOCONNECTION)
            case (Op.MONITOR, watcher, target, ref):
                node.deliver_down(watcher, ref, target, NOCONNECTION)
            case (Op.SPAWN_REQUEST, ref, requester, *_):
                node.send(requester, ("spawn_reply", ref, "error", NOCONNECTION))

    def send(self, to: Pid, msg: Any) -> None:
        conn = self._conns.get(to.node)
        if conn is not None:
            conn.send((Op.SEND, to, msg))  # the hot path: nothing to track
            if conn.busy:
                _suspend_sender(conn)
        else:
            self._out(to.node, (Op.SEND, to, msg))

    def send_name(self, name: str, node: str, msg: Any) -> None:
        conn = self._conns.get(node)
        if conn is not None:
            conn.send((Op.SEND_NAME, name, msg))
            if conn.busy:
                _suspend_sender(conn)
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

    def _out_reason(self, node: str, head: tuple[Any, ...], reason: Any, of: Any) -> None:
        """Send the signal ``head + (reason,)``; if the reason cannot travel,
        the Crash that says so instead (see :func:`_sendable`)."""
        bad = self._unsendable
        if bad is None or bad[0] is not reason:
            try:
                self._out(node, (*head, reason))
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
        self._out(node, (*head, _sendable(of, node, bad[1])))

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

    def down(self, watcher: Pid, ref: Ref, item: Any, reason: Any) -> None:
        self._out_reason(watcher.node, (Op.DOWN, watcher, ref, item), reason, item)

    def spawn_request(
        self,
        requester: Process,
        node: str,
        fn: str,
        args: tuple[Any, ...],
        *,
        link: bool = False,
        monitor: bool = False,
        reply: bool = True,
    ) -> Ref:
        """Ask ``node`` to spawn ``fn(*args)``; the answer comes to ``requester`` as
        ``("spawn_reply", ref, "ok", pid)`` or ``("spawn_reply", ref, "error", why)``
        (nothing with ``reply=False``). A monitor's ref is the request's ref."""
        ref = self.node.make_ref()
        opts = {"link": link, "monitor": monitor, "reply": reply}
        self._out(node, (Op.SPAWN_REQUEST, ref, requester.pid, fn, tuple(args), opts))
        return ref

    def abandon_spawn(self, ref: Ref) -> bool:
        """The requester gave up waiting: when the reply comes, kill what was
        spawned and deliver nothing (``spawn_request_abandon``). False if no
        reply is awaited for ``ref``."""
        awaited = any(ref in c.spawns for c in self._conns.values()) or any(
            control[0] == Op.SPAWN_REQUEST and control[1] == ref
            for pending in self._pending.values()
            for control in pending.queue
        )
        if awaited:
            self._abandoned.add(ref)
        return awaited

    # -- incoming signals ---------------------------------------------------------

    #: Signals a peer sent naming a target that is not on this node (dropped,
    #: as BEAM drops them: forwarding would let a peer make this node reach
    #: any other node, and no node sends such signals).
    foreign_signals_dropped: int = 0

    def _dispatch(self, conn: Connection, control: tuple[Any, ...]) -> None:
        node = self.node
        here = node.name
        match control:
            case (Op.SEND, Pid() as to, msg):
                proc = node.process(to)
                if proc is not None:
                    proc.put(msg)
                elif to.node != here:
                    self._foreign(conn, control, to)
            case (Op.SEND_NAME, str() as name, msg):
                proc = node.named(name)
                if proc is not None:
                    proc.put(msg)
            case (Op.LINK | Op.UNLINK | Op.EXIT | Op.LINK_EXIT, _, Pid() as local, *_) if local.node != here:
                self._foreign(conn, control, local)
            case (Op.LINK, Pid() as remote, Pid() as local):
                proc = node.process(local)
                if proc is None:
                    conn.send((Op.LINK_EXIT, local, remote, NOPROC))
                else:
                    node.add_link(proc, remote)
                    conn.links.add((local, remote))
            case (Op.UNLINK, Pid() as remote, Pid() as local):
                conn.links.discard((local, remote))
                proc = node.process(local)
                if proc is not None and proc.links is not None:
                    proc.links.discard(remote)
            case (Op.EXIT, Pid() as remote, Pid() as local, reason):
                node.exit(remote, local, reason)
            case (Op.LINK_EXIT, Pid() as remote, Pid() as local, reason):
                conn.links.discard((local, remote))
                node.link_exit(remote, local, reason)
            case (Op.MONITOR | Op.DEMONITOR, Pid(), Pid() as target, Ref()) if target.node != here:
                self._foreign(conn, control, target)
            case (Op.MONITOR | Op.DEMONITOR, Pid(), (str(), str() as at) as target, Ref()) if at != here:
                self._foreign(conn, control, target)
            case (Op.MONITOR, Pid() as watcher, target, Ref() as ref):
                self._incoming_monitor(conn, watcher, target, ref)
            case (Op.DEMONITOR, Pid(), _, Ref() as ref):
                local = conn.monitors_in.pop(ref, None)
                if local is not None:
                    node.remove_monitor(local, ref)
            case (Op.DOWN, Pid() as watcher, Ref(), _, _) if watcher.node != here:
                self._foreign(conn, control, watcher)
            case (Op.DOWN, Pid() as watcher, Ref() as ref, item, reason):
                conn.monitors_out.pop(ref, None)
                node.deliver_down(watcher, ref, item, reason)
            case (
                Op.SPAWN_REQUEST,
                Ref() as ref,
                Pid() as requester,
                str() as fn,
                tuple() as args,
                dict() as opts,
            ):
                self._incoming_spawn(conn, ref, requester, fn, args, opts)
            case (Op.SPAWN_REPLY, Ref(), Pid() as requester, _) if requester.node != here:
                self._foreign(conn, control, requester)
            case (Op.SPAWN_REPLY, Ref() as ref, Pid() as requester, result):
                self._spawn_reply(conn, ref, requester, result)
            case (Op.NODES, list() as addresses):
                for address in addresses:
                    if type(address) is str:
                        self._join_mesh(address)
            case _:
                raise ProtocolError(f"unknown or malformed control message {control!r:.200}")

    def _foreign(self, conn: Connection, control: tuple[Any, ...], target: Any) -> None:
        """Drop a signal whose target is not on this node, and count it."""
        n = self.foreign_signals_dropped = self.foreign_signals_dropped + 1
        if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a bounded log however many come
            logger.debug(
                "node %s: dropped a signal (op %s) from %s for %s, not a pid of this node (%d so far)",
                self.node.name,
                short(control[0]),
                conn.name,
                short(target),
                n,
            )

    def _incoming_monitor(self, conn: Connection, watcher: Pid, target: Any, ref: Ref) -> None:
        if isinstance(target, Pid):
            local = self.node.add_monitor(target, watcher, ref, target)
        elif type(target) is tuple and len(target) == 2 and type(target[0]) is str:
            local = self.node.add_monitor(target[0], watcher, ref, target)
        else:
            raise ProtocolError(f"bad monitor target {target!r:.100}")
        if local is None:
            conn.send((Op.DOWN, watcher, ref, target, NOPROC))
        else:
            conn.monitors_in[ref] = local

    def _incoming_spawn(
        self,
        conn: Connection,
        ref: Ref,
        requester: Pid,
        fn_name: str,
        args: tuple[Any, ...],
        opts: dict[str, Any],
    ) -> None:
        try:
            fn = resolve_function(fn_name)
        except Exception as e:
            # Bounded: the name is the peer's, as large as a frame.
            why = f"cannot spawn {short(fn_name)}: {short(e)}"
            logger.warning("node %s %s for %r", self.node.name, why, requester)
            if opts.get("reply", True):
                conn.send((Op.SPAWN_REPLY, ref, requester, ("error", why)))
            return
        node = self.node
        pid, _ = node.spawn(fn, args)
        proc = node.process(pid)
        assert proc is not None
        if not opts.get("reply", True):
            return  # a cast: nobody waits for the pid, nothing is linked or monitored
        conn.send((Op.SPAWN_REPLY, ref, requester, pid))
        if opts.get("link"):
            node.add_link(proc, requester)
            conn.links.add((pid, requester))
        if opts.get("monitor"):
            node.add_monitor(pid, requester, ref, pid)
            conn.monitors_in[ref] = pid

    def _spawn_reply(self, conn: Connection, ref: Ref, requester: Pid, result: Any) -> None:
        entry = conn.spawns.pop(ref, None)
        if entry is None:
            return
        if ref in self._abandoned:
            self._abandoned.discard(ref)
            if isinstance(result, Pid):
                conn.send((Op.EXIT, requester, result, "kill"))
            return
        node = self.node
        proc = node.process(requester)
        opts = entry[1]
        if not isinstance(result, Pid):
            node.send(
                requester, ("spawn_reply", ref, "error", result[1] if type(result) is tuple else result)
            )
            return
        if opts.get("link"):
            if proc is not None:
                node.add_link(proc, result)
                conn.links.add((requester, result))
            else:
                conn.send((Op.LINK_EXIT, requester, result, NOPROC))
        if opts.get("monitor"):
            if proc is not None:
                if proc.monitors is None:
                    proc.monitors = {}
                proc.monitors[ref] = result
                conn.monitors_out[ref] = (requester, result)
            else:
                conn.send((Op.DEMONITOR, requester, result, ref))
        if proc is not None:
            proc.put(("spawn_reply", ref, "ok", result))

    def _join_mesh(self, address: str) -> None:
        try:
            name, host, port = _parse_address(address)
        except ValueError:
            return
        if name == self.node.name or self._stopping:
            return
        if name in self._conns or name in self._pending or name in self._accepting:
            return
        if port is not None:
            # The peer that told us is connected to it now: fresher than ours.
            self._addresses[name] = (host, port)
            self._lost.discard(name)
        self._start_connect(name)


def _suspend_sender(conn: Connection) -> None:
    """The connection is busy: the process sending (if a process is) waits for
    it to drain at its next receive (``send`` itself cannot wait)."""
    proc = current_process()
    if proc is not None:
        proc.suspended_on = conn.drain


def _background(coro: Any) -> asyncio.Task[Any]:
    """Run ``coro`` as a task in an empty context.

    A task inherits the context it is created in: one started by a signal
    would hold the sending process as its current process (and keep it
    alive) long after that process ended.
    """
    return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())


def _make_net_kernel(node: Node, options: dict[str, Any]) -> NetKernel:
    opts = dict(options)
    cookie = resolve_cookie(opts.pop("cookie", None))
    return NetKernel(node, DistOptions(cookie=cookie, **opts))


set_distribution_factory(_make_net_kernel)

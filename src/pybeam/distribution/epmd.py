"""The port mapper: which port each node on this host listens on (Erlang's ``epmd``).

A node listens for distribution connections on a port of its choosing and
registers ``(name, port)`` with the mapper of its host; a node that wants to
connect to ``name@host`` asks that host's mapper for the port. The mapper also
hands out each node's *creation*, which tells incarnations of a node apart.

Names: the mapper keys by the *alive* name, the part of a node name before
``@`` (``"alice"`` for ``"alice@box1"``), as epmd does, since one mapper serves
one host. The client functions below accept either form and strip the host.

Wire protocol: a TCP connection, frames (:mod:`pybeam.distribution.framing`) holding
terms (:mod:`pybeam.codec`). A client sends one request:

``("register", name, port)``
    Reply ``("ok", creation)``, ``("error", "name_taken")`` if a live
    connection holds that name, ``("error", "full")`` if the mapper already
    holds ``max_registrations`` names, or ``("error", "not_local")`` if the
    client is on another host. The registration lasts exactly as long as this
    connection: the node keeps it open, and the mapper frees the name when it
    closes (the mapper closes it too if the client sends anything more).
    ``creation`` is a per-name counter in 1..2**32-1: it starts at a random value
    (so a restarted mapper rarely repeats one) and goes up by one at each
    registration of that name.
``("lookup", name)``
    Reply ``("port", port)`` or ``("error", "not_found")``; then the mapper closes.
``("names",)``
    Reply ``("names", [(name, port), ...])``; then the mapper closes.

Anything else (junk, an oversized frame, a wrong request, silence for
:data:`REQUEST_TIMEOUT` seconds) is logged and that one connection closed; the
mapper goes on serving the others. Requests are decoded strictly
(:mod:`pybeam.distribution.strict`): a flat tuple of a few small scalars.

Limits, so that a flood of connections cannot exhaust the file descriptors of
the process the mapper lives in (often a node's): at most ``max_requests``
connections waiting for their request or for its answer to be read (one more
closes the oldest of them; default :func:`default_max_requests`), and at most
``max_registrations`` live registrations (one more is refused, so the nodes
already registered keep their names; default :func:`default_max_registrations`).
Refusals are logged with untrusted text escaped, and rate-limited.

The mapper listens on 127.0.0.1, port ``$PYBEAM_EPMD_PORT`` or
:data:`DEFAULT_PORT` (4370; Erlang's epmd has 4369 and we must not meet it).
That host only serves this machine: to let other machines look nodes up, bind
it to reachable addresses as well (``host=`` takes one address or a list;
``--host`` is repeatable). A node that starts the mapper itself binds it to
loopback plus the node's own address. Anyone who can reach it may look names
up (as with epmd), but only a client on this host may register one (as epmd:
the client's address is loopback, or the very address it connected to); a
remote ``register`` is answered ``("error", "not_local")``.

Who runs it: the first node on a host starts one inside its own process
(:func:`ensure_epmd`; later nodes find the port taken by a mapper and just use
it), or it runs standalone (``python -m pybeam.distribution.epmd``, later
``pybeam epmd``). Limitation of the first way: the mapper dies with the node
that hosts it, and every other node's registration with it. Each of them sees
its registration end (:meth:`Registration.wait_closed` returns) and should call
:func:`ensure_epmd` and :func:`register` again (one of them becomes the new
mapper), keeping the creation it started with: its incarnation has not changed.
Until then, lookups of those nodes fail. Run a standalone mapper where that matters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import signal
import ssl
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final

from pybeam import codec

from . import guard, strict
from .framing import FrameError, StreamClosed, encode_frame, read_frame
from .tls import TLSOptions

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "PORT_ENV",
    "EpmdError",
    "EpmdServer",
    "Registration",
    "alive_name",
    "default_max_registrations",
    "default_max_requests",
    "ensure_epmd",
    "epmd_port",
    "lookup",
    "main",
    "names",
    "register",
]

log = logging.getLogger("pybeam.distribution.epmd")  # not __name__: it is "__main__" under -m

PORT_ENV: Final = "PYBEAM_EPMD_PORT"
DEFAULT_PORT: Final = 4370
DEFAULT_HOST: Final = "127.0.0.1"
#: Requests are tiny; a bigger frame is junk and is refused before it is read.
REQUEST_MAX_FRAME: Final = 4096
#: Replies can list many names.
REPLY_MAX_FRAME: Final = 16 * 1024 * 1024
#: Seconds the mapper waits for a client's request before hanging up on it.
REQUEST_TIMEOUT: Final = 10.0
#: Seconds a client waits for the mapper, by default.
CLIENT_TIMEOUT: Final = 5.0
MAX_NAME_LENGTH: Final = 255
MAX_CREATION: Final = 0xFFFF_FFFF
#: How many freed names the mapper remembers the last creation of.
_MAX_REMEMBERED: Final = 1024
#: What a request may hold: ("register", name, port), ("lookup", name), ("names",).
_REQUEST_LIMITS: Final = strict.Limits(max_items=3, max_str=4 * MAX_NAME_LENGTH, max_bytes=0, max_keys=0)


def default_max_requests() -> int:
    """Default cap on connections whose request is not in yet: a sixteenth of the
    file descriptor limit, within 16..64."""
    return guard.default_cap(16, 16, 64)


def default_max_registrations() -> int:
    """Default cap on live registrations (each holds a connection): an eighth of
    the file descriptor limit, within 16..256."""
    return guard.default_cap(8, 16, 256)


class EpmdError(Exception):
    """A port mapper request failed. :attr:`reason` is ``"unreachable"`` (nothing
        listens there), ``"timeout"``, ``"name_taken"``, ``"full"`` (the mapper
        holds as many names as it allows), ``"not_local"`` (a registration from
    another host), ``"protocol"`` (a malformed
        reply, or the connection dropped) or ``"not_a_mapper"`` (from :func:`ensure_epmd`:
        something else holds the port)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def epmd_port(port: int | None = None) -> int:
    """The mapper's port: ``port`` if given, else ``$PYBEAM_EPMD_PORT``, else 4370."""
    if port is not None:
        return port
    value = os.environ.get(PORT_ENV)
    if not value:
        return DEFAULT_PORT
    try:
        parsed = int(value)
    except ValueError:
        raise ValueError(f"${PORT_ENV} must be a port number, not {value!r}") from None
    if not 0 <= parsed <= 65535:
        raise ValueError(f"${PORT_ENV} must be a port number, not {value!r}")
    return parsed


def alive_name(node: str) -> str:
    """The name the mapper knows a node by: the part before ``@``."""
    name = node.partition("@")[0]
    if not _valid_name(name):
        raise ValueError(
            f"bad node name {node!r}: the part before '@' must be 1..{MAX_NAME_LENGTH} characters"
        )
    return name


def _valid_name(name: object) -> bool:
    return type(name) is str and 0 < len(name) <= MAX_NAME_LENGTH


def _valid_port(port: object) -> bool:
    return type(port) is int and 0 < port <= 65535


def _abbrev(term: object) -> str:
    return guard.untrusted(term)


async def _send(writer: asyncio.StreamWriter, term: Any) -> None:
    writer.write(encode_frame(codec.encode(term)))
    await writer.drain()


async def _reply(writer: asyncio.StreamWriter, term: Any) -> None:
    """Send the mapper's answer; a client that does not read it within
    REQUEST_TIMEOUT loses its connection (abort: closing would wait to flush)."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            await _send(writer, term)
    except TimeoutError:
        writer.transport.abort()
        raise ConnectionResetError("the client did not read the reply") from None


class EpmdServer:
    """A port mapper. ``port=None`` means :func:`epmd_port`; ``port=0`` picks a free one.

    Use ``async with EpmdServer(...) as server`` or :meth:`start`/:meth:`close`.
    After start, :attr:`port` is the port actually bound.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str | Sequence[str] = DEFAULT_HOST,
        *,
        max_requests: int | None = None,
        max_registrations: int | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.hosts = _hosts(host)
        #: A server context: every client must speak TLS and present a certificate it accepts.
        self.tls = tls
        self.host = ",".join(self.hosts)
        self.port = epmd_port(port)
        if max_registrations is not None and max_registrations < 1:
            raise ValueError(f"max_registrations must be at least 1, got {max_registrations}")
        self.max_registrations = max_registrations or default_max_registrations()
        # Connections whose request is not in yet: the part a stranger can pile up.
        self._requests = guard.ConnectionCap(default_max_requests() if max_requests is None else max_requests)
        self._refusals = guard.RefusalLog(log, what="refused port mapper requests")
        self._server: asyncio.Server | None = None
        self._closing = False
        # Live connections, so close() can end them (asyncio.Server does not).
        self._conns: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        # name -> (port, creation) for live registrations.
        self._registered: dict[str, tuple[int, int]] = {}
        # name -> last creation, for names registered before and now free.
        self._freed: dict[str, int] = {}

    async def start(self) -> None:
        """Start listening. Raises :class:`OSError` if the port is taken."""
        if self._server is not None:
            return
        if self.tls is None:
            self._server = await asyncio.start_server(self._handle, self.hosts, self.port)
        else:
            self._server = await asyncio.start_server(
                self._handle, self.hosts, self.port, ssl=self.tls, ssl_handshake_timeout=REQUEST_TIMEOUT
            )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("port mapper listening on %s:%d", self.host, self.port)

    async def close(self) -> None:
        """Stop listening and drop every connection, which ends every registration."""
        if self._server is None or self._closing:
            return
        self._closing = True
        self._server.close()
        # Handler tasks for connections accepted just now start on the next
        # iteration; let them start and enrol in _conns so they are ended too.
        await asyncio.sleep(0)
        while self._conns:
            tasks = list(self._conns)
            for task, writer in list(self._conns.items()):
                writer.close()
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        self._closing = False
        log.info("port mapper on %s:%d closed", self.host, self.port)

    async def __aenter__(self) -> EpmdServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        """Start if needed and serve until cancelled."""
        await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    def registered(self) -> list[tuple[str, int]]:
        """The live registrations, as ``(name, port)``."""
        return [(name, port) for name, (port, _) in self._registered.items()]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing:
            writer.close()
            return
        self._conns[task] = writer
        if self._requests.admit(task, writer.transport.abort):
            self._refusals.log(
                logging.WARNING,
                "port mapper: more than %d connections without a request: closed the oldest",
                self._requests.limit,
            )
        peer = writer.get_extra_info("peername")
        try:
            await self._serve_one(reader, writer, peer)
        except asyncio.CancelledError:
            if not self._closing:
                raise
        except ConnectionError as e:
            log.debug("port mapper: connection from %s lost: %s", peer, e)
        except Exception:
            # A bug here must cost one connection, not the mapper.
            log.exception("port mapper: error serving %s", peer)
        finally:
            self._requests.release(task)
            del self._conns[task]
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                payload = await read_frame(reader, REQUEST_MAX_FRAME)
            request = strict.decode(payload, _REQUEST_LIMITS)
        except StreamClosed as e:
            if e.mid_frame:
                self._refusals.log(logging.WARNING, "port mapper: %s closed in the middle of a request", peer)
            return
        except (FrameError, codec.DecodeError) as e:
            self._refusals.log(logging.WARNING, "port mapper: malformed request from %s: %s", peer, e)
            return
        except TimeoutError:
            self._refusals.log(
                logging.WARNING, "port mapper: no request from %s within %s s", peer, REQUEST_TIMEOUT
            )
            writer.transport.abort()  # it may not read either: do not wait to flush
            return
        match request:
            case ("register", name, port) if _valid_name(name) and _valid_port(port):
                if not _is_local(writer):
                    self._refusals.log(
                        logging.WARNING,
                        "port mapper: refused to register %s for %s: not a client on this host",
                        guard.untrusted(name),
                        peer,
                    )
                    await _reply(writer, ("error", "not_local"))
                    return
                await self._register(name, port, reader, writer, peer)
            case ("lookup", name) if _valid_name(name):
                entry = self._registered.get(name)
                await _reply(writer, ("port", entry[0]) if entry else ("error", "not_found"))
            case ("names",):
                await _reply(writer, ("names", self.registered()))
            case _:
                self._refusals.log(
                    logging.WARNING, "port mapper: bad request from %s: %s", peer, _abbrev(request)
                )

    async def _register(
        self, name: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any
    ) -> None:
        if name in self._registered:
            await _reply(writer, ("error", "name_taken"))
            return
        if len(self._registered) >= self.max_registrations:
            self._refusals.log(
                logging.WARNING,
                "port mapper: refused to register %s: %d names are registered already",
                guard.untrusted(name),
                self.max_registrations,
            )
            await _reply(writer, ("error", "full"))
            return
        creation = self._next_creation(name)
        self._registered[name] = (port, creation)
        # From here the registration cap bounds this connection, not the request cap.
        self._requests.release(asyncio.current_task())
        shown = guard.untrusted(name)
        log.info("port mapper: %s registered port %d (creation %d)", shown, port, creation)
        try:
            await _reply(writer, ("ok", creation))
            # The registration lives while the connection does: wait for it to end.
            if await reader.read(1):
                self._refusals.log(
                    logging.WARNING, "port mapper: %s sent data after registering; dropping it", peer
                )
        finally:
            del self._registered[name]
            self._remember(name, creation)
            log.info("port mapper: %s unregistered", shown)

    def _next_creation(self, name: str) -> int:
        last = self._freed.pop(name, None)
        if last is None:
            return secrets.randbelow(MAX_CREATION) + 1
        return last % MAX_CREATION + 1  # next, wrapping past 2**32-1 to 1 (0 is never used)

    def _remember(self, name: str, creation: int) -> None:
        self._freed[name] = creation
        if len(self._freed) > _MAX_REMEMBERED:
            del self._freed[next(iter(self._freed))]  # the oldest; dicts keep insertion order


def _hosts(host: str | Sequence[str]) -> list[str]:
    hosts = [host] if isinstance(host, str) else list(dict.fromkeys(host))
    if not hosts or not all(isinstance(h, str) and h for h in hosts):
        raise ValueError(f"a port mapper listens on one or more hosts, got {host!r}")
    return hosts


def _is_local(writer: asyncio.StreamWriter) -> bool:
    """Whether the client is on this host: loopback, or the address it dialled (as epmd)."""
    peer = writer.get_extra_info("peername")
    sock = writer.get_extra_info("sockname")
    if not peer or not sock:
        return False
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    if address.is_loopback:
        return True
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped is not None and mapped.is_loopback) or peer[0] == sock[0])


async def ensure_epmd(
    port: int | None = None,
    host: str | Sequence[str] = DEFAULT_HOST,
    *,
    tls: ssl.SSLContext | None = None,
    client_tls: ssl.SSLContext | None = None,
    timeout: float = CLIENT_TIMEOUT,
) -> EpmdServer | None:
    """Start a port mapper here unless one already runs on that port.

    ``host`` is one address or several to listen on (the first is asked
    whether a mapper runs there already). Returns the started
    :class:`EpmdServer` (the caller owns it and must close it) or ``None`` if
    a mapper already answers on the port. Raises :class:`EpmdError`
    (``"not_a_mapper"``) if something else holds the port. With ``tls`` (a
    server context) the mapper speaks TLS only, and ``client_tls`` is what
    asks the one already running, within ``timeout`` seconds: if what holds
    the port does not answer in time, the error's reason is ``"timeout"`` (a
    mapper too busy to answer looks the same as a silent program).
    """
    server = EpmdServer(port, host, tls=tls)
    try:
        await server.start()
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        host = server.hosts[0]
        try:
            await names(server.port, host=host, timeout=timeout, tls=client_tls)
        except EpmdError as err:
            if err.reason == "timeout":
                raise EpmdError(
                    "timeout",
                    f"port {server.port} on {host} is in use, and what listens there did not answer "
                    f"within {timeout:g}s: a port mapper too busy to answer, or another program",
                ) from err
            if isinstance(err.__cause__, ssl.SSLError):
                raise EpmdError(
                    "not_a_mapper",
                    f"port {server.port} on {host} is in use, and the TLS handshake with it failed "
                    f"(a mapper without TLS, or with another CA?): {err.__cause__}",
                ) from err
            raise EpmdError(
                "not_a_mapper",
                f"port {server.port} on {host} is in use by something that is not a pybeam port mapper",
            ) from err
        return None
    return server


async def _connect(
    host: str, port: int, tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        if tls is None:
            return await asyncio.open_connection(host, port)
        return await asyncio.open_connection(host, port, ssl=tls, server_hostname=host)
    except OSError as e:
        raise EpmdError("unreachable", f"no port mapper at {host}:{port}: {e}") from e


async def _request(
    request: tuple[Any, ...], epmd_port_: int | None, host: str, timeout: float, tls: ssl.SSLContext | None
) -> tuple[Any, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send one request and return the reply, with the still open connection."""
    port = epmd_port(epmd_port_)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _connect(host, port, tls)
            await _send(writer, request)
            reply = codec.decode(await read_frame(reader, REPLY_MAX_FRAME))
    except BaseException as e:
        if writer is not None:
            writer.close()
        if isinstance(e, TimeoutError):
            raise EpmdError(
                "timeout", f"the port mapper at {host}:{port} did not answer in {timeout} s"
            ) from e
        if isinstance(e, FrameError | codec.DecodeError | ConnectionError):
            raise EpmdError("protocol", f"bad reply from the port mapper at {host}:{port}: {e}") from e
        raise
    return reply, reader, writer


def _bad_reply(reply: object) -> EpmdError:
    return EpmdError("protocol", f"unexpected reply from the port mapper: {_abbrev(reply)}")


async def lookup(
    name: str,
    epmd_port: int | None = None,
    *,
    host: str = DEFAULT_HOST,
    timeout: float = CLIENT_TIMEOUT,
    tls: ssl.SSLContext | None = None,
) -> int | None:
    """The port node ``name`` (``alive`` or ``alive@host``) listens on, or ``None`` if not registered.
    ``tls``: a client context, for a mapper that speaks TLS (the same in every function here)."""
    reply, _, writer = await _request(("lookup", alive_name(name)), epmd_port, host, timeout, tls)
    writer.close()
    match reply:
        case ("port", port) if _valid_port(port):
            return int(port)
        case ("error", "not_found"):
            return None
    raise _bad_reply(reply)


async def names(
    epmd_port: int | None = None,
    *,
    host: str = DEFAULT_HOST,
    timeout: float = CLIENT_TIMEOUT,
    tls: ssl.SSLContext | None = None,
) -> list[tuple[str, int]]:
    """Every registration, as ``(alive name, port)``."""
    reply, _, writer = await _request(("names",), epmd_port, host, timeout, tls)
    writer.close()
    match reply:
        case ("names", [*entries]) if all(
            isinstance(e, tuple | list) and len(e) == 2 and _valid_name(e[0]) and _valid_port(e[1])
            for e in entries
        ):
            return [(str(n), int(p)) for n, p in entries]
    raise _bad_reply(reply)


async def register(
    name: str,
    port: int,
    epmd_port: int | None = None,
    *,
    host: str = DEFAULT_HOST,
    timeout: float = CLIENT_TIMEOUT,
    tls: ssl.SSLContext | None = None,
) -> Registration:
    """Register node ``name`` as listening on ``port``; it stays registered until
    the returned :class:`Registration` is closed (or the mapper goes away).

    Raises :class:`EpmdError` with reason ``"name_taken"`` if a live node has the name.
    """
    alive = alive_name(name)
    if not _valid_port(port):
        raise ValueError(f"bad port {port!r}")
    reply, reader, writer = await _request(("register", alive, port), epmd_port, host, timeout, tls)
    match reply:
        case ("error", "not_local"):
            writer.close()
            raise EpmdError(
                "not_local", f"the port mapper at {host} takes registrations from its own host only"
            )
        case ("ok", creation) if type(creation) is int and 0 < creation <= MAX_CREATION:
            return Registration(alive, port, creation, reader, writer)
        case ("error", "name_taken"):
            writer.close()
            raise EpmdError("name_taken", f"the name {alive!r} is already registered with the port mapper")
        case ("error", "full"):
            writer.close()
            raise EpmdError("full", "the port mapper holds as many registrations as it allows")
    writer.close()
    raise _bad_reply(reply)


class Registration:
    """A live registration with the port mapper: the open connection that holds the name.

    :attr:`creation` is this node's incarnation number from the mapper.
    """

    def __init__(
        self, name: str, port: int, creation: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.name = name
        self.port = port
        self.creation = creation
        self._reader = reader
        self._writer = writer
        self._eof: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<Registration {self.name} port={self.port} creation={self.creation}>"

    @property
    def closed(self) -> bool:
        """Whether the registration has ended (closed here, or by the mapper)."""
        return self._closed or (self._eof is not None and self._eof.done())

    async def _read_to_eof(self) -> None:
        with contextlib.suppress(OSError):
            while await self._reader.read(4096):
                pass  # the mapper sends nothing after ("ok", creation)

    def _eof_task(self) -> asyncio.Task[None]:
        # One task does the reading, so wait_closed() and close() can both wait on
        # it (a StreamReader allows one reader at a time).
        if self._eof is None:
            self._eof = asyncio.ensure_future(self._read_to_eof())
        return self._eof

    async def wait_closed(self) -> None:
        """Wait until the registration ends: :meth:`close`, or the mapper dropping it."""
        await asyncio.shield(self._eof_task())

    async def close(self, timeout: float = 1.0) -> None:
        """Give the name back. Returns once the mapper has freed it (or after ``timeout``)."""
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        try:
            # Half-close: the mapper sees EOF, frees the name and then closes its
            # side, which is how we know the name is free when we return.
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._eof_task())
        except (OSError, TimeoutError):
            pass
        finally:
            eof = self._eof
            if eof is not None and not eof.done():
                eof.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await eof
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def __aenter__(self) -> Registration:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def _serve(
    port: int,
    host: str | list[str],
    max_requests: int | None,
    max_registrations: int | None,
    tls: ssl.SSLContext | None = None,
) -> int:
    server = EpmdServer(port, host, max_requests=max_requests, max_registrations=max_registrations, tls=tls)
    try:
        await server.start()
    except OSError as e:
        print(f"pybeam epmd: cannot listen on {server.host} port {port}: {e.strerror or e}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()
    return 0


async def _print_names(port: int, host: str, tls: ssl.SSLContext | None = None) -> int:
    try:
        entries = await names(port, host=host, tls=tls)
    except EpmdError as e:
        print(f"pybeam epmd: {e}", file=sys.stderr)
        return 1
    print(f"port mapper on {host}:{port}")
    for name, node_port in entries:
        print(f"name {name} at port {node_port}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run a port mapper in the foreground (``python -m pybeam.distribution.epmd``); return the exit status."""
    parser = argparse.ArgumentParser(prog="pybeam epmd", description="Run the pybeam port mapper.")
    parser.add_argument(
        "--port", type=int, default=None, help=f"port (default ${PORT_ENV} or {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--host",
        action="append",
        default=None,
        help=f"address to listen on, repeatable (default {DEFAULT_HOST}); --names asks the first",
    )
    parser.add_argument("--names", action="store_true", help="list the running mapper's names and exit")
    parser.add_argument(
        "--max-requests",
        type=int,
        default=None,
        help="connections waiting for their request, at most; one more closes the oldest "
        f"(default {default_max_requests()})",
    )
    parser.add_argument(
        "--max-registrations",
        type=int,
        default=None,
        help=f"live registrations, at most (default {default_max_registrations()})",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="TLS: this mapper's certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="TLS: its private key (PEM)")
    parser.add_argument(
        "--tls-ca", metavar="FILE", help="TLS: the CA every client's certificate must be signed by"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log registrations")
    args = parser.parse_args(argv)
    tls_files = (args.tls_cert, args.tls_key, args.tls_ca)
    if any(tls_files) and not all(tls_files):
        parser.error("TLS needs all of --tls-cert, --tls-key and --tls-ca")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    try:
        port = epmd_port(args.port)
    except ValueError as e:
        parser.error(str(e))
    hosts: list[str] = args.host or [DEFAULT_HOST]
    tls_options = TLSOptions(*tls_files) if all(tls_files) else None
    if args.names:
        client = tls_options.client_context(check_hostname=False) if tls_options else None
        return asyncio.run(_print_names(port, hosts[0], client))
    server = tls_options.server_context() if tls_options else None
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_serve(port, hosts, args.max_requests, args.max_registrations, server))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Generic servers: OTP's ``gen_server``, built only on pybeam's public API.

A server is a subclass of :class:`GenServer` whose callbacks (``init``,
``handle_call``, ``handle_cast``, ``handle_info``, ``terminate``) take and
return the server's state, as gen_server's do. Any of them may be ``async``.

.. code-block:: python

    class Counter(GenServer):
        def init(self, start):
            return start

        def handle_call(self, request, from_, n):
            return ("reply", n, n)

        def handle_cast(self, request, n):
            return ("noreply", n + 1)

    pid = await Counter.start_link(0, name="counter")
    gen_server.cast("counter", "inc")
    assert await gen_server.call("counter", "get") == 1

The messages a server understands (what ``call``, ``cast`` and ``stop`` send):

- ``("$gen_call", (caller_pid, ref), request)``; the reply is ``(ref, reply)``,
  where ``ref`` is the caller's monitor of the server, unique in the cluster;
- ``("$gen_cast", request)``;
- ``("$gen_stop", reason)``: terminate with ``reason`` (``gen_server:stop``);
- ``("EXIT", parent, reason)`` from the process that started it with
  ``start_link``, when the server traps exits: terminate with ``reason``.

Everything else goes to ``handle_info``. Starting is synchronous, as with
``proc_lib``: the new process acks ``("$gen_ack", tag, status, value)`` once
``init`` has returned, and ``start`` returns (or raises) then.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Hashable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeAlias, TypeGuard, TypeVar, overload

from . import kernel
from .arguments import check_timeout
from .errors import BadArg, Exit, NodeDown, NoProc, PybeamError
from .expect import check_result
from .logtext import clip, short
from .pattern import ANY
from .terms import NOCONNECTION, NOPROC, NORMAL, Crash, Pid, Ref

if TYPE_CHECKING:
    from .supervisor import ChildSpec

__all__ = [
    "IGNORE",
    "AlreadyStarted",
    "BadReturn",
    "CallExit",
    "CallTimeout",
    "GenServer",
    "GenServerError",
    "Name",
    "NoServer",
    "ServerRef",
    "StartError",
    "StartIgnored",
    "StartTimeout",
    "call",
    "cast",
    "enter_loop",
    "is_normal_exit",
    "reply",
    "start",
    "start_link",
    "stop",
]

logger = logging.getLogger("pybeam")

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0

#: What a server is addressed by: a pid, a local registered name,
#: ``(name, node)`` for a name on another node, or ``("global", name)``
#: (a global name is any hashable term).
ServerRef: TypeAlias = Pid | str | tuple[str, Hashable]
#: What a server may be registered as: a local name or ``("global", name)``.
Name: TypeAlias = str | tuple[str, Hashable] | None


class _Ignore:
    __slots__ = ()

    def __repr__(self) -> str:
        return "IGNORE"


#: Returned by ``init`` to give up quietly (OTP's ``ignore``): the process
#: exits ``normal`` and ``start`` raises :class:`StartIgnored` (a supervisor
#: records the child as not running).
IGNORE: Final = _Ignore()


# -- errors ---------------------------------------------------------------------


class GenServerError(PybeamError):
    """Base class of the errors gen_server functions raise."""


class StartError(GenServerError):
    """The server did not start; ``reason`` says why (as OTP's ``{error, Reason}``).

    ``reason`` is what ``init`` gave: the ``reason`` of ``("stop", reason)``,
    the :class:`~pybeam.Crash` of an exception it raised, the reason of a
    ``pybeam.exit(reason)``, or the exit reason of a process that died first.
    """

    def __init__(self, reason: Any, message: str | None = None) -> None:
        super().__init__(message or f"server failed to start: {reason!r}")
        self.reason = reason


class AlreadyStarted(StartError):
    """The name asked for is taken; ``pid`` holds it (``{already_started, Pid}``)."""

    def __init__(self, name: Any, pid: Pid | None) -> None:
        super().__init__(("already_started", pid), f"name {name!r} is already registered to {pid!r}")
        self.pid = pid


class StartIgnored(StartError):
    """``init`` returned :data:`IGNORE`: no server runs (OTP's ``ignore``)."""

    def __init__(self) -> None:
        super().__init__("ignore", "init returned IGNORE: the server did not start")


class StartTimeout(StartError, TimeoutError):
    """``init`` did not return in time; the process was killed."""

    def __init__(self, timeout: float | None) -> None:
        super().__init__("timeout", f"init did not return within {timeout}s; the process was killed")


class CallTimeout(GenServerError, TimeoutError):
    """No reply came in time. The server was not stopped and may still reply late."""

    def __init__(self, server: Any, timeout: float | None, what: str = "call") -> None:
        super().__init__(f"{what} to {server!r} timed out after {timeout}s")
        self.server = server
        self.timeout = timeout


class NoServer(NoProc, GenServerError):
    """No process answers to that pid or name (the monitor said ``noproc``)."""

    def __init__(self, server: Any) -> None:
        super().__init__(server, f"no server {server!r} (noproc)")


class CallExit(GenServerError):
    """The server exited before replying; ``reason`` is its exit reason
    (a :class:`~pybeam.Crash` if a callback raised)."""

    def __init__(self, server: Any, reason: Any) -> None:
        super().__init__(f"server {server!r} exited during the call: {reason!r}")
        self.server = server
        self.reason = reason


class BadReturn(GenServerError):
    """A callback returned a value gen_server does not understand; the server
    crashes with this (as OTP's ``{bad_return_value, Value}``)."""

    def __init__(self, callback: str, value: Any) -> None:
        super().__init__(f"{callback} returned a bad value: {short(value)}")
        self.callback = callback
        self.value = value


# -- helpers --------------------------------------------------------------------


#: What a callback may raise that crashes the server (and runs terminate), as
#: any class of exception does in OTP: sys.exit() in a callback included.
_CRASHES: Final = (Exception, SystemExit, KeyboardInterrupt)


async def _resolved(value: Any) -> Any:
    # Callbacks may be plain or async: await what needs it.
    if inspect.isawaitable(value):
        return await value
    return value


def is_normal_exit(reason: Any) -> bool:
    """True for ``normal``, ``shutdown`` and ``("shutdown", _)``: the reasons
    after which OTP logs no crash report and a transient child is not restarted."""
    if reason == NORMAL or reason == "shutdown":
        return True
    return type(reason) is tuple and len(reason) == 2 and reason[0] == "shutdown"


def _is_global(ref: Any) -> TypeGuard[tuple[str, Hashable]]:
    return type(ref) is tuple and len(ref) == 2 and ref[0] == "global"


def _check_name(name: Any) -> None:
    if name is None or (type(name) is str and name):
        return
    if _is_global(name):
        return
    raise BadArg(f"a server name is None, a non-empty str or ('global', name); got {name!r}")


async def _resolve(server: Any) -> tuple[Pid | tuple[str, str], str]:
    """What to monitor and send to for ``server``, and the node it is on.

    Raises :class:`NoServer` for a local or global name nobody holds.
    """
    if type(server) is Pid:
        return server, server.node
    if type(server) is str:
        pid = kernel.whereis(server)
        if pid is None:
            raise NoServer(server)
        return pid, pid.node
    if type(server) is tuple and len(server) == 2:
        if _is_global(server):
            # Imported when first needed (here and below): only global names
            # need it, and it brings in the distribution layer.
            from . import global_

            found = global_.whereis_name(server[1])
            if found is None:
                raise NoServer(server)
            return found, found.node
        name, node = server
        if type(name) is str and type(node) is str:
            if node == kernel.node_name():
                return await _resolve(name)
            return (name, node), node
    raise BadArg(f"not a server: {server!r} (a pid, a name, (name, node) or ('global', name))")


def _down_error(server: Any, node: str, reason: Any) -> Exception:
    """The error a DOWN with ``reason`` stands for, during a call or a stop."""
    if reason == NOPROC:
        return NoServer(server)
    if reason == NOCONNECTION:
        from . import net  # here: it brings in the distribution layer

        why = net.connect_failure(node) if node != kernel.node_name() else None
        return NodeDown(
            node, f"node {node} of server {server!r} cannot be reached: {why or 'noconnection'}", reason=why
        )
    return CallExit(server, reason)


# A reply that comes after its call timed out would sit in the caller's
# mailbox forever (OTP avoids this with aliases, which pybeam has not got).
# The refs of abandoned calls are remembered per process, so that a GenServer
# drops such a late reply instead of handing it to handle_info. The context
# variable lives in the process's task context: each process has its own.
_abandoned: ContextVar[dict[Ref, None] | None] = ContextVar("pybeam_gen_abandoned", default=None)
_MAX_ABANDONED = 1024


def _abandon(ref: Ref) -> None:
    refs = _abandoned.get()
    if refs is None:
        refs = {}
        _abandoned.set(refs)
    refs[ref] = None
    if len(refs) > _MAX_ABANDONED:
        del refs[next(iter(refs))]  # the oldest: its reply is unlikely ever to come


def _late_reply(tag: Ref) -> bool:
    refs = _abandoned.get()
    if refs is None or tag not in refs:
        return False
    del refs[tag]
    return True


# -- the client side ----------------------------------------------------------------


@overload
async def call(
    server: ServerRef, request: Any, timeout: float | None = ..., *, expect: None = ...
) -> Any: ...


@overload
async def call(server: ServerRef, request: Any, timeout: float | None = ..., *, expect: type[T]) -> T: ...


async def call(
    server: ServerRef,
    request: Any,
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    expect: type[Any] | None = None,
) -> Any:
    """Send ``request`` to ``server``'s ``handle_call`` and return its reply.

    ``expect``: the reply's type, for the type checker (the call is typed as
    returning it) and checked at run time: a reply of another type raises
    :class:`~pybeam.expect.UnexpectedResult` (a ``TypeError``).

    ``server`` is a pid, a local name, ``(name, node)`` or ``("global", name)``;
    ``timeout`` is in seconds (None: wait as long as it takes). Raises
    :class:`CallTimeout` when no reply came in time, :class:`NoServer` when
    there is no such server, :class:`~pybeam.NodeDown` when its node cannot be
    reached or goes down, and :class:`CallExit` (with the server's exit reason)
    when it exits before replying.
    """
    check_timeout(timeout)
    target: Pid | tuple[str, str]
    if type(server) is Pid:  # _resolve's first case, without a coroutine per call
        target, node = server, server.node
    else:
        target, node = await _resolve(server)
    me = kernel.self()
    if target == me:
        raise GenServerError(f"a process cannot call itself: {server!r} (calling_self)")
    # As OTP: the monitor both tells us if the server dies and tags the reply.
    ref = kernel.monitor(target)
    kernel.send(target, ("$gen_call", (me, ref), request))

    def answer(m: Any) -> bool:
        return type(m) is tuple and (
            (len(m) == 2 and m[0] == ref) or (len(m) == 5 and m[0] == "DOWN" and m[1] == ref)
        )

    try:
        msg = await kernel.receive(answer, timeout=timeout, default=None)
    except BaseException:
        # Cancelled while waiting: the reply may still come.
        kernel.demonitor(ref, flush=True)
        _abandon(ref)
        raise
    if msg is None:
        kernel.demonitor(ref, flush=True)
        _abandon(ref)
        raise CallTimeout(server, timeout)
    if len(msg) == 2:
        kernel.demonitor(ref, flush=True)
        return check_result(f"call to {server!r}", msg[1], expect)
    raise _down_error(server, node, msg[4])


def cast(server: ServerRef, request: Any) -> None:
    """Send ``request`` to ``server``'s ``handle_cast`` without waiting.

    Never fails because the server does not exist: the request is dropped.
    """
    msg = ("$gen_cast", request)
    if _is_global(server):
        from . import global_

        # Whatever global_ raises for a name nobody holds.
        with contextlib.suppress(PybeamError):
            global_.send(server[1], msg)
        return
    with contextlib.suppress(BadArg, NoProc):
        kernel.send(server, msg)


def reply(from_: tuple[Pid, Ref], reply: Any) -> None:
    """Reply to a call whose ``handle_call`` returned ``("noreply", state)``.

    ``from_`` is the ``from_`` that ``handle_call`` was given; any process may
    reply, once.
    """
    pid, tag = from_
    kernel.send(pid, (tag, reply))


async def stop(server: ServerRef, reason: Any = NORMAL, timeout: float | None = DEFAULT_TIMEOUT) -> None:
    """Stop ``server`` with ``reason``; returns once it has run ``terminate``
    and exited (``gen_server:stop``).

    Raises :class:`NoServer` if there is no such server, :class:`CallTimeout`
    if it did not exit in time (it is left running), :class:`CallExit` if it
    exited with another reason (``terminate`` raised, say).
    """
    check_timeout(timeout)
    target, node = await _resolve(server)
    ref = kernel.monitor(target)
    kernel.send(target, ("$gen_stop", reason))
    try:
        msg = await kernel.receive(("DOWN", ref, ANY, ANY, ANY), timeout=timeout, default=None)
    except BaseException:
        kernel.demonitor(ref, flush=True)  # cancelled: no DOWN left behind
        raise
    if msg is None:
        kernel.demonitor(ref, flush=True)
        raise CallTimeout(server, timeout, "stop")
    if msg[4] == reason:
        return
    raise _down_error(server, node, msg[4])


async def start(
    server: type[GenServer] | GenServer,
    arg: Any = None,
    *,
    name: Name = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Pid:
    """Start a server process and return its pid once ``init(arg)`` returned.

    ``server`` is a :class:`GenServer` subclass (instantiated with no
    arguments) or an instance. ``name`` registers it: a local name, or
    ``("global", name)``. Raises :class:`StartError` if ``init`` fails (its
    ``reason`` says how), :class:`AlreadyStarted` if the name is taken,
    :class:`StartIgnored` if ``init`` returned :data:`IGNORE` and
    :class:`StartTimeout` if ``init`` took longer than ``timeout`` seconds.
    """
    return await _start(server, arg, name, timeout, link=False)


async def start_link(
    server: type[GenServer] | GenServer,
    arg: Any = None,
    *,
    name: Name = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Pid:
    """Like :func:`start`, and link the server to the caller (its parent).

    If ``init`` fails the server unlinks before it exits, so the caller gets
    the :class:`StartError` rather than the exit signal.
    """
    return await _start(server, arg, name, timeout, link=True)


async def enter_loop(server: GenServer, state: Any, *, parent: Pid | None = None) -> NoReturn:
    """Make the calling process a server of ``server`` from ``state``: its
    callbacks handle the process's messages until it stops (OTP's
    ``gen_server:enter_loop``).

    For a process started otherwise than by :func:`start` (``init`` is not
    called): the kernel's servers, say, which are spawned and registered at
    once so that their names are never free while a node runs. ``parent`` is
    the process whose exit signal, when trapped, stops the server.
    """
    if not isinstance(server, GenServer):
        raise BadArg(f"not a GenServer instance: {server!r}")
    me = kernel.self()
    info = kernel.process_info(me)
    name = None if info is None else info["registered_name"]
    label = f"{name!r} ({me!r})" if name is not None else repr(me)
    await _Loop(server, label, parent, state).run()


def _kill_flush(pid: Pid, mref: Ref, link: bool) -> None:
    """proc_lib's kill_flush: end a server whose start we gave up on, without
    the caller dying of the kill or keeping its DOWN."""
    if link:
        kernel.unlink(pid)
    kernel.exit(pid, "kill")
    kernel.demonitor(mref, flush=True)


async def _start(
    server: type[GenServer] | GenServer, arg: Any, name: Name, timeout: float | None, link: bool
) -> Pid:
    mod = server() if isinstance(server, type) else server
    if not isinstance(mod, GenServer):
        raise BadArg(f"not a GenServer class or instance: {server!r}")
    _check_name(name)
    check_timeout(timeout)
    me = kernel.self()
    tag = kernel.make_ref()
    if link:
        pid = kernel.spawn_link(_init_it, me, tag, me, mod, arg, name)
        # The process has not run yet: the monitor cannot miss its end.
        mref = kernel.monitor(pid)
    else:
        pid, mref = kernel.spawn_monitor(_init_it, me, tag, None, mod, arg, name)

    def answer(m: Any) -> bool:
        return type(m) is tuple and (
            (len(m) == 4 and m[0] == "$gen_ack" and m[1] == tag)
            or (len(m) == 5 and m[0] == "DOWN" and m[1] == mref)
        )

    try:
        msg = await kernel.receive(answer, timeout=timeout, default=None)
    except BaseException:
        _kill_flush(pid, mref, link)  # cancelled: undone as a timeout is
        raise
    if msg is None:
        _kill_flush(pid, mref, link)
        raise StartTimeout(timeout)
    if msg[0] == "DOWN":
        # Killed (or gone) before init returned.
        if link:
            await kernel.receive(("EXIT", pid, ANY), timeout=0, default=None)
        raise StartError(msg[4])
    _, _, status, value = msg
    if status == "ok":
        kernel.demonitor(mref, flush=True)
        return pid
    # The process exits right after a failed ack: wait for it, so that when
    # start raises its name is free again (OTP 26's synchronous failure).
    await kernel.receive(("DOWN", mref, ANY, ANY, ANY))
    if status == "ignore":
        raise StartIgnored()
    if type(value) is tuple and len(value) == 2 and value[0] == "already_started":
        raise AlreadyStarted(name, value[1])
    raise StartError(value)


# -- the server side ----------------------------------------------------------------


async def _register(name: Name, me: Pid) -> tuple[bool, Pid | None]:
    """Register ``me`` as ``name``: ``(True, None)``, or ``(False, holder)``."""
    if name is None:
        return True, None
    if type(name) is str:
        try:
            kernel.register(name, me)
        except BadArg:
            return False, kernel.whereis(name)
        return True, None
    from . import global_

    if await global_.register_name(name[1], me):
        return True, None
    return False, global_.whereis_name(name[1])


async def _init_it(starter: Pid, tag: Ref, parent: Pid | None, mod: GenServer, arg: Any, name: Name) -> None:
    """The server process: register, run ``init``, ack the starter, then loop."""
    me = kernel.self()

    def fail(status: str, value: Any, reason: Any) -> NoReturn:
        kernel.send(starter, ("$gen_ack", tag, status, value))
        # Unlink first: the starter learns of the failure from the ack and
        # need not trap exits to survive it.
        if parent is not None:
            kernel.unlink(parent)
        raise Exit(reason)

    ok, holder = await _register(name, me)
    if not ok:
        fail("error", ("already_started", holder), NORMAL)
    label = f"{name!r} ({me!r})" if name is not None else repr(me)
    try:
        state = await _resolved(mod.init(arg))
    except Exit as e:
        fail("error", e.reason, e.reason)
    except _CRASHES as e:
        crash = Crash.from_exception(e)
        logger.error(
            "GenServer %s (%s) crashed in init\n** Argument == %s\n** Reason == %s\n%s",
            label,
            type(mod).__qualname__,
            short(arg),
            short(crash),
            clip(crash.traceback.rstrip()),
        )
        fail("error", crash, crash)
    if state is IGNORE:
        fail("ignore", None, NORMAL)
    if type(state) is tuple and len(state) == 2 and state[0] == "stop":
        fail("error", state[1], state[1])
    kernel.send(starter, ("$gen_ack", tag, "ok", me))
    await _Loop(mod, label, parent, state).run()


class _Stop(Exception):
    """A callback asked to stop: leave the handler, then terminate."""

    def __init__(self, reason: Any, reply_to: tuple[Pid, Ref] | None = None, reply: Any = None) -> None:
        self.reason = reason
        self.reply_to = reply_to
        self.reply = reply


class _Loop:
    """The receive loop of one server process."""

    __slots__ = ("label", "last", "mod", "parent", "state")

    def __init__(self, mod: GenServer, label: str, parent: Pid | None, state: Any) -> None:
        self.mod = mod
        self.label = label
        self.parent = parent
        self.state = state
        self.last: Any = None

    async def run(self) -> NoReturn:
        while True:
            msg = await kernel.receive()
            self.last = msg
            try:
                await self.dispatch(msg)
            except _Stop as stop:
                await self.terminate(stop.reason, stop.reply_to, stop.reply)
            except Exit as e:
                await self.terminate(e.reason)
            except _CRASHES as e:
                await self.terminate(Crash.from_exception(e))

    async def dispatch(self, msg: Any) -> None:
        """Run the callback ``msg`` is for; raise :class:`_Stop` to stop."""
        mod = self.mod
        if type(msg) is tuple and msg:
            tag = msg[0]
            n = len(msg)
            if n == 3 and tag == "$gen_call" and type(msg[1]) is tuple and len(msg[1]) == 2:
                from_ = msg[1]
                result = mod.handle_call(msg[2], from_, self.state)
                if type(result) is not tuple:  # _resolved's work, without a coroutine per call
                    result = await _resolved(result)
                match result:
                    case ("reply", value, state):
                        self.state = state
                        reply(from_, value)
                    case ("noreply", state):
                        self.state = state
                    case ("stop", reason, value, state):
                        self.state = state
                        raise _Stop(reason, from_, value)
                    case ("stop", reason, state):
                        self.state = state
                        raise _Stop(reason)
                    case _:
                        raise BadReturn("handle_call", result)
                return
            if n == 2 and tag == "$gen_cast":
                result = mod.handle_cast(msg[1], self.state)
                self.noreply("handle_cast", result if type(result) is tuple else await _resolved(result))
                return
            if n == 2 and tag == "$gen_stop":
                raise _Stop(msg[1])
            if n == 3 and tag == "EXIT" and self.parent is not None and msg[1] == self.parent:
                raise _Stop(msg[2])
            if n == 2 and type(tag) is Ref and _late_reply(tag):
                return
        self.noreply("handle_info", await _resolved(mod.handle_info(msg, self.state)))

    def noreply(self, callback: str, result: Any) -> None:
        match result:
            case ("noreply", state):
                self.state = state
            case ("stop", reason, state):
                self.state = state
                raise _Stop(reason)
            case _:
                raise BadReturn(callback, result)

    async def terminate(
        self, reason: Any, reply_to: tuple[Pid, Ref] | None = None, value: Any = None
    ) -> NoReturn:
        """Run ``terminate``, log a crash report if the reason is abnormal, exit."""
        try:
            await _resolved(self.mod.terminate(reason, self.state))
        except Exit as e:
            reason = e.reason
        except _CRASHES as e:
            reason = Crash.from_exception(e)
        finally:
            # As gen_server: a ("stop", reason, reply, state) replies after terminate.
            if reply_to is not None:
                reply(reply_to, value)
        if not is_normal_exit(reason):
            self.report(reason)
        raise Exit(reason)

    def report(self, reason: Any) -> None:
        last = self.last
        client = ""
        if type(last) is tuple and len(last) == 3 and last[0] == "$gen_call":
            client = f"\n** Client {last[1][0]!r} was waiting for a reply"
        trace = reason.traceback.rstrip() if isinstance(reason, Crash) and reason.traceback else ""
        logger.error(
            "GenServer %s (%s) terminating\n** Last message in was %s\n** When server state == %s"
            "\n** Reason for termination == %s%s%s",
            self.label,
            type(self.mod).__qualname__,
            short(last),
            short(self.state),
            short(reason),
            client,
            "\n" + clip(trace) if trace else "",
        )


# -- the behaviour ----------------------------------------------------------------


class GenServer:
    """Base class of generic servers: override the callbacks you need.

    Each callback may be a plain or an ``async`` method. The defaults, as
    OTP's: ``init`` makes ``arg`` the state; ``handle_call`` and ``handle_cast``
    crash the server (it was sent something it does not handle);
    ``handle_info`` logs a warning and ignores the message; ``terminate`` does
    nothing.
    """

    def init(self, arg: Any) -> Any:
        """Return the initial state, ``("stop", reason)`` or :data:`IGNORE`.

        Raising makes :func:`start` raise :class:`StartError`.
        """
        return arg

    def handle_call(self, request: Any, from_: tuple[Pid, Ref], state: Any) -> Any:
        """Handle a :func:`call`. Return ``("reply", reply, state)``,
        ``("noreply", state)`` (and :func:`reply` later), ``("stop", reason,
        reply, state)`` or ``("stop", reason, state)``."""
        raise NotImplementedError(f"{type(self).__qualname__} has no handle_call for {short(request)}")

    def handle_cast(self, request: Any, state: Any) -> Any:
        """Handle a :func:`cast`: return ``("noreply", state)`` or ``("stop", reason, state)``."""
        raise NotImplementedError(f"{type(self).__qualname__} has no handle_cast for {short(request)}")

    def handle_info(self, msg: Any, state: Any) -> Any:
        """Handle any other message: return ``("noreply", state)`` or ``("stop", reason, state)``."""
        logger.warning(
            "GenServer %r (%s) received an unexpected message: %s",
            kernel.self(),
            type(self).__qualname__,
            short(msg),
        )
        return ("noreply", state)

    def terminate(self, reason: Any, state: Any) -> Any:
        """Clean up before the server exits with ``reason``.

        Called when a callback asks to stop or raises, on :func:`stop`, and
        (if the server traps exits) when its parent exits; not when the
        server is killed.
        """
        return None

    @classmethod
    async def start(
        cls, arg: Any = None, *, name: Name = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Pid:
        """``gen_server.start(cls, arg, ...)``."""
        return await start(cls, arg, name=name, timeout=timeout)

    @classmethod
    async def start_link(
        cls, arg: Any = None, *, name: Name = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Pid:
        """``gen_server.start_link(cls, arg, ...)``."""
        return await start_link(cls, arg, name=name, timeout=timeout)

    @classmethod
    def child_spec(cls, arg: Any = None, **options: Any) -> ChildSpec:
        """A supervisor child spec that starts this server with ``start_link``
        (``options`` as for :func:`pybeam.supervisor.server_spec`)."""
        from .supervisor import server_spec

        return server_spec(cls, arg, **options)

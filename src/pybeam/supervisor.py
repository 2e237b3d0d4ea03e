"""Supervisors: OTP's ``supervisor``, written as OTP's is.

A supervisor is a :class:`~pybeam.gen_server.GenServer` that traps exits,
starts its children (linked to it) in order, and when one exits restarts it
— and, by the strategy, some of its siblings — as its child spec says:

- ``permanent`` children are always restarted, ``transient`` ones only after an
  abnormal exit (a reason other than ``normal``, ``shutdown`` or
  ``("shutdown", _)``), ``temporary`` ones never;
- ``one_for_one`` restarts the child alone; ``one_for_all`` stops the others
  (last started first) and restarts them all in order; ``rest_for_one`` does
  that for the children started after the one that exited;
- more than ``max_restarts`` restarts within ``max_seconds`` and the supervisor
  stops every child and exits with reason ``shutdown``, for its own supervisor
  to deal with.

Children stop in reverse start order, each by its ``shutdown``: exit signal
``shutdown``, then ``kill`` if it has not exited after that many seconds
(``"brutal_kill"``: ``kill`` at once; ``"infinity"``: wait as long as it
takes, the default for supervisors).

.. code-block:: python

    sup = await supervisor.start_link(
        [Cache.child_spec(name="cache"), supervisor.process_spec(poller, 5.0)],
        strategy="one_for_one",
    )
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeAlias

from . import gen_server, kernel
from .errors import BadArg, PybeamError
from .gen_server import GenServer, Name, ServerRef, is_normal_exit
from .logtext import short
from .pattern import ANY
from .terms import Crash, Pid, Ref

__all__ = [
    "ChildInfo",
    "ChildNotFound",
    "ChildSpec",
    "SupervisorError",
    "count_children",
    "delete_child",
    "process_spec",
    "restart_child",
    "server_spec",
    "start",
    "start_child",
    "start_link",
    "stop",
    "supervisor_spec",
    "terminate_child",
    "which_children",
]

logger = logging.getLogger("pybeam")

Restart: TypeAlias = Literal["permanent", "transient", "temporary"]
Shutdown: TypeAlias = float | Literal["brutal_kill", "infinity"]
ChildType: TypeAlias = Literal["worker", "supervisor"]
Strategy: TypeAlias = Literal["one_for_one", "one_for_all", "rest_for_one"]

_RESTARTS = ("permanent", "transient", "temporary")
_TYPES = ("worker", "supervisor")
_STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")


@dataclass(frozen=True)
class ChildSpec:
    """How to start, restart and stop one child.

    ``start`` is ``(function, args)``: ``function(*args)`` (plain or async)
    must return the pid of a new process linked to the caller — the
    supervisor — (``gen_server.start_link`` and ``pybeam.spawn_link`` do), or
    None to say it started nothing (OTP's ``ignore``). ``shutdown`` is
    seconds, ``"brutal_kill"`` or ``"infinity"``.
    """

    id: Any
    start: tuple[Callable[..., Any], tuple[Any, ...]]
    restart: Restart = "permanent"
    shutdown: Shutdown = 5.0
    type: ChildType = "worker"

    def __post_init__(self) -> None:
        start = self.start
        if not (type(start) is tuple and len(start) == 2 and callable(start[0]) and type(start[1]) is tuple):
            raise BadArg(f"child {self.id!r}: start must be (callable, args_tuple), got {start!r}")
        if self.restart not in _RESTARTS:
            raise BadArg(f"child {self.id!r}: restart must be one of {_RESTARTS}, got {self.restart!r}")
        if self.type not in _TYPES:
            raise BadArg(f"child {self.id!r}: type must be one of {_TYPES}, got {self.type!r}")
        sd = self.shutdown
        if sd not in ("brutal_kill", "infinity") and not (
            isinstance(sd, int | float) and not isinstance(sd, bool) and sd >= 0
        ):
            raise BadArg(
                f"child {self.id!r}: shutdown must be seconds >= 0, 'brutal_kill' or 'infinity', got {sd!r}"
            )


class ChildInfo(NamedTuple):
    """One entry of :func:`which_children`: ``pid`` is None when not running."""

    id: Any
    pid: Pid | None
    type: ChildType


class SupervisorError(PybeamError):
    """A supervisor refused a request; ``reason`` says why (OTP's ``{error, Reason}``),
    e.g. ``"running"``, ``"already_present"``, ``("already_started", pid)``, or
    the reason a child failed to start."""

    def __init__(self, reason: Any, message: str | None = None) -> None:
        super().__init__(message or f"supervisor error: {reason!r}")
        self.reason = reason


class ChildNotFound(SupervisorError, LookupError):
    """The supervisor has no such child (``not_found``)."""

    def __init__(self, child: Any) -> None:
        super().__init__("not_found", f"no child {child!r} (not_found)")
        self.child = child


# -- child specs ----------------------------------------------------------------


def process_spec(
    fn: Callable[..., Any],
    *args: Any,
    id: Any = None,
    restart: Restart = "permanent",
    shutdown: Shutdown = 5.0,
) -> ChildSpec:
    """A spec for a plain process ``fn(*args)`` started with ``spawn_link``.

    ``id`` defaults to the function's name. A process that does not trap
    exits is stopped at once by the ``shutdown`` exit signal.
    """
    if id is None:
        id = getattr(fn, "__qualname__", repr(fn))
    return ChildSpec(id, (kernel.spawn_link, (fn, *args)), restart, shutdown, "worker")


def server_spec(
    server: type[GenServer] | GenServer,
    arg: Any = None,
    *,
    id: Any = None,
    name: Name = None,
    restart: Restart = "permanent",
    shutdown: Shutdown = 5.0,
    timeout: float | None = gen_server.DEFAULT_TIMEOUT,
) -> ChildSpec:
    """A spec for a GenServer started with ``gen_server.start_link(server, arg,
    name=name)``; ``id`` defaults to the name, else the class name.

    Also ``MyServer.child_spec(arg, ...)``.
    """
    if id is None:
        cls = server if isinstance(server, type) else type(server)
        id = name if name is not None else cls.__qualname__
    start = functools.partial(gen_server.start_link, name=name, timeout=timeout)
    return ChildSpec(id, (start, (server, arg)), restart, shutdown, "worker")


def supervisor_spec(
    children: Sequence[ChildSpec],
    *,
    id: Any = None,
    strategy: Strategy = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5.0,
    name: Name = None,
    restart: Restart = "permanent",
    shutdown: Shutdown = "infinity",
) -> ChildSpec:
    """A spec for a nested supervisor of ``children`` (type ``supervisor``,
    shutdown ``infinity``, as OTP's defaults for supervisors)."""
    _check_flags(children, strategy, max_restarts, max_seconds)
    if id is None:
        id = name if name is not None else "supervisor"
    start = functools.partial(
        start_link, strategy=strategy, max_restarts=max_restarts, max_seconds=max_seconds, name=name
    )
    return ChildSpec(id, (start, (tuple(children),)), restart, shutdown, "supervisor")


# -- what both kinds of supervisor do ---------------------------------------------


async def _start_child(spec: ChildSpec) -> tuple[bool, Any]:
    """Run the spec's start function: ``(True, pid_or_None)`` or ``(False, reason)``."""
    fn, args = spec.start
    try:
        pid = fn(*args)
        if inspect.isawaitable(pid):
            pid = await pid
    except gen_server.StartIgnored:
        return True, None
    except gen_server.StartError as e:
        return False, e.reason
    except Exception as e:
        return False, Crash.from_exception(e)
    if pid is None or type(pid) is Pid:
        return True, pid
    return False, ("bad_start_return", pid)


async def _shutdown(children: Sequence[tuple[Pid, Shutdown]]) -> None:
    """Stop children as OTP does, all at once: exit ``shutdown`` (``kill``
    for brutal_kill), then ``kill`` whoever is still alive at its deadline.

    Each child's link EXIT is consumed, so the caller does not take it for a
    crash.
    """
    loop = asyncio.get_running_loop()
    pending: dict[Ref, tuple[Pid, float | None, Shutdown]] = {}
    for pid, shutdown in children:
        # Monitor first: a child that is already dead answers noproc at once.
        ref = kernel.monitor(pid)
        if shutdown == "brutal_kill":
            kernel.exit(pid, "kill")
            deadline = None
        else:
            kernel.exit(pid, "shutdown")
            deadline = None if shutdown == "infinity" else loop.time() + shutdown
        pending[ref] = (pid, deadline, shutdown)

    def down(m: Any) -> bool:
        return type(m) is tuple and len(m) == 5 and m[0] == "DOWN" and type(m[1]) is Ref and m[1] in pending

    while pending:
        deadlines = [d for _, d, _ in pending.values() if d is not None]
        first = min(deadlines) if deadlines else None
        timeout = None if first is None else max(first - loop.time(), 0.0)
        msg = await kernel.receive(down, timeout=timeout, default=None)
        if msg is None:
            assert first is not None
            for ref, (pid, deadline, shutdown) in list(pending.items()):
                if deadline is not None and deadline <= first:
                    logger.warning("child %r did not stop within %ss of shutdown: killing it", pid, shutdown)
                    kernel.exit(pid, "kill")
                    pending[ref] = (pid, None, shutdown)
            continue
        pid = pending.pop(msg[1])[0]
        kernel.unlink(pid)
        await kernel.receive(("EXIT", pid, ANY), timeout=0, default=None)


class _Intensity:
    """OTP's restart intensity: at most ``max_restarts`` in ``max_seconds``."""

    __slots__ = ("max_restarts", "max_seconds", "restarts")

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.restarts: deque[float] = deque()

    def add(self) -> bool:
        """Count one restart; False if that makes one too many."""
        now = asyncio.get_running_loop().time()
        restarts = self.restarts
        restarts.append(now)
        while now - restarts[0] > self.max_seconds:
            restarts.popleft()
        return len(restarts) <= self.max_restarts


def _label(name: Name) -> str:
    return f"{name!r} ({kernel.self()!r})" if name is not None else repr(kernel.self())


def _check_flags(children: Sequence[ChildSpec], strategy: str, max_restarts: int, max_seconds: float) -> None:
    if strategy not in _STRATEGIES:
        raise BadArg(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
    _check_intensity(max_restarts, max_seconds)
    seen: list[Any] = []
    for spec in children:
        if not isinstance(spec, ChildSpec):
            raise BadArg(f"not a ChildSpec: {spec!r}")
        if spec.id in seen:
            raise BadArg(f"two children have the id {spec.id!r}")
        seen.append(spec.id)


def _check_intensity(max_restarts: int, max_seconds: float) -> None:
    if type(max_restarts) is not int or max_restarts < 0:
        raise BadArg(f"max_restarts must be an int >= 0, got {max_restarts!r}")
    if not isinstance(max_seconds, int | float) or max_seconds <= 0:
        raise BadArg(f"max_seconds must be > 0, got {max_seconds!r}")


async def _request(sup: ServerRef, request: Any, timeout: float | None, child: Any = None) -> Any:
    status, value = await gen_server.call(sup, request, timeout)
    if status == "ok":
        return value
    if value == "not_found":
        raise ChildNotFound(child)
    raise SupervisorError(value)


# -- the supervisor process ---------------------------------------------------------


@dataclass(eq=False)
class _Child:
    spec: ChildSpec
    pid: Pid | None = None
    #: A restart failed; a "$try_again_restart" cast to ourselves is on its way.
    retry: bool = False


@dataclass(eq=False)
class _State:
    name: Name
    strategy: Strategy
    intensity: _Intensity
    children: list[_Child]

    def find(self, id: Any) -> _Child | None:
        return next((c for c in self.children if c.spec.id == id), None)


class _Supervisor(GenServer):
    async def init(self, arg: Any) -> Any:
        specs, strategy, max_restarts, max_seconds, name = arg
        kernel.trap_exit(True)
        state = _State(name, strategy, _Intensity(max_restarts, max_seconds), [])
        for spec in specs:
            ok, value = await _start_child(spec)
            if not ok:
                logger.error(
                    "Supervisor %s: child %s failed to start: %s", _label(name), short(spec.id), short(value)
                )
                await self.terminate("shutdown", state)  # the started ones, last first
                return ("stop", ("shutdown", ("failed_to_start_child", spec.id, value)))
            if value is None and spec.restart == "temporary":
                continue  # an ignored temporary child is forgotten, as in OTP
            state.children.append(_Child(spec, value))
        return state

    async def handle_call(self, request: Any, from_: tuple[Pid, Ref], state: _State) -> Any:
        match request:
            case "which_children":
                result: Any = ("ok", [(c.spec.id, c.pid, c.spec.type) for c in state.children])
            case "count_children":
                result = ("ok", _count([(c.pid, c.spec) for c in state.children]))
            case ("start_child", ChildSpec() as spec):
                result = await self.start_new(state, spec)
            case ("terminate_child", id):
                result = await self.terminate_child(state, id)
            case ("restart_child", id):
                result = await self.restart_child(state, id)
            case ("delete_child", id):
                result = self.delete_child(state, id)
            case _:
                result = ("error", ("badcall", request))
        return ("reply", result, state)

    async def start_new(self, state: _State, spec: ChildSpec) -> tuple[str, Any]:
        child = state.find(spec.id)
        if child is not None:
            return ("error", ("already_started", child.pid) if child.pid else "already_present")
        ok, value = await _start_child(spec)
        if not ok:
            return ("error", value)  # the spec is not kept, as in OTP
        if value is not None or spec.restart != "temporary":
            state.children.append(_Child(spec, value))
        return ("ok", value)

    async def terminate_child(self, state: _State, id: Any) -> tuple[str, Any]:
        child = state.find(id)
        if child is None:
            return ("error", "not_found")
        if child.pid is not None:
            await _shutdown([(child.pid, child.spec.shutdown)])
        child.pid = None
        child.retry = False
        if child.spec.restart == "temporary":
            state.children.remove(child)
        return ("ok", None)

    async def restart_child(self, state: _State, id: Any) -> tuple[str, Any]:
        child = state.find(id)
        if child is None:
            return ("error", "not_found")
        if child.pid is not None:
            return ("error", "running")
        ok, value = await _start_child(child.spec)
        if not ok:
            return ("error", value)
        child.pid = value
        child.retry = False
        return ("ok", value)

    def delete_child(self, state: _State, id: Any) -> tuple[str, Any]:
        child = state.find(id)
        if child is None:
            return ("error", "not_found")
        if child.pid is not None:
            return ("error", "running")
        state.children.remove(child)
        return ("ok", None)

    async def handle_cast(self, request: Any, state: _State) -> Any:
        match request:
            case ("$try_again_restart", id):
                child = state.find(id)
                if child is not None and child.retry and child.pid is None:
                    return await self.restart(state, child)
        return ("noreply", state)

    async def handle_info(self, msg: Any, state: _State) -> Any:
        match msg:
            case ("EXIT", Pid() as pid, reason):
                child = next((c for c in state.children if c.pid == pid), None)
                if child is not None:
                    return await self.child_exited(state, child, reason)
                return ("noreply", state)  # not a child (any more): as OTP, ignore
        logger.warning("Supervisor %s received an unexpected message: %s", _label(state.name), short(msg))
        return ("noreply", state)

    async def child_exited(self, state: _State, child: _Child, reason: Any) -> Any:
        child.pid = None
        restart = child.spec.restart
        again = restart == "permanent" or (restart == "transient" and not is_normal_exit(reason))
        if again or not is_normal_exit(reason):
            logger.error(
                "Supervisor %s: child %s terminated with reason %s%s",
                _label(state.name),
                short(child.spec.id),
                short(reason),
                "; restarting" if again else "",
            )
        if again:
            return await self.restart(state, child)
        if restart == "temporary":
            state.children.remove(child)
        return ("noreply", state)

    async def restart(self, state: _State, child: _Child) -> Any:
        """Restart ``child`` (gone already) and, by the strategy, its siblings."""
        if not state.intensity.add():
            logger.error(
                "Supervisor %s reached its maximum restart intensity (%d restarts in %ss): shutting down",
                _label(state.name),
                state.intensity.max_restarts,
                state.intensity.max_seconds,
            )
            return ("stop", "shutdown", state)
        children = state.children
        if state.strategy == "one_for_one":
            group = [child]
        elif state.strategy == "one_for_all":
            group = list(children)
        else:
            group = children[children.index(child) :]
        for c in reversed(group):
            if c.pid is not None:
                await _shutdown([(c.pid, c.spec.shutdown)])
                c.pid = None
                if c.spec.restart == "temporary":
                    children.remove(c)  # never restarted, so forgotten
        for c in group:
            if c not in children:
                continue
            ok, value = await _start_child(c.spec)
            if not ok:
                # As OTP: try again later, through the mailbox, each attempt
                # counting towards the intensity, so that a child that cannot
                # start ends the supervisor rather than loop here.
                logger.error(
                    "Supervisor %s: child %s failed to restart: %s",
                    _label(state.name),
                    short(c.spec.id),
                    short(value),
                )
                c.retry = True
                gen_server.cast(kernel.self(), ("$try_again_restart", c.spec.id))
                break
            c.pid = value
            c.retry = False
        return ("noreply", state)

    async def terminate(self, reason: Any, state: _State) -> None:
        # One at a time, last started first: later children may depend on earlier ones.
        for c in reversed(state.children):
            if c.pid is not None:
                await _shutdown([(c.pid, c.spec.shutdown)])
                c.pid = None


def _count(children: Sequence[tuple[Pid | None, ChildSpec]]) -> dict[str, int]:
    return {
        "specs": len(children),
        "active": sum(1 for pid, _ in children if pid is not None),
        "supervisors": sum(1 for _, spec in children if spec.type == "supervisor"),
        "workers": sum(1 for _, spec in children if spec.type == "worker"),
    }


# -- the API ----------------------------------------------------------------------


async def start_link(
    children: Sequence[ChildSpec],
    *,
    strategy: Strategy = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5.0,
    name: Name = None,
    timeout: float | None = None,
) -> Pid:
    """Start a supervisor linked to the caller, with ``children`` started in
    order; returns its pid once they all run.

    If a child fails to start, those already started are stopped (last
    first) and this raises :class:`~pybeam.gen_server.StartError` with reason
    ``("shutdown", ("failed_to_start_child", id, reason))``.
    """
    _check_flags(children, strategy, max_restarts, max_seconds)
    arg = (list(children), strategy, max_restarts, max_seconds, name)
    return await gen_server.start_link(_Supervisor, arg, name=name, timeout=timeout)


async def start(
    children: Sequence[ChildSpec],
    *,
    strategy: Strategy = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5.0,
    name: Name = None,
    timeout: float | None = None,
) -> Pid:
    """Like :func:`start_link`, without the link."""
    _check_flags(children, strategy, max_restarts, max_seconds)
    arg = (list(children), strategy, max_restarts, max_seconds, name)
    return await gen_server.start(_Supervisor, arg, name=name, timeout=timeout)


async def stop(sup: ServerRef, reason: Any = "normal", timeout: float | None = None) -> None:
    """Stop the supervisor: its children are stopped first, last started first."""
    await gen_server.stop(sup, reason, timeout)


async def which_children(sup: ServerRef, timeout: float | None = None) -> list[ChildInfo]:
    """Every child, in start order: ``ChildInfo(id, pid or None, type)``."""
    children = await _request(sup, "which_children", timeout)
    return [ChildInfo(*c) for c in children]


async def count_children(sup: ServerRef, timeout: float | None = None) -> dict[str, int]:
    """``{"specs", "active", "supervisors", "workers"}``: how many of each."""
    result: dict[str, int] = await _request(sup, "count_children", timeout)
    return result


async def start_child(sup: ServerRef, spec: ChildSpec, timeout: float | None = None) -> Pid | None:
    """Add a child (started last) and return its pid (None if it ignored the start).

    Raises :class:`SupervisorError`: reason ``("already_started", pid)`` or
    ``"already_present"`` if the id is taken, else why the child did not
    start (its spec is then not kept).
    """
    result: Pid | None = await _request(sup, ("start_child", spec), timeout, spec.id)
    return result


async def terminate_child(sup: ServerRef, id: Any, timeout: float | None = None) -> None:
    """Stop child ``id`` by its shutdown; its spec is kept (unless temporary),
    for :func:`restart_child` or :func:`delete_child`."""
    await _request(sup, ("terminate_child", id), timeout, id)


async def restart_child(sup: ServerRef, id: Any, timeout: float | None = None) -> Pid | None:
    """Start again a child stopped with :func:`terminate_child`; its pid.

    Raises :class:`SupervisorError` with reason ``"running"`` if it runs.
    """
    result: Pid | None = await _request(sup, ("restart_child", id), timeout, id)
    return result


async def delete_child(sup: ServerRef, id: Any, timeout: float | None = None) -> None:
    """Forget the spec of a stopped child (reason ``"running"`` if it runs)."""
    await _request(sup, ("delete_child", id), timeout, id)

"""Dynamic supervisors: Elixir's ``DynamicSupervisor``.

A supervisor that starts with no children and takes them one at a time with
:func:`start_child`, each by its own :class:`~pybeam.supervisor.ChildSpec`;
children are named by pid. Strategy is ``one_for_one`` only; restart types,
restart intensity and shutdown work as in :mod:`pybeam.supervisor`. On
termination every child is sent its shutdown signal at once (their order has
no meaning), as Elixir does.

.. code-block:: python

    sup = await dynamic_supervisor.start_link(max_children=100)
    pid = await dynamic_supervisor.start_child(sup, Session.child_spec(user))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from . import gen_server, kernel
from .errors import BadArg
from .gen_server import GenServer, Name, ServerRef, is_normal_exit
from .logtext import short
from .supervisor import (
    ChildInfo,
    ChildNotFound,
    ChildSpec,
    SupervisorError,
    _check_intensity,
    _count,
    _Intensity,
    _label,
    _request,
    _shutdown,
    _start_child,
)
from .terms import Pid, Ref

__all__ = [
    "ChildInfo",
    "ChildNotFound",
    "MaxChildren",
    "SupervisorError",
    "count_children",
    "start",
    "start_child",
    "start_link",
    "stop",
    "terminate_child",
    "which_children",
]

logger = logging.getLogger("pybeam")


class MaxChildren(SupervisorError):
    """The supervisor already has ``max_children`` children (``max_children``)."""

    def __init__(self) -> None:
        super().__init__("max_children", "the dynamic supervisor has reached max_children")


@dataclass(eq=False)
class _State:
    name: Name
    intensity: _Intensity
    max_children: int | None
    #: The running children, in start order.
    children: dict[Pid, ChildSpec] = field(default_factory=dict)
    #: Children whose restart failed, to be tried again (they count as children).
    restarting: dict[Ref, ChildSpec] = field(default_factory=dict)


class _DynamicSupervisor(GenServer):
    def init(self, arg: Any) -> Any:
        max_restarts, max_seconds, max_children, name = arg
        kernel.trap_exit(True)
        return _State(name, _Intensity(max_restarts, max_seconds), max_children)

    async def handle_call(self, request: Any, from_: tuple[Pid, Ref], state: _State) -> Any:
        match request:
            case ("start_child", ChildSpec() as spec):
                result: Any = await self.start_new(state, spec)
            case ("terminate_child", pid):
                stopped = state.children.pop(pid, None) if type(pid) is Pid else None
                if stopped is None:
                    result = ("error", "not_found")
                else:
                    await _shutdown([(pid, stopped.shutdown)])
                    result = ("ok", None)
            case "which_children":
                result = ("ok", [(spec.id, pid, spec.type) for pid, spec in state.children.items()])
            case "count_children":
                counted: list[tuple[Pid | None, ChildSpec]] = list(state.children.items())
                counted += [(None, spec) for spec in state.restarting.values()]
                result = ("ok", _count(counted))
            case _:
                result = ("error", ("badcall", request))
        return ("reply", result, state)

    async def start_new(self, state: _State, spec: ChildSpec) -> tuple[str, Any]:
        if (
            state.max_children is not None
            and len(state.children) + len(state.restarting) >= state.max_children
        ):
            return ("error", "max_children")
        ok, value = await _start_child(spec)
        if not ok:
            return ("error", value)
        if value is not None:
            state.children[value] = spec
        return ("ok", value)

    async def handle_cast(self, request: Any, state: _State) -> Any:
        match request:
            case ("$try_again_restart", Ref() as ref) if ref in state.restarting:
                return await self.restart(state, state.restarting.pop(ref))
        return ("noreply", state)

    async def handle_info(self, msg: Any, state: _State) -> Any:
        match msg:
            case ("EXIT", Pid() as pid, reason):
                spec = state.children.pop(pid, None)
                if spec is None:
                    return ("noreply", state)
                again = spec.restart == "permanent" or (
                    spec.restart == "transient" and not is_normal_exit(reason)
                )
                if again or not is_normal_exit(reason):
                    logger.error(
                        "DynamicSupervisor %s: child %s (%r) terminated with reason %s%s",
                        _label(state.name),
                        short(spec.id),
                        pid,
                        short(reason),
                        "; restarting" if again else "",
                    )
                if again:
                    return await self.restart(state, spec)
                return ("noreply", state)
        logger.warning(
            "DynamicSupervisor %s received an unexpected message: %s", _label(state.name), short(msg)
        )
        return ("noreply", state)

    async def restart(self, state: _State, spec: ChildSpec) -> Any:
        if not state.intensity.add():
            logger.error(
                "DynamicSupervisor %s reached its maximum restart intensity (%d restarts in %ss): "
                "shutting down",
                _label(state.name),
                state.intensity.max_restarts,
                state.intensity.max_seconds,
            )
            return ("stop", "shutdown", state)
        ok, value = await _start_child(spec)
        if not ok:
            # Try again through the mailbox, each attempt counting towards the
            # intensity (see supervisor.restart).
            logger.error(
                "DynamicSupervisor %s: child %s failed to restart: %s",
                _label(state.name),
                short(spec.id),
                short(value),
            )
            ref = kernel.make_ref()
            state.restarting[ref] = spec
            gen_server.cast(kernel.self(), ("$try_again_restart", ref))
        elif value is not None:
            state.children[value] = spec
        return ("noreply", state)

    async def terminate(self, reason: Any, state: _State) -> None:
        await _shutdown([(pid, spec.shutdown) for pid, spec in state.children.items()])
        state.children.clear()


def _check(max_restarts: int, max_seconds: float, max_children: int | None) -> None:
    _check_intensity(max_restarts, max_seconds)
    if max_children is not None and (type(max_children) is not int or max_children < 0):
        raise BadArg(f"max_children must be None or an int >= 0, got {max_children!r}")


async def start_link(
    *,
    max_restarts: int = 3,
    max_seconds: float = 5.0,
    max_children: int | None = None,
    name: Name = None,
    timeout: float | None = None,
) -> Pid:
    """Start a dynamic supervisor, with no children, linked to the caller."""
    _check(max_restarts, max_seconds, max_children)
    arg = (max_restarts, max_seconds, max_children, name)
    return await gen_server.start_link(_DynamicSupervisor, arg, name=name, timeout=timeout)


async def start(
    *,
    max_restarts: int = 3,
    max_seconds: float = 5.0,
    max_children: int | None = None,
    name: Name = None,
    timeout: float | None = None,
) -> Pid:
    """Like :func:`start_link`, without the link."""
    _check(max_restarts, max_seconds, max_children)
    arg = (max_restarts, max_seconds, max_children, name)
    return await gen_server.start(_DynamicSupervisor, arg, name=name, timeout=timeout)


async def stop(sup: ServerRef, reason: Any = "normal", timeout: float | None = None) -> None:
    """Stop the supervisor and, first, all its children."""
    await gen_server.stop(sup, reason, timeout)


async def start_child(sup: ServerRef, spec: ChildSpec, timeout: float | None = None) -> Pid | None:
    """Start a child by ``spec`` and return its pid (None if it ignored the start).

    Raises :class:`MaxChildren` when the supervisor is full, and
    :class:`SupervisorError` with the reason when the child fails to start.
    """
    try:
        result: Pid | None = await _request(sup, ("start_child", spec), timeout, spec.id)
    except SupervisorError as e:
        if e.reason == "max_children":
            raise MaxChildren() from None
        raise
    return result


async def terminate_child(sup: ServerRef, pid: Pid, timeout: float | None = None) -> None:
    """Stop child ``pid`` by its shutdown and forget it; :class:`ChildNotFound` if not a child."""
    await _request(sup, ("terminate_child", pid), timeout, pid)


async def which_children(sup: ServerRef, timeout: float | None = None) -> list[ChildInfo]:
    """The running children: ``ChildInfo(spec id, pid, type)``."""
    children = await _request(sup, "which_children", timeout)
    return [ChildInfo(*c) for c in children]


async def count_children(sup: ServerRef, timeout: float | None = None) -> dict[str, int]:
    """``{"specs", "active", "supervisors", "workers"}`` (children being
    restarted count as specs, not active)."""
    result: dict[str, int] = await _request(sup, "count_children", timeout)
    return result

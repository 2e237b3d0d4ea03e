"""Applications: one's code started when a node boots, stopped when it stops.

An application is a function, usually a module's ``start()``, that starts a
supervision tree and returns the pid of its top supervisor (OTP's
``Mod:start/2`` returning ``{ok, Pid}``). It is started by
``pybeam node --app mod[:fn]``, ``LocalCluster(..., apps=[...])``,
``pybeam.run(main, apps=[...])`` or :func:`start`.

Each application gets an *application master*, a process of the node that
calls the function and stays alive: a supervisor the function starts with
``start_link`` is linked to the master, not to a short-lived caller (the trap
``rpc.call(node, "mod:start_link_sup")`` falls into, see docs/otp.md). When the
node stops (``init:stop``), the applications stop in reverse start order: each
master sends its top supervisor the exit signal ``shutdown`` (its parent's, so
the supervisor stops its children last first, each within its ``shutdown``
time) and waits for it to exit.

An application whose top supervisor exits on its own is handled by its type,
as OTP's:

- ``temporary`` (the default): logged, and gone; the node goes on;
- ``permanent``: logged, and the node stops (``init:stop``, in the background:
  the other applications in reverse order, then the rest); :func:`stopped_by`
  then names the application and its reason, and ``pybeam node`` exits 1;
- ``transient``: as ``temporary`` if it exited with reason ``normal``, else
  as ``permanent``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import weakref
from collections.abc import Callable
from typing import Any, Literal

from . import kernel
from .errors import Exit, PybeamError
from .node import APPLICATION_STOP, Node, current_node
from .pattern import ANY
from .terms import Pid

__all__ = ["TYPES", "AppType", "ApplicationError", "parse", "start", "stopped_by", "which_applications"]

logger = logging.getLogger("pybeam")

AppSpec = str | Callable[[], Any]
AppType = Literal["temporary", "transient", "permanent"]
#: The application types, as OTP's.
TYPES: tuple[AppType, ...] = ("temporary", "transient", "permanent")

# Nodes a permanent (or transient) application's exit stopped, with what stopped them.
_stopped_by: weakref.WeakKeyDictionary[Node, tuple[str, str, Any]] = weakref.WeakKeyDictionary()


class ApplicationError(PybeamError):
    """An application did not start: its function raised, or did not return a pid."""


def parse(spec: str) -> tuple[str, str]:
    """``"mod[:fn]"`` as ``(module, function)``; the function defaults to ``start``."""
    module, sep, fn = spec.partition(":")
    fn = fn if sep else "start"
    if not module or not fn or not fn.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
        raise ApplicationError(f"an application is 'module[:function]', got {spec!r}")
    return module, fn


def _resolve(app: AppSpec) -> tuple[str, Callable[[], Any]]:
    if callable(app):
        return f"{app.__module__}:{app.__qualname__}", app
    module, fn = parse(app)
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ApplicationError(f"application {app}: cannot import {module}: {e}") from None
    func = getattr(mod, fn, None)
    if not callable(func):
        raise ApplicationError(f"application {app}: {module} has no function {fn}")
    return app if ":" in app else f"{app}:start", func


async def _master(name: str, fn: Callable[[], Any], started: asyncio.Future[Pid], app_type: AppType) -> None:
    # The application master: the top supervisor's parent until the node stops.
    kernel.trap_exit(True)
    try:
        top = fn()
        if inspect.isawaitable(top):
            top = await top
    except (Exception, Exit) as e:
        why = e.reason if isinstance(e, Exit) else f"{type(e).__name__}: {e}"
        if not started.done():
            started.set_exception(ApplicationError(f"application {name} did not start: {why}"))
        return
    if type(top) is not Pid:
        if not started.done():
            started.set_exception(
                ApplicationError(f"application {name} did not start: it returned {top!r}, not a pid")
            )
        return
    # Linked whether or not the function used start_link, so the master hears
    # of the tree's death; a dead pid answers with an EXIT noproc at once.
    kernel.link(top)
    if not started.done():
        started.set_result(top)
    logger.info("application %s started: top supervisor %r", name, top)
    while True:
        msg = await kernel.receive(ANY)
        if msg == APPLICATION_STOP:
            kernel.exit(top, "shutdown")
            await kernel.receive(("EXIT", top, ANY))
            logger.info("application %s stopped", name)
            return
        if type(msg) is tuple and len(msg) == 3 and msg[0] == "EXIT" and msg[1] == top:
            reason = msg[2]
            if app_type == "temporary" or (app_type == "transient" and reason == "normal"):
                logger.warning("application %s exited: %r (type: %s)", name, reason, app_type)
                return
            logger.error("application %s exited: %r (type: %s): stopping the node", name, reason, app_type)
            node = current_node()
            _stopped_by.setdefault(node, ("application_terminated", name, reason))
            await node.stop()  # from a process: it stops in the background, this master with it
            return


async def start(app: AppSpec, *, node: Node | None = None, type: AppType = "temporary") -> Pid:
    """Start application ``app`` (``"mod[:fn]"`` or a function) on ``node`` (default:
    the current one); returns its top supervisor's pid.

    ``type`` (``temporary``, ``transient`` or ``permanent``, as OTP's) says
    what its top supervisor exiting on its own does: see the module's doc.
    Raises :class:`ApplicationError` if the function raises or does not return
    a pid. The node stops it, after the applications started later, when it stops.
    """
    if type not in TYPES:
        raise ApplicationError(f"an application's type is one of {', '.join(TYPES)}, got {type!r}")
    target = node if node is not None else current_node()
    name, fn = _resolve(app)
    started: asyncio.Future[Pid] = asyncio.get_running_loop().create_future()
    pid, _ = target.spawn(_master, (name, fn, started, type))
    target.add_application(name, pid)
    proc = target.process(pid)
    task = proc.task if proc is not None else None
    if task is not None:
        # A master killed before its function returned leaves the future unset.
        def ended(_: asyncio.Task[Any]) -> None:
            if not started.done():
                started.set_exception(
                    ApplicationError(f"application {name} did not start: its master exited")
                )

        task.add_done_callback(ended)
    return await started


def which_applications(node: Node | None = None) -> list[str]:
    """The running applications of ``node``, in start order."""
    target = node if node is not None else current_node()
    return target.applications()


def stopped_by(node: Node | None = None) -> tuple[str, str, Any] | None:
    """``("application_terminated", name, reason)`` if a permanent (or
    transient) application's exit stopped ``node`` (default: the current one), else None."""
    return _stopped_by.get(node if node is not None else current_node())

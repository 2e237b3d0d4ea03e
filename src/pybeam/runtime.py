"""Running a program as a node: ``pybeam.run(main)``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from . import application
from .errors import Exit
from .node import Node
from .process import _current

__all__ = ["new_event_loop", "run"]

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when it is installed (it is about twice as
    fast for pybeam's message passing), asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(
    main: Callable[..., Coroutine[Any, Any, T]],
    *args: Any,
    node: Node | None = None,
    apps: Sequence[application.AppSpec] = (),
) -> T:
    """Run ``main(*args)`` on a fresh event loop, inside a node, and return its result.

    ``main`` acts as a process of that node (it can ``receive``, ``link``...).
    ``apps`` (``"mod[:fn]"`` or functions, see :mod:`pybeam.application`) are
    started in order before ``main``. When ``main`` returns (or raises, or
    Ctrl-C cancels it) the node stops as ``init:stop`` does: the applications
    in reverse order, each supervision tree from the top, then every process
    still running. If ``main``'s process is killed (an exit signal through a
    link, say), this raises :class:`~pybeam.Exit` with its exit reason; if a
    permanent application's exit stops the node, ``Exit(("application_terminated",
    name, reason))``.
    """

    async def _main() -> T:
        async with node if node is not None else Node() as running:
            for app in apps:
                await application.start(app, node=running)
            # A permanent application's exit stops the node: main ends too,
            # as the runtime halts.
            me = asyncio.current_task()
            assert me is not None
            watcher = asyncio.ensure_future(_cancel_when_stopped(running, me))
            try:
                return await _as_process(main(*args))
            except (asyncio.CancelledError, Exit):
                cause = application.stopped_by(running)
                if not watcher.done() or cause is None:
                    raise
                me.uncancel()
                raise Exit(cause) from None
            finally:
                watcher.cancel()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_main())


async def _cancel_when_stopped(node: Node, main: asyncio.Task[Any]) -> None:
    await node.wait_stopped()
    if application.stopped_by(node) is not None:
        main.cancel()


async def _as_process(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``main``'s coroutine; if its process is killed meanwhile (which
    cancels it), raise ``Exit(reason)`` rather than a bare ``CancelledError``."""
    try:
        return await coro
    except asyncio.CancelledError:
        proc = _current.get()
        if proc is not None and not proc.alive:
            raise Exit(proc.reason) from None
        raise

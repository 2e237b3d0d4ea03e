"""Running a program as a node: ``pybeam.run(main)``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

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


def run(main: Callable[..., Coroutine[Any, Any, T]], *args: Any, node: Node | None = None) -> T:
    """Run ``main(*args)`` on a fresh event loop, inside a node, and return its result.

    ``main`` acts as a process of that node (it can ``receive``, ``link``...).
    When it returns, every process still running on the node is shut down.
    If ``main``'s process is killed (an exit signal through a link, say),
    this raises :class:`~pybeam.Exit` with its exit reason.
    """

    async def _main() -> T:
        async with node if node is not None else Node():
            return await _as_process(main(*args))

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_main())


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

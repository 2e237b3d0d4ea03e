"""Run part of a caller's work in a short-lived process of its own.

What an API sets up for a call (locks granted to it, monitors, requests whose
replies are still on their way) belongs to the process that asked. Done by an
*errand* process instead, a cancelled caller only has to end the errand: every
server that monitors the errand (as ``global``'s lock servers do) cleans up
as for any process that dies, and replies still on their way go to a dead
pid, not into the caller's mailbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .errors import PybeamError
from .node import Node, current_node
from .terms import KILLED

__all__ = ["run"]

T = TypeVar("T")


async def run(fn: Callable[..., Awaitable[T]], *args: Any, node: Node | None = None) -> T:
    """``await fn(*args)`` in a new process of ``node`` (default: the current
    node); its result or exception is the caller's. Cancelled, the caller
    kills the errand.

    Also for code that needs a process (``rpc.call``, ``gen_server.call``)
    without becoming one: a pytest fixture, or a task of a library such as an
    HTTP server's request handlers, which would otherwise act as the process
    that started them.
    """
    node = node or current_node()
    result: asyncio.Future[T] = asyncio.get_running_loop().create_future()

    async def errand() -> None:
        try:
            value = await fn(*args)
        except Exception as e:
            # The caller's to handle, not a crash of the errand to log.
            if not result.done():
                result.set_exception(e)
            return
        if not result.done():
            result.set_result(value)

    def ended(task: asyncio.Task[Any]) -> None:
        if not result.done():
            result.set_exception(
                PybeamError(f"the process running {getattr(fn, '__qualname__', fn)!r} was killed")
            )

    pid, _ = node.spawn(errand)
    proc = node.process(pid)
    assert proc is not None and proc.task is not None
    proc.task.add_done_callback(ended)
    try:
        return await result
    except asyncio.CancelledError:
        proc = node.process(pid)
        if proc is not None:
            node.terminate(proc, KILLED)
        raise

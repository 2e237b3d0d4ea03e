"""Waiting for a distributed system to settle, in tests: :func:`eventually`."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

from ..errors import NodeDown

__all__ = ["eventually"]


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    *,
    every: float = 0.05,
    what: str = "",
    retry_on: tuple[type[BaseException], ...] = (NodeDown, TimeoutError),
) -> None:
    """Wait until ``check()`` (plain or async) is true; AssertionError after ``timeout`` s.

    A check that raises one of ``retry_on`` counts as "not yet": right after a
    partition heals, a node may not be reachable for a moment. The training's
    tests did the same ("retried every 200 ms, at most 10 retries").
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            last = None
        except retry_on as e:
            last = e
        if loop.time() > deadline:
            name = what or getattr(check, "__qualname__", repr(check))
            detail = f" (last error: {last!r})" if last is not None else ""
            raise AssertionError(f"not true within {timeout}s: {name}{detail}")
        await asyncio.sleep(every)

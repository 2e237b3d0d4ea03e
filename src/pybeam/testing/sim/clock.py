"""Virtual time for the parts of pybeam that read ``time.monotonic()`` directly.

The distribution measures quiet periods with ``time.monotonic()``
(``distribution/connection.py``: whether a tick is due; ``framing.py``: the
last write; ``net_kernel.py``: simultaneous-connect deadlines; ``guard.py``:
log rate limits). On a :class:`~pybeam.testing.sim.loop.VirtualLoop` that clock
does not move with the loop's, so an idle connection would never send a tick
and its peer would time it out. :func:`virtual_monotonic` swaps those
modules' ``time`` for a stand-in whose ``monotonic()`` is the running loop's
``time()`` — what asyncio's own loops use, so on a real loop nothing changes —
for the length of a simulation. (The lasting fix is for those modules to call
``loop.time()``; see docs/testing_failures.md.)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["virtual_monotonic"]


class _LoopClock:
    """The ``time`` module, except that ``monotonic()`` is the running loop's clock."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def monotonic() -> float:
        loop = asyncio._get_running_loop()
        return loop.time() if loop is not None else time.monotonic()


_CLOCK = _LoopClock()


@contextlib.contextmanager
def virtual_monotonic() -> Iterator[None]:
    """Within this block, pybeam's modules read the running loop's clock."""
    swapped = []
    for name, module in list(sys.modules.items()):
        if (name == "pybeam" or name.startswith("pybeam.")) and getattr(module, "time", None) is time:
            module.time = _CLOCK  # type: ignore[attr-defined]
            swapped.append(module)
    try:
        yield
    finally:
        for module in swapped:
            module.time = time  # type: ignore[attr-defined]

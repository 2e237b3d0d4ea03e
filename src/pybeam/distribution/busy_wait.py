"""Busy waiting: after traffic with a peer, keep polling rather than sleep.

An idle event loop blocks in ``epoll_wait`` until something arrives, and the
operating system then takes tens of microseconds to wake the thread: on an
idle machine that wake-up is most of a loopback round trip, on both sides.
BEAM's schedulers do not sleep the moment they run out of work: they spin for
a while first (the ``+sbwt`` emulator flag, ``medium`` by default), so that a
reply arriving soon is handled at once. This is pybeam's counterpart.

After each read from or write to a connection, the node's event loop keeps
polling without blocking (one cheap iteration at a time) until ``threshold``
seconds pass with no further traffic; then it sleeps as before. If the OS
took the core away meanwhile (the thread spent long off the CPU between two
polls), the machine is busy and polling would only take CPU from whoever has
work, the peer often: the loop sleeps at once, and polls for no traffic in
the next tenth of a second. (It does not call ``sched_yield``: a thread that
yields stays runnable and waits out another's whole time slice, where a
sleeping one woken by data gets the core back at once.) An idle node spends
nothing; a node in a conversation spends up to ``threshold`` of CPU per pause
in it. Heartbeats alone do not start a spin.

The threshold is ``busy_wait`` (seconds, or one of BEAM's level names) of
:class:`pybeam.Node`, ``--busy-wait`` of ``pybeam node``, or
``$PYBEAM_BUSY_WAIT``; ``0`` or ``"none"`` (the default) turns it off. Unlike
BEAM, off by default: it wins on a machine whose cores would otherwise sleep,
and beside CPU-bound work on the same cores it measured slower as often as
faster.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import os
import time
from typing import Final

__all__ = [
    "BACKOFF",
    "CONTENDED",
    "DEFAULT_BUSY_WAIT",
    "LEVELS",
    "BusyWait",
    "busy_wait_from_env",
    "parse_busy_wait",
]

#: BEAM's ``+sbwt`` level names, as the seconds of polling each means here.
LEVELS: Final = {
    "none": 0.0,
    "very_short": 0.000_025,
    "short": 0.000_1,
    "medium": 0.000_2,
    "long": 0.001,
    "very_long": 0.005,
}

#: Off. BEAM's default is ``medium``; here, beside CPU-bound work on the same
#: cores, polling measured slower as often as faster (see docs/distribution.md).
DEFAULT_BUSY_WAIT: Final = LEVELS["none"]

#: Off the CPU for longer than this between two polls: the OS gave the core
#: to another thread.
CONTENDED: Final = 0.000_05

#: After such a preemption, no polling for this long.
BACKOFF: Final = 0.1

#: Longer than this is not waiting for a reply any more: only burning a core.
_MAX_BUSY_WAIT: Final = 1.0

_now = time.monotonic
_cpu = time.thread_time


def parse_busy_wait(value: float | str) -> float:
    """Seconds of busy waiting from seconds or a level name (``"medium"``),
    as accepted by ``Node(busy_wait=...)``; raises ValueError for anything else."""
    if isinstance(value, str):
        level = LEVELS.get(value.strip().lower())
        if level is not None:
            return level
        try:
            value = float(value)
        except ValueError:
            names = ", ".join(LEVELS)
            raise ValueError(f"busy_wait must be seconds or one of {names}; got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"busy_wait must be seconds or a level name, got {value!r}")
    seconds = float(value)
    if not (math.isfinite(seconds) and 0 <= seconds <= _MAX_BUSY_WAIT):
        raise ValueError(f"busy_wait must be between 0 and {_MAX_BUSY_WAIT} seconds, got {value!r}")
    return seconds


def busy_wait_from_env() -> float:
    """The threshold ``$PYBEAM_BUSY_WAIT`` names, or :data:`DEFAULT_BUSY_WAIT`."""
    value = os.environ.get("PYBEAM_BUSY_WAIT")
    if value is None or not value.strip():
        return DEFAULT_BUSY_WAIT
    try:
        return parse_busy_wait(value)
    except ValueError as e:
        raise ValueError(f"$PYBEAM_BUSY_WAIT: {e}") from None


class BusyWait:
    """Keeps ``loop`` polling for ``threshold`` seconds after the last :meth:`poke`,
    unless the thread spends more than ``contended`` seconds off the CPU
    between two polls (the OS gave the core to another thread)."""

    __slots__ = (
        "_contended",
        "_context",
        "_cpu",
        "_loop",
        "_poked",
        "_quiet_until",
        "_since",
        "_stopped",
        "_wall",
        "preempted",
        "spinning",
        "spins",
        "threshold",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, threshold: float, contended: float = CONTENDED
    ) -> None:
        self._loop = loop
        self._contended = contended
        # The spin runs in a context of its own, not in that of the process
        # whose send poked it (which it would keep alive while it spins).
        self._context = contextvars.Context()
        self.threshold = threshold
        self._poked = False
        self._since = 0.0
        self._stopped = False
        #: Polling now (the loop does not block).
        self.spinning = False
        #: Loop iterations spent polling with nothing else to do, for observers.
        self.spins = 0
        #: Spins cut short because the OS gave the core to another thread.
        self.preempted = 0
        self._wall = 0.0
        self._cpu = 0.0
        self._quiet_until = 0.0

    def poke(self) -> None:
        """Traffic now: poll for the next ``threshold`` seconds at least."""
        self._poked = True
        if not self.spinning and self.threshold and not self._stopped:
            now = _now()
            if now < self._quiet_until:
                return  # preempted lately: the machine is busy
            self.spinning = True
            self._poked = False
            self._since = self._wall = now
            self._cpu = _cpu()
            self._loop.call_soon(self._spin, context=self._context)

    def _spin(self) -> None:
        # One call per loop iteration while spinning: the pending callback is
        # what makes the loop poll (timeout 0) instead of block.
        now = _now()
        cpu = _cpu()
        if self._poked:
            self._poked = False
            self._since = now
        elif now - self._since > self.threshold or self._stopped:
            self.spinning = False
            return
        elif (now - self._wall) - (cpu - self._cpu) > self._contended:
            # Since the last iteration this thread spent that long off the
            # CPU: the OS gave the core to another thread, so the machine is
            # busy and polling would take CPU from whoever has work (the
            # peer, often). Sleep, as if the threshold had passed: a sleeping
            # thread woken by data gets the core back at once.
            self.spinning = False
            self.preempted += 1
            # And for a while after: polling again at once would take the
            # same turns with the same threads.
            self._quiet_until = now + BACKOFF
            return
        self._wall = now
        self._cpu = cpu
        self.spins += 1
        self._loop.call_soon(self._spin, context=self._context)

    def stop(self) -> None:
        """Spin no more (the node is stopping)."""
        self._stopped = True

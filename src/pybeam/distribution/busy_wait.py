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

Polling pays only while a core would otherwise sleep. So it starts, and goes
on, only while the machine has no more runnable threads than cores (this one
counted; Linux tells the count in ``/proc/loadavg``, for about a microsecond):
beside CPU-bound work the thread that spins takes the core that the peer, woken
by the spinner's own message, is waiting for, and the spin then costs more
than the wake-up it saves (rpc measured at half the rate without this rule).
Where the count cannot be read, only the preemption rule above applies.

The threshold is ``busy_wait`` (seconds, or one of BEAM's level names) of
:class:`pybeam.Node`, ``--busy-wait`` of ``pybeam node``, or
``$PYBEAM_BUSY_WAIT``; ``0`` or ``"none"`` turns it off. The default is
``medium``, as BEAM's.
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
    "CROWDED_BACKOFF",
    "DEFAULT_BUSY_WAIT",
    "LEVELS",
    "BusyWait",
    "RunQueue",
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

#: BEAM's default, ``medium``; it polls only while a core is idle.
DEFAULT_BUSY_WAIT: Final = LEVELS["medium"]

#: Off the CPU for longer than this between two polls: the OS gave the core
#: to another thread.
CONTENDED: Final = 0.000_05

#: After such a preemption, no polling for this long.
BACKOFF: Final = 0.1

#: After finding the machine crowded, no new look at it for this long: under
#: load a look per read or write would be a cost of its own.
CROWDED_BACKOFF: Final = 0.001

#: While polling, a look at the run queue every this many iterations (a few
#: microseconds each): a thread woken meanwhile may be waiting for this core.
_LOOK_EVERY: Final = 4

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


class RunQueue:
    """How crowded the machine is: the number of threads runnable right now
    (running or waiting for a core) against the number of cores, from Linux's
    ``/proc/loadavg``. Where it cannot be read, never crowded."""

    __slots__ = ("_fd", "cores")

    def __init__(self, path: str = "/proc/loadavg", cores: int | None = None) -> None:
        self.cores = cores or os.cpu_count() or 1
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def runnable(self) -> int | None:
        """Threads runnable on the machine now, the caller included; None if unknown."""
        if self._fd is None:
            return None
        try:
            # "0.17 0.55 0.66 3/96 25485": the fourth field is runnable/total.
            field = os.pread(self._fd, 128, 0).split(None, 4)[3]
            return int(field[: field.index(b"/")])
        except (OSError, IndexError, ValueError):
            return None

    def crowded(self) -> bool:
        """More threads want to run than there are cores: a spinning thread
        would keep one of them waiting."""
        n = self.runnable()
        return n is not None and n > self.cores

    def close(self) -> None:
        """Let the file go (the gauge then reads as unknown)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


_run_queue: RunQueue | None = None


def run_queue() -> RunQueue:
    """The process's gauge of the machine's run queue (opened on first use)."""
    global _run_queue
    if _run_queue is None:
        _run_queue = RunQueue()
    return _run_queue


class BusyWait:
    """Keeps ``loop`` polling for ``threshold`` seconds after the last :meth:`poke`,
    unless the thread spends more than ``contended`` seconds off the CPU
    between two polls (the OS gave the core to another thread), or
    ``run_queue`` finds more runnable threads than cores."""

    __slots__ = (
        "_contended",
        "_context",
        "_cpu",
        "_looks",
        "_loop",
        "_poked",
        "_quiet_until",
        "_run_queue",
        "_since",
        "_stopped",
        "_wall",
        "crowded",
        "preempted",
        "spinning",
        "spins",
        "threshold",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        contended: float = CONTENDED,
        run_queue: RunQueue | None = None,
    ) -> None:
        self._loop = loop
        self._contended = contended
        self._run_queue = run_queue
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
        #: Spins not started or cut short because no core was idle.
        self.crowded = 0
        self._looks = 0
        self._wall = 0.0
        self._cpu = 0.0
        self._quiet_until = 0.0

    def poke(self) -> None:
        """Traffic now: poll for the next ``threshold`` seconds at least."""
        self._poked = True
        if not self.spinning and self.threshold and not self._stopped:
            now = _now()
            if now < self._quiet_until:
                return  # preempted or crowded lately: the machine is busy
            if self._run_queue is not None and self._run_queue.crowded():
                self.crowded += 1
                self._quiet_until = now + CROWDED_BACKOFF
                return
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
        else:
            self._looks += 1
            if self._looks >= _LOOK_EVERY:
                self._looks = 0
                if self._run_queue is not None and self._run_queue.crowded():
                    # A thread became runnable meanwhile and may be waiting
                    # for this core: the peer woken by this node's message,
                    # often.
                    self.spinning = False
                    self.crowded += 1
                    self._quiet_until = now + CROWDED_BACKOFF
                    return
        self._wall = now
        self._cpu = cpu
        self.spins += 1
        self._loop.call_soon(self._spin, context=self._context)

    def stop(self) -> None:
        """Spin no more (the node is stopping)."""
        self._stopped = True

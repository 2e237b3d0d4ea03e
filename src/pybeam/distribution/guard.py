"""What a stranger may cost a node: caps on unauthenticated connections, safe logging.

Anyone who can reach a node's port (or the port mapper's) can open
connections and say things before proving anything. This module holds the
small tools that bound what that costs:

- :func:`~pybeam.logtext.untrusted` (re-exported here) makes text a stranger
  chose safe to put in a log line.
- :class:`RefusalLog` logs the first few refusals of each interval and then
  one summary line with the count, so a flood cannot fill the disk.
- :class:`ConnectionCap` holds at most N unauthenticated connections; one more
  drops the oldest, so a pile of half-open sockets cannot exhaust file
  descriptors while a real peer still gets in.
- :func:`default_cap` derives the default caps from the process's file
  descriptor limit, leaving most of it for authenticated work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Any

from ..logtext import untrusted

__all__ = ["ConnectionCap", "RefusalLog", "default_cap", "fd_limit", "untrusted"]


def fd_limit() -> int:
    """This process's soft limit on open file descriptors (1024 if unknown)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return 1024
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 1 << 20
    return int(soft)


def default_cap(divisor: int, low: int, high: int) -> int:
    """``fd_limit() // divisor``, kept within ``low..high``."""
    return max(low, min(high, fd_limit() // divisor))


class ConnectionCap:
    """At most :attr:`limit` unauthenticated connections; admitting one more drops the oldest.

    Oldest first because a connection that has not authenticated after a while
    is the likeliest to be an attacker's (a real peer's handshake takes
    milliseconds), and the newest may be the real peer arriving.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a connection cap must be at least 1, got {limit}")
        self.limit = limit
        #: Connections dropped to make room, since start.
        self.dropped = 0
        self._open: dict[Hashable, Callable[[], None]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, key: Hashable, drop: Callable[[], None]) -> int:
        """Count connection ``key`` (``drop()`` ends it); return how many older ones were dropped."""
        dropped = 0
        while len(self._open) >= self.limit:
            oldest = next(iter(self._open))
            self._open.pop(oldest)()
            dropped += 1
        self._open[key] = drop
        self.dropped += dropped
        return dropped

    def release(self, key: Hashable) -> None:
        """``key`` authenticated or ended: it no longer counts."""
        self._open.pop(key, None)

    def drop_all(self) -> None:
        """End every connection counted (the server is stopping)."""
        while self._open:
            self._open.pop(next(iter(self._open)))()


class RefusalLog:
    """Log refusals at most ``burst`` times per ``interval`` seconds, then summarise.

    The first ``burst`` lines of an interval are logged as given; the rest are
    only counted, and one line at the end of the interval says how many were
    left out. Callers must escape untrusted text (:func:`untrusted`).
    """

    def __init__(
        self, logger: logging.Logger, *, burst: int = 5, interval: float = 10.0, what: str = "refusals"
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.what = what
        self._start = float("-inf")
        self._count = 0
        self._suppressed = 0
        self._timer: asyncio.TimerHandle | None = None

    def log(self, level: int, msg: str, *args: Any) -> None:
        """Log one refusal, unless this interval's burst is spent."""
        now = asyncio.get_running_loop().time()
        if now - self._start >= self.interval:
            self.flush()
            self._start = now
            self._count = 0
        self._count += 1
        if self._count <= self.burst:
            self.logger.log(level, msg, *args)
            return
        self._suppressed += 1
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # summarised by the next call after the interval
            self._timer = loop.call_later(max(self._start + self.interval - now, 0.0), self.flush)

    def flush(self) -> None:
        """Write the summary line for what was left out, if anything was."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._suppressed:
            self.logger.warning(
                "%d more %s in the last %.0f s were not logged", self._suppressed, self.what, self.interval
            )
            self._suppressed = 0

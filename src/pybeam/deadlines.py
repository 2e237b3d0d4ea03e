"""Receive timeouts: one event-loop timer for all of a node's waiting receives.

A ``receive`` with a timeout nearly always ends before it (the reply of an
rpc or a gen_server call comes first), so a loop timer scheduled and cancelled
per receive is pure overhead: on uvloop that pair costs ~3 µs, a sixteenth of
a whole sequential rpc's instructions. Instead a waiting receive adds its
deadline to a heap here, and one loop timer, set for the earliest deadline,
wakes those whose time has come. A receive that ends first only marks its
entry dead: the timer stays where it is (it wakes once, finds nothing due,
and is set again for the next live deadline, if any). Dead entries are
dropped when they reach the top of the heap, all at once when every entry is
dead, or in one pass when they outnumber the live ones, so the heap stays
within twice the receives waiting (plus a small constant).

A timeout is as exact as a timer of its own: the timer is always set for
the earliest live deadline (or earlier), and each entry is due at the same
loop time as its own ``call_at`` would have been.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
from heapq import heapify, heappop, heappush
from typing import Any, Final

__all__ = ["FIRED", "TIMED_OUT", "Deadlines"]

#: The result a timed-out receive's future is given.
TIMED_OUT: Final = object()

#: What an entry's future slot holds once its deadline has fired: a receive
#: woken by a message that did not match sees it and times out.
FIRED: Final = object()

# Dead entries are swept in one pass only past this many (and past the live
# ones): a few left until they reach the top cost nothing.
_SWEEP_AT = 64


class Deadlines:
    """The deadlines of the receives waiting on one event loop (one per node).

    An entry is ``[when, seq, future]``: ``future`` is None once the receive
    has ended (dead), :data:`FIRED` once the deadline has passed.
    """

    __slots__ = ("_at", "_dead", "_handle", "_heap", "_seq", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[list[Any]] = []
        self._dead = 0
        self._handle: asyncio.TimerHandle | None = None
        #: When the timer fires (meaningful while ``_handle`` is set).
        self._at = 0.0
        # Orders entries with the same deadline (futures do not compare).
        self._seq = itertools.count().__next__

    def add(self, when: float, fut: asyncio.Future[Any]) -> list[Any]:
        """Give ``fut`` the result :data:`TIMED_OUT` at loop time ``when``,
        unless :meth:`drop` comes first; the entry, whose future slot the
        receive may point at a new future (``entry[2] = fut``)."""
        entry = [when, self._seq(), fut]
        heappush(self._heap, entry)
        if self._handle is None or when < self._at:
            self._arm(when)
        return entry

    def drop(self, entry: list[Any]) -> None:
        """The receive of ``entry`` has ended: forget its deadline."""
        if entry[2] is None or entry[2] is FIRED:
            return  # dropped already, or fired (and popped)
        entry[2] = None
        dead = self._dead = self._dead + 1
        heap = self._heap
        if dead == len(heap):
            # No receive waits: the common case (one call at a time) keeps
            # the heap at one entry. The timer stays set: it fires once, idle.
            heap.clear()
            self._dead = 0
        elif dead > _SWEEP_AT and dead * 2 > len(heap):
            heap[:] = [e for e in heap if e[2] is not None]
            heapify(heap)
            self._dead = 0

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = when
        # In a context of its own: the one running now is a process's, which
        # the timer would keep alive until it fires (seconds after the
        # receive ended), and in a cycle with this object once the loop is gone.
        self._handle = self.loop.call_at(when, self._fire, context=contextvars.Context())

    def _fire(self) -> None:
        self._handle = None
        # Due: every entry the loop would have run a timer of its own for by
        # now, which includes the one this timer was set for.
        now = max(self.loop.time(), self._at)
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heappop(heap)
            fut = entry[2]
            if fut is None:
                self._dead -= 1
                continue
            entry[2] = FIRED
            if not fut.done():
                fut.set_result(TIMED_OUT)
        while heap and heap[0][2] is None:
            heappop(heap)
            self._dead -= 1
        if heap:
            self._arm(heap[0][0])

    def __len__(self) -> int:
        """Entries held, dead ones included (for tests and introspection)."""
        return len(self._heap)

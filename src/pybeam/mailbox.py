"""The mailbox: a process's queue of messages, and selective receive.

Messages are kept in arrival order. :meth:`Mailbox.receive` takes the first
message a matcher accepts and leaves the others where they were, as BEAM's
``receive`` does; like BEAM it remembers how far it has already looked, so a
process waiting for one particular reply in a long mailbox checks each new
arrival once instead of rescanning the whole queue.

The common case — a process's own task waiting in ``receive()`` for any
message — is a hand-off: the message is handed to the wake the task waits on
(see :mod:`pybeam.scheduler`), so it never enters the queue, and the process
joins its node's run queue. A cancellation that races with the hand-off gives
the message back (see :meth:`Mailbox.give_back`), so no message is lost.
"""

from __future__ import annotations

import asyncio
import types
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from itertools import islice
from typing import TYPE_CHECKING, Any, Final

from .deadlines import FIRED, TIMED_OUT
from .pattern import Matcher
from .speedups import speedups

if TYPE_CHECKING:
    from .node import Node
    from .scheduler import Wake

__all__ = ["NO_DEFAULT", "Mailbox", "waiting"]

# A wake's states (see pybeam.scheduler.Wake).
_IDLE: Final = 0  # nobody waits on it: free for the next receive
_PENDING: Final = 1  # the process (or someone) waits on it for a message
_DONE: Final = 2  # a message was handed to it (or it was woken), not yet taken
_CANCELLED: Final = 3


class _NoDefault:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_DEFAULT"


#: Marks "no default given": a receive that times out raises TimeoutError.
NO_DEFAULT: Final = _NoDefault()

_get_running_loop: Final = asyncio.get_running_loop

# The task running now, given the loop: a C call either way (Python 3.11's
# asyncio.current_task is a Python function around this very dict).
_current_task: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = asyncio.current_task
if not isinstance(_current_task, types.BuiltinFunctionType):  # pragma: no cover - depends on the version
    _current_task = asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]


class Mailbox:
    """A FIFO of messages with one waiting receiver at most (the base of a
    :class:`~pybeam.process.Process`)."""

    # The deque is created on the first message: an empty deque costs ~600
    # bytes, more than the rest of an idle process together.
    __slots__ = ("_handed", "_queue", "_takes", "_wait", "_waiter", "suspended_on")

    #: The process's own task, and whether it was adopted (set by Process):
    #: only a task of ours gives a handed message back when cancelled.
    task: asyncio.Task[Any] | None
    adopted: bool
    #: The node (set by Process): its shared timer wakes receives that time out.
    node: Node

    def __init__(self) -> None:
        self._queue: deque[Any] | None = None
        #: The receive waiting: a future to wake it (it then looks in the
        #: queue itself) or, if ``_takes``, the process's own task waiting for
        #: any message, whose result the next message becomes.
        self._waiter: asyncio.Future[Any] | Wake | None = None
        self._takes = False
        #: The taker last handed a message, until the task has taken it.
        self._handed: asyncio.Future[Any] | Wake | None = None
        self._wait: _WaitAny | None = None
        self.suspended_on = None

    def put(self, msg: Any) -> None:
        """Hand a message to the receiver waiting for any message, or queue it
        and wake the receiver if it waits."""
        w = self._waiter
        if w is not None:
            self._waiter = None
            # Done: cancelled by whoever awaited it (asyncio.wait_for, say).
            if not w.done():
                if self._takes:
                    self._handed = w
                    w.set_result(msg)
                    return
                w.set_result(None)  # it runs later: the message is queued by then
        q = self._queue
        if q is None:
            q = self._queue = deque()
        q.append(msg)

    def give_back(self, fut: Any) -> None:
        """The process's task, waiting on ``fut``, is being cancelled before it
        resumed: a message handed to ``fut`` was never received, so it goes
        back to the front of the queue."""
        handed = self._handed
        if handed is None or fut is not handed:
            return
        self._handed = None
        if handed.done() and not handed.cancelled():
            q = self._queue
            if q is None:
                q = self._queue = deque()
            q.appendleft(handed.result())

    def __len__(self) -> int:
        q = self._queue
        return 0 if q is None else len(q)

    def messages(self) -> list[Any]:
        """A snapshot of the queued messages, oldest first."""
        return [] if self._queue is None else list(self._queue)

    def remove_matching(self, matcher: Matcher) -> int:
        """Drop every queued message the matcher accepts; return how many."""
        q = self._queue
        if not q:
            return 0
        kept = [m for m in q if not matcher(m)]
        dropped = len(q) - len(kept)
        if dropped:
            q.clear()
            q.extend(kept)
        return dropped

    def clear(self) -> None:
        """Forget every message (the process has ended)."""
        self._queue = None
        self._waiter = self._handed = None

    def _take(self, matcher: Matcher, start: int) -> tuple[bool, Any]:
        q = self._queue
        if q is None:
            return False, None
        n = len(q)
        if start > n >> 1:
            # The part not yet looked at is the shorter, at the tail (a
            # selective receive woken by new arrivals behind a backlog it has
            # already scanned): a deque indexes, and deletes, from its nearer
            # end, so each arrival costs O(1) rather than a walk over the backlog.
            for i in range(start, n):
                m = q[i]
                if matcher(m):
                    del q[i]
                    return True, m
            return False, None
        for i, m in enumerate(islice(q, start, None), start):
            if matcher(m):
                del q[i]
                return True, m
        return False, None

    #: Set by the distribution when this process sent to a busy connection:
    #: what to wait for (its drain) before the next receive, as BEAM suspends
    #: a sender over ``dist_buf_busy_limit``.
    suspended_on: Callable[[], Awaitable[None]] | None

    async def _suspended(self, matcher: Matcher | None, timeout: float | None, default: Any) -> Any:
        drain, self.suspended_on = self.suspended_on, None
        if drain is not None:
            await drain()
        if matcher is None and timeout is None:
            return await self.receive_any()
        return await self.receive(matcher, timeout, default)

    def receive_any(self) -> Awaitable[Any]:
        """Take the oldest message, waiting for one if there is none.

        The common case of :meth:`receive`, kept lean: a message already
        queued is taken at once; the process's own task waits on the wake
        the next message is handed to; any other task (an adopted process's,
        or one a process started) waits in a small reused object. None of them
        waits in a coroutine frame, which would add a third to an idle process.
        """
        if self.suspended_on is not None:
            return self._suspended(None, None, NO_DEFAULT)
        q = self._queue
        if q:
            return _pop(q)
        w = self._waiter
        if w is not None and not w.done():
            _already_waiting()
        # Running again, so the last message handed over has been taken.
        self._handed = None
        task = self.task
        if task is None:
            fut = self._waiter = _get_running_loop().create_future()
        else:
            # The task's loop rather than get_running_loop(), which on Python
            # 3.11 makes a getpid() system call every time (to notice a fork).
            loop = task.get_loop()
            if not self.adopted and _current_task(loop) is task:
                # Our own task (see Node.spawn), which gives back a message
                # handed to it if cancelled before it resumes: hand off.
                wake: Wake = task._park()  # type: ignore[attr-defined]
                self._waiter = wake
                self._takes = True
                return waiting(wake, self)
            fut = self._waiter = loop.create_future()
        self._takes = False
        # One waiting object per mailbox, reused: a process waits in one
        # receive at a time, and ping-pong traffic waits on every message.
        wait = self._wait
        if wait is None:
            wait = self._wait = _WaitAny(self, fut)
        else:
            wait._fut = fut
        return wait

    async def receive(
        self,
        matcher: Matcher | None = None,
        timeout: float | None = None,
        default: Any = NO_DEFAULT,
    ) -> Any:
        """Take the first message ``matcher`` accepts (any message if None).

        Waits for one to arrive. With ``timeout`` (seconds; 0 polls) it returns
        ``default`` when nothing matched in time, or raises ``TimeoutError``
        when no default was given.
        """
        if self.suspended_on is not None:
            return await self._suspended(matcher, timeout, default)
        q = self._queue
        if matcher is None and q:
            return q.popleft()
        scanned = 0
        if matcher is not None:
            found, msg = self._take(matcher, 0)
            if found:
                return msg
            scanned = len(q) if q is not None else 0
        if timeout is not None and timeout <= 0:
            return _expired(default)
        w = self._waiter
        if w is not None and not w.done():
            _already_waiting()
        # No local for the task: a cancellation's traceback keeps this frame,
        # and the task keeps the cancellation (a cycle; see pybeam.gc_policy).
        loop = _get_running_loop() if self.task is None else self.task.get_loop()
        # The deadline goes to the node's shared timer (see pybeam.deadlines),
        # once per receive: a wake-up by a message that does not match points
        # the entry at the next future.
        deadlines = None
        deadline = 0.0
        if timeout is not None:
            deadlines = self.node.receive_deadlines(loop)
            deadline = loop.time() + timeout
        # The process's own task waits on its wake, which a message (or the
        # deadline) puts on the run queue; any other task on a loop future.
        own = not self.adopted and self.task is not None and _current_task(loop) is self.task
        entry: list[Any] | None = None
        try:
            while True:
                fut: Any = self.task._park() if own else loop.create_future()  # type: ignore[union-attr]
                self._waiter = fut
                self._takes = False
                if deadlines is not None:
                    if entry is None:
                        entry = deadlines.add(deadline, fut)
                    else:
                        entry[2] = fut
                try:
                    woke = await (waiting(fut, self) if own else fut)
                finally:
                    if self._waiter is fut:
                        self._waiter = None
                q = self._queue
                if matcher is None:
                    if q:
                        return q.popleft()
                else:
                    found, msg = self._take(matcher, scanned)
                    if found:
                        return msg
                    scanned = len(q) if q is not None else 0
                # Timed out, or woken by a message that did not match after
                # the deadline fired (its future was done by then).
                if woke is TIMED_OUT or (entry is not None and entry[2] is FIRED):
                    return _expired(default)
        finally:
            if entry is not None and deadlines is not None:
                deadlines.drop(entry)


@types.coroutine
def _waiting(wake: Wake, mailbox: Mailbox) -> Generator[Any, None, Any]:
    """Await a process's wake from its own task: the message handed to it
    (or, for a selective receive, None once it was woken).

    A small generator, which a coroutine awaits without a call and which
    returns its value to it without a ``StopIteration`` object: a fifth of
    what a hop between two processes costs in instructions, against the
    wake's own ``__await__``. Whoever else awaits it (``asyncio.wait_for``
    wraps it in a task) sees the wake, a future, yielded to its task.
    """
    if wake._state == _PENDING:
        # (A message handed over between receive() and its await has made
        # the wake done already: nothing to wait for, and nothing would wake it.)
        wake._asyncio_future_blocking = True
        try:
            yield wake
        except asyncio.CancelledError:
            # Cancelled after a message was handed over, before it was taken
            # (the process's own task gives it back in ProcessTask.cancel;
            # this is for a task that wraps the receive): not lost.
            if wake._state == _DONE:
                mailbox.give_back(wake)
                wake._result = None
            # This frame stays in the cancellation's traceback, which an exit
            # reason may keep (a TimeoutError's context): it must not hold the
            # process, or they make a cycle only the cyclic collector frees.
            wake = mailbox = None  # type: ignore[assignment]
            raise
    if wake._state == _DONE:
        msg = wake._result
        if wake._callbacks is None:
            # Taken, and nobody else holds it: the next receive waits on it again.
            wake._state = _IDLE
            wake._result = None
        return msg
    return wake.result()  # cancelled: raises


async def _pop_coro(q: deque[Any]) -> Any:
    # Cheaper than a done future: a coroutine that returns at once is all C.
    return q.popleft()


# The compiled versions, when built (see pybeam.speedups): the same, with no
# frame (pybeam._speedups.Receiving).
waiting: Callable[[Wake, Mailbox], Awaitable[Any]] = _waiting if speedups is None else speedups.waiting
_pop: Callable[[deque[Any]], Awaitable[Any]] = _pop_coro if speedups is None else speedups.popped


class _WaitAny:
    """Awaiting an empty mailbox: yields the waiter future to the task until a
    message is queued, then takes it.

    The message stays in the queue until this takes it, so a task cancelled
    while waiting loses nothing.
    """

    __slots__ = ("_fut", "_mailbox")

    def __init__(self, mailbox: Mailbox, fut: asyncio.Future[Any]) -> None:
        self._mailbox = mailbox
        self._fut = fut

    def __await__(self) -> Generator[Any, None, Any]:
        return self

    def __iter__(self) -> _WaitAny:
        return self

    def send(self, _: Any) -> Any:
        return self.__next__()

    def __next__(self) -> Any:
        # A coroutine awaiting this calls __next__ (not send) to resume it.
        fut = self._fut
        if fut.done():
            mailbox = self._mailbox
            q = mailbox._queue
            if q:
                raise StopIteration(q.popleft())
            fut = self._fut = fut.get_loop().create_future()
            mailbox._waiter = fut
            mailbox._takes = False
        # What Future.__await__ does: tells the task to wait for this future.
        fut._asyncio_future_blocking = True
        return fut

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        raise typ if val is None else val

    def close(self) -> None:
        pass


def _already_waiting() -> None:
    # One waiter per mailbox keeps the common path lean; a second one would
    # silently take the first's wake-up, leaving it to its timeout or forever.
    raise RuntimeError(
        "this process is already waiting in another receive: a process receives in one place at a "
        "time, as in BEAM (two receives at once, e.g. under asyncio.gather, need two processes)"
    )


def _expired(default: Any) -> Any:
    if default is NO_DEFAULT:
        raise TimeoutError("receive timed out")
    return default

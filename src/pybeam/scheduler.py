"""The scheduler: runs the steps of processes from a run queue, many per
event-loop iteration, as BEAM's schedulers run processes from theirs.

A spawned process's task is a :class:`ProcessTask`. To asyncio it is a task
like any other (``asyncio.current_task()`` inside the process returns it; it
can be awaited, cancelled, given done callbacks; it awaits any future), but
it is not stepped by the event loop: a process woken by a message is put on
its node's :class:`RunQueue`, and the queue runs the steps of every ready
process, in order, in one event-loop callback. A message from one process to
another therefore costs no event-loop iteration (a scheduled callback, a
handle, a trip through the loop's ready queue): that iteration is most of
what a hop cost when each process was an asyncio task.

What a process waits on in ``receive()`` is a :class:`Wake`, reused from
receive to receive: the next message is handed to it, and the process
resumes with the message without a future being made, done, or called back.
The process's own receive awaits it through a small generator
(:func:`pybeam.mailbox.waiting`); whoever else awaits it
(``asyncio.wait_for(receive(), 1)`` wraps the receive in a task) sees a future.

Fairness: a queue runs at most :data:`BUDGET` steps per callback, then lets
the event loop run (I/O, timers, other tasks) before it goes on, as a BEAM
scheduler checks I/O every few thousand reductions.

The simulation's loop (:mod:`pybeam.testing.sim`), which picks the order of
ready callbacks from a seed, gets every step as a callback of its own, so
that it can still interleave processes (a loop that has ``interleaves``
set true).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Generator
from contextvars import Context
from typing import TYPE_CHECKING, Any, Final

from .mailbox import _CANCELLED, _DONE, _IDLE, _PENDING, _current_task, waiting
from .process import Process
from .speedups import speedups
from .terms import Pid

__all__ = ["BUDGET", "ProcessTask", "RunQueue", "Wake", "waiting"]

#: Steps a run queue takes in one event-loop callback before it yields to the loop.
BUDGET: Final = 1024

_Future: Final = asyncio.Future
_CancelledError: Final = asyncio.CancelledError
_InvalidStateError: Final = asyncio.InvalidStateError
_enter_task: Final = asyncio.tasks._enter_task
_leave_task: Final = asyncio.tasks._leave_task
_register_task: Final = asyncio.tasks._register_task
_get_loop: Final = asyncio.futures._get_loop  # type: ignore[attr-defined]

#: The context the loop runs a step's callback in: the step enters the
#: process's own (entering it here too would enter it twice).
_NO_CONTEXT: Final = Context()


class RunQueue:
    """The processes of one event loop that are ready to run, in order."""

    __slots__ = ("_queue", "_scheduled", "interleaves", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._queue: deque[ProcessTask] = deque()
        self._scheduled = False
        #: Every step a callback of its own (for a loop that orders its callbacks).
        self.interleaves = bool(getattr(loop, "interleaves", False))

    def ready(self, task: ProcessTask) -> None:
        """Run ``task``'s next step soon, after those already queued."""
        if self.interleaves:
            self.loop.call_soon(task._step, context=_NO_CONTEXT)
            return
        self._queue.append(task)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        queue = self._queue
        popleft = queue.popleft
        n = BUDGET
        try:
            while queue and n:
                popleft()._step()
                n -= 1
        finally:
            if queue:
                self.loop.call_soon(self._run)
            else:
                self._scheduled = False


class Wake:
    """What a process waiting in ``receive()`` for any message waits on.

    The next message is handed to it (:meth:`set_result`), and its process
    put on the run queue; resumed, the process takes the message from it.
    To anyone else it is a future (done, result, callbacks, cancel), so that
    ``asyncio.wait_for(receive(), 1)`` and the like work as on any future.
    """

    __slots__ = ("_asyncio_future_blocking", "_callbacks", "_result", "_runq", "_state", "_task")

    def __init__(self, task: ProcessTask) -> None:
        #: The process's task, while the wake is its own: None once the task
        #: has ended or someone else awaits the wake (see add_done_callback).
        self._task: ProcessTask | None = task
        self._runq = task._runq
        self._state = _IDLE
        self._result: Any = None
        self._callbacks: list[tuple[Callable[[Any], Any], Context | None]] | None = None
        self._asyncio_future_blocking = False

    def __repr__(self) -> str:
        state = ("idle", "pending", "done", "cancelled")[self._state]
        return f"<Wake {state}>"

    # -- the future ---------------------------------------------------------

    def done(self) -> bool:
        """Whether a message was handed to it (or it was cancelled)."""
        return self._state != _PENDING

    def cancelled(self) -> bool:
        """Whether it was cancelled."""
        return self._state == _CANCELLED

    def result(self) -> Any:
        """The message handed to it."""
        state = self._state
        if state == _DONE:
            return self._result
        if state == _CANCELLED:
            raise _CancelledError()
        raise _InvalidStateError("Result is not ready.")

    def exception(self) -> BaseException | None:
        """None once a message was handed to it (a wake never fails)."""
        state = self._state
        if state == _CANCELLED:
            raise _CancelledError()
        if state != _DONE:
            raise _InvalidStateError("Exception is not set.")
        return None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop of the process it belongs to."""
        return self._runq.loop

    def set_result(self, msg: Any) -> None:
        """Hand ``msg`` over: the process waiting on it runs next."""
        if self._state != _PENDING:
            raise _InvalidStateError(f"invalid state: {self!r}")
        self._result = msg
        self._state = _DONE
        self._wake_awaiters()

    def cancel(self, msg: Any = None) -> bool:
        """Stop waiting: whoever awaits it gets a CancelledError."""
        if self._state != _PENDING:
            return False
        self._state = _CANCELLED
        self._wake_awaiters()
        return True

    def _wake_awaiters(self) -> None:
        # Its process, if it waits on it (to the run queue), and anyone else.
        task = self._task
        if task is not None and task._fut_waiter is self:
            self._runq.ready(task)
        if self._callbacks is not None:
            self._call_back()

    def add_done_callback(self, fn: Callable[[Any], Any], *, context: Context | None = None) -> None:
        """Call ``fn(self)`` soon after a message is handed to it."""
        if self._state != _PENDING:
            self._runq.loop.call_soon(fn, self, context=context)
            return
        if self._callbacks is None:
            self._callbacks = []
        task = self._task
        if task is not None:
            # Someone else awaits it (asyncio.wait_for wraps it, say): the
            # process no longer waits on it in its own way, and the wake
            # lets go of the task, which its awaiter's frames (kept in an
            # exit reason's traceback) would otherwise hold in a cycle.
            self._task = None
            if task._wake is self:
                task._wake = None
            if task._fut_waiter is self:  # the process awaits it too
                self._callbacks.append((task._step, _NO_CONTEXT))
        self._callbacks.append((fn, context))

    def remove_done_callback(self, fn: Callable[[Any], Any]) -> int:
        """Forget every ``fn`` callback; return how many there were."""
        callbacks = self._callbacks
        if not callbacks:
            return 0
        kept = [c for c in callbacks if c[0] != fn]
        self._callbacks = kept
        return len(callbacks) - len(kept)

    def _call_back(self) -> None:
        callbacks, self._callbacks = self._callbacks or [], []
        call_soon = self._runq.loop.call_soon
        for fn, context in callbacks:
            call_soon(fn, self, context=context)

    def __await__(self) -> Generator[Any, None, Any]:
        # As a future's, for whoever awaits it directly: the process's own
        # receive awaits it through pybeam.mailbox.waiting, which also puts
        # it back to use for the next receive.
        if self._state == _PENDING:
            self._asyncio_future_blocking = True
            yield self
        return self.result()


if TYPE_CHECKING:
    # It implements asyncio.Task's API: to type checkers it is one.
    _TaskBase = asyncio.Task[Any]
else:
    _TaskBase = asyncio.Future


class ProcessTask(_TaskBase):
    """The task of a spawned process: a future (its result, done callbacks,
    ``cancel``) whose steps the node's run queue takes (see the module
    docstring), with asyncio's task API (``current_task``, ``cancelling``,
    ``uncancel``, ``get_coro``)."""

    __slots__ = (
        "_cancel_message",
        "_context",
        "_exc",
        "_fut_waiter",
        "_must_cancel",
        "_name",
        "_num_cancels_requested",
        "_proc",
        "_runq",
        "_wake",
    )

    def __init__(self, proc: Process, runq: RunQueue, context: Context) -> None:
        _Future.__init__(self, loop=runq.loop)
        self._proc = proc
        self._runq = runq
        self._context = context
        self._fut_waiter: Any = None
        self._wake: Wake | None = None
        self._exc: BaseException | None = None
        self._must_cancel = False
        self._cancel_message: Any = None
        self._num_cancels_requested = 0
        self._name: str | None = None
        _register_task(self)
        runq.ready(self)

    def __repr__(self) -> str:
        # As asyncio shows a task: state, name, the coroutine and where it is.
        info = asyncio.base_tasks._task_repr_info(self)  # type: ignore[attr-defined]
        return f"<{type(self).__name__} {' '.join(info)}>"

    # -- asyncio's task API -------------------------------------------------

    def get_coro(self) -> Any:
        """The coroutine of the process's function."""
        return self._proc._coro

    def get_context(self) -> Context:
        """The context the process runs in."""
        return self._context

    def get_name(self) -> str:
        """The task's name (its pid's, unless set)."""
        return self._name if self._name is not None else f"process {self._proc.pid!r}"

    def set_name(self, value: object) -> None:
        """Rename the task."""
        self._name = str(value)

    def get_stack(self, *, limit: int | None = None) -> list[Any]:
        """The frames of the process's coroutine, as ``Task.get_stack``."""
        return asyncio.base_tasks._task_get_stack(self, limit)  # type: ignore[attr-defined,no-any-return]

    def print_stack(self, *, limit: int | None = None, file: Any = None) -> None:
        """Print the stack, as ``Task.print_stack``."""
        asyncio.base_tasks._task_print_stack(self, limit, file)  # type: ignore[attr-defined]

    @property
    def _coro(self) -> Any:
        # What asyncio's repr and stack helpers read.
        return self._proc._coro

    def cancelling(self) -> int:
        """Cancellations asked for and not yet uncancelled."""
        return self._num_cancels_requested

    def uncancel(self) -> int:
        """Take back one cancellation request (``asyncio.timeout`` does)."""
        if self._num_cancels_requested > 0:
            self._num_cancels_requested -= 1
        return self._num_cancels_requested

    def set_result(self, result: Any) -> None:
        raise RuntimeError("Task does not support set_result operation")

    def set_exception(self, exception: Any) -> None:
        raise RuntimeError("Task does not support set_exception operation")

    def cancel(self, msg: Any = None) -> bool:
        """Throw CancelledError into the process at its next step, as
        ``Task.cancel`` does. A message handed to it but not yet taken goes
        back to the front of its mailbox: cancelling a receive loses nothing."""
        if self.done():
            return False
        self._num_cancels_requested += 1
        w = self._fut_waiter
        if w is not None:
            if type(w) is Wake and w._task is self:
                self._fut_waiter = None
                proc = self._proc
                if w._state == _DONE:
                    proc.give_back(w)  # its step is queued already
                else:
                    if proc._waiter is w:
                        proc._waiter = None
                    self._runq.ready(self)
                w._state = _IDLE
                w._result = None
            elif w.cancel(msg=msg):
                # The future wakes the process, with its CancelledError.
                return True
        self._must_cancel = True
        self._cancel_message = msg
        return True

    # -- stepping -----------------------------------------------------------

    def _park(self) -> Wake:
        """The wake for the process's next ``receive()`` of any message."""
        w = self._wake
        if w is None or w._state != _IDLE:
            w = self._wake = Wake(self)
        w._state = _PENDING
        return w

    def _step(self, _: Any = None) -> None:
        # Called by the run queue, and as the done callback of a future the
        # process awaits (which it reads itself when it resumes). What
        # Task.__step does, and what the process's end takes (see
        # Process.returned and Process.raised), in one Python call.
        if self.done():
            return
        exc = self._exc
        if self._must_cancel:
            self._must_cancel = False
            exc = _CancelledError() if self._cancel_message is None else _CancelledError(self._cancel_message)
        proc = self._proc
        coro: Any = proc._coro
        loop = self._runq.loop
        self._fut_waiter = None
        proc.reductions += 1
        _enter_task(loop, self)
        try:
            if exc is None:
                result = self._context.run(type(coro).send, coro, None)
            else:
                self._exc = None
                result = self._context.run(type(coro).throw, coro, exc)
        except StopIteration as e:
            self._returned(e.value)
        except _CancelledError as e:
            _skip_this_frame(e)
            self._cancelled(e)
        except BaseException as e:
            _skip_this_frame(e)
            self._raised(e)
        else:
            if type(result) is Wake and result._task is self:
                result._asyncio_future_blocking = False
                if self._must_cancel:
                    self._cancel_wait(result)
                else:
                    self._fut_waiter = result
            else:
                self._yielded(result, loop)
        finally:
            _leave_task(loop, self)
            # An exception from the process's code (an exit reason's, kept
            # after the process ended) holds its frames, and through their
            # f_back this one: it must not hold the task (which holds the
            # process and so the reason), the process, or the exception
            # thrown in, or they make a cycle that only the cyclic garbage
            # collector frees.
            self = proc = coro = exc = result = None  # type: ignore[assignment]

    # What ends a step other than a wait on its own wake, for this step and
    # the compiled one (pybeam._speedups) alike.

    def _returned(self, value: Any) -> None:
        # The function returned.
        self._drop_wake()
        self._proc.returned()
        if self._must_cancel:
            self._must_cancel = False
            _Future.cancel(self, msg=self._cancel_message)
        else:
            _Future.set_result(self, value)

    def _cancelled(self, exc: BaseException) -> None:
        # The function raised CancelledError (its step's frame already left
        # out of the traceback).
        self._drop_wake()
        self._proc.raised(exc)
        _Future.cancel(self)

    def _raised(self, exc: BaseException) -> None:
        # The function raised: the exception is the exit reason now (and
        # logged), and the task ends without it, as nobody would retrieve it
        # from the task.
        self._drop_wake()
        self._proc.raised(exc)
        _Future.set_result(self, None)

    def _cancel_wait(self, wake: Wake) -> None:
        # Cancelled while running: the process never waits on its wake.
        proc = self._proc
        if proc._waiter is wake:
            proc._waiter = None
        wake._state = _IDLE
        self._runq.ready(self)

    def _drop_wake(self) -> None:
        # The task has ended: it and its wake no longer refer to each other.
        w = self._wake
        if w is not None:
            w._task = None
            self._wake = None

    def _yielded(self, result: Any, loop: asyncio.AbstractEventLoop) -> None:
        # What Task.__step does with what the coroutine yielded.
        blocking = getattr(result, "_asyncio_future_blocking", None)
        if blocking is not None:
            if _get_loop(result) is not loop:
                self._throw_soon(
                    RuntimeError(f"Task {self!r} got Future {result!r} attached to a different loop")
                )
            elif blocking:
                if result is self:
                    self._throw_soon(RuntimeError(f"Task cannot await on itself: {self!r}"))
                    return
                result._asyncio_future_blocking = False
                result.add_done_callback(self._step, context=_NO_CONTEXT)
                self._fut_waiter = result
                if self._must_cancel and result.cancel(msg=self._cancel_message):
                    self._must_cancel = False
            else:
                self._throw_soon(
                    RuntimeError(f"yield was used instead of yield from in task {self!r} with {result!r}")
                )
        elif result is None:
            # A bare yield (asyncio.sleep(0)) lets the event loop run (I/O,
            # timers, other tasks) before the process goes on, as a task's does.
            loop.call_soon(self._step, context=_NO_CONTEXT)
        else:
            self._throw_soon(RuntimeError(f"Task got bad yield: {result!r}"))

    def _throw_soon(self, exc: BaseException) -> None:
        self._exc = exc
        self._runq.ready(self)


def _skip_this_frame(exc: BaseException) -> None:
    # The exception's traceback starts at the step that caught it, whose
    # frame holds the task: as the exit reason's it would make a cycle
    # through the process (and it is noise in a crash report).
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code is _STEP_CODE:
        exc.__traceback__ = tb.tb_next


_STEP_CODE: Final = ProcessTask._step.__code__


if speedups is not None:
    # The compiled step and run-queue loop (see pybeam.speedups) take the
    # place of ProcessTask._step and RunQueue._run, and read these classes'
    # slots directly.
    speedups.setup_scheduler(
        Process=Process,
        Pid=Pid,
        ProcessTask=ProcessTask,
        Wake=Wake,
        RunQueue=RunQueue,
        states=(_IDLE, _PENDING, _DONE),
        CancelledError=_CancelledError,
        enter_task=_enter_task,
        leave_task=_leave_task,
        current_task=_current_task,
        future_done=_Future.done,
        budget=BUDGET,
    )

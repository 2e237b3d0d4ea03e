"""The process: a mailbox with a pid, links and monitors, and a task that runs it.

A process is created by its :class:`~pybeam.node.Node`, which owns the process
table and routes signals; this module holds what belongs to one process: its
state, how it reacts to an exit signal (BEAM's rules, below), and how the way
its function ended becomes its exit reason. Its task, which the node's run
queue steps, is in :mod:`pybeam.scheduler`.

Exit signals, as BEAM handles them:

- ``kill`` sent with ``exit(pid, "kill")`` cannot be trapped: the process ends
  with reason ``killed``.
- A process that traps exits gets every other signal as a message
  ``("EXIT", from_pid, reason)``.
- Otherwise ``normal`` is ignored (unless a process sent it to itself) and any
  other reason ends the process with that same reason.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import traceback
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .errors import Exit
from .gc_policy import GC_THRESHOLDS, PYTHON_GC_THRESHOLDS, tune_thresholds
from .logtext import clip
from .mailbox import Mailbox
from .terms import KILL, KILLED, NORMAL, Crash, Pid, Ref

if TYPE_CHECKING:
    from .node import Node

__all__ = ["GC_THRESHOLDS", "PYTHON_GC_THRESHOLDS", "Process", "current_process"]

logger = logging.getLogger("pybeam")

#: The process the running code belongs to. Tasks a process creates inherit it,
#: so ``asyncio.wait_for(receive(), 1)`` still receives for the right process.
_current: contextvars.ContextVar[Process | None] = contextvars.ContextVar("pybeam_process", default=None)


def current_process() -> Process | None:
    """The process running this code, or None outside any process."""
    return _current.get()


class Process(Mailbox):
    """One process: a mailbox with a pid, links and monitors.

    Users hold its :class:`Pid`; only the runtime holds this. It *is* its
    mailbox (rather than having one) to save an object per process.
    """

    __slots__ = (
        "_coro",
        "adopted",
        "alive",
        "links",
        "monitored_by",
        "monitors",
        "name",
        "node",
        "pid",
        "reason",
        "reductions",
        "task",
        "trap_exit",
    )

    def __init__(self, node: Node, pid: Pid, adopted: bool = False) -> None:
        self._queue = None
        self._waiter = None
        self._takes = False
        self._handed = None
        self._wait = None
        self.suspended_on = None
        self.node = node
        self.pid = pid
        pid._proc = self  # until clear(): the local send's shortcut
        self.task = None
        #: Pids this process is linked to (created on first link).
        self.links: set[Pid] | None = None
        #: Monitors others hold on this process: ref -> (watcher pid, the item
        #: its DOWN names: this pid, or (name, node) for a monitor by name).
        self.monitored_by: dict[Ref, tuple[Pid, Any]] | None = None
        #: Monitors this process holds: ref -> what it monitors (pid or (name, node)).
        self.monitors: dict[Ref, Any] | None = None
        self.trap_exit = False
        self.name: str | None = None
        self.alive = True
        self.reason: Any = None
        #: True for a task that became a process by calling self() (a script's
        #: main, a test): its task is not ours to run or to end.
        self.adopted = adopted
        #: Times the event loop resumed the process's code (a step of its
        #: task): the closest thing to BEAM's reductions, for ``pybeam top``.
        self.reductions = 0
        #: The function's own coroutine, which this steps (None if adopted).
        self._coro: Coroutine[Any, Any, Any] | None = None

    def __repr__(self) -> str:
        state = "alive" if self.alive else f"exited {self.reason!r}"
        return f"<Process {self.pid!r} {state}>"

    def exit_signal(self, sender: Pid, reason: Any, *, from_link: bool) -> None:
        """React to an exit signal, by BEAM's rules (see the module docstring)."""
        if not self.alive:
            return
        if from_link:
            # A link's exit counts only while the link exists: after unlink()
            # returns, an exit still in flight from the old partner is ignored.
            links = self.links
            if links is None or sender not in links:
                return
            links.discard(sender)
        if not from_link and reason == KILL:
            self.node.terminate(self, KILLED)
        elif self.trap_exit:
            self.put(("EXIT", sender, reason))
        elif reason == NORMAL:
            if sender == self.pid and not from_link:
                self.node.terminate(self, NORMAL)
        else:
            self.node.terminate(self, reason)

    def task_done(self, task: asyncio.Task[Any]) -> None:
        """An adopted process's task has finished: exit with the reason its
        ending gives. (A spawned process's task ends it from its step: see
        :meth:`returned` and :meth:`raised`.)
        """
        # The task's context refers back to this process: break the cycle, so
        # that a finished process is freed at once rather than left to the
        # cyclic garbage collector (which then dominates spawn-heavy code).
        self.task = None
        if not self.alive:
            # Already ended (killed by a signal, say) before its task finished. Still
            # collect how the task ended, or asyncio logs it as never retrieved.
            if not task.cancelled():
                task.exception()
            return
        exc: BaseException | None
        if not task.cancelled():
            exc = task.exception()
        elif task.cancelling():
            exc = None  # cancelled from outside (the event loop shutting down, say)
        else:
            # The function let out a CancelledError nobody asked for (it
            # awaited a future someone else cancelled): a crash like any other.
            try:
                task.result()
            except asyncio.CancelledError as e:
                exc = e
        if exc is None and task.cancelled():
            self.node.terminate(self, KILLED, cancel=False)
        else:
            self.ended(exc)

    def ended(self, exc: BaseException | None) -> None:
        """The function has returned (``exc`` None) or raised ``exc``: exit
        with the reason that gives, at once (the task has ended: nothing to cancel)."""
        if not self.alive:
            return
        reason: Any
        if exc is None:
            reason = NORMAL
        elif isinstance(exc, Exit):
            reason = exc.reason
        else:
            reason = Crash.from_exception(exc)
            if not self.adopted:
                logger.error(
                    "Error in process %r with exit value:\n%s", self.pid, clip(reason.traceback.rstrip())
                )
        self.node.terminate(self, reason, False)

    def cancel_task(self) -> None:
        """Stop the process's code at its next ``await`` (it has already exited)."""
        task = self.task
        if task is not None and not task.done():
            task.cancel(f"pybeam: process {self.pid!r} exited: {self.reason!r}")

    # -- how it ends ----------------------------------------------------------
    #
    # The process's task (pybeam.scheduler.ProcessTask) steps the function's
    # coroutine and ends the process the moment it returns or raises, as BEAM
    # does: before any other process runs, the process is dead, its name
    # free, its links and monitors fired. An exception becomes the exit
    # reason (SystemExit and KeyboardInterrupt included: in a process they
    # end the process, never the node, as exit/1 in BEAM).

    def returned(self) -> None:
        """The function has returned: exit ``normal``."""
        node = self.node
        if (
            self.alive
            and self.links is None
            and self.monitored_by is None
            and self.monitors is None
            and self.name is None
            and not node._pid_timers
        ):
            # Nobody links to it, monitors it or names it (most processes):
            # _end(None) and Node.terminate's work without their two calls.
            self.task = None
            self.alive = False
            self.reason = NORMAL
            pid = self.pid
            del node._procs[pid.id]
            self._queue = None
            self._waiter = self._handed = None
            pid._proc = None
        else:
            self._end(None)

    def raised(self, exc: BaseException) -> None:
        """The function has raised ``exc``, whatever it is (its step's own
        frame already left out of the traceback): exit with the reason that
        gives."""
        self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        """The function returned (``exc`` None) or raised ``exc``: end the
        process, and drop what would keep it in a reference cycle, so that
        reference counting alone frees it (see :mod:`pybeam.gc_policy`)."""
        proc = self
        task, proc.task = proc.task, None
        if exc is None:
            if proc.alive:  # ended(None) without the call: it returned
                proc.node.terminate(proc, NORMAL, False)
            return
        if isinstance(exc, asyncio.CancelledError):
            if proc.alive:
                if task is not None and task.cancelling():
                    # Cancelled from outside (the event loop shutting down, say).
                    proc.node.terminate(proc, KILLED, cancel=False)
                else:
                    # A CancelledError nobody asked for (it awaited a future
                    # someone else cancelled): a crash like any other.
                    proc.ended(exc)
        else:
            proc.ended(exc)
        # A crash's traceback holds frames (asyncio's among them) that may hold
        # this process's context; their variables are no part of the exit
        # reason, whose traceback is already text.
        reason = proc.reason
        if type(reason) is Crash and reason.exception is not None:
            traceback.clear_frames(reason.exception.__traceback__)


def _is_async_function(fn: Callable[..., Any]) -> bool:
    code = getattr(fn, "__code__", None)
    if code is not None:
        return bool(code.co_flags & inspect.CO_COROUTINE)
    return inspect.iscoroutinefunction(fn)


async def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    # For a plain function (or one that returns an awaitable): it must run
    # inside the process's task, not in the spawner's. Whatever it raises,
    # SystemExit included, the task's step makes the exit reason.
    result = fn(*args)
    if inspect.isawaitable(result):
        return await result
    return result


_gc_tuned = False
_CO_COROUTINE = inspect.CO_COROUTINE


def tune_gc() -> None:
    """Raise the collector's youngest threshold to :data:`GC_THRESHOLDS`
    if it is still Python's default and the gc policy allows (done on the
    first spawn; see :mod:`pybeam.gc_policy`)."""
    global _gc_tuned
    _gc_tuned = True
    tune_thresholds()

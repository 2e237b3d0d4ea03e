"""Interrupting code that holds the event loop: Ctrl-C for a shell statement
that never awaits, and SIGINT/SIGTERM for a node whose loop is stalled.

A node runs every process on one event loop. ``loop.add_signal_handler``
runs its callback *on* that loop, so code that never awaits (``while True:
pass`` typed at a shell, ``time.sleep`` in an rpc) keeps the callback from
ever running: Ctrl-C and SIGTERM are ignored. :class:`Signals` installs
Python-level handlers instead (``signal.signal``), which CPython runs in the
main thread between two bytecodes of whatever runs there, stalled loop or not;
a :class:`Beat` on the loop tells a stalled loop from a busy one.
:func:`raise_in_thread` interrupts code from another thread (the remote
shell's watchdog, see :mod:`pybeam.remsh`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from .process import current_process

__all__ = ["Beat", "Signals", "describe", "in_runtime", "on_stack", "raise_in_thread"]


class Beat:
    """A callback the loop runs every ``period`` seconds: how long ago it last
    ran says how long the loop has been held (a thread may ask)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float = 0.1) -> None:
        self.loop = loop
        self.period = period
        self.last = time.monotonic()
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start beating (on the loop's thread)."""
        self._beat()

    def stop(self) -> None:
        """Stop beating (on the loop's thread)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _beat(self) -> None:
        self.last = time.monotonic()
        self._handle = self.loop.call_later(self.period, self._beat)

    def held_for(self) -> float:
        """Seconds since the loop last ran the beat, less its period: about 0
        for a loop that runs, the stall's length for one that is held."""
        return max(time.monotonic() - self.last - self.period, 0.0)


def on_stack(frame: types.FrameType | None, test: Callable[[types.FrameType], bool]) -> bool:
    """Whether ``test`` holds for ``frame`` or any frame that called it."""
    while frame is not None:
        if test(frame):
            return True
        frame = frame.f_back
    return False


_RUNTIME = os.path.dirname(os.path.abspath(__file__)) + os.sep


def in_runtime(frame: types.FrameType | None, typed: str) -> bool:
    """Whether pybeam's own code runs at ``frame``, above the typed code
    (the first frame whose file is ``typed``, e.g. ``"<console>"``).

    An exception raised there could leave the runtime half-way through
    something (a spawn, a link): interrupts wait until the typed code, or
    code of its own libraries, runs.
    """
    while frame is not None and frame.f_code.co_filename != typed:
        if frame.f_code.co_filename.startswith(_RUNTIME):
            return True
        frame = frame.f_back
    return False


def describe(frame: types.FrameType | None) -> str:
    """Where code is, for a message: ``file:line in function``, and its process."""
    if frame is None:
        return "unknown code"
    code = frame.f_code
    where = f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
    proc = current_process()  # the interrupted code's context is the handler's
    return f"{where} (process {proc.pid!r})" if proc is not None else where


def raise_in_thread(thread_id: int, exc: type[BaseException]) -> bool:
    """Raise ``exc`` in thread ``thread_id`` at its next bytecode (CPython's
    ``PyThreadState_SetAsyncExc``). A thread blocked in a C call (a sleep, a
    read) gets it when the call returns. False if there is no such thread.

    ctypes calls into the interpreter hold the GIL: the caller's checks just
    before this and the raise happen with the target thread paused.
    """
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))
    return int(done) == 1


def _say(text: str) -> None:
    # os.write, not sys.stderr: a signal handler may run in the middle of a
    # write to sys.stderr, and its buffer refuses a reentrant call.
    with contextlib.suppress(OSError):
        os.write(2, text.encode(errors="replace"))


class Signals:
    """SIGINT and SIGTERM for ``pybeam node``, heard even when the loop is held.

    - ``owns(frame)`` (the shell's) says whether a statement typed at the
      shell is what runs: SIGINT then raises KeyboardInterrupt into it, at
      once, whether it awaits or not (a few milliseconds later if pybeam's
      own code is running for it then, see :func:`in_runtime`).
    - Otherwise, on a loop that runs, the signal's action runs on the loop
      (``on_sigint``: the shell's interrupt, or stopping the node;
      SIGTERM always stops it).
    - On a loop held for ``stalled`` seconds or more, the first signal says so
      on stderr, naming the code that holds it (a SIGTERM's stop waits for the
      loop to be free); a second one stops the node: it raises KeyboardInterrupt into
      that code (a process ends with it; the node goes on to stop). A third,
      if the code swallowed that, exits the OS process at once (status 1).

    Python-level handlers can be installed only from the main thread: from
    another one, :meth:`install` falls back to ``loop.add_signal_handler``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stop: Callable[[], None],
        on_sigint: Callable[[], None] | None = None,
        owns: Callable[[types.FrameType | None], bool] | None = None,
        stalled: float = 1.0,
    ) -> None:
        self.loop = loop
        self.stop = stop
        self.on_sigint = on_sigint or stop
        self.owns = owns
        self.stalled = stalled
        self.beat = Beat(loop)
        self._presses = 0
        self._pressed_at = 0.0
        self._previous: dict[signal.Signals, Any] = {}
        self._fallback = False

    def install(self) -> None:
        """Install the handlers (on the loop's thread) and start the beat."""
        self.beat.start()
        if threading.current_thread() is not threading.main_thread():
            self._fallback = True
            self.loop.add_signal_handler(signal.SIGINT, self.on_sigint)
            self.loop.add_signal_handler(signal.SIGTERM, self.stop)
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Put back the handlers that were there before."""
        self.beat.stop()
        if self._fallback:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.loop.remove_signal_handler(sig)
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _later(self, action: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to stop
            self.loop.call_soon_threadsafe(action)

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if signum == signal.SIGINT and self.owns is not None and self.owns(frame):
            if in_runtime(frame, "<console>"):
                # In pybeam's own code, called by the statement: ask again in
                # a moment, when the statement's code is likelier to run.
                threading.Timer(0.005, signal.pthread_kill, (threading.main_thread().ident, signum)).start()
                return
            raise KeyboardInterrupt
        held = self.beat.held_for()
        if held < self.stalled:
            self._presses = 0
            self._later(self.on_sigint if signum == signal.SIGINT else self.stop)
            return
        if self._pressed_at < self.beat.last:  # a new stall: count afresh
            self._presses = 0
        self._presses += 1
        self._pressed_at = time.monotonic()
        name = signal.Signals(signum).name
        if self._presses == 1:
            if signum == signal.SIGTERM:
                self._later(
                    self.stop
                )  # it will stop when the loop is free; a SIGINT's action is stale by then
            _say(
                f"\npybeam node: {name}: the event loop has been held for {held:.1f}s by code that "
                f"never awaits: {describe(frame)}. Send it again (Ctrl-C) to stop the node.\n"
            )
            return
        if self._presses == 2:
            self._later(self.stop)
            _say(f"\npybeam node: {name}: stopping the node: interrupting {describe(frame)}\n")
            raise KeyboardInterrupt
        _say(f"\npybeam node: {name}: the event loop is still held; exiting at once\n")
        os._exit(1)

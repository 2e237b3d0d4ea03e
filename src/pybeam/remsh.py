"""The remote side of ``pybeam remsh NODE`` (like ``iex --remsh``): a shell
session is a process of this node that keeps the session's namespace and runs
the statements sent to it, one after another, over the distribution.

Interrupting: :func:`interrupt` (the client's Ctrl-C, sent over the
distribution) cancels the statement's awaiting part. A statement that never
awaits holds this node's event loop, so nothing it receives is read until it
ends, the interrupt included: a watchdog thread raises KeyboardInterrupt into
such a statement once it has held the loop for the session's stall limit.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import pybeam

from .interrupt import Beat, in_runtime, on_stack, raise_in_thread
from .kernel import demonitor, monitor, receive, send, spawn
from .kernel import self as _self
from .terms import Pid

__all__ = ["DEFAULT_STALL_LIMIT", "SessionEnded", "close_session", "evaluate", "interrupt", "open_session"]

#: Seconds a statement may hold the node's event loop without awaiting before
#: it is interrupted (``pybeam remsh --stall-limit``).
DEFAULT_STALL_LIMIT = 5.0

_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


# Namespaces by the client's session key: they outlive a session process that
# exits (pybeam.exit, a linked crash), as the local shell's namespace does.
_namespaces: dict[str, dict[str, Any]] = {}


@dataclass
class _Statement:
    """A statement being run: what the watchdog and :func:`interrupt` need."""

    namespace: dict[str, Any]
    limit: float
    thread: int  # the event loop's thread
    beat: Beat
    task: asyncio.Task[Any] | None = None  # its awaiting part, once it awaits
    #: When the watchdog raised into it (0: never), and how long it had held the loop then.
    raised_at: float = 0.0
    held: float = 0.0


# The running statement of each session, by session key.
_running: dict[str, _Statement] = {}
_watchdog_lock = threading.Lock()
_watchdog: threading.Thread | None = None
# One beat per event loop running statements, with how many statements use it.
_beats: dict[asyncio.AbstractEventLoop, tuple[Beat, int]] = {}


def open_session(key: str, client: Pid | None = None, stall_limit: float = DEFAULT_STALL_LIMIT) -> Pid:
    """Start a session process on this node, with the namespace kept for ``key``.

    With ``client`` (a process of the shell's node), the session monitors it
    and ends, namespace and all, when it dies or its node goes away (the
    remsh was killed). ``stall_limit``: seconds a statement may hold the event
    loop without awaiting before the watchdog interrupts it.
    """
    namespace = _namespaces.setdefault(key, {"__name__": "__main__", "asyncio": asyncio, "pybeam": pybeam})
    return spawn(_session, namespace, key, client, stall_limit)


def close_session(key: str, session: Pid | None) -> None:
    """End a session: its process exits (reason ``normal``), its namespace is dropped."""
    _namespaces.pop(key, None)
    if session is not None:
        send(session, ("remsh_close",))


def interrupt(key: str) -> bool:
    """Ctrl-C for session ``key``: cancel its running statement's awaiting
    part (it then prints ``KeyboardInterrupt``). False if none was awaiting."""
    statement = _running.get(key)
    task = statement.task if statement is not None else None
    if task is None or task.done():
        return False
    task.cancel()
    return True


async def evaluate(session: Pid, source: str) -> str:
    """Run one statement in ``session`` and return what it printed (an
    expression's ``repr`` included, as at a prompt) or its traceback."""
    ref = monitor(session)
    send(session, ("remsh_eval", _self(), ref, source))
    reply = await receive(
        lambda m: isinstance(m, tuple) and ((len(m) == 2 and m[0] == ref) or (len(m) == 5 and m[1] == ref))
    )
    if len(reply) == 5:  # ("DOWN", ref, "process", pid, reason): the statement ended the session
        raise SessionEnded(f"** (EXIT) the shell process exited with reason {reply[4]!r}")
    demonitor(ref, flush=True)
    output: str = reply[1]
    return output


class SessionEnded(Exception):
    """The session's process has exited (a statement called ``pybeam.exit``, say)."""


async def _session(namespace: dict[str, Any], key: str, client: Pid | None, stall_limit: float) -> None:
    watch = monitor(client) if client is not None else None
    while True:
        msg = await receive()
        if msg == ("remsh_close",):
            return
        if watch is not None and isinstance(msg, tuple) and len(msg) == 5 and msg[:2] == ("DOWN", watch):
            _namespaces.pop(key, None)
            return
        if not (isinstance(msg, tuple) and len(msg) == 4 and msg[0] == "remsh_eval"):
            continue  # not for us: dropped, so that the mailbox does not grow
        _, sender, ref, source = msg
        statement = _start(key, namespace, stall_limit)
        try:
            output = await _run(source, statement)
        finally:
            _end(key, statement)
        send(sender, (ref, output))


async def _catching(coro: Any) -> BaseException | None:
    # The statement's awaiting part, as a task of its own (so that an
    # interrupt cancels it, not the session): asyncio would let a
    # KeyboardInterrupt or SystemExit out of the event loop, so they become values.
    try:
        await coro
    except (KeyboardInterrupt, SystemExit) as e:
        return e
    return None


async def _run(source: str, statement: _Statement) -> str:
    # Output is captured by swapping sys.stdout for the statement's duration:
    # what other processes print meanwhile is captured too (a known limit).
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = compile(source, "<remsh>", "single", flags=_FLAGS)
            result = eval(code, statement.namespace)
            if inspect.iscoroutine(result):
                task = statement.task = asyncio.ensure_future(_catching(result))
                try:
                    halted = await task
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # the session process itself is being stopped
                    halted = KeyboardInterrupt()  # interrupt() cancelled the statement
                if halted is not None:
                    raise halted
    except pybeam.Exit:
        raise  # the session process is asked to exit: it does
    except BaseException as e:  # SystemExit too: it ends the statement, not the node
        if isinstance(e, asyncio.CancelledError):
            raise
        tb = e.__traceback__  # start at the typed code, not the session's own frames
        while tb is not None and tb.tb_frame.f_code.co_filename != "<remsh>":
            tb = tb.tb_next
        if isinstance(e, KeyboardInterrupt):
            out.write("KeyboardInterrupt")
            if statement.raised_at:
                out.write(
                    f": the statement held the event loop of node {pybeam.node_name()} for "
                    f"{max(statement.held, statement.beat.held_for()):.1f}s without awaiting "
                    "(the remote shell's stall limit)"
                )
            out.write("\n")
        else:
            out.write("".join(traceback.format_exception(type(e), e, tb or e.__traceback__)))
    return out.getvalue()


def _start(key: str, namespace: dict[str, Any], limit: float) -> _Statement:
    # On the loop's thread: watch this statement until _end.
    global _watchdog
    loop = asyncio.get_running_loop()
    beat, users = _beats.get(loop, (None, 0))
    if beat is None:
        beat = Beat(loop)
        beat.start()
    _beats[loop] = (beat, users + 1)
    statement = _Statement(namespace, limit, threading.get_ident(), beat)
    with _watchdog_lock:
        _running[key] = statement
        if _watchdog is None:
            _watchdog = threading.Thread(target=_watch, name="pybeam-remsh-watchdog", daemon=True)
            _watchdog.start()
    return statement


def _end(key: str, statement: _Statement) -> None:
    with _watchdog_lock:
        if _running.get(key) is statement:
            del _running[key]
    loop = statement.beat.loop
    beat, users = _beats[loop]
    if users == 1:
        beat.stop()
        del _beats[loop]
    else:
        _beats[loop] = (beat, users - 1)


def _watch() -> None:
    # The watchdog thread: every 50 ms, interrupt a statement that has held
    # its loop for longer than its limit, if it is what the loop's thread
    # runs. Between that look and the raise, a few microseconds under the
    # GIL, the loop's thread runs only if the interpreter forces a switch
    # right then; a statement that has held the loop for the whole limit
    # ending in that instant would get the KeyboardInterrupt in whatever runs
    # next (a process ends with it). Unlikely enough to be worth the cure.
    while True:
        time.sleep(0.05)
        with _watchdog_lock:
            statements = list(_running.values())
        if not statements:
            continue
        frames = sys._current_frames()
        now = time.monotonic()
        for st in statements:
            held = st.beat.held_for()
            if held < st.limit or now - st.raised_at < st.limit:
                continue
            namespace = st.namespace
            frame = frames.get(st.thread)
            if on_stack(
                frame,
                lambda f: f.f_code.co_filename == "<remsh>" and f.f_globals is namespace,  # noqa: B023
            ) and not in_runtime(frame, "<remsh>"):  # else: at the next look
                st.raised_at, st.held = now, held
                raise_in_thread(st.thread, KeyboardInterrupt)

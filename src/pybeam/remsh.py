"""The remote side of ``pybeam remsh NODE`` (like ``iex --remsh``): a shell
session is a process of this node that keeps the session's namespace and runs
the statements sent to it, one after another, over the distribution."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import traceback
from typing import Any

import pybeam

from .kernel import demonitor, monitor, receive, send, spawn
from .kernel import self as _self
from .terms import Pid

__all__ = ["SessionEnded", "close_session", "evaluate", "open_session"]

_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


# Namespaces by the client's session key: they outlive a session process that
# exits (pybeam.exit, a linked crash), as the local shell's namespace does.
_namespaces: dict[str, dict[str, Any]] = {}


def open_session(key: str, client: Pid | None = None) -> Pid:
    """Start a session process on this node, with the namespace kept for ``key``.

    With ``client`` (a process of the shell's node), the session monitors it
    and ends, namespace and all, when it dies or its node goes away (the
    remsh was killed).
    """
    namespace = _namespaces.setdefault(key, {"__name__": "__main__", "asyncio": asyncio, "pybeam": pybeam})
    return spawn(_session, namespace, key, client)


def close_session(key: str, session: Pid | None) -> None:
    """End a session: its process exits (reason ``normal``), its namespace is dropped."""
    _namespaces.pop(key, None)
    if session is not None:
        send(session, ("remsh_close",))


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


async def _session(namespace: dict[str, Any], key: str, client: Pid | None) -> None:
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
        send(sender, (ref, await _run(source, namespace)))


async def _run(source: str, namespace: dict[str, Any]) -> str:
    # Output is captured by swapping sys.stdout for the statement's duration:
    # what other processes print meanwhile is captured too (a known limit).
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = compile(source, "<remsh>", "single", flags=_FLAGS)
            result = eval(code, namespace)
            if inspect.iscoroutine(result):
                await result
    except pybeam.Exit:
        raise  # the session process is asked to exit: it does
    except BaseException as e:  # SystemExit too: it ends the statement, not the node
        if isinstance(e, asyncio.CancelledError):
            raise
        tb = e.__traceback__  # start at the typed code, not the session's own frames
        while tb is not None and tb.tb_frame.f_code.co_filename != "<remsh>":
            tb = tb.tb_next
        out.write("".join(traceback.format_exception(type(e), e, tb or e.__traceback__)))
    return out.getvalue()

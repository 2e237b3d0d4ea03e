"""Remote procedure calls: run a function on another node and get its result.

Built as OTP's ``erpc`` is, from public parts only: the call spawns a process on
the target node (monitored by the caller) that runs the function and exits with
``("rpc_return", result)``; the caller reads the result from the DOWN. The
request asks for a spawn reply only on error (``reply="error_only"``), so the
DOWN is the one message the caller waits for, and a process that ends at once
is answered by its DOWN alone, one control message each way. So a
node that goes down during a call ends it with :class:`~pybeam.errors.NodeDown`
(the monitor fires ``noconnection``), a remote exception comes back as
:class:`RemoteError` with the remote type, message and traceback, and a timeout
kills the remote process and raises :class:`RpcTimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from . import kernel, net
from .arguments import check_nodes, check_timeout
from .errors import BadArg, Exit, NodeDown, PybeamError
from .expect import check_result
from .functions import function_name, resolve_function
from .nodename import check_node_name
from .process import Process, current_process
from .terms import NOCONNECTION, Crash, Ref

__all__ = ["RemoteError", "RpcError", "RpcTimeout", "call", "cast", "multicall"]

DEFAULT_TIMEOUT = 5.0

T = TypeVar("T")
logger = logging.getLogger("pybeam")


class RpcError(PybeamError):
    """A remote call did not return a result.

    ``reason`` is the exit reason of the process that ran it, when it exited
    (``exit("boom")`` there gives ``"boom"``, as ``{badrpc, {'EXIT', boom}}``).
    """

    reason: Any = None


class RemoteError(RpcError):
    """The called function raised on the other node.

    ``kind`` is the remote exception's type name, ``message`` its text and
    ``remote_traceback`` its formatted traceback.
    """

    def __init__(self, node: str, fn: str, crash: Crash) -> None:
        super().__init__(f"{fn} raised on {node}: {crash.kind}: {crash.message}")
        self.node = node
        self.kind = crash.kind
        self.message = crash.message
        self.remote_traceback = crash.traceback


class RpcTimeout(RpcError, TimeoutError):
    """The remote call did not finish in time (the remote process is killed)."""


#: Result types that are never awaitable.
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset})


async def _execute(fn_name: str, *args: Any) -> None:
    # Runs on the called node, as a process monitored by the caller. An
    # exception is the caller's to handle: it is its exit reason, not a crash
    # report on this node (as erpc does). The arguments come flat, after the
    # name: a spawn request one level less deep is cheaper to encode.
    try:
        result = resolve_function(fn_name)(*args)
        # Plain data first: inspect.isawaitable's ABC check costs more than the call.
        if type(result) not in _PLAIN and inspect.isawaitable(result):
            result = await result
    except (Exception, SystemExit, KeyboardInterrupt) as e:
        # SystemExit and KeyboardInterrupt too: in a process they are a
        # crash like any other, and this one is the caller's to report.
        raise Exit(Crash.from_exception(e)) from None
    proc = current_process()
    reason: tuple[Any, ...] = ("rpc_return", result)
    if proc is not None and proc.links:
        warning = _left_linked(fn_name, proc)
        if warning is not None:
            logger.warning("%s", warning)
            reason = ("rpc_return", result, warning)
    if proc is not None and proc.alive:
        # What raising Exit(reason) comes to (the process ends with that
        # reason, before any other process runs), without the exception's
        # cost, a tenth of the callee's work in an rpc: the step that ran
        # this (ProcessTask._step) then finds the process ended.
        proc.node.terminate(proc, reason, False)
        return
    raise Exit(reason)


def _left_linked(fn_name: str, proc: Process) -> str | None:
    """The start_link trap: a process the function linked to this short-lived
    one (``proc``, which has links) that traps exits (a supervisor, a
    GenServer) stops when it exits. Say so."""
    assert proc.links is not None
    node = proc.node
    linked = sorted(p for p in proc.links if (other := node.process(p)) is not None and other.trap_exit)
    if not linked:
        return None
    pids = ", ".join(map(repr, linked))
    return (
        f"rpc of {fn_name} on {node.name}: its process was linked to {pids}, which trap exits and get its "
        "exit signal as it ends: a supervisor or GenServer started with start_link in an rpc stops at "
        "once. Start it with start() instead, or as an application (pybeam node --app, see docs/otp.md)"
    )


_EXECUTE = function_name(_execute)

#: The names of the functions called lately (a program calls a few, again
#: and again): function_name's checks once per function.
_names: dict[Any, str] = {}
_NAMES_LIMIT = 1024


def _name(fn: Callable[..., Any] | str) -> str:
    try:
        name = _names.get(fn)
    except TypeError:  # unhashable (a bound method of an unhashable object, say)
        name = None
    if name is not None:
        return name
    try:
        name = function_name(fn)
    except ValueError as e:
        raise BadArg(str(e)) from None
    if len(_names) >= _NAMES_LIMIT:
        _names.clear()
    with contextlib.suppress(TypeError):  # unhashable: not kept
        _names[fn] = name
    return name


def _outcome(node: str, fn: str, reason: Any) -> Any:
    """The call's result from the DOWN reason, or the error it stands for."""
    match reason:
        case ("rpc_return", value):
            return value
        case ("rpc_return", value, str() as warning):
            logger.warning("%s", warning)
            return value
        case Crash() as crash:
            return RemoteError(node, fn, crash)
        case "noconnection":
            return NodeDown(node, f"node {node} went down during a call to {fn} (noconnection)")
        case _:
            error = RpcError(f"{fn} on {node} exited with {reason!r}")
            error.reason = reason
            return error


@overload
async def call(
    node: str,
    fn: Callable[..., Any] | str,
    *args: Any,
    timeout: float | None = ...,
    expect: None = ...,
) -> Any: ...


@overload
async def call(
    node: str, fn: Callable[..., Any] | str, *args: Any, timeout: float | None = ..., expect: type[T]
) -> T: ...


async def call(
    node: str,
    fn: Callable[..., Any] | str,
    *args: Any,
    timeout: float | None = DEFAULT_TIMEOUT,
    expect: type[Any] | None = None,
) -> Any:
    """Run ``fn(*args)`` on ``node`` and return its result (``rpc:call``).

    ``expect``: the result's type, for the type checker (the call is typed as
    returning it) and checked at run time: a result of another type raises
    :class:`~pybeam.expect.UnexpectedResult` (a ``TypeError``).

    ``fn`` is a module-level function (sync or async) or ``"module:function"``.
    Raises :class:`RemoteError` if it raised there, :class:`NodeDown` if the
    node cannot be reached or goes down, :class:`RpcTimeout` after ``timeout``
    seconds (None: wait as long as it takes). Cancelled, it kills the remote
    process and leaves nothing of the call in the caller's mailbox. A function
    that blocks (``time.sleep``) stalls the whole target node until it returns,
    so a timeout cannot stop it there.
    """
    name = _name(fn)
    seconds = check_timeout(timeout)
    me = kernel._me()
    ref = net._spawn_monitored(node, _EXECUTE, (name, *args), me)
    try:
        # kernel.receive's work for a predicate and a checked timeout, without its calls.
        answer = await me.receive(_answer(ref), seconds, None)
    except BaseException:
        net._undo_spawn(ref)
        raise
    if answer is None:
        if not net._undo_spawn(ref):
            # No spawn reply: the node did not answer at all. The function may
            # well have started and be blocking that node's event loop
            # (time.sleep, a busy loop), which stops it from answering anything.
            raise RpcTimeout(
                f"{name} on {node}: no answer from {node} within {timeout}s (is the node overloaded, "
                "or is a function blocking its event loop, e.g. time.sleep?)"
            )
        raise RpcTimeout(f"{name} on {node} did not return within {timeout}s")
    if answer[0] == "spawn_reply":
        if answer[3] == NOCONNECTION:
            raise net._node_down(node)
        raise RpcError(f"node {node} could not spawn {name}: {answer[3]}")
    reason = answer[4]
    if type(reason) is tuple and len(reason) == 2 and reason[0] == "rpc_return":
        # The commonest outcome, without _outcome's match statement.
        return reason[1] if expect is None else check_result(f"{name} on {node}", reason[1], expect)
    outcome = _outcome(node, name, reason)
    if isinstance(outcome, BaseException):
        raise outcome
    return check_result(f"{name} on {node}", outcome, expect)


def _answer(ref: Ref) -> Callable[[Any], bool]:
    """What answers a call's spawn request ``ref`` (made with ``reply="error_only"``
    and a monitor): its DOWN, or a spawn error."""

    def answer(msg: Any) -> bool:
        return (
            type(msg) is tuple
            and len(msg) >= 4
            # The ref sent comes back as this very object (see pybeam.codec):
            # no Ref.__eq__ call, which ``==`` makes even for the same object.
            and (msg[1] is ref or msg[1] == ref)
            and ((msg[0] == "DOWN" and len(msg) == 5) or msg[0] == "spawn_reply")
        )

    return answer


def cast(node: str, fn: Callable[..., Any] | str, *args: Any) -> None:
    """Run ``fn(*args)`` on ``node`` without waiting for anything (``rpc:cast``)."""
    check_node_name(node)
    net.spawn_request(node, _EXECUTE, _name(fn), *args, reply=False)


async def multicall(
    nodes: Sequence[str], fn: Callable[..., Any] | str, *args: Any, timeout: float | None = DEFAULT_TIMEOUT
) -> tuple[list[Any], list[str]]:
    """Call ``fn(*args)`` on every node at once; returns ``(results, bad_nodes)``.

    ``results`` holds, in the order of ``nodes``, each answering node's result
    (or the :class:`RemoteError` it raised); ``bad_nodes`` the nodes that could
    not be reached, went down or did not answer in time. Cancelled, it kills
    the remote processes and leaves nothing of the calls in the caller's mailbox.
    """
    targets = check_nodes(nodes)
    name = _name(fn)
    seconds = check_timeout(timeout)
    waiting: dict[Ref, str] = {}
    try:
        for node in targets:
            waiting[net._spawn_monitored(node, _EXECUTE, (name, *args))] = node
        return await _gather(targets, name, seconds, waiting)
    except BaseException:
        for ref in waiting:
            net._undo_spawn(ref)
        raise


async def _gather(
    nodes: list[str], name: str, timeout: float | None, waiting: dict[Ref, str]
) -> tuple[list[Any], list[str]]:
    """multicall's wait for the ``waiting`` calls, kept up to date as answers
    come, so that a cancelled multicall knows what it still has to undo."""
    outcomes: dict[str, Any] = {}
    bad: set[str] = set()
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout

    def ours(msg: Any) -> bool:
        return (
            type(msg) is tuple and len(msg) >= 4 and msg[0] in ("spawn_reply", "DOWN") and msg[1] in waiting
        )

    while waiting:
        left = None if deadline is None else max(deadline - loop.time(), 0.0)
        msg = await kernel.receive(ours, timeout=left, default=None)
        if msg is None:
            break
        node = waiting.pop(msg[1])
        if msg[0] == "spawn_reply":
            if msg[3] == NOCONNECTION:
                bad.add(node)
            else:
                outcomes[node] = RpcError(f"node {node} could not spawn {name}: {msg[3]}")
            continue
        outcome = _outcome(node, name, msg[4])
        if isinstance(outcome, NodeDown):
            bad.add(node)
        else:
            outcomes[node] = outcome
    for ref, node in waiting.items():
        net._undo_spawn(ref)
        bad.add(node)
    waiting.clear()
    results = [outcomes[n] for n in nodes if n in outcomes and n not in bad]
    return results, [n for n in nodes if n in bad]

"""The functions processes use, named as BEAM names them: ``spawn``, ``send``,
``receive``, ``link``, ``monitor``, ``exit``, ``register`` and the rest.

Each acts for the calling process. Code that is not a process (a script's
main, a test) becomes one the first time it calls any of them, as ExUnit's
test process is one: it can send, receive, link and monitor like any other.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, overload

from .arguments import check_delay, check_timeout
from .errors import BadArg, Exit
from .mailbox import _DONE, _IDLE, _PENDING, NO_DEFAULT, _current_task, _pop
from .mailbox import waiting as _waiting
from .node import current_node
from .pattern import compile_pattern
from .process import Process, _call, _current
from .scheduler import ProcessTask
from .speedups import speedups
from .terms import Pid, Ref

__all__ = [
    "cancel_timer",
    "demonitor",
    "exit",
    "is_alive",
    "link",
    "make_ref",
    "monitor",
    "node_name",
    "process_flag",
    "process_info",
    "processes",
    "read_timer",
    "receive",
    "register",
    "registered",
    "self",
    "send",
    "send_after",
    "spawn",
    "spawn_link",
    "spawn_monitor",
    "trap_exit",
    "unlink",
    "unregister",
    "whereis",
]


_INF = float("inf")


def _me() -> Process:
    proc = _current.get()
    if proc is None or (proc.adopted and not proc.alive):
        # A task that is not a process becomes one. An adopted process that
        # has ended belongs to a task that has ended: this task inherited its
        # context (as pytest-asyncio hands a fixture's context to the test).
        proc = current_node().adopt()
    return proc


def self() -> Pid:
    """The pid of the calling process."""
    return _me().pid


def spawn(fn: Callable[..., Any], *args: Any) -> Pid:
    """Start ``fn(*args)`` as a new process and return its pid at once.

    ``fn`` is usually an async function; a plain function runs in the process
    too (and blocks the event loop while it runs).
    """
    proc = _current.get()
    pid, _ = (proc.node if proc is not None else current_node()).spawn(fn, args)
    return pid


def spawn_link(fn: Callable[..., Any], *args: Any) -> Pid:
    """Like :func:`spawn`, and link the new process to the caller atomically."""
    me = _me()
    pid, _ = me.node.spawn(fn, args, link=me)
    return pid


def spawn_monitor(fn: Callable[..., Any], *args: Any) -> tuple[Pid, Ref]:
    """Like :func:`spawn`, and monitor the new process; returns ``(pid, ref)``."""
    me = _me()
    pid, ref = me.node.spawn(fn, args, monitor=me)
    assert ref is not None
    return pid, ref


def send(dest: Any, msg: Any) -> Any:
    """Send ``msg`` to a pid, a registered name or ``(name, node)``; returns ``msg``.

    Sending to a dead pid is not an error (the message is dropped, as in
    BEAM); sending to a name nobody registered raises :class:`BadArg`.
    """
    proc = _current.get()
    if type(dest) is Pid:
        # The hot path: the pid a spawn returned leads to its live process
        # (while it lives) without hashing it. Only within one node: a pid of
        # another node in this interpreter is reached through the distribution.
        target = dest._proc
        if target is not None and proc is not None and target.node is proc.node:
            # Mailbox.put's two common cases without the call.
            w = target._waiter
            if w is None:
                q = target._queue
                if q is not None:  # nobody waits, the queue exists
                    q.append(msg)
                    return msg
            elif target._takes and w._state == _PENDING:
                # The process's own task waits for any message: hand it over
                # (Wake.set_result without the call), and run it soon.
                target._waiter = None
                target._handed = w
                w._result = msg
                w._state = _DONE
                task = w._task
                if task is not None and task._fut_waiter is w:
                    runq = task._runq
                    if runq._scheduled:
                        runq._queue.append(task)
                    else:
                        runq.ready(task)
                if w._callbacks is not None:
                    w._call_back()
                return msg
            target.put(msg)
            return msg
        if proc is not None:
            # Another node's pid: to the distribution, as Node.send would,
            # without that call on every remote send.
            node = proc.node
            if dest.node != node.name:
                remote = node.remote
                if remote is not None:
                    remote.send(dest, msg)
                return msg
    elif type(dest) is str and proc is not None:
        # A registered name of the caller's node (None: Node.send raises).
        target = proc.node._names.get(dest)
        if target is not None:
            target.put(msg)
            return msg
    # A pid that came another way (decoded from a message, say), a dead or a
    # remote one: the node looks it up once, or tells the distribution.
    (proc.node if proc is not None else current_node()).send(dest, msg)
    return msg


def _receive(pattern: Any = None, timeout: float | None = None, default: Any = NO_DEFAULT) -> Awaitable[Any]:
    """Take a message from the caller's mailbox: ``msg = await receive()``.

    With ``pattern`` (a predicate or a pattern, see :mod:`pybeam.pattern`) it
    takes the first message that matches and leaves the others in order.
    ``timeout`` is in seconds (0 polls); when it passes, ``default`` is
    returned, or ``TimeoutError`` raised if no default was given. A timeout
    that is not None or a number >= 0 is a :class:`BadArg`.
    """
    proc = _current.get()
    if proc is not None and pattern is None and timeout is None and proc.suspended_on is None:
        # The hot path, Mailbox.receive_any's two common cases without the
        # call: a message is queued (a process that has ended has no queue)...
        q = proc._queue
        if q:
            return _pop(q)
        # ... or the process's own task waits for the next message, which
        # Mailbox.put hands to this wake (see pybeam.scheduler).
        task = proc.task
        if type(task) is ProcessTask:  # not adopted
            w = proc._waiter
            if w is None or w.done():
                loop = proc.node.loop
                if loop is not None and _current_task(loop) is task:
                    proc._handed = None
                    # ProcessTask._park without the call: the last wake again.
                    wake = task._wake
                    if wake is not None and wake._state == _IDLE:
                        wake._state = _PENDING
                    else:
                        wake = task._park()
                    proc._waiter = wake
                    proc._takes = True
                    return _waiting(wake, proc)
    if timeout is not None and not ((type(timeout) is int or type(timeout) is float) and 0 <= timeout < _INF):
        timeout = check_timeout(timeout)  # BadArg, or None for infinity
    if proc is None or (proc.adopted and not proc.alive):
        proc = _me()
    if pattern is None and timeout is None:
        return proc.receive_any()
    return proc.receive(None if pattern is None else compile_pattern(pattern), timeout, default)


# receive's timeout and default are keyword-only for type checkers (and in
# its signature), but not at run time: CPython 3.11 does not specialize calls
# to a function with keyword-only parameters, which costs every receive()
# about 20 ns, a tenth of the local one-way hot path.
if TYPE_CHECKING:

    def receive(
        pattern: Any = None, *, timeout: float | None = None, default: Any = NO_DEFAULT
    ) -> Awaitable[Any]:
        """Take a message from the caller's mailbox (see :func:`_receive`)."""
        ...

else:
    receive = _receive
    receive.__name__ = receive.__qualname__ = "receive"
    receive.__signature__ = inspect.signature(lambda pattern=None, *, timeout=None, default=NO_DEFAULT: None)

_send = send  # the Python code, which the compiled send falls back on

if not TYPE_CHECKING and speedups is not None:
    # The compiled hot path (see pybeam.speedups) falls back on the Python
    # code, and shows its names, docstrings and signatures: to help(), to
    # inspect, and to another node, which finds "pybeam.kernel:send" by name
    # whichever code it runs.
    speedups.setup_kernel(send=_send, receive=_receive, current=_current)
    receive = functools.update_wrapper(speedups.receive, _receive)
    send = speedups.send
    send.__module__ = __name__


def link(pid: Pid) -> None:
    """Link the caller and ``pid``: when either ends abnormally, so does the
    other (or, trapping exits, it gets an ``("EXIT", pid, reason)`` message).

    A local pid that is not alive raises :class:`NoProc`, or, if the caller
    traps exits, sends it ``("EXIT", pid, "noproc")`` (as BEAM); for a pid on
    a node that cannot be reached the caller gets exit ``noconnection``.
    """
    me = _me()
    me.node.link(me, pid)


def unlink(pid: Pid) -> None:
    """Remove the link between the caller and ``pid``, if there is one."""
    me = _me()
    me.node.unlink(me, pid)


def monitor(target: Any) -> Ref:
    """Monitor a pid, a registered name or ``(name, node)``.

    When it ends the caller gets ``("DOWN", ref, "process", pid_or_name,
    reason)``: at once with reason ``noproc`` if it is not alive.
    """
    me = _me()
    return me.node.monitor(me, target)


def demonitor(ref: Ref, *, flush: bool = False, info: bool = False) -> bool:
    """Stop monitoring; with ``flush``, also drop a DOWN for ``ref`` already
    received. Returns True, as BEAM's ``demonitor/2`` does; with ``info``,
    whether the monitor was still active (False: it had fired, or never was)."""
    me = _me()
    active = me.node.demonitor(me, ref, flush)
    return active if info else True


@overload
def exit(reason: Any, /) -> NoReturn: ...


@overload
def exit(pid: Pid, reason: Any, /) -> None: ...


def exit(*args: Any) -> None:
    """``exit(reason)`` ends the caller with ``reason`` (it raises :class:`Exit`).

    ``exit(pid, reason)`` sends an exit signal: ``"kill"`` ends any process
    with reason ``killed``; other reasons end a process that does not trap
    exits (``"normal"`` is ignored) and reach one that does as a message.
    A signal that ends the caller itself takes effect at once: ``exit``
    raises :class:`Exit` with the caller's exit reason, as in BEAM the next
    statement never runs.
    """
    if len(args) == 1:
        raise Exit(args[0])
    if len(args) != 2:
        raise TypeError(f"exit takes (reason) or (pid, reason), got {len(args)} arguments")
    pid, reason = args
    me = _me()
    me.node.exit(me.pid, pid, reason)
    if pid == me.pid and not me.alive:
        raise Exit(me.reason)


def trap_exit(flag: bool) -> bool:
    """Turn exit trapping on or off for the caller; returns the old value."""
    me = _me()
    old, me.trap_exit = me.trap_exit, bool(flag)
    return old


def process_flag(flag: str, value: Any) -> Any:
    """Set a process flag and return its old value. Only ``"trap_exit"`` exists."""
    if flag != "trap_exit":
        raise BadArg(f"unknown process flag {flag!r}")
    return trap_exit(value)


def register(name: str, pid: Pid | None = None) -> None:
    """Register ``pid`` (the caller if omitted) under ``name`` on this node.

    A name taken, a pid already named or a dead pid raise :class:`BadArg`.
    The name is freed when the process ends.
    """
    node = current_node()
    node.register(name, pid if pid is not None else _me().pid)


def unregister(name: str) -> None:
    """Remove a registered name; raises :class:`BadArg` if it is not registered."""
    current_node().unregister(name)


def whereis(name: str) -> Pid | None:
    """The pid registered as ``name`` on this node, or None."""
    return current_node().whereis(name)


def registered() -> list[str]:
    """Every name registered on this node."""
    return current_node().registered()


def send_after(delay: float, dest: Any, msg: Any) -> Ref:
    """Send ``msg`` to ``dest`` after ``delay`` seconds (a number >= 0); returns a timer ref.

    A timer aimed at a local pid is cancelled when that process ends.
    """
    return current_node().send_after(check_delay(delay), dest, msg)


def cancel_timer(ref: Ref) -> float | bool:
    """Cancel a timer: the seconds it had left, or False if it already fired
    (or was cancelled, or died with the process it was aimed at)."""
    return current_node().cancel_timer(ref)


def read_timer(ref: Ref) -> float | bool:
    """The seconds left on a timer, or False if it is not running."""
    return current_node().read_timer(ref)


def make_ref() -> Ref:
    """A new reference, unique in the cluster."""
    return current_node().make_ref()


def is_alive(pid: Pid) -> bool:
    """True if ``pid`` is a live process of this node."""
    return current_node().process(pid) is not None


def processes() -> list[Pid]:
    """The pids of every live process on this node."""
    return current_node().processes()


def node_name() -> str:
    """The name of the node the caller runs on (``erlang:node()``)."""
    return current_node().name


def process_info(pid: Pid) -> dict[str, Any] | None:
    """A snapshot of a live local process, or None if it is not alive
    (``erlang:process_info/1``); ``memory`` is an estimate in bytes (see
    :func:`pybeam.observer.memory`), ``reductions`` how many times the event
    loop resumed it."""
    from .observer import memory  # observer builds on this module

    proc = current_node().process(pid)
    if proc is None:
        return None
    return {
        "registered_name": proc.name,
        "initial_call": _initial_call(proc),
        "status": _status(proc),
        "message_queue_len": len(proc),
        "messages": proc.messages(),
        "links": sorted(proc.links or ()),
        "monitors": list((proc.monitors or {}).items()),
        "monitored_by": [watcher for watcher, _ in (proc.monitored_by or {}).values()],
        "trap_exit": proc.trap_exit,
        "memory": memory(proc),
        "reductions": proc.reductions,
    }


def _initial_call(proc: Process) -> str | None:
    # Read off the task's coroutine on demand rather than recorded at spawn,
    # which keeps spawn as cheap as it was.
    task = proc.task
    if task is None:
        return None
    coro: Any = task.get_coro()  # the function's own, for a spawned process's task too
    frame = getattr(coro, "cr_frame", None)
    code = getattr(coro, "cr_code", None)
    if code is None:
        return None
    if code is _call.__code__ and frame is not None:
        # A plain function runs inside the runtime's small `_call` coroutine.
        fn = frame.f_locals.get("fn")
        module = getattr(fn, "__module__", None) or "?"
        return f"{module}:{getattr(fn, '__qualname__', repr(fn))}"
    module = frame.f_globals.get("__name__", "?") if frame is not None else "?"
    return f"{module}:{getattr(coro, '__qualname__', code.co_qualname)}"


def _status(proc: Process) -> str:
    # BEAM's three that matter here: exiting (killed, its code not yet
    # stopped), waiting (blocked in receive), running (everything else:
    # runnable or awaiting something other than its mailbox).
    task = proc.task
    if not proc.alive or (task is not None and task.cancelling()):
        return "exiting"
    if proc._waiter is not None or proc._wait is not None:
        return "waiting"
    return "running"

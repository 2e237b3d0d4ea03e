"""Functions about nodes: connect, disconnect, list, ping, monitor, spawn on.

Elixir's ``Node`` module and Erlang's ``net_kernel`` / ``net_adm``, for the
node the caller runs on. They need a distributed node (one started with a
name); on any other they raise :class:`~pybeam.errors.NotDistributed`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, overload

from . import kernel
from .distribution.net_kernel import NetKernel
from .distribution.signals import ERROR_ONLY
from .errors import BadArg, NodeDown, NotDistributed, SpawnError
from .functions import function_name, resolve_function
from .kernel import _me, receive
from .node import Node, current_node
from .nodename import check_node_name, parse_address
from .pattern import ANY, compile_pattern
from .process import Process
from .terms import KILL, NOCONNECTION, Pid, Ref

__all__ = [
    "busy_wait",
    "connect",
    "connect_failure",
    "disconnect",
    "drain",
    "get_cookie",
    "monitor_nodes",
    "node_info",
    "nodes",
    "ping",
    "set_cookie",
    "spawn_on",
    "spawn_request",
    "spawn_request_abandon",
]


def _kernel(node: Node | None = None) -> NetKernel:
    node = node or current_node()
    dist = node.dist
    if not isinstance(dist, NetKernel):
        raise NotDistributed(
            f"node {node.name} is not distributed: start it with a name, e.g. Node('a@127.0.0.1')"
        )
    return dist


def node_info(node: str) -> dict[str, Any] | None:
    """The connection to ``node``, as ``net_kernel:node_info/1`` gives it:
    ``bytes_out``, ``bytes_in``, ``queued`` (bytes waiting to be sent),
    ``busy`` (over the busy limit), ``last_received``, ``last_sent`` (seconds
    since) and ``ticktime``; None if no connection to it is up."""
    name = parse_address(node)[0]
    dist = current_node().dist
    return dist.connection_info(name) if isinstance(dist, NetKernel) else None


def busy_wait() -> dict[str, Any]:
    """This node's busy waiting after traffic (see :mod:`pybeam.distribution.busy_wait`):
    ``threshold`` (seconds; 0: off), ``spinning`` (polling now), ``spins``
    (loop iterations spent polling so far), ``preempted`` (spins cut short
    because another thread took the core) and ``crowded`` (spins not started
    or cut short because the machine had no idle core)."""
    spinner = _kernel().busy_wait
    if spinner is None:
        return {"threshold": 0.0, "spinning": False, "spins": 0, "preempted": 0, "crowded": 0}
    return {
        "threshold": spinner.threshold,
        "spinning": spinner.spinning,
        "spins": spinner.spins,
        "preempted": spinner.preempted,
        "crowded": spinner.crowded,
    }


async def connect(node: str) -> bool:
    """Connect to ``node`` (``name@host`` or ``name@host:port``); True once up.

    False if it cannot be reached or refuses us (a wrong cookie, say);
    :class:`BadArg` (a ``ValueError``) if ``node`` is no valid address.
    """
    parse_address(node)
    return await _kernel().connect(node)


def connect_failure(node: str) -> str | None:
    """Why the last attempt to connect to ``node`` failed, None if it did not
    (:func:`connect` returns only a bool, as ``net_kernel:connect_node``).

    E.g. ``"cookie refused by peer (...)"``, ``"node b@127.0.0.1 is not
    registered with the port mapper on 127.0.0.1"``, ``"connection refused (...)"``.
    """
    name = parse_address(node)[0]
    dist = current_node().dist
    return dist.connect_failure(name) if isinstance(dist, NetKernel) else None


def _node_down(node: str) -> NodeDown:
    """The NodeDown for ``node``, with why connecting to it failed if known."""
    try:
        reason = connect_failure(node)
    except (ValueError, LookupError):
        reason = None
    return NodeDown(node, reason=reason)


async def drain(node: str) -> None:
    """Wait until what this node has queued to ``node`` is below the busy
    limit (at once if it is, or if ``node`` is not connected).

    A process that sends to a busy connection waits for this at its next
    ``receive`` by itself (as BEAM suspends it); code outside any process,
    which nothing suspends, calls this between sends.
    """
    check_node_name(node)
    await _kernel().drain(node)


def disconnect(node: str) -> bool:
    """Close the connection to ``node`` (both sides see nodedown); False if none."""
    parse_address(node)
    return _kernel().disconnect(node)


def nodes(*, hidden: bool = False) -> list[str]:
    """The nodes this node is connected to (``Node.list()``); [] if not distributed."""
    dist = current_node().dist
    if not isinstance(dist, NetKernel):
        return []
    return dist.nodes(hidden=hidden)


async def ping(node: str) -> Literal["pong", "pang"]:
    """``"pong"`` if ``node`` can be reached (connecting to it), else ``"pang"``."""
    return "pong" if await connect(node) else "pang"


def monitor_nodes(flag: bool = True) -> None:
    """Have the caller receive ``("nodeup", node)`` and ``("nodedown", node)``."""
    me = _me()
    _kernel(me.node).monitor_nodes(me.pid, flag)


def set_cookie(cookie: str, node: str | None = None) -> None:
    """Use ``cookie`` for every later connection of this node; with ``node``,
    only for connections with that node, whichever side opens them
    (``erlang:set_cookie/2``)."""
    _kernel().set_cookie(cookie, node)


def get_cookie() -> str:
    """This node's cookie."""
    return _kernel().cookie


def spawn_request(
    node: str,
    fn: Callable[..., Any] | str,
    *args: Any,
    link: bool = False,
    monitor: bool = False,
    reply: bool | Literal["error_only"] = True,
) -> Ref:
    """Ask ``node`` to spawn ``fn(*args)``, without waiting (``erlang:spawn_request``).

    The answer comes to the caller as ``("spawn_reply", ref, "ok", pid)`` or
    ``("spawn_reply", ref, "error", reason)`` (reason ``"noconnection"`` if the
    node cannot be reached); with ``reply=False`` nothing comes, and nothing
    is linked or monitored; with ``reply="error_only"`` only an error comes
    (``{reply, error_only}``: with ``monitor``, the DOWN is the only other
    news of the process, and names its pid). With ``monitor`` the monitor's
    ref is ``ref``; ``link`` and ``monitor`` are set up atomically with the
    spawn. ``fn`` is a module-level function (sync or async) or ``"module:function"``.
    """
    if reply is not True and reply is not False and reply != ERROR_ONLY:
        raise BadArg(f"reply is True, False or 'error_only', got {reply!r}")
    check_node_name(node)
    me = _me()
    local = me.node
    try:
        name = function_name(fn)
    except ValueError as e:
        raise BadArg(str(e)) from None
    if node != local.name:
        return _kernel(local).spawn_request(
            me.pid, node, name, args, link=link and bool(reply), monitor=monitor and bool(reply), reply=reply
        )
    ref = local.make_ref()
    try:
        target = fn if callable(fn) else resolve_function(fn)
    except Exception as e:
        if reply:
            me.put(("spawn_reply", ref, "error", f"cannot spawn {name}: {e!r}"))
        return ref
    if not reply:
        local.spawn(target, args)
        return ref
    pid, mref = local.spawn(target, args, link=me if link else None, monitor=me if monitor else None)
    ref = mref or ref
    if reply is True:
        me.put(("spawn_reply", ref, "ok", pid))
    return ref


def _spawn_monitored(node: str, fn_name: str, args: tuple[Any, ...], me: Process | None = None) -> Ref:
    """``spawn_request(node, fn_name, *args, monitor=True, reply="error_only")``
    for rpc, whose ``fn_name`` is a checked name already: to another node,
    without the general path's argument handling. ``me``: the caller's
    process, if the caller has it already."""
    check_node_name(node)
    if me is None:
        me = _me()
    local = me.node
    if node == local.name:
        return spawn_request(node, fn_name, *args, monitor=True, reply=ERROR_ONLY)
    return _kernel(local).spawn_request(me.pid, node, fn_name, args, monitor=True, reply=ERROR_ONLY)


def spawn_request_abandon(ref: Ref) -> bool:
    """Give up on a spawn request (``erlang:spawn_request_abandon``): when its
    reply comes, what was spawned is killed and nothing is delivered.

    False if the reply has already been delivered (or ``ref`` is no request):
    then it is in the caller's mailbox and what it spawned runs.
    """
    me = _me()
    dist = me.node.dist
    return isinstance(dist, NetKernel) and dist.abandon_spawn(ref)


def _undo_spawn(ref: Ref) -> bool:
    """The caller gave up on spawn request ``ref`` (timed out, or cancelled):
    stop what it started and leave nothing of it in the caller's mailbox.

    Synchronous, so that a cancelled caller can run it before it re-raises.
    Returns False if the request was still unanswered (the net kernel kills
    what it started when its reply comes), True if it had been answered.
    """
    me = _me()
    if spawn_request_abandon(ref):
        return False  # the reply is still to come: the net kernel kills what it started
    reply = compile_pattern(("spawn_reply", ref, ANY, ANY))
    late = next((m for m in me.messages() if reply(m)), None)
    if late is not None:
        me.remove_matching(reply)
        if late[2] != "ok":
            return True
        pid = late[3]
    else:
        # Answered without a message (reply="error_only"), or already
        # taken: the monitor, while it is up, names what was spawned.
        monitors = me.monitors
        target = monitors.get(ref) if monitors is not None else None
        if type(target) is not Pid:
            kernel.demonitor(ref, flush=True)  # a DOWN that came: dropped
            return True
        pid = target
    # Unlinked first: the kill must not come back to the caller as a link's exit.
    kernel.unlink(pid)
    kernel.demonitor(ref, flush=True)
    kernel.exit(pid, KILL)
    return True


@overload
async def spawn_on(
    node: str, fn: Callable[..., Any] | str, *args: Any, link: bool = ..., monitor: Literal[False] = ...
) -> Pid: ...


@overload
async def spawn_on(
    node: str, fn: Callable[..., Any] | str, *args: Any, link: bool = ..., monitor: Literal[True]
) -> tuple[Pid, Ref]: ...


async def spawn_on(
    node: str, fn: Callable[..., Any] | str, *args: Any, link: bool = False, monitor: bool = False
) -> Pid | tuple[Pid, Ref]:
    """Spawn ``fn(*args)`` on ``node`` and return its pid (``(pid, ref)`` with
    ``monitor=True``); with ``link`` it is linked to the caller, atomically.

    ``fn`` is a module-level function (sync or async) or ``"module:function"``:
    the other node imports it by that name, so it must be importable there.
    Raises :class:`NodeDown` if ``node`` cannot be reached and
    :class:`SpawnError` if it cannot find the function. Cancelled while
    waiting, it kills what it may have spawned.
    """
    ref = spawn_request(node, fn, *args, link=link, monitor=monitor)
    try:
        _, _, status, value = await receive(("spawn_reply", ref, ANY, ANY))
    except BaseException:
        _undo_spawn(ref)
        raise
    if status == "ok":
        return (value, ref) if monitor else value
    if value == NOCONNECTION:
        raise _node_down(node)
    raise SpawnError(
        f"node {node} could not spawn {fn if isinstance(fn, str) else function_name(fn)}: {value}"
    )

"""Network partitions for tests (Elixir's Schism): cut a group of nodes off, then heal it.

::

    await partition([n1, n2])   # n1 and n2 still see each other; nobody else sees them
    ...
    await heal([n1, n2])        # everybody is connected again

Semantics, as Schism's:

- The nodes of the group stay connected among themselves and lose every
  connection to nodes outside the group (but the manager's, see below):
  ``nodedown`` fires on both sides, and
  links and monitors across get ``noconnection``.
- Until healed, nothing crosses: a message sent across is dropped, a call
  across fails with :class:`~pybeam.errors.NodeDown`. Every attempt to
  reconnect fails because the group's cookie has been changed to a fresh random
  one that only the group knows.
- :func:`heal` gives the group back the original cookie (the manager's) and
  connects each of its nodes to the others and to every node the manager knows
  of that is not in a partition, the manager included.
- A node of the group that is down (when partitioned, later, or dying while
  the partition is made) stays a member: :meth:`LocalCluster.restart_node
  <pybeam.testing.LocalCluster.restart_node>` starts its new incarnation with
  the partition's cookie, so it comes back on its side, reaches only that
  side's nodes (and the manager, if kept), and is healed with the others.
- A LocalCluster's restart or new node and a partition or heal made by its
  manager take turns (they hold one lock): a node is never started with a
  partition's cookie that a heal is taking back, nor partitioned while it boots.

The manager (the node that induced the partition) stays connected to the
group, as in Elixir's Schism, so that a test can still look at both sides and
heal them; ``keep_manager=False`` cuts it off like any other node outside, so
that it sees what the rest of the cluster sees.

Several partitions can be in force at once (each has its own cookie), a node
can be moved from one partition to another, and the manager (the node that
calls these functions) may be in a group itself.

How: the manager does the work by rpc. It first gives every node of the group
the new cookie (live connections stay up), then has each of them disconnect
from the nodes outside the group (except the manager: a function called by
rpc must not cut the connection its answer goes back on), then disconnects
itself from the group. To reach a partitioned node later (to heal it, or to
move it), the manager keeps each partitioned node's cookie and uses it for
that node alone (``set_cookie(cookie, node=n)``), and forgets it right after,
so that nothing else it sends crosses the partition.
"""

from __future__ import annotations

import asyncio
import secrets
import string
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from .. import net, rpc
from ..distribution.net_kernel import NetKernel
from ..errors import NodeDown, NotDistributed
from ..functions import function_name
from ..node import Node, current_node
from .cluster import run_in_process

__all__ = ["heal", "partition", "partitioned"]

#: Seconds between attempts to reach a node whose cookie just changed (see :func:`_call`).
_RETRY_DELAYS: Final = (0.05, 0.1, 0.2, 0.4)


@dataclass
class _State:
    """What one manager knows about the partitions it made."""

    original_cookie: str
    #: Partitioned node -> the cookie of its partition.
    cookies: dict[str, str] = field(default_factory=dict)
    #: Every node seen in the cluster, to reconnect healed nodes to.
    known: set[str] = field(default_factory=set)
    #: Partitioned nodes the manager stays connected to (``keep_manager``).
    kept: set[str] = field(default_factory=set)
    #: Partitioned nodes that could not be reached when partitioned (down,
    #: say): members all the same, which :meth:`LocalCluster.restart_node`
    #: brings back inside their partition.
    absent: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


# Per manager node, so that the partitions of one test's node never leak into
# another's (and die with the node).
_states: weakref.WeakKeyDictionary[Node, _State] = weakref.WeakKeyDictionary()


def _kernel(node: Node) -> NetKernel:
    dist = node.dist
    if not isinstance(dist, NetKernel):
        raise NotDistributed(f"partition and heal need a distributed node; {node.name} is not one")
    return dist


def _state(node: Node) -> _State:
    state = _states.get(node)
    if state is None:
        state = _states[node] = _State(original_cookie=_kernel(node).cookie)
    return state


def _new_cookie() -> str:
    return "SCHISM" + "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))


def _unique(nodes: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(nodes))


def partitioned() -> dict[str, str]:
    """The nodes the current node has partitioned and not healed, each with its partition's cookie."""
    state = _states.get(current_node())
    return dict(state.cookies) if state is not None else {}


async def partition(
    nodes: Iterable[str], *, cluster_nodes: Iterable[str] | None = None, keep_manager: bool = True
) -> list[str]:
    """Cut ``nodes`` off from every other node until :func:`heal`.

    The nodes of the group stay connected to one another. ``cluster_nodes``
    limits whom they are cut from (default: every node a node of the group is
    connected to); in any case no node outside the group can reconnect to them.
    Nodes already in another partition move to this one. Returns the nodes of
    the group that could not be reached (a dead node, say): there is nothing to
    cut off now, but they are members all the same, and one that
    :meth:`LocalCluster.restart_node <pybeam.testing.LocalCluster.restart_node>`
    starts again comes back inside the partition.

    The manager (the calling node, if not in the group) stays connected to
    the group, as in Elixir's Schism, so that a test can still rpc both sides;
    ``keep_manager=False`` cuts it off like everyone else.
    """
    manager = current_node()
    state = _state(manager)
    group = _unique(nodes)
    outside = None if cluster_nodes is None else sorted(set(cluster_nodes) - set(group))
    async with state.lock:
        return await run_in_process(_partition, manager, state, group, outside, keep_manager, node=manager)


async def heal(nodes: Iterable[str]) -> list[str]:
    """Undo :func:`partition` for ``nodes``: give them the original cookie back and
    connect each to the others and to every node the manager knows that is not
    in a partition (the manager too).

    Returns once those connections are up, with the nodes that could not be
    reached (a dead node, say), which are skipped (and out of the partition:
    a LocalCluster restarts them in the healed cluster)."""
    manager = current_node()
    state = _state(manager)
    group = _unique(nodes)
    async with state.lock:
        return await run_in_process(_heal, manager, state, group, node=manager)


def _membership(manager: Node, node: str) -> tuple[str | None, bool]:
    """For :class:`~pybeam.testing.LocalCluster`: the cookie of ``node``'s
    partition made by ``manager`` (None if it is in none), and whether the
    manager is connected to it while that holds (on the same side, or kept)."""
    state = _states.get(manager)
    if state is None:
        return None, True
    theirs = state.cookies.get(node)
    return theirs, theirs == state.cookies.get(manager.name) or node in state.kept


def _lock(manager: Node) -> asyncio.Lock:
    """For :class:`~pybeam.testing.LocalCluster`: what :func:`partition` and
    :func:`heal` hold while they work, which a node's (re)start holds too, so
    that neither sees the other half done."""
    return _state(manager).lock


def _rejoined(manager: Node, node: str) -> None:
    """For :class:`~pybeam.testing.LocalCluster`: ``node`` runs again, inside its partition if any."""
    state = _states.get(manager)
    if state is not None:
        state.absent.discard(node)


# -- on the manager (in a helper process, as rpc needs one) -------------------------------


class _Reach:
    """Lets the manager reach nodes whose cookie is not its own, for one operation."""

    def __init__(self, kernel: NetKernel, state: _State) -> None:
        self.kernel = kernel
        self.state = state
        self.overridden: set[str] = set()

    def __call__(self, *nodes: str) -> None:
        for node in nodes:
            cookie = self.state.cookies.get(node, self.state.original_cookie)
            if cookie != self.kernel.cookie:
                self.kernel.set_cookie(cookie, node)
                self.overridden.add(node)
            elif node in self.overridden:
                self.kernel.clear_cookie(node)
                self.overridden.discard(node)

    def forget(self) -> None:
        # Else the manager would later connect across the partition itself
        # (unless it is meant to: keep_manager).
        for node in self.overridden:
            cookie = self.state.cookies.get(node)
            if node in self.state.kept and cookie is not None:
                self.kernel.set_cookie(cookie, node)
            else:
                self.kernel.clear_cookie(node)
        self.overridden.clear()


async def _call(node: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``rpc.call``, tried again if the node cannot be reached at first.

    Reaching a node of another partition connects to it, and the full mesh
    then has each side try to connect to the other's nodes, with a cookie that
    is refused: a call that comes while such an attempt is in flight waits on
    it and fails with it. The next attempt goes through.

    A node that stops while it runs the call (its processes end with
    ``shutdown``: a LocalCluster's stop_node, say) is down too: NodeDown.
    """
    for delay in _RETRY_DELAYS:
        try:
            return await _call_once(node, fn, *args)
        except _Stopped:
            raise  # gone for good: asking again would only meet it stopping
        except NodeDown:
            await asyncio.sleep(delay)
    return await _call_once(node, fn, *args)


class _Stopped(NodeDown):
    """The node stopped while it ran the call."""


async def _call_once(node: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return await rpc.call(node, fn, *args)
    except rpc.RpcError as e:
        if e.reason != "shutdown":
            raise
        raise _Stopped(node, f"node {node} stopped while it ran {function_name(fn)}") from None


async def _partition(
    manager: Node, state: _State, group: list[str], outside: list[str] | None, keep_manager: bool
) -> list[str]:
    kernel = _kernel(manager)
    me = manager.name
    unreachable: list[str] = []
    if not state.cookies:
        state.original_cookie = kernel.cookie  # no partition in force: the manager's cookie is the real one
    state.known |= set(kernel.nodes()) | set(group) | set(outside or ())
    state.known.discard(me)
    cookie = _new_cookie()
    remote = [n for n in group if n != me]
    reach = _Reach(kernel, state)
    reach(*remote)
    try:
        # 1. The new cookie on the whole group first, so that no node of the
        #    group can be reconnected to from outside while the others are cut.
        for node in remote:
            try:
                await _call(node, _set_cookie, cookie)
            except NodeDown:
                # Dead, say: nothing to cut off now, but a member all the same
                # (a LocalCluster restarts it inside the partition).
                unreachable.append(node)
                state.absent.add(node)
            else:
                state.absent.discard(node)
            state.cookies[node] = cookie
            reach(node)
        state.kept -= set(group)
        if keep_manager and me not in group:
            state.kept |= set(remote)
        remote = [n for n in remote if n not in unreachable]
        if me in group:
            kernel.set_cookie(cookie)
            state.cookies[me] = cookie
        # 2. Each node of the group cuts itself off (keeping the manager: our
        #    answer goes back on that connection).
        keep = sorted(set(group) | {me})
        for node in remote:
            try:
                await _call(node, _isolate, keep, outside)
            except NodeDown:
                # Died since it took the cookie (killed, say): a member all
                # the same, as one down when partitioned; the others go on.
                unreachable.append(node)
                state.absent.add(node)
    finally:
        reach.forget()
    # 3. The manager cuts itself off: from the group, or from everyone else.
    if me in group:
        for node in kernel.nodes(hidden=True):
            if node not in group and (outside is None or node in outside):
                kernel.disconnect(node)
    elif not keep_manager:
        for node in remote:
            kernel.disconnect(node)
    return unreachable


async def _heal(manager: Node, state: _State, group: list[str]) -> list[str]:
    kernel = _kernel(manager)
    me = manager.name
    unreachable: list[str] = []
    if me in group:
        kernel.set_cookie(state.original_cookie)
        state.cookies.pop(me, None)
    reach = _Reach(kernel, state)
    try:
        return await _heal_reaching(kernel, state, reach, group, unreachable)
    finally:
        reach.forget()


async def _heal_reaching(
    kernel: NetKernel, state: _State, reach: _Reach, group: list[str], unreachable: list[str]
) -> list[str]:
    me = kernel.node.name
    remote = [n for n in group if n != me]
    state.kept -= set(group)
    reach(*remote)
    for node in remote:
        if node in state.absent:
            unreachable.append(node)  # down when partitioned, and not restarted since
        else:
            try:
                await _call(node, _set_cookie, state.original_cookie)
            except NodeDown:
                unreachable.append(node)  # dead, say: nothing to heal
        state.absent.discard(node)
        state.cookies.pop(node, None)
        reach(node)
    # Connect the group to every node not in a partition, the group's own
    # nodes too (a group healed at once may hold nodes of different
    # partitions). Of each pair, the node with the greater name connects:
    # pybeam's tie-break for simultaneous connects has the smaller one wait
    # for the greater one's attempt, and such an attempt, made by the mesh
    # with a cookie that was about to change, may be doomed; so we only ever
    # make the attempts the other side does not wait out.
    still_cut = set(state.cookies)
    everyone = (state.known | set(group) | set(kernel.nodes()) | {me}) - still_cut - set(unreachable)
    plan: dict[str, set[str]] = {}
    for node in group:
        if node in unreachable:
            continue
        for other in everyone - {node}:
            plan.setdefault(max(node, other), set()).add(min(node, other))
    for initiator, acceptors in sorted(plan.items()):
        if initiator == me:
            await _connect_all(sorted(acceptors))
            continue
        try:
            reach(initiator)
            await _call(initiator, _connect_all, sorted(acceptors))
        except NodeDown:
            unreachable.append(initiator)  # a node the manager knew that is gone
    return sorted(set(unreachable))


# -- on the nodes of the group (called by rpc, by name) ---------------------------------------


def _set_cookie(cookie: str) -> None:
    net.set_cookie(cookie)


def _isolate(keep: list[str], outside: list[str] | None) -> list[str]:
    """Disconnect from every node not in ``keep`` (only those in ``outside``, if given)."""
    kept = set(keep)
    candidates = net.nodes(hidden=True) if outside is None else outside
    cut = [node for node in candidates if node not in kept]
    for node in cut:
        net.disconnect(node)
    return cut


async def _connect_all(nodes: list[str]) -> list[str]:
    """Connect to each of ``nodes``; returns those that could not be reached.

    A failed attempt is tried again a few times: one made with this node's
    partition cookie (by the mesh, just before the cookie was restored) may
    still be in flight, and a connect that comes meanwhile shares its failure.
    """
    me = current_node().name
    missing = [n for n in nodes if n != me]
    for delay in (*_RETRY_DELAYS, None):
        results = await asyncio.gather(*(net.connect(n) for n in missing))
        missing = [n for n, ok in zip(missing, results, strict=True) if not ok]
        if not missing or delay is None:
            break
        await asyncio.sleep(delay)
    return missing

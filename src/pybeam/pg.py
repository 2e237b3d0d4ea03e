"""Distributed named process groups, as OTP's ``pg`` (OTP 23+) keeps them.

Processes ``join`` and ``leave`` groups; any node can list a group's members
(``get_members``) and send to them. A member that ends leaves every group; the
members of a node that goes down are dropped; nodes that meet (again) exchange
their members. Groups live in *scopes*, independent of each other; the default
scope is ``"pg"``.

Built, as OTP's ``pg`` is, from public parts only, with its protocol: one
scope process per node and scope, registered locally under the scope's name,
talking to the scope processes of the same name on the other nodes:

- A scope process that starts sends ``("discover", self)`` to the scope process
  of every connected node, and again to each node that comes up (nodeup).
- On ``discover`` a scope process answers ``("sync", self, groups)`` with its
  *local* members, and, if it did not know the sender, monitors it and
  discovers it back.
- On ``sync`` it replaces what it knew of that peer's members by the list.
- ``join`` / ``leave`` of local processes go through the local scope process,
  which monitors its local members and sends ``("join", self, group, pids)`` /
  ``("leave", self, pids, groups)`` to every peer it knows; when a member ends
  it sends ``leave`` for it.
- When a peer's scope process ends, or its node goes down (the monitor fires
  ``noconnection``), its members are dropped.

So each node is the only writer of its own members, and the membership views
converge (strong eventual consistency, as OTP says): updates from one node
arrive in order; those of different nodes may arrive in different orders.

The scope processes are GenServers. Every node's kernel supervisor (see
:mod:`pybeam.kernel_sup`) runs the default scope, as OTP's kernel does with
``start_pg``, and restarts it when it crashes: the new scope process
discovers its peers again and gets their members back, while its own node's
memberships are lost, as in OTP ("local membership is not preserved if scope
process exits and restarts"): the old process was the one that knew and
monitored them, and peers drop them when they see it end.

Where pybeam differs: another scope is started on demand, by the first call
for it on a node (or :func:`start`), and added to that node's kernel
supervisor; a running scope process also starts the same scope on every
node it is connected to and on each node that comes up (``rpc.cast(node,
ensure_started, scope)``), so no code needs to start it on every node (OTP
starts other scopes by hand). A scope therefore spans every connected node,
not an overlay chosen by where it was started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

from . import gen_server, kernel, kernel_sup, rpc
from .arguments import check_delay
from .errors import BadArg
from .kernel_sup import SyncWaiters
from .logtext import short
from .node import current_node
from .pattern import ANY, compile_pattern
from .terms import Pid, Ref, Term

__all__ = [
    "DEFAULT_SCOPE",
    "Scope",
    "demonitor",
    "ensure_started",
    "get_local_members",
    "get_members",
    "join",
    "leave",
    "monitor",
    "monitor_scope",
    "start",
    "which_groups",
    "which_local_groups",
]

logger = logging.getLogger("pybeam.pg")

#: The scope used when none is given (and its scope process's registered name).
DEFAULT_SCOPE = "pg"

# -- the API ----------------------------------------------------------------------


def ensure_started(scope: str = DEFAULT_SCOPE) -> Pid:
    """The pid of this node's process for ``scope``, starting it if needed
    (under the node's kernel supervisor)."""
    if type(scope) is not str or not scope:
        raise BadArg(f"a scope is a non-empty str, got {scope!r}")
    return kernel_sup.ensure_started(Scope, scope, scope, static=scope == DEFAULT_SCOPE)


async def start(scope: str = DEFAULT_SCOPE, timeout: float = 5.0) -> Pid:
    """Start ``scope`` on this node if needed, and wait (at most ``timeout``
    seconds) until it has the members of every node connected now."""
    check_delay(timeout, "timeout")
    pid = ensure_started(scope)
    await _ask(pid, ("wait_synced", timeout))
    return pid


async def join(group: Term, pids: Pid | list[Pid], scope: str = DEFAULT_SCOPE) -> Literal["ok"]:
    """Add a local process, or a list of them, to ``group``.

    A process may join a group several times (and must then leave it as many
    times); a list may hold a pid more than once. Raises :class:`BadArg` for a
    pid of another node: only local processes join, as in OTP.
    """
    plist = _local_pids(pids)
    _check_group(group)
    result: Literal["ok"] = await _ask(ensure_started(scope), ("join_local", group, plist))
    return result


async def leave(
    group: Term, pids: Pid | list[Pid], scope: str = DEFAULT_SCOPE
) -> Literal["ok", "not_joined"]:
    """Remove a local process, or a list of them, from ``group`` (one join each).

    Returns ``"not_joined"`` if none of them was a member, else ``"ok"``.
    """
    plist = _local_pids(pids)
    _check_group(group)
    result: Literal["ok", "not_joined"] = await _ask(ensure_started(scope), ("leave_local", group, plist))
    return result


def get_members(group: Term, scope: str = DEFAULT_SCOPE) -> list[Pid]:
    """Every member of ``group`` on every node (a pid once per join), in no
    particular order."""
    entry = _state(scope).groups.get(group)
    return [] if entry is None else list(entry[0])


def get_local_members(group: Term, scope: str = DEFAULT_SCOPE) -> list[Pid]:
    """The members of ``group`` that run on this node."""
    entry = _state(scope).groups.get(group)
    return [] if entry is None else list(entry[1])


def which_groups(scope: str = DEFAULT_SCOPE) -> list[Term]:
    """Every group with at least one member (an empty group does not exist)."""
    return list(_state(scope).groups)


def which_local_groups(scope: str = DEFAULT_SCOPE) -> list[Term]:
    """The groups with at least one member on this node."""
    return [g for g, (_, local) in _state(scope).groups.items() if local]


async def monitor_scope(scope: str = DEFAULT_SCOPE) -> tuple[Ref, dict[Term, list[Pid]]]:
    """Subscribe the caller to every change in ``scope``.

    Returns ``(ref, {group: members})``; then the caller gets
    ``(ref, "join", group, pids)`` and ``(ref, "leave", group, pids)`` for
    every change, until :func:`demonitor` or until the scope process ends.
    """
    result: tuple[Ref, dict[Term, list[Pid]]] = await _subscribe(ensure_started(scope), ("monitor_scope",))
    return result


async def monitor(group: Term, scope: str = DEFAULT_SCOPE) -> tuple[Ref, list[Pid]]:
    """Subscribe the caller to the changes of ``group``: returns ``(ref,
    members)``, then ``(ref, "join" | "leave", group, pids)`` messages."""
    _check_group(group)
    result: tuple[Ref, list[Pid]] = await _subscribe(ensure_started(scope), ("monitor", group))
    return result


async def demonitor(ref: Ref, scope: str = DEFAULT_SCOPE) -> bool:
    """Stop a subscription and drop its messages already in the caller's
    mailbox; False if ``ref`` was not an active subscription."""
    done: bool = await _ask(ensure_started(scope), ("demonitor", ref))
    if done:
        while await kernel.receive((ref, ANY, ANY, ANY), timeout=0, default=None) is not None:
            pass
    return done


# -- helpers -----------------------------------------------------------------------


def _state(scope: str) -> _Scope:
    # The scope process is the only writer of its state, and a node is one
    # thread: reads need not go through it (as OTP's read its ETS table).
    pid = ensure_started(scope)
    state = kernel_sup.state_of(scope, Scope)
    assert state is not None, pid
    return state  # type: ignore[no-any-return]


def _local_pids(pids: Pid | list[Pid]) -> list[Pid]:
    plist = [pids] if type(pids) is Pid else pids
    if type(plist) is not list:
        raise BadArg(f"expected a pid or a list of pids, got {pids!r}")
    here = kernel.node_name()
    for pid in plist:
        if type(pid) is not Pid or pid.node != here:
            raise BadArg(f"only local processes can join or leave a group, not {pid!r}")
    return list(plist)


def _check_group(group: Term) -> None:
    try:
        hash(group)
    except TypeError:
        raise BadArg(f"a group must be a hashable term, got {group!r}") from None


async def _ask(server: Pid, request: Any) -> Any:
    return await kernel_sup.ask(server, request)


async def _subscribe(server: Pid, request: tuple[Any, ...]) -> Any:
    """A monitor request for the caller, made by an errand. Cancelled before
    the scope process got it, the errand is dead and it is ignored; after,
    the caller's ``$forget`` (which follows it) undoes the subscription and
    drops what it already sent the caller."""
    token = kernel.make_ref()
    me = kernel.self()
    try:
        return await kernel_sup.ask(server, (*request, me, token))
    except asyncio.CancelledError:
        kernel.send(server, ("$forget", token))
        raise


async def _call(server: Pid, request: Any) -> Any:
    """A call to a local scope process by the caller itself."""
    return await gen_server.call(server, request, None)


def _remove_each(items: list[Pid], remove: list[Pid]) -> list[Pid]:
    """``items -- remove`` as Erlang's ``--``: each element of ``remove`` takes
    out one occurrence. Returns the elements taken out."""
    taken = []
    for pid in remove:
        with contextlib.suppress(ValueError):
            items.remove(pid)
            taken.append(pid)
    return taken


# -- the scope process -------------------------------------------------------------------


class Scope(kernel_sup.Service):
    """The GenServer of one node's process for one scope (OTP's ``pg``
    gen_server); its state is a :class:`_Scope`."""

    def new_state(self, arg: Any) -> _Scope:
        return _Scope(arg)

    def init(self, state: _Scope) -> _Scope:
        state.pid = kernel.self()
        for node in kernel_sup.node_subscribe():
            state.nodeup(node)
        return state

    def handle_call(self, request: Any, from_: tuple[Pid, Ref], state: _Scope) -> Any:
        reply = state.call(from_, request)
        if reply is _NO_REPLY:
            return ("noreply", state)
        return ("reply", reply, state)

    def handle_cast(self, request: Any, state: _Scope) -> Any:
        logger.debug("pg %s: ignoring the cast %s", state.scope, short(request))
        return ("noreply", state)

    def handle_info(self, msg: Any, state: _Scope) -> Any:
        state.handle(msg)
        return ("noreply", state)


class _Scope:
    """The state of one node's process for one scope (OTP pg's ``#state{}``
    and its ETS table)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.pid: Pid = None  # type: ignore[assignment]  # set by init, in the process
        #: group -> (all members, local members); a group with none is absent
        self.groups: dict[Term, tuple[list[Pid], list[Pid]]] = {}
        #: local members: pid -> (our monitor on it, its groups, once per join)
        self.local: dict[Pid, tuple[Ref, list[Term]]] = {}
        self.local_refs: dict[Ref, Pid] = {}
        #: peers (the same scope on other nodes): pid -> (monitor, {group: its members})
        self.remote: dict[Pid, tuple[Ref, dict[Term, list[Pid]]]] = {}
        self.remote_refs: dict[Ref, Pid] = {}
        #: subscribers to the whole scope: monitor ref -> pid
        self.scope_monitors: dict[Ref, Pid] = {}
        #: subscribers to one group: monitor ref -> (pid, group), and by group
        self.group_monitors: dict[Ref, tuple[Pid, Term]] = {}
        self.monitored_groups: dict[Term, list[tuple[Pid, Ref]]] = {}
        #: the token of each subscription (monitor ref -> token), by which a
        #: subscriber that was cancelled while subscribing undoes it
        self.token_of: dict[Ref, Ref] = {}
        #: callers of start() waiting for syncs
        self.waiters = SyncWaiters()

    def handle(self, msg: Any) -> None:
        """A message from a peer, a monitor or net_kernel."""
        match msg:
            case ("join", Pid() as peer, group, list() as pids):
                entry = self.remote.get(peer)
                # From a peer we do not know (it went down and its join was in
                # flight, or it is not in our overlay): ignored, as in OTP.
                if entry is not None:
                    self.join_remote(group, pids)
                    entry[1].setdefault(group, [])[:0] = pids
            case ("leave", Pid() as peer, list() as pids, list() as groups):
                entry = self.remote.get(peer)
                if entry is not None:
                    for group in groups:
                        self.leave_remote(group, pids)
                        members = entry[1].get(group)
                        if members is not None:
                            _remove_each(members, pids)
                            if not members:
                                del entry[1][group]
            case ("discover", Pid() as peer):
                kernel.send(peer, ("sync", self.pid, self.local_groups()))
                if peer not in self.remote:
                    self.add_peer(peer)
                    kernel.send(peer, ("discover", self.pid))
            case ("sync", Pid() as peer, list() as groups):
                self.sync(peer, groups)
            case ("$forget", Ref() as token):
                self.forget(token)
            case ("DOWN", Ref() as ref, "process", _, _):
                self.down(ref)
            case ("nodeup", str() as node):
                self.nodeup(node)
            case ("nodedown", str()):
                # Nothing to do: the monitor on the peer's scope process fires.
                self.waiters.update(self.synced_nodes())
            case ("wait_timeout", Ref() as ref):
                self.waiters.update(self.synced_nodes(), ref)
            case _:
                logger.debug("pg %s: ignoring %s", self.scope, short(msg))

    def call(self, from_: tuple[Pid, Ref], request: Any) -> Any:
        """A request of this node's API: the reply, or :data:`_NO_REPLY`."""
        caller = from_[0]
        match request:
            case ("join_local", group, list() as pids):
                if not pids:
                    return "ok"
                for pid in pids:
                    entry = self.local.get(pid)
                    if entry is None:
                        mref = kernel.monitor(pid)
                        self.local[pid] = (mref, [group])
                        self.local_refs[mref] = pid
                    else:
                        entry[1].append(group)
                all_, local = self.groups.setdefault(group, ([], []))
                all_[:0] = pids
                local[:0] = pids
                self.notify("join", group, pids)
                self.broadcast(("join", self.pid, group, pids))
                return "ok"
            case ("leave_local", group, list() as pids):
                left = []
                for pid in pids:
                    entry = self.local.get(pid)
                    if entry is None or group not in entry[1]:
                        continue
                    entry[1].remove(group)
                    left.append(pid)
                    if not entry[1]:
                        del self.local[pid]
                        del self.local_refs[entry[0]]
                        kernel.demonitor(entry[0], flush=True)
                if not left:
                    return "not_joined"
                self.leave_local(group, left)
                self.broadcast(("leave", self.pid, left, [group]))
                return "ok"
            case ("monitor_scope", Pid() as subscriber, Ref() as token):
                if not kernel.is_alive(caller):
                    return _NO_REPLY  # the errand of a cancelled subscriber
                mref = kernel.monitor(subscriber)
                self.scope_monitors[mref] = subscriber
                self.token_of[mref] = token
                return mref, {g: list(all_) for g, (all_, _) in self.groups.items()}
            case ("monitor", group, Pid() as subscriber, Ref() as token):
                if not kernel.is_alive(caller):
                    return _NO_REPLY
                mref = kernel.monitor(subscriber)
                self.group_monitors[mref] = (subscriber, group)
                self.monitored_groups.setdefault(group, []).append((subscriber, mref))
                self.token_of[mref] = token
                members = self.groups.get(group)
                return mref, [] if members is None else list(members[0])
            case ("demonitor", Ref() as mref):
                return self.unsubscribe(mref)
            case ("wait_synced", timeout):
                done = self.waiters.wait(from_, timeout, self.synced_nodes())
                return _NO_REPLY if done is None else done
        raise BadArg(f"pg: unknown request {request!r}")

    # -- the table ----------------------------------------------------------------

    def leave_local(self, group: Term, pids: list[Pid]) -> None:
        entry = self.groups.get(group)
        if entry is None:
            return
        all_, local = entry
        removed = _remove_each(all_, pids)
        _remove_each(local, pids)
        if not all_:
            del self.groups[group]
        if removed:
            self.notify("leave", group, removed)

    def join_remote(self, group: Term, pids: list[Pid]) -> None:
        if not pids:
            return
        all_, _ = self.groups.setdefault(group, ([], []))
        all_[:0] = pids
        self.notify("join", group, pids)

    def leave_remote(self, group: Term, pids: list[Pid]) -> None:
        entry = self.groups.get(group)
        if entry is None:
            return
        removed = _remove_each(entry[0], pids)
        if not entry[0]:
            del self.groups[group]
        if removed:
            self.notify("leave", group, removed)

    def local_groups(self) -> list[tuple[Term, list[Pid]]]:
        return [(g, list(local)) for g, (_, local) in self.groups.items() if local]

    def notify(self, kind: str, group: Term, pids: list[Pid]) -> None:
        for mref, pid in self.scope_monitors.items():
            kernel.send(pid, (mref, kind, group, list(pids)))
        for pid, mref in self.monitored_groups.get(group, ()):
            kernel.send(pid, (mref, kind, group, list(pids)))

    def broadcast(self, msg: Any) -> None:
        for peer in self.remote:
            kernel.send(peer, msg)

    def unsubscribe(self, mref: Ref) -> bool:
        if self.scope_monitors.pop(mref, None) is not None:
            kernel.demonitor(mref, flush=True)
            self.token_of.pop(mref, None)
            return True
        if mref in self.group_monitors:
            kernel.demonitor(mref, flush=True)
            self.drop_group_monitor(mref)
            return True
        return False

    def forget(self, token: Ref) -> None:
        """Undo the subscription made with ``token`` by a subscriber cancelled
        while making it: it never learnt the ref, so what was sent under it
        cannot be matched by it and is taken out of its mailbox."""
        mref = next((m for m, t in self.token_of.items() if t == token), None)
        if mref is None:
            return
        subscriber = self.scope_monitors.get(mref) or self.group_monitors[mref][0]
        self.unsubscribe(mref)
        proc = current_node().process(subscriber)
        if proc is not None:
            proc.remove_matching(compile_pattern((mref, ANY, ANY, ANY)))

    def drop_group_monitor(self, mref: Ref) -> None:
        self.token_of.pop(mref, None)
        entry = self.group_monitors.pop(mref, None)
        if entry is None:
            return
        group = entry[1]
        subs = [s for s in self.monitored_groups.get(group, ()) if s[1] != mref]
        if subs:
            self.monitored_groups[group] = subs
        else:
            self.monitored_groups.pop(group, None)

    # -- peers ----------------------------------------------------------------------

    def nodeup(self, node: str) -> None:
        kernel.send((self.scope, node), ("discover", self.pid))
        if self.scope != DEFAULT_SCOPE:
            # Start the scope there if it is not running; it then discovers
            # us. (Every node's kernel runs the default scope.)
            rpc.cast(node, ensure_started, self.scope)

    def add_peer(self, peer: Pid) -> None:
        mref = kernel.monitor(peer)
        self.remote[peer] = (mref, {})
        self.remote_refs[mref] = peer

    def sync(self, peer: Pid, groups: list[Any]) -> None:
        if peer not in self.remote:
            self.add_peer(peer)
        mref, old = self.remote[peer]
        new: dict[Term, list[Pid]] = {}
        for entry in groups:
            match entry:
                case (group, list() as pids) if pids:
                    new.setdefault(group, []).extend(pids)
        # The peer's list replaces what we knew of its members: apply the
        # difference, so that subscribers hear of exactly what changed.
        for group in old.keys() | new.keys():
            gone = list(old.get(group, ()))
            added = [p for p in new.get(group, ()) if not _remove_each(gone, [p])]
            self.leave_remote(group, gone)
            self.join_remote(group, added)
        self.remote[peer] = (mref, new)
        self.waiters.update(self.synced_nodes())

    def synced_nodes(self) -> set[str]:
        return {peer.node for peer in self.remote}

    def down(self, ref: Ref) -> None:
        pid = self.local_refs.pop(ref, None)
        if pid is not None:
            _, groups = self.local.pop(pid)
            for group in groups:
                self.leave_local(group, [pid])
            self.broadcast(("leave", self.pid, [pid], groups))
            return
        peer = self.remote_refs.pop(ref, None)
        if peer is not None:
            # Its scope process ended or its node went down: drop its members.
            _, its_groups = self.remote.pop(peer)
            for group, pids in its_groups.items():
                self.leave_remote(group, pids)
            self.waiters.update(self.synced_nodes())
            return
        if self.scope_monitors.pop(ref, None) is None:
            self.drop_group_monitor(ref)
        else:
            self.token_of.pop(ref, None)


class _NoReply:
    """What :meth:`_Scope.call` returns when the reply is sent later."""


_NO_REPLY = _NoReply()

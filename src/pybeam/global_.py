"""Cluster-wide process names, as OTP's ``global`` keeps them.

``register_name(name, pid)`` gives a name to a process across every connected
node: ``whereis_name(name)`` and ``send(name, msg)`` find it from any node. A
name is freed when its process ends or its node goes down; when nodes that
were apart (a partition) meet again and the same name was given on both
sides, a *resolver* decides who keeps it.

Built, as OTP's is, from public parts only: one server process per node,
registered locally as ``global_name_server``, holding a replica of the name
table; servers talk with messages to ``("global_name_server", node)``, watch
processes with monitors and nodes with ``monitor_nodes``.

The protocol
------------
*Servers everywhere.* Every node's kernel supervisor (see
:mod:`pybeam.kernel_sup`) starts its server, a GenServer, as OTP's kernel
starts ``global``, and restarts it when it crashes. A restarted server
rebuilds its table from the cluster (*discover and sync*, below); the names
of its own node's processes are lost with the server that owned them (in
OTP they live in tables the server owns, and a crash of ``global`` takes the
node down, which frees them everywhere): peers drop them when they see the
old server end, and the processes, which keep running, may register again.

*The owner writes.* A claim "``name`` is held by ``pid``" is written only by
the server of ``pid``'s node, its *owner*, which monitors ``pid`` and sends
every change of its claims (``claim``, ``drop``) to all connected servers.
Since messages between two processes stay in order, every server sees one
owner's changes in the order they were made. Other servers drop an owner's
claims when its node goes down (nodedown) or its server dies.

*Registration under a lock.* ``register_name`` (and ``unregister_name``,
``re_register_name``) runs in a short-lived process of the caller's node (an
errand, so that a cancelled caller leaves no lock behind: the errand is
killed): it locks the name on the server of every connected node (each
grants it to one requester at a time, and releases it if the requester
dies), checks that no
server knows a holder (a claim counts only if its owner's server, locked
too, still has it: the others may not have its ``drop`` yet), asks the owner
to write the claim, and returns once every locked server has applied it
(acknowledged). Two requesters racing for
a name each get a lock on some servers and not others: both release, wait a
random, growing time and try again, so one of them wins and the other then
finds the name taken. A lock is per name (OTP's lock is cluster-wide).

*Discover and sync.* A server that starts, or sees a node come up, sends
``discover`` to that node's server, which answers with ``sync``: the claims it
owns. The receiver replaces what it knew of that node's claims by that list.

*Conflicts.* After a partition heals, two owners may claim the same name.
Every server sees both claims; only the owner of the lower pid (pids order by
node name first: the node whose name sorts lower) resolves: it calls the
resolver of its own registration with ``(name, pid1, pid2)``, ``pid1`` being
its own, and makes the decision happen: it drops its own claim if it lost and
tells the other owner to drop the other one. The default resolver,
:func:`lower_node_wins`, keeps ``pid1`` and kills ``pid2``. Until then every
server answers ``whereis_name`` with the lower pid.

Consistency, plainly: while the nodes are connected (and stay so during a
registration), a name is never given to two processes, and a registration
that returned True is visible on every node. Changes made by the owner (a
holder's death, a resolution) reach the other nodes a message later, so
``whereis_name`` on another node may briefly still return a pid that just
ended, as in OTP; but a registration that follows a holder's death on its
node (from any node: it locks the owner too) finds the name free. During a
partition each side registers on its own; after it heals, every node
converges on one holder per name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import errand, kernel, kernel_sup, net, rpc
from .arguments import check_delay
from .errors import BadArg, NodeDown
from .functions import function_name, resolve_function
from .kernel_sup import SyncWaiters
from .terms import KILL, NOPROC, Pid, Ref, Term

__all__ = [
    "NAME",
    "NameServer",
    "Resolver",
    "ensure_started",
    "lower_node_wins",
    "notify_all_name",
    "re_register_name",
    "register_name",
    "registered_names",
    "send",
    "start",
    "unregister_name",
    "whereis_name",
]

logger = logging.getLogger("pybeam.global")

T = TypeVar("T")

#: The name each node's server is registered under (as OTP's).
NAME = "global_name_server"

#: A resolver: ``fn(name, pid1, pid2) -> the pid that keeps the name, or None``.
Resolver = Callable[[Any, Pid, Pid], "Pid | None"]

# Retry a lock that another requester holds after a random pause of up to
# _BACKOFF * 2**attempt seconds, capped: random, so that two racing requesters
# stop colliding; growing, so that many do too.
_BACKOFF = 0.005
_MAX_BACKOFF = 0.25
# How long a registration waits for the other servers to acknowledge the
# change before returning anyway (they still get it; only the wait ends).
_ACK_TIMEOUT = 5.0


# -- resolvers ------------------------------------------------------------------


def lower_node_wins(name: Any, pid1: Pid, pid2: Pid) -> Pid:
    """The default resolver: the pid on the node whose name sorts lower keeps
    the name; the other is killed (``exit(pid, "kill")``, as OTP's
    ``random_exit_name`` does, with a deterministic choice), and that is
    logged: ``global: Name conflict terminating (name, pid)``."""
    winner, loser = sorted((pid1, pid2))
    # Logged as OTP's random_exit_name does: else the loser just vanishes.
    logger.warning("global: Name conflict terminating %r", (name, loser))
    kernel.exit(loser, KILL)
    return winner


def notify_all_name(name: Any, pid1: Pid, pid2: Pid) -> None:
    """A resolver that unregisters the name and tells both processes, which
    keep running: each gets ``("global_name_conflict", name, other_pid)``
    (OTP's ``notify_all_name``)."""
    kernel.send(pid1, ("global_name_conflict", name, pid2))
    kernel.send(pid2, ("global_name_conflict", name, pid1))
    return None


# -- the API --------------------------------------------------------------------


def ensure_started() -> Pid:
    """The pid of this node's server, starting it if it is not running
    (under the node's kernel supervisor)."""
    return kernel_sup.ensure_started(NameServer, NAME, None, static=True)


async def start(timeout: float = 5.0) -> Pid:
    """Start this node's server if needed, and wait (at most ``timeout``
    seconds) until it has the names of every node connected now."""
    check_delay(timeout, "timeout")
    pid = ensure_started()
    await kernel_sup.ask(pid, ("wait_synced", timeout))
    return pid


async def register_name(name: Term, pid: Pid, resolve: Resolver | str | None = None) -> bool:
    """Register ``pid`` as ``name`` on every connected node; False if the name
    is taken anywhere (a pid may hold several names).

    ``resolve`` (a module-level function or ``"module:function"``; default
    :func:`lower_node_wins`) decides, when a partition heals with the name
    registered on both sides, which pid keeps it (see the module docstring).
    False too if ``pid`` is a local process that is not alive, or on a node
    that cannot be reached.
    """
    _check_name(name)
    if type(pid) is not Pid:
        raise BadArg(f"register_name needs a pid, got {pid!r}")
    resolver = _resolver_name(resolve)
    ensure_started()
    if not await _reachable(pid):
        return False

    async def body(lock: _Lock) -> bool:
        if lock.holders:
            return False
        return await lock.update(pid.node, ("register", name, pid, resolver))

    return await _transaction(name, body)


async def re_register_name(name: Term, pid: Pid, resolve: Resolver | str | None = None) -> bool:
    """Register ``pid`` as ``name`` whether or not the name is taken: the old
    holder (which keeps running) loses it, atomically. False only if ``pid``
    cannot be registered (a dead local process, a node that cannot be reached)."""
    _check_name(name)
    if type(pid) is not Pid:
        raise BadArg(f"re_register_name needs a pid, got {pid!r}")
    resolver = _resolver_name(resolve)
    ensure_started()
    if not await _reachable(pid):
        return False

    async def body(lock: _Lock) -> bool:
        for owner in sorted({p.node for p in lock.holders if p != pid}):
            await lock.update(owner, ("unregister", name, pid))
        return await lock.update(pid.node, ("register", name, pid, resolver))

    return await _transaction(name, body)


async def unregister_name(name: Term) -> None:
    """Remove ``name`` on every connected node (nothing happens if it is free)."""
    _check_name(name)
    ensure_started()

    async def body(lock: _Lock) -> None:
        for owner in sorted({p.node for p in lock.holders}):
            await lock.update(owner, ("unregister", name, None))

    await _transaction(name, body)


def whereis_name(name: Term) -> Pid | None:
    """The pid registered as ``name`` in the cluster, or None."""
    _check_name(name)
    return _server().whereis(name)


def send(name: Term, msg: Any) -> Pid:
    """Send ``msg`` to the process registered as ``name``; returns its pid.

    Raises :class:`BadArg` if no process has the name (as ``global:send``).
    """
    pid = whereis_name(name)
    if pid is None:
        raise BadArg(f"no process is globally registered as {name!r}")
    kernel.send(pid, msg)
    return pid


def registered_names() -> list[Term]:
    """Every globally registered name."""
    return _server().registered()


# -- the caller's side of a registration -------------------------------------------


def _check_name(name: Term) -> None:
    try:
        hash(name)
    except TypeError:
        raise BadArg(f"a global name must be a hashable term, got {name!r}") from None


def _resolver_name(resolve: Resolver | str | None) -> str | None:
    if resolve is None:
        return None
    try:
        return function_name(resolve)
    except ValueError as e:
        raise BadArg(f"resolve must be a module-level function: {e}") from None


async def _reachable(pid: Pid) -> bool:
    if pid.node == kernel.node_name():
        return kernel.is_alive(pid)
    return pid.node in net.nodes() or await net.ping(pid.node) == "pong"


def _server() -> _Server:
    # The server is the only writer of its table, and a node is one thread:
    # reads need not go through it (as OTP's read global's ETS tables).
    pid = ensure_started()
    state = kernel_sup.state_of(NAME, NameServer)
    assert state is not None, pid
    return state  # type: ignore[no-any-return]


class _Lock:
    """A name locked on a set of servers by the calling process."""

    def __init__(self, name: Term, holder: Pid) -> None:
        self.name = name
        self.holder = holder
        #: node -> the monitor on its server (which also tags its lock reply)
        self.nodes: dict[str, Ref] = {}
        #: nodes whose server went away while we held the lock
        self.gone: set[str] = set()
        #: the pids the locked servers know as holding the name
        self.holders: set[Pid] = set()
        #: servers that acknowledged the update in progress (acks may come
        #: before the owner's own answer)
        self._acked: set[str] = set()

    def release(self) -> None:
        for node, ref in self.nodes.items():
            if node not in self.gone:
                kernel.send((NAME, node), ("unlock", self.holder, self.name))
            kernel.demonitor(ref, flush=True)
        self.nodes.clear()

    async def update(self, owner: str, request: tuple[Any, ...]) -> bool:
        """Have ``owner``'s server apply ``request`` and wait until every locked
        server has applied the change it sends them; False if the owner is gone."""
        if owner not in self.nodes or owner in self.gone:
            return False
        tag = kernel.make_ref()
        refs = {ref: node for node, ref in self.nodes.items() if node not in self.gone}
        # Only the locked servers are asked to acknowledge: an ack from any
        # other would come after we stopped waiting and stay in our mailbox.
        ack = (self.holder, tag, sorted(refs.values()))
        kernel.send((NAME, owner), (request[0], ack, *request[1:]))

        def ours(m: Any) -> bool:
            if type(m) is not tuple or len(m) < 3:
                return False
            return (m[0] in ("global_done", "global_ack") and m[1] == tag) or (
                m[0] == "DOWN" and m[1] in refs
            )

        loop = asyncio.get_running_loop()
        applied: bool | None = None
        waiting: set[str] = set()
        deadline = loop.time() + _ACK_TIMEOUT
        while applied is None or waiting:
            msg = await kernel.receive(ours, timeout=max(deadline - loop.time(), 0.0), default=None)
            if msg is None:
                logger.warning("global: %s: no acknowledgement from %s", self.name, sorted(waiting) or owner)
                break
            if msg[0] == "DOWN":
                node = refs.pop(msg[1])
                self.gone.add(node)
                waiting.discard(node)
                if node == owner and applied is None:
                    return False
            elif msg[0] == "global_done":
                applied = bool(msg[2])
                waiting |= set(msg[3]) & set(refs.values())
                waiting -= self._acked
            else:
                self._acked.add(msg[2])
                waiting.discard(msg[2])
        self._acked.clear()
        return bool(applied)


async def _transaction(name: Term, body: Callable[[_Lock], Awaitable[T]]) -> T:
    """Run ``body(lock)`` with ``name`` locked on every connected node's server.

    The lock is taken by an errand process (see :mod:`pybeam.errand`): if
    the caller is cancelled, the errand is killed, and every server releases
    the lock as it does for any requester that dies; nothing of the
    transaction is left in the caller's mailbox. (A change the owner had
    already been asked to make is made.)
    """
    return await errand.run(_locked, name, body)


async def _locked(name: Term, body: Callable[[_Lock], Awaitable[T]]) -> T:
    me = kernel.self()
    attempt = 0
    while True:
        lock = await _try_lock(name, me)
        if lock is not None:
            break
        attempt += 1
        await asyncio.sleep(random.uniform(0, min(_MAX_BACKOFF, _BACKOFF * 2**attempt)))
    try:
        return await body(lock)
    finally:
        lock.release()


async def _try_lock(name: Term, me: Pid) -> _Lock | None:
    lock = _Lock(name, me)
    pending: dict[Ref, str] = {}
    for node in [kernel.node_name(), *net.nodes()]:
        ref = kernel.monitor((NAME, node))
        kernel.send((NAME, node), ("lock", ref, me, name))
        pending[ref] = node

    def ours(m: Any) -> bool:
        return type(m) is tuple and len(m) >= 3 and m[0] in ("global_lock", "DOWN") and m[1] in pending

    denied = False
    unstarted: list[str] = []
    #: node -> the holders its server knows
    reports: dict[str, set[Pid]] = {}
    while pending:
        msg = await kernel.receive(ours)
        ref = msg[1]
        node = pending.pop(ref)
        if msg[0] == "DOWN":
            # noproc: connected, but its server is not running yet (it is being
            # started; start it ourselves and try again). Otherwise the node is
            # gone and takes no part.
            if msg[4] == NOPROC:
                unstarted.append(node)
                denied = True
            continue
        lock.nodes[node] = ref
        reports[node] = set(msg[3])
        if not msg[2]:
            denied = True
    if not denied:
        lock.holders = _holders(reports)
        return lock
    lock.release()
    for node in unstarted:
        with contextlib.suppress(NodeDown, rpc.RpcError):
            await rpc.call(node, ensure_started)
    return None


def _holders(reports: dict[str, set[Pid]]) -> set[Pid]:
    """The holders of a name, from what each locked server knows: a claim on
    a pid of a node whose server answered counts only if that server, its
    owner, still has it.

    The owner writes its claims and learns first of their end (it monitors
    the pid, and answers for a local pid that just died as gone): another
    server may still hold a claim the owner has dropped, its ``drop`` a
    message away, and would refuse a registration that follows the holder's
    death on the owner's node. (In OTP every server monitors the pid itself,
    and its DOWN, sent by the owner's node before that node's answer to the
    lock, is there first.)
    A claim on a node whose server did not answer stays: nothing newer says
    it ended.
    """
    return {
        pid
        for claims in reports.values()
        for pid in claims
        if pid.node not in reports or pid in reports[pid.node]
    }


# -- the server -------------------------------------------------------------------


class NameServer(kernel_sup.Service):
    """The GenServer of one node's name server (OTP's ``global_name_server``);
    its state is a :class:`_Server`."""

    def new_state(self, arg: Any) -> _Server:
        state = _Server()
        state.node = kernel.node_name()
        return state

    def init(self, state: _Server) -> _Server:
        state.pid = kernel.self()
        for node in kernel_sup.node_subscribe():
            state.nodeup(node)
        return state

    def handle_call(self, request: Any, from_: tuple[Pid, Ref], state: _Server) -> Any:
        match request:
            case ("wait_synced", timeout):
                done = state.waiters.wait(from_, timeout, state.synced)
                return ("noreply", state) if done is None else ("reply", done, state)
        # As OTP's global: logged, and left unanswered (no crash, which would
        # cost this node's names).
        logger.warning("global: %s received an unexpected call: %r", state.node, request)
        return ("noreply", state)

    def handle_cast(self, request: Any, state: _Server) -> Any:
        logger.debug("global: %s ignores the cast %r", state.node, request)
        return ("noreply", state)

    def handle_info(self, msg: Any, state: _Server) -> Any:
        state.handle(msg)
        return ("noreply", state)


class _Server:
    """One node's name server: its replica of the table, its locks, its peers."""

    def __init__(self) -> None:
        self.pid: Pid = None  # type: ignore[assignment]  # set by init, in the process
        self.node = ""
        #: name -> {pid: its resolver's name}; more than one pid only in a conflict
        self.claims: dict[Term, dict[Pid, str | None]] = {}
        #: pid -> the names it claims
        self.names_of: dict[Pid, set[Term]] = {}
        #: monitors on local pids that claim names: ref -> pid, and back
        self.watch: dict[Ref, Pid] = {}
        self.watched: dict[Pid, Ref] = {}
        #: other nodes' servers we exchanged with: node -> (server, monitor)
        self.peers: dict[str, tuple[Pid, Ref]] = {}
        #: nodes whose claims we have (a sync came since they came up)
        self.synced: set[str] = set()
        #: name -> (the requester holding its lock, our monitor on it)
        self.locks: dict[Term, tuple[Pid, Ref]] = {}
        self.lock_refs: dict[Ref, Term] = {}
        #: conflicts this node resolved: name -> losers on other nodes whose
        #: owners were told to drop them (not shown while they do)
        self.losing: dict[Term, set[Pid]] = {}
        #: callers of start() waiting for syncs
        self.waiters = SyncWaiters()

    # -- reads ------------------------------------------------------------------

    def live(self, name: Term) -> list[Pid]:
        losing = self.losing.get(name, ())
        return sorted(p for p in self.claims.get(name, ()) if p not in losing)

    def whereis(self, name: Term) -> Pid | None:
        live = self.live(name)
        return live[0] if live else None

    def registered(self) -> list[Term]:
        return [name for name in self.claims if self.live(name)]

    # -- messages -----------------------------------------------------------------

    def handle(self, msg: Any) -> None:
        """A message from a registration, a peer, a monitor or net_kernel."""
        match msg:
            case ("lock", Ref() as ref, Pid() as holder, name):
                self.lock(ref, holder, name)
            case ("unlock", Pid() as holder, name):
                held = self.locks.get(name)
                if held is not None and held[0] == holder:
                    self.unlock(name)
            case ("register", (Pid() as caller, Ref() as tag, list() as acks), name, Pid() as pid, resolver):
                asked: list[str] = []
                ok = pid.node == self.node and kernel.is_alive(pid)
                if ok:
                    asked = self.own_claim(name, pid, resolver, (caller, tag, acks))
                kernel.send(caller, ("global_done", tag, ok, asked))
            case ("unregister", (Pid() as caller, Ref() as tag, list() as acks), name, keep):
                asked = []
                for pid in list(self.claims.get(name, ())):
                    if pid.node == self.node and pid != keep:
                        asked = self.own_drop(name, pid, (caller, tag, acks))
                kernel.send(caller, ("global_done", tag, True, asked))
            case ("claim", name, Pid() as pid, resolver, ack):
                if pid.node in set(net.nodes()):
                    self.put(name, pid, resolver)
                    self.check(name)
                self.ack(ack)
            case ("drop", name, Pid() as pid, ack):
                self.remove(name, pid)
                self.check(name)
                self.ack(ack)
            case ("lose", name, Pid() as pid):
                if pid.node == self.node and pid in self.claims.get(name, ()):
                    self.own_drop(name, pid, None)
            case ("discover", Pid() as peer):
                kernel.send(peer, ("sync", self.pid, self.own_claims()))
                if self.peers.get(peer.node, (None,))[0] != peer:
                    self.add_peer(peer)
                    kernel.send(peer, ("discover", self.pid))
            case ("sync", Pid() as peer, list() as claims):
                self.sync(peer, claims)
            case ("nodeup", str() as node):
                self.nodeup(node)
            case ("nodedown", str() as node):
                self.node_gone(node)
            case ("DOWN", Ref() as ref, "process", _, _):
                self.down(ref)
            case ("wait_timeout", Ref() as ref):
                self.waiters.update(self.synced, ref)
            case _:
                logger.debug("global: %s ignores %r", self.node, msg)

    # -- claims -------------------------------------------------------------------

    def put(self, name: Term, pid: Pid, resolver: str | None) -> None:
        """Record a claim (no questions asked: callers check)."""
        self.claims.setdefault(name, {})[pid] = resolver
        self.names_of.setdefault(pid, set()).add(name)

    def remove(self, name: Term, pid: Pid) -> None:
        claims = self.claims.get(name)
        if claims is None or pid not in claims:
            return
        del claims[pid]
        if not claims:
            del self.claims[name]
        losing = self.losing.get(name)
        if losing is not None:
            losing.discard(pid)
            if not losing:
                del self.losing[name]
        names = self.names_of.get(pid)
        if names is not None:
            names.discard(name)
            if not names:
                del self.names_of[pid]
                ref = self.watched.pop(pid, None)
                if ref is not None:
                    del self.watch[ref]
                    kernel.demonitor(ref, flush=True)

    def own_claims(self) -> list[tuple[Term, Pid, str | None]]:
        return [
            (name, pid, resolver)
            for name, claims in self.claims.items()
            for pid, resolver in claims.items()
            if pid.node == self.node
        ]

    def own_claim(self, name: Term, pid: Pid, resolver: str | None, ack: Any) -> list[str]:
        """Claim ``name`` for a local pid and tell every node; returns the nodes
        asked to acknowledge (see :meth:`broadcast`)."""
        self.put(name, pid, resolver)
        if pid not in self.watched:
            ref = kernel.monitor(pid)
            self.watch[ref] = pid
            self.watched[pid] = ref
        asked = self.broadcast(("claim", name, pid, resolver), ack)
        self.check(name)
        return asked

    def own_drop(self, name: Term, pid: Pid, ack: Any) -> list[str]:
        self.remove(name, pid)
        asked = self.broadcast(("drop", name, pid), ack)
        self.check(name)
        return asked

    def broadcast(self, msg: tuple[Any, ...], ack: Any) -> list[str]:
        """Send ``msg`` to every connected node's server; with ``ack`` =
        (caller, tag, nodes), those of ``nodes`` acknowledge to the caller.
        Returns the nodes asked to."""
        caller_tag, wanted = (None, set()) if ack is None else ((ack[0], ack[1]), set(ack[2]))
        asked = []
        for node in net.nodes():
            if node in wanted:
                asked.append(node)
                kernel.send((NAME, node), (*msg, caller_tag))
            else:
                kernel.send((NAME, node), (*msg, None))
        return asked

    def ack(self, ack: Any) -> None:
        if type(ack) is tuple and len(ack) == 2 and type(ack[0]) is Pid:
            kernel.send(ack[0], ("global_ack", ack[1], self.node))

    def drop_node(self, node: str) -> None:
        names = set()
        for pid in [p for p in self.names_of if p.node == node]:
            for name in list(self.names_of.get(pid, ())):
                self.remove(name, pid)
                names.add(name)
        for name in names:
            self.check(name)

    # -- conflicts ------------------------------------------------------------------

    def check(self, name: Term) -> None:
        """Resolve a conflict on ``name`` if this node is the one to (see module doc)."""
        live = self.live(name)
        if len(live) < 2 or live[0].node != self.node:
            return
        resolver = self.claims[name][live[0]]
        keeper: Pid | None = live[0]
        for other in live[1:]:
            if keeper is None:
                keeper = other
                continue
            winner = self.resolve(resolver, name, keeper, other)
            for loser in (keeper, other):
                if loser != winner:
                    self.lose(name, loser)
            keeper = winner

    def resolve(self, resolver: str | None, name: Term, pid1: Pid, pid2: Pid) -> Pid | None:
        try:
            fn = lower_node_wins if resolver is None else resolve_function(resolver)
            winner = fn(name, pid1, pid2)
        except Exception:
            logger.exception(
                "global: the resolver %s failed for %r: the name is unregistered", resolver, name
            )
            return None
        if winner is not None and winner not in (pid1, pid2):
            logger.error(
                "global: the resolver %s returned %r, not one of the pids: unregistering %r",
                resolver,
                winner,
                name,
            )
            return None
        return winner

    def lose(self, name: Term, pid: Pid) -> None:
        if pid.node == self.node:
            self.remove(name, pid)
            self.broadcast(("drop", name, pid), None)
        else:
            self.losing.setdefault(name, set()).add(pid)
            kernel.send((NAME, pid.node), ("lose", name, pid))

    # -- locks ------------------------------------------------------------------------

    def lock(self, ref: Ref, holder: Pid, name: Term) -> None:
        held = self.locks.get(name)
        granted = held is None or held[0] == holder
        if held is None:
            mref = kernel.monitor(holder)
            self.locks[name] = (holder, mref)
            self.lock_refs[mref] = name
        # The holders this server knows; a local one that just ended is not
        # one (its DOWN may still be on its way here).
        holders = [p for p in self.live(name) if p.node != self.node or kernel.is_alive(p)]
        kernel.send(holder, ("global_lock", ref, granted, holders))

    def unlock(self, name: Term) -> None:
        held = self.locks.pop(name, None)
        if held is not None:
            self.lock_refs.pop(held[1], None)
            kernel.demonitor(held[1], flush=True)

    # -- nodes and peers ---------------------------------------------------------------

    def nodeup(self, node: str) -> None:
        kernel.send((NAME, node), ("discover", self.pid))

    def add_peer(self, peer: Pid) -> None:
        old = self.peers.pop(peer.node, None)
        if old is not None:
            kernel.demonitor(old[1], flush=True)
        self.peers[peer.node] = (peer, kernel.monitor(peer))

    def sync(self, peer: Pid, claims: list[Any]) -> None:
        node = peer.node
        if node not in set(net.nodes()):
            return  # it went down after sending this; its nodedown follows
        if self.peers.get(node, (None,))[0] != peer:
            self.add_peer(peer)
        # The owner's list replaces what we knew of its claims. Applied as a
        # difference: a claim that stays keeps its state (a conflict this node
        # already resolved is not resolved again when the loser's owner syncs
        # twice, as it does when both sides discover each other).
        new: dict[tuple[Term, Pid], str | None] = {}
        for entry in claims:
            match entry:
                case (name, Pid() as pid, resolver) if pid.node == node:
                    new[(name, pid)] = resolver
        old = [(name, pid) for pid, names in self.names_of.items() if pid.node == node for name in names]
        for name, pid in old:
            if (name, pid) not in new:
                self.remove(name, pid)
        for (name, pid), resolver in new.items():
            self.put(name, pid, resolver)
        for name in {name for name, _ in old} | {name for name, _ in new}:
            self.check(name)
        self.synced.add(node)
        self.waiters.update(self.synced)

    def node_gone(self, node: str) -> None:
        self.drop_node(node)
        peer = self.peers.pop(node, None)
        if peer is not None:
            kernel.demonitor(peer[1], flush=True)
        self.synced.discard(node)
        self.waiters.update(self.synced)

    def down(self, ref: Ref) -> None:
        pid = self.watch.pop(ref, None)
        if pid is not None:
            del self.watched[pid]
            for name in list(self.names_of.get(pid, ())):
                self.own_drop(name, pid, None)
            return
        name = self.lock_refs.pop(ref, None)
        if name is not None:
            self.locks.pop(name, None)
            return
        for node, (_, r) in list(self.peers.items()):
            if r == ref:
                # Its server ended (or its node went down): its claims went with it.
                self.node_gone(node)

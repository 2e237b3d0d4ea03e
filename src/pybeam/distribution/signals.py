"""Control messages: from a peer to local signals, and what crosses a connection.

:class:`Signals` carries out the control messages a peer sends (a message, a
link, a monitor, a spawn request...) on the local node, through the narrow
:class:`~pybeam.distribution.local.LocalNode` interface, and records in the
peer's record (:class:`~pybeam.distribution.peer.Peer`) what now crosses the
connection. :func:`track` records the same for the signals this node sends;
:meth:`Signals.undo` gives each of them ``noconnection`` when the connection
goes down or its setup fails.

Signals naming a target that is not on this node are dropped and counted, as
BEAM drops them: forwarding would let a peer make this node reach any other
node, and no node sends such signals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from ..functions import resolve_function
from ..logtext import short
from ..terms import NOCONNECTION, NOPROC, Pid, Ref
from .connection import Op, ProtocolError
from .local import LocalNode
from .peer import Peer

__all__ = ["Signals", "track"]

logger = logging.getLogger("pybeam.distribution")


class Signals:
    """Incoming control messages of one node's connections."""

    def __init__(self, node: LocalNode, *, join_mesh: Callable[[str], None]) -> None:
        self.node = node
        self._join_mesh = join_mesh
        #: Spawn requests whose requester gave up: kill what the reply names.
        self.abandoned: set[Ref] = set()
        #: Signals dropped for naming a target not on this node.
        self.foreign_dropped = 0
        #: The node's event loop, once a spawn request needed it.
        self._loop: asyncio.AbstractEventLoop | None = None
        # A table from operation to handler: an rpc's SPAWN_REQUEST and DOWN
        # are not tried against a dozen patterns first.
        self._handlers: dict[Any, Callable[[Peer, tuple[Any, ...]], None]] = {
            Op.SEND: self._send,
            Op.SEND_NAME: self._send_name,
            Op.LINK: self._link,
            Op.UNLINK: self._link,
            Op.EXIT: self._link,
            Op.LINK_EXIT: self._link,
            Op.MONITOR: self._monitor,
            Op.DEMONITOR: self._monitor,
            Op.DOWN: self._down,
            Op.SPAWN_REQUEST: self._spawn_request,
            Op.SPAWN_REPLY: self._spawn_reply_op,
            Op.NODES: self._nodes,
        }

    @staticmethod
    def _reply(peer: Peer, control: tuple[Any, ...]) -> None:
        conn = peer.conn
        if conn is not None:
            conn.send(control)

    def dispatch(self, peer: Peer, control: tuple[Any, ...]) -> None:
        """Carry out a control message ``peer`` sent (ProtocolError if malformed)."""
        try:
            handler = self._handlers[control[0]]
        except (KeyError, TypeError, IndexError):  # unknown, unhashable or no op at all
            raise self._malformed(control) from None
        handler(peer, control)

    @staticmethod
    def _malformed(control: tuple[Any, ...]) -> ProtocolError:
        return ProtocolError(f"unknown or malformed control message {control!r:.200}")

    def _send(self, peer: Peer, control: tuple[Any, ...]) -> None:
        match control:
            case (_, Pid() as to, msg):
                if not self.node.deliver(to, msg) and to.node != self.node.name:
                    self._foreign(peer, control, to)
            case _:
                raise self._malformed(control)

    def _send_name(self, peer: Peer, control: tuple[Any, ...]) -> None:
        match control:
            case (_, str() as name, msg):
                self.node.deliver_named(name, msg)
            case _:
                raise self._malformed(control)

    def _link(self, peer: Peer, control: tuple[Any, ...]) -> None:
        node = self.node
        match control:
            case (_, _, Pid() as local, *_) if local.node != node.name:
                self._foreign(peer, control, local)
            case (Op.LINK, Pid() as remote, Pid() as local):
                if node.link_remote(local, remote):
                    peer.links.add((local, remote))
                else:
                    self._reply(peer, (Op.LINK_EXIT, local, remote, NOPROC))
            case (Op.UNLINK, Pid() as remote, Pid() as local):
                peer.links.discard((local, remote))
                node.unlink_remote(local, remote)
            case (Op.EXIT, Pid() as remote, Pid() as local, reason):
                node.exit(remote, local, reason)
            case (Op.LINK_EXIT, Pid() as remote, Pid() as local, reason):
                peer.links.discard((local, remote))
                node.link_exit(remote, local, reason)
            case _:
                raise self._malformed(control)

    def _monitor(self, peer: Peer, control: tuple[Any, ...]) -> None:
        here = self.node.name
        match control:
            case (_, Pid(), Pid() as target, Ref()) if target.node != here:
                self._foreign(peer, control, target)
            case (_, Pid(), (str(), str() as at) as target, Ref()) if at != here:
                self._foreign(peer, control, target)
            case (Op.MONITOR, Pid() as watcher, target, Ref() as ref):
                self._incoming_monitor(peer, watcher, target, ref)
            case (Op.DEMONITOR, Pid(), _, Ref() as ref):
                local = peer.monitors_in.pop(ref, None)
                if local is not None:
                    self.node.remove_monitor(local, ref)
            case _:
                raise self._malformed(control)

    def _down(self, peer: Peer, control: tuple[Any, ...]) -> None:
        # Checked by hand, not by a match statement: an rpc's answer (and
        # decoded terms are of exact types, so type() is isinstance here).
        if len(control) != 5 or type(control[1]) is not Pid or type(control[2]) is not Ref:
            raise self._malformed(control)
        _, watcher, ref, item, reason = control
        if watcher.node != self.node.name:
            self._foreign(peer, control, watcher)
            return
        # One look in spawns for the commonest DOWN, an rpc's (a ref this
        # node sent comes back as the same object: found by identity).
        # (An empty dict is not looked in: a look hashes the ref, a Python call.)
        out = peer.monitors_out
        entry = None if out and out.pop(ref, None) is not None else peer.spawns.pop(ref, None)
        if entry is not None:
            self._down_before_reply(peer, ref, entry, item, reason)
        else:
            self.node.deliver_down(watcher, ref, item, reason)

    def _spawn_request(self, peer: Peer, control: tuple[Any, ...]) -> None:
        # By hand rather than by a match statement, as _down.
        if (
            len(control) != 6
            or type(control[1]) is not Ref
            or type(control[2]) is not Pid
            or type(control[3]) is not str
            or type(control[4]) is not tuple
            or type(control[5]) is not dict
        ):
            raise self._malformed(control)
        _, ref, requester, fn, args, opts = control
        self._incoming_spawn(peer, ref, requester, fn, args, opts)

    def _spawn_reply_op(self, peer: Peer, control: tuple[Any, ...]) -> None:
        match control:
            case (_, Ref(), Pid() as requester, _) if requester.node != self.node.name:
                self._foreign(peer, control, requester)
            case (_, Ref() as ref, Pid() as requester, result):
                self._spawn_reply(peer, ref, requester, result)
            case _:
                raise self._malformed(control)

    def _nodes(self, peer: Peer, control: tuple[Any, ...]) -> None:
        match control:
            case (_, list() as addresses):
                for address in addresses:
                    if type(address) is str:
                        self._join_mesh(address)
            case _:
                raise self._malformed(control)

    def _foreign(self, peer: Peer, control: tuple[Any, ...], target: Any) -> None:
        """Drop a signal whose target is not on this node, and count it."""
        n = self.foreign_dropped = self.foreign_dropped + 1
        if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a bounded log however many come
            logger.debug(
                "node %s: dropped a signal (op %s) from %s for %s, not a pid of this node (%d so far)",
                self.node.name,
                short(control[0]),
                peer.name,
                short(target),
                n,
            )

    def _incoming_monitor(self, peer: Peer, watcher: Pid, target: Any, ref: Ref) -> None:
        if isinstance(target, Pid):
            local = self.node.add_monitor(target, watcher, ref, target)
        elif type(target) is tuple and len(target) == 2 and type(target[0]) is str:
            local = self.node.add_monitor(target[0], watcher, ref, target)
        else:
            raise ProtocolError(f"bad monitor target {target!r:.100}")
        if local is None:
            self._reply(peer, (Op.DOWN, watcher, ref, target, NOPROC))
        else:
            peer.monitors_in[ref] = local

    def _incoming_spawn(
        self,
        peer: Peer,
        ref: Ref,
        requester: Pid,
        fn_name: str,
        args: tuple[Any, ...],
        opts: dict[str, Any],
    ) -> None:
        try:
            fn = resolve_function(fn_name)
        except Exception as e:
            # Bounded: the name is the peer's, as large as a frame.
            why = f"cannot spawn {short(fn_name)}: {short(e)}"
            logger.warning("node %s %s for %r", self.node.name, why, requester)
            if opts.get("reply", True):
                self._reply(peer, (Op.SPAWN_REPLY, ref, requester, ("error", why)))
            return
        node = self.node
        if _folds(opts):
            # The requester wants only an error and the DOWN (an rpc), so the
            # process is monitored from its spawn. If it ends in its first
            # run, as most rpcs do, its DOWN is the whole answer (the
            # requester's side takes it as the reply too), so the reply waits
            # until that first run is over and goes only if the process still
            # runs. Scheduled after the process's first step, which
            # spawn_function has just scheduled.
            pid = node.spawn_function(fn, args, requester, ref)
            peer.monitors_in[ref] = pid
            loop = self._loop
            if loop is None:
                # Kept: on Python 3.11 get_running_loop() makes a getpid() system call.
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._reply_if_alive, peer, ref, requester, pid)
            return
        pid = node.spawn_function(fn, args)
        if not opts.get("reply", True):
            return  # a cast: nobody waits for the pid, nothing is linked or monitored
        self._reply(peer, (Op.SPAWN_REPLY, ref, requester, pid))
        if opts.get("link") and node.link_remote(pid, requester):
            peer.links.add((pid, requester))
        if opts.get("monitor") and node.add_monitor(pid, requester, ref, pid) is not None:
            peer.monitors_in[ref] = pid

    def _reply_if_alive(self, peer: Peer, ref: Ref, requester: Pid, pid: Pid) -> None:
        """The deferred spawn reply of a request :func:`_folds`: needed only
        if the process still runs (else its DOWN has gone, and answered)."""
        if self.node.is_alive(pid):
            self._reply(peer, (Op.SPAWN_REPLY, ref, requester, pid))

    def _down_before_reply(
        self, peer: Peer, ref: Ref, entry: tuple[Pid, dict[str, Any]], item: Any, reason: Any
    ) -> None:
        """A DOWN for a spawn request not answered yet (``entry``, just taken
        from ``peer.spawns``): the process ended before its (deferred) reply
        was due, and the DOWN answers for both. Only for a request that asked
        for it (:func:`_folds`); any other is a DOWN for no monitor, dropped as
        :meth:`LocalNode.deliver_down` does, and its request still waits."""
        if not _folds(entry[1]):
            peer.spawns[ref] = entry
            return
        if self.abandoned and ref in self.abandoned:
            self.abandoned.discard(ref)  # its requester gave up; it has ended anyway
            return
        # To the requester the spawn request names, whoever the peer says.
        self.node.deliver(entry[0], ("DOWN", ref, "process", item, reason))

    def _spawn_reply(self, peer: Peer, ref: Ref, requester: Pid, result: Any) -> None:
        entry = peer.spawns.pop(ref, None)
        if entry is None:
            return
        if ref in self.abandoned:
            self.abandoned.discard(ref)
            if isinstance(result, Pid):
                self._reply(peer, (Op.EXIT, requester, result, "kill"))
            return
        node = self.node
        opts: dict[str, Any] = entry[1]
        if not isinstance(result, Pid):
            why = result[1] if type(result) is tuple else result
            node.deliver(requester, ("spawn_reply", ref, "error", why))
            return
        if opts.get("link"):
            if node.link_remote(requester, result):
                peer.links.add((requester, result))
            else:
                self._reply(peer, (Op.LINK_EXIT, requester, result, NOPROC))
        if opts.get("monitor"):
            if node.watch_remote(requester, ref, result):
                peer.monitors_out[ref] = (requester, result)
            else:
                self._reply(peer, (Op.DEMONITOR, requester, result, ref))
        if opts.get("reply") != ERROR_ONLY:
            node.deliver(requester, ("spawn_reply", ref, "ok", result))

    def undo(self, peer: Peer) -> None:
        """``noconnection`` for every link, monitor and spawn request that
        crossed (or was queued for) the peer's connection; each once."""
        node = self.node
        links, monitors_out, monitors_in, spawns = peer.take_tracked()
        for local, remote in links:
            node.link_exit(remote, local, NOCONNECTION)
        for ref, (watcher, item) in monitors_out.items():
            node.deliver_down(watcher, ref, item, NOCONNECTION)
        for ref, target in monitors_in.items():
            node.remove_monitor(target, ref)
        for ref, (requester, _) in spawns.items():
            if ref in self.abandoned:
                self.abandoned.discard(ref)
            else:
                node.deliver(requester, ("spawn_reply", ref, "error", NOCONNECTION))


_SEND: Final = Op.SEND
_SEND_NAME: Final = Op.SEND_NAME
_SPAWN_REQUEST: Final = Op.SPAWN_REQUEST
_DOWN: Final = Op.DOWN

#: A spawn request's ``reply`` option for "only an error" (``{reply, error_only}``).
ERROR_ONLY: Final = "error_only"


def _folds(opts: dict[str, Any]) -> bool:
    """Whether a spawn request's reply may be left out when its process ends
    before the reply is due, its DOWN answering for both: only an error was
    asked for, with a monitor (whose DOWN names the pid) and no link (which
    the reply would set up on the requester's side)."""
    return opts.get("reply") == ERROR_ONLY and bool(opts.get("monitor")) and not opts.get("link")


def track(peer: Peer, control: tuple[Any, ...]) -> None:
    """Record in ``peer`` what an outgoing signal makes cross its connection
    (or undoes): what must be undone if the connection goes down."""
    # An rpc's two signals (a request here, a DOWN there) and messages first,
    # by hand: a match statement tries its cases one by one.
    op = control[0]
    n = len(control)
    if op in (_SEND, _SEND_NAME):
        return
    if op == _SPAWN_REQUEST and n == 6:
        opts = control[5]
        if opts.get("reply", True):
            peer.spawns[control[1]] = (control[2], opts)
        return
    if op == _DOWN and n == 5:
        peer.monitors_in.pop(control[2], None)
        return
    match control:
        case (Op.LINK, local, remote):
            peer.links.add((local, remote))
        case (Op.UNLINK | Op.LINK_EXIT, local, remote, *_):
            peer.links.discard((local, remote))
        case (Op.MONITOR, watcher, target, ref):
            peer.monitors_out[ref] = (watcher, target)
        case (Op.DEMONITOR, _, _, ref):
            peer.monitors_out.pop(ref, None)

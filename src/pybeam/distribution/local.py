"""What the distribution needs from the local node: a narrow interface.

The net kernel turns control messages from peers into local signals and
needs a handful of things from the node for that, listed in
:class:`LocalNode`. It uses nothing else of the node (no process table, no
process internals), so the node can change how it keeps processes without
touching the distribution. :class:`pybeam.node.Node` implements it. The other
direction, what the node needs from the distribution, is
:class:`pybeam.node.RemoteRouter`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..terms import Pid, Ref

__all__ = ["LocalNode"]


class LocalNode(Protocol):
    """The node as the distribution sees it. Every pid given is a local one
    unless said otherwise; none of these methods blocks."""

    name: str
    creation: int

    def make_ref(self) -> Ref:
        """A new unique reference."""
        ...

    def deliver(self, to: Pid, msg: Any) -> bool:
        """Put ``msg`` in the mailbox of local process ``to``; False if there is none."""
        ...

    def deliver_named(self, name: str, msg: Any) -> bool:
        """Put ``msg`` in the mailbox of the local process registered as
        ``name``; False if nobody holds the name."""
        ...

    def is_alive(self, pid: Pid) -> bool:
        """Whether ``pid`` is a live local process."""
        ...

    def spawn_function(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        watcher: Pid | None = None,
        ref: Ref | None = None,
    ) -> Pid:
        """Start ``fn(*args)`` as a new process; its pid. With ``watcher`` (a
        remote pid), the process is monitored by it as ``ref`` from the start
        (its DOWN names the pid), one call rather than spawn and add_monitor."""
        ...

    def exit(self, sender: Pid, target: Pid, reason: Any) -> None:
        """Deliver the exit signal ``reason`` from remote ``sender`` (``exit/2``)."""
        ...

    def link_exit(self, sender: Pid, target: Pid, reason: Any) -> None:
        """Deliver the exit signal of linked process ``sender`` to ``target``
        (a remote ``target`` goes back out through the distribution)."""
        ...

    def link_remote(self, local: Pid, remote: Pid) -> bool:
        """Record that ``local`` is linked to ``remote``; False if ``local`` is not alive."""
        ...

    def unlink_remote(self, local: Pid, remote: Pid) -> None:
        """Forget the link between ``local`` and ``remote``, if any."""
        ...

    def add_monitor(self, target: Pid | str, watcher: Pid, ref: Ref, item: Any) -> Pid | None:
        """Record that remote ``watcher`` monitors a local pid or registered
        name; the monitored pid, or None if there is no such process."""
        ...

    def remove_monitor(self, target: Pid | tuple[str, str], ref: Ref) -> None:
        """Forget the monitor ``ref`` a remote watcher held on a local target."""
        ...

    def watch_remote(self, watcher: Pid, ref: Ref, target: Pid) -> bool:
        """Record that local ``watcher`` monitors remote ``target`` under
        ``ref``; False if ``watcher`` is not alive."""
        ...

    def deliver_down(self, watcher: Pid, ref: Ref, item: Any, reason: Any) -> None:
        """Give ``watcher`` its DOWN for monitor ``ref`` (if it still holds it)."""
        ...

    def suspend_sender(self, until: Callable[[], Awaitable[None]]) -> None:
        """The process running now (if one is) waits for ``until()`` at its
        next await point: backpressure for a ``send`` that cannot wait."""
        ...

"""Exceptions raised by pybeam's functions, and the one processes raise to exit."""

from __future__ import annotations

from typing import Any

__all__ = ["BadArg", "Exit", "NoProc", "NodeDown", "NotDistributed", "PybeamError", "SpawnError"]


class PybeamError(Exception):
    """Base class of the errors pybeam raises."""


class BadArg(PybeamError, ValueError):
    """A function was given an argument it cannot act on (Erlang's ``badarg``).

    For example: registering a name that is taken, registering a dead pid, or
    sending to a name nobody registered. The message says which.
    """


class NoProc(PybeamError, LookupError):
    """The process named does not exist (Erlang's ``noproc``): for example
    linking to a local pid that has already exited."""

    def __init__(self, target: Any, message: str | None = None) -> None:
        super().__init__(message or f"no such process: {target!r}")
        self.target = target


class NodeDown(PybeamError, ConnectionError):
    """The node is not connected and cannot be reached (BEAM's ``noconnection``)."""

    def __init__(self, node: str, message: str | None = None) -> None:
        super().__init__(message or f"node {node} cannot be reached (noconnection)")
        self.node = node


class NotDistributed(PybeamError):
    """A distribution function was called on a node started without a name."""


class SpawnError(PybeamError):
    """Another node could not spawn the function asked for (e.g. it cannot import it)."""


class Exit(BaseException):
    """Raised by :func:`pybeam.exit` to end the calling process with ``reason``.

    It derives from ``BaseException`` so that a broad ``except Exception`` in
    process code does not swallow a deliberate exit, as ``exit/1`` cannot be
    caught by accident in Erlang either.
    """

    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"Exit({self.reason!r})"

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
    """The node is not connected and cannot be reached (BEAM's ``noconnection``).

    ``reason`` says why connecting failed when that is known (e.g. ``"cookie
    refused by peer ..."``, ``"node b@host is not registered with the port
    mapper ..."``, ``"connection refused ..."``), else None.
    """

    def __init__(self, node: str, message: str | None = None, *, reason: str | None = None) -> None:
        if message is None:
            message = (
                f"node {node} cannot be reached: {reason}"
                if reason
                else f"node {node} cannot be reached (noconnection)"
            )
        super().__init__(message)
        self.node = node
        self.reason = reason


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

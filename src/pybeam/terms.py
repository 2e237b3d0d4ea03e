"""The terms that name things across a cluster: pids, references and crash reasons.

A :class:`Pid` names a process by its node's name, a number and the node's
*creation* (its incarnation), so a pid from a node's earlier life never equals a
live one. A :class:`Ref` is a cluster-unique reference, as ``make_ref()`` gives.
A :class:`Crash` is the exit reason of a process that raised: it carries the
exception's type, message and traceback as text (so it can travel between
nodes) and, on the node where it happened, the exception itself.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .process import Process

__all__ = ["KILL", "KILLED", "NOCONNECTION", "NOPROC", "NORMAL", "Crash", "Pid", "Ref", "Term"]

#: Anything that can be sent: None, bool, int, float, str, bytes, tuple, list,
#: dict, Pid, Ref, Crash, nested. (A precise recursive type would not help mypy.)
Term = Any

#: Exit reasons with a meaning of their own, spelled as BEAM's atoms are.
NORMAL: Final = "normal"
KILL: Final = "kill"
KILLED: Final = "killed"
NOPROC: Final = "noproc"
NOCONNECTION: Final = "noconnection"


class Pid:
    """A process identifier: ``node``, ``id`` and the node's ``creation``.

    Pids are hashable and compare by value; treat them as immutable. They print as
    ``<node.id.creation>``.
    """

    # No cached hash: an idle process should cost as little as possible, and
    # id ^ creation is as quick to compute as a stored hash is to fetch.
    # ``_proc`` is not part of the value: the runtime's shortcut from the pid a
    # spawn returned to its live local process (see pybeam.kernel.send), set
    # while the process lives, so a local send needs no hashing (__hash__ is a
    # Python call) and no lookup in the process table.
    __slots__ = ("_proc", "creation", "id", "node")

    def __init__(self, node: str, id: int, creation: int) -> None:
        self.node = node
        self.id = id
        self.creation = creation
        self._proc: Process | None = None

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not Pid:
            return NotImplemented
        return self.id == other.id and self.node == other.node and self.creation == other.creation

    def __hash__(self) -> int:
        return self.id ^ self.creation

    def __lt__(self, other: Pid) -> bool:
        if type(other) is not Pid:
            return NotImplemented
        return (self.node, self.creation, self.id) < (other.node, other.creation, other.id)

    def __repr__(self) -> str:
        return f"<{self.node}.{self.id}.{self.creation}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Pid, (self.node, self.id, self.creation))


class Ref:
    """A unique reference (``make_ref()``): for monitors, timers and call tags."""

    __slots__ = ("_hash", "creation", "id", "node")

    def __init__(self, node: str, id: int, creation: int) -> None:
        self.node = node
        self.id = id
        self.creation = creation
        self._hash = hash((node, id, creation, "ref"))

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not Ref:
            return NotImplemented
        return self.id == other.id and self.node == other.node and self.creation == other.creation

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"#Ref<{self.node}.{self.id}.{self.creation}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Ref, (self.node, self.id, self.creation))


class Crash:
    """The exit reason of a process that raised an exception.

    ``kind`` is the exception's qualified type name, ``message`` its ``str()``,
    ``traceback`` the formatted traceback. ``exception`` is the exception object
    on the node where the crash happened and ``None`` after crossing a node.
    Two crashes are equal when kind and message are.
    """

    __slots__ = ("exception", "kind", "message", "traceback")

    def __init__(
        self,
        kind: str,
        message: str,
        traceback: str = "",
        exception: BaseException | None = None,
    ) -> None:
        self.kind = kind
        self.message = message
        self.traceback = traceback
        self.exception = exception

    @classmethod
    def from_exception(cls, exc: BaseException) -> Crash:
        """Build the reason for a process that ended by raising ``exc``."""
        t = type(exc)
        kind = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
        tb = "".join(traceback.format_exception(exc))
        return cls(kind, str(exc), tb, exc)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Crash:
            return NotImplemented
        return self.kind == other.kind and self.message == other.message

    def __hash__(self) -> int:
        return hash((self.kind, self.message))

    def __repr__(self) -> str:
        return f"Crash({self.kind}: {self.message})"

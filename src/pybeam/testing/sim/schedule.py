"""Fault schedules: what happens to a cluster, step by step, as plain data.

A schedule is a list of steps. Nodes are named by their index in the
cluster (0 is the first node), so one schedule applies to any cluster of
enough nodes: a :class:`~pybeam.testing.sim.SimCluster` (:func:`apply`) or
real OS-process nodes (:mod:`pybeam.testing.sim.replay`). Steps print as the
Python that makes them, so a failing schedule can be pasted back into a test::

    [Partition((0,), (1, 2)), Wait(5.0), Kill(1), Heal(), Restart(1)]

Faults take no time; only :class:`Wait` lets time pass (virtual time in a
simulation, real time on real nodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cluster import SimCluster

__all__ = [
    "Delay",
    "Drop",
    "Freeze",
    "Heal",
    "Kill",
    "Partition",
    "Restart",
    "Step",
    "Wait",
    "apply",
    "describe",
]


@dataclass(frozen=True)
class Kill:
    """Crash node ``node``: all its processes die at once. Without ``fin`` its
    peers notice only by their tick timeout (a host gone)."""

    node: int
    fin: bool = False

    def __repr__(self) -> str:
        return f"Kill({self.node}{', fin=True' if self.fin else ''})"


@dataclass(frozen=True)
class Restart:
    """Start a killed node again, under the same name (a new incarnation)."""

    node: int

    def __repr__(self) -> str:
        return f"Restart({self.node})"


@dataclass(frozen=True)
class Partition:
    """Cut nodes ``side`` off from ``other`` (default: every other node); with
    ``oneway`` only traffic from ``side`` to ``other`` is lost."""

    side: tuple[int, ...]
    other: tuple[int, ...] | None = None
    oneway: bool = False

    def __repr__(self) -> str:
        parts = [repr(self.side)]
        if self.other is not None:
            parts.append(repr(self.other))
        if self.oneway:
            parts.append("oneway=True")
        return f"Partition({', '.join(parts)})"


@dataclass(frozen=True)
class Heal:
    """End every partition."""

    def __repr__(self) -> str:
        return "Heal()"


@dataclass(frozen=True)
class Delay:
    """Delay the traffic between ``a`` and ``b`` (both ways) by ``seconds`` (0 ends it)."""

    a: int
    b: int
    seconds: float

    def __repr__(self) -> str:
        return f"Delay({self.a}, {self.b}, {self.seconds!r})"


@dataclass(frozen=True)
class Drop:
    """Break the connection between ``a`` and ``b`` now; refuse new ones for ``seconds``."""

    a: int
    b: int
    seconds: float = 0.0

    def __repr__(self) -> str:
        return f"Drop({self.a}, {self.b}, {self.seconds!r})"


@dataclass(frozen=True)
class Freeze:
    """Stop node ``node``'s traffic both ways for ``seconds``."""

    node: int
    seconds: float

    def __repr__(self) -> str:
        return f"Freeze({self.node}, {self.seconds!r})"


@dataclass(frozen=True)
class Wait:
    """Let ``seconds`` pass."""

    seconds: float

    def __repr__(self) -> str:
        return f"Wait({self.seconds!r})"


Step = Kill | Restart | Partition | Heal | Delay | Drop | Freeze | Wait


def describe(schedule: list[Step]) -> str:
    """The schedule as the Python list that makes it."""
    return "[" + ", ".join(repr(s) for s in schedule) + "]"


def _name(cluster: SimCluster, index: int) -> str:
    return cluster.names[index % len(cluster.names)]


async def apply(step: Step, cluster: SimCluster) -> None:
    """Apply one step to a simulated cluster. A step that cannot apply (kill a
    dead node, restart a live one, a link between a node and itself) does nothing."""
    match step:
        case Kill(node, fin):
            cluster.kill(_name(cluster, node), fin=fin)
        case Restart(node):
            name = _name(cluster, node)
            if not cluster.alive(name):
                await cluster.restart(name)
        case Partition(side, other, oneway):
            names = sorted({_name(cluster, i) for i in side})
            rest = None if other is None else sorted({_name(cluster, i) for i in other} - set(names))
            cluster.partition(names, rest, oneway=oneway)
        case Heal():
            cluster.heal()
        case Delay(a, b, seconds):
            if _name(cluster, a) != _name(cluster, b):
                cluster.delay(_name(cluster, a), _name(cluster, b), seconds)
        case Drop(a, b, seconds):
            if _name(cluster, a) != _name(cluster, b):
                cluster.drop(_name(cluster, a), _name(cluster, b), seconds)
        case Freeze(node, seconds):
            name = _name(cluster, node)
            if cluster.alive(name):
                cluster.freeze(name, seconds)
        case Wait(seconds):
            await cluster.sleep(seconds)
        case _:
            raise TypeError(f"not a schedule step: {step!r}")

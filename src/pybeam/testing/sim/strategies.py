"""Hypothesis strategies for fault schedules (see :mod:`pybeam.testing.sim.schedule`).

Every choice shrinks towards the simplest schedule: fewer steps, node 0,
short waits, symmetric partitions, no FIN; so a failing schedule shrinks to
a short one that reads as a story.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hypothesis import strategies as st

from .schedule import Delay, Drop, Freeze, Heal, Kill, Partition, Restart, Step, Wait

__all__ = ["FAULTS", "schedules", "steps"]

#: Every kind of step, simplest first (hypothesis shrinks towards the first).
FAULTS = ("wait", "heal", "partition", "kill", "restart", "drop", "delay", "freeze")

#: Virtual seconds a Wait, a Freeze, a Delay or a refusal lasts, shortest first.
WAITS: Sequence[float] = (1.0, 0.5, 2.0, 5.0, 10.0)


def steps(
    nodes: int, *, faults: Iterable[str] = FAULTS, waits: Sequence[float] = WAITS
) -> st.SearchStrategy[Step]:
    """One step on a cluster of ``nodes`` nodes, of the kinds in ``faults``."""
    if nodes < 2:
        raise ValueError("a fault schedule needs at least two nodes")
    kinds = list(faults)
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULTS}")
    node = st.integers(0, nodes - 1)
    seconds = st.sampled_from(list(waits))
    side = st.sets(node, min_size=1, max_size=nodes - 1).map(lambda s: tuple(sorted(s)))
    # Two different nodes, the lower first (a link has no direction here).
    pair = st.lists(node, min_size=2, max_size=2, unique=True).map(lambda p: (min(p), max(p)))
    made: dict[str, st.SearchStrategy[Step]] = {
        "wait": st.builds(Wait, seconds),
        "heal": st.just(Heal()),
        "partition": st.builds(Partition, side, st.none(), st.booleans()),
        "kill": st.builds(Kill, node, st.booleans()),
        "restart": st.builds(Restart, node),
        "drop": st.builds(lambda p, s: Drop(p[0], p[1], s), pair, seconds),
        "delay": st.builds(lambda p, s: Delay(p[0], p[1], s), pair, seconds),
        "freeze": st.builds(Freeze, node, seconds),
    }
    return st.one_of(*(made[k] for k in FAULTS if k in kinds))


def schedules(
    nodes: int = 3,
    *,
    min_steps: int = 0,
    max_steps: int = 10,
    faults: Iterable[str] = FAULTS,
    waits: Sequence[float] = WAITS,
) -> st.SearchStrategy[list[Step]]:
    """A list of ``min_steps``..``max_steps`` steps on a cluster of ``nodes`` nodes."""
    return st.lists(steps(nodes, faults=faults, waits=waits), min_size=min_steps, max_size=max_steps)

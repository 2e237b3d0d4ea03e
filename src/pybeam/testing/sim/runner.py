"""Property tests of a service under fault schedules: :class:`Scenario`,
:func:`run_schedule` (one schedule) and :func:`explore` (hypothesis drives
many, and shrinks the one that fails).

A scenario says what the service is and what must hold::

    class CounterConverges(Scenario):
        nodes = 3

        async def start(self, cluster, node):      # each node's boot, restarts too
            await cluster.call(node, counter.start)

        async def during(self, cluster, i):        # the workload, after each step
            ...

        async def check(self, cluster):            # after recovery: what must hold
            ...

    explore(CounterConverges, max_examples=200)

A failing run raises the scenario's error with a note naming the schedule,
the seed and the line that replays it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .cluster import SimCluster, run
from .schedule import Step, apply, describe

__all__ = ["Scenario", "explore", "reproducer", "run_schedule"]


class Scenario:
    """What a property test does around a schedule; override what you need.

    The run: start the cluster (``nodes`` nodes, ``ticktime``), :meth:`start`
    on each node, then for each step of the schedule: apply it,
    :meth:`during`, :meth:`invariant`. Then every fault is undone (heal,
    thaw, restart the killed nodes, which runs :meth:`start` on them), the
    cluster waits ``settle`` virtual seconds, and :meth:`check` runs.
    """

    nodes: int = 3
    ticktime: float = 4.0
    settle: float = 5.0

    async def start(self, cluster: SimCluster, node: str) -> None:
        """Start the service on ``node`` (at boot and after each restart)."""

    async def during(self, cluster: SimCluster, step: int) -> None:
        """The workload, after step number ``step`` of the schedule."""

    async def invariant(self, cluster: SimCluster) -> None:
        """What holds at every moment (raise AssertionError if not)."""

    async def check(self, cluster: SimCluster) -> None:
        """What holds once every fault is undone and the cluster has settled."""


def reproducer(make: Callable[[], Scenario], schedule: list[Step], seed: int) -> str:
    """The line of Python that runs this schedule again."""
    module = getattr(make, "__module__", "?")
    name = getattr(make, "__qualname__", repr(make))
    return (
        f"reproduce with:\n    from pybeam.testing.sim import *\n    from {module} import {name.split('.')[0]}\n"
        f"    run_schedule({name}, {describe(schedule)}, seed={seed})"
    )


def run_schedule(
    make: Callable[[], Scenario], schedule: list[Step], *, seed: int = 0
) -> list[tuple[Any, ...]]:
    """Run ``schedule`` against a fresh simulated cluster with the scenario
    ``make()``; returns the cluster's trace. Deterministic: the same
    arguments give the same trace. An error is re-raised with a note that
    says how to reproduce it."""

    async def main() -> list[tuple[Any, ...]]:
        scenario = make()

        async def started(cluster: SimCluster, node: str) -> None:
            await scenario.start(cluster, node)

        async with SimCluster(scenario.nodes, ticktime=scenario.ticktime, on_start=started) as cluster:
            for i, step in enumerate(schedule):
                await apply(step, cluster)
                await scenario.during(cluster, i)
                await scenario.invariant(cluster)
            await cluster.recover(scenario.settle)
            await scenario.check(cluster)
            return cluster.trace

    try:
        return run(main, seed=seed)
    except Exception as e:
        e.add_note(reproducer(make, schedule, seed))
        raise


def explore(
    make: Callable[[], Scenario],
    *,
    max_examples: int = 100,
    max_steps: int = 8,
    faults: tuple[str, ...] | None = None,
    seeds: int = 1000,
    **hypothesis_settings: Any,
) -> None:
    """Run the scenario under ``max_examples`` schedules (and seeds below
    ``seeds``) drawn by hypothesis, of the fault kinds ``faults`` (default:
    every kind, :data:`~pybeam.testing.sim.strategies.FAULTS`); the first
    failure is shrunk to a small schedule and raised, with the line that
    reproduces it. Other keyword arguments are hypothesis settings
    (``derandomize=True``, ``database=...``, ``phases=...``)."""
    # Only here: the rest of the simulation works without hypothesis installed.
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from .strategies import FAULTS, schedules

    nodes = make().nodes
    kinds = FAULTS if faults is None else faults

    options: dict[str, Any] = {
        "max_examples": max_examples,
        "deadline": None,
        "database": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    options.update(hypothesis_settings)

    @settings(**options)
    @given(schedule=schedules(nodes, max_steps=max_steps, faults=kinds), seed=st.integers(0, seeds - 1))
    def schedules_hold(schedule: list[Step], seed: int) -> None:
        run_schedule(make, schedule, seed=seed)

    schedules_hold()

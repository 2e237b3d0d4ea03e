"""A counterexample found in simulation, confirmed on real nodes: the same
scenario and schedule on a LocalCluster (OS processes, real TCP)."""

from __future__ import annotations

import pytest

import pybeam
from pybeam.testing.sim import Heal, Partition, Step, Wait, run_schedule
from pybeam.testing.sim.replay import replay_schedule

from .test_gcounter import BuggyCounter, CounterConverges

#: A partition longer than the tick time, which the buggy counter does not
#: survive: what is counted on the cut-off node never reaches the others,
#: and nothing sends it again once the partition heals.
SCHEDULE: list[Step] = [Partition((0,)), Wait(5.0)]


def test_the_schedule_fails_the_buggy_counter_in_simulation() -> None:
    with pytest.raises(AssertionError, match="the replicas disagree"):
        run_schedule(BuggyCounter, SCHEDULE)
    run_schedule(CounterConverges, SCHEDULE)


async def test_the_schedule_fails_the_buggy_counter_on_real_nodes(beam_node: pybeam.Node) -> None:
    with pytest.raises(AssertionError, match="the replicas disagree"):
        await replay_schedule(BuggyCounter, SCHEDULE)


async def test_the_correct_counter_survives_the_schedule_on_real_nodes(beam_node: pybeam.Node) -> None:
    await replay_schedule(CounterConverges, [*SCHEDULE, Heal()])

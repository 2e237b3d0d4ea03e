"""The user-style example of docs/testing_failures.md: "my counter converges
under any schedule", and the planted bug that the property test finds."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test

from pybeam.testing import sim
from pybeam.testing.sim import FaultStateMachine, Scenario, SimCluster, explore, run_schedule
from pybeam.testing.sim.schedule import Drop, Heal, Kill, Partition, Restart, Step, Wait

from . import gcounter


class CounterConverges(Scenario):
    """After any schedule, once the faults are undone, every replica holds
    the same total, and no more than was counted."""

    nodes = 3
    buggy = False

    def __init__(self) -> None:
        self.counted = 0

    async def start(self, cluster: SimCluster, node: str) -> None:
        await cluster.call(node, gcounter.start, self.buggy)

    async def during(self, cluster: SimCluster, step: int) -> None:
        # Step i counts i + 1 on node i (mod the nodes): no two steps count
        # the same, so replicas that missed different updates disagree.
        node = cluster.names[step % self.nodes]
        if cluster.alive(node):
            for _ in range(step + 1):
                await cluster.call(node, gcounter.increment)
                self.counted += 1
        await cluster.sleep(0.1)

    async def check(self, cluster: SimCluster) -> None:
        values = {node: await cluster.call(node, gcounter.value) for node in cluster.names}
        assert len(set(values.values())) == 1, f"the replicas disagree: {values}"
        assert max(values.values()) <= self.counted


class BuggyCounter(CounterConverges):
    buggy = True


def test_the_counter_converges_under_any_schedule() -> None:
    explore(CounterConverges, max_examples=40)


def test_the_planted_bug_is_found_shrunk_and_reproduced() -> None:
    with pytest.raises(AssertionError, match="the replicas disagree") as caught:
        explore(BuggyCounter, max_examples=200)
    note = "\n".join(getattr(caught.value, "__notes__", []))
    found = re.search(r"run_schedule\(BuggyCounter, (\[.*\]), seed=(\d+)\)", note)
    assert found, note
    schedule: list[Step] = eval(found.group(1), vars(sim))
    # Shrunk to one fault (and maybe a wait): a broadcast lost with a
    # connection (a partition, a drop...), or a restarted node never told.
    assert len(schedule) <= 2 and not all(isinstance(s, Wait) for s in schedule), schedule
    with pytest.raises(AssertionError, match="the replicas disagree"):
        run_schedule(BuggyCounter, schedule, seed=int(found.group(2)))


def test_without_faults_even_the_buggy_counter_converges() -> None:
    # The bug needs a fault to show: the property test is what finds it.
    run_schedule(BuggyCounter, [Wait(1.0), Wait(1.0), Wait(1.0)])
    run_schedule(CounterConverges, [Partition((0,)), Wait(5.0), Heal()])


def test_a_count_only_one_replica_heard_is_passed_on() -> None:
    # Found by benchmarks/sim.py's random schedules: without passing on what
    # a merge teaches, n2's count that only n1 heard before n2 crashed never
    # reached n3 (n1 and n3 stayed connected, so no nodeup made up for it).
    schedule: list[Step] = [Drop(1, 2, 1.0), Wait(5.0), Restart(0), Heal(), Wait(5.0), Kill(1)]
    run_schedule(CounterConverges, schedule, seed=373)


class CounterMachine(FaultStateMachine):
    """The counter as a state machine: increments and faults interleaved by
    hypothesis; at the end, once the faults are undone, the replicas agree."""

    buggy = False

    async def start_node(self, node: str) -> None:
        await self.cluster.call(node, gcounter.start, self.buggy)

    @rule(data=st.data())
    def increment(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(self.cluster.names), label="node")
        if self.cluster.alive(node):
            self.call(node, gcounter.increment)

    def teardown(self) -> None:
        try:
            self.recover()
            values = {node: self.call(node, gcounter.value) for node in self.cluster.names}
            assert len(set(values.values())) == 1, f"the replicas disagree: {values}"
        finally:
            super().teardown()


class BuggyCounterMachine(CounterMachine):
    buggy = True


MACHINE_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=10,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_the_counter_converges_under_interleaved_faults() -> None:
    run_state_machine_as_test(CounterMachine, settings=MACHINE_SETTINGS)


def test_the_state_machine_finds_the_planted_bug_too() -> None:
    # Found, not shrunk (the explore test above checks the shrinking): quicker.
    quick = settings(MACHINE_SETTINGS, max_examples=200, phases=[Phase.generate])
    with pytest.raises(AssertionError, match="the replicas disagree"):
        run_state_machine_as_test(BuggyCounterMachine, settings=quick)

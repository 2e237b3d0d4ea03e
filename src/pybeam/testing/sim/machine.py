"""A hypothesis ``RuleBasedStateMachine`` over a simulated cluster.

:class:`SimStateMachine` starts a :class:`~pybeam.testing.sim.SimCluster`
for each run of the machine, on its own :class:`VirtualLoop`; rules are plain
(synchronous) methods that drive the cluster with :meth:`~SimStateMachine.run`
and :meth:`~SimStateMachine.call`. Between rules the loop stands still: virtual
time passes only inside a rule. The interleaving seed is drawn by hypothesis,
so a failing run shrinks to a small sequence of rules *and* seed::

    class Groups(SimStateMachine):
        nodes = 3

        @rule(data=st.data())
        def join(self, data):
            node = data.draw(st.sampled_from(self.cluster.names))
            self.call(node, pg.join, "g", ...)

        @rule()
        def split(self):
            self.cluster.partition([self.cluster.names[0]])
            self.wait(10)

    TestGroups = Groups.TestCase
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import ExitStack
from typing import Any, TypeVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from .cluster import SimCluster, _cancel_all
from .loop import VirtualLoop
from .schedule import Step, apply
from .strategies import FAULTS, steps

__all__ = ["FaultStateMachine", "SimStateMachine"]

T = TypeVar("T")


class SimStateMachine(RuleBasedStateMachine):
    """A state machine whose system under test is a fresh simulated cluster.

    Class attributes: ``nodes`` (how many), ``ticktime``, ``latency``.
    Override :meth:`start_node` to start services on each node (at start and
    after each restart).
    """

    nodes: int = 3
    ticktime: float = 4.0
    latency: float = 0.001

    def __init__(self) -> None:
        super().__init__()
        self._exit = ExitStack()
        state = random.getstate()
        self._exit.callback(random.setstate, state)
        random.seed(0)
        self.loop = VirtualLoop(0)
        self._exit.callback(self._close_loop)
        self.cluster = SimCluster(
            self.nodes, ticktime=self.ticktime, latency=self.latency, on_start=self._started
        )
        try:
            self.run(self.cluster.start())
        except BaseException:
            self._exit.close()
            raise

    async def _started(self, cluster: SimCluster, node: str) -> None:
        await self.start_node(node)

    async def start_node(self, node: str) -> None:
        """Start the services under test on ``node``."""

    @initialize(seed=st.integers(0, 1 << 16))
    def _interleaving(self, seed: int) -> None:
        # Which ready process runs first, from here on.
        self.loop._rng = random.Random(seed)
        random.seed(seed)

    # -- driving the cluster --------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the simulation's loop (time passes while it runs)."""
        return self.loop.run_until_complete(coro)

    def call(self, node: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` as a process on ``node``; its result."""
        return self.run(self.cluster.call(node, fn, *args))

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass."""
        self.run(asyncio.sleep(seconds))

    def apply(self, step: Step) -> None:
        """Apply one schedule step (a fault, or a wait)."""
        self.run(apply(step, self.cluster))

    def teardown(self) -> None:
        try:
            self.run(self.cluster.stop())
        finally:
            self._exit.close()

    def _close_loop(self) -> None:
        try:
            _cancel_all(self.loop)
        finally:
            self.loop.close()


class FaultStateMachine(SimStateMachine):
    """A :class:`SimStateMachine` with one more rule: a fault step (of the
    kinds in ``faults``, drawn by :func:`~pybeam.testing.sim.steps`), so that
    hypothesis interleaves faults with the subclass's own rules. Call
    :meth:`recover` before checking what must hold once the faults are over."""

    faults: tuple[str, ...] = FAULTS

    @rule(data=st.data())
    def fault(self, data: st.DataObject) -> None:
        self.apply(data.draw(steps(self.nodes, faults=self.faults), label="fault"))

    def recover(self, settle: float = 5.0) -> None:
        """Undo every fault and let the cluster settle (see :meth:`SimCluster.recover`)."""
        self.run(self.cluster.recover(settle))

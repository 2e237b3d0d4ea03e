"""Replaying a schedule on real nodes: confirm a simulated counterexample.

:func:`replay_schedule` runs a :class:`~pybeam.testing.sim.Scenario` and a
schedule on a :class:`~pybeam.testing.LocalCluster` (OS processes, real TCP),
from the calling node (the manager, which must be distributed), through
:class:`RealCluster`: the same methods a scenario uses on a
:class:`~pybeam.testing.sim.SimCluster` (``names``, ``call``, ``spawn``,
``alive``, ``sleep``, ``connected``, ``recover``), so one scenario runs on both.

How each step becomes real:

=================  ===================================================================
``Wait(s)``        ``asyncio.sleep(s * time_scale)``
``Partition``      :func:`pybeam.testing.partition` (Schism: symmetric only; the
                   manager stays connected to both sides)
``Heal()``         :func:`pybeam.testing.heal` of every partitioned node
``Kill(i)``        SIGKILL (the OS closes its sockets: peers see a FIN, as ``fin=True``)
``Restart(i)``     a new OS process under the same name
``Freeze(i, s)``   SIGSTOP, then SIGCONT ``s * time_scale`` seconds later
``Drop(a, b, s)``  ``disconnect`` on ``a`` (no refusal afterwards)
``Delay``          not replayable here (:class:`NotReplayable`)
=================  ===================================================================

``time_scale`` maps virtual seconds to real ones; by default the ratio of the
real cluster's tick time to the scenario's, so that a wait "longer than the
tick time" stays one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ... import rpc
from ...terms import Pid
from ..cluster import LocalCluster
from ..eventually import eventually
from ..schism import heal, partition, partitioned
from .runner import Scenario
from .schedule import Delay, Drop, Freeze, Heal, Kill, Partition, Restart, Step, Wait

__all__ = ["NotReplayable", "RealCluster", "replay_schedule"]

T = TypeVar("T")


class NotReplayable(ValueError):
    """A step real nodes cannot do (a delay, a one-way partition...)."""


async def _spawn(fn: Callable[..., Any], args: tuple[Any, ...]) -> Pid:
    import pybeam

    return pybeam.spawn(fn, *args)


async def _disconnect(node: str) -> bool:
    import pybeam

    return pybeam.disconnect(node)


class RealCluster:
    """A :class:`LocalCluster` seen through the methods a scenario uses."""

    def __init__(self, cluster: LocalCluster, *, time_scale: float = 1.0) -> None:
        self.cluster = cluster
        self.names: list[str] = list(cluster.nodes)
        self.time_scale = time_scale
        #: Run after a node restarts (as :attr:`SimCluster.on_start`).
        self.on_start: Callable[[RealCluster, str], Awaitable[None]] | None = None
        self._stopped: set[str] = set()

    async def call(self, name: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``fn(*args)`` on node ``name`` (by rpc); its result."""
        result: T = await rpc.call(name, fn, *args, timeout=30)
        return result

    async def spawn(self, name: str, fn: Callable[..., Any], *args: Any) -> Pid:
        """Start ``fn(*args)`` as a process on ``name``."""
        pid: Pid = await rpc.call(name, _spawn, fn, args)
        return pid

    def alive(self, name: str) -> bool:
        return self.cluster.alive(name)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of schedule time (``seconds * time_scale`` real ones)."""
        await asyncio.sleep(seconds * self.time_scale)

    async def connected(self, name: str) -> list[str]:
        nodes: list[str] = await rpc.call(name, "pybeam.net:nodes")
        return nodes

    async def apply(self, step: Step) -> None:
        """Do ``step`` to the real nodes (see the module's table)."""
        names = self.names
        match step:
            case Wait(seconds):
                await self.sleep(seconds)
            case Partition(side, other, oneway):
                if other is not None or oneway:
                    raise NotReplayable(f"{step!r}: real nodes are partitioned one group from all the rest")
                await partition([names[i % len(names)] for i in side])
            case Heal():
                await self._heal()
            case Kill(node):
                name = names[node % len(names)]
                if self.cluster.alive(name):
                    self._thaw(name)
                    self.cluster.kill(name)
            case Restart(node):
                name = names[node % len(names)]
                if not self.cluster.alive(name):
                    await self.restart(name)
            case Freeze(node, seconds):
                name = names[node % len(names)]
                if self.cluster.alive(name):
                    os.kill(self.cluster.processes[name].pid, signal.SIGSTOP)
                    self._stopped.add(name)
                    loop = asyncio.get_running_loop()
                    loop.call_later(seconds * self.time_scale, self._thaw, name)
            case Drop(a, b, _):
                first, second = names[a % len(names)], names[b % len(names)]
                if first != second and self.cluster.alive(first):
                    with contextlib.suppress(Exception):
                        await rpc.call(first, _disconnect, second, timeout=5)
            case Delay():
                raise NotReplayable(f"{step!r}: delays need a proxy between real nodes")
            case _:
                raise TypeError(f"not a schedule step: {step!r}")

    def _thaw(self, name: str) -> None:
        if name in self._stopped:
            self._stopped.discard(name)
            with contextlib.suppress(OSError):
                os.kill(self.cluster.processes[name].pid, signal.SIGCONT)

    async def _heal(self) -> None:
        cut = list(partitioned())
        if cut:
            await heal(cut)

    async def restart(self, name: str) -> None:
        """Start a new OS process for ``name`` (a new incarnation)."""
        await self.cluster.restart_node(name)
        if self.on_start is not None:
            await self.on_start(self, name)

    async def recover(self, settle: float = 0.0) -> None:
        """Heal, thaw, restart the killed nodes, wait for the full mesh, then ``settle``."""
        for name in list(self._stopped):
            self._thaw(name)
        await self._heal()
        for name in self.names:
            if not self.cluster.alive(name):
                await self.restart(name)

        async def meshed() -> bool:
            for name in self.names:
                seen = set(await self.connected(name))
                if not set(self.names) - {name} <= seen:
                    for other in set(self.names) - {name} - seen:
                        with contextlib.suppress(Exception):
                            await rpc.call(name, "pybeam.net:connect", other, timeout=5)
                    return False
            return True

        await eventually(meshed, timeout=30, what="full mesh after recovery")
        await self.sleep(settle)


async def replay_schedule(
    make: Callable[[], Scenario],
    schedule: list[Step],
    *,
    time_scale: float | None = None,
    startup_timeout: float = 30.0,
) -> None:
    """Run scenario ``make()`` under ``schedule`` on a new :class:`LocalCluster`
    of ``make().nodes`` real nodes managed by the calling node; raises what the
    scenario raises. Every node is stopped afterwards."""
    scenario = make()
    async with LocalCluster(scenario.nodes, startup_timeout=startup_timeout) as real:
        ticktime = real.ticktime or scenario.ticktime
        scale = time_scale if time_scale is not None else ticktime / scenario.ticktime
        cluster = RealCluster(real, time_scale=scale)
        started: Any = scenario.start
        cluster.on_start = started
        try:
            # The scenario is written for a SimCluster; RealCluster has its methods.
            as_sim: Any = cluster
            for name in cluster.names:
                await scenario.start(as_sim, name)
            for i, step in enumerate(schedule):
                await cluster.apply(step)
                await scenario.during(as_sim, i)
                await scenario.invariant(as_sim)
            await cluster.recover(scenario.settle)
            await scenario.check(as_sim)
        finally:
            for name in list(cluster._stopped):
                cluster._thaw(name)

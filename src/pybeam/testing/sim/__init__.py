"""Simulated clusters: many pybeam nodes in one process, in virtual time, under faults.

- :class:`SimCluster`: real nodes (net kernel, handshake, ticks, port mapper)
  on an in-memory network, with faults (partition, heal, delay, drop, kill,
  restart, freeze), inside :func:`run` on a :class:`VirtualLoop`.
- Schedules of faults as data (:mod:`.schedule`), hypothesis strategies for
  them (:mod:`.strategies`), and :class:`Scenario` / :func:`explore` /
  :func:`run_schedule` to test a service under them (:mod:`.runner`);
  :class:`SimStateMachine`, a hypothesis state machine over a simulated
  cluster (:mod:`.machine`); :func:`replay` of a schedule on real nodes
  (:mod:`.replay`).

See docs/testing_failures.md.
"""

from typing import TYPE_CHECKING, Any

from .cluster import EPMD_PORT, SimCluster, run
from .loop import SimDeadlock, VirtualLoop
from .net import SimNetwork
from .runner import Scenario, explore, reproducer, run_schedule
from .schedule import Delay, Drop, Freeze, Heal, Kill, Partition, Restart, Step, Wait, apply, describe

if TYPE_CHECKING:
    from .machine import FaultStateMachine, SimStateMachine
    from .strategies import FAULTS, schedules, steps

# These need hypothesis (the "test" extra): imported when first asked for.
_LAZY = {
    "FAULTS": "strategies",
    "schedules": "strategies",
    "steps": "strategies",
    "SimStateMachine": "machine",
    "FaultStateMachine": "machine",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "EPMD_PORT",
    "FAULTS",
    "Delay",
    "Drop",
    "FaultStateMachine",
    "Freeze",
    "Heal",
    "Kill",
    "Partition",
    "Restart",
    "Scenario",
    "SimCluster",
    "SimDeadlock",
    "SimNetwork",
    "SimStateMachine",
    "Step",
    "VirtualLoop",
    "Wait",
    "apply",
    "describe",
    "explore",
    "reproducer",
    "run",
    "run_schedule",
    "schedules",
    "steps",
]

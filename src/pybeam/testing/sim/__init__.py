"""Simulated clusters: many pybeam nodes in one process, in virtual time, under faults.

See docs/testing_failures.md.
"""

from .cluster import EPMD_PORT, SimCluster, run
from .loop import SimDeadlock, VirtualLoop
from .net import SimNetwork

__all__ = ["EPMD_PORT", "SimCluster", "SimDeadlock", "SimNetwork", "VirtualLoop", "run"]

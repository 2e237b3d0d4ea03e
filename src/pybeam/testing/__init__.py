"""Testing distributed code with real nodes: Elixir's LocalCluster and Schism for pybeam.

- :class:`LocalCluster`: nodes in separate OS processes, connected to the
  calling node (the *manager*) and to each other.
- :func:`partition` / :func:`heal`: cut a group of nodes off from the others,
  and undo it.
- :func:`eventually`: wait for a condition, retrying while nodes settle.
- :func:`processes_using_epmd`: what a run that had its own port mapper left behind.
- :class:`FaultProxy` / :func:`route_through`: a TCP proxy between two real
  nodes that delays, stalls, cuts and half-opens their connection.
- :mod:`pybeam.testing.pytest_plugin`: fixtures ``epmd_port``, ``beam_node``
  and ``cluster``; load it with ``pytest_plugins = ["pybeam.testing.pytest_plugin"]``.

See ``docs/cli_and_testing.md``.
"""

from .cluster import ClusterError, LocalCluster, free_port, processes_using_epmd, run_in_process
from .eventually import eventually
from .proxy import FaultProxy, route_through
from .schism import heal, partition, partitioned

__all__ = [
    "ClusterError",
    "FaultProxy",
    "LocalCluster",
    "eventually",
    "free_port",
    "heal",
    "partition",
    "partitioned",
    "processes_using_epmd",
    "route_through",
    "run_in_process",
]

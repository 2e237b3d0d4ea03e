"""A node survives what its processes do: real nodes, separate OS processes.

A function run by ``rpc.call`` that calls ``sys.exit`` (or fails argparse, or
raises KeyboardInterrupt) ends its process with a reason; the caller gets a
clear error and the node goes on serving.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import pytest

import pybeam
from pybeam import rpc
from pybeam.testing import LocalCluster

ClusterFactory = Callable[..., LocalCluster]


# -- functions the other nodes run (module-level: they import this module) -----


def node_here() -> str:
    return pybeam.node_name()


def calls_sys_exit() -> None:
    sys.exit()


async def interrupted() -> None:
    raise KeyboardInterrupt


def bad_arguments() -> None:
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--count", type=int, required=True)
    parser.parse_args([])


# -- SystemExit and KeyboardInterrupt ------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "kind"),
    [(calls_sys_exit, "SystemExit"), (interrupted, "KeyboardInterrupt"), (bad_arguments, "SystemExit")],
)
async def test_rpc_of_a_function_that_exits_the_interpreter_leaves_the_node_serving(
    cluster: ClusterFactory, fn: Callable[[], object], kind: str
) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        with pytest.raises(rpc.RemoteError) as info:
            await rpc.call(n1, fn, timeout=10)
        assert info.value.kind == kind
        assert kind in str(info.value)
        assert await rpc.call(n1, node_here, timeout=10) == n1
        assert c.alive(n1)

"""The Ping Pong extra exercise as a benchmark: how long until the last of
5,000 monitors on one node learns that the producer's node is gone.

Measured from the disconnect (or the SIGKILL) to the moment the last watcher
reported its DOWN, on one machine's monotonic clock.
"""

from __future__ import annotations

import os
import secrets
import time

import pybeam
from examples.ping_pong import start_producer
from examples.ping_pong.watchers import disconnect_from, start_watchers
from pybeam import ANY, receive, rpc
from pybeam.testing import LocalCluster, free_port

WATCHERS = 5_000


async def _last_down(failure: str) -> float:
    async with LocalCluster(2, prefix="ppbench") as cluster:
        n1, n2 = cluster.nodes
        producer = await rpc.call(n2, start_producer, pybeam.self())
        await rpc.call(n1, start_watchers, producer, WATCHERS, pybeam.self())
        await receive(("watching", ANY), timeout=60)
        if failure == "disconnect":
            t0 = await rpc.call(n1, disconnect_from, n2)
        else:
            t0 = time.monotonic()
            cluster.kill(n2)
        _, t1, reasons = await receive(("all_down", ANY, ANY), timeout=60)
        assert reasons == {"noconnection": WATCHERS}, reasons
        return float(t1 - t0) * 1000


async def main() -> list[tuple[str, float, str, float]]:
    """Rows of (name, figure, unit, target): no targets, figures to watch."""
    os.environ.setdefault("PYBEAM_EPMD_PORT", str(free_port()))
    async with pybeam.Node(
        f"ppb_{secrets.token_hex(3)}@127.0.0.1", cookie=secrets.token_hex(8), ticktime=1.0
    ):
        return [
            ("5,000 monitors: last DOWN, disconnect", await _last_down("disconnect"), "ms", 0.0),
            ("5,000 monitors: last DOWN, SIGKILL", await _last_down("kill"), "ms", 0.0),
        ]

"""Where a sequential ``rpc.call``'s time goes, against its parts, in one run.

``python -m benchmarks.rpc_cost [--calls N] [--rounds R]``: this node and one
``LocalCluster`` node (another OS process) on 127.0.0.1; each round times, one
after the other, ``N`` sequential operations of each kind:

- ``round trip``: a message to a process there and its answer (the floor an
  rpc cannot beat: one message each way);
- ``spawn_request``: ``spawn_request(node, fn, ..., monitor=True,
  reply="error_only")`` and its DOWN (what an rpc does on the wire);
- ``rpc.call, timeout=None`` and ``rpc.call`` (the default 5 s timeout).

It prints the median over the rounds of each, in µs per operation, and each
one's excess over the round trip. Run it with another tree's code first on
``PYTHONPATH`` to compare two versions in the same time window.
"""

from __future__ import annotations

import argparse
import inspect
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable

import pybeam
from pybeam import ANY, Pid, net, receive, rpc, send
from pybeam.testing import LocalCluster, free_port

from . import dist


async def _round_trips(peer: str, pong: Pid, n: int) -> None:
    me = pybeam.self()
    for _ in range(n):
        send(pong, me)
        await receive(timeout=10)


async def _spawn_requests(peer: str, pong: Pid, n: int) -> None:
    for i in range(n):
        ref = net.spawn_request(peer, dist.add, i, 1, monitor=True, reply="error_only")
        await receive(("DOWN", ref, ANY, ANY, ANY), timeout=10)


async def _calls_no_timeout(peer: str, pong: Pid, n: int) -> None:
    for i in range(n):
        await rpc.call(peer, dist.add, i, 1, timeout=None)


async def _calls(peer: str, pong: Pid, n: int) -> None:
    for i in range(n):
        await rpc.call(peer, dist.add, i, 1)


KINDS: dict[str, Callable[[str, Pid, int], Awaitable[None]]] = {
    "round trip": _round_trips,
    "spawn_request": _spawn_requests,
    "rpc.call, timeout=None": _calls_no_timeout,
    "rpc.call": _calls,
}
if "error_only" not in str(inspect.signature(net.spawn_request).parameters["reply"].annotation):
    # An older tree, whose spawn_request would deliver every ok reply (left
    # in the mailbox here): that row means nothing there.
    del KINDS["spawn_request"]


async def measure(calls: int, rounds: int) -> dict[str, float]:
    """Median µs per operation of each kind, over ``rounds`` interleaved rounds."""
    os.environ.setdefault("PYBEAM_EPMD_PORT", str(free_port()))
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    async with (
        pybeam.Node(f"rpc_cost_{secrets.token_hex(3)}@127.0.0.1", cookie=secrets.token_hex(8)),
        LocalCluster(1, prefix="rpc_cost_peer") as cluster,
    ):
        peer = cluster.nodes[0]
        pong: Pid = await pybeam.spawn_on(peer, dist.ponger)
        for run in KINDS.values():  # warm: connection, imports, caches
            await run(peer, pong, 200)
        for _ in range(rounds):
            for kind, run in KINDS.items():
                t0 = time.perf_counter()
                await run(peer, pong, calls)
                times[kind].append((time.perf_counter() - t0) / calls * 1e6)
    return {kind: statistics.median(ts) for kind, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rpc_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="operations of each kind per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is shown)")
    args = parser.parse_args(argv)
    figures = pybeam.run(measure, args.calls, args.rounds)
    floor = figures["round trip"]
    print(f"{'operation':24} {'us/op':>8} {'over a round trip':>18} {'per second':>11}")
    for kind, us in figures.items():
        print(f"{kind:24} {us:8.1f} {us - floor:18.1f} {1e6 / us:11,.0f}")
    print(f"load: {os.getloadavg()[0]:.2f} (1-minute average)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

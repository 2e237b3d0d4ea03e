"""pybeam's side of the comparison, with its public API only (under uvloop)."""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import time
from typing import Any

import pybeam
from benchmarks import dist, local
from pybeam import ANY, Pid, receive, send
from pybeam.testing import LocalCluster, free_port

from .child import rss


async def _memory(n: int) -> float:
    gc.collect()
    before = rss()
    pids = [pybeam.spawn(_idle) for _ in range(n)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gc.collect()
    per = (rss() - before) / n
    for p in pids:
        pybeam.exit(p, "kill")
    return per


async def _idle() -> None:
    await receive()


async def _watch(producer: Pid, collector: Pid) -> None:
    ref = pybeam.monitor(producer)
    send(collector, ("watching", pybeam.self()))
    _, _, _, _, reason = await receive(("DOWN", ref, ANY, ANY, ANY))
    send(collector, ("down", reason))


async def _fanout(peer: str, n: int) -> float:
    producer: Any = await pybeam.spawn_on(peer, _idle)
    me = pybeam.self()
    for _ in range(n):
        pybeam.spawn(_watch, producer, me)
    for _ in range(n):
        await receive(("watching", ANY), timeout=60)
    t0 = time.perf_counter()
    pybeam.disconnect(peer)
    for _ in range(n):
        _, reason = await receive(("down", ANY), timeout=60)
        assert reason == "noconnection", reason
    return (time.perf_counter() - t0) * 1000


async def _cross(workload: str, n: int) -> list[float]:
    os.environ.setdefault("PYBEAM_EPMD_PORT", str(free_port()))
    async with (
        pybeam.Node(f"cmp_{secrets.token_hex(3)}@127.0.0.1", cookie=secrets.token_hex(8)),
        LocalCluster(1, prefix="cmp_peer") as cluster,
    ):
        peer = cluster.nodes[0]
        if workload == "cross_one_way":
            sink: Any = await pybeam.spawn_on(peer, dist.sink)
            return [await dist.one_way(sink, n)]
        if workload == "cross_rtt":
            ponger: Any = await pybeam.spawn_on(peer, dist.ponger)
            await dist.round_trips(ponger, 10)  # warm: connection, code, caches
            return list(await dist.round_trips(ponger, n))
        if workload == "rpc":
            await pybeam.rpc.call(peer, dist.add, 1, 2)
            return [await dist.rpc_rate(peer, n)]
        if workload == "fanout":
            return [await _fanout(peer, n)]
    raise ValueError(workload)


async def _main(workload: str, n: int) -> list[float]:
    if workload == "one_way":
        return [await local.one_way(n)]
    if workload == "ping_pong":
        return [await local.ping_pong(n)]
    if workload == "spawn_exit":
        return [await local.spawn_rate(n)]
    if workload == "memory":
        return [await _memory(n)]
    return await _cross(workload, n)


async def _scale(n: int, live: list[int]) -> list[float]:
    idle: list[Pid] = []
    out = []
    for level in live:
        while len(idle) < level:
            idle.append(pybeam.spawn(_idle))
            if len(idle) & 1023 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        out.append(await local.spawn_rate(n))
    return out


def run_scale(n: int, live: list[int]) -> list[float]:
    """Spawn-and-exit rate of ``n`` processes with each number of idle ones alive."""
    return pybeam.run(_scale, n, live)


def run(workload: str, n: int) -> list[float]:
    """The workload's figures."""
    return pybeam.run(_main, workload, n)

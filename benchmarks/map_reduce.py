"""Map Reduce word count throughput, beside the obvious alternatives, on one file in one run.

A generated 20 MB text (Zipf-like word frequencies, mixed case, some Unicode),
counted by:

- ``collections.Counter(text.split())`` in this process;
- ``multiprocessing.Pool`` with 1, 2 and 4 processes (chunks on line
  boundaries, one Counter each, merged): the pools are started before the clock;
- pybeam's Map Reduce with 1, 2 and 4 worker nodes (one worker each, started
  before the clock and stopped after it, so that the master sees only those;
  :data:`MAPS_PER_NODE` map jobs and one reduce job a node) and a private
  redis-server; and with 4 nodes of which one is SIGKILLed when half the jobs
  are done (new nodes each round, started before the clock).

Each figure is MB of input per second of wall time, from the file on disk to
the merged dict in this process, the best of :data:`ROUNDS`; every result is
checked against Counter's. The contenders take turns, one round each in
order, so that a burst of load elsewhere on the machine hits all of them
rather than one; the ratios to Counter are what to compare between machines.
The load average is reported beside them.

``python -m benchmarks map_reduce`` (the table), or ``python -m benchmarks.map_reduce``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import random
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import redis.asyncio

import pybeam
from examples.map_reduce import GROUP, WORD_COUNT, Job, run_job, start_worker
from examples.map_reduce.storage import split_lines
from examples.redis_server import redis_server
from pybeam import pg, receive, rpc, send
from pybeam.testing import LocalCluster, eventually, free_port

SIZE = 20 * 1024 * 1024
#: Each figure is the best of this many rounds: the machine is shared, and the
#: best round is the one least disturbed by whatever else ran.
ROUNDS = 5
#: Map jobs per worker node: two, so that a worker that finishes early (its
#: node less loaded) takes a share of the other's work, and few, because each
#: map job costs about 15 ms of partitioning and encoding whatever its size.
MAPS_PER_NODE = 2

Row = tuple[str, float, str, float]
#: Seconds of wall time, seconds of CPU time (every process involved), and the word counts.
Timed = tuple[float, float, Any]


def generate_text(size: int, seed: int = 1) -> str:
    """About ``size`` bytes of text: 20,000 words with Zipf-like frequencies, 12 a line."""
    rnd = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzéßø"
    vocabulary = ["".join(rnd.choice(letters) for _ in range(rnd.randint(1, 9))) for _ in range(20_000)]
    vocabulary = [w.capitalize() if i % 7 == 0 else w for i, w in enumerate(vocabulary)]
    # Cumulative weights, computed once: rnd.choices(..., weights) would add
    # up all 20,000 on every call (that took 90 s); the draws are the same.
    cum_weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(vocabulary))))
    lines = []
    total = 0
    while total < size:
        line = " ".join(rnd.choices(vocabulary, cum_weights=cum_weights, k=12)) + "\n"
        lines.append(line)
        total += len(line.encode())
    return "".join(lines)


async def _sync(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _counter(path: str) -> Counter[str]:
    """The baseline: the whole file in one ``Counter``, the same word definition as the job's."""
    return Counter(Path(path).read_text(encoding="utf-8").split())


def _count(chunk: str) -> Counter[str]:
    return Counter(chunk.split())


def _pool_count(path: str, pool: Any, processes: int) -> Counter[str]:
    text = Path(path).read_text(encoding="utf-8")
    total: Counter[str] = Counter()
    for part in pool.map(_count, split_lines(text, processes * 4)):
        total.update(part)
    return total


async def _progress_killer(cluster: LocalCluster) -> None:
    """Kills the cluster's first node when half the jobs are done."""
    while True:
        _, _, maps_done, maps, reduces_done, reduces = await receive()
        if 2 * (maps_done + reduces_done) >= maps + reduces:
            cluster.kill(cluster.nodes[0])
            return


async def _members(count: int) -> None:
    """Until this node's view of the workers' group has ``count`` workers: a
    master uses every worker it sees, so a run on n nodes must see no other."""
    await eventually(lambda: len(pg.get_members(GROUP)) == count, timeout=60)


async def _map_reduce(path: str, url: str, nodes: list[str], cluster: LocalCluster | None = None) -> Timed:
    """One worker on each of ``nodes``, started before the clock and stopped
    after it; with ``cluster``, its first node is SIGKILLed halfway."""
    pids = [await rpc.call(node, start_worker, node) for node in nodes]
    await _members(len(nodes))
    n = len(nodes)
    job = Job(f"bench_{secrets.token_hex(3)}", path, WORD_COUNT, url, maps=MAPS_PER_NODE * n, reduces=n)
    progress = pybeam.spawn(_progress_killer, cluster) if cluster is not None else None
    try:
        cpu0 = await _cpu_seconds(url, nodes)
        t0 = time.perf_counter()
        result = await run_job(job, timeout=600, progress=progress)
        seconds = time.perf_counter() - t0
        cpu = await _cpu_seconds(url, nodes) - cpu0
        assert cluster is None or not cluster.alive(cluster.nodes[0]), "the node was not killed"
        return seconds, cpu, result
    finally:
        for pid in pids:
            send(pid, "stop")  # the killed node's worker is gone: its node's members are dropped
        await _members(0)


async def _cpu_seconds(url: str, nodes: list[str]) -> float:
    """CPU time used so far by this process (the master), the worker nodes and Redis.

    Not a node that was killed: its CPU time is lost with it, so the killed
    run's figure is a little low.
    """
    total = time.process_time()
    for node in nodes:
        with contextlib.suppress(pybeam.NodeDown):
            total += await rpc.call(node, "time:process_time", expect=float)
    client = redis.asyncio.Redis.from_url(url)
    try:
        info = await client.info("cpu")
    finally:
        await client.aclose()
    return total + float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _killed(path: str, url: str) -> Timed:
    """On 4 new nodes (started before the clock), one SIGKILLed halfway."""
    cluster = await LocalCluster(4, prefix="mrkill").start()
    try:
        return await _map_reduce(path, url, cluster.nodes, cluster)
    finally:
        await cluster.stop()


async def _timed(fn: Callable[..., Any], *args: Any) -> Timed:
    """``fn(*args)`` in a thread, timed: this node's loop keeps answering the
    other nodes' ticks meanwhile (while the pool works; Counter holds the GIL)."""

    def timed() -> Timed:
        cpu0, t0 = time.process_time(), time.perf_counter()
        result = fn(*args)
        # The pool's processes are not counted: only Counter's CPU time is reported.
        return time.perf_counter() - t0, time.process_time() - cpu0, result

    return await asyncio.to_thread(timed)


async def main() -> list[Row]:
    """Rows of (name, figure, unit, target)."""
    os.environ.setdefault("PYBEAM_EPMD_PORT", str(free_port()))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp, "text.txt"))
        Path(path).write_text(generate_text(SIZE), encoding="utf-8")
        mb = Path(path).stat().st_size / 1e6
        expected = _counter(path)
        context = multiprocessing.get_context("spawn")
        # The pools first: spawning them blocks this process for seconds on a
        # busy machine, long enough for the nodes to take it for dead.
        pools = {n: context.Pool(n) for n in (1, 2, 4)}
        for n, pool in pools.items():
            pool.map(_count, ["warm up"] * n)
        try:
            async with (
                pybeam.Node(
                    f"mrb_{secrets.token_hex(3)}@127.0.0.1", cookie=secrets.token_hex(8), ticktime=5.0
                ),
                redis_server() as server,
                LocalCluster(4, prefix="mrbench") as cluster,
            ):
                # Warm up: the job module imported on every node.
                await _map_reduce(path, server.url, cluster.nodes)
                contenders: dict[str, Callable[[], Awaitable[Timed]]] = {
                    "Counter": partial(_timed, _counter, path),
                    **{f"Pool({n})": partial(_timed, _pool_count, path, pools[n], n) for n in (1, 2, 4)},
                    **{
                        f"map reduce, {n} node{'s' * (n > 1)}": partial(
                            _map_reduce, path, server.url, cluster.nodes[:n]
                        )
                        for n in (1, 2, 4)
                    },
                    "map reduce, 4 nodes, 1 killed": partial(_killed, path, server.url),
                }
                best = dict.fromkeys(contenders, float("inf"))
                cpu = dict.fromkeys(contenders, float("inf"))
                for _ in range(ROUNDS):
                    for name, run in contenders.items():
                        seconds, cpu_seconds, result = await run()
                        best[name] = min(best[name], seconds)
                        cpu[name] = min(cpu[name], cpu_seconds)
                        assert result == expected, name
        finally:
            for pool in pools.values():
                pool.terminate()
    load_after = os.getloadavg()[0]
    rows: list[Row] = [(f"word count: {name}", mb / seconds, "MB/s", 0.0) for name, seconds in best.items()]
    # The goal: with 2 worker nodes, faster than Counter in one process.
    rows.append(
        (
            "word count: 2 nodes vs Counter",
            100 * best["Counter"] / best["map reduce, 2 nodes"],
            "% of Counter",
            100.0,
        )
    )
    rows.append(
        ("word count: Pool(2) vs Counter", 100 * best["Counter"] / best["Pool(2)"], "% of Counter", 0.0)
    )
    # The work each does, in CPU seconds of every process involved, against
    # Counter's: what the distribution costs, whatever the load.
    for name in ("map reduce, 1 node", "map reduce, 2 nodes", "map reduce, 4 nodes"):
        rows.append(
            (f"word count: CPU, {name[12:]}", 100 * cpu[name] / cpu["Counter"], "% of Counter's", 0.0)
        )
    rows.append(("word count: load average before", load_before, "load", 0.0))
    rows.append(("word count: load average after", load_after, "load", 0.0))
    return rows


if __name__ == "__main__":
    for name, value, unit, target in pybeam.run(main):
        goal = f"  (goal: {target:g})" if target else ""
        print(f"{name:45} {value:8.2f} {unit}{goal}")

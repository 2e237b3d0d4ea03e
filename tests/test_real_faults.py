"""Map Reduce stays exact and margarine's counters converge under a random
schedule of faults on real nodes: SIGKILLs (and a fresh node in the killed
one's place), partitions (pybeam.testing's schism) and heals.

Each test draws its schedule from a seed: a new one per run, printed (the
test's captured output shows it when it fails), or the one in
``$PYBEAM_FAULT_SEED`` to replay a failure. A few steps only, so each test
stays well under 30 s; ``python -m benchmarks.soak`` runs the same kind of
schedule for minutes.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

import examples.margarine as margarine
import pybeam
from examples.map_reduce import WORD_COUNT, Job, start, start_worker
from examples.redis_server import RedisServer
from pybeam import ANY, rpc, supervisor
from pybeam.testing import LocalCluster, eventually, free_port, heal, partition

#: Steps of faults per test.
STEPS = 6
#: The nodes' ticktime. Long, because faults here are kills (a closed socket)
#: and partitions (explicit disconnects), never silence, and because a node
#: busy importing aiohttp for a second on a loaded machine must not be taken
#: for a dead one.
TICKTIME = 5.0


@pytest.fixture
async def beam_node(epmd_port: int) -> AsyncIterator[pybeam.Node]:
    """The plugin's ``beam_node`` (which ``cluster`` manages from), with TICKTIME."""
    name = f"test_{secrets.token_hex(4)}@127.0.0.1"
    async with pybeam.Node(
        name, cookie=secrets.token_hex(16), ticktime=TICKTIME, epmd_port=epmd_port
    ) as node:
        yield node


def seed_for(request: pytest.FixtureRequest) -> random.Random:
    """The test's random schedule, from ``$PYBEAM_FAULT_SEED`` or a new seed; printed."""
    seed = int(os.environ.get("PYBEAM_FAULT_SEED") or secrets.randbelow(2**31))
    print(f"schedule seed {seed}: replay with PYBEAM_FAULT_SEED={seed} pytest '{request.node.nodeid}'")
    return random.Random(seed)


class Schedule:
    """Random faults on a cluster's live nodes; keeps ``size`` nodes alive by
    starting a new one for each one killed (``on_start`` sets it up)."""

    def __init__(self, c: LocalCluster, rnd: random.Random) -> None:
        self.c = c
        self.rnd = rnd
        self.live = list(c.nodes)
        self.log: list[str] = []

    async def step(self, before_kill: Any = None, on_start: Any = None) -> str:
        """One fault: kill a node (and start another), partition some nodes, or heal all."""
        action = self.rnd.choice(["kill", "partition", "partition", "heal"])
        if action == "kill":
            victim = self.rnd.choice(self.live)
            if before_kill is not None:
                await before_kill(victim)
            self.c.kill(victim)
            self.live.remove(victim)
            await heal(self.live)  # the others meet again, and the newcomer meets everyone
            new = await self.c.start_node()
            self.live.append(new)
            if on_start is not None:
                await on_start(new)
            what = f"kill {victim}, start {new}"
        elif action == "partition":
            await heal(self.live)
            group = self.rnd.sample(self.live, self.rnd.randint(1, len(self.live) - 1))
            keep = self.rnd.random() < 0.5
            await partition(group, keep_manager=keep)
            what = f"partition {group}" + ("" if keep else " (the manager cut off too)")
        else:
            await heal(self.live)
            what = "heal"
        self.log.append(what)
        return what

    async def heal_all(self) -> None:
        await heal(self.live)


# -- Map Reduce ------------------------------------------------------------------------------


def words(rnd: random.Random, count: int) -> list[str]:
    vocabulary = [f"w{i}" for i in range(300)] + ["Ünïcode", "MiXed", "tab\tbed"]
    out = []
    for _ in range(count // 12):
        out.append(" ".join(rnd.choices(vocabulary, k=12)))
    return out


#: Seconds each worker sleeps per job: 90 jobs on 6 workers last 4.5 s at least,
#: so the faults land while the job runs.
PAUSE = 0.3


async def add_workers(node: str, count: int = 2) -> None:
    """Start ``count`` workers on ``node``."""
    for _ in range(count):
        worker_id = f"{node.partition('@')[0]}_{secrets.token_hex(2)}"
        await rpc.call(node, start_worker, worker_id, None, None, PAUSE)


async def test_map_reduce_is_exact_under_random_kills_partitions_and_heals(
    cluster: Any, tmp_path: Path, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    rnd = seed_for(request)
    lines = words(rnd, 60_000)
    path = tmp_path / "input.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    expected = Counter(w for line in lines for w in line.split())
    job = Job(
        f"t{secrets.token_hex(4)}",
        str(path),
        WORD_COUNT,
        redis_server.url,
        maps=20,
        reduces=10,
        job_timeout=1.0,
    )
    async with cluster(3) as c:
        for node in c.nodes:
            await add_workers(node)
        schedule = Schedule(c, rnd)
        # The master on this node, which no fault kills; partitions may cut it off from workers.
        sup = await start(pybeam.self(), job)
        result: Any = None
        during = 0  # steps taken while the job ran
        try:
            for _ in range(STEPS):
                print(await schedule.step(on_start=add_workers))
                if result is None:
                    during += 1
                    with contextlib.suppress(TimeoutError):
                        _, _, result = await pybeam.receive(
                            ("result", job.name, ANY), timeout=rnd.uniform(0.2, 1.0)
                        )
        finally:
            await schedule.heal_all()
        if result is None:
            _, _, result = await pybeam.receive(("result", job.name, ANY), timeout=25)
        await supervisor.stop(sup)
    print(f"{during} of the faults came while the job ran")
    assert during >= 2, "the job finished before the faults began: the test proves less"
    print(f"faults: {schedule.log}")
    assert result == dict(expected), f"schedule {schedule.log}"


# -- margarine -----------------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def persisted_total(server: RedisServer, code: str) -> int:
    """The sum of every node's persisted count for ``code``."""
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        entries: dict[str, str] = client.hgetall(f"margarine:aggregates:{code}")
    return sum(int(v) for v in entries.values())


async def count_on(http: aiohttp.ClientSession, url: str, code: str) -> str:
    async with http.get(f"{url}{code}/aggregates") as r:
        return f"{r.status} {await r.text()}"


async def test_margarine_counts_converge_under_random_kills_partitions_and_heals(
    cluster: Any, redis_server: RedisServer, http: aiohttp.ClientSession, request: pytest.FixtureRequest
) -> None:
    rnd = seed_for(request)
    async with cluster(3) as c:
        urls = {
            node: await rpc.call(node, margarine.start, free_port(), redis_server.url) for node in c.nodes
        }
        async with http.post(
            urls[c.nodes[0]], data={"url": "https://example.com/faults"}, allow_redirects=False
        ) as r:
            assert r.status == 201
            code = await r.text()
        answered = 0
        schedule = Schedule(c, rnd)

        async def persisted(victim: str) -> None:
            # A count answered just before a SIGKILL may not have left the node
            # (it is batched for 5 ms, then persisted): kill only once every
            # answered redirect is in Redis, so the exact total is the claim.
            await eventually(
                lambda: persisted_total(redis_server, code) == answered, timeout=10, what="persisted"
            )

        async def start_margarine(node: str) -> None:
            urls[node] = await rpc.call(node, margarine.start, free_port(), redis_server.url)

        try:
            for _ in range(STEPS):
                what = await schedule.step(before_kill=persisted, on_start=start_margarine)
                print(what)
                for _ in range(rnd.randint(1, 8)):
                    node = rnd.choice(schedule.live)
                    async with http.get(urls[node] + code, allow_redirects=False) as r:
                        assert r.status == 302, f"{node}: {r.status} {await r.text()} after {schedule.log}"
                    answered += 1
        finally:
            await schedule.heal_all()
        want = f"200 Redirects: {answered}"

        async def converged() -> bool:
            return all([await count_on(http, urls[n], code) == want for n in schedule.live])

        await eventually(converged, timeout=20, what=f"every live node says {want} (faults: {schedule.log})")
        print(f"faults: {schedule.log}; {answered} redirects counted on every node")

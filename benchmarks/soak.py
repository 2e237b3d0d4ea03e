"""A soak: three real nodes for a set time under a random schedule of kills,
partitions and heals, while Map Reduce jobs and margarine traffic run.

Usage::

    python -m benchmarks.soak --minutes 10 [--seed N] [--nodes 3]

Everything is real: each node is an OS process (``LocalCluster``), the
port mapper and Redis are private, HTTP goes over TCP. Three loops run at once
until the time is up:

- **faults**: every 2 to 6 s, one of: SIGKILL a node and start a new one in
  its place (with workers and margarine); partition a random group (half the
  time cutting the manager off too); heal everything;
- **jobs**: Map Reduce word counts back to back, each on a new random text,
  the master on the manager node; each result is compared with
  ``collections.Counter``;
- **traffic**: redirects of a few short links on random live nodes, counted
  per link, and now and then a new link.

A kill waits until every redirect answered so far is persisted in Redis (a
count answered in the last 5 ms before a SIGKILL may not have left the node:
``docs/margarine.md``), so the counters' claim is exact. At the end every
partition is healed and every live node must report every link's exact count.

It prints a report: jobs completed and exact, counters converged, requests
answered, errors by kind, faults by kind; exit status 1 if a job was wrong or a
counter did not converge. The figures depend on the machine's load: the report
gives ``uptime`` before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis

import examples.margarine as margarine
import pybeam
from examples.map_reduce import WORD_COUNT, Job, MapReduceError, run_job, start_worker
from examples.redis_server import RedisServer, redis_server
from pybeam import rpc
from pybeam.testing import LocalCluster, eventually, free_port, heal, partition, run_in_process

#: The nodes' ticktime: faults here are kills and partitions, not silence, and
#: a node importing aiohttp on a loaded machine must not be taken for dead.
TICKTIME = 5.0
LINKS = 5
WORKERS_PER_NODE = 2
#: Seconds each worker sleeps per job, so that faults land in the middle of jobs.
WORKER_PAUSE = 0.05


@dataclass
class Report:
    """What happened, counted."""

    seed: int
    minutes: float
    faults: Counter[str] = field(default_factory=Counter)
    jobs_started: int = 0
    jobs_exact: int = 0
    jobs_wrong: int = 0
    redirects: int = 0
    links_made: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    converged: int = 0
    links: int = 0
    converge_seconds: float = 0.0
    kills_waited: float = 0.0
    job_seconds: list[float] = field(default_factory=list)

    def ok(self) -> bool:
        return self.jobs_wrong == 0 and self.converged == self.links

    def lines(self) -> list[str]:
        jobs_done = self.jobs_exact + self.jobs_wrong
        mean = sum(self.job_seconds) / len(self.job_seconds) if self.job_seconds else 0.0
        out = [
            f"python -m benchmarks.soak --minutes {self.minutes:g} --seed {self.seed}",
            f"faults: {sum(self.faults.values())} ({', '.join(f'{k} {v}' for k, v in sorted(self.faults.items()))})",
            f"map reduce: {self.jobs_started} jobs started, {jobs_done} completed, "
            f"{self.jobs_exact} exact, {self.jobs_wrong} wrong (mean {mean:.2f} s a job)",
            f"margarine: {self.redirects} redirects answered, {self.links_made} links made; "
            f"counters converged: {self.converged} of {self.links} links on every live node "
            f"({self.converge_seconds:.1f} s after the final heal)",
            f"errors by kind: {dict(sorted(self.errors.items())) or 'none'}",
            f"waiting for counts to persist before kills: {self.kills_waited:.1f} s in all",
        ]
        return out


class Soak:
    """The cluster, its live nodes and margarine URLs, and the three loops."""

    def __init__(self, c: LocalCluster, server: RedisServer, rnd: random.Random, report: Report) -> None:
        self.c = c
        self.server = server
        self.rnd = rnd
        self.report = report
        self.live = list(c.nodes)
        self.urls: dict[str, str] = {}
        self.answered: Counter[str] = Counter()  # redirects answered, per code
        self.traffic = asyncio.Event()  # set: requests may go out
        self.traffic.set()
        self.in_flight = 0
        self.tmp = Path(tempfile.mkdtemp(prefix="pybeam-soak-"))

    async def setup_node(self, node: str) -> None:
        for _ in range(WORKERS_PER_NODE):
            worker_id = f"{node.partition('@')[0]}_{secrets.token_hex(2)}"
            await rpc.call(node, start_worker, worker_id, None, None, WORKER_PAUSE)
        self.urls[node] = await rpc.call(node, margarine.start, free_port(), self.server.url)

    def error(self, where: str, e: BaseException) -> None:
        kind = f"{where}: {type(e).__name__}"
        self.report.errors[kind] += 1

    async def status_loop(self, until: float) -> None:
        """A line a minute, so that a long run shows it is alive."""
        while time.monotonic() < until:
            await asyncio.sleep(min(60.0, max(until - time.monotonic(), 0.0)))
            if time.monotonic() >= until:
                return  # the report follows
            r = self.report
            print(
                f"{time.strftime('%H:%M:%S')} status: {sum(r.faults.values())} faults, "
                f"{r.jobs_exact}/{r.jobs_started} jobs exact, {r.redirects} redirects, "
                f"{sum(r.errors.values())} errors",
                flush=True,
            )

    # -- faults -----------------------------------------------------------------------

    def persisted(self) -> int:
        with redis.Redis.from_url(self.server.url, decode_responses=True) as client:
            total = 0
            for code in self.answered:
                entries: dict[str, str] = client.hgetall(f"margarine:aggregates:{code}")
                total += sum(int(v) for v in entries.values())
            return total

    async def kill_one(self) -> str:
        victim = self.rnd.choice(self.live)
        self.traffic.clear()
        try:
            started = time.monotonic()
            await eventually(lambda: self.in_flight == 0, timeout=30, what="requests in flight answered")
            want = sum(self.answered.values())
            try:
                await eventually(lambda: self.persisted() == want, timeout=30, what="every count persisted")
            except AssertionError as e:
                self.error("faults", e)
            self.report.kills_waited += time.monotonic() - started
            self.c.kill(victim)
            self.live.remove(victim)
            self.urls.pop(victim, None)
            await heal(self.live)
            new = await self.c.start_node()
            self.live.append(new)
            await self.setup_node(new)
        finally:
            self.traffic.set()
        return f"kill {victim.partition('@')[0]}, start {new.partition('@')[0]}"

    async def fault_loop(self, until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(self.rnd.uniform(2.0, 6.0))
            if time.monotonic() >= until:
                break
            action = self.rnd.choice(["kill", "partition", "partition", "heal"])
            try:
                if action == "kill":
                    what = await self.kill_one()
                elif action == "partition":
                    await heal(self.live)
                    group = self.rnd.sample(self.live, self.rnd.randint(1, len(self.live) - 1))
                    keep = self.rnd.random() < 0.5
                    await partition(group, keep_manager=keep)
                    action = "partition" if keep else "partition (manager cut off too)"
                    what = f"partition {[n.partition('@')[0] for n in group]}" + (
                        "" if keep else " + manager"
                    )
                else:
                    await heal(self.live)
                    what = "heal"
            except Exception as e:
                self.error(f"fault {action}", e)
                continue
            self.report.faults[action] += 1
            print(f"{time.strftime('%H:%M:%S')} {what}", flush=True)

    # -- Map Reduce ----------------------------------------------------------------------

    def new_job(self) -> tuple[Job, Counter[str]]:
        vocabulary = [f"w{i}" for i in range(500)] + ["Ünïcode", "MiXed"]
        lines = [" ".join(self.rnd.choices(vocabulary, k=12)) for _ in range(self.rnd.randint(2000, 10000))]
        name = f"soak{secrets.token_hex(4)}"
        path = self.tmp / f"{name}.txt"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        expected = Counter(w for line in lines for w in line.split())
        job = Job(name, str(path), WORD_COUNT, self.server.url, maps=8, reduces=4, job_timeout=2.0)
        return job, expected

    async def job_loop(self, until: float) -> None:
        while time.monotonic() < until:
            job, expected = self.new_job()
            self.report.jobs_started += 1
            started = time.monotonic()
            try:
                result = await run_job(job, timeout=120)
            except (MapReduceError, TimeoutError) as e:
                self.error("map reduce", e)
                continue
            finally:
                Path(job.path).unlink(missing_ok=True)
            self.report.job_seconds.append(time.monotonic() - started)
            if result == dict(expected):
                self.report.jobs_exact += 1
            else:
                self.report.jobs_wrong += 1
                diff = {k: (result.get(k), v) for k, v in expected.items() if result.get(k) != v}
                print(f"WRONG result for {job.name}: {len(diff)} keys differ, e.g. {list(diff.items())[:3]}")

    # -- margarine -----------------------------------------------------------------------------

    async def make_link(self, http: aiohttp.ClientSession) -> None:
        node = self.rnd.choice(list(self.urls))
        url = f"https://example.com/soak/{secrets.token_hex(4)}"
        async with http.post(self.urls[node], data={"url": url}, allow_redirects=False) as r:
            if r.status != 201:
                raise RuntimeError(f"POST answered {r.status}")
            self.answered[await r.text()] += 0
            self.report.links_made += 1

    async def traffic_loop(self, until: float, http: aiohttp.ClientSession) -> None:
        while time.monotonic() < until:
            await self.traffic.wait()
            self.in_flight += 1
            try:
                if len(self.answered) < LINKS or self.rnd.random() < 0.002:
                    await self.make_link(http)
                    continue
                code = self.rnd.choice(list(self.answered))
                node = self.rnd.choice(list(self.urls))
                async with http.get(self.urls[node] + code, allow_redirects=False) as r:
                    if r.status == 302:
                        self.answered[code] += 1
                        self.report.redirects += 1
                    else:
                        self.report.errors[f"redirect: HTTP {r.status}"] += 1
            except (aiohttp.ClientError, RuntimeError, TimeoutError) as e:
                self.error("redirect", e)
            finally:
                self.in_flight -= 1
            await asyncio.sleep(self.rnd.uniform(0.0, 0.02))

    async def converge(self, http: aiohttp.ClientSession) -> None:
        await heal(self.live)
        started = time.monotonic()

        async def count(url: str, code: str) -> str:
            async with http.get(f"{url}{code}/aggregates") as r:
                return await r.text()

        async def agree(code: str) -> bool:
            want = f"Redirects: {self.answered[code]}"
            return all([await count(self.urls[n], code) == want for n in self.live])

        self.report.links = len(self.answered)
        for code in self.answered:
            try:
                await eventually(lambda c=code: agree(c), timeout=60, every=0.2)  # type: ignore[misc]
                self.report.converged += 1
            except AssertionError:
                seen = [await count(self.urls[n], code) for n in self.live]
                print(f"NOT CONVERGED {code}: want {self.answered[code]}, nodes say {seen}")
        self.report.converge_seconds = time.monotonic() - started


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


async def soak(minutes: float, seed: int, nodes: int) -> Report:
    """Run the soak; its report."""
    rnd = random.Random(seed)
    report = Report(seed, minutes)
    async with (
        pybeam.Node(f"soak_{secrets.token_hex(3)}@127.0.0.1", cookie=secrets.token_hex(8), ticktime=TICKTIME),
        redis_server() as server,
        LocalCluster(nodes, prefix="soak") as c,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        s = Soak(c, server, rnd, report)
        for node in c.nodes:
            await s.setup_node(node)
        print(f"{time.strftime('%H:%M:%S')} {len(c.nodes)} nodes up: faults and load for {minutes:g} min")
        until = time.monotonic() + minutes * 60
        # Each loop is a process of its own: a process has one mailbox, and
        # only one receive may wait on it at a time.
        status = asyncio.ensure_future(s.status_loop(until))
        try:
            await asyncio.gather(
                run_in_process(s.fault_loop, until),
                run_in_process(s.job_loop, until),
                run_in_process(s.traffic_loop, until, http),
            )
        finally:
            status.cancel()
        print(f"{time.strftime('%H:%M:%S')} time is up: healing, then checking the counters")
        await s.converge(http)
        print(f"{time.strftime('%H:%M:%S')} stopping the nodes")
        with contextlib.suppress(OSError):
            for f in s.tmp.iterdir():
                f.unlink()
            s.tmp.rmdir()
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the soak from the command line; exit status 1 if a claim failed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the faults and load run")
    parser.add_argument("--seed", type=int, default=None, help="the schedule's seed (default: a new one)")
    parser.add_argument("--nodes", type=int, default=3, help="nodes in the cluster")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    os.environ.setdefault("PYBEAM_EPMD_PORT", str(free_port()))  # a private port mapper
    before = _uptime()
    started = time.monotonic()
    report = pybeam.run(soak, args.minutes, seed, args.nodes)
    print()
    print(f"load before: {before}")
    print(f"load after:  {_uptime()}")
    print(f"wall time {time.monotonic() - started:.0f} s")
    for line in report.lines():
        print(line)
    print("RESULT: " + ("every job exact, every counter converged" if report.ok() else "FAILED"))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())

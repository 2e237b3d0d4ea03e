"""The master: splits the input, hands out jobs, survives its workers, merges the result.

Everything that can go wrong goes wrong to a worker, and the master's answer
to all of it is the same: *hand the job to someone else*. That is safe because
a job's output keys depend only on the job (storage.py), so a job done twice
writes the same values twice. What the master watches for:

- a worker that dies: its monitor fires DOWN (any reason);
- a worker on a node that dies or is cut off: DOWN with ``noconnection``;
- a worker that is stuck, or whose answer was lost: no answer within
  ``job_timeout`` seconds. The job goes to another worker; the silent one gets
  no more work until it answers something;
- Redis refusing a worker (``failed``): the job is tried again a moment later,
  and the master gives up with a clear error only if Redis stays unreachable
  for ``redis_patience`` seconds;
- input that is not UTF-8 (``invalid``, from the worker that decodes the
  chunk): the job fails with a clear error naming the byte;
- data missing from Redis (``missing``: it restarted, and kept nothing): the
  master starts the whole job over as a new *run*, with keys of its own, so
  that nothing of the old run can mix into the new one;
- a job that crashes every worker it is given (a bug in the job module, or
  input it cannot take): after ``MAX_CRASHES`` crashes the job fails with the
  crash, rather than killing every worker in turn.

Workers are found in the process group ``worker.GROUP``: those there at the
start and those that join later (a node that comes back after a partition
rejoins too). The master itself runs under a supervisor (:func:`start`): if
it crashes, it starts over, and its caller still gets one answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import secrets
import statistics
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

import pybeam
from pybeam import Crash, Pid, Ref, gen_server, pg, receive, send, supervisor

from . import storage
from .worker import GROUP

__all__ = ["Job", "MapReduceError", "master", "run_job", "start"]

logger = logging.getLogger("map_reduce")

#: Seconds before a job that failed on Redis is handed out again.
RETRY_DELAY = 0.1
#: Workers one job may crash before the job fails.
MAX_CRASHES = 3
#: A job out for this many times the median job of its phase is a straggler...
BACKUP_FACTOR = 3.0
#: ...and for at least this many seconds (tiny jobs vary by more than a factor).
BACKUP_MIN = 0.2


@dataclass(frozen=True)
class Job:
    """What to compute: the job's name, its input file, its job module (by
    name, e.g. ``"examples.map_reduce.word_count"``) and the Redis to use."""

    name: str
    path: str
    module: str
    redis_url: str
    maps: int = 10
    reduces: int = 5
    #: Seconds a worker may take over one job before it goes to another worker.
    job_timeout: float = 5.0
    #: Seconds Redis may stay unreachable before the job fails.
    redis_patience: float = 10.0
    #: How many times the job may start over because its data vanished from Redis.
    max_runs: int = 3
    #: Whether a straggler's job gets a copy on an idle worker (see ``_Phase``).
    backups: bool = True

    def as_term(self) -> dict[str, Any]:
        """The job as a term (a dict), to send it to another node; ``Job(**term)`` is the job again."""
        return dataclasses.asdict(self)

    def spec(self) -> dict[str, Any]:
        """What a worker needs to know, as a term that can cross nodes."""
        return {
            "job": self.name,
            "url": self.redis_url,
            "module": self.module,
            "maps": self.maps,
            "reduces": self.reduces,
        }


class MapReduceError(Exception):
    """The job cannot give an answer (unreadable input, Redis unreachable...)."""


class _Phase:
    """The master's book of one phase: the map jobs or the reduce jobs of a run.

    A job is *pending* (waiting for a worker), *out* (with one worker, or two
    when it got a backup copy) or *done*. A job out for much longer than the
    phase's jobs usually take is a straggler: the worker is slow (an
    overloaded node, a bad disk), not dead, so neither a monitor nor
    ``job_timeout`` says anything yet. When a worker is idle and no job waits,
    a straggler's job gets a copy on that worker (the MapReduce paper's
    "backup tasks"): the first to finish wins, the other's writes are the same
    bytes to the same keys. So one slow worker cannot hold up the phase.
    """

    def __init__(self, kind: str, count: int, pending: Iterable[int] | None = None) -> None:
        """Jobs ``(kind, 0..count-1)``, those in ``pending`` (all by default) ready to go out."""
        self.kind = kind
        self.count = count
        self.pending: deque[int] = deque(range(count) if pending is None else pending)
        self.done: set[int] = set()
        #: Job n -> {worker: assignment number} while it is out.
        self.out: dict[int, dict[Pid, int]] = {}
        #: Job n -> when it went out (the first copy), while it is out.
        self.since: dict[int, float] = {}
        #: How long each job that was done took, first copy out to first answer.
        self.durations: list[float] = []

    def hand_out(self, n: int, pid: Pid, seq: int, now: float) -> None:
        if n not in self.out:
            self.out[n] = {}
            self.since[n] = now
        self.out[n][pid] = seq

    def drop(self, n: int, pid: Pid) -> bool:
        """``pid`` no longer does job ``n``; True if no copy of it is left out."""
        copies = self.out.get(n)
        if copies is None or copies.pop(pid, None) is None:
            return False
        if copies:
            return False
        del self.out[n], self.since[n]
        return True

    def finish(self, n: int) -> None:
        self.done.add(n)
        if n in self.out:
            del self.out[n]
            self.durations.append(time.monotonic() - self.since.pop(n))

    def straggler_limit(self) -> float | None:
        """How long a job may be out before it counts as a straggler: a few
        times the median of the jobs done (None before the first one)."""
        if not self.durations:
            return None
        return max(BACKUP_MIN, BACKUP_FACTOR * statistics.median(self.durations))

    def next_straggler_at(self) -> float | None:
        limit = self.straggler_limit()
        single = [t for n, t in self.since.items() if len(self.out[n]) == 1]
        if limit is None or not single:
            return None
        return min(single) + limit

    def stragglers(self, now: float) -> list[int]:
        """The jobs out with only one worker for longer than the limit, oldest first."""
        limit = self.straggler_limit()
        if limit is None:
            return []
        late = [n for n, t in self.since.items() if len(self.out[n]) == 1 and now - t > limit]
        return sorted(late, key=self.since.__getitem__)


async def master(caller: Pid, job: Job, progress: Pid | None = None) -> None:
    """The master process: sends ``("result", job.name, mapping)`` or
    ``("error", job.name, text)`` to ``caller``, then ends. Progress reports,
    ``("progress", job.name, maps_done, maps, reduces_done, reduces)``, go to
    ``progress`` if given."""
    state = _Master(caller, job, progress)
    try:
        result = await state.run()
    except MapReduceError as e:
        send(caller, ("error", job.name, str(e)))
    else:
        send(caller, ("result", job.name, result))
    finally:
        await state.close()


async def start(caller: Pid, job: Job | dict[str, Any], progress: Pid | None = None) -> Pid:
    """Start a supervisor with a master for ``job`` on this node; returns the supervisor.

    The master is restarted (from the beginning of the job) if it crashes;
    once it has answered ``caller`` it ends normally and is not restarted
    (``transient``). Callable by rpc, to put the master on another node: pass
    ``job.as_term()`` then, since only terms cross nodes.
    """
    if isinstance(job, dict):
        job = Job(**job)
    spec = supervisor.process_spec(master, caller, job, progress, id="master", restart="transient")
    sup: Pid = await supervisor.start([spec], max_restarts=3, max_seconds=5.0)
    return sup


async def run_job(job: Job, *, timeout: float | None = None, progress: Pid | None = None) -> dict[Any, Any]:
    """Run ``job`` under a supervisor on this node and return the merged result.

    Raises :class:`MapReduceError` when the master reports that it cannot
    answer or its supervisor gives up, and ``TimeoutError`` after ``timeout``.
    """
    sup = await start(pybeam.self(), job, progress)
    ref = pybeam.monitor(sup)

    def answer(msg: Any) -> bool:
        match msg:
            case ("result" | "error", name, _):
                return bool(name == job.name)
            case ("DOWN", r, "process", _, _):
                return bool(r == ref)
        return False

    try:
        match await receive(answer, timeout=timeout):
            case ("result", _, dict() as result):
                return result
            case ("error", _, why):
                raise MapReduceError(str(why))
            case ("DOWN", _, _, _, reason):
                raise MapReduceError(f"the master's supervisor gave up: {reason!r}")
        raise AssertionError("unreachable")
    finally:
        pybeam.demonitor(ref, flush=True)
        with contextlib.suppress(gen_server.GenServerError):
            await supervisor.stop(sup)  # NoServer if it gave up already


class _Master:
    """The master's state and its steps; :func:`master` is the process."""

    def __init__(self, caller: Pid, job: Job, progress: Pid | None) -> None:
        self.caller = caller
        self.job = job
        self.progress = progress
        self.me = pybeam.self()
        self.client = storage.connect(job.redis_url)
        self.run_id = ""
        self.runs: list[str] = []
        #: Every worker we know of, and its monitor.
        self.workers: dict[Pid, Ref] = {}
        self.idle: deque[Pid] = deque()
        #: What each busy worker was last given: (run, kind, n).
        self.busy: dict[Pid, tuple[str, str, int]] = {}
        self.pg_ref: Ref | None = None
        self.redis_trouble_since: float | None = None
        self.done_counts = {"map": 0, "reduce": 0}
        self.crashes: dict[tuple[str, str, int], int] = {}
        #: Where each chunk starts in the input file (bytes), and where the last ends.
        self.chunk_starts: list[int] = [0]
        self._seq = 0

    async def run(self) -> dict[Any, Any]:
        data = self._read_input()
        self.pg_ref, members = await pg.monitor(GROUP)
        self._add_workers(members)
        for attempt in range(1, self.job.max_runs + 1):
            self.run_id = secrets.token_hex(4)
            self.runs.append(self.run_id)
            self.done_counts = {"map": 0, "reduce": 0}
            self._report()
            maps = _Phase("map", self.job.maps, pending=())
            await self._with_redis(self._store_chunks, data, maps)
            if await self._phase(maps) and await self._phase(_Phase("reduce", self.job.reduces)):
                result: dict[Any, Any] | None = await self._with_redis(self._collect)
                if result is not None:
                    await self._with_redis(self._delete_runs)
                    return result
            logger.warning("job %s: data missing from Redis in run %d; starting over", self.job.name, attempt)
        raise MapReduceError(
            f"the job's data vanished from Redis {self.job.max_runs} times (is Redis restarting?)"
        )

    async def close(self) -> None:
        # Only the Redis connection: the monitors of workers and of the pg group
        # end with the process (and this may run in a process already killed).
        with contextlib.suppress(Exception):
            await self.client.aclose()

    # -- the input and the output ---------------------------------------------------

    def _read_input(self) -> bytes:
        # Bytes, as they are on disk: the workers decode their chunks (in
        # parallel) and report a chunk that is not UTF-8 ("invalid").
        try:
            return Path(self.job.path).read_bytes()
        except OSError as e:
            raise MapReduceError(f"cannot read {self.job.path}: {e.strerror or e}") from None

    async def _store_chunks(self, data: bytes, maps: _Phase) -> None:
        """Store the chunks one by one, each map job handed out as soon as its
        chunk is in Redis: the first workers count while the master still
        stores the rest (20 MB take Redis some 30 ms)."""
        chunks = storage.split_lines(data, self.job.maps)
        self.chunk_starts = [0, *itertools.accumulate(len(chunk) for chunk in chunks)]
        for m, chunk in enumerate(chunks):
            if m in maps.pending or m in maps.out or m in maps.done:
                continue  # stored before Redis failed, and this step is tried again
            await self.client.set(storage.chunk_key(self.job.name, self.run_id, m), chunk)
            maps.pending.append(m)
            self._dispatch(maps)

    async def _collect(self) -> dict[Any, Any] | None:
        """Every reduce job's pairs in one mapping; None if one is missing."""
        keys = [storage.reduce_key(self.job.name, self.run_id, r) for r in range(self.job.reduces)]
        result: dict[Any, Any] = {}
        for data in await self.client.mget(keys):
            if data is None:
                return None
            for key, value in storage.decode_pairs(data):
                result[key] = value
        return result

    async def _delete_runs(self) -> None:
        """The intermediate keys of every run; the workers' counters stay."""
        for run in self.runs:
            keys = [k async for k in self.client.scan_iter(match=f"mr:{self.job.name}:{run}:*", count=1000)]
            if keys:
                await self.client.unlink(*keys)

    async def _with_redis(self, step: Any, *args: Any) -> Any:
        """``await step(*args)``, tried again while Redis is unreachable, for
        at most ``redis_patience`` seconds."""
        deadline = time.monotonic() + self.job.redis_patience
        while True:
            try:
                return await step(*args)
            except RedisError as e:
                if time.monotonic() > deadline:
                    raise MapReduceError(f"Redis at {self.job.redis_url} is unreachable: {e}") from None
                await asyncio.sleep(RETRY_DELAY)

    # -- one phase: every map job, or every reduce job ---------------------------------

    async def _phase(self, ph: _Phase) -> bool:
        """Run the phase's jobs until each was done once; False if the run's
        data went missing from Redis."""
        kind = ph.kind
        run = self.run_id
        while len(ph.done) < ph.count:
            self._dispatch(ph)
            match await receive(timeout=self._backup_wait(ph), default=None):
                case ("done", r, (k, n), pid) if r == run and k == kind:
                    self._free(pid)
                    if n not in ph.done:  # a job done twice counts once
                        ph.finish(n)
                        self.done_counts[kind] += 1
                        self._report()
                    self.redis_trouble_since = None
                case ("failed", r, (k, n), pid, why) if r == run and k == kind:
                    self._free(pid)
                    ph.drop(n, pid)
                    self._redis_trouble(why)
                    pybeam.send_after(RETRY_DELAY, self.me, ("retry", run, (kind, n)))
                case ("retry", r, (k, n)) if r == run and k == kind:
                    if n not in ph.done and n not in ph.out:
                        ph.pending.append(n)
                case ("invalid", r, ("map", m), _, reason, start) if r == run:
                    at = self.chunk_starts[m] + start
                    raise MapReduceError(f"{self.job.path} is not UTF-8 text ({reason} at byte {at})")
                case ("missing", r, _, pid, key) if r == run:
                    self._free(pid)
                    logger.warning("job %s: %s is missing from Redis", self.job.name, key)
                    return False
                case ("timeout", r, (k, n), pid, seq) if r == run and k == kind:
                    if ph.out.get(n, {}).get(pid) == seq and n not in ph.done:
                        # The worker stays busy (no new work) until it answers.
                        logger.info("job %s: %s %d timed out on %s", self.job.name, kind, n, pid)
                        if ph.drop(n, pid):
                            ph.pending.appendleft(n)
                case ("DOWN", ref, "process", pid, reason) if self.workers.get(pid) == ref:
                    logger.info("job %s: worker %s is down (%r)", self.job.name, pid, reason)
                    del self.workers[pid]
                    if pid in self.idle:
                        self.idle.remove(pid)
                    job = self.busy.pop(pid, None)
                    if job is not None:
                        _, _, n = job
                        if job[:2] == (run, kind) and pid in ph.out.get(n, {}):
                            if ph.drop(n, pid):
                                ph.pending.appendleft(n)
                            self._count_crash(kind, n, reason)
                case (ref, "join", _, pids) if ref == self.pg_ref:
                    self._add_workers(pids)
                case ("done" | "failed" | "missing" | "invalid", _, _, pid, *_):
                    self._free(pid)  # about a job of an earlier phase or run: only the worker is news
                case _:
                    pass  # pg leaves (the monitors say more), stale timers and retries, no message
        return True

    def _dispatch(self, ph: _Phase) -> None:
        """Hand jobs to idle workers: the waiting jobs first, then copies of
        stragglers' jobs (:meth:`_Phase.stragglers`)."""
        while ph.pending and self.idle:
            n = ph.pending.popleft()
            if n not in ph.done and n not in ph.out:
                self._assign(ph, n, self._take_idle(()))
        if self.idle and self.job.backups:
            for n in ph.stragglers(time.monotonic()):
                if not self.idle:
                    break
                logger.info("job %s: %s %d is slow; a copy goes to an idle worker", self.job.name, ph.kind, n)
                self._assign(ph, n, self._take_idle({pid.node for pid in ph.out[n]}))

    def _assign(self, ph: _Phase, n: int, pid: Pid) -> None:
        self._seq += 1
        send(pid, (ph.kind, self.me, self.job.spec(), self.run_id, n))
        self.busy[pid] = (self.run_id, ph.kind, n)
        ph.hand_out(n, pid, self._seq, time.monotonic())
        pybeam.send_after(
            self.job.job_timeout, self.me, ("timeout", self.run_id, (ph.kind, n), pid, self._seq)
        )

    def _take_idle(self, avoid: set[str] | tuple[()]) -> Pid:
        """An idle worker, on the node with the fewest of our jobs (a node
        in ``avoid`` last), the longest idle first among equals."""
        load: dict[str, int] = {}
        for pid in self.busy:
            load[pid.node] = load.get(pid.node, 0) + 1
        # min() keeps the first of equals: the idle queue's order.
        pid = min(self.idle, key=lambda p: (p.node in avoid, load.get(p.node, 0)))
        self.idle.remove(pid)
        return pid

    def _backup_wait(self, ph: _Phase) -> float | None:
        """Seconds until a straggler's job may get a copy, if a worker is idle for it."""
        if not self.idle or ph.pending or not self.job.backups:
            return None
        at = ph.next_straggler_at()
        return None if at is None else max(0.0, at - time.monotonic())

    # -- workers -----------------------------------------------------------------------

    def _add_workers(self, pids: list[Pid]) -> None:
        for pid in pids:
            if pid not in self.workers:
                self.workers[pid] = pybeam.monitor(pid)
                self.idle.append(pid)

    def _free(self, pid: Pid) -> None:
        """``pid`` answered: it is idle again (if we still count it as a worker)."""
        if self.busy.pop(pid, None) is not None and pid in self.workers:
            self.idle.append(pid)

    def _count_crash(self, kind: str, n: int, reason: Any) -> None:
        """A worker crashed doing job ``(kind, n)``: a bug in the job module, or
        input it cannot take. Handing the job out for ever would crash every
        worker in turn, so after :data:`MAX_CRASHES` the job fails. Other
        reasons (a node that went away, a worker that quit) are not the job's fault."""
        if isinstance(reason, Crash):
            key = (self.run_id, kind, n)
            self.crashes[key] = self.crashes.get(key, 0) + 1
            if self.crashes[key] >= MAX_CRASHES:
                raise MapReduceError(f"{kind} job {n} crashed {MAX_CRASHES} workers; the last with {reason}")

    def _redis_trouble(self, why: str) -> None:
        now = time.monotonic()
        if self.redis_trouble_since is None:
            self.redis_trouble_since = now
        elif now - self.redis_trouble_since > self.job.redis_patience:
            raise MapReduceError(f"Redis at {self.job.redis_url} is unreachable: {why}")

    def _report(self) -> None:
        if self.progress is not None:
            maps, reduces = self.done_counts["map"], self.done_counts["reduce"]
            send(self.progress, ("progress", self.job.name, maps, self.job.maps, reduces, self.job.reduces))

"""The worker: does the map and reduce jobs a master hands it, one at a time.

A worker joins the process group :data:`GROUP`; masters find workers there
(whenever they join, on whichever node). It waits for jobs::

    ("map", master, spec, run, m)      read chunk m, map it, store its pairs
                                       grouped by reduce job
    ("reduce", master, spec, run, r)   read reduce job r's pairs of every map
                                       job, reduce each key, store the result

and answers each one with ``("done", run, job, self)``, or
``("failed", run, job, self, why)`` when Redis could not be reached (the master
tries again later), or ``("missing", run, job, self, key)`` when input it
needed is not in Redis (the master starts the job over), or
``("invalid", run, job, self, reason, start)`` when a chunk is not UTF-8 (the
master fails the job with a clear error). ``spec`` says
everything about the job (its name, Redis URL, job module, counts), so a worker
serves any master and holds no state between jobs: losing one loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

import pybeam
from pybeam import Pid, pg, receive, send

from .storage import (
    InvalidInput,
    MissingData,
    chunk_key,
    connect,
    counter_key,
    decode_pairs,
    encode_pairs,
    group_by_partition,
    map_key,
    reduce_key,
)

__all__ = ["GROUP", "start_worker", "worker"]

#: The process group (default scope) where masters find workers.
GROUP = "map_reduce_workers"


async def worker(
    worker_id: str, die_after: int | None = None, hang_after: int | None = None, pause: float = 0.0
) -> None:
    """The worker process, ``worker_id`` naming its Redis counter.

    For the tests and the demo: after ``die_after``/``hang_after`` jobs, the
    next job it gets kills it (a crash) or makes it hang forever (a stuck job),
    the failures the master must survive; ``pause`` seconds of sleep per job
    make jobs last long enough for a failure to land in the middle of one.
    """
    await pg.join(GROUP, pybeam.self())
    clients: dict[str, aioredis.Redis] = {}
    jobs_done = 0
    try:
        while True:
            match await receive():
                case (("map" | "reduce") as kind, Pid() as master, dict() as spec, str() as run, int() as n):
                    job = (kind, n)
                    if die_after is not None and jobs_done >= die_after:
                        pybeam.exit("worn_out")  # with a job in hand: the master must notice
                    if hang_after is not None and jobs_done >= hang_after:
                        await asyncio.Event().wait()  # stuck: only a timeout tells the master
                    await asyncio.sleep(pause)
                    client = clients.get(spec["url"])
                    if client is None:
                        client = clients[spec["url"]] = connect(spec["url"])
                    try:
                        if kind == "map":
                            await do_map(client, spec, run, n, worker_id)
                        else:
                            await do_reduce(client, spec, run, n, worker_id)
                    except MissingData as e:
                        send(master, ("missing", run, job, pybeam.self(), str(e)))
                    except InvalidInput as e:
                        send(master, ("invalid", run, job, pybeam.self(), e.reason, e.start))
                    except RedisError as e:
                        send(master, ("failed", run, job, pybeam.self(), f"{type(e).__name__}: {e}"))
                    else:
                        jobs_done += 1
                        send(master, ("done", run, job, pybeam.self()))
                case "stop":
                    return
    finally:
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()


def start_worker(
    worker_id: str, die_after: int | None = None, hang_after: int | None = None, pause: float = 0.0
) -> Pid:
    """Start a worker on this node (call it by rpc to put one on another node)."""
    return pybeam.spawn(worker, worker_id, die_after, hang_after, pause)


def _job_module(spec: dict[str, Any]) -> Any:
    # By name: a function cannot travel between nodes, a module name can.
    return importlib.import_module(spec["module"])


async def do_map(client: aioredis.Redis, spec: dict[str, Any], run: str, m: int, worker_id: str) -> None:
    """Map job ``m``: its chunk's pairs, in one group per reduce job."""
    job, reduces = spec["job"], spec["reduces"]
    key = chunk_key(job, run, m)
    chunk = await client.get(key)
    if chunk is None:
        raise MissingData(key)
    try:
        # The master stores the file's bytes as they are: the decoding (and the
        # check that it is UTF-8) happens here, in parallel.
        text = chunk.decode() if isinstance(chunk, bytes) else chunk
    except UnicodeDecodeError as e:
        raise InvalidInput(e.reason, e.start) from None
    groups = group_by_partition(_job_module(spec).map(text), reduces)
    # One round trip for all the writes and the counter, applied all at once
    # (MULTI/EXEC): a reader never sees half of this job's output.
    async with client.pipeline(transaction=True) as pipe:
        for r, group in enumerate(groups):
            pipe.set(map_key(job, run, m, r), encode_pairs(group))
        pipe.incr(counter_key(job, worker_id))
        await pipe.execute()


async def do_reduce(client: aioredis.Redis, spec: dict[str, Any], run: str, r: int, worker_id: str) -> None:
    """Reduce job ``r``: every map job's pairs for ``r``, reduced key by key."""
    job, maps = spec["job"], spec["maps"]
    keys = [map_key(job, run, m, r) for m in range(maps)]
    outputs = await client.mget(keys)
    values: dict[Any, list[Any]] = {}
    for key, data in zip(keys, outputs, strict=True):
        if data is None:
            raise MissingData(key)
        for k, v in decode_pairs(data):
            values.setdefault(k, []).append(v)
    reduce = _job_module(spec).reduce
    result = [(k, reduce(k, vs)) for k, vs in values.items()]
    async with client.pipeline(transaction=True) as pipe:
        pipe.set(reduce_key(job, run, r), encode_pairs(result))
        pipe.incr(counter_key(job, worker_id))
        await pipe.execute()

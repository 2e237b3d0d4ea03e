"""One node's margarine: the processes behind its HTTP server, started by rpc.

``await rpc.call(node, start, port, redis_url, "replicated")`` starts, on that
node, a supervisor (``margarine_sup``, one_for_all) with:

1. the aggregates replicator (``aggregates.py``),
2. the cache's process: the replica (replicated) or the shard server (sharded),
3. the HTTP server (a GenServer whose ``init`` returns once it listens),

and returns the node's URL. One margarine per node: the state the HTTP
handlers share lives in this module (:data:`running`), which is also how
tests and the benchmark read a node's statistics (:func:`stats`) by rpc.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from aiohttp import web

import pybeam
from pybeam import gen_server, supervisor
from pybeam.gen_server import GenServer

from . import aggregates, cache, sharded, storage
from . import web as http
from .aggregates import Aggregates

__all__ = ["CacheMode", "Margarine", "running", "start", "stats", "stop"]

log = logging.getLogger("margarine")

CacheMode = Literal["replicated", "sharded", "none"]
CACHE_MODES: tuple[CacheMode, ...] = ("replicated", "sharded", "none")
SUPERVISOR = "margarine_sup"
#: Default seconds over which redirect counts are batched before replication.
BATCH = 0.005


@dataclass
class Margarine:
    """What one node's margarine is made of."""

    url: str
    client: aioredis.Redis
    cache: cache.Cache
    aggregates: Aggregates


#: This node's margarine, if started.
running: Margarine | None = None


class HttpServer(GenServer):
    """Serves the app on ``port`` from ``init`` until it terminates."""

    async def init(self, arg: tuple[Margarine, str, int]) -> web.ServerRunner:
        margarine, host, port = arg
        pybeam.trap_exit(True)  # so that terminate runs when the supervisor stops us
        # No access log: a line per redirect would cost more than the redirect.
        server = http.make_server(margarine.client, margarine.cache, margarine.aggregates, margarine.url)
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner

    async def terminate(self, reason: Any, runner: web.ServerRunner) -> None:
        await runner.cleanup()


async def start(
    port: int,
    redis_url: str,
    cache_mode: CacheMode = "replicated",
    batch: float | None = BATCH,
    host: str = "127.0.0.1",
    public_url: str | None = None,
) -> str:
    """Start margarine on this node, serving on ``host:port``; returns its URL.

    ``batch``: seconds over which redirect counts are batched (None: one
    message per redirect). ``public_url``: the URL clients reach this node by,
    for the ``location`` header (default ``http://host:port/``; give it when
    ``host`` is ``0.0.0.0`` or the node sits behind a proxy).
    """
    global running
    if cache_mode not in CACHE_MODES:
        raise ValueError(f"unknown cache mode {cache_mode!r}: one of {', '.join(CACHE_MODES)}")
    node = pybeam.node_name()
    client = storage.connect(redis_url)
    the_cache: cache.Cache
    if cache_mode == "replicated":
        the_cache = cache.ReplicatedCache(client, node)
    elif cache_mode == "sharded":
        the_cache = sharded.ShardedCache(client, node)
    else:
        the_cache = cache.NoCache(client)
    url = public_url or f"http://{host}:{port}/"
    if not url.endswith("/"):
        url += "/"
    margarine = Margarine(url, client, the_cache, Aggregates(node, batch))
    await aggregates.load(margarine.aggregates, client)
    children = [supervisor.process_spec(aggregates.replicator, margarine.aggregates, client, id="aggregates")]
    if isinstance(the_cache, cache.ReplicatedCache):
        children.append(supervisor.process_spec(cache.replica, the_cache, id="cache"))
    elif isinstance(the_cache, sharded.ShardedCache):
        children.append(sharded.Shard.child_spec(the_cache, name=sharded.NAME))
    children.append(HttpServer.child_spec((margarine, host, port), id="http"))
    try:
        await supervisor.start(children, strategy="one_for_all", name=SUPERVISOR)
    except BaseException:
        await client.aclose()
        raise
    running = margarine
    log.info("margarine on %s serving %s (cache %s)", node, url, cache_mode)
    return url


async def stop() -> None:
    """Stop this node's margarine (the HTTP server first, then the rest)."""
    global running
    await gen_server.stop(SUPERVISOR)
    if running is not None:
        # The saver saves at most once a second under load: what it had not saved yet.
        try:
            await aggregates.save(running.aggregates, running.client)
        except storage.StorageDown as e:
            log.warning("margarine: the last counts could not be persisted: %s", e)
        await running.client.aclose()
        running = None


def stats() -> dict[str, Any]:
    """This node's counters: messages of the aggregates, Redis reads of the cache."""
    if running is None:
        return {}
    return {**running.aggregates.stats(), "cache_misses": getattr(running.cache, "misses", None)}

"""Part 3: where a lookup finds a code's url. Three modes, one interface:

- :class:`NoCache` asks Redis every time: the stateless baseline.
- :class:`ReplicatedCache`: every node keeps every known link in memory.
- :class:`ShardedCache` (``sharded.py``): each link lives on one owner node.

Links never change once stored (``SET NX``), so a cache can be *incomplete*
but never *wrong*: whatever a cache misses, Redis answers. That is what lets
every mode stay simple about joins, partitions and crashes.
"""

from __future__ import annotations

import logging
import random
from typing import Protocol

import redis.asyncio as aioredis

import pybeam
from pybeam import Pid, pg, receive, send

from . import storage

__all__ = ["REPLICA", "Cache", "NoCache", "ReplicatedCache", "replica"]

log = logging.getLogger("margarine")

#: The replicated cache's process group and registered name.
REPLICA = "margarine_cache"


class Cache(Protocol):
    def cached(self, code: str) -> str | None:
        """The url of ``code`` if this node holds it in memory: the hit path, no await."""
        ...

    async def get(self, code: str) -> str | None:
        """The url of ``code`` (None if there is none); raises StorageDown."""
        ...

    def put(self, code: str, url: str) -> None:
        """A link just stored in Redis."""
        ...

    def taken(self, code: str) -> bool:
        """True if ``code`` is known here to be stored (False: ask Redis)."""
        ...


class NoCache:
    """Every lookup is a Redis GET."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    def cached(self, code: str) -> str | None:
        return None

    async def get(self, code: str) -> str | None:
        return await storage.lookup(self.client, code)

    def put(self, code: str, url: str) -> None:
        pass

    def taken(self, code: str) -> bool:
        return False


class ReplicatedCache:
    """Local memory first; a miss reads Redis, and what it finds goes to every node.

    The ``replica`` process of each node is a member of the ``margarine_cache``
    group and applies what the others send. A node that joins late *receives
    the cache*: its replica asks one member for a copy (one copy over the wire,
    not one per member). Anything it still misses — the member died before
    answering, a link stored during a partition, or one stored elsewhere while
    it was joining, before that node saw it join — it catches up lazily, from
    Redis, at the first lookup: links never change, so that is always right.
    """

    def __init__(self, client: aioredis.Redis, node: str) -> None:
        self.client = client
        self.node = node
        self.links: dict[str, str] = {}
        #: Redis reads done by this node's lookups (the tests and the benchmark read it).
        self.misses = 0

    def cached(self, code: str) -> str | None:
        return self.links.get(code)

    async def get(self, code: str) -> str | None:
        url = self.links.get(code)
        if url is None:
            self.misses += 1
            url = await storage.lookup(self.client, code)
            if url is not None:
                self.put(code, url)
        return url

    def taken(self, code: str) -> bool:
        return code in self.links

    def put(self, code: str, url: str) -> None:
        self.links[code] = url
        for pid in pg.get_members(REPLICA):
            if pid.node != self.node:
                send(pid, ("cache_put", code, url))


async def replica(cache: ReplicatedCache) -> None:
    """The process that applies the links other nodes found, and hands newcomers a copy."""
    me = pybeam.self()
    await pg.start()  # waits for the members of the nodes connected now
    peers = [pid for pid in pg.get_members(REPLICA) if pid.node != cache.node]
    await pg.join(REPLICA, me)
    if peers:
        send(random.choice(peers), ("cache_copy", me))
    while True:
        match await receive():
            case ("cache_put", code, url):
                cache.links[code] = url
            case ("cache_copy", Pid() as newcomer):
                send(newcomer, ("cache_links", cache.links))
            case ("cache_links", links):
                # setdefault: what we learnt meanwhile is as good (links never change).
                for code, url in links.items():
                    cache.links.setdefault(code, url)

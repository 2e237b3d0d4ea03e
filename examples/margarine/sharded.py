"""Part 3's extra: a sharded cache, for when every node cannot hold every link.

Every node runs a shard server (a GenServer, ``margarine_shard``) in the
``margarine_shards`` process group. The members of that group make a
consistent-hash ring (``ring.py``); each code is cached only by its owner. A
lookup on any node asks the owner with a ``gen_server.call``; the owner
answers from memory or reads Redis and keeps the answer.

Ownership follows the group: when a shard joins or leaves (a node starts,
stops, crashes, is cut off), every node rebuilds its ring, and each shard
hands the links it no longer owns to their new owners. During the move two
nodes may disagree for a moment about an owner, and a new owner may not have
its links yet: the lookup then costs a Redis read, and is still right (links
never change). A call that fails — the owner just died — falls back to Redis.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

import pybeam
from pybeam import NodeDown, errand, gen_server, pg
from pybeam.gen_server import GenServer, GenServerError

from . import storage
from .ring import HashRing

__all__ = ["GROUP", "NAME", "Shard", "ShardedCache"]

GROUP = "margarine_shards"
NAME = "margarine_shard"
#: How long a lookup waits for the owner before reading Redis itself.
CALL_TIMEOUT = 1.0


class ShardedCache:
    """The HTTP handlers' side: find the owner, ask it."""

    def __init__(self, client: aioredis.Redis, node: str) -> None:
        self.client = client
        self.node = node
        self.ring = HashRing([])
        #: This node's shard of the links (the shard server writes it, lookups read it).
        self.links: dict[str, str] = {}
        self.misses = 0

    def cached(self, code: str) -> str | None:
        # Whatever this node holds is right, owner or not: links never change.
        return self.links.get(code)

    async def get(self, code: str) -> str | None:
        owner = self.ring.owner(code)
        if owner is None or owner == self.node:
            return await self.get_own(code)
        try:
            # A call waits in its caller's mailbox: a process of its own, not the HTTP server's.
            reply = await errand.run(gen_server.call, (NAME, owner), ("get", code), CALL_TIMEOUT)
        except (NodeDown, GenServerError, TimeoutError):
            return await storage.lookup(self.client, code)  # the owner is leaving: Redis knows
        match reply:
            case ("ok", str() | None as url):
                return url
            case ("down", why):
                raise storage.StorageDown(why)
        raise AssertionError(f"unexpected reply {reply!r}")

    async def get_own(self, code: str) -> str | None:
        url = self.links.get(code)
        if url is None:
            self.misses += 1
            url = await storage.lookup(self.client, code)
            if url is not None:
                self.links[code] = url
        return url

    def taken(self, code: str) -> bool:
        return code in self.links  # this node's shard only: anything else, Redis knows

    def put(self, code: str, url: str) -> None:
        owner = self.ring.owner(code)
        if owner is None or owner == self.node:
            self.links[code] = url
        else:
            gen_server.cast((NAME, owner), ("fill", {code: url}))


class Shard(GenServer):
    """One node's shard server: answers lookups for its codes, follows the ring."""

    async def init(self, cache: ShardedCache) -> ShardedCache:
        await pg.start()
        await pg.join(GROUP, pybeam.self())
        _, members = await pg.monitor(GROUP)
        self.rebalance(cache, members)
        return cache

    async def handle_call(self, request: Any, from_: Any, cache: ShardedCache) -> Any:
        match request:
            case ("get", code):
                url = cache.links.get(code)
                if url is not None:
                    return ("reply", ("ok", url), cache)
                # Read Redis in a helper, so one slow read does not hold every lookup.
                pybeam.spawn(_read_and_reply, cache, code, from_)
                return ("noreply", cache)
        raise ValueError(f"unknown request {request!r}")

    def handle_cast(self, request: Any, cache: ShardedCache) -> Any:
        match request:
            case ("fill", links):
                cache.links.update(links)
        return ("noreply", cache)

    def handle_info(self, msg: Any, cache: ShardedCache) -> Any:
        match msg:
            case (_, "join" | "leave", _, _):
                self.rebalance(cache, pg.get_members(GROUP))
        return ("noreply", cache)

    @staticmethod
    def rebalance(cache: ShardedCache, members: list[pybeam.Pid]) -> None:
        """Rebuild the ring from the group, and hand away the links now owned elsewhere."""
        cache.ring = ring = HashRing({pid.node for pid in members} | {cache.node})
        moving: dict[str, dict[str, str]] = {}
        for code, url in cache.links.items():
            owner = ring.owner(code)
            if owner != cache.node:
                moving.setdefault(owner or cache.node, {})[code] = url
        for owner, links in moving.items():
            for code in links:
                del cache.links[code]
            gen_server.cast((NAME, owner), ("fill", links))


async def _read_and_reply(cache: ShardedCache, code: str, from_: Any) -> None:
    try:
        url = await cache.get_own(code)
    except storage.StorageDown as e:
        gen_server.reply(from_, ("down", str(e)))
    else:
        gen_server.reply(from_, ("ok", url))

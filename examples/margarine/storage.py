"""What margarine keeps in Redis, and how to reach it.

==================================  ==========================================
``margarine:hash:<code>``           the url of a code (``SET NX``: first wins)
``margarine:aggregates:<code>``     a hash, node → that node's redirect count
==================================  ==========================================

Every Redis failure (refused, timed out, reset) surfaces as
:class:`StorageDown`, which the HTTP layer turns into a 503. The client is
redis-py's, which reconnects by itself on the next command: when Redis comes
back, the next request works again.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = [
    "StorageDown",
    "connect",
    "link_key",
    "load_counters",
    "lookup",
    "save_counters",
    "store",
]

#: Short timeouts: a Redis that is gone should give a quick 503, not hang the request.
CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 2.0


class StorageDown(Exception):
    """Redis could not be reached or failed; the message says how."""


def connect(url: str) -> aioredis.Redis:
    """A client for ``url`` (no I/O yet); strings in, strings out."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
    )


def link_key(code: str) -> str:
    return f"margarine:hash:{code}"


def counter_key(code: str) -> str:
    return f"margarine:aggregates:{code}"


async def store(client: aioredis.Redis, code: str, url: str) -> bool:
    """Store ``code`` → ``url`` unless the code is taken; True if stored."""
    try:
        return bool(await client.set(link_key(code), url, nx=True))
    except (RedisError, OSError) as e:
        raise StorageDown(str(e) or type(e).__name__) from e


async def lookup(client: aioredis.Redis, code: str) -> str | None:
    """The url of ``code``, or None."""
    try:
        url = await client.get(link_key(code))
    except (RedisError, OSError) as e:
        raise StorageDown(str(e) or type(e).__name__) from e
    return None if url is None else str(url)


async def save_counters(client: aioredis.Redis, node: str, counts: Mapping[str, int]) -> None:
    """Persist ``node``'s own entry of each code's counter (absolute values: idempotent)."""
    try:
        async with client.pipeline(transaction=False) as pipe:
            for code, count in counts.items():
                pipe.hset(counter_key(code), node, count)
            await pipe.execute()
    except (RedisError, OSError) as e:
        raise StorageDown(str(e) or type(e).__name__) from e


async def load_counters(client: aioredis.Redis) -> dict[str, dict[str, int]]:
    """Every persisted counter: ``{code: {node: count}}``."""
    prefix = counter_key("")
    counters: dict[str, dict[str, int]] = {}
    try:
        async for key in client.scan_iter(match=prefix + "*", count=1000):
            entries = await client.hgetall(key)
            counters[key[len(prefix) :]] = {str(node): int(n) for node, n in entries.items()}
    except (RedisError, OSError) as e:
        raise StorageDown(str(e) or type(e).__name__) from e
    return counters

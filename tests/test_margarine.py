"""Parts 3 and 4 of the training, margarine: the original scenarios on real nodes,
real HTTP and a real Redis, then the caches and the bad input.

"Eventually" is the training's: at most 10 retries, 200 ms apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis

import examples.margarine as margarine
from examples.redis_server import RedisServer
from pybeam import rpc
from pybeam.testing import LocalCluster, free_port, heal, partition

RETRIES, INTERVAL = 10, 0.2


async def training_eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """The training's "eventually": the first try, then at most 10 retries 200 ms apart."""
    for attempt in range(RETRIES + 1):
        if await check():
            return
        if attempt < RETRIES:
            await asyncio.sleep(INTERVAL)
    raise AssertionError(f"not after {RETRIES} retries {INTERVAL}s apart: {what}")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def start_margarine(c: LocalCluster, server: RedisServer, cache: str = "replicated") -> list[str]:
    """Start margarine on every node of ``c``; their URLs, in order."""
    return [await rpc.call(node, margarine.start, free_port(), server.url, cache) for node in c.nodes]


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str, str | None]:
    async with http.get(url, allow_redirects=False) as r:
        return r.status, await r.text(), r.headers.get("location")


async def post(http: aiohttp.ClientSession, base: str, **form: str) -> tuple[int, str, str | None]:
    async with http.post(base, data=form, allow_redirects=False) as r:
        return r.status, await r.text(), r.headers.get("location")


async def redirects(http: aiohttp.ClientSession, base: str, code: str) -> str:
    status, body, _ = await get(http, f"{base}{code}/aggregates")
    return body if status == 200 else f"{status} {body}"


def commands(server: RedisServer, name: str) -> int:
    """How many times Redis ran command ``name`` (INFO commandstats)."""
    with redis.Redis.from_url(server.url) as client:
        stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


# -- the training's scenarios ------------------------------------------------------------------


async def test_link_scenario(cluster: Any, redis_server: RedisServer, http: aiohttp.ClientSession) -> None:
    async with cluster(1) as c:
        (base,) = await start_margarine(c, redis_server)
        status, code, location = await post(http, base, url="https://keathley.io")
        assert status == 201
        assert code == margarine.short_code("https://keathley.io")
        assert location == base + code
        assert await get(http, location) == (302, "https://keathley.io", "https://keathley.io")


async def test_aggregates_scenario_with_a_partition(
    cluster: Any, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    async with cluster(3) as c:
        n1, n2, _ = c.nodes
        u1, u2, u3 = await start_margarine(c, redis_server)
        status, code, _ = await post(http, u1, url="https://elixir-lang.org/aggregates")
        assert status == 201

        async def counts_are(*expected: int) -> bool:
            got = [await redirects(http, u, code) for u in (u1, u2, u3)]
            return got == [f"Redirects: {n}" for n in expected]

        assert (await get(http, u1 + code))[0] == 302
        await training_eventually(lambda: counts_are(1, 1, 1), "1/1/1")

        await partition([n1, n2])
        assert (await get(http, u1 + code))[0] == 302
        await training_eventually(lambda: counts_are(2, 2, 1), "2/2/1 after the partition")

        for u in (u2, u1, u3):
            assert (await get(http, u + code))[0] == 302
        await training_eventually(lambda: counts_are(4, 4, 2), "4/4/2 in the partition")

        await heal([n1, n2])
        await training_eventually(lambda: counts_are(5, 5, 5), "5/5/5 after the heal")

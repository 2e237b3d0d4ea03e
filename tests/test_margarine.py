"""Parts 3 and 4 of the training, margarine: the original scenarios on real nodes,
real HTTP and a real Redis, then the caches and the bad input.

"Eventually" is the training's: at most 10 retries, 200 ms apart.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis

import examples.margarine as margarine
import pybeam
from examples.margarine.aggregates import SAVE_INTERVAL
from examples.margarine.cache import REPLICA
from examples.redis_server import RedisServer
from pybeam import rpc
from pybeam.testing import LocalCluster, eventually, free_port, heal, partition

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
    """Start margarine on every node of ``c``; their URLs, in order.

    With the replicated cache, returns once every node sees every replica in
    the group: a link stored before a node has seen a newcomer join reaches
    the newcomer only lazily (docs/margarine.md), and these tests check
    replication among nodes that know each other.
    """
    urls = [await rpc.call(node, margarine.start, free_port(), server.url, cache) for node in c.nodes]
    if cache == "replicated":
        n = len(c.nodes)
        await eventually(
            lambda: all_see([rpc.call(node, replicas_seen) for node in c.nodes], n),
            what=f"every node sees {n} cache replicas",
        )
    return urls


def replicas_seen() -> int:
    """On a node (by rpc): how many cache replicas it knows of."""
    return len(pybeam.pg.get_members(REPLICA))


async def all_see(counts: list[Awaitable[int]], n: int) -> bool:
    return all([await count == n for count in counts])


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


# -- Part 3: the caches ------------------------------------------------------------------------


def cached_here(code: str) -> bool:
    """On a node (by rpc): whether its cache holds ``code``."""
    running = margarine.app.running
    assert running is not None
    return code in running.cache.links  # type: ignore[attr-defined]


async def test_replicated_cache_answers_on_another_node_without_redis(
    cluster: Any, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    async with cluster(2) as c:
        n1, n2 = c.nodes
        u1, u2 = await start_margarine(c, redis_server, "replicated")
        url = "https://example.com/replicated"
        _, code, _ = await post(http, u1, url=url)
        await eventually(lambda: rpc.call(n2, cached_here, code), what="the link reached node 2")
        reads = commands(redis_server, "get")
        for _ in range(3):
            assert await get(http, u2 + code) == (302, url, url)
        assert commands(redis_server, "get") == reads

        # A node that joins late receives the cache: it answers without a Redis read too.
        n3 = await c.start_node()
        (u3,) = [await rpc.call(n3, margarine.start, free_port(), redis_server.url, "replicated")]
        await eventually(lambda: rpc.call(n3, cached_here, code), what="node 3 received the cache")
        assert await get(http, u3 + code) == (302, url, url)
        assert commands(redis_server, "get") == reads
        assert n1 in await rpc.call(n3, pybeam.nodes)

        # The cheaper check for "already stored": a cached code is refused without Redis.
        sets = commands(redis_server, "set")
        assert await post(http, u2, url=url) == (422, f"Unable to shorten {url}", None)
        assert commands(redis_server, "set") == sets


async def test_a_link_missing_from_every_cache_is_read_from_redis_once_then_replicated(
    cluster: Any, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    async with cluster(2) as c:
        n1, n2 = c.nodes
        u1, u2 = await start_margarine(c, redis_server, "replicated")
        url = "https://example.com/stored-behind-our-back"
        with redis.Redis.from_url(redis_server.url) as client:
            client.set("margarine:hash:behind", url)
        reads = commands(redis_server, "get")
        assert await get(http, u1 + "behind") == (302, url, url)
        assert commands(redis_server, "get") == reads + 1
        await eventually(lambda: rpc.call(n2, cached_here, "behind"), what="the lookup was replicated")
        assert await get(http, u2 + "behind") == (302, url, url)
        assert commands(redis_server, "get") == reads + 1
        assert await get(http, u1 + "nothere") == (404, "Not Found", None)
        assert n1 != n2


def all_commands(client: redis.Redis) -> dict[str, int]:
    """Every command Redis ran so far and how many times, but those the test sends on ``client``."""
    stats: dict[str, Any] = client.info("commandstats")
    ours = ("cmdstat_info", "cmdstat_hgetall")
    return {name[8:]: int(s["calls"]) for name, s in stats.items() if name not in ours}


def more(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}


@pytest.mark.parametrize("cache", ["none", "replicated", "sharded"])
async def test_a_cached_redirect_sends_redis_nothing_and_an_uncached_one_a_get(
    cluster: Any, redis_server: RedisServer, http: aiohttp.ClientSession, cache: str
) -> None:
    """The benchmark's premise: ``none`` pays one GET per redirect (the training's uncached
    version), a cache none at all; the counts are persisted apart from the redirects, in
    at most one save per SAVE_INTERVAL, not one per redirect or per batch."""
    async with cluster(1) as c:
        (n1,) = c.nodes
        (base,) = await start_margarine(c, redis_server, cache)
        url = f"https://example.com/round-trips/{cache}"
        _, code, _ = await post(http, base, url=url)
        hits = 100

        # One connection for the test's own commands, opened (HELLO, CLIENT) before counting.
        with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
            before = all_commands(client)
            started = time.monotonic()
            for _ in range(hits):
                assert await get(http, base + code) == (302, url, url)
                await asyncio.sleep(0.005)  # a batch each: a save per batch would show
            await eventually(
                lambda: client.hgetall(f"margarine:aggregates:{code}") == {n1: str(hits)},
                what="the count was persisted",
            )
            elapsed = time.monotonic() - started
            sent = more(all_commands(client), before)
        saves = sent.pop("hset", 0)
        # A new pooled connection (a save while a GET is in flight) says HELLO and CLIENTs.
        connections = sent.pop("hello", 0)
        assert sent.pop("client", 0) <= 3 * connections <= 6, (connections, sent)
        assert sent == ({"get": hits} if cache == "none" else {})
        assert 1 <= saves <= 2 + elapsed / SAVE_INTERVAL, (saves, elapsed)


async def test_sharded_cache_answers_while_a_node_joins_and_while_one_is_killed(
    cluster: Any, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    async with cluster(3) as c:
        urls = await start_margarine(c, redis_server, "sharded")
        links = {}
        for i in range(60):
            url = f"https://example.com/sharded/{i}"
            status, code, _ = await post(http, urls[i % 3], url=url)
            assert status == 201
            links[code] = url
        answers: list[tuple[str, int, str]] = []
        stop = asyncio.Event()

        async def keep_asking(base: str) -> None:
            # Asks on the first two nodes only: the third is the one killed.
            while not stop.is_set():
                for code, url in links.items():
                    status, body, location = await get(http, base + code)
                    answers.append((code, status, body))
                    assert (status, body, location) == (302, url, url), (base, code)

        askers = [asyncio.create_task(keep_asking(u)) for u in urls[:2]]
        try:
            await asyncio.sleep(0.3)
            n4 = await c.start_node()
            await rpc.call(n4, margarine.start, free_port(), redis_server.url, "sharded")

            # The newcomer owns some codes now, and is asked for them.
            async def n4_owns_codes() -> bool:
                return await rpc.call(n4, shard_size) > 0  # type: ignore[no-any-return]

            await eventually(n4_owns_codes, what="node 4 took over codes")
            c.kill(c.nodes[2])
            await asyncio.sleep(0.5)
            before = len(answers)
            await eventually(
                lambda: len(answers) > before + 2 * len(links), what="more lookups after the kill"
            )
        finally:
            stop.set()
            await asyncio.gather(*askers)
        assert all(status == 302 for _, status, _ in answers)


def shard_size() -> int:
    """On a node (by rpc): how many links its shard holds."""
    running = margarine.app.running
    assert running is not None
    return len(running.cache.links)  # type: ignore[attr-defined]


# -- bad input, and a Redis that goes away -----------------------------------------------------


def stored_links(server: RedisServer) -> list[str]:
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        return sorted(client.scan_iter(match="margarine:hash:*"))


async def test_bad_input_gets_a_4xx_with_a_reason_and_stores_nothing(
    cluster: Any, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    async with cluster(1) as c:
        (base,) = await start_margarine(c, redis_server)
        before = stored_links(redis_server)
        ok = "https://example.com/ok"
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"data": {}}, 400, "Missing form field: url"),
            ({"data": {"code": "abc"}}, 400, "Missing form field: url"),
            ({"data": {"url": ""}}, 400, "Missing form field: url"),
            (
                {"data": {"url": "example.com/x"}},
                400,
                "Bad url: 'example.com/x' is not an absolute http(s) url",
            ),
            ({"data": {"url": "ftp://example.com/x"}}, 400, "is not an absolute http(s) url"),
            ({"data": {"url": "javascript:alert(1)"}}, 400, "is not an absolute http(s) url"),
            ({"data": {"url": "https://"}}, 400, "is not an absolute http(s) url"),
            ({"data": {"url": "https://exa mple.com"}}, 400, "spaces or control characters"),
            ({"data": {"url": "http://example.com:99999/"}}, 400, "is not a valid url"),
            ({"data": {"url": "https://example.com/" + "x" * 3000}}, 400, "longer than 2048"),
            ({"data": {"url": ok, "code": ""}}, 400, "Bad code: the code is empty"),
            ({"data": {"url": ok, "code": "x" * 65}}, 400, "Bad code: the code is longer than 64"),
            ({"data": {"url": ok, "code": "a/b"}}, 400, "Bad code: the code may only hold"),
            ({"data": {"url": ok, "code": "héllo"}}, 400, "Bad code: the code may only hold"),
            ({"data": {"url": ok, "code": "a b"}}, 400, "Bad code: the code may only hold"),
            ({"json": {"url": ok}}, 415, "Unsupported Media Type"),
            (
                {
                    "data": b"url=" + b"x" * 10_000,
                    "headers": {"content-type": "application/x-www-form-urlencoded"},
                },
                413,
                "Request body too large",
            ),
            (
                {"data": b"url=%ff%fe", "headers": {"content-type": "application/x-www-form-urlencoded"}},
                400,
                "Malformed form body",
            ),
        ]
        for kwargs, status, reason in cases:
            async with http.post(base, allow_redirects=False, **kwargs) as r:
                body = await r.text()
                assert (r.status, reason in body) == (status, True), (kwargs, r.status, body)
        # "Anything else: 404".
        for method, path in [("GET", ""), ("PUT", "abc"), ("DELETE", "abc"), ("PATCH", ""), ("POST", "abc"),
                             ("GET", "abc/def"), ("GET", "abc/aggregates/x"), ("HEAD", "abc")]:  # fmt: skip
            async with http.request(method, base + path, allow_redirects=False) as r:
                assert r.status == 404, (method, path)
                if method != "HEAD":
                    assert await r.text() == "Not Found"
        # Codes that cannot exist are not looked up; unknown ones are not found.
        for code in ["x" * 65, "h%C3%A9", "a.b", "unknown"]:
            assert await get(http, base + code) == (404, "Not Found", None)
            assert await get(http, f"{base}{code}/aggregates") == (404, "Not Found", None)
        assert stored_links(redis_server) == before
        # ... and the node still serves.
        assert (await post(http, base, url=ok))[0] == 201
        # A code that is taken: 422, and the first link stays.
        assert await post(http, base, url="https://example.com/other", code=margarine.short_code(ok)) == (
            422, "Unable to shorten https://example.com/other", None)  # fmt: skip
        assert (await get(http, base + margarine.short_code(ok)))[2] == ok


async def test_paths_and_expect_are_read_as_aiohttp_s_router_read_them(
    cluster: Any, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    """The server dispatches its routes itself (web.py): what an Application did, it does."""
    async with cluster(1) as c:
        (base,) = await start_margarine(c, redis_server)
        url = "https://example.com/" + "long/" * 300  # a body over 1 KiB: curl would send Expect
        async with http.post(base, data={"url": url}, expect100=True) as r:
            assert (r.status, await r.text()) == (201, margarine.short_code(url))
        code = margarine.short_code(url)
        assert (await get(http, base + code))[0] == 302
        assert await get(http, f"{base}{code}/aggregates") == (200, "Redirects: 1", None)
        assert await get(http, f"{base}{code}?utm=x") == (302, url, url)  # the query is not the path
        for path in [f"{code}%2Faggregates", f"{code}/aggregates/", "/aggregates", f"/{code}", f"{code}/"]:
            assert await get(http, base + path) == (404, "Not Found", None), path
        async with http.post(base, data={"url": url}, headers={"Expect": "200-ok"}) as r:
            assert (r.status, await r.text()) == (417, "Unknown Expect: 200-ok")


@pytest.mark.parametrize("cache", ["none", "replicated", "sharded"])
async def test_redis_gone_gives_503_and_the_node_recovers(
    cluster: Any, http: aiohttp.ClientSession, cache: str
) -> None:
    with RedisServer.start() as server:
        async with cluster(1) as c:
            (base,) = await start_margarine(c, server, cache)
            status, code, _ = await post(http, base, url="https://example.com/before")
            assert status == 201
            server.stop()
            status, body, _ = await post(http, base, url="https://example.com/during")
            assert (status, body.startswith("Service Unavailable: the link store (Redis)")) == (503, True)
            status, body, _ = await get(http, base + "notcached")
            assert (status, body.startswith("Service Unavailable")) == (503, True)
            if cache != "none":  # a cached link still redirects
                assert (await get(http, base + code))[0] == 302
            server.restart()  # an empty Redis on the same port
            assert await post(http, base, url="https://example.com/after") == (
                201, margarine.short_code("https://example.com/after"),
                base + margarine.short_code("https://example.com/after"))  # fmt: skip
            assert (await get(http, base + margarine.short_code("https://example.com/after")))[0] == 302


# -- Part 4: the aggregates beyond the scenario ------------------------------------------------


async def test_counts_survive_a_restart_from_what_each_node_persisted(
    cluster: Any, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        (u1,) = await start_margarine(c, redis_server)
        _, code, _ = await post(http, u1, url="https://example.com/survives")
        for _ in range(3):
            assert (await get(http, u1 + code))[0] == 302

        def persisted() -> dict[str, str]:
            with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
                return client.hgetall(f"margarine:aggregates:{code}")  # type: ignore[no-any-return]

        await eventually(lambda: persisted() == {n1: "3"}, what="node 1 persisted its entry")
        await c.stop_node(n1)
        # Alone in a new cluster: no peer can tell it; Redis does.
        n2 = await c.start_node()
        u2 = await rpc.call(n2, margarine.start, free_port(), redis_server.url, "replicated")
        assert await redirects(http, u2, code) == "Redirects: 3"
        assert (await get(http, u2 + code))[0] == 302
        assert await redirects(http, u2, code) == "Redirects: 4"
        await eventually(lambda: persisted() == {n1: "3", n2: "1"}, what="node 2 persisted its entry")


@pytest.mark.parametrize("batch", [0.2, None])
async def test_batching_sends_fewer_messages_than_redirects(
    cluster: Any, redis_server: RedisServer, http: aiohttp.ClientSession, batch: float | None
) -> None:
    async with cluster(2) as c:
        n1, n2 = c.nodes
        u1, u2 = [
            await rpc.call(n, margarine.start, free_port(), redis_server.url, "replicated", batch)
            for n in c.nodes
        ]
        _, code, _ = await post(http, u1, url=f"https://example.com/batch/{batch}")
        assert (await get(http, u2 + code))[0] == 302  # so that node 2 knows the code
        await eventually(lambda: _count_is(http, u1, code, 1), what="node 1 counted node 2's redirect")
        sent_before = (await rpc.call(n1, margarine.stats))["sent"]
        hits = 100
        statuses = await asyncio.gather(*(get(http, u1 + code) for _ in range(hits)))
        assert {s for s, _, _ in statuses} == {302}
        await eventually(lambda: _count_is(http, u2, code, hits + 1), what="node 2 counted every redirect")
        sent = (await rpc.call(n1, margarine.stats))["sent"] - sent_before
        if batch is None:
            assert sent == hits  # one message per redirect to the one peer
        else:
            assert 1 <= sent <= hits // 2, sent
        assert (await rpc.call(n2, margarine.stats))["received"] >= sent


async def _count_is(http: aiohttp.ClientSession, base: str, code: str, n: int) -> bool:
    return await redirects(http, base, code) == f"Redirects: {n}"


async def test_counts_converge_after_random_partitions_and_a_heal(
    cluster: Any, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    rnd = random.Random(10)
    async with cluster(3) as c:
        nodes = c.nodes
        urls = await start_margarine(c, redis_server)
        _, code, _ = await post(http, urls[0], url="https://example.com/random-partitions")
        await eventually(lambda: all_cached(nodes, code), what="every node knows the code")
        total = 0
        for _ in range(4):
            await heal(nodes)
            cut = rnd.sample(nodes, rnd.choice([1, 2]))
            await partition(cut)
            for _ in range(rnd.randint(1, 6)):
                assert (await get(http, rnd.choice(urls) + code))[0] == 302
                total += 1
        await heal(nodes)
        await eventually(
            lambda: all_counts(http, urls, code, total), timeout=10, what=f"every node says {total}"
        )


async def all_cached(nodes: list[str], code: str) -> bool:
    return all([await rpc.call(n, cached_here, code) for n in nodes])


async def all_counts(http: aiohttp.ClientSession, urls: list[str], code: str, n: int) -> bool:
    return all([await _count_is(http, u, code, n) for u in urls])


def is_serving() -> bool:
    """On a node (by rpc): whether margarine runs there."""
    return margarine.app.running is not None


async def test_stop_closes_the_port_and_margarine_can_start_again(
    cluster: Any, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        port = free_port()
        base = await rpc.call(n1, margarine.start, port, redis_server.url)
        _, code, _ = await post(http, base, url="https://example.com/stop-start")
        await rpc.call(n1, margarine.stop)
        assert not await rpc.call(n1, is_serving)
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(http, base + code)
        assert await rpc.call(n1, margarine.start, port, redis_server.url, "sharded") == base
        assert (await get(http, base + code))[0] == 302
        assert await redirects(http, base, code) == "Redirects: 1"

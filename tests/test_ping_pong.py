"""Part 1 of the training, Ping Pong: the original test scenarios."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import pybeam
from examples.ping_pong import expected_value, produce, start_consumer, start_producer
from examples.ping_pong.watchers import disconnect_from, start_watchers
from pybeam import ANY, Pid, receive, rpc, send
from pybeam.testing import eventually, heal, partition


async def test_local_consumer_checks_the_values_it_receives(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ping_pong")
    consumer = start_consumer(pybeam.self())
    assert await receive(("hello", Pid), timeout=5) == ("hello", consumer)

    async def ping(n: int) -> list[str]:
        caplog.clear()
        send(consumer, ("ping", n))
        # The consumer answers in order, so once it has answered it has logged.
        await expected_value(consumer)
        return [r.getMessage() for r in caplog.records if r.name == "ping_pong"]

    for n in (0, 1, 2):
        assert await ping(n) == [f"Received expected value: {n}"]
    assert await ping(4) == ["Received unexpected value: 4"]
    assert await ping(5) == ["Received expected value: 5"]
    assert await expected_value(consumer) == 6
    assert pybeam.whereis("consumer") == consumer


# -- two nodes ------------------------------------------------------------------


async def test_partition_loses_pings_and_the_consumer_resyncs_after_heal(cluster: Any) -> None:
    async with cluster(2) as c:
        n1, n2 = c.nodes
        me = pybeam.self()
        producer = await rpc.call(n1, start_producer, me)
        consumer = await rpc.call(n2, start_consumer, producer)
        assert await receive(("starting", Pid), timeout=10) == ("starting", producer)
        assert await expected_value(consumer) == 0
        await produce(producer)
        await eventually_expects(consumer, 1)
        await produce(producer)
        await eventually_expects(consumer, 2)

        await partition([n2])
        for _ in range(4):
            await produce(producer)
        # Give lost pings every chance to show up: they must not.
        await asyncio.sleep(0.3)
        assert await expected_value(consumer) == 2

        await heal([n2])
        await produce(producer)
        await eventually_expects(consumer, 7)


async def eventually_expects(consumer: Pid, value: int) -> None:
    # The ping (producer -> consumer) and our question (test -> consumer) take
    # different paths, so the answer may lag the ping by a moment.
    async def expects() -> bool:
        return await expected_value(consumer) == value

    await eventually(expects, what=f"the consumer expects {value}")


WATCHERS = 5_000


@pytest.mark.parametrize("failure", ["disconnect", "kill"])
async def test_thousands_of_monitors_all_learn_the_producer_node_is_gone(cluster: Any, failure: str) -> None:
    async with cluster(2) as c:
        n1, n2 = c.nodes
        producer = await rpc.call(n2, start_producer, pybeam.self())
        await rpc.call(n1, start_watchers, producer, WATCHERS, pybeam.self())
        assert await receive(("watching", ANY), timeout=60) == ("watching", WATCHERS)
        if failure == "disconnect":
            await rpc.call(n1, disconnect_from, n2)
        else:
            c.kill(n2)
        _, _, reasons = await receive(("all_down", ANY, ANY), timeout=60)
        assert reasons == {"noconnection": WATCHERS}

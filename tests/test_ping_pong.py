"""Part 1 of the training, Ping Pong: the original test scenarios."""

from __future__ import annotations

import logging

import pytest

import pybeam
from examples.ping_pong import expected_value, start_consumer
from pybeam import Pid, receive, send


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

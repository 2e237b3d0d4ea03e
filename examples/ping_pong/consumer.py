"""The consumer: registered as "consumer", it checks that each ping carries the
number it expected next."""

from __future__ import annotations

import logging
from typing import Any

import pybeam
from pybeam import Pid, receive, send

logger = logging.getLogger("ping_pong")


async def consumer(producer: Pid) -> None:
    """The consumer process: say hello to the producer, then check every ping."""
    pybeam.register("consumer")
    send(producer, ("hello", pybeam.self()))
    expected = 0
    while True:
        match await receive():
            case ("ping", n):
                if n == expected:
                    logger.info("Received expected value: %d", n)
                else:
                    # Pings were lost (or duplicated): take the producer's count.
                    logger.info("Received unexpected value: %d", n)
                expected = n + 1
            case ("expected_value", asker):
                send(asker, ("value", expected))
            case "bye":
                return


def start_consumer(producer: Pid) -> Pid:
    """Start a consumer of ``producer``. Module-level, so another node can call it by rpc."""
    return pybeam.spawn(consumer, producer)


async def expected_value(consumer: Any, timeout: float = 5.0) -> int:
    """The number ``consumer`` (a pid, a name or (name, node)) expects next."""
    send(consumer, ("expected_value", pybeam.self()))
    _, value = await receive(("value", int), timeout=timeout)
    return int(value)

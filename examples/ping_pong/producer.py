"""The producer: registered as "producer", it sends ("ping", n) to its consumer
each time it is asked to produce."""

from __future__ import annotations

import logging
from typing import Any

import pybeam
from pybeam import Pid, receive, send

logger = logging.getLogger("ping_pong")


async def producer(caller: Pid) -> None:
    """The producer process: wait for a consumer's hello, then produce on demand."""
    pybeam.register("producer")
    # Until a consumer says hello there is nobody to produce for.
    match await receive(("hello", Pid)):
        case ("hello", consumer):
            send(caller, ("starting", pybeam.self()))
    n = 0
    while True:
        match await receive():
            case ("produce", asker):
                logger.info("Producing: %d", n)
                send(consumer, ("ping", n))
                send(asker, "finished")
                n += 1
            case "stop":
                send(consumer, "bye")
                return
            case "crash":
                n = n // 0  # fails as the original does: divide by zero


def start_producer(caller: Pid) -> Pid:
    """Start a producer that reports ("starting", pid) to ``caller`` once a
    consumer has said hello. Module-level, so another node can call it by rpc."""
    return pybeam.spawn(producer, caller)


async def produce(producer: Any, timeout: float = 5.0) -> None:
    """Ask ``producer`` (a pid or a name) to send its next ping; wait until it did."""
    send(producer, ("produce", pybeam.self()))
    await receive("finished", timeout=timeout)


def stop(producer: Any) -> None:
    """Tell the producer to say bye to its consumer and stop."""
    send(producer, "stop")


def crash(producer: Any) -> None:
    """Make the producer fail (ZeroDivisionError)."""
    send(producer, "crash")

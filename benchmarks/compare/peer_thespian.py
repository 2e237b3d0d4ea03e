"""Thespian with its ``simpleSystemBase`` (one thread, its fastest base):
local workloads only. Its multi-process TCP bases route messages through an
admin process; they are not wired into this comparison (n/a across nodes),
and Thespian has no monitors of other actors (fan-out n/a)."""

from __future__ import annotations

import gc
import time
from typing import Any

from thespian.actors import Actor, ActorExitRequest, ActorSystem

from .child import rss


class _Counter(Actor):
    def receiveMessage(self, message: Any, sender: Any) -> None:
        if message == "count?":
            self.send(sender, getattr(self, "n", 0))
        elif not isinstance(message, ActorExitRequest):
            self.n = getattr(self, "n", 0) + 1


class _Echo(Actor):
    def receiveMessage(self, message: Any, sender: Any) -> None:
        if not isinstance(message, ActorExitRequest):
            self.send(sender, message)


class _Noop(Actor):
    def receiveMessage(self, message: Any, sender: Any) -> None:
        pass


def run(workload: str, n: int) -> list[float]:
    """The workload's figures."""
    system = ActorSystem("simpleSystemBase")
    try:
        if workload == "one_way":
            counter = system.createActor(_Counter)
            t0 = time.perf_counter()
            for i in range(n):
                system.tell(counter, i)
            assert system.ask(counter, "count?", 60) == n
            return [n / (time.perf_counter() - t0)]
        if workload == "ping_pong":
            echo = system.createActor(_Echo)
            t0 = time.perf_counter()
            for i in range(n):
                system.ask(echo, i, 10)
            return [n / (time.perf_counter() - t0)]
        if workload == "spawn_exit":
            t0 = time.perf_counter()
            for _ in range(n):
                system.tell(system.createActor(_Noop), ActorExitRequest())
            return [n / (time.perf_counter() - t0)]
        if workload == "memory":
            gc.collect()
            before = rss()
            actors = [system.createActor(_Noop) for _ in range(n)]
            gc.collect()
            per = (rss() - before) / n
            del actors
            return [per]
        raise ValueError(workload)
    finally:
        system.shutdown()

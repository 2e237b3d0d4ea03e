"""Pykka (thread-based actors): local workloads only, it has no remoting and
no monitors. Request/response is ``ask``, as a Pykka user writes it."""

from __future__ import annotations

import gc
import time
from typing import Any

import pykka

from .child import rss


class _Counter(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def on_receive(self, message: Any) -> Any:
        if message == "count?":
            return self.n
        self.n += 1
        return None


class _Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


class _Noop(pykka.ThreadingActor):
    pass


def run(workload: str, n: int) -> list[float]:
    """The workload's figures."""
    try:
        if workload == "one_way":
            ref = _Counter.start()
            t0 = time.perf_counter()
            for i in range(n):
                ref.tell(i)
            # Messages are handled in order: the answer comes after all n.
            assert ref.ask("count?") == n
            return [n / (time.perf_counter() - t0)]
        if workload == "ping_pong":
            echo = _Echo.start()
            t0 = time.perf_counter()
            for i in range(n):
                echo.ask(i)
            return [n / (time.perf_counter() - t0)]
        if workload == "spawn_exit":
            t0 = time.perf_counter()
            for _ in range(n):
                _Noop.start().stop(block=False)
            # The last ones may still be stopping: wait for every thread.
            pykka.ActorRegistry.stop_all(block=True)
            return [n / (time.perf_counter() - t0)]
        if workload == "memory":
            gc.collect()
            before = rss()
            refs = [_Noop.start() for _ in range(n)]
            gc.collect()
            per = (rss() - before) / n
            del refs
            return [per]
        raise ValueError(workload)
    finally:
        pykka.ActorRegistry.stop_all(block=True)

"""The extra exercise: thousands of consumers watching one producer.

A collector on one node starts ``count`` watchers, each monitoring the same
producer on another node. When that node is disconnected or dies, each
watcher gets its DOWN; the collector reports when the last one did, and why.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pybeam
from pybeam import ANY, Pid, receive, send


async def watcher(producer: Pid, collector: Pid) -> None:
    """Monitor ``producer``; tell ``collector`` when watching, and when it went down."""
    ref = pybeam.monitor(producer)
    send(collector, "watching")
    _, _, _, _, reason = await receive(("DOWN", ref, "process", ANY, ANY))
    send(collector, ("down", reason))


async def collector(producer: Pid, count: int, report_to: Pid) -> None:
    """Start the watchers, then report ("all_down", monotonic time, {reason: count})."""
    me = pybeam.self()
    for _ in range(count):
        pybeam.spawn(watcher, producer, me)
    for _ in range(count):
        await receive("watching")
    send(report_to, ("watching", count))
    reasons: Counter[Any] = Counter()
    for _ in range(count):
        _, reason = await receive(("down", ANY))
        reasons[reason] += 1
    # time.monotonic is one clock for every process of a machine, so the
    # caller on another node can subtract its own reading from this one.
    send(report_to, ("all_down", time.monotonic(), dict(reasons)))


def start_watchers(producer: Pid, count: int, report_to: Pid) -> Pid:
    """Start a collector and its ``count`` watchers of ``producer`` (call it by rpc)."""
    return pybeam.spawn(collector, producer, count, report_to)


def disconnect_from(node: str) -> float:
    """Disconnect this node from ``node``; returns the monotonic time it did."""
    t0 = time.monotonic()
    pybeam.disconnect(node)
    return t0

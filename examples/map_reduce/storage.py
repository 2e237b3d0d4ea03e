"""Where a job's data lives in Redis, and how it is laid out.

Every key is derived from the job's name, the *run* (one attempt of the
master at the whole job, see master.py) and the ids of the map and reduce
jobs, so that:

- doing a job twice writes the same keys with the same values: harmless
  (idempotent), which is what lets the master hand a job to a second worker
  whenever it is unsure about the first;
- nothing of an earlier run, or of another job, can be mistaken for this one's.

==================================  =======================================
``mr:{job}:{run}:chunk:{m}``         the input of map job m (whole lines, bytes)
``mr:{job}:{run}:map:{m}:{r}``       map job m's pairs that go to reduce job r
``mr:{job}:{run}:reduce:{r}``        reduce job r's result pairs
``mr:{job}:worker:{worker_id}``      how many jobs that worker finished (INCR)
==================================  =======================================

Pairs are stored as msgpack lists of ``[key, value]``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any, AnyStr

import msgpack
import redis.asyncio as aioredis

__all__ = [
    "InvalidInput",
    "MissingData",
    "chunk_key",
    "cleanup",
    "connect",
    "counter_key",
    "decode_pairs",
    "encode_pairs",
    "group_by_partition",
    "map_key",
    "partition",
    "reduce_key",
    "split_lines",
]


class MissingData(Exception):
    """A key that should be in Redis is not (Redis restarted, or was flushed)."""


class InvalidInput(Exception):
    """A chunk is not UTF-8 text: ``reason`` (the codec's) at byte ``start`` of the chunk."""

    def __init__(self, reason: str, start: int) -> None:
        super().__init__(f"{reason} at byte {start}")
        self.reason = reason
        self.start = start


def chunk_key(job: str, run: str, m: int) -> str:
    return f"mr:{job}:{run}:chunk:{m}"


def map_key(job: str, run: str, m: int, r: int) -> str:
    return f"mr:{job}:{run}:map:{m}:{r}"


def reduce_key(job: str, run: str, r: int) -> str:
    return f"mr:{job}:{run}:reduce:{r}"


def counter_key(job: str, worker_id: str) -> str:
    return f"mr:{job}:worker:{worker_id}"


def partition(key: Any, reduce_count: int) -> int:
    """The reduce job that gets ``key``.

    Not ``hash(key)``: Python randomises string hashes per process, so two
    workers on two nodes would send one word to two different reduce jobs, and
    the result would count it twice, each time partly.
    """
    data = key.encode() if isinstance(key, str) else msgpack.packb(key)
    return zlib.crc32(data) % reduce_count


def group_by_partition(pairs: Iterable[tuple[Any, Any]], reduce_count: int) -> list[list[tuple[Any, Any]]]:
    """``pairs`` in ``reduce_count`` groups, group ``r`` holding those whose key
    :func:`partition` gives to reduce job ``r``."""
    groups: list[list[tuple[Any, Any]]] = [[] for _ in range(reduce_count)]
    appends = [group.append for group in groups]
    crc32 = zlib.crc32
    for pair in pairs:
        key = pair[0]
        # partition() inlined for str keys: a map job may emit tens of
        # thousands of pairs, and a call each cost a third of the time.
        appends[crc32(key.encode()) % reduce_count if type(key) is str else partition(key, reduce_count)](
            pair
        )
    return groups


def encode_pairs(pairs: list[tuple[Any, Any]]) -> bytes:
    data: bytes = msgpack.packb(pairs)
    return data


def decode_pairs(data: bytes | str) -> list[list[Any]]:
    pairs: list[list[Any]] = msgpack.unpackb(data, strict_map_key=False)
    return pairs


def split_lines(text: AnyStr, count: int) -> list[AnyStr]:
    """``text`` (``str`` or UTF-8 ``bytes``) cut into ``count`` chunks of whole
    lines, about equal in size.

    Each cut is just after a ``"\n"``, which ends a line whatever else does
    (``"\r\n"`` stays whole), so no line, and no word, straddles two chunks.
    In UTF-8 the byte ``b"\n"`` is never part of another character, so cutting
    the bytes is cutting the text.
    """
    newline: Any = "\n" if isinstance(text, str) else b"\n"
    chunks = []
    start = 0
    for i in range(1, count):
        end = text.find(newline, max(start, i * len(text) // count))
        end = len(text) if end < 0 else end + 1
        chunks.append(text[start:end])
        start = end
    chunks.append(text[start:])
    return chunks


def connect(url: str) -> aioredis.Redis:
    """A client for ``url``; raises ValueError for a URL that is not a Redis URL."""
    return aioredis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=10.0)


async def cleanup(url: str, job: str) -> int:
    """Delete every key of ``job`` (all runs, the counters too); returns how many."""
    client = connect(url)
    try:
        deleted = 0
        batch: list[Any] = []
        async for key in client.scan_iter(match=f"mr:{job}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await client.unlink(*batch)
                batch = []
        if batch:
            deleted += await client.unlink(*batch)
        return deleted
    finally:
        await client.aclose()

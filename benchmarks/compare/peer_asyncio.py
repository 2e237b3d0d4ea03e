"""The bare-asyncio floor, under uvloop as pybeam runs: an ``asyncio.Queue`` per
mailbox for local messaging, tasks for processes, and framed msgpack (a 4-byte
length, then the msgpack bytes) over asyncio TCP to a server in another OS
process for the network. No monitors: failure fan-out is n/a."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from collections import deque
from struct import Struct
from typing import Any, cast

import msgpack

import pybeam

from .child import rss

_LEN = Struct(">I")
_pack = msgpack.Packer().pack
_unpackb = msgpack.unpackb


def frame(obj: Any) -> bytes:
    """One frame: a 4-byte big-endian length, then the msgpack bytes."""
    body: bytes = _pack(obj)
    return _LEN.pack(len(body)) + body


class FrameProtocol(asyncio.Protocol):
    """Frames in, one call of :meth:`received` each."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, end = 0, len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= 4:
                (size,) = _LEN.unpack_from(buf, pos)
                if end - pos - 4 < size:
                    break
                self.received(_unpackb(view[pos + 4 : pos + 4 + size]))
                pos += 4 + size
        finally:
            view.release()
        del buf[:pos]

    def received(self, msg: Any) -> None:
        raise NotImplementedError


# -- local ------------------------------------------------------------------


async def one_way(n: int) -> float:
    q: asyncio.Queue[Any] = asyncio.Queue()
    done = asyncio.get_running_loop().create_future()

    async def sink() -> None:
        for _ in range(n):
            await q.get()
        done.set_result(None)

    task = asyncio.create_task(sink())
    t0 = time.perf_counter()
    for i in range(n):
        q.put_nowait(i)
        if i & 1023 == 1023:
            await asyncio.sleep(0)
    await done
    await task
    return n / (time.perf_counter() - t0)


async def ping_pong(n: int) -> float:
    to_ponger: asyncio.Queue[Any] = asyncio.Queue()
    to_me: asyncio.Queue[Any] = asyncio.Queue()

    async def ponger() -> None:
        while True:
            msg = await to_ponger.get()
            if msg is None:
                return
            to_me.put_nowait(msg)

    task = asyncio.create_task(ponger())
    t0 = time.perf_counter()
    for i in range(n):
        to_ponger.put_nowait(i)
        await to_me.get()
    dt = time.perf_counter() - t0
    to_ponger.put_nowait(None)
    await task
    return n / dt


async def _noop() -> None:
    return None


async def spawn_exit(n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n - 1):
        # The loop's ready queue holds a new task until its one step has run:
        # the floor keeps no other reference, which would cost it time.
        asyncio.create_task(_noop())  # noqa: RUF006
        if i & 1023 == 1023:
            await asyncio.sleep(0)
    await asyncio.create_task(_noop())  # tasks run in creation order
    return n / (time.perf_counter() - t0)


async def memory(n: int) -> float:
    # An idle "process": a task waiting on its own queue.
    async def idle(q: asyncio.Queue[Any]) -> None:
        await q.get()

    gc.collect()
    before = rss()
    tasks = [asyncio.create_task(idle(asyncio.Queue())) for _ in range(n)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gc.collect()
    per = (rss() - before) / n
    for t in tasks:
        t.cancel()
    return per


# -- network ----------------------------------------------------------------


class Client(FrameProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.replies: deque[asyncio.Future[Any]] = deque()

    def received(self, msg: Any) -> None:
        self.replies.popleft().set_result(msg)

    def request(self, msg: Any) -> asyncio.Future[Any]:
        fut = asyncio.get_running_loop().create_future()
        self.replies.append(fut)
        assert self.transport is not None
        self.transport.write(frame(msg))
        return fut


async def _cross(workload: str, n: int) -> list[float]:
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.compare.floor_server"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_connection(Client, "127.0.0.1", port)
        try:
            return await _measure(workload, client, n)
        finally:
            transport.close()
    finally:
        server.kill()
        server.wait()


async def _measure(workload: str, client: Client, n: int) -> list[float]:
    assert client.transport is not None
    write = client.transport.write
    if workload == "cross_one_way":
        done = client.request(["count", n])
        t0 = time.perf_counter()
        # Frames queued during one iteration leave together, as a node batches them.
        batch = []
        for i in range(n):
            batch.append(frame(["msg", i]))
            if i & 1023 == 1023:
                write(b"".join(batch))
                batch.clear()
                await asyncio.sleep(0)
        write(b"".join(batch))
        await done
        return [n / (time.perf_counter() - t0)]
    if workload == "cross_rtt":
        for _ in range(10):
            await client.request(["ping", 0])
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            await client.request(["ping", i])
            times.append(time.perf_counter() - t0)
        times.sort()
        return [times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6]
    if workload == "rpc":
        t0 = time.perf_counter()
        for i in range(n):
            assert await client.request(["call", "add", [i, 1]]) == i + 1
        return [n / (time.perf_counter() - t0)]
    raise ValueError(workload)


async def _main(workload: str, n: int) -> list[float]:
    local = {"one_way": one_way, "ping_pong": ping_pong, "spawn_exit": spawn_exit, "memory": memory}
    if workload in local:
        return [await local[workload](n)]
    return await _cross(workload, n)


async def _scale(n: int, live: list[int]) -> list[float]:
    async def idle(q: asyncio.Queue[Any]) -> None:
        await q.get()

    tasks: list[asyncio.Task[None]] = []
    out = []
    for level in live:
        while len(tasks) < level:
            tasks.append(asyncio.create_task(idle(asyncio.Queue())))
            if len(tasks) & 1023 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        out.append(await spawn_exit(n))
    for t in tasks:
        t.cancel()
    return out


def run_scale(n: int, live: list[int]) -> list[float]:
    """Task create-and-finish rate of ``n`` tasks with each number of idle ones alive."""
    with asyncio.Runner(loop_factory=pybeam.new_event_loop) as runner:
        return runner.run(_scale(n, live))


def run(workload: str, n: int) -> list[float]:
    """The workload's figures, on the event loop pybeam uses (uvloop where installed)."""
    with asyncio.Runner(loop_factory=pybeam.new_event_loop) as runner:
        return runner.run(_main(workload, n))

"""Distribution transport benchmarks: TLS beside plaintext, and backpressure.

``python -m benchmarks.transport`` (or ``python -m benchmarks transport``). Each
figure is measured in the same run as the one it is compared with:

- one-way throughput and round trip (p50) to a peer node over plaintext TCP and
  over TLS (mutual authentication; certificates made with the openssl CLI);
- 2M messages from one process to a frozen (SIGSTOP) peer: the sender's RSS
  growth with the default busy limit (1 MB) and with backpressure off
  (limits of 1 TiB), then the same 2M delivered once the peer thaws;
- one-way throughput to a healthy peer with the default busy limit and with
  backpressure off: their ratio.

The peer is ``python -m pybeam node`` in another OS process, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pybeam
from pybeam import receive, send
from pybeam.distribution.tls import TLSOptions
from pybeam.testing import certs, free_port

from .dist import one_way, ponger, round_trips, sink

ONE_WAY = 200_000
ROUND_TRIPS = 3_000
FROZEN_MESSAGES = 2_000_000
#: Limits that turn backpressure off, for comparison.
OFF = 1 << 40


def _rss() -> int:
    """This process's resident set size, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _start_peer(name: str, cookie: str, epmd_port: int, tls: TLSOptions | None) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "pybeam", "node", "--name", name, "--cookie", cookie]
    argv += ["--epmd-port", str(epmd_port), "--exit-on-stdin-close"]
    if tls is not None:
        argv += ["--tls-cert", tls.cert, "--tls-key", tls.key, "--tls-ca", tls.ca]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if " up " not in line:
        raise RuntimeError(f"the peer node did not start: {line}{proc.stdout.read()}")
    return proc


@asynccontextmanager
async def _pair(
    tls: tuple[TLSOptions, TLSOptions] | None = None, **options: Any
) -> AsyncIterator[tuple[str, subprocess.Popen[str]]]:
    """A node here (``options``) connected to a peer node in another process."""
    cookie, port, tag = secrets.token_hex(8), free_port(), secrets.token_hex(3)
    mine = tls[0] if tls else None
    async with pybeam.Node(f"bench{tag}@127.0.0.1", cookie=cookie, epmd_port=port, tls=mine, **options):
        peer = f"peer{tag}@127.0.0.1"
        # In a thread: this node's loop serves the peer's port mapper requests meanwhile.
        proc = await asyncio.to_thread(_start_peer, peer, cookie, port, tls[1] if tls else None)
        try:
            if not await pybeam.connect(peer):
                raise RuntimeError(f"cannot connect to {peer}")
            yield peer, proc
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)


async def _throughput_and_rtt(peer: str) -> tuple[float, float]:
    sink_pid = await pybeam.spawn_on(peer, sink)
    pong_pid = await pybeam.spawn_on(peer, ponger)
    rate = await one_way(sink_pid, ONE_WAY)
    p50, _ = await round_trips(pong_pid, ROUND_TRIPS)
    return rate, p50


async def _frozen(limit: int) -> tuple[float, float]:
    """(RSS growth in MB while the peer is frozen, seconds to deliver everything after it thaws)."""
    async with _pair(busy_limit=limit, hard_limit=max(limit, 128 << 20)) as (peer, proc):
        sink_pid = await pybeam.spawn_on(peer, sink)
        me = pybeam.self()
        send(sink_pid, ("count", FROZEN_MESSAGES, me))
        await pybeam.rpc.call(peer, "operator:add", 1, 1)  # everything so far has arrived
        base = peak = _rss()
        os.kill(proc.pid, signal.SIGSTOP)
        progress = [0]

        async def sender() -> None:
            for i in range(FROZEN_MESSAGES):
                send(sink_pid, ("msg", i))
                if i & 1023 == 1023:
                    progress[0] = i
                    await receive(timeout=0, default=None)  # a pybeam await point: where it is suspended

        pybeam.spawn(sender)
        # Frozen for 5 s, or until the sender is done (backpressure off: it never waits).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and progress[0] < FROZEN_MESSAGES - 1024:
            await asyncio.sleep(0.02)
            peak = max(peak, _rss())
        await asyncio.sleep(0.2)
        peak = max(peak, _rss())
        os.kill(proc.pid, signal.SIGCONT)
        t0 = time.perf_counter()
        await receive("done", timeout=120)
        return (peak - base) / 1e6, time.perf_counter() - t0


async def _healthy(limit: int) -> float:
    async with _pair(busy_limit=limit, hard_limit=max(limit, 128 << 20)) as (peer, _):
        sink_pid = await pybeam.spawn_on(peer, sink)
        return await one_way(sink_pid, ONE_WAY)


async def main() -> list[tuple[str, float, str, float]]:
    """Rows of (name, figure, unit, target)."""
    rows: list[tuple[str, float, str, float]] = []
    if certs.unavailable() is None:
        with tempfile.TemporaryDirectory() as d:
            ca = certs.make_ca(Path(d), "ca")
            pair = (
                certs.make_cert(ca, Path(d), "a", ["127.0.0.1"]),
                certs.make_cert(ca, Path(d), "b", ["127.0.0.1"]),
            )
            async with _pair() as (peer, _):
                plain_rate, plain_p50 = await _throughput_and_rtt(peer)
            async with _pair(pair) as (peer, _):
                tls_rate, tls_p50 = await _throughput_and_rtt(peer)
        rows.append(("one-way, plaintext", plain_rate, "msgs/s", 0.0))
        rows.append(("one-way, TLS", tls_rate, "msgs/s", 0.0))
        rows.append(("round trip p50, plaintext", plain_p50, "us", 0.0))
        rows.append(("round trip p50, TLS", tls_p50, "us", 0.0))
    grown_on, thaw_on = await _frozen(1024 * 1024)
    grown_off, thaw_off = await _frozen(OFF)
    rows.append(("2M to frozen: RSS growth, busy 1MB", grown_on, "MB", 5.0))
    rows.append(("2M to frozen: RSS growth, off", grown_off, "MB", 0.0))
    rows.append(("2M to frozen: delivered after thaw, busy 1MB", thaw_on, "s", 0.0))
    rows.append(("2M to frozen: delivered after thaw, off", thaw_off, "s", 0.0))
    on, off = await _healthy(1024 * 1024), await _healthy(OFF)
    rows.append(("one-way healthy, busy 1MB", on, "msgs/s", 0.0))
    rows.append(("one-way healthy, off", off, "msgs/s", 0.0))
    rows.append(("  ratio busy/off", on / off, "x", 0.95))
    return rows


if __name__ == "__main__":
    for name, value, unit, target in pybeam.run(main):
        print(f"{name:45} {value:>14,.2f} {unit:8} {target:>10,.2f}")

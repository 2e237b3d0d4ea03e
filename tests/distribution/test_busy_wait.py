"""Busy waiting after traffic (erl's ``+sbwt``): the loop keeps polling for a
threshold after each read or write on a connection, then sleeps again.

Behaviour, not timing: whether the loop polls (its spin count grows while
nothing else runs), that it stops on its own, that heartbeats alone do not
start it, and that the option reaches a node from ``Node(...)``, the
environment and ``pybeam node``. What it buys in latency is measured by
``python -m benchmarks compare`` (cross-node round trip and rpc).
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import subprocess
import sys
from typing import Any

import pytest

import pybeam
from pybeam import net, rpc
from pybeam.distribution.busy_wait import (
    BACKOFF,
    CROWDED_BACKOFF,
    DEFAULT_BUSY_WAIT,
    LEVELS,
    BusyWait,
    RunQueue,
    busy_wait_from_env,
    parse_busy_wait,
)
from pybeam.distribution.net_kernel import DistOptions
from pybeam.testing import LocalCluster, eventually, free_port


def test_levels_are_beams_names_in_increasing_order() -> None:
    assert list(LEVELS) == ["none", "very_short", "short", "medium", "long", "very_long"]
    values = list(LEVELS.values())
    assert values == sorted(values) and values[0] == 0.0
    assert LEVELS["medium"] == DEFAULT_BUSY_WAIT  # as erl's +sbwt


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("none", 0.0),
        ("Medium", LEVELS["medium"]),
        (" long ", LEVELS["long"]),
        ("0.0005", 0.0005),
        (0, 0.0),
        (0.25, 0.25),
    ],
)
def test_parse_takes_seconds_and_level_names(given: Any, seconds: float) -> None:
    assert parse_busy_wait(given) == seconds


@pytest.mark.parametrize(
    "bad", ["soon", "", "-0.001", "nan", "inf", "2", -1, 1.5, float("nan"), True, None, [1]]
)
def test_parse_refuses_anything_else_clearly(bad: Any) -> None:
    with pytest.raises(ValueError, match="busy_wait"):
        parse_busy_wait(bad)


def test_environment_gives_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYBEAM_BUSY_WAIT", raising=False)
    assert busy_wait_from_env() == DEFAULT_BUSY_WAIT
    monkeypatch.setenv("PYBEAM_BUSY_WAIT", "very_long")
    assert busy_wait_from_env() == LEVELS["very_long"]
    assert DistOptions(cookie="c").busy_wait == LEVELS["very_long"]
    assert DistOptions(cookie="c", busy_wait="none").busy_wait == 0.0  # the argument wins
    monkeypatch.setenv("PYBEAM_BUSY_WAIT", "sometimes")
    with pytest.raises(ValueError, match=r"\$PYBEAM_BUSY_WAIT: busy_wait must be seconds"):
        busy_wait_from_env()


async def test_a_poke_keeps_the_loop_polling_then_it_stops_on_its_own() -> None:
    loop = asyncio.get_running_loop()
    spinner = BusyWait(loop, 0.05, contended=math.inf)
    spinner.poke()
    assert spinner.spinning
    # Nothing else is scheduled: only the spinner makes the loop iterate.
    await asyncio.sleep(0.01)
    during = spinner.spins
    assert during > 0
    await eventually(lambda: not spinner.spinning, timeout=10)
    after = spinner.spins
    await asyncio.sleep(0.1)
    assert spinner.spins == after  # asleep: no polling at all


async def test_each_poke_extends_the_spin() -> None:
    # (Never cut short for another thread: this test runs beside others.)
    spinner = BusyWait(asyncio.get_running_loop(), 0.05, contended=math.inf)
    spinner.poke()
    loop = asyncio.get_running_loop()
    start = loop.time()
    # Poked every 10 ms for 0.3 s: six thresholds long, and never stopped.
    while loop.time() - start < 0.3:
        await asyncio.sleep(0.01)
        assert spinner.spinning
        spinner.poke()
    await eventually(lambda: not spinner.spinning, timeout=10)


async def test_off_and_stopped_spinners_never_poll() -> None:
    off = BusyWait(asyncio.get_running_loop(), 0.0)
    off.poke()
    assert not off.spinning
    stopped = BusyWait(asyncio.get_running_loop(), 1.0)
    stopped.poke()
    stopped.stop()
    await eventually(lambda: not stopped.spinning, timeout=10)
    stopped.poke()
    assert not stopped.spinning


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux)")
async def test_a_spin_gives_up_when_the_os_gives_the_core_to_another_thread() -> None:
    # A CPU hog pinned to the core this process is pinned to: the OS takes
    # the core from the spinner for a time slice, and the spinner then sleeps
    # rather than take turns with it (with no such rule it would poll for the
    # whole second of its threshold, and never count a preemption).
    saved = os.sched_getaffinity(0)
    core = min(saved)
    hog = subprocess.Popen(
        [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"]
    )
    try:
        os.sched_setaffinity(0, {core})
        spinner = BusyWait(asyncio.get_running_loop(), 1.0)
        await asyncio.sleep(0.2)  # the hog is running by now
        spinner.poke()
        await eventually(lambda: not spinner.spinning, timeout=30)
        assert spinner.preempted >= 1
    finally:
        os.sched_setaffinity(0, saved)
        hog.kill()
        hog.wait(timeout=10)


def _loadavg(path: Any, runnable: int) -> None:
    # Written in place (same inode): the gauge keeps its file open.
    path.write_text(f"0.52 0.58 0.59 {runnable}/187 31337\n")


def test_the_run_queue_reads_runnable_threads_from_loadavg(tmp_path: Any) -> None:
    path = tmp_path / "loadavg"
    _loadavg(path, 3)
    gauge = RunQueue(str(path), cores=2)
    assert gauge.runnable() == 3
    assert gauge.crowded()  # three threads want two cores
    assert not RunQueue(str(path), cores=4).crowded()
    _loadavg(path, 2)
    assert gauge.runnable() == 2 and not gauge.crowded()  # each look reads it afresh
    path.write_text("garbage\n")
    assert gauge.runnable() is None and not gauge.crowded()
    gauge.close()
    assert gauge.runnable() is None


def test_without_a_run_queue_to_read_the_machine_is_never_crowded(tmp_path: Any) -> None:
    gauge = RunQueue(str(tmp_path / "no such file"))
    assert gauge.runnable() is None
    assert not gauge.crowded()


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="needs Linux's /proc/loadavg")
def test_the_real_run_queue_counts_the_reader() -> None:
    gauge = RunQueue()
    assert gauge.cores == os.cpu_count()
    runnable = gauge.runnable()
    assert runnable is not None and runnable >= 1  # this thread is running
    gauge.close()


async def test_no_spin_starts_or_goes_on_while_the_machine_is_crowded(tmp_path: Any) -> None:
    path = tmp_path / "loadavg"
    _loadavg(path, 1)
    gauge = RunQueue(str(path), cores=2)
    spinner = BusyWait(asyncio.get_running_loop(), 1.0, contended=math.inf, run_queue=gauge)
    spinner.poke()
    assert spinner.spinning and spinner.crowded == 0
    await asyncio.sleep(0.01)
    assert spinner.spinning and spinner.spins > 0
    # A third thread becomes runnable: the spinner gives the core up long
    # before its threshold (a second) is out.
    _loadavg(path, 3)
    await eventually(lambda: not spinner.spinning, timeout=0.5)
    assert spinner.crowded == 1
    # Nor does the next poke start one, once the short pause is over.
    await asyncio.sleep(0.01)
    spinner.poke()
    assert not spinner.spinning and spinner.crowded == 2
    _loadavg(path, 2)  # a core idle again (this thread and one other)
    await asyncio.sleep(0.01)
    spinner.poke()
    assert spinner.spinning
    spinner.stop()
    await eventually(lambda: not spinner.spinning, timeout=10)
    gauge.close()


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="needs Linux's /proc/loadavg")
@pytest.mark.skipif((os.cpu_count() or 1) > 32, reason="would start a CPU hog per core")
async def test_beside_a_cpu_hog_per_core_a_poke_does_not_spin() -> None:
    cores = os.cpu_count() or 1
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores + 1)]
    gauge = RunQueue()
    try:
        await eventually(lambda: (gauge.runnable() or 0) > cores, timeout=30)
        spinner = BusyWait(asyncio.get_running_loop(), 1.0, contended=math.inf, run_queue=gauge)
        spinner.poke()
        assert not spinner.spinning
        assert spinner.crowded == 1
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait(timeout=10)
        gauge.close()


async def _spins_after_a_round_trip(peer: str) -> int:
    """Spins, and spins refused or cut short for a busy machine, once a round
    trip with ``peer`` is done and the spin it started has ended."""
    # Past the pause a busy verdict imposes, in which pokes are not looked at.
    await asyncio.sleep(BACKOFF + CROWDED_BACKOFF)
    assert await rpc.call(peer, "operator:add", 1, 2) == 3
    await eventually(lambda: not net.busy_wait()["spinning"], timeout=10)
    seen = net.busy_wait()
    return int(seen["spins"]) + int(seen["crowded"]) + int(seen["preempted"])


async def test_traffic_with_a_real_peer_starts_a_spin_and_heartbeats_do_not(epmd_port: int) -> None:
    name = f"bw_{secrets.token_hex(3)}@127.0.0.1"
    async with (
        pybeam.Node(name, cookie=secrets.token_hex(8), ticktime=1.0, epmd_port=epmd_port, busy_wait="medium"),
        LocalCluster(1, prefix="bw_peer") as c,
    ):
        (peer,) = c.nodes
        assert net.busy_wait()["threshold"] == LEVELS["medium"]
        before = await _spins_after_a_round_trip(peer)
        after = await _spins_after_a_round_trip(peer)
        # The call's write and its answer's read each poke: the loop polls,
        # or (on a busy machine) finds no idle core and sleeps.
        assert after > before
        # Ticks go both ways every ticktime / 4: three seconds of them alone.
        await asyncio.sleep(3)
        seen = net.busy_wait()
        assert seen["spins"] + seen["crowded"] + seen["preempted"] == after
        assert net.node_info(peer) is not None  # and the connection is still up


async def test_zero_turns_it_off_for_a_node(epmd_port: int) -> None:
    name = f"bw_{secrets.token_hex(3)}@127.0.0.1"
    async with pybeam.Node(name, cookie=secrets.token_hex(8), epmd_port=epmd_port, busy_wait="none"):
        assert net.busy_wait() == {
            "threshold": 0.0,
            "spinning": False,
            "spins": 0,
            "preempted": 0,
            "crowded": 0,
        }


async def test_a_bad_value_stops_the_node_from_starting(epmd_port: int) -> None:
    node = pybeam.Node(
        f"bw_{secrets.token_hex(3)}@127.0.0.1", cookie="c", epmd_port=epmd_port, busy_wait="lots"
    )
    with pytest.raises(ValueError, match="busy_wait must be seconds or one of none, very_short"):
        await node.start()
    assert not node.running


def _pybeam(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pybeam", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_the_command_line_takes_it_and_refuses_nonsense(tmp_path: Any) -> None:
    env = dict(os.environ, HOME=str(tmp_path), PYBEAM_EPMD_PORT=str(free_port()))
    env.pop("PYBEAM_BUSY_WAIT", None)
    bad = _pybeam("node", "--name", "n@127.0.0.1", "--cookie", "c", "--busy-wait", "lots", env=env)
    assert bad.returncode == 2
    assert "--busy-wait: busy_wait must be seconds or one of none" in bad.stderr
    name = f"bw_{secrets.token_hex(3)}@127.0.0.1"
    node = subprocess.Popen(
        [sys.executable, "-m", "pybeam", "node", "--name", name, "--cookie", "c", "--busy-wait", "long"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert node.stdout is not None
        line = node.stdout.readline()
        assert " up " in line, line
        got = _pybeam("rpc", name, "pybeam.net:busy_wait", "--cookie", "c", env=env)
        assert got.returncode == 0, got.stderr
        assert f"'threshold': {LEVELS['long']}" in got.stdout, got.stdout
    finally:
        node.kill()
        node.wait(timeout=10)
        assert node.stdout is not None and node.stdin is not None
        node.stdout.close()
        node.stdin.close()

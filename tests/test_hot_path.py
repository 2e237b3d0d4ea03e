"""The local hot path's shortcuts keep BEAM's semantics: a message handed
straight to a waiting receive is never lost to a cancellation, and the pid a
spawn returned leads to its process only while that process lives."""

from __future__ import annotations

import asyncio
import copy
import gc
import subprocess
import sys
from pathlib import Path
from typing import Any

import pybeam
from pybeam import Pid, receive, send, spawn
from pybeam.process import Process
from pybeam.testing import eventually


def _proc(pid: Pid) -> Any:
    proc = pybeam.current_node().process(pid)
    assert proc is not None
    return proc


async def _survives_a_cancel(reply: Pid) -> None:
    try:
        msg = await receive()
        send(reply, ("first receive", msg))
    except asyncio.CancelledError:
        send(reply, ("after the cancel", await receive(timeout=5)))


async def test_a_message_handed_to_a_cancelled_receive_is_given_back() -> None:
    # The message is handed to the receive's future; the task is cancelled
    # before it runs again, so the receive never returns it: it must still be
    # in the mailbox for the next one.
    pid = spawn(_survives_a_cancel, pybeam.self())
    await eventually(lambda: pybeam.process_info(pid)["status"] == "waiting")  # type: ignore[index]
    task = _proc(pid).task
    send(pid, "precious")
    send(pid, "second")
    task.cancel()
    assert await receive(timeout=5) == ("after the cancel", "precious")


async def _wait_for_then_receive(reply: Pid) -> None:
    try:
        await asyncio.wait_for(receive(), 0.01)
    except TimeoutError:
        send(reply, "timed out")
    send(reply, ("then", await receive(timeout=5)))


async def test_a_spawned_process_receives_after_a_wait_for_timed_out() -> None:
    pid = spawn(_wait_for_then_receive, pybeam.self())
    assert await receive(timeout=5) == "timed out"
    send(pid, "late")
    assert await receive(timeout=5) == ("then", "late")


async def _echo_once() -> None:
    sender, msg = await receive()
    send(sender, msg)


async def test_a_copy_of_a_pid_reaches_the_process() -> None:
    pid = spawn(_echo_once)
    other = copy.copy(pid)  # equal, but not the object spawn returned (as a decoded pid)
    assert other == pid and other is not pid
    send(other, (pybeam.self(), "via a copy"))
    assert await receive(timeout=5) == "via a copy"


async def test_a_pid_holds_no_reference_to_its_ended_process() -> None:
    pid, ref = pybeam.spawn_monitor(_echo_once)
    send(pid, (pybeam.self(), "x"))
    assert await receive(timeout=5) == "x"
    await receive(("DOWN", ref, pybeam.ANY, pybeam.ANY, pybeam.ANY), timeout=5)
    gc.collect()
    assert not [r for r in gc.get_referents(pid) if isinstance(r, Process)]
    send(pid, "to the dead: dropped")  # no error, as in BEAM
    assert not pybeam.is_alive(pid)


def test_the_runtime_raises_only_pythons_default_gc_thresholds() -> None:
    from pybeam import process

    saved = gc.get_threshold()
    try:
        gc.set_threshold(*process.PYTHON_GC_THRESHOLDS)
        process.tune_gc()
        assert gc.get_threshold() == process.GC_THRESHOLDS
        gc.set_threshold(1234, 5, 6)  # the program's own choice stays
        process.tune_gc()
        assert gc.get_threshold() == (1234, 5, 6)
    finally:
        gc.set_threshold(*saved)


async def test_a_spawn_tunes_the_collector() -> None:
    from pybeam import process

    saved = gc.get_threshold()
    try:
        gc.set_threshold(*process.PYTHON_GC_THRESHOLDS)
        process._gc_tuned = False
        spawn(_echo_once)
        assert gc.get_threshold() == process.GC_THRESHOLDS
    finally:
        gc.set_threshold(*saved)


async def _two_receives_at_once(reply: Pid, selective: bool) -> None:
    first = asyncio.ensure_future(receive("a", timeout=30) if selective else receive(timeout=30))
    await asyncio.sleep(0)  # the first now waits
    try:
        await (receive("b", timeout=30) if selective else receive(timeout=30))
    except RuntimeError as e:
        send(reply, ("refused", str(e)))
    send(reply, ("first got", await first))


async def test_a_second_receive_at_once_in_one_process_is_refused_and_the_first_still_works() -> None:
    # One waiter per mailbox: a second would take the first's wake-up and leave
    # it waiting until its timeout (found by the soak: a gather of two receives).
    for selective in (False, True):
        pid = spawn(_two_receives_at_once, pybeam.self(), selective)
        refused = await receive(timeout=5)
        assert refused[0] == "refused" and "one place at a time" in refused[1]
        send(pid, "a")
        assert await receive(timeout=5) == ("first got", "a")


def test_the_hot_path_benchmark_has_a_command_line() -> None:
    # `--help` used to crash (int("--help")); --only runs one workload.
    root = Path(__file__).resolve().parent.parent
    helped = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare.hot_path", "--help"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert helped.returncode == 0 and "--only" in helped.stdout, helped.stderr
    ran = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare.hot_path", "1", "0.001", "--only", "ping-pong"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    rows = [line.split()[0] for line in ran.stdout.splitlines()[1:]]
    assert rows == ["ping-pong", "ping-pong"]  # wall and cpu
    bad = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare.hot_path", "0"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "REPETITIONS" in bad.stderr

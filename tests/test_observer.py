"""``process_info``'s ``initial_call`` and ``status``, and ``observer.processes_info``, in one node."""

from __future__ import annotations

import asyncio

import pybeam
from pybeam import receive, spawn
from pybeam.observer import processes_info
from pybeam.testing import eventually


async def waiter() -> None:
    await receive(lambda m: m == "never sent")


async def sleeper() -> None:
    await asyncio.sleep(3600)


def plain() -> object:
    return receive()  # a plain function returning an awaitable


async def test_initial_call_and_status() -> None:
    waiting, sleeping, plain_pid = spawn(waiter), spawn(sleeper), spawn(plain)
    await asyncio.sleep(0)  # let them reach their first await
    info = pybeam.process_info(waiting)
    assert info is not None
    assert (info["initial_call"], info["status"]) == (f"{__name__}:waiter", "waiting")
    info = pybeam.process_info(sleeping)
    assert info is not None
    assert (info["initial_call"], info["status"]) == (f"{__name__}:sleeper", "running")
    info = pybeam.process_info(plain_pid)
    assert info is not None
    assert (info["initial_call"], info["status"]) == (f"{__name__}:plain", "waiting")
    me = pybeam.process_info(pybeam.self())
    assert me is not None and me["status"] == "running"

    pybeam.send(waiting, "kept")
    rows = {row["pid"]: row for row in processes_info()}
    assert rows[waiting]["message_queue_len"] == 1
    assert {waiting, sleeping, plain_pid} <= set(rows)

    for pid in (waiting, sleeping, plain_pid):
        pybeam.exit(pid, "kill")
    await eventually(lambda: not any(pybeam.is_alive(p) for p in (waiting, sleeping, plain_pid)))
    assert pybeam.process_info(waiting) is None


async def echo_n(n: int) -> None:
    for _ in range(n):
        await receive()
    await receive(lambda m: m == "never sent")


async def test_reductions_count_resumptions_and_memory_grows_with_the_mailbox() -> None:
    me = pybeam.self()
    pid = spawn(echo_n, 3)
    await asyncio.sleep(0)
    rows = {row["pid"]: row for row in processes_info()}
    assert rows[pid]["reductions"] == 1  # started, now waiting
    empty = rows[pid]["memory"]
    for i in range(3):
        pybeam.send(pid, i)
        await asyncio.sleep(0)
    rows = {row["pid"]: row for row in processes_info()}
    assert rows[pid]["reductions"] == 4  # one resumption per message taken
    assert rows[pid]["message_queue_len"] == 0
    # Queued messages (now kept by the selective receive) are counted, shallowly.
    pybeam.send(pid, "x" * 10_000)
    await asyncio.sleep(0)
    rows = {row["pid"]: row for row in processes_info()}
    assert rows[pid]["message_queue_len"] == 1
    assert rows[pid]["memory"] >= empty + 10_000
    # process_info gives the same two figures.
    info = pybeam.process_info(pid)
    assert info is not None
    assert info["reductions"] == rows[pid]["reductions"] and info["memory"] >= empty + 10_000
    assert rows[me]["reductions"] == 0  # an adopted task is not resumed through a process's guard
    pybeam.exit(pid, "kill")

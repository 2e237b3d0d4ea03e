"""The compiled hot path (pybeam._speedups, see pybeam.speedups): that it is
built where it can be, that it is the one in use, and what its frameless
receive does where a Python generator used to do it. Everything else it does
the whole suite checks; ``scripts/test`` also runs the runtime's own tests a
second time with ``PYBEAM_PURE_PYTHON=1``, on the Python code it mirrors."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import subprocess
import sys
import sysconfig
from typing import Any

import pytest

import pybeam
from pybeam import Pid, kernel, mailbox, receive, scheduler, send, spawn
from pybeam.speedups import COMPILED, speedups

PURE = os.environ.get("PYBEAM_PURE_PYTHON", "") not in ("", "0")


def _has_c_compiler() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None


@pytest.mark.skipif(PURE, reason="PYBEAM_PURE_PYTHON is set: the Python code runs on purpose")
def test_the_compiled_hot_path_is_built_and_in_use() -> None:
    if not COMPILED and _has_c_compiler():
        pytest.fail(
            "pybeam._speedups is not built although a C compiler is here: "
            "`pip install -e .` (or `python setup.py build_ext --inplace`) builds it"
        )
    if not COMPILED:
        pytest.skip("no C compiler: pybeam runs on its Python code")
    assert speedups is not None
    assert pybeam.send is speedups.send is kernel.send
    assert pybeam.receive is speedups.receive
    assert mailbox.waiting is speedups.waiting
    # The classes' methods are the compiled ones, bound as methods are.
    assert type(scheduler.ProcessTask.__dict__["_step"]).__name__ == "method_descriptor"
    assert type(scheduler.RunQueue.__dict__["_run"]).__name__ == "method_descriptor"


def test_pure_python_is_selected_by_the_environment() -> None:
    code = "from pybeam.speedups import COMPILED; import pybeam; print(COMPILED, pybeam.send.__module__)"
    env = dict(os.environ, PYBEAM_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "pybeam.kernel"]


async def _receive_in_a_task(reply: Pid) -> None:
    # The receive is made in the process's own task and awaited by another
    # one: the wake then behaves as a future that task waits on.
    r = receive()
    assert asyncio.iscoroutine(r)
    t = asyncio.create_task(r)
    await asyncio.sleep(0)
    send(reply, "waiting")
    send(reply, ("got", await t))


async def test_a_receive_is_a_coroutine_another_task_can_run() -> None:
    pid = spawn(_receive_in_a_task, pybeam.self())
    assert await receive(timeout=5) == "waiting"
    send(pid, "hello")
    assert await receive(timeout=5) == ("got", "hello")


async def _queued_then_waited(reply: Pid) -> None:
    send(pybeam.self(), 1)
    send(pybeam.self(), (2, "two"))
    got = [await receive(), await receive()]  # both queued: no wait
    send(reply, "ready")
    got.append(await receive())  # a wait, handed the message
    send(reply, got)


async def test_queued_and_handed_messages_come_back_as_they_were_sent() -> None:
    pid = spawn(_queued_then_waited, pybeam.self())
    assert await receive(timeout=5) == "ready"
    msg: Any = ("three", [3], None)
    send(pid, msg)
    got = await receive(timeout=5)
    assert got == [1, (2, "two"), msg]
    assert got[2] is msg  # locally, the very object


async def _receive_throw(reply: Pid) -> None:
    r = receive()
    # What a coroutine's throw() does to the receive it waits in: the
    # exception comes out, and the receive is finished.
    with pytest.raises(ValueError, match="boom"):
        r.throw(ValueError("boom"))  # type: ignore[attr-defined]
    r.close()  # type: ignore[attr-defined]
    send(reply, "threw")


@pytest.mark.skipif(not COMPILED, reason="the compiled Receiving only")
async def test_a_receive_can_be_thrown_into_and_closed() -> None:
    spawn(_receive_throw, pybeam.self())
    assert await receive(timeout=5) == "threw"


async def _reuse(reply: Pid) -> None:
    send(pybeam.self(), "x")
    r = receive()
    await r
    try:
        await r
    except RuntimeError as e:
        send(reply, ("error", str(e)))
    else:
        send(reply, "reused")


@pytest.mark.skipif(not COMPILED, reason="the compiled Receiving only")
async def test_a_receive_awaited_twice_is_an_error_as_a_coroutine_is() -> None:
    spawn(_reuse, pybeam.self())
    assert await receive(timeout=5) == ("error", "cannot reuse already awaited receive")


class _Token:
    """A message whose references are counted (a refcount leak shows as growth)."""


async def _echo(n: int) -> None:
    for _ in range(n):
        msg = await receive()
        send(msg[0], msg[1])
        del msg


async def _count_references(reply: Pid, n: int) -> None:
    token = _Token()
    me = pybeam.self()
    echo = spawn(_echo, 3 * n)
    before = sys.getrefcount(token)
    for _ in range(n):  # handed over: the echo waits each time
        send(echo, (me, token))
        assert await receive() is token
    for _ in range(n):  # queued: both sides' messages wait in the mailbox
        send(echo, (me, token))
        send(me, token)
        assert await receive() is token
        assert await receive() is token
    for _ in range(n):  # through the Python fallback: a pattern
        send(echo, (me, token))
        assert await receive(lambda m: m is token) is token
    send(reply, sys.getrefcount(token) - before)


async def test_the_hot_path_keeps_no_reference_to_what_it_carried() -> None:
    spawn(_count_references, pybeam.self(), 2000)
    assert await receive(timeout=30) == 0


async def _late_awaits(reply: Pid) -> None:
    me = pybeam.self()
    # A message handed over between receive() and its await: the receive
    # returns it at once (it once waited for a wake-up that never came).
    r = receive()
    send(me, "handed")
    first = await r
    # A receive made while messages are queued and never awaited takes
    # nothing: the message stays for the next receive.
    send(me, "m1")
    send(me, "m2")
    dropped = receive()
    dropped.close()  # type: ignore[attr-defined]
    send(reply, [first, await receive(), await receive()])


async def test_a_receive_takes_its_message_when_awaited_not_when_made() -> None:
    spawn(_late_awaits, pybeam.self())
    assert await receive(timeout=5) == ["handed", "m1", "m2"]


async def _keywords(reply: Pid) -> None:
    send(dest=reply, msg="by keyword")


async def test_send_and_receive_look_the_same_in_either_code() -> None:
    from pybeam.functions import function_name

    spawn(_keywords, pybeam.self())
    assert await receive(timeout=5) == "by keyword"
    # Another node finds them by these names, whichever code it runs.
    assert function_name(pybeam.send) == "pybeam.kernel:send"
    assert function_name(pybeam.receive) == "pybeam.kernel:receive"
    assert str(inspect.signature(pybeam.receive)) == "(pattern=None, *, timeout=None, default=NO_DEFAULT)"
    assert list(inspect.signature(pybeam.send).parameters) == ["dest", "msg"]
    assert pybeam.send.__doc__ and pybeam.send.__doc__.startswith("Send ``msg``")


@pytest.mark.skipif(not COMPILED, reason="the compiled waiting only")
async def test_the_compiled_waiting_takes_a_wake_and_nothing_else() -> None:
    with pytest.raises(TypeError, match="takes a process's Wake"):
        mailbox.waiting(asyncio.Future(), None)  # type: ignore[arg-type]

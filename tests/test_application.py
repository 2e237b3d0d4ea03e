"""Applications and orderly shutdown (init:stop): started at boot in order,
stopped in reverse order, each supervision tree from the top with its shutdown
times, on a local node (Node.stop, pybeam.run) and on a real OS-process node
stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
from typing import Any

import pytest

import pybeam
from pybeam import Pid, application, rpc, supervisor
from pybeam.application import ApplicationError
from pybeam.gen_server import GenServer
from pybeam.testing import LocalCluster, eventually

#: What the local tests' servers did, in order.
EVENTS: list[str] = []


class Recorder(GenServer):
    """Traps exits, so its terminate runs when its supervisor stops it; a
    ``stuck`` one never returns from terminate (its supervisor must kill it)."""

    def init(self, arg: tuple[str, bool]) -> Any:
        pybeam.trap_exit(True)
        return arg

    async def terminate(self, reason: Any, state: tuple[str, bool]) -> None:
        id, stuck = state
        EVENTS.append(f"terminate {id} {reason}")
        print(f"terminate {id} {reason}", flush=True)  # the OS-process test reads it in the node's log
        if stuck:
            await asyncio.sleep(3600)


def recorder(id: str, stuck: bool = False) -> supervisor.ChildSpec:
    return Recorder.child_spec((id, stuck), id=id, shutdown=0.5 if stuck else 5.0)


async def start_one() -> Pid:
    return await supervisor.start_link([recorder("one_a"), recorder("one_b")])


async def start_two() -> Pid:
    return await supervisor.start_link(
        [recorder("two_a"), recorder("two_stuck", stuck=True), recorder("two_c")]
    )


def bad_start() -> Any:
    return "not a pid"


def crashing_start() -> Any:
    raise RuntimeError("no database")


#: The order init:stop gives for apps one then two: two first, each tree last child first.
STOP_ORDER = ["two_c", "two_stuck", "two_a", "one_b", "one_a"]


def terminations(lines: list[str]) -> list[str]:
    return [line.split()[1] for line in lines if line.startswith("terminate ")]


@pytest.fixture(autouse=True)
def _clear_events() -> None:
    EVENTS.clear()


def test_parse() -> None:
    assert application.parse("myapp") == ("myapp", "start")
    assert application.parse("my.app:boot") == ("my.app", "boot")
    for bad in ("", ":start", "a:", "a b", "a:b.c", "a..b"):
        with pytest.raises(ApplicationError):
            application.parse(bad)


async def test_node_stop_stops_applications_in_reverse_order_from_the_top() -> None:
    node = pybeam.Node()
    await node.start()
    try:
        # Functions, not "module:fn" strings: pytest imports this file under
        # another module name than "tests.test_application", whose EVENTS would differ.
        top1 = await application.start(start_one, node=node)
        top2 = await application.start(start_two, node=node)
        assert node.process(top1) is not None and node.process(top2) is not None
        names = application.which_applications(node)
        assert [n.rpartition(":")[2] for n in names] == ["start_one", "start_two"]
        assert EVENTS == []
    finally:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await node.stop()
        took = loop.time() - began
    assert terminations(EVENTS) == STOP_ORDER
    assert all(e.endswith(" shutdown") for e in EVENTS)
    # The stuck child was killed after its 0.5 s, and the tree went on.
    assert took >= 0.5
    assert node.processes() == []


async def test_an_application_that_does_not_start_names_why() -> None:
    async with pybeam.Node() as node:
        with pytest.raises(ApplicationError, match="returned 'not a pid', not a pid"):
            await application.start(bad_start, node=node)
        with pytest.raises(ApplicationError, match="RuntimeError: no database"):
            await application.start("tests.test_application:crashing_start")
        with pytest.raises(ApplicationError, match="cannot import"):
            await application.start("tests.no_such_module")
        with pytest.raises(ApplicationError, match="has no function"):
            await application.start("tests.test_application:nope")
        assert application.which_applications(node) == []


async def test_an_application_whose_tree_dies_is_logged_and_the_node_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with pybeam.Node() as node:
        top = await application.start(start_one, node=node)
        with caplog.at_level(logging.WARNING, logger="pybeam"):
            pybeam.exit(top, "kill")
            await eventually(lambda: application.which_applications(node) == [])
        assert "exited: 'killed'" in caplog.text
        assert node.running


def _run_main() -> list[str]:
    async def main() -> str:
        return "done"

    assert pybeam.run(main, apps=[start_one, start_two]) == "done"
    return list(EVENTS)


def test_run_stops_its_applications_when_main_returns() -> None:
    assert terminations(_run_main()) == STOP_ORDER


async def test_sigterm_stops_a_nodes_applications_in_order(beam_node: pybeam.Node) -> None:
    apps = ["tests.test_application:start_one", "tests.test_application:start_two"]
    async with LocalCluster(1, apps=apps) as cluster:
        (n1,) = cluster.nodes
        names = await rpc.call(n1, "pybeam.application:which_applications")
        assert names == apps
        assert await cluster.stop_node(n1) == 0
        log = cluster.logs(n1)
    assert terminations(log.splitlines()) == STOP_ORDER, log
    assert "did not stop within 0.5s of shutdown: killing it" in log
    # Killed after its terminate began, before the next sibling's.
    assert log.index("terminate two_stuck") < log.index("killing it") < log.index("terminate two_a")


def test_pybeam_node_with_a_bad_app_exits_with_its_reason(epmd_port: int) -> None:
    env = dict(os.environ, PYBEAM_EPMD_PORT=str(epmd_port), PYBEAM_COOKIE="APPTEST")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pybeam",
            "node",
            "--name",
            "badapp@127.0.0.1",
            "--app",
            "tests.test_application:bad_start",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "application tests.test_application:bad_start did not start" in done.stderr


async def start_linked_sup() -> Pid:
    return await supervisor.start_link([recorder("rpc_child")])


async def start_unlinked_sup() -> Pid:
    return await supervisor.start([recorder("rpc_child")])


async def test_rpc_of_start_link_warns_the_caller_that_the_tree_dies_with_the_rpc_process(
    beam_node: pybeam.Node, caplog: pytest.LogCaptureFixture
) -> None:
    async with LocalCluster(1) as cluster:
        (n1,) = cluster.nodes
        with caplog.at_level(logging.WARNING, logger="pybeam"):
            sup = await rpc.call(n1, "tests.test_application:start_linked_sup")

        # The trap itself (as in OTP): the supervisor stops with the rpc process...
        async def sup_gone() -> bool:
            return not await rpc.call(n1, "pybeam.kernel:is_alive", sup)

        await eventually(sup_gone)
        # ...and both sides say why, naming the way out.
        assert f"its process was linked to {sup!r}" in caplog.text
        assert "start_link in an rpc stops at once" in caplog.text
        await eventually(lambda: "start_link in an rpc stops at once" in cluster.logs(n1))
        # Unlinked, no warning, and it lives on.
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pybeam"):
            sup = await rpc.call(n1, "tests.test_application:start_unlinked_sup")
        assert await rpc.call(n1, "pybeam.kernel:is_alive", sup)
        assert "linked to" not in caplog.text


_CTRL_C_MAIN = """
import pybeam
from tests.test_application import start_one, start_two

async def main():
    print("ready", flush=True)
    await pybeam.receive("never")

pybeam.run(main, apps=[start_one, start_two])
"""


def test_ctrl_c_stops_pybeam_runs_applications_in_order(tmp_path: Any) -> None:
    script = tmp_path / "main.py"
    script.write_text(_CTRL_C_MAIN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        # A shell's background job ignores SIGINT, and Python then keeps ignoring it: undo that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert terminations(out.splitlines()) == STOP_ORDER, out
    assert "KeyboardInterrupt" in out


async def test_a_second_stop_waits_for_the_first() -> None:
    node = pybeam.Node()
    await node.start()
    await application.start(start_two, node=node)
    first = asyncio.ensure_future(node.stop())
    await eventually(lambda: any(e.startswith("terminate two_c") for e in EVENTS))
    await node.stop()  # returns only once the whole shutdown is done
    assert terminations(EVENTS) == ["two_c", "two_stuck", "two_a"]
    assert node.processes() == []
    await first


class Halter(GenServer):
    """Stops its own node from inside an application's tree (as an admin
    command handled by a server would), trapping exits so that its terminate runs."""

    def init(self, arg: None) -> Any:
        pybeam.trap_exit(True)
        return arg

    async def handle_cast(self, request: Any, state: None) -> Any:
        EVENTS.append("halting")
        await pybeam.current_node().stop()
        EVENTS.append("stop returned")
        return ("noreply", state)

    async def terminate(self, reason: Any, state: None) -> None:
        EVENTS.append(f"terminate halter {reason}")


async def start_halting() -> Pid:
    # An unbounded shutdown time: a stop that waited for the halter to finish
    # its handle_cast would wait for ever.
    return await supervisor.start_link(
        [recorder("h_a"), Halter.child_spec(None, name="halter", shutdown="infinity"), recorder("h_c")]
    )


async def test_node_stop_from_inside_an_applications_tree_does_not_wait_for_its_caller() -> None:
    node = pybeam.Node()
    await node.start()
    try:
        await application.start(start_halting, node=node)
        node.send("halter", ("$gen_cast", "halt"))
        # As init:stop/0: the call returns at once, the node stops in the
        # background, the caller's tree is stopped in order, the caller with it.
        await eventually(lambda: not node.running and node.processes() == [], timeout=20)
    finally:
        # Bounded: before the fix this stop (a second one) waited for the first, for ever.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(node.stop(), 10)
    assert EVENTS[:2] == ["halting", "stop returned"]
    assert EVENTS[2:] == ["terminate h_c shutdown", "terminate halter shutdown", "terminate h_a shutdown"]


async def test_a_permanent_applications_exit_stops_the_node(caplog: pytest.LogCaptureFixture) -> None:
    node = pybeam.Node()
    await node.start()
    try:
        await application.start(start_two, node=node)  # temporary: stopped by the node's stop, in order
        top = await application.start(start_one, node=node, type="permanent")
        with caplog.at_level(logging.ERROR, logger="pybeam"):
            node.exit(top, top, "kill")  # the tree dies on its own
            await eventually(lambda: not node.running and node.processes() == [], timeout=20)
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(node.stop(), 10)
    cause = application.stopped_by(node)
    assert cause is not None and cause[0] == "application_terminated" and cause[2] == "killed"
    assert cause[1].endswith("start_one")
    assert "(type: permanent): stopping the node" in caplog.text
    # The other application was stopped as init:stop does: its tree from the top, last child first.
    assert [e for e in EVENTS if e.startswith("terminate two")] == [
        "terminate two_c shutdown",
        "terminate two_stuck shutdown",
        "terminate two_a shutdown",
    ]


async def _until_told() -> None:
    reason = await pybeam.receive()
    if reason != "normal":
        raise pybeam.Exit(reason)


def start_plain() -> Pid:
    """A 'tree' that is one plain process, exiting with the reason it is sent."""
    return pybeam.spawn(_until_told)


async def test_a_transient_application_stops_the_node_only_if_it_exits_abnormally() -> None:
    async with pybeam.Node() as node:
        normal = await application.start(start_plain, node=node, type="transient")
        pybeam.send(normal, "normal")
        await eventually(lambda: application.which_applications(node) == [])
        assert node.running and application.stopped_by(node) is None
        top = await application.start(start_plain, node=node, type="transient")
        pybeam.send(top, "boom")
        await eventually(lambda: not node.running, timeout=20)
        assert application.stopped_by(node) == ("application_terminated", f"{__name__}:start_plain", "boom")
    with pytest.raises(ApplicationError, match="one of temporary, transient, permanent"):
        await application.start(start_one, node=node, type="forever")  # type: ignore[arg-type]


def test_run_raises_exit_when_a_permanent_application_stops_the_node() -> None:
    async def main() -> str:
        await application.start(start_one, type="temporary")
        top = await application.start(start_plain, type="permanent")
        pybeam.send(top, "boom")
        await pybeam.receive(timeout=30)  # never comes: the node stops under main
        return "not reached"

    with pytest.raises(pybeam.Exit) as exc:
        pybeam.run(main)
    assert exc.value.reason == ("application_terminated", f"{__name__}:start_plain", "boom")
    assert terminations(EVENTS) == ["one_b", "one_a"]  # the other application stopped in order


CRASHER = """
import pybeam
from pybeam import supervisor


async def _worker():
    await pybeam.receive()


async def start():
    return await supervisor.start_link([supervisor.ChildSpec("w", (pybeam.spawn_link, (_worker,)))], name="top")


def crash():
    pybeam.exit(pybeam.whereis("top"), "kill")
"""


def test_pybeam_node_exits_1_when_a_permanent_application_exits(epmd_port: int, tmp_path: Any) -> None:
    (tmp_path / "crasher.py").write_text(CRASHER)
    env = dict(os.environ, PYBEAM_EPMD_PORT=str(epmd_port), PYBEAM_COOKIE="APPTEST")
    argv = [sys.executable, "-m", "pybeam", "node", "--name", "perm@127.0.0.1", "--app", "crasher"]
    node = subprocess.Popen(
        [*argv, "--app-type", "permanent"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        assert select.select([node.stdout], [], [], 30)[0], "the node did not come up"
        assert node.stdout.readline().startswith("pybeam node perm@127.0.0.1 up")
        subprocess.run(
            [sys.executable, "-m", "pybeam", "rpc", "perm@127.0.0.1", "crasher:crash"],
            env=env,
            timeout=30,
            check=False,
        )
        _, err = node.communicate(timeout=30)
    finally:
        if node.poll() is None:
            node.kill()
            node.communicate()
    assert node.returncode == 1, err
    assert "pybeam node: node perm@127.0.0.1 stopped: application crasher:start exited: 'killed'" in err

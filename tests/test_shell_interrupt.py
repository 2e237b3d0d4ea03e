"""Ctrl-C, SIGINT and SIGTERM reach code that holds a node's event loop: a shell
statement that never awaits is interrupted, a stalled node says so and stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

from pybeam.testing import eventually
from test_cli import COOKIE, TIMEOUT, Child, Cli


def _signal_until_noticed(child: Child, sig: signal.Signals) -> None:
    """Send ``sig`` until the node says its loop is held: a signal sent before
    the loop has been held for a second is taken as an ordinary one."""
    deadline = time.monotonic() + TIMEOUT
    while "held for" not in child.stderr:
        assert time.monotonic() < deadline, child.stderr
        assert child.proc.poll() is None, child.stderr
        child.proc.send_signal(sig)
        with contextlib.suppress(AssertionError):
            asyncio.run(eventually(lambda: "held for" in child.stderr, timeout=1.5, what="the notice"))


def _type(child: Child, text: str) -> None:
    assert child.proc.stdin is not None
    child.proc.stdin.write(text)
    child.proc.stdin.flush()


def test_ctrl_c_interrupts_a_shell_statement_that_never_awaits(cli: Cli) -> None:
    cli.node("o@127.0.0.1")
    shell, _ = cli.node("s@127.0.0.1", "--shell")
    _type(shell, "me = pybeam.self()\ndef spin(tag):\n    print(tag, flush=True)\n    while True: pass\n\n")
    # A plain statement, an awaiting one that stops awaiting, a blocking call,
    # and one that spends most of its time in pybeam's own code (interrupted
    # only when its own code runs, so that the runtime is never left half-way).
    statements = [
        "spin('sync')\n",
        "async def aspin():\n    await asyncio.sleep(0)\n    spin('async')\n\nawait aspin()\n",
        "import time\nprint('sleep', flush=True); time.sleep(1000)\n",
        "def busy(tag):\n    print(tag, flush=True)\n    while True:\n        pybeam.whereis('x')\n"
        "        pybeam.self()\n\nbusy('runtime')\n",
    ]
    for n, statement in enumerate(statements, 1):
        tag = statement.split("'")[-2]
        _type(shell, statement)
        shell.wait_line(rf"^{tag}$")
        shell.proc.send_signal(signal.SIGINT)
        asyncio.run(
            eventually(lambda: shell.stderr.count("\nKeyboardInterrupt\n") == n, timeout=TIMEOUT, what=tag)  # noqa: B023
        )
    # The shell process, the node and its connections went on.
    _type(shell, "print('same', pybeam.self() == me)\nprint(await pybeam.ping('o@127.0.0.1'))\n")
    shell.wait_line(r"^same True$")
    shell.wait_line(r"^pong$")
    assert "held for" not in shell.stderr  # interrupted at once, not as a stalled loop
    shell.close_stdin()
    assert shell.wait() == 0, shell.stderr


def test_a_stalled_shell_node_says_so_and_a_second_ctrl_c_stops_it(cli: Cli) -> None:
    shell, _ = cli.node("s@127.0.0.1", "--shell")
    # A process (not the shell's statement) that never awaits holds the loop.
    _type(
        shell, "def spin():\n    print('spinning', flush=True)\n    while True: pass\n\npybeam.spawn(spin)\n"
    )
    shell.wait_line(r"^spinning$")
    _signal_until_noticed(shell, signal.SIGINT)  # a first Ctrl-C on a held loop: a notice, nothing stops
    assert shell.proc.poll() is None
    assert "by code that never awaits: <console>:3 in spin (process <s@127.0.0.1." in shell.stderr
    shell.proc.send_signal(signal.SIGINT)
    assert shell.wait() == 0  # stopped as init:stop does
    assert "stopping the node: interrupting <console>:3 in spin" in shell.stderr


HOLDER = """
import pathlib
import time


def hold(path):
    pathlib.Path(path).write_text("holding")
    time.sleep(1000)
"""


def test_sigterm_stops_a_node_held_by_a_blocking_rpc(cli: Cli, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "holder.py").write_text(HOLDER)
    node = cli.start("node", "--name", "n@127.0.0.1", "--cookie", COOKIE, cwd=project)
    node.wait_line(r"^pybeam node n@127\.0\.0\.1 up")
    flag = tmp_path / "holding"
    caller = cli.start(
        "rpc", "n@127.0.0.1", "holder:hold", repr(str(flag)), "--cookie", COOKIE, "--timeout", "60"
    )
    asyncio.run(eventually(flag.exists, timeout=TIMEOUT, what="the rpc holds the loop"))
    _signal_until_noticed(node, signal.SIGTERM)
    assert "SIGTERM: the event loop has been held for" in node.stderr
    assert "holder.py" in node.stderr
    node.proc.send_signal(signal.SIGTERM)
    assert node.wait() == 0
    assert "stopping the node: interrupting" in node.stderr
    assert caller.wait() == 1  # its call failed: the function was interrupted


def _sessions(cli: Cli) -> list[dict[str, object]] | None:
    listed = cli.run("processes", "n@127.0.0.1", "--json", "--cookie", COOKIE)
    if listed.returncode != 0:
        return None
    return [r for r in json.loads(listed.stdout) if r["initial_call"] == "pybeam.remsh:_session"]


def test_ctrl_c_in_remsh_interrupts_the_statement_on_the_node(cli: Cli, tmp_path: Path) -> None:
    node, _ = cli.node("n@127.0.0.1")
    remsh = cli.start("remsh", "n@127.0.0.1", "--cookie", COOKIE, "--stall-limit", "1")
    flag = tmp_path / "started"
    _type(remsh, f"import pathlib\nme = pybeam.self()\nflag = pathlib.Path({str(flag)!r})\n'ready'\n")
    remsh.wait_line(r"^'ready'$")
    # An awaiting statement: the interrupt travels over the distribution and cancels it.
    _type(remsh, "flag.touch(); await asyncio.sleep(1000)\n")
    asyncio.run(eventually(flag.exists, timeout=TIMEOUT, what="the statement runs"))
    remsh.proc.send_signal(signal.SIGINT)
    remsh.wait_line(r"^KeyboardInterrupt$")
    # One that never awaits holds the node's loop, which reads nothing meanwhile:
    # the node's watchdog interrupts it after the stall limit, whether or not
    # anyone pressed Ctrl-C.
    _type(remsh, "def spin():\n    while True: pass\n\nspin()\n")
    remsh.wait_line(
        r"^KeyboardInterrupt: the statement held the event loop of node n@127\.0\.0\.1 for \d+\.\ds without "
        r"awaiting \(the remote shell's stall limit\)$"
    )
    _type(remsh, "pybeam.self() == me\n")  # the same session process, the node unharmed
    remsh.wait_line(r"^True$")
    remsh.close_stdin()
    assert remsh.wait() == 0
    assert node.proc.poll() is None


def test_a_second_ctrl_c_leaves_a_remsh_whose_node_does_not_answer(cli: Cli, tmp_path: Path) -> None:
    cli.node("n@127.0.0.1")
    remsh = cli.start("remsh", "n@127.0.0.1", "--cookie", COOKIE, "--stall-limit", "4")
    flag = tmp_path / "started"
    _type(remsh, "def spin():\n    while True: pass\n\n'ready'\n")
    remsh.wait_line(r"^'ready'$")
    _type(remsh, f"import pathlib; pathlib.Path({str(flag)!r}).touch(); spin()\n")
    asyncio.run(eventually(flag.exists, timeout=TIMEOUT, what="the statement runs"))
    remsh.proc.send_signal(signal.SIGINT)
    asyncio.run(eventually(lambda: "does not answer" in remsh.stderr, timeout=TIMEOUT, what="the notice"))
    assert "it is interrupted when it has held it for 4s (--stall-limit)" in remsh.stderr
    remsh.proc.send_signal(signal.SIGINT)
    assert remsh.wait() == 1
    assert "pybeam remsh: left while a statement still holds node n@127.0.0.1" in remsh.stderr
    # The node's watchdog ends the statement; the session, its client gone, ends too.
    asyncio.run(eventually(lambda: _sessions(cli) == [], timeout=TIMEOUT, what="the node is free again"))


def test_a_shell_statement_can_stop_its_node(cli: Cli) -> None:
    # The shell process is one of the processes the stop ends: Node.stop from
    # it runs in the background (as init:stop/0), and pybeam node notices.
    shell, _ = cli.node("s@127.0.0.1", "--shell")
    _type(shell, "await pybeam.current_node().stop()\n")
    assert shell.wait() == 0, shell.stderr

"""The ``pybeam`` command, run as real subprocesses (``python -m pybeam ...``).

Each test gets its own port mapper port and HOME, and every process it starts
is killed at the end, pass or fail.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

import pybeam
from pybeam.testing import free_port

COOKIE = "CLITESTCOOKIE"
TIMEOUT = 20.0


class Child:
    """A running ``python -m pybeam ...``, its output read by threads as it comes."""

    def __init__(
        self, args: list[str], env: dict[str, str], cwd: Path | None = None, flags: Sequence[str] = ()
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *flags, "-m", "pybeam", *args],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stdout, self.out, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.err, False), daemon=True).start()

    def _read(self, stream: object, into: list[str], lines: bool) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)
            if lines:
                self.lines.put(line)

    def wait_line(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first stdout line (from now on) that matches ``pattern``."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {timeout}s; stderr:\n{self.stderr}")
            match = re.search(pattern, line)
            if match:
                return match

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pybeam did not exit within {timeout}s; stderr:\n{self.stderr}")

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)


class Cli:
    """Starts pybeam commands with this test's environment, and cleans them up."""

    def __init__(self, home: Path) -> None:
        self.epmd_port = free_port()
        self.env = dict(os.environ)
        self.env["PYBEAM_EPMD_PORT"] = str(self.epmd_port)
        self.env["HOME"] = str(home)  # never touch the real ~/.pybeam.cookie
        self.env.pop("PYBEAM_COOKIE", None)
        self.children: list[Child] = []

    def start(self, *args: str, cwd: Path | None = None, flags: Sequence[str] = ()) -> Child:
        child = Child(list(args), self.env, cwd, flags)
        self.children.append(child)
        return child

    def node(self, name: str, *args: str) -> tuple[Child, int]:
        """Start a node and wait until it is up; returns it and its port."""
        child = self.start("node", "--name", name, "--cookie", COOKIE, "--ticktime", "1", *args)
        match = child.wait_line(rf"^pybeam node {re.escape(name)} up \(port (\d+)\)$")
        return child, int(match.group(1))

    def run(self, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pybeam", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def rpc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("rpc", *args, "--cookie", COOKIE)

    def cleanup(self) -> None:
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.kill()
            child.proc.wait(timeout=10)
            for stream in (child.proc.stdin, child.proc.stdout, child.proc.stderr):
                if stream is not None:
                    stream.close()


def test_node_rpc_names_and_sigterm(cli: Cli) -> None:
    node, port = cli.node("n@127.0.0.1")

    result = cli.rpc("n@127.0.0.1", "operator:add", "2", "3")
    assert (result.returncode, result.stdout) == (0, "5\n"), result.stderr
    # Arguments are literals when they parse as such, strings otherwise.
    result = cli.rpc("n@127.0.0.1", "builtins:str", "hello")
    assert result.stdout == "'hello'\n"
    result = cli.rpc("n@127.0.0.1", "operator:concat", "[1]", "[2, 'x']")
    assert result.stdout == "[1, 2, 'x']\n"

    names = cli.run("names")
    assert names.returncode == 0, names.stderr
    assert f"n {port}" in names.stdout.splitlines()

    node.proc.send_signal(signal.SIGTERM)
    assert node.wait() == 0
    assert node.stderr == ""


def test_sigint_stops_a_node_cleanly_too(cli: Cli) -> None:
    node, _ = cli.node("n@127.0.0.1")
    node.proc.send_signal(signal.SIGINT)
    assert node.wait() == 0


def test_connect_at_start(cli: Cli) -> None:
    cli.node("a@127.0.0.1")
    cli.node("b@127.0.0.1", "--connect", "a@127.0.0.1")
    result = cli.rpc("a@127.0.0.1", "pybeam.net:nodes")
    assert result.stdout == "['b@127.0.0.1']\n", result.stderr

    bad = cli.start("node", "--name", "c@127.0.0.1", "--cookie", COOKIE, "--connect", "nobody@127.0.0.1")
    assert bad.wait() == 1
    assert "cannot connect to nobody@127.0.0.1" in bad.stderr

    wrong = cli.start("node", "--name", "d@127.0.0.1", "--cookie", "OTHER", "--connect", "a@127.0.0.1")
    assert wrong.wait() == 1
    assert "cannot connect to a@127.0.0.1" in wrong.stderr


def test_exit_on_stdin_close(cli: Cli) -> None:
    node, _ = cli.node("n@127.0.0.1", "--exit-on-stdin-close")
    assert node.proc.poll() is None
    node.close_stdin()
    assert node.wait() == 0


def test_rpc_errors(cli: Cli) -> None:
    cli.node("n@127.0.0.1")

    unknown = cli.rpc("nobody@127.0.0.1", "operator:add", "1", "2")
    assert unknown.returncode == 1
    assert "node nobody@127.0.0.1 cannot be reached" in unknown.stderr

    raised = cli.rpc("n@127.0.0.1", "operator:truediv", "1", "0")
    assert raised.returncode == 1
    assert raised.stdout == ""
    assert "ZeroDivisionError: division by zero" in raised.stderr
    assert "Traceback" in raised.stderr  # the remote one

    missing = cli.rpc("n@127.0.0.1", "no_such_module:f")
    assert missing.returncode == 1
    assert "ModuleNotFoundError" in missing.stderr

    slow = cli.run("rpc", "n@127.0.0.1", "asyncio:sleep", "5", "--cookie", COOKIE, "--timeout", "0.3")
    assert slow.returncode == 1
    assert "did not return within 0.3s" in slow.stderr

    wrong_cookie = cli.run("rpc", "n@127.0.0.1", "operator:add", "1", "2", "--cookie", "WRONG")
    assert wrong_cookie.returncode == 1
    assert "cannot be reached" in wrong_cookie.stderr


def test_connect_failures_name_their_cause(cli: Cli) -> None:
    cli.node("n@127.0.0.1")

    wrong_cookie = cli.run("rpc", "n@127.0.0.1", "operator:add", "1", "2", "--cookie", "WRONG")
    assert wrong_cookie.returncode == 1
    assert "node n@127.0.0.1 cannot be reached: cookie refused by peer" in wrong_cookie.stderr

    unknown = cli.rpc("nobody@127.0.0.1", "operator:add", "1", "2")
    assert unknown.returncode == 1
    assert "not registered with the port mapper" in unknown.stderr

    wrong = cli.start("node", "--name", "d@127.0.0.1", "--cookie", "OTHER", "--connect", "n@127.0.0.1")
    assert wrong.wait() == 1
    assert "cannot connect to n@127.0.0.1: cookie refused by peer" in wrong.stderr

    bad = cli.start("node", "--name", "c@127.0.0.1", "--cookie", COOKIE, "--connect", "nobody@127.0.0.1")
    assert bad.wait() == 1
    assert "cannot connect to nobody@127.0.0.1: node nobody@127.0.0.1 is not registered" in bad.stderr


def test_bad_usage_is_told_plainly(cli: Cli) -> None:
    version = cli.run("--version")
    assert (version.returncode, version.stdout) == (0, f"pybeam {pybeam.__version__}\n"), version.stderr

    ticktime = cli.run("node", "--name", "n@127.0.0.1", "--ticktime", "abc")
    assert ticktime.returncode == 2
    assert "--ticktime: must be a number of seconds, got 'abc'" in ticktime.stderr
    assert "_positive" not in ticktime.stderr
    for bad in ("0", "-1", "nan", "inf"):
        assert cli.run("rpc", "n@127.0.0.1", "operator:add", "--timeout", bad).returncode == 2

    # The target's name is blamed, not the calling node's.
    target = cli.rpc("a", "operator:add", "1", "2")
    assert target.returncode == 1
    assert "target node 'a' is not a valid node name" in target.stderr

    # A function not written module:function is refused here, before any node is reached.
    dotted = cli.rpc("nobody@127.0.0.1", "operator.add", "1", "2")
    assert dotted.returncode == 1
    assert "a function is named 'module:function', got 'operator.add'" in dotted.stderr
    assert "cannot be reached" not in dotted.stderr


def test_a_blocking_function_is_not_said_not_to_start(cli: Cli) -> None:
    cli.node("n@127.0.0.1")
    blocked = cli.run("rpc", "n@127.0.0.1", "time:sleep", "3", "--cookie", COOKIE, "--timeout", "0.5")
    assert blocked.returncode == 1
    assert "did not start" not in blocked.stderr
    assert "time:sleep on n@127.0.0.1" in blocked.stderr
    assert "within 0.5s" in blocked.stderr


def test_node_imports_modules_of_the_working_directory(cli: Cli, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_service.py").write_text("def hello(who):\n    return f'hello {who}'\n")
    # -P: no working directory on sys.path, as when run through the `pybeam` script.
    node = cli.start("node", "--name", "n@127.0.0.1", "--cookie", COOKIE, cwd=project, flags=["-P"])
    node.wait_line(r"^pybeam node n@127\.0\.0\.1 up")
    result = cli.rpc("n@127.0.0.1", "my_service:hello", "world")
    assert (result.returncode, result.stdout) == (0, "'hello world'\n"), result.stderr


def test_names_without_a_port_mapper(cli: Cli) -> None:
    result = cli.run("names")
    assert result.returncode == 1
    assert "no port mapper" in result.stderr


def test_epmd_standalone(cli: Cli) -> None:
    mapper = cli.start("epmd", "--port", str(cli.epmd_port))
    empty = None
    for _ in range(100):  # until it listens
        empty = cli.run("names")
        if empty.returncode == 0:
            break
    assert empty is not None and (empty.returncode, empty.stdout) == (0, ""), empty and empty.stderr
    node, port = cli.node("n@127.0.0.1")
    assert f"n {port}" in cli.run("names").stdout.splitlines()
    node.proc.send_signal(signal.SIGTERM)
    assert node.wait() == 0
    mapper.proc.send_signal(signal.SIGTERM)
    assert mapper.wait() == 0


def test_shell(cli: Cli) -> None:
    cli.node("o@127.0.0.1")
    shell, _ = cli.node("s@127.0.0.1", "--shell")
    assert shell.proc.stdin is not None
    shell.proc.stdin.write(
        "import asyncio\n"
        "print(pybeam.node_name())\n"
        "print(await pybeam.ping('o@127.0.0.1'))\n"
        "me = pybeam.self()\n"
        "_ = pybeam.send(me, 'hi')\n"
        "print('got', await pybeam.receive(timeout=1))\n"
        "print('same pid', pybeam.self() == me)\n"
        "print('rpc', await pybeam.rpc.call('o@127.0.0.1', 'operator:add', 2, 3))\n"
        "print('nodes', pybeam.nodes())\n"
        "async def f(x):\n"
        "    await asyncio.sleep(0)\n"
        "    return x * 2\n"
        "\n"
        "print('f', await f(21))\n"
        "1 / 0\n"
        "print('still here', pybeam.self() == me)\n"
    )
    shell.close_stdin()  # EOF: the shell ends and stops the node
    assert shell.wait() == 0
    out = shell.stdout.splitlines()
    assert out[1:] == [
        "s@127.0.0.1",
        "pong",
        "got hi",
        "same pid True",
        "rpc 5",
        "nodes ['o@127.0.0.1']",
        "f 42",
        "still here True",
    ]
    assert "ZeroDivisionError: division by zero" in shell.stderr
    assert 'File "<console>"' in shell.stderr


def test_shell_exit_and_a_dying_shell_process(cli: Cli) -> None:
    shell, _ = cli.node("s@127.0.0.1", "--shell")
    assert shell.proc.stdin is not None
    shell.proc.stdin.write(
        "first = pybeam.self()\n"
        "pybeam.exit('bye')\n"
        "print('new pid', pybeam.self() != first)\n"
        "exit()\n"
        "print('not run')\n"
    )
    shell.proc.stdin.flush()
    assert shell.wait() == 0  # exit() stops the node, stdin still open
    assert shell.stdout.splitlines()[1:] == ["new pid True"]
    assert "shell process exited with reason 'bye'" in shell.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(cli: Cli) -> None:
    # As `pybeam processes N --json | head -1`: the pipe's reader is gone before
    # the command writes. A Unix tool stops quietly, with no traceback.
    cli.node("a@127.0.0.1")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pybeam", "processes", "a@127.0.0.1", "--json", "--cookie", COOKIE],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=TIMEOUT,
            env=cli.env,
            stdin=subprocess.DEVNULL,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert result.stderr == b""

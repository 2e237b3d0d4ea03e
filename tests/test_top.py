"""``pybeam top NODE``: a live node's processes and connections, drawn with rich."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pybeam.terms import Pid
from pybeam.top import SORT_KEYS, Frame, next_sort
from test_cli import COOKIE, TIMEOUT, Cli

SERVICE = '''
import asyncio

import pybeam


async def _keeper():
    await pybeam.receive("stop")  # a selective receive: other messages stay queued


async def _busy():
    while True:
        await asyncio.sleep(0.01)


def start():
    """A registered process with three messages queued, and a busy one."""
    pid = pybeam.spawn(_keeper)
    pybeam.register("keeper", pid)
    for _ in range(3):
        pybeam.send(pid, "pending")
    pybeam.register("busy", pybeam.spawn(_busy))
    return "ok"
'''


def _service_node(cli: Cli, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_service.py").write_text(SERVICE)
    node = cli.start("node", "--name", "n@127.0.0.1", "--cookie", COOKIE, cwd=project)
    node.wait_line(r"^pybeam node n@127\.0\.0\.1 up")
    assert cli.rpc("n@127.0.0.1", "my_service:start").returncode == 0


def test_top_once_shows_a_registered_process_and_its_mailbox(cli: Cli, tmp_path: Path) -> None:
    _service_node(cli, tmp_path)
    result = cli.run("top", "n@127.0.0.1", "--once", "--cookie", COOKIE)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # The service's 3 processes (2 registered), and the kernel's 4 (3 registered:
    # kernel_sup, global_name_server, pg).
    assert lines[0].split() == [
        "node",
        "n@127.0.0.1",
        "processes",
        "7",
        "registered",
        "5",
        "connections",
        "1",
    ]
    header = next(line for line in lines if line.startswith("PID"))
    assert header.split() == [
        "PID", "NAME", "INITIAL", "CALL", "STATUS", "MSGS", "MEMORY", "LINKS", "MONITORS", "REDS", "ACTIVITY*",
    ]  # fmt: skip
    (keeper,) = [line for line in lines if " keeper " in line]
    # pid, name, call, status, 3 messages, memory in bytes or KiB, no links, no monitors, reductions, no activity yet
    assert re.match(
        r"<n@127\.0\.0\.1\.\d+\.\d+> +keeper +my_service:_keeper +waiting +3 +[\d.]+ (B|KiB) +0 +0/0 +\d+ +-$",
        keeper,
    ), keeper
    # The top's own hidden node is the one connection, with its traffic and heartbeat figures:
    # it has sent the node something (the call), and the node heard from it just now.
    (conn,) = [line for line in lines if line.startswith("top_")]
    assert re.match(
        r"top_\w+@127\.0\.0\.1 +yes +[\d.]+ (B|KiB) +[1-9][\d.]* (B|KiB) +[\d.]+ (B|KiB) +[\d.]+s ago +[\d.]+s ago$",
        conn,
    ), conn
    # With no previous frame, activity sorts by reductions: the busy process comes first.
    rows = lines[lines.index(header) + 1 :]
    assert " busy " in rows[0], rows

    by_msgs = cli.run("top", "n@127.0.0.1", "--once", "--sort", "msgs", "--limit", "1", "--cookie", COOKIE)
    assert by_msgs.returncode == 0, by_msgs.stderr
    header = next(line for line in by_msgs.stdout.splitlines() if line.startswith("PID"))
    assert "MSGS*" in header
    assert [line.split()[1] for line in by_msgs.stdout.splitlines()[-1:]] == ["keeper"]


def test_top_errors_are_one_clear_line(cli: Cli) -> None:
    cli.node("n@127.0.0.1")
    unknown = cli.run("top", "nobody@127.0.0.1", "--once", "--cookie", COOKIE)
    assert unknown.returncode == 1
    (line,) = unknown.stderr.strip().splitlines()
    assert line.startswith("pybeam top: node nobody@127.0.0.1 cannot be reached: ")
    assert "not registered with the port mapper" in line
    assert unknown.stdout == ""

    bad_name = cli.run("top", "a", "--once", "--cookie", COOKIE)
    assert bad_name.returncode == 1
    (line,) = bad_name.stderr.strip().splitlines()
    assert "target node 'a' is not a valid node name" in line

    # Without --once too: the first frame is where the error shows.
    live = cli.run("top", "nobody@127.0.0.1", "--cookie", COOKIE)
    assert live.returncode == 1
    assert len(live.stderr.strip().splitlines()) == 1, live.stderr

    # A limit below 1 is a usage error, not a silently cut table ([:-1] dropped the last row).
    for limit in ("0", "-1", "x"):
        bad = cli.run("top", "n@127.0.0.1", "--once", "--limit", limit, "--cookie", COOKIE)
        assert bad.returncode == 2, bad.stderr
        assert "--limit: must be" in bad.stderr


class _Terminal:
    """``pybeam top`` on a pseudo-terminal, as a user runs it."""

    def __init__(self, cli: Cli, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pybeam", "top", *args],
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
            env={**cli.env, "COLUMNS": "200", "LINES": "50", "TERM": "xterm"},
            close_fds=True,
        )
        os.close(slave)
        self.seen = b""

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> None:
        """Read the terminal until its output (escape codes removed) matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while not re.search(
            pattern, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.seen.decode(errors="replace"))
        ):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                pytest.fail(
                    f"no {pattern!r} on the terminal; it shows:\n{self.seen.decode(errors='replace')}"
                )
            if select.select([self.master], [], [], min(left, 0.5))[0]:
                with contextlib.suppress(OSError):
                    self.seen += os.read(self.master, 65536)

    def type(self, keys: str) -> None:
        self.seen = b""
        os.write(self.master, keys.encode())

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=TIMEOUT)
        finally:
            # Drain what is left so the child never blocks on a full terminal.
            while select.select([self.master], [], [], 0)[0]:
                try:
                    if not os.read(self.master, 65536):
                        break
                except OSError:
                    break

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        os.close(self.master)


def test_top_refreshes_sorts_on_keys_and_quits(cli: Cli, tmp_path: Path) -> None:
    _service_node(cli, tmp_path)
    term = _Terminal(cli, "n@127.0.0.1", "--cookie", COOKIE, "--interval", "0.3")
    try:
        term.wait_for(r"sorted by activity \(descending\)")
        # After a refresh the busy process shows the reductions it did since the last frame.
        term.wait_for(r" busy +my_service:_busy +running .* \d+ +[1-9]\d*\s")
        term.type(">")  # the next column (wrapping round): pid
        term.wait_for(r"sorted by pid \(ascending\)")
        term.type("r")
        term.wait_for(r"sorted by pid \(descending\)")
        term.type("q")
        assert term.wait() == 0
    finally:
        term.close()


def test_top_stops_on_ctrl_c(cli: Cli, tmp_path: Path) -> None:
    _service_node(cli, tmp_path)
    term = _Terminal(cli, "n@127.0.0.1", "--cookie", COOKIE, "--interval", "0.3")
    try:
        term.wait_for(r"sorted by activity")
        term.proc.send_signal(signal.SIGINT)
        assert term.wait() == 0
        assert term.proc.stderr is not None
        assert term.proc.stderr.read() == b""  # no traceback
    finally:
        term.close()


def _row(pid_id: int, reductions: int, msgs: int = 0, name: str | None = None) -> dict[str, object]:
    return {
        "pid": Pid("n@127.0.0.1", pid_id, 1),
        "registered_name": name,
        "initial_call": "m:f",
        "status": "waiting",
        "message_queue_len": msgs,
        "links": 0,
        "monitors": 0,
        "monitored_by": 0,
        "memory": 500,
        "reductions": reductions,
    }


def test_frame_activity_and_sorting() -> None:
    node = {"node": "n@127.0.0.1", "processes": 3, "registered": 0, "connections": []}
    first = Frame({"node": node, "processes": [_row(1, 10), _row(2, 500), _row(3, 50, msgs=7)]})
    assert [r["pid"].id for r in first.rows()] == [2, 3, 1]  # no activity yet: by reductions
    assert first.activity(first.rows()[0]) is None
    # pid 2 has stopped working, pid 1 has started, pid 4 is new.
    second = Frame(
        {"node": node, "processes": [_row(1, 110), _row(2, 501), _row(3, 60), _row(4, 30)]},
        previous=first.reductions,
    )
    assert [(r["pid"].id, second.activity(r)) for r in second.rows()] == [(1, 100), (4, 30), (3, 10), (2, 1)]
    second.reverse = True
    assert [r["pid"].id for r in second.rows()] == [2, 3, 4, 1]
    second.sort, second.reverse, second.limit = "pid", False, 2
    assert [r["pid"].id for r in second.rows()] == [1, 2]
    assert next_sort("activity", 1) == "pid" and next_sort("pid", -1) == "activity"
    assert set(SORT_KEYS) == {
        "pid",
        "name",
        "call",
        "status",
        "msgs",
        "memory",
        "links",
        "monitors",
        "reds",
        "activity",
    }

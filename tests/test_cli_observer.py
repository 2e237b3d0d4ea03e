"""``pybeam processes NODE``: a live node's processes, read over the distribution."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from pybeam.testing import eventually
from test_cli import COOKIE, TIMEOUT, Cli

SERVICE = '''
import pybeam


async def _keeper():
    await pybeam.receive("stop")  # a selective receive: other messages stay queued


async def _looker(other):
    pybeam.monitor(other)
    pybeam.link(other)
    await pybeam.receive()


def _plain():
    return pybeam.receive()  # a plain function returning an awaitable


def start():
    """A registered process waiting in receive with two messages queued and a
    monitor and a link on it, and a process running a plain function."""
    pid = pybeam.spawn(_keeper)
    pybeam.register("keeper", pid)
    pybeam.spawn(_looker, pid)
    pybeam.spawn(_plain)
    pybeam.send(pid, "pending")
    pybeam.send(pid, "pending")
    return "ok"
'''


def test_processes_lists_a_live_nodes_processes(cli: Cli, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_service.py").write_text(SERVICE)
    node = cli.start("node", "--name", "n@127.0.0.1", "--cookie", COOKIE, cwd=project)
    node.wait_line(r"^pybeam node n@127\.0\.0\.1 up")
    assert cli.rpc("n@127.0.0.1", "my_service:start").returncode == 0

    as_json = cli.run("processes", "n@127.0.0.1", "--json", "--cookie", COOKIE)
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    keeper = [row for row in rows if row["registered_name"] == "keeper"]
    assert len(keeper) == 1, rows
    (row,) = keeper
    assert row["initial_call"] == "my_service:_keeper"
    assert (row["monitored_by"], row["links"]) == (1, 1)
    assert row["status"] == "waiting"
    assert row["message_queue_len"] == 2
    assert row["pid"].startswith("<n@127.0.0.1.")
    looker = [r for r in rows if r["initial_call"] == "my_service:_looker"]
    assert len(looker) == 1, rows
    assert (looker[0]["monitors"], looker[0]["links"], looker[0]["status"]) == (1, 1, "waiting")
    assert [r["registered_name"] for r in rows if r["initial_call"] == "my_service:_plain"] == [None], rows

    table = cli.run("processes", "n@127.0.0.1", "--cookie", COOKIE)
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["PID", "NAME", "INITIAL", "CALL", "STATUS", "MSGS", "LINKS", "MONITORS"]
    assert any("keeper" in line and "my_service:_keeper" in line for line in lines), table.stdout


def test_processes_errors_are_one_clear_line(cli: Cli) -> None:
    cli.node("n@127.0.0.1")
    unknown = cli.run("processes", "nobody@127.0.0.1", "--cookie", COOKIE)
    assert unknown.returncode == 1
    (line,) = unknown.stderr.strip().splitlines()
    assert line.startswith("pybeam processes: node nobody@127.0.0.1 cannot be reached: ")
    assert "not registered with the port mapper" in line

    bad_name = cli.run("processes", "a", "--cookie", COOKIE)
    assert bad_name.returncode == 1
    assert "target node 'a' is not a valid node name" in bad_name.stderr

    wrong_cookie = cli.run("processes", "n@127.0.0.1", "--cookie", "WRONG")
    assert wrong_cookie.returncode == 1
    assert "cookie refused by peer" in wrong_cookie.stderr


def test_remsh_runs_statements_in_a_process_of_the_node(cli: Cli) -> None:
    node, _ = cli.node("n@127.0.0.1")
    script = "\n".join(
        [
            "x = 21",
            "x * 2",
            "pybeam.node_name()",
            "me = pybeam.self()",
            "pybeam.self() == me",  # the same session process across statements
            "await asyncio.sleep(0)",
            "def f(y):",
            "    return y + x",
            "",
            "f(1)",
            "print('printed', me.node)",
            "1/0",
            "pybeam.exit('bye')",
            "pybeam.self() == me",  # a new session process
            "'still here'",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-m", "pybeam", "remsh", "n@127.0.0.1", "--cookie", COOKIE],
        input=script + "\n",
        capture_output=True,
        text=True,
        env=cli.env,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "42",
        "'n@127.0.0.1'",
        "True",
        "22",
        "printed n@127.0.0.1",
        "Traceback (most recent call last):",
        '  File "<remsh>", line 1, in <module>',
        "ZeroDivisionError: division by zero",
        "** (EXIT) the shell process exited with reason 'bye'",
        "False",
        "'still here'",
    ], result.stderr
    assert node.proc.poll() is None  # the node goes on
    # Leaving the shell ended its session process.
    listed = cli.run("processes", "n@127.0.0.1", "--json", "--cookie", COOKIE)
    assert listed.returncode == 0, listed.stderr
    assert [r for r in json.loads(listed.stdout) if r["initial_call"] == "pybeam.remsh:_session"] == []

    unknown = cli.run("remsh", "nobody@127.0.0.1", "--cookie", COOKIE)
    assert unknown.returncode == 1
    assert "pybeam remsh: node nobody@127.0.0.1 cannot be reached" in unknown.stderr


def _sessions(cli: Cli) -> list[dict[str, object]]:
    listed = cli.run("processes", "n@127.0.0.1", "--json", "--cookie", COOKIE)
    assert listed.returncode == 0, listed.stderr
    return [r for r in json.loads(listed.stdout) if r["initial_call"] == "pybeam.remsh:_session"]


def test_a_killed_remsh_leaves_no_shell_process_behind(cli: Cli) -> None:
    cli.node("n@127.0.0.1")
    remsh = cli.start("remsh", "n@127.0.0.1", "--cookie", COOKIE)
    assert remsh.proc.stdin is not None
    remsh.proc.stdin.write("'ready'\n")
    remsh.proc.stdin.flush()
    remsh.wait_line(r"^'ready'$")
    assert len(_sessions(cli)) == 1
    remsh.proc.kill()
    remsh.wait()
    asyncio.run(eventually(lambda: _sessions(cli) == [], timeout=TIMEOUT, what="the session ended"))

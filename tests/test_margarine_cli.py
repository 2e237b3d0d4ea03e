"""``python -m examples.margarine``: a cluster that serves, stops on Ctrl-C or SIGTERM
and leaves nothing behind; and its errors."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pybeam.testing import free_port, processes_using_epmd

ROOT = Path(__file__).resolve().parent.parent


def request(method: str, url: str, body: str | None = None) -> tuple[int, str, str | None]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        headers = {"content-type": "application/x-www-form-urlencoded"} if body else {}
        conn.request(method, parts.path or "/", body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode(), r.getheader("location")
    finally:
        conn.close()


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_the_cluster_serves_then_ctrl_c_stops_every_node_and_redis(how: signal.Signals) -> None:
    epmd_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.margarine", "--nodes", "2", "--cache", "sharded"],
        cwd=ROOT,
        env=dict(os.environ, PYBEAM_EPMD_PORT=str(epmd_port)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("Ctrl-C"):
            line = proc.stdout.readline()
            assert line, f"exited early: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line.rstrip("\n"))
        out = "\n".join(lines)
        urls = re.findall(r"^  \S+@127\.0\.0\.1  (http://\S+/)$", out, re.M)
        assert len(urls) == 2, out
        assert f"curl -i -d url=https://elixir-lang.org {urls[0]}" in out
        redis_port = int(re.search(r"Redis redis://127\.0\.0\.1:(\d+)/0 \(private", out).group(1))  # type: ignore[union-attr]
        status, code, location = request("POST", urls[0], "url=https://elixir-lang.org")
        assert (status, location) == (201, urls[0] + code)
        assert request("GET", urls[1] + code) == (302, "https://elixir-lang.org", "https://elixir-lang.org")
        assert len(processes_using_epmd(epmd_port)) >= 2

        proc.send_signal(how)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while (processes_using_epmd(epmd_port) or answers(redis_port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_using_epmd(epmd_port) == []
        assert not answers(redis_port)
        assert not any(answers(urlsplit(u).port or 0) for u in urls)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.margarine", *args],
        cwd=ROOT,
        env=dict(os.environ, PYBEAM_EPMD_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_errors_are_one_line_and_leave_nothing() -> None:
    done = run_cli("--nodes", "1", "--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 1
    assert done.stderr.startswith("margarine: cannot reach Redis at redis://127.0.0.1:")
    assert run_cli("--nodes", "0").returncode == 2
    assert run_cli("--cache", "everywhere").returncode == 2


def test_a_taken_base_port_is_one_line_and_leaves_nothing() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        epmd_port = free_port()
        done = subprocess.run(
            [sys.executable, "-m", "examples.margarine", "--nodes", "1", "--base-port", str(port)],
            cwd=ROOT,
            env=dict(os.environ, PYBEAM_EPMD_PORT=str(epmd_port)),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 1
    assert re.fullmatch(
        rf"margarine: node margarine1_\w+@127\.0\.0\.1 cannot serve on port {port}: address already in use\n",
        done.stderr,
    ), done.stderr
    assert processes_using_epmd(epmd_port) == []

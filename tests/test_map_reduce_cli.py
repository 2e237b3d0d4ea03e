"""``python -m examples.map_reduce``: a normal run, a node killed halfway, and the errors."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from examples.redis_server import RedisServer
from pybeam.testing import free_port, processes_using_epmd

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, epmd_port: int | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYBEAM_EPMD_PORT=str(epmd_port or free_port()))
    return subprocess.run(
        [sys.executable, "-m", "examples.map_reduce", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    rnd = random.Random(3)
    words = ["the", "The", "and", "of", "Straße", "élan", "日本", "x", "y", "z"]
    path = tmp_path / "text.txt"
    path.write_text(
        "\n".join(" ".join(rnd.choice(words) for _ in range(9)) for _ in range(3000)), encoding="utf-8"
    )
    return path


def test_wordcount_prints_the_top_words_and_leaves_nothing_behind(
    text_file: Path, redis_server: RedisServer
) -> None:
    port = free_port()
    done = run_cli(
        "wordcount", str(text_file), "--nodes", "2", "--top", "4", "--redis", redis_server.url, epmd_port=port
    )
    assert done.returncode == 0, done.stderr
    counts = Counter(text_file.read_text(encoding="utf-8").split())
    expected = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[:4]
    assert done.stdout.splitlines() == [f"{w} {c}" for w, c in expected]
    assert "reduce 5/5" in done.stderr  # the progress bar
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.keys("mr:*") == []
    assert processes_using_epmd(port) == []


def test_identity_with_a_node_killed_halfway_gets_every_line_back(tmp_path: Path) -> None:
    path = tmp_path / "numbers.txt"
    path.write_text("".join(f"{i}\n" for i in range(20_000)))
    # No --redis: the command starts its own, and stops it.
    port = free_port()
    done = run_cli("identity", str(path), "--nodes", "2", "--kill-a-node", epmd_port=port)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "every line came back: 20000 distinct lines\n"
    assert "(SIGKILL) halfway" in done.stderr
    assert processes_using_epmd(port) == []  # neither the nodes nor the redis-server (same environment)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["wordcount", "{missing}"], "map_reduce: cannot read {missing}: No such file or directory"),
        (["wordcount", "{dir}"], "map_reduce: cannot read {dir}: Is a directory"),
        (["identity", "{binary}"], "map_reduce: {binary} is not UTF-8 text (invalid start byte at byte 0)"),
        (["wordcount", "{text}", "--nodes", "0"], "map_reduce: --nodes must be at least 1, got 0"),
        (["wordcount", "{text}", "--top", "0"], "map_reduce: --top must be at least 1, got 0"),
        (
            ["wordcount", "{text}", "--kill-a-node", "--nodes", "1"],
            "map_reduce: --kill-a-node needs --nodes 2 or more",
        ),
        (["wordcount", "{text}", "--redis", "http://x"], "map_reduce: bad Redis URL 'http://x': "),
        (["wordcount", "{text}", "--redis", "{closed}"], "map_reduce: cannot reach Redis at {closed}: "),
    ],
)
def test_errors_are_one_line_and_exit_1(
    tmp_path: Path, text_file: Path, args: list[str], message: str
) -> None:
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    names = {
        "missing": str(tmp_path / "missing.txt"),
        "dir": str(tmp_path),
        "binary": str(tmp_path / "binary"),
        "text": str(text_file),
        "closed": f"redis://127.0.0.1:{free_port()}/0",
    }
    port = free_port()
    done = run_cli(*(a.format(**names) for a in args), epmd_port=port)
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(message.format(**names))
    assert processes_using_epmd(port) == []


@pytest.mark.parametrize("args", [[], ["wordcount"], ["wordcount", "f", "--nodes", "two"], ["count", "f"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert "usage:" in done.stderr
    assert "Traceback" not in done.stderr


def start_cli_and_wait_for_progress(path: Path, port: int) -> subprocess.Popen[bytes]:
    """Start a word count, return once its progress bar shows a map job done."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.map_reduce",
            "wordcount",
            str(path),
            "--nodes",
            "1",
            "--workers",
            "1",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYBEAM_EPMD_PORT=str(port)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen = b""
    while b"map 1/" not in seen:
        data = os.read(proc.stderr.fileno(), 4096)
        assert data, f"the command ended before any progress: {seen.decode(errors='replace')}"
        seen += data
    return proc


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGKILL"])
def test_interrupted_or_killed_in_the_middle_leaves_no_process_behind(
    tmp_path: Path, signal_name: str
) -> None:
    path = tmp_path / "big.txt"
    path.write_text("alpha beta gamma delta\n" * 800_000)  # 18 MB: a few seconds of work
    port = free_port()
    proc = start_cli_and_wait_for_progress(path, port)
    assert processes_using_epmd(port)  # the node and the private redis-server run
    proc.send_signal(getattr(signal, signal_name))
    _, err = proc.communicate(timeout=60)
    if signal_name == "SIGINT":
        assert proc.returncode == 130
        assert err.decode().splitlines()[-1].endswith("map_reduce: interrupted")
        assert b"Traceback" not in err
    # A SIGKILLed parent runs nothing: its children stop by themselves (the
    # nodes when their stdin closes, redis-server by PR_SET_PDEATHSIG).
    deadline = time.monotonic() + 20
    while processes_using_epmd(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_using_epmd(port) == []

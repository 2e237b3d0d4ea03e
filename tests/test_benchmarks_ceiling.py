"""``python -m benchmarks.compare.ceiling``: the run-queue ceiling does its round
trips, and every line is reported. Figures are not checked (no timing targets in tests)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.compare.ceiling import run_queue

ROOT = Path(__file__).resolve().parent.parent


def test_the_run_queue_does_every_round_trip() -> None:
    assert run_queue(1_000) > 0
    assert run_queue(1) > 0


def test_ceiling_reports_every_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare.ceiling", "1", "500"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    names = {line.split("  ")[0].strip() for line in proc.stdout.splitlines()}
    assert {"pybeam", "asyncio", "run queue"} <= names, proc.stdout
    if importlib.util.find_spec("thespian") is not None:
        assert "thespian" in names and "10x Thespian:" in proc.stdout, proc.stdout

"""``python -m benchmarks.dist KIND N``: each kind runs with both nodes in one
process and reports its CPU per operation; a bad kind is a usage error.
Figures are not checked (no timing targets in tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pybeam.testing import free_port

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.dist", *args],
        cwd=ROOT,
        env=dict(os.environ, PYBEAM_EPMD_PORT=str(free_port())),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("kind", ["rtt", "one_way", "rpc"])
def test_each_kind_reports_its_cpu_per_operation(kind: str) -> None:
    proc = _run(kind, "50")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{kind}: ") and "us CPU per operation" in proc.stdout, proc.stdout


def test_an_unknown_kind_is_a_usage_error() -> None:
    proc = _run("nonsense", "5")
    assert proc.returncode != 0
    assert "usage" in proc.stderr

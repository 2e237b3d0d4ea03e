"""``python -m benchmarks.rpc_cost``: every row is reported and the run leaves
no node behind. Figures are not checked (no timing targets in tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pybeam.testing import free_port, processes_using_epmd

ROOT = Path(__file__).resolve().parent.parent


def test_rpc_cost_reports_every_row_and_leaves_nothing() -> None:
    epmd_port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.rpc_cost", "--calls", "50", "--rounds", "1"],
        cwd=ROOT,
        env=dict(os.environ, PYBEAM_EPMD_PORT=str(epmd_port)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("  ")[0] for line in proc.stdout.splitlines()}
    assert {"round trip", "spawn_request", "rpc.call, timeout=None", "rpc.call"} <= rows, proc.stdout
    deadline = time.monotonic() + 10
    while processes_using_epmd(epmd_port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_using_epmd(epmd_port) == []

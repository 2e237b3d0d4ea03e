"""``python -m benchmarks scale --quick``: every part reports its rows, and the
run leaves no node behind. Figures are not checked (no timing targets in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pybeam.testing import free_port, processes_using_epmd

ROOT = Path(__file__).resolve().parent.parent


def test_quick_scale_run_reports_every_part_and_leaves_nothing(tmp_path: Path) -> None:
    epmd_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "scale", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=dict(os.environ, PYBEAM_EPMD_PORT=str(epmd_port)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    report = (tmp_path / "scale.md").read_text()
    assert report.rstrip() == out.rstrip()
    assert "load average" in report
    lines = report.splitlines()
    # One cluster row (2 nodes), every node saw the SIGKILLed and the SIGSTOPped one.
    (cluster,) = [line for line in lines if line.startswith("| 2 |")]
    assert "failed" not in cluster and cluster.count("3/3") == 1 and cluster.count("2/2") == 1, cluster
    for variant in ("freeze", "thresholds", "python", "gc-off"):
        (row,) = [line for line in lines if line.startswith(f"| {variant} | 10,000 |")]
        assert "failed" not in row
    (hol,) = [line for line in lines if line.startswith("| 5 MB |")]
    assert "failed" not in hol and "nan" not in hol, hol
    figures = json.loads((tmp_path / "scale.json").read_text())
    assert figures["hol"]["during_n"] > 0
    assert [s["live"] for s in figures["procs"][0]["steps"]] == [10_000]
    assert "![scale_cluster.png]" in report or "matplotlib is not importable" in report
    deadline = time.monotonic() + 10
    while processes_using_epmd(epmd_port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_using_epmd(epmd_port) == []

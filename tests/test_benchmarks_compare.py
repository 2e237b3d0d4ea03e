"""`python -m benchmarks compare` end to end, on tiny sizes: every row of the
report is there, with a figure where the peer has the feature and "n/a" where
it has not. No timing is asserted: the figures are whatever this machine gives."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.compare.workloads import BY_KEY, rows

ROOT = Path(__file__).resolve().parent.parent


def _table(text: str) -> dict[str, list[str]]:
    """The figures table: row title -> the peers' cells."""
    rows: dict[str, list[str]] = {}
    for line in text.split("\n## ")[0].splitlines():  # the first table, before any section
        if line.startswith("| ") and not line.startswith("| workload") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[2:]
    return rows


def test_compare_quick_writes_every_row(tmp_path: Path) -> None:
    erlang = all(shutil.which(t) for t in ("erl", "erlc", "epmd"))
    pykka = importlib.util.find_spec("pykka") is not None
    peers = ["pybeam", "pybeam_off", "asyncio", "pykka"] + (["erlang"] if erlang else [])
    out = tmp_path / "report.md"
    argv = [sys.executable, "-m", "benchmarks", "compare", "--quick", "--runs", "1", "--scale", "0.02"]
    argv += ["--peers", ",".join(peers), "--live", "0,2000", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    table = _table(text)
    assert "Load (1-minute average)" in text
    header = next(line for line in text.splitlines() if line.startswith("| workload | unit"))
    assert [c.strip() for c in header.strip("|").split("|")][2:] == [
        {
            "pybeam": "pybeam",
            "pybeam_off": "pybeam, busy wait off",
            "asyncio": "bare asyncio",
            "pykka": "Pykka",
            "erlang": "Erlang/OTP",
        }[p]
        for p in peers
    ]
    for row in rows((0, 2000)):
        assert row.title in table, f"missing row {row.title!r}"
        cells = dict(zip(peers, table[row.title], strict=True))
        has = BY_KEY[row.workload].peers
        # pybeam has every feature: a figure, never n/a or failed.
        assert cells["pybeam"][0].isdigit(), (row.title, cells)
        assert "pybeam" in has
        # The bare floor has no monitors; Pykka has no remoting.
        assert ("asyncio" in has) == (row.workload != "fanout")
        assert ("pykka" in has) == (row.workload in ("one_way", "ping_pong", "spawn_exit", "memory"))
        # Busy waiting is about waiting for another OS process: network rows only.
        assert ("pybeam_off" in has) == (row.workload in ("cross_one_way", "cross_rtt", "rpc"))
        for peer in ("pybeam_off", "asyncio", "pykka", "erlang"):
            if peer not in cells:
                continue
            if peer not in has:
                assert cells[peer] == "n/a", (row.title, cells)
            elif peer == "pykka" and not pykka:
                assert cells[peer] == "not installed", (row.title, cells)
            else:
                assert cells[peer][0].isdigit(), (row.title, cells)
    assert "## pybeam's advantage over each peer" in text
    assert "## Goals (issues 11 and 15)" in text
    assert "## The local hot path by CPU time" in text and "ping-pong        cpu" in text
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "report" / "ratios.png").stat().st_size > 1000
        assert "![ratios.png](report/ratios.png)" in text
        assert (tmp_path / "report" / "spawn_scale.png").stat().st_size > 1000


def test_hot_path_prints_both_clocks_for_every_workload() -> None:
    import pybeam
    from benchmarks.compare import hot_path

    lines = pybeam.run(hot_path.main, 1, 0.01)
    names = [name for name, *_ in hot_path.PAIRS]
    assert len(lines) == 1 + 2 * len(names)
    for line, (name, clock) in zip(lines[1:], [(n, c) for n in names for c in ("wall", "cpu")], strict=True):
        assert line.startswith(name) and f" {clock} " in line, line
        assert "x (" in line  # a ratio with its spread


def test_instructions_child_runs_every_workload_on_both_sides() -> None:
    from benchmarks.compare import hot_path, instructions

    for name, *_ in hot_path.PAIRS:
        for side in ("pybeam", "asyncio"):
            instructions._child(hot_path._slug(name), side, 100)


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instructions_counts_spawn_and_exit_beside_the_floor() -> None:
    from benchmarks.compare import instructions

    lines = instructions.main(["--only", "spawn-exit", "--n", "500"])
    assert len(lines) == 2 and lines[1].startswith("spawn-exit"), lines
    mine, floor = (float(x.replace(",", "")) for x in lines[1].split()[1:3])
    assert mine > 0 and floor > 0 and lines[1].endswith("x")

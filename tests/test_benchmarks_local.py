"""``benchmarks/local.py``'s newer workloads do all their work and report a
rate. Figures are not checked (no timing targets in tests)."""

from __future__ import annotations

import pybeam
from benchmarks import local


def test_selective_arrivals_behind_a_backlog_completes() -> None:
    assert pybeam.run(local.selective_arrivals, 1_000, 200) > 0


def test_gen_server_calls_completes_and_stops_its_server() -> None:
    async def main() -> tuple[float, int]:
        pybeam.self()  # this task is a process from here on, before the count
        before = len(pybeam.processes())
        rate = await local.gen_server_calls(200)
        return rate, len(pybeam.processes()) - before

    rate, left = pybeam.run(main)
    assert rate > 0
    assert left == 0

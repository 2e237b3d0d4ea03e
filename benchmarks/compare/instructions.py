"""The local hot path counted in instructions, beside the bare-asyncio floor:
``python -m benchmarks.compare.instructions [--only WORKLOAD] [--n N]``.

Wall and CPU time move by 10% or more on a shared machine; the instructions
a workload executes do not. Each workload of :mod:`benchmarks.compare.hot_path`
(pybeam's and the floor's side) runs under ``valgrind --tool=cachegrind
--cache-sim=no`` twice, with ``N`` and ``2N`` operations after the same warm-up;
the difference of the two counts divided by ``N`` is the cost of one operation
(start-up and warm-up cancel out). Prints instructions per operation for each
side and pybeam's ratio to the floor (floor / pybeam: the rate ratio these
counts predict). Needs valgrind (``apt-get install valgrind``); runs take
about a minute per workload. The figures are for the interpreter that runs
this (uvloop when installed, as pybeam uses).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pybeam

from . import hot_path

#: Operations of the warm-up both runs share (first-time costs: imports, caches).
WARM_UP = 2_048


def _child(workload: str, side: str, n: int) -> None:
    """Run one side of one workload: the warm-up, then ``n`` operations."""
    pair = next(p for p in hot_path.PAIRS if hot_path._slug(p[0]) == workload)
    fn = pair[1] if side == "pybeam" else pair[2]

    async def main() -> None:
        await fn(time.perf_counter, WARM_UP)
        await fn(time.perf_counter, n)

    if side == "pybeam":
        pybeam.run(main)
    else:
        with asyncio.Runner(loop_factory=pybeam.new_event_loop) as runner:
            runner.run(main())


def _count(workload: str, side: str, n: int) -> int:
    """Instructions a child process running ``n`` operations executes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cachegrind.out")
        cmd = [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            f"--cachegrind-out-file={out}",
            sys.executable,
            "-m",
            "benchmarks.compare.instructions",
            "--child",
            workload,
            side,
            str(n),
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as f:
            m = re.search(r"^summary:\s+(\d+)", f.read(), re.MULTILINE)
        if m is None:
            raise RuntimeError(f"no summary in cachegrind's output for {workload} {side}")
        return int(m.group(1))


def per_operation(workload: str, side: str, n: int) -> float:
    """Instructions per operation of one side of a workload."""
    return (_count(workload, side, 2 * n) - _count(workload, side, n)) / n


def main(argv: list[str]) -> list[str]:
    """The table's lines."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.compare.instructions", description=(__doc__ or "").split("\n\n")[1]
    )
    slugs = [hot_path._slug(name) for name, *_ in hot_path.PAIRS]
    ap.add_argument("--only", action="append", choices=slugs, help="count only this workload (repeatable)")
    ap.add_argument("--n", type=int, default=20_000, help="operations in the shorter run (default 20,000)")
    ap.add_argument("--child", nargs=3, metavar=("WORKLOAD", "SIDE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        workload, side, n = args.child
        _child(workload, side, int(n))
        return []
    if shutil.which("valgrind") is None:
        ap.error("valgrind is not installed (apt-get install valgrind)")
    if args.n < 1:
        ap.error("N must be >= 1")
    lines = [
        f"{'workload':16} {'pybeam':>10} {'asyncio':>10} {'floor/pybeam':>13}  (instructions per operation)"
    ]
    for slug in args.only or slugs:
        mine = per_operation(slug, "pybeam", args.n)
        floor = per_operation(slug, "asyncio", args.n)
        lines.append(f"{slug:16} {mine:>10,.0f} {floor:>10,.0f} {floor / mine:>12.2f}x")
    return lines


if __name__ == "__main__":
    print(*main(sys.argv[1:]), sep="\n")

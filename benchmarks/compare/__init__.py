"""``python -m benchmarks compare``: the same workloads on pybeam, bare asyncio,
Pykka, Thespian and Erlang/OTP, interleaved run by run, written up with
medians, spreads, ratios and charts in ``docs/benchmarks_compare.md``.

Every measurement runs in a fresh OS process (``erl`` for Erlang), and each
repetition goes round every peer before the next begins (in a rotated order),
so machine noise lands on all peers alike. A peer that lacks a feature gets
"n/a"; a peer that is not installed is named with the way to install it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from . import beam, report
from .workloads import LIVE, LIVE_QUICK, PEERS, WORKLOADS, Workload, size_for

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_OUT = ROOT / "docs" / "benchmarks_compare.md"

INSTALL_PYTHON_PEERS = "pip install -e '.[compare]'"


@dataclass
class Results:
    """Everything a comparison measured, for the report."""

    peers: list[str]
    workloads: list[Workload]
    runs: int
    quick: bool
    scale: float
    #: spawn_scale's numbers of idle processes alive.
    live: tuple[int, ...] = LIVE
    #: (workload, peer) -> one list of values per run that succeeded.
    values: dict[tuple[str, str], list[list[float]]] = field(default_factory=dict)
    #: (workload, peer) -> why a run failed (the last one).
    errors: dict[tuple[str, str], str] = field(default_factory=dict)
    #: peer -> why it could not run, with how to install it.
    unavailable: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    #: hot_path's table (CPU and wall time, one process), if it ran.
    hot_path: list[str] = field(default_factory=list)
    #: 1-minute load average sampled before each measurement.
    loads: list[float] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0


def _missing(peer: str) -> str | None:
    if peer == "erlang":
        return beam.missing()
    if peer in ("pykka", "thespian") and importlib.util.find_spec(peer) is None:
        return f"not installed: {INSTALL_PYTHON_PEERS}"
    return None


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes and 2 runs (unless --runs)")
    p.add_argument("--runs", type=int, help="repetitions of every workload on every peer (default 5)")
    p.add_argument("--only", action="append", metavar="WORKLOAD", help="run only this workload (repeatable)")
    p.add_argument("--peers", help=f"comma-separated subset of {','.join(PEERS)}")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the report (charts go beside it)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one measurement may take")
    p.add_argument(
        "--live",
        help="spawn_scale: comma-separated numbers of idle processes alive while it spawns "
        f"(default {','.join(map(str, LIVE))}; --quick {','.join(map(str, LIVE_QUICK))})",
    )
    args = p.parse_args(argv)
    known = {w.key for w in WORKLOADS}
    for w in args.only or ():
        if w not in known:
            p.error(f"unknown workload {w!r}; one of {', '.join(sorted(known))}")
    peers = args.peers.split(",") if args.peers else list(PEERS)
    for peer in peers:
        if peer not in PEERS:
            p.error(f"unknown peer {peer!r}; one of {', '.join(PEERS)}")
    if "pybeam" not in peers:
        peers.insert(0, "pybeam")  # every ratio is pybeam's
    args.peers = [x for x in PEERS if x in peers]
    args.runs = args.runs or (2 if args.quick else 5)
    try:
        args.live = tuple(int(x) for x in args.live.split(",")) if args.live else None
    except ValueError:
        p.error(f"--live takes numbers separated by commas, not {args.live!r}")
    if args.live is None:
        args.live = LIVE_QUICK if args.quick else LIVE
    return args


class _Bar:
    """tqdm when installed; a plain line per step otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self.bar = None

    def step(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description(label)
        else:
            print(f"[{self.done + 1}/{self.total}] {label}", file=sys.stderr, flush=True)

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _measure(argv: list[str], env: dict[str, str], timeout: float) -> list[float]:
    out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("RESULT "):
            return [float(v) for v in line.split()[1:]]
    tail = (out.stderr.strip() or out.stdout.strip() or f"exit status {out.returncode}").splitlines()
    raise RuntimeError(tail[-1] if tail else f"exit status {out.returncode}")


def _python_env() -> dict[str, str]:
    # The children import this checkout (and whatever extras this process sees).
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def compare(args: argparse.Namespace) -> Results:
    """Run the comparison ``args`` describes."""
    workloads = [w for w in WORKLOADS if not args.only or w.key in args.only]
    res = Results(args.peers, workloads, args.runs, args.quick, args.scale, args.live)
    live = ",".join(map(str, args.live))
    res.started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for peer in args.peers:
        why = _missing(peer)
        if why is not None:
            res.unavailable[peer] = why
    plan = []
    for r in range(args.runs):
        for w in workloads:
            ps = [p for p in args.peers if p in w.peers and p not in res.unavailable]
            k = r % len(ps) if ps else 0
            plan += [(r, w, p) for p in ps[k:] + ps[:k]]  # rotated: no peer always runs first
    res.versions = report.versions(args.peers, res.unavailable)
    py_env = _python_env()
    t0 = time.monotonic()
    with ExitStack() as stack:
        erl = stack.enter_context(beam.Beam()) if any(p == "erlang" for _, _, p in plan) else None
        bar = _Bar(len(plan))
        stack.callback(bar.close)
        for r, w, peer in plan:
            n = size_for(w, peer, quick=args.quick, scale=args.scale)
            bar.step(f"run {r + 1}/{args.runs} {w.key} {peer}")
            res.loads.append(os.getloadavg()[0])
            if peer == "erlang":
                assert erl is not None
                argv, env = erl.command(w.key, n, live if w.key == "spawn_scale" else "")
            else:
                argv = [sys.executable, "-m", "benchmarks.compare.child", peer, w.key, str(n)]
                if w.key == "spawn_scale":
                    argv.append(live)
                env = py_env
            try:
                res.values.setdefault((w.key, peer), []).append(_measure(argv, env, args.timeout))
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                res.errors[(w.key, peer)] = str(e)
            bar.advance()
        if {"pybeam", "asyncio"} <= set(args.peers) and {"one_way", "ping_pong"} & {w.key for w in workloads}:
            bar.step("hot path by CPU time, pybeam and asyncio in one process")
            argv = [sys.executable, "-m", "benchmarks.compare.hot_path", str(args.runs)]
            argv.append(str(args.scale * (0.1 if args.quick else 1.0)))
            try:
                out = subprocess.run(
                    argv, capture_output=True, text=True, env=py_env, cwd=ROOT, timeout=args.timeout
                )
                res.hot_path = out.stdout.strip().splitlines() if out.returncode == 0 else []
                if out.returncode != 0:
                    res.errors[("hot_path", "pybeam")] = (out.stderr.strip().splitlines() or ["failed"])[-1]
            except subprocess.TimeoutExpired as e:
                res.errors[("hot_path", "pybeam")] = str(e)
    res.loads.append(os.getloadavg()[0])
    res.seconds = time.monotonic() - t0
    return res


def main(argv: list[str]) -> int:
    """The command: run, write the report, print its tables."""
    args = _parse(argv)
    for peer, why in ((p, _missing(p)) for p in args.peers):
        if why is not None:
            print(f"{peer}: {why}; its columns will say so", file=sys.stderr)
    res = compare(args)
    text = report.write(res, args.out)
    print(text)
    print(f"written: {args.out}", file=sys.stderr)
    return 0

"""Run every benchmark and print a table: figure, unit, target, met or not.

Usage: ``python -m benchmarks [local] [dist] [ping_pong] [map_reduce] [margarine] [transport]`` (in .venv: ``bash scripts/setup``
first); both sets by default. ``python -m benchmarks compare [--quick]`` runs the side-by-side
comparison with BEAM and the Python actor libraries (see benchmarks/compare/);
``python -m benchmarks scale --help``: how cost grows (benchmarks/scale.py).
Targets are for the project's reference machine (2 cores, uvloop); see
docs/benchmarks.md for the figures measured there.
"""

from __future__ import annotations

import platform
import sys

import pybeam

from . import dist, local, map_reduce, margarine, ping_pong, transport


def _met(unit: str, value: float, target: float) -> str:
    if not target:
        return "-"  # reported, no target
    # Memory and latency are ceilings; every other figure is a floor.
    ok = value <= target if unit in ("bytes", "us", "MB") else value >= target
    return "yes" if ok else "NO"


def main() -> int:
    """Run the benchmarks and print the table."""
    if sys.argv[1:2] == ["compare"]:
        # Side by side with BEAM, Pykka, Thespian and bare asyncio: its own report.
        from . import compare

        return compare.main(sys.argv[2:])
    if sys.argv[1:2] == ["scale"]:  # its own flags and report
        from . import scale

        return scale.main(sys.argv[2:])
    loop = type(pybeam.new_event_loop()).__module__.split(".")[0]
    print(f"python {platform.python_version()} on {platform.machine()}, event loop: {loop}")
    print(f"{'benchmark':35} {'figure':>14} {'unit':15} {'target':>12}  met")
    which = sys.argv[1:] or ["local", "dist", "ping_pong", "map_reduce", "margarine"]
    rows = []
    if "local" in which:
        rows += pybeam.run(local.main)
    if "dist" in which:
        rows += pybeam.run(dist.main)
    if "ping_pong" in which:
        rows += pybeam.run(ping_pong.main)
    if "map_reduce" in which:
        rows += pybeam.run(map_reduce.main)
    if "margarine" in which:
        rows += pybeam.run(margarine.main)
    if "transport" in which:  # TLS and backpressure: only when asked for
        rows += pybeam.run(transport.main)
    for name, value, unit, target in rows:
        shown = f"{target:12,.0f}" if target else f"{'':>12}"
        print(f"{name:35} {value:14,.0f} {unit:15} {shown}  {_met(unit, value, target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark and print a table: figure, unit, target, met or not.

Usage: ``python -m benchmarks`` (after ``bash scripts/setup`` or in .venv).
Targets are for the project's reference machine (2 cores, uvloop); see
docs/benchmarks.md for the figures measured there.
"""

from __future__ import annotations

import platform
import sys

import pybeam

from . import local


def _met(unit: str, value: float, target: float) -> bool:
    # Memory is a ceiling; every other figure is a floor.
    return value <= target if unit == "bytes" else value >= target


def main() -> int:
    """Run the benchmarks and print the table."""
    loop = type(pybeam.new_event_loop()).__module__.split(".")[0]
    print(f"python {platform.python_version()} on {platform.machine()}, event loop: {loop}")
    print(f"{'benchmark':35} {'figure':>14} {'unit':15} {'target':>12}  met")
    rows = pybeam.run(local.main)
    for name, value, unit, target in rows:
        mark = "yes" if _met(unit, value, target) else "NO"
        print(f"{name:35} {value:14,.0f} {unit:15} {target:12,.0f}  {mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

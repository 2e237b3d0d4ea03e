"""Simulated clusters (pybeam.testing.sim) against real ones: schedules per second.

Usage, from the repository root: ``python -m benchmarks.sim [schedules] [pg] [big]``
(all three by default). Prints a table; docs/benchmarks.md has the figures.

- ``schedules``: the G-counter scenario of docs/testing_failures.md
  (tests/sim/test_gcounter.py) under the same random fault schedules, in
  simulation (a fresh 3-node SimCluster each) and on real nodes (a fresh
  3-node LocalCluster each, via ``replay_schedule``): schedules per second.
- ``pg``: the pg/global stateful property test, real-node version
  (tests/test_pg.py, 10 examples) and simulated one
  (tests/sim/test_pg_global_sim.py, 100 examples, node crashes too), each
  run by pytest: examples per second.
- ``big``: a 100-node simulated cluster: wall-clock seconds to form the full
  mesh, and to run 20 virtual seconds after one node crashes.
"""

from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys
import time
from typing import Any

import pybeam
from pybeam.testing import sim
from pybeam.testing.sim import Drop, Freeze, Heal, Kill, Partition, Restart, Step, Wait
from pybeam.testing.sim.replay import replay_schedule

SIM_SCHEDULES = 200
REAL_SCHEDULES = 3
STEPS = 6
NODES = 3
BIG = 100


def random_schedule(rng: random.Random) -> list[Step]:
    """``STEPS`` steps that real nodes can replay too (no delays, no one-way cuts)."""
    out: list[Step] = []
    for _ in range(STEPS):
        kind = rng.choice(["wait", "wait", "partition", "heal", "kill", "restart", "drop", "freeze"])
        node = rng.randrange(NODES)
        seconds = rng.choice([0.5, 1.0, 2.0, 5.0])
        if kind == "wait":
            out.append(Wait(seconds))
        elif kind == "partition":
            out.append(Partition((node,)))
        elif kind == "heal":
            out.append(Heal())
        elif kind == "kill":
            out.append(Kill(node))
        elif kind == "restart":
            out.append(Restart(node))
        elif kind == "drop":
            out.append(Drop(node, (node + 1) % NODES, seconds))
        else:
            out.append(Freeze(node, seconds))
    return out


def schedules_rows() -> list[tuple[str, float, str]]:
    # By name: mypy knows that module as sim.test_gcounter (tests/ has no __init__).
    CounterConverges = importlib.import_module("tests.sim.test_gcounter").CounterConverges

    rng = random.Random(1)
    plans = [random_schedule(rng) for _ in range(SIM_SCHEDULES)]
    failed = {"sim": 0, "real": 0}
    t = time.perf_counter()
    for i, plan in enumerate(plans):
        try:
            sim.run_schedule(CounterConverges, plan, seed=i)
        except AssertionError as e:
            failed["sim"] += 1
            print(f"simulated schedule failed: {e}")
    sim_rate = SIM_SCHEDULES / (time.perf_counter() - t)

    async def real() -> float:
        t = time.perf_counter()
        for plan in plans[:REAL_SCHEDULES]:
            try:
                await replay_schedule(CounterConverges, plan)
            except AssertionError as e:
                failed["real"] += 1
                print(f"real schedule {sim.describe(plan)} failed: {e}")
        return REAL_SCHEDULES / (time.perf_counter() - t)

    name = f"simbench_{os.getpid()}@127.0.0.1"
    real_rate = pybeam.run(real, node=pybeam.Node(name, cookie="simbench", ticktime=1.0))
    return [
        ("G-counter schedules, simulated", sim_rate, "schedules/s"),
        ("G-counter schedules, real nodes", real_rate, "schedules/s"),
        ("simulated / real", sim_rate / real_rate, "x"),
        ("schedules that failed, simulated", failed["sim"], "schedules"),
        ("schedules that failed, real nodes", failed["real"], "schedules"),
    ]


def _pytest_seconds(test: str) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(["src", ".", os.environ.get("PYTHONPATH", "")]))
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        check=True,
        env=env,
        capture_output=True,
    )
    return time.perf_counter() - t


def pg_rows() -> list[tuple[str, float, str]]:
    real = _pytest_seconds("tests/test_pg.py::test_stateful_groups_and_names_under_partitions")
    simulated = _pytest_seconds(
        "tests/sim/test_pg_global_sim.py::test_stateful_groups_and_names_under_partitions_and_crashes_simulated"
    )
    return [
        ("pg/global machine, real (10 examples)", 10 / real, "examples/s"),
        ("pg/global machine, simulated (100)", 100 / simulated, "examples/s"),
        ("simulated / real", (100 / simulated) / (10 / real), "x"),
    ]


def big_rows() -> list[tuple[str, float, str]]:
    figures: dict[str, Any] = {}

    async def main() -> None:
        t = time.perf_counter()
        cluster = sim.SimCluster(BIG, ticktime=10.0)
        await cluster.start()
        figures["mesh"] = time.perf_counter() - t
        figures["connections"] = cluster.net.connections
        assert all(len(cluster.connected(n)) == BIG - 1 for n in cluster.names)
        t = time.perf_counter()
        cluster.kill(cluster.names[0])
        await cluster.sleep(20.0)
        figures["run"] = time.perf_counter() - t
        assert all(len(cluster.connected(n)) == BIG - 2 for n in cluster.names[1:])
        await cluster.stop()

    sim.run(main)
    return [
        (f"{BIG}-node mesh formed", figures["mesh"], "s wall"),
        (f"{BIG}-node connections made", figures["connections"], "connections"),
        (f"{BIG} nodes, crash + 20 virtual s", figures["run"], "s wall"),
    ]


def main() -> int:
    which = sys.argv[1:] or ["schedules", "pg", "big"]
    load = os.getloadavg()[0]
    print(f"load average (1 min) at start: {load:.2f}")
    rows = []
    if "schedules" in which:
        rows += schedules_rows()
    if "pg" in which:
        rows += pg_rows()
    if "big" in which:
        rows += big_rows()
    print(f"{'benchmark':42} {'figure':>12} unit")
    for name, value, unit in rows:
        print(f"{name:42} {value:12,.2f} {unit}")
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

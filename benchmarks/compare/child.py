"""One measurement in a fresh process: ``python -m benchmarks.compare.child PEER WORKLOAD N [LIVE]``
(LIVE: spawn_scale's comma-separated numbers of idle processes).

Prints ``RESULT V [V2]`` as its last line. A fresh process per measurement
keeps one peer's garbage, threads and memory out of the next one's figure.
"""

from __future__ import annotations

import importlib
import os
import sys


def rss() -> int:
    """This process's resident set size, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str]) -> int:
    peer, workload, n = argv[0], argv[1], int(argv[2])
    module = importlib.import_module(f"benchmarks.compare.peer_{peer}")
    if workload == "spawn_scale":
        values = module.run_scale(n, [int(x) for x in argv[3].split(",")])
    else:
        values = module.run(workload, n)
    print("RESULT " + " ".join(f"{float(v):.6f}" for v in values), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

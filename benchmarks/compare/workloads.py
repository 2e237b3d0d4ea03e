"""The workloads `python -m benchmarks compare` runs, the rows they make, and which peer has them."""

from __future__ import annotations

from dataclasses import dataclass

#: Every peer, in the report's column order. pybeam first: the others are compared with it.
PEERS = ("pybeam", "pybeam_off", "asyncio", "pykka", "thespian", "erlang")

PEER_TITLES = {
    "pybeam": "pybeam",
    "pybeam_off": "pybeam, busy wait off",
    "asyncio": "bare asyncio",
    "pykka": "Pykka",
    "thespian": "Thespian",
    "erlang": "Erlang/OTP",
}


@dataclass(frozen=True)
class Workload:
    """One workload: a size (messages, round trips, processes...) per peer kind."""

    key: str
    size: int
    quick: int
    #: Peers that have the feature; the others get "n/a".
    peers: tuple[str, ...]
    #: Divides the size for the thread-based Python actor libraries, which are
    #: 10-100x slower: the figure is a rate, the run should not take minutes.
    actor_divisor: int = 1
    minimum: int = 10


@dataclass(frozen=True)
class Row:
    """One line of the report: one value of one workload."""

    workload: str
    index: int
    title: str
    unit: str
    higher_is_better: bool


LOCAL = ("pybeam", "asyncio", "pykka", "thespian", "erlang")
#: pybeam_off: the network workloads again with busy waiting off (only
#: there: nothing local waits for another OS process).
NETWORK = ("pybeam", "pybeam_off", "asyncio", "erlang")

WORKLOADS = (
    Workload("one_way", 1_000_000, 100_000, LOCAL, actor_divisor=10, minimum=2_048),
    Workload("ping_pong", 200_000, 20_000, LOCAL, actor_divisor=10, minimum=100),
    Workload("spawn_exit", 100_000, 10_000, LOCAL, actor_divisor=50, minimum=2_048),
    Workload("memory", 20_000, 5_000, LOCAL, actor_divisor=10, minimum=100),
    Workload("cross_one_way", 300_000, 30_000, NETWORK, minimum=2_048),
    Workload("cross_rtt", 10_000, 2_000, NETWORK, minimum=100),
    Workload("rpc", 3_000, 1_000, NETWORK, minimum=50),
    # Monitors need a runtime with monitors and a distribution: pybeam and BEAM.
    Workload("fanout", 5_000, 5_000, ("pybeam", "erlang"), minimum=100),
    # Spawn-and-exit of `size` processes while more and more idle ones are alive (LIVE).
    Workload("spawn_scale", 20_000, 5_000, ("pybeam", "asyncio", "erlang"), minimum=1_024),
)

#: Idle processes alive while spawn_scale measures (--live overrides).
LIVE = (0, 100_000, 1_000_000)
LIVE_QUICK = (0, 10_000, 30_000)

ROWS = (
    Row("one_way", 0, "local one-way (sender yields every 1,024)", "msgs/s", True),
    Row("ping_pong", 0, "local ping-pong (request/response)", "round trips/s", True),
    Row("spawn_exit", 0, "spawn and exit", "processes/s", True),
    Row("memory", 0, "memory per idle process (RSS)", "bytes", False),
    Row("cross_one_way", 0, "cross-node one-way", "msgs/s", True),
    Row("cross_rtt", 0, "cross-node round trip p50", "µs", False),
    Row("cross_rtt", 1, "cross-node round trip p99", "µs", False),
    Row("rpc", 0, "sequential RPC", "calls/s", True),
    Row("fanout", 0, "failure fan-out: last DOWN after nodedown", "ms", False),
)

BY_KEY = {w.key: w for w in WORKLOADS}


def rows(live: tuple[int, ...]) -> tuple[Row, ...]:
    """Every row of the report, spawn_scale's one per level of ``live``."""
    scale = tuple(
        Row("spawn_scale", i, f"spawn and exit, {n:,} idle processes alive", "processes/s", True)
        for i, n in enumerate(live)
    )
    return ROWS + scale


def size_for(workload: Workload, peer: str, *, quick: bool, scale: float) -> int:
    """How big a run of ``workload`` is on ``peer``."""
    n = workload.quick if quick else workload.size
    if peer in ("pykka", "thespian"):
        n //= workload.actor_divisor
    return max(workload.minimum, int(n * scale))

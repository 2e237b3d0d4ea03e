"""How cost grows: cluster size, live process count, one large message.

``python -m benchmarks scale [--quick] [--max-nodes N] [--max-procs N] [--parts ...]``

1. ``cluster``: LocalClusters of 2, 10, 25 and 50 real nodes (plus this node,
   the manager), full mesh, heartbeats on: RSS, CPU and open file descriptors
   per node at idle (from ``/proc``), time to form the mesh, time for one more
   node to join it, and time until every other node has seen a node go down,
   when it is SIGKILLed (the kernel closes its sockets: the peers see EOF) and
   when it is SIGSTOPped (silent: only the heartbeats notice, after the tick time).
2. ``procs``: one node, idle processes spawned up to 10k, 100k, 300k, 1M, in
   a fresh child interpreter per GC variant (the runtime's gc policies of
   :mod:`pybeam.gc_policy`: ``freeze``, the default, ``thresholds``, the
   runtime's earlier behaviour, ``python``, Python's own settings; and
   ``gc-off``, ``gc.disable()``, the reference; ``--gc`` picks some): RSS per
   process, spawn rate against live processes, time in the cyclic GC, and the
   round trip to one echoing process among them. ``--parts procs`` alone
   keeps the other parts' figures from ``--out``'s earlier ``scale.json``.
3. ``hol``: head-of-line blocking: a 50 MB message to a peer node, and small
   messages from another process to the same node meanwhile; their one-way
   latency (sender and receiver share ``CLOCK_MONOTONIC``: same host).

It prints tables, writes ``scale.md`` (the tables), ``scale.json`` (every
figure) and PNG charts into ``--out`` (default ``docs/img/scale``) when
matplotlib can be imported; ``--replot`` redoes them from ``scale.json``.
``--batch 25`` starts big clusters 25 nodes at a time (all at once, a
2-core machine fails at about 150: see docs/benchmarks.md, "Scale").
Linux only (``/proc``). Every figure depends on the machine's load: the
report starts with ``uptime``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import itertools
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pybeam
from pybeam import Pid, gc_policy, receive, send, spawn
from pybeam.testing import LocalCluster, free_port

CLUSTER_SIZES = (2, 10, 25, 50)
PROC_STEPS = (10_000, 100_000, 300_000, 1_000_000)
GC_VARIANTS = ("freeze", "thresholds", "python", "gc-off")
CHUNK = 10_000
HOL_BYTES = 50 * 1024 * 1024
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

Row = dict[str, Any]


# -- /proc ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the OS process ``pid`` used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def open_fds(pid: int) -> int:
    """Number of open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def uptime() -> str:
    """``uptime``'s load averages, and the core count."""
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"load average {', '.join(load)} on {os.cpu_count()} cores"


# -- 1. cluster ---------------------------------------------------------------------------


async def watch_down(victim: str, reply_to: Pid) -> None:
    """Runs on every node: tell ``reply_to`` when ``victim`` goes down, and when."""
    pybeam.monitor_nodes(True)
    send(reply_to, ("ready", pybeam.node_name()))
    await receive(("nodedown", victim))
    send(reply_to, ("down", pybeam.node_name(), time.monotonic()))


async def _detect(cluster: LocalCluster, victim: str, how: signal.Signals, timeout: float) -> Row:
    """Signal ``victim``'s OS process; seconds until each other node saw it down."""
    me = pybeam.self()
    watchers = [n for n in cluster.nodes if n != victim and cluster.alive(n)]
    for n in watchers:
        await pybeam.spawn_on(n, watch_down, victim, me)
    spawn(watch_down, victim, me)
    for _ in range(len(watchers) + 1):
        await receive(("ready", pybeam.ANY), timeout=30)
    t0 = time.monotonic()
    cluster.processes[victim].send_signal(how)
    seen: list[float] = []
    deadline = t0 + timeout
    while len(seen) < len(watchers) + 1 and time.monotonic() < deadline:
        try:
            msg = await receive(
                ("down", pybeam.ANY, pybeam.ANY), timeout=max(0.01, deadline - time.monotonic())
            )
        except TimeoutError:
            break
        seen.append(msg[2] - t0)
    cluster.kill(victim)  # a stopped node too: SIGKILL ends it
    return {
        "watchers": len(watchers) + 1,
        "saw": len(seen),
        "median_s": statistics.median(seen) if seen else float("nan"),
        "max_s": max(seen) if seen else float("nan"),
    }


async def idle_sample(pids: dict[str, int], seconds: float) -> list[Row]:
    """CPU %, RSS and fds of each OS process over ``seconds`` of idling."""
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    dt = time.monotonic() - t0
    return [
        {
            "node": n,
            "cpu_pct": 100 * (cpu_seconds(p) - before[n]) / dt,
            "rss_mb": rss_bytes(p) / 2**20,
            "fds": open_fds(p),
        }
        for n, p in pids.items()
    ]


async def one_cluster(size: int, ticktime: float, idle_seconds: float, batch: int = 0) -> Row:
    """Start a mesh of ``size`` nodes and measure it (see the module's doc)."""
    timeout = max(60.0, 3.0 * size)
    cluster = LocalCluster(size, prefix=f"s{size}_", startup_timeout=timeout, ticktime=ticktime)
    t0 = time.monotonic()
    try:
        if batch:
            # A few nodes at a time: each start waits for its batch to join the mesh.
            for count in range(min(batch, size), size + batch, batch):
                cluster.count = min(count, size)
                await cluster.start()
        else:
            await cluster.start()
        form = time.monotonic() - t0
        # CPU each node spent booting and meshing (interpreter start and imports included).
        form_cpu = statistics.mean(cpu_seconds(cluster.processes[n].pid) for n in cluster.nodes)
        await asyncio.sleep(min(2.0, idle_seconds))  # let boot-time work settle
        pids = {n: cluster.processes[n].pid for n in cluster.nodes}
        pids["(manager)"] = os.getpid()
        samples = await idle_sample(pids, idle_seconds)
        nodes = [s for s in samples if s["node"] != "(manager)"]
        manager = next(s for s in samples if s["node"] == "(manager)")
        t1 = time.monotonic()
        joined = await cluster.start_node()
        join = time.monotonic() - t1
        killed = await _detect(cluster, joined, signal.SIGKILL, timeout=30)
        silent = await _detect(cluster, cluster.nodes[size - 1], signal.SIGSTOP, timeout=3 * ticktime + 30)
    finally:
        await cluster.stop()
    return {
        "nodes": size,
        "form_s": form,
        "join_s": join,
        "form_cpu_s": form_cpu,
        "rss_mb": statistics.mean(s["rss_mb"] for s in nodes),
        "rss_max_mb": max(s["rss_mb"] for s in nodes),
        "cpu_pct": statistics.mean(s["cpu_pct"] for s in nodes),
        "cpu_max_pct": max(s["cpu_pct"] for s in nodes),
        "cpu_total_pct": sum(s["cpu_pct"] for s in nodes) + manager["cpu_pct"],
        "fds": statistics.mean(s["fds"] for s in nodes),
        "manager_cpu_pct": manager["cpu_pct"],
        "manager_fds": manager["fds"],
        "kill_median_s": killed["median_s"],
        "kill_max_s": killed["max_s"],
        "kill_saw": f"{killed['saw']}/{killed['watchers']}",
        "silent_median_s": silent["median_s"],
        "silent_max_s": silent["max_s"],
        "silent_saw": f"{silent['saw']}/{silent['watchers']}",
    }


async def clusters(sizes: list[int], ticktime: float, idle_seconds: float, batch: int = 0) -> list[Row]:
    """Measure one cluster per size (run on a distributed manager node)."""
    rows = []
    for size in sizes:
        print(f"  cluster of {size} nodes...", file=sys.stderr, flush=True)
        try:
            rows.append(await one_cluster(size, ticktime, idle_seconds, batch))
        except Exception as e:  # a size this machine cannot hold is a result too
            rows.append({"nodes": size, "error": f"{type(e).__name__}: {str(e)[:300]}"})
    return rows


# -- 2. many idle processes -----------------------------------------------------------------


async def _idle() -> None:
    await receive()


async def _echo() -> None:
    while True:
        msg = await receive()
        send(msg, msg)


async def _round_trips(echo: Pid, n: int) -> tuple[float, float]:
    me = pybeam.self()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        send(echo, me)
        await receive(timeout=30)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e6, times[min(len(times) - 1, int(len(times) * 0.99))] * 1e6


async def procs_child(steps: list[int], variant: str, rtts: int) -> dict[str, Any]:
    """In a fresh interpreter: spawn idle processes up to each step; the figures."""
    gc_time = [0.0]
    gc_full = [0]
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            gc_time[0] += time.perf_counter() - started[0]
            gc_full[0] += info["generation"] == 2

    if variant == "gc-off":  # the reference: what spawning costs without the cyclic GC
        gc_policy.set_policy("python")
        gc.disable()
    elif variant == "python":
        gc_policy.set_policy("python")
        gc.set_threshold(*gc_policy.PYTHON_GC_THRESHOLDS)
    else:
        gc_policy.set_policy(variant)
    gc.collect()
    base = rss_bytes(os.getpid())
    echo = spawn(_echo)
    live = 1
    await _round_trips(echo, 10)
    gc.callbacks.append(on_gc)
    curve, out = [], []
    pids: list[Pid] = [echo]  # kept, as a supervisor would keep its children
    for step in steps:
        t_step, gc_step, full_step, from_live = time.perf_counter(), gc_time[0], gc_full[0], live
        while live < step:
            n = min(CHUNK, step - live)
            t0, g0 = time.perf_counter(), gc_time[0]
            for i in range(n):
                pids.append(spawn(_idle))
                if i & 1023 == 1023:
                    await asyncio.sleep(0)  # let them reach receive while spawning goes on
            await asyncio.sleep(0)
            live += n
            dt = time.perf_counter() - t0
            curve.append((live, n / dt, (gc_time[0] - g0) / dt))
        dt = time.perf_counter() - t_step
        p50, p99 = await _round_trips(echo, rtts)
        out.append(
            {
                "live": live,
                "spawn_rate": (live - from_live) / dt,
                "gc_share": (gc_time[0] - gc_step) / dt,
                "full_gcs": gc_full[0] - full_step,
                "bytes_per_proc": (rss_bytes(os.getpid()) - base) / live,
                "rss_mb": rss_bytes(os.getpid()) / 2**20,
                "rtt_p50_us": p50,
                "rtt_p99_us": p99,
            }
        )
    gc.callbacks.remove(on_gc)
    for p in pids:
        pybeam.exit(p, "kill")
    return {"variant": variant, "steps": out, "curve": curve, "policy": gc_policy.stats()}


def procs(steps: list[int], rtts: int, variants: list[str]) -> list[dict[str, Any]]:
    """Each GC variant in its own child interpreter (a clean heap and RSS)."""
    results = []
    for variant in variants:
        print(f"  {steps[-1]:,} processes, gc {variant}...", file=sys.stderr, flush=True)
        argv = [sys.executable, "-m", "benchmarks.scale", "_procs", variant, str(rtts), *map(str, steps)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            results.append({"variant": variant, "error": done.stderr.strip()[-400:]})
        else:
            results.append(json.loads(done.stdout))
    return results


# -- 3. head-of-line blocking ------------------------------------------------------------------


async def hol_sink() -> None:
    """On the peer: answer each message with when it arrived."""
    while True:
        match await receive():
            case (tag, i, sent, reply_to, _payload):
                send(reply_to, (tag, i, sent, time.monotonic()))


async def _small_sender(sink: Pid, reply_to: Pid, period: float, stop_after: int) -> None:
    """Send numbered small messages every ``period`` until told to stop."""
    me = pybeam.self()
    i = 0
    while True:
        send(sink, ("small", i, time.monotonic(), reply_to, b""))
        i += 1
        try:
            await receive("stop", timeout=period)
            break
        except TimeoutError:
            pass
    for _ in range(stop_after):
        send(sink, ("small", i, time.monotonic(), reply_to, b""))
        i += 1
        await asyncio.sleep(period)
    send(reply_to, ("sent", i, me))


async def hol(size: int) -> Row:
    """A ``size``-byte message to a peer; the small messages' latency meanwhile."""
    async with LocalCluster(1, prefix="hol") as cluster:
        peer = cluster.nodes[0]
        big_sink = await pybeam.spawn_on(peer, hol_sink)
        small_sink = await pybeam.spawn_on(peer, hol_sink)
        me = pybeam.self()
        # Quiet baseline first.
        sender = spawn(_small_sender, small_sink, me, 0.002, 0)
        await asyncio.sleep(0.3)
        send(sender, "stop")
        base: list[float] = []
        during: list[tuple[float, float]] = []  # (sent - t_big, latency)
        msg = await receive(("sent", pybeam.ANY, pybeam.ANY), timeout=10)
        while len(base) < msg[1]:
            m = await receive(("small", pybeam.ANY, pybeam.ANY, pybeam.ANY), timeout=10)
            base.append(m[3] - m[2])
        payload = os.urandom(size)
        sender = spawn(_small_sender, small_sink, me, 0.002, 50)
        await asyncio.sleep(0.05)
        t_big = time.monotonic()
        send(big_sink, ("big", 0, t_big, me, payload))
        big = None
        sent_total = None
        while big is None or sent_total is None or len(during) < sent_total - 0:
            m = await receive(timeout=120)
            if m[0] == "big":
                big = m[3] - m[2]
                send(sender, "stop")
            elif m[0] == "sent":
                sent_total = m[1]
            elif m[0] == "small":
                during.append((m[2] - t_big, m[3] - m[2]))
    # The small messages sent while the big one was on its way.
    overlapping = [lat for sent, lat in during if 0 <= sent <= big]
    after = [lat for sent, lat in during if sent >= 0]
    return {
        "bytes": size,
        "big_s": big,
        "base_p50_ms": statistics.median(base) * 1e3,
        "base_max_ms": max(base) * 1e3,
        "during_n": len(overlapping),
        "during_p50_ms": statistics.median(overlapping) * 1e3 if overlapping else float("nan"),
        "during_max_ms": max(after) * 1e3 if after else float("nan"),
        "first_after_ms": after[0] * 1e3 if after else float("nan"),
        "timeline": sorted(during),
    }


# -- report -------------------------------------------------------------------------------------


def _table(rows: list[Row], cols: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('nodes', r.get('variant'))} | failed: {r['error']} |")
            continue
        lines.append("| " + " | ".join(format(r[k], f) if f else str(r[k]) for _, k, f in cols) + " |")
    return lines


CLUSTER_COLS = [
    ("nodes", "nodes", ""),
    ("RSS/node MB", "rss_mb", ".1f"),
    ("CPU/node %", "cpu_pct", ".2f"),
    ("CPU max %", "cpu_max_pct", ".2f"),
    ("CPU all nodes %", "cpu_total_pct", ".1f"),
    ("fds/node", "fds", ".0f"),
    ("form mesh s", "form_s", ".2f"),
    ("CPU s/node to form", "form_cpu_s", ".2f"),
    ("join s", "join_s", ".2f"),
    ("SIGKILL seen max s", "kill_max_s", ".3f"),
    ("saw", "kill_saw", ""),
    ("SIGSTOP seen med s", "silent_median_s", ".2f"),
    ("max s", "silent_max_s", ".2f"),
    ("saw", "silent_saw", ""),
]
PROC_COLS = [
    ("gc", "variant", ""),
    ("live", "live", ","),
    ("bytes/proc", "bytes_per_proc", ",.0f"),
    ("RSS MB", "rss_mb", ",.0f"),
    ("spawn/s (step)", "spawn_rate", ",.0f"),
    ("time in gc", "gc_share", ".0%"),
    ("full gcs", "full_gcs", ""),
    ("rtt p50 us", "rtt_p50_us", ",.0f"),
    ("rtt p99 us", "rtt_p99_us", ",.0f"),
]
HOL_COLS = [
    ("big message", "mb", ""),
    ("big arrived after s", "big_s", ".3f"),
    ("small, quiet p50 ms", "base_p50_ms", ".2f"),
    ("small during: n", "during_n", ""),
    ("p50 ms", "during_p50_ms", ".1f"),
    ("max ms", "during_max_ms", ".1f"),
    ("first after the big one ms", "first_after_ms", ".1f"),
    ("sender silent ms", "send_gap_ms", ".0f"),
    ("no small arrived for ms", "arrival_gap_ms", ".0f"),
]


def hol_gaps(timeline: list[tuple[float, float]]) -> Row:
    """The longest pause between two small messages' sends (the sending node's
    loop was busy with the big one), and between two arrivals (what the peer sees)."""
    sent = sorted(t for t, _ in timeline)
    arrived = sorted(t + lat for t, lat in timeline)

    def longest(xs: list[float]) -> float:
        return max((b - a for a, b in itertools.pairwise(xs)), default=float("nan")) * 1e3

    return {"send_gap_ms": longest(sent), "arrival_gap_ms": longest(arrived)}


def charts(out: Path, cl: list[Row], pr: list[dict[str, Any]], hl: Row | None) -> list[str] | None:
    """PNG charts into ``out``; their file names (None without matplotlib)."""
    try:
        # Through importlib: matplotlib is an optional extra, typed or not.
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return None
    made = []
    ok = [r for r in cl if "error" not in r]
    if ok:
        n = [r["nodes"] for r in ok]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        axes[0].plot(n, [r["rss_mb"] for r in ok], "o-", label="RSS per node (MB)")
        axes[0].plot(n, [r["fds"] for r in ok], "s-", label="fds per node")
        axes[0].set_xlabel("nodes")
        axes[0].legend()
        axes[1].plot(n, [r["cpu_pct"] for r in ok], "o-", label="per node")
        axes[1].plot(n, [r["cpu_total_pct"] for r in ok], "s-", label="all nodes")
        axes[1].set_xlabel("nodes")
        axes[1].set_ylabel("idle CPU %")
        axes[1].legend()
        axes[2].plot(n, [r["form_s"] for r in ok], "o-", label="form the mesh")
        axes[2].plot(n, [r["join_s"] for r in ok], "^-", label="one node joins")
        axes[2].plot(n, [r["kill_max_s"] for r in ok], "s-", label="all see SIGKILL")
        axes[2].plot(n, [r["silent_max_s"] for r in ok], "d-", label="all see SIGSTOP")
        axes[2].set_xlabel("nodes")
        axes[2].set_ylabel("seconds")
        axes[2].legend()
        fig.tight_layout()
        fig.savefig(out / "scale_cluster.png", dpi=90)
        plt.close(fig)
        made.append("scale_cluster.png")
    okp = [r for r in pr if "error" not in r]
    if okp:
        fig, ax = plt.subplots(figsize=(8, 4))
        for r in okp:
            # A running median over 9 chunks: single chunks swing with the machine's load.
            xs = [c[0] for c in r["curve"]]
            rates = [c[1] for c in r["curve"]]
            smooth = [statistics.median(rates[max(0, i - 4) : i + 5]) for i in range(len(rates))]
            (line,) = ax.plot(xs, smooth, label=f"gc {r['variant']}")
            ax.plot(xs, rates, ".", color=line.get_color(), alpha=0.25, markersize=3)
        ax.set_xscale("log")
        ax.set_xlabel("live processes")
        ax.set_ylabel("spawn rate (processes/s)")
        ax.set_title("per 10k chunk (dots), running median of 9 (lines)", fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "scale_spawn_rate.png", dpi=90)
        plt.close(fig)
        made.append("scale_spawn_rate.png")
    if hl is not None and "error" not in hl and hl["timeline"]:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot([t * 1e3 for t, _ in hl["timeline"]], [lat * 1e3 for _, lat in hl["timeline"]], ".")
        ax.axvline(hl["big_s"] * 1e3, color="grey", linestyle="--", label="big message arrived")
        ax.set_xlabel(f"ms since the {hl['mb']} message was sent")
        ax.set_ylabel("small message latency (ms)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "scale_hol.png", dpi=90)
        plt.close(fig)
        made.append("scale_hol.png")
    return made


def report(
    args: argparse.Namespace, load0: str, cl: list[Row], pr: list[dict[str, Any]], hl: Row | None
) -> str:
    """The markdown report (tables; charts added by the caller)."""
    lines = [
        f"`python -m benchmarks scale {' '.join(args.argv)}`".replace(" `", "`"),
        "",
        f"Load before: {load0}; after: {args.load_after or uptime()}. Python {sys.version.split()[0]}.",
        "",
    ]
    if getattr(args, "note", None):  # set by hand in scale.json, e.g. rows added from other runs
        lines += [args.note, ""]
    if cl:
        lines += [
            f"Clusters (each size plus this manager node; ticktime {args.ticktime:g} s, idle "
            f"sampled over {args.idle:g} s; started {f'{args.batch} at a time' if getattr(args, 'batch', 0) else 'all at once'}):",
            "",
            *_table(cl, CLUSTER_COLS),
            "",
        ]
    if pr:
        flat = [{"variant": r["variant"], **s} for r in pr if "error" not in r for s in r["steps"]]
        flat += [r for r in pr if "error" in r]
        lines += ["Idle processes on one node (each gc variant in a fresh interpreter):", ""]
        lines += [*_table(flat, PROC_COLS), ""]
    if hl is not None:
        lines += ["Head-of-line blocking (small messages every 2 ms from another process):", ""]
        lines += [*_table([{**hl, **hol_gaps(hl.get("timeline", []))}], HOL_COLS), ""]
    return "\n".join(lines)


def _manager(ticktime: float) -> pybeam.Node:
    """The distributed node this process runs as while it manages a cluster."""
    return pybeam.Node(
        f"scale_{secrets.token_hex(3)}@127.0.0.1", cookie=secrets.token_hex(8), ticktime=ticktime
    )


def main(argv: list[str]) -> int:
    """``python -m benchmarks scale``: run, print and write the report."""
    if argv[:1] == ["_procs"]:  # the child interpreter of part 2
        variant, rtts, steps = argv[1], int(argv[2]), [int(s) for s in argv[3:]]
        print(json.dumps(pybeam.run(procs_child, steps, variant, rtts)))
        return 0
    ap = argparse.ArgumentParser(prog="python -m benchmarks scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: 2 nodes, 10k processes, 5 MB, 1 s idle")
    ap.add_argument("--max-nodes", type=int, default=max(CLUSTER_SIZES))
    ap.add_argument("--max-procs", type=int, default=max(PROC_STEPS))
    ap.add_argument(
        "--sizes", help="comma-separated cluster sizes instead of 2,10,25,50 (capped by --max-nodes)"
    )
    ap.add_argument(
        "--batch", type=int, default=0, help="start cluster nodes this many at a time (0: all at once)"
    )
    ap.add_argument("--parts", default="cluster,procs,hol", help="comma-separated: cluster,procs,hol")
    ap.add_argument(
        "--gc",
        default=",".join(GC_VARIANTS),
        help=f"procs' gc variants, comma-separated: {','.join(GC_VARIANTS)}",
    )
    ap.add_argument("--ticktime", type=float, default=8.0, help="net ticktime of every node (s)")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU sampling")
    ap.add_argument("--hol-mb", type=float, default=HOL_BYTES / 2**20)
    ap.add_argument("--out", type=Path, default=Path("docs/img/scale"))
    ap.add_argument(
        "--replot", action="store_true", help="redo scale.md and the charts from --out's scale.json"
    )
    args = ap.parse_args(argv)
    args.argv, args.load_after = [a for a in argv if a != "--replot"], None
    if args.replot:
        saved = json.loads((args.out / "scale.json").read_text())
        args.argv, args.ticktime, args.idle, args.load_after = (
            saved["argv"],
            saved["ticktime"],
            saved["idle"],
            saved["load_after"],
        )
        args.batch, args.note = saved.get("batch", 0), saved.get("note")
        write(args, saved["load"], saved["cluster"], saved["procs"], saved["hol"])
        return 0
    if args.quick:
        args.max_nodes, args.max_procs, args.hol_mb, args.idle = 2, 10_000, 5.0, 1.0
    parts = set(args.parts.split(","))
    variants = args.gc.split(",")
    if not parts <= {"cluster", "procs", "hol"} or not set(variants) <= set(GC_VARIANTS):
        ap.error(f"--parts takes cluster,procs,hol and --gc {','.join(GC_VARIANTS)}")
    wanted = [int(n) for n in args.sizes.split(",")] if args.sizes else CLUSTER_SIZES
    sizes = [s for s in wanted if s <= args.max_nodes] or [args.max_nodes]
    steps = [s for s in PROC_STEPS if s <= args.max_procs] or [args.max_procs]
    os.environ.setdefault("PYBEAM_EPMD_PORT", str(free_port()))
    load0 = uptime()
    print(f"scale: {load0}", file=sys.stderr)
    cl = (
        pybeam.run(clusters, sizes, args.ticktime, args.idle, args.batch, node=_manager(args.ticktime))
        if "cluster" in parts
        else []
    )
    pr = procs(steps, 50 if args.quick else 300, variants) if "procs" in parts else []
    hl = None
    if "hol" in parts:
        print(f"  head-of-line blocking, {args.hol_mb:g} MB...", file=sys.stderr, flush=True)
        try:
            hl = pybeam.run(hol, int(args.hol_mb * 2**20), node=_manager(args.ticktime))
            hl["mb"] = f"{args.hol_mb:g} MB"
        except Exception as e:
            hl = {"mb": f"{args.hol_mb:g} MB", "error": f"{type(e).__name__}: {e}"}
    args.load_after = uptime()
    cl, pr, hl = keep_saved_parts(args, parts, cl, pr, hl)
    write(args, load0, cl, pr, hl)
    return 0


def keep_saved_parts(
    args: argparse.Namespace, parts: set[str], cl: list[Row], pr: list[dict[str, Any]], hl: Row | None
) -> tuple[list[Row], list[dict[str, Any]], Row | None]:
    """A run of some parts keeps the others' figures from ``--out``'s
    ``scale.json`` (noted in the report), rather than dropping them."""
    saved_file = args.out / "scale.json"
    args.note = None
    if parts >= {"cluster", "procs", "hol"} or not saved_file.exists():
        return cl, pr, hl
    saved = json.loads(saved_file.read_text())
    kept = []
    if "cluster" not in parts and saved.get("cluster"):
        cl = saved["cluster"]
        kept.append("cluster")
    if "procs" not in parts and saved.get("procs"):
        pr = saved["procs"]
        kept.append("procs")
    if "hol" not in parts and saved.get("hol"):
        hl = saved["hol"]
        kept.append("hol")
    if kept:
        command = " ".join(["python -m benchmarks scale", *saved["argv"]])
        args.note = f"The {' and '.join(kept)} figures are from an earlier run (`{command}`, load before: {saved['load']})."
        if saved.get("note"):
            args.note += " " + saved["note"]
    return cl, pr, hl


def write(
    args: argparse.Namespace, load0: str, cl: list[Row], pr: list[dict[str, Any]], hl: Row | None
) -> None:
    """Write scale.md, scale.json and the charts into ``args.out``; print the report."""
    text = report(args, load0, cl, pr, hl)
    args.out.mkdir(parents=True, exist_ok=True)
    made = charts(args.out, cl, pr, hl)
    if made is not None:
        text += "\n" + "\n".join(f"![{m}]({m})" for m in made) + "\n"
    else:
        text += "\n(No charts: matplotlib is not importable; `pip install matplotlib` for them.)\n"
    (args.out / "scale.md").write_text(text)
    (args.out / "scale.json").write_text(
        json.dumps(
            {
                "argv": args.argv,
                "ticktime": args.ticktime,
                "idle": args.idle,
                "batch": args.batch,
                "note": getattr(args, "note", None),
                "load": load0,
                "load_after": args.load_after,
                "cluster": cl,
                "procs": pr,
                "hol": hl,
            },
            indent=1,
            default=str,
        )
    )
    print(text)
    print(f"(written to {args.out}/scale.md)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

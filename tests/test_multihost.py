"""Nodes on several hosts: real separate network stacks (Linux namespaces) on one machine.

Three hosts on one bridge (pybeam.testing.netns). Hosts 1 and 2 each run a
standalone port mapper (on loopback and their address) and one node named by
that address; host 0 runs tests/netns_driver.py, a node whose own mapper
serves its host, which checks send, spawn, link, monitor, rpc, global and pg
across the hosts, then waits while the test pulls host 2's cable: a silent
peer (no FIN, no RST), found down by the tick alone.

Skipped, with the reason, where namespaces cannot be made (not root, no ``ip``).
"""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pybeam.distribution.tls import TLSOptions
from pybeam.testing import certs, free_port, netns

_WHY = netns.unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

_TESTS = Path(__file__).parent
#: Short, so that a silent peer is found down quickly.
TICKTIME = 2.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_TESTS), *sys.path])
    env.pop("PYBEAM_EPMD_PORT", None)
    return env


def _expect(proc: subprocess.Popen[str], want: str, timeout: float, seen: list[str]) -> str:
    """Read ``proc``'s stdout until a line starting with ``want``; every line goes to ``seen``.

    Lines come through a thread and a queue: select() on the pipe would miss
    lines already read into the file object's buffer.
    """
    lines = _LINES.get(proc.pid)
    if lines is None:
        lines = _LINES[proc.pid] = queue.Queue()
        threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            raise AssertionError(f"no {want!r} within {timeout}s; output so far:\n" + "".join(seen)) from None
        if line is None:
            proc.wait(5)
            raise AssertionError(f"exited ({proc.returncode}) before {want!r}; output:\n" + "".join(seen))
        seen.append(line)
        if line.startswith(want):
            return line


_LINES: dict[int, queue.Queue[str | None]] = {}


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)


@pytest.fixture
def hosts() -> Iterator[netns.Hosts]:
    with netns.Hosts(3) as h:
        yield h


def _start_host(
    hosts: netns.Hosts, i: int, name: str, cookie: str, epmd_port: int, extra: list[str]
) -> subprocess.Popen[str]:
    address = hosts.address(i)
    py = sys.executable
    # The mapper speaks TLS when the node does, with the node's certificate.
    tls_args = extra
    hosts.popen(
        i,
        [
            py,
            "-m",
            "pybeam",
            "epmd",
            "--port",
            str(epmd_port),
            "--host",
            "127.0.0.1",
            "--host",
            address,
            *tls_args,
        ],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    names = ["ip", "netns", "exec", hosts.names[i], py, "-m", "pybeam", "epmd", "--names"]
    names += ["--port", str(epmd_port), "--host", address, *tls_args]  # asked from its host, on its address
    deadline = time.monotonic() + 30
    while subprocess.run(names, env=_env(), capture_output=True, timeout=30, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"the port mapper of host {i} did not start"
        time.sleep(0.1)
    argv = [py, "-m", "pybeam", "node", "--name", f"{name}@{address}", "--cookie", cookie]
    argv += ["--epmd-port", str(epmd_port), "--ticktime", str(TICKTIME), "--exit-on-stdin-close", *extra]
    node = hosts.popen(
        i,
        argv,
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return node


def run_cluster(hosts: netns.Hosts, tls: list[TLSOptions] | None = None) -> list[str]:
    """Start B and C, run the driver on host 0 through the cable cut; its output."""
    cookie = secrets.token_hex(8)
    epmd_port = free_port()  # free here; the hosts have ports of their own, all free
    nodes = {}
    for i, name in ((1, "b"), (2, "c")):
        files = tls[i] if tls else None
        extra = ["--tls-cert", files.cert, "--tls-key", files.key, "--tls-ca", files.ca] if files else []
        nodes[name] = _start_host(hosts, i, name, cookie, epmd_port, extra)
    for proc in nodes.values():
        seen: list[str] = []
        assert " up " in _expect(proc, "pybeam node", 60, seen), seen
    b, c = f"b@{hosts.address(1)}", f"c@{hosts.address(2)}"
    argv = [sys.executable, "-m", "netns_driver", f"a@{hosts.address(0)}", cookie, str(epmd_port)]
    argv += [str(TICKTIME), b, c, *(["--tls", tls[0].cert, tls[0].key, tls[0].ca] if tls else [])]
    driver = hosts.popen(0, argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    _expect(driver, "CUT", 120, out)
    hosts.cut(2)
    cut_at = time.time()
    down = _expect(driver, "NODEDOWN", 10 * TICKTIME + 10, out)
    out.append(f"DELAY {float(down.split()[1]) - cut_at:.3f}\n")
    _expect(driver, "DONE", 30, out)
    assert driver.wait(30) == 0, "".join(out)
    return out


def test_nodes_on_three_hosts_work_together_and_see_a_silent_peer_go_down(hosts: netns.Hosts) -> None:
    out = run_cluster(hosts)
    steps = [line.split()[1] for line in out if line.startswith("STEP")]
    assert steps == ["epmd", "connect", "rpc", "send", "link", "monitor", "global", "pg"], "".join(out)
    delay = float(next(line for line in out if line.startswith("DELAY")).split()[1])
    # Nothing arrives after the cut: the peer is declared down after four quiet
    # tick periods (ticktime to 1.25 ticktime after the last data; the last
    # data came at most a period before the cut). A margin for a loaded machine.
    print(f"nodedown {delay:.3f}s after the cut")
    assert 0.5 * TICKTIME <= delay <= 1.25 * TICKTIME + 1.0, f"nodedown {delay:.2f}s after the cut"


@pytest.mark.skipif(certs.unavailable() is not None, reason=certs.unavailable() or "")
def test_the_same_over_tls_with_mutual_authentication(hosts: netns.Hosts, tmp_path: Path) -> None:
    ca = certs.make_ca(tmp_path, "ca")
    tls = [certs.make_cert(ca, tmp_path, f"host{i}", [hosts.address(i), "127.0.0.1"]) for i in range(3)]
    out = run_cluster(hosts, tls)
    steps = [line.split()[1] for line in out if line.startswith("STEP")]
    assert steps == ["connect", "rpc", "send", "link", "monitor", "global", "pg"], "".join(out)


_SLOW_LINK_DRIVER = """
import asyncio, sys, time
import pybeam
from pybeam import net, rpc

async def main(peer: str, size: int) -> None:
    assert await pybeam.connect(peer), net.connect_failure(peer)
    pybeam.monitor_nodes(True)
    started = time.monotonic()
    data = await rpc.call(peer, "os:urandom", size, timeout=120)
    print(f"GOT {len(data)} {time.monotonic() - started:.3f}", flush=True)
    # Anything the monitor saw meanwhile (a nodedown would be a false failure).
    seen = await pybeam.receive(timeout=0.2, default=None)
    print(f"SEEN {seen!r}", flush=True)
    print("DONE", flush=True)

name, cookie, epmd_port, ticktime, peer, size = sys.argv[1:]
node = pybeam.Node(name, cookie=cookie, epmd_port=int(epmd_port), ticktime=float(ticktime))
pybeam.run(main, peer, int(size), node=node)
"""


@pytest.mark.skipif(shutil.which("tc") is None, reason="the tc command (iproute2) is missing")
def test_a_rate_limited_link_slows_a_large_transfer_but_drops_nobody(hosts: netns.Hosts) -> None:
    # tc tbf on host 1's cable: 8 Mbit/s both ways. 2 MB then take about 2 s,
    # several tick periods, during which the nodes must not take the slow link
    # for a dead one (ticks and data share the throttled link).
    cookie = secrets.token_hex(8)
    epmd_port = free_port()
    b = _start_host(hosts, 1, "b", cookie, epmd_port, [])
    seen: list[str] = []
    assert " up " in _expect(b, "pybeam node", 60, seen), seen
    # Host 0's own port mapper, for the driver node to register with.
    a = _start_host(hosts, 0, "a", cookie, epmd_port, [])
    assert " up " in _expect(a, "pybeam node", 60, seen), seen
    for bad in (3, -1):  # no such host: never a quiet pick from the end
        with pytest.raises(ValueError, match="host index"):
            hosts.limit(bad, "8mbit")
    hosts.limit(1, "8mbit")
    assert "tbf" in hosts.qdisc(1) and "8Mbit" in hosts.qdisc(1)
    size = 2_000_000
    argv = [sys.executable, "-c", _SLOW_LINK_DRIVER, f"drv@{hosts.address(0)}", cookie, str(epmd_port)]
    argv += [str(TICKTIME), f"b@{hosts.address(1)}", str(size)]
    driver = hosts.popen(0, argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    got = _expect(driver, "GOT", 120, out).split()
    assert int(got[1]) == size, "".join(out)
    # 16 Mbit at 8 Mbit/s: the limit was in force (a lower bound, which load cannot break).
    assert float(got[2]) >= 1.0, "".join(out)
    assert _expect(driver, "SEEN", 30, out).strip() == "SEEN None", "".join(out)
    _expect(driver, "DONE", 30, out)
    assert driver.wait(30) == 0, "".join(out)
    hosts.unlimit(1)
    assert "tbf" not in hosts.qdisc(1)

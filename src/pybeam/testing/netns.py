"""Separate hosts on one machine, for tests: Linux network namespaces joined by a bridge.

:class:`Hosts` makes ``count`` namespaces (the *hosts*), each with its own
loopback and one interface ``eth0`` on a private subnet, plus a hub namespace
holding the bridge that joins them (the switch). Nothing is added to the
machine's own network: every address lives in a namespace made here, and the
names carry a random suffix so that runs never meet. :meth:`Hosts.cut` pulls a
host's cable (the hub's end of its veth pair goes down: its packets vanish,
nobody sends FIN or RST) and :meth:`Hosts.mend` plugs it back in.

Programs run inside a host with :meth:`Hosts.popen` (``ip netns exec``); they
are killed and the namespaces deleted by :meth:`Hosts.close`, by ``with``, and
by a finalizer at interpreter exit if neither ran.

Needs root and ``ip`` (iproute2): :func:`unavailable` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import Any

__all__ = ["Hosts", "unavailable"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need the ip command (iproute2)"
    probe = f"pbprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.SubprocessError, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        return f"cannot make a network namespace: {detail.decode(errors='replace').strip() or e}"
    _ip("netns", "del", probe)
    return None


def _cleanup(namespaces: list[str], procs: list[subprocess.Popen[Any]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    for ns in reversed(namespaces):
        # Deleting a namespace deletes its interfaces, and so each veth pair.
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)
    namespaces.clear()


class Hosts:
    """``count`` namespaces on one bridge; host ``i`` has address :meth:`address` ``(i)``."""

    def __init__(self, count: int) -> None:
        if not 1 <= count <= 200:
            raise ValueError(f"1..200 hosts, not {count}")
        tag = secrets.token_hex(3)
        # A /24 in 10.0.0.0/8, random so that concurrent runs differ (the
        # namespaces isolate them anyway).
        self.subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
        self.hub = f"pbhub{tag}"
        self.names = [f"pbh{i}{tag}" for i in range(count)]
        self._ports = [f"pbp{i}{tag}" for i in range(count)]
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._finalizer = weakref.finalize(self, _cleanup, self._namespaces, self._procs)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        hub = self.hub
        _ip("netns", "add", hub)
        self._namespaces.append(hub)
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        for i, (ns, port) in enumerate(zip(self.names, self._ports, strict=True)):
            _ip("netns", "add", ns)
            self._namespaces.append(ns)
            _ip("-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", hub, "link", "set", port, "master", "br0")
            _ip("-n", hub, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _host(self, i: int) -> int:
        # A negative index would quietly pick a host from the end.
        if not 0 <= i < len(self.names):
            raise ValueError(f"host index must be in 0..{len(self.names) - 1}, got {i}")
        return i

    def _ends(self, i: int) -> tuple[tuple[str, str], tuple[str, str]]:
        """Host ``i``'s cable, as (namespace, device) at each end: the hub's and the host's."""
        i = self._host(i)
        return (self.hub, self._ports[i]), (self.names[i], "eth0")

    def address(self, i: int) -> str:
        """Host ``i``'s address on the bridge."""
        return f"{self.subnet}.{self._host(i) + 1}"

    def popen(self, i: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside host ``i`` (in a process group of its own, killed by :meth:`close`)."""
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.names[self._host(i)], *argv], start_new_session=True, **kwargs
        )
        self._procs.append(proc)
        return proc

    def cut(self, i: int) -> None:
        """Pull host ``i``'s cable (the hub's end of its veth pair goes down):
        its traffic vanishes silently both ways, and the host itself is told nothing."""
        _ip("-n", self.hub, "link", "set", self._ports[self._host(i)], "down")

    def mend(self, i: int) -> None:
        """Plug host ``i``'s cable back in."""
        _ip("-n", self.hub, "link", "set", self._ports[self._host(i)], "up")

    def limit(self, i: int, rate: str, *, burst: str = "32kbit", latency: str = "400ms") -> None:
        """Limit host ``i``'s cable to ``rate`` (``tc`` units, e.g. ``"8mbit"``) both
        ways with a token bucket (``tc tbf``), as a slow or congested link: packets
        over the rate wait in a queue (up to ``latency``) and beyond it are dropped,
        so TCP slows down rather than failing."""
        for ns, dev in self._ends(i):
            _tc(
                "-n",
                ns,
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                burst,
                "latency",
                latency,
            )

    def unlimit(self, i: int) -> None:
        """Take the rate limit off host ``i``'s cable."""
        for ns, dev in self._ends(i):
            subprocess.run(
                ["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"],
                capture_output=True,
                timeout=30,
                check=False,
            )

    def qdisc(self, i: int) -> str:
        """What ``tc qdisc show`` says of the hub's end of host ``i``'s cable."""
        out = subprocess.run(
            ["tc", "-n", self.hub, "qdisc", "show", "dev", self._ports[self._host(i)]],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout

    def close(self) -> None:
        """Kill every program started here and delete every namespace."""
        self._finalizer()

    def __enter__(self) -> Hosts:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

"""Local clusters for tests: real nodes, each in its own OS process (Elixir's LocalCluster).

The code that starts a cluster runs on a distributed node, the *manager*
(usually the test's own node, see :mod:`pybeam.testing.pytest_plugin`). Each
cluster node is ``python -m pybeam node`` in a child process that:

- uses the manager's cookie and ticktime and connects to the manager at start
  (the full mesh then connects the children to one another);
- can import whatever the manager can (its ``PYTHONPATH`` is the manager's
  ``sys.path``), test modules included, so ``rpc.call(child, helper)`` works
  with a helper defined in the test file;
- stops when its stdin closes (``--exit-on-stdin-close``): the manager keeps
  the pipe open, so a child never outlives the manager, even if the manager
  is SIGKILLed;
- writes its stdout and stderr to a log file: :meth:`LocalCluster.logs`.

Nothing is left behind: :meth:`LocalCluster.stop` (run by ``async with``)
stops every child, and a finalizer (which also runs at interpreter exit)
SIGKILLs any child still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ..distribution.net_kernel import NetKernel
from ..errand import run as run_in_process
from ..errors import NotDistributed, PybeamError
from ..node import Node, current_node

__all__ = ["ClusterError", "LocalCluster", "processes_using_epmd", "run_in_process"]

T = TypeVar("T")

HOST = "127.0.0.1"
#: Seconds between checks while waiting for children.
_POLL = 0.02
#: Seconds a child gets to stop after SIGTERM before it is SIGKILLed.
_STOP_GRACE = 5.0
#: Seconds a node gets to answer the manager's questions while it joins.
_ASK = 5.0
#: Seconds a node gets to tell its cookie while one joins: one that does not
#: (frozen, say) could not connect now, and is not waited for.
_ASK_COOKIE = 2.0
#: Seconds a joining node gets to connect by itself before it is told to.
_NUDGE = 1.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a port mapper, say)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def processes_using_epmd(epmd_port: int) -> list[int]:
    """The OS pids of processes whose environment names this port mapper
    (``PYBEAM_EPMD_PORT``): a run's nodes, and what they started. Empty
    once a run that had a port mapper of its own left nothing behind.
    Linux only (it reads ``/proc``)."""
    found = []
    needle = f"PYBEAM_EPMD_PORT={epmd_port}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass  # gone meanwhile, or not ours to read
    return found


class ClusterError(PybeamError):
    """A cluster node did not start (its log is in the message) or cannot be used."""


def _manager_kernel(node: Node) -> NetKernel:
    dist = node.dist
    if not isinstance(dist, NetKernel):
        raise NotDistributed(
            f"a LocalCluster needs a distributed manager node; {node.name} is not one "
            "(run the test on pybeam.Node('name@127.0.0.1'), e.g. the beam_node fixture)"
        )
    return dist


def _kill_all(processes: dict[str, subprocess.Popen[bytes]], log_dir: str | None) -> None:
    """The safety net: SIGKILL and reap every child still alive, remove the logs."""
    for proc in processes.values():
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
    for proc in processes.values():
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            proc.wait(timeout=5)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
    if log_dir is not None:
        shutil.rmtree(log_dir, ignore_errors=True)


class LocalCluster:
    """``count`` nodes, each its own OS process, connected to the calling node and to each other.

    ::

        async with LocalCluster(3) as cluster:
            n1, n2, n3 = cluster.nodes
            assert await rpc.call(n1, "operator:add", 2, 3) == 5

    Names are ``{prefix}{i}_{suffix}@127.0.0.1`` for i = 1..count, where
    ``suffix`` is random (so that clusters of two tests, or of a test run twice
    at once, never meet); pass ``unique=False`` for plain ``{prefix}{i}@127.0.0.1``.

    ``cookie`` defaults to the manager's; ``ticktime`` to the manager's (nodes
    with different ticktimes declare each other down); ``env`` adds variables
    to the children's environment. ``apps`` are applications
    (``"mod[:fn]"``, see :mod:`pybeam.application`) every node starts at boot,
    in order, as ``pybeam node --app``. Start waits (at most ``startup_timeout``
    seconds) until every node is connected to the manager and to every other
    node, and raises :class:`ClusterError` with the node's log if one exits or
    does not connect in time. The manager is ``node``, or else the current
    node when the cluster starts; it must be distributed.
    """

    def __init__(
        self,
        count: int,
        *,
        prefix: str = "node",
        unique: bool = True,
        cookie: str | None = None,
        ticktime: float | None = None,
        env: Mapping[str, str] | None = None,
        apps: Sequence[str] = (),
        startup_timeout: float = 20.0,
        node: Node | None = None,
    ) -> None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self.count = count
        self.prefix = prefix
        self.suffix = f"_{secrets.token_hex(3)}" if unique else ""
        self.cookie = cookie
        self.ticktime = ticktime
        self.env = dict(env or {})
        self.apps = list(apps)
        self.startup_timeout = startup_timeout
        #: The node names, in order.
        self.nodes: list[str] = []
        #: Each node's child process (stopped ones too: check ``poll()``).
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        #: The node the cluster connects to (``node``, else the current node at start).
        self.manager: Node | None = node
        self._next = 1
        self._log_dir: str | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        #: The cookie each node was started with.
        self._cookies: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<LocalCluster {self.nodes}>"

    # -- life cycle --------------------------------------------------------------

    async def start(self) -> LocalCluster:
        """Start the ``count`` nodes and wait until they are all connected."""
        if self._log_dir is None:
            self.manager = self.manager or current_node()
            kernel = _manager_kernel(self.manager)
            self.cookie = self.cookie or kernel.cookie
            if self.ticktime is None:
                self.ticktime = kernel.options.ticktime
            self._log_dir = tempfile.mkdtemp(prefix="pybeam-cluster-")
            # Holds the dict and the path, not self, so it can run after self is gone.
            self._finalizer = weakref.finalize(self, _kill_all, self.processes, self._log_dir)
        names = [self._launch() for _ in range(self.count - len(self.nodes))]
        try:
            await self._wait_connected(names)
        except BaseException:
            await self.stop()
            raise
        return self

    async def start_node(self) -> str:
        """Start one more node in the cluster; returns its name once it is
        connected to the manager and to the live nodes it can reach (see
        :meth:`restart_node`)."""
        from .schism import _lock

        if self._log_dir is None:
            await self.start()
        assert self.manager is not None
        async with _lock(self.manager):  # a partition or heal of the manager's waits
            name = self._launch()
            try:
                await self._join(name, refuse=())
            except BaseException:
                await self.stop_node(name)
                raise
        return name

    async def restart_node(self, node: str, *, refuse: Iterable[str] = ()) -> str:
        """Start a new OS process for ``node``, a node of this cluster that has
        stopped or was killed: a new incarnation under the same name, as a
        restarted Erlang node is. Returns once it is connected again.

        The faults in force hold for the new incarnation:

        - a node of a partition made by :func:`pybeam.testing.partition` (from
          this cluster's manager, before or after it went down) comes back
          inside it: with its partition's cookie, so it connects to the live
          nodes of its side only, and to the manager only if the partition
          keeps it;
        - it refuses ``refuse`` (peers the caller keeps it from with per-pair
          cookies, as a refusal of a simulated ``Drop`` does): it holds a
          random cookie for each of them before it connects to anyone, so
          that neither side's handshake succeeds until the cookies are
          cleared on both.

        It waits only for the connections these faults allow: to each live
        node whose cookie the new incarnation shares (asked by rpc; a node
        that does not answer in a few seconds, a frozen one say, is not
        waited for), not the full mesh.

        A partition or heal made meanwhile by the manager waits until the
        node has joined (and a restart waits for one under way), so the
        faults it comes back under are those in force for the whole restart.
        """
        from .schism import _lock

        self._process(node)  # a node of this cluster (so it has a manager)
        refused = sorted(set(refuse) - {node})
        assert self.manager is not None
        async with _lock(self.manager):
            # Checked holding the lock: two restarts at once start one process.
            if self._process(node).poll() is None:
                raise ClusterError(f"{node} is still running: stop or kill it first")
            self._launch(node, cookie=f"RESTART{secrets.token_hex(12)}" if refused else self._cookie_of(node))
            try:
                await self._join(node, refuse=refused)
            except BaseException:
                await self.stop_node(node)
                raise
        return node

    async def stop(self) -> None:
        """Stop every node: SIGTERM, then SIGKILL whatever is still alive after a few seconds."""
        await asyncio.gather(*(self.stop_node(name) for name in self.nodes))

    async def stop_node(self, node: str) -> int | None:
        """Stop one node (SIGTERM, SIGKILL after a grace period); returns its exit status."""
        proc = self._process(node)
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _STOP_GRACE
            while proc.poll() is None and loop.time() < deadline:
                await asyncio.sleep(_POLL)
            if proc.poll() is None:
                self.kill(node)
        self._close_stdin(proc)
        return proc.returncode

    def kill(self, node: str) -> None:
        """SIGKILL ``node``'s process, as a crash would end it (no clean goodbye to anyone)."""
        proc = self._process(node)
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
            # Reaped at once: SIGKILL cannot be caught, so this takes no time.
            proc.wait(timeout=5)
        self._close_stdin(proc)

    def alive(self, node: str) -> bool:
        """True while ``node``'s process runs."""
        return self._process(node).poll() is None

    def logs(self, node: str) -> str:
        """What ``node`` wrote to stdout and stderr so far."""
        self._process(node)
        assert self._log_dir is not None
        path = self._log_path(node)
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    async def __aenter__(self) -> LocalCluster:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- inside --------------------------------------------------------------------

    def _process(self, node: str) -> subprocess.Popen[bytes]:
        proc = self.processes.get(node)
        if proc is None:
            raise ClusterError(f"{node} is not a node of {self!r}")
        return proc

    def _log_path(self, node: str) -> Path:
        assert self._log_dir is not None
        return Path(self._log_dir) / f"{node.partition('@')[0]}.log"

    @staticmethod
    def _close_stdin(proc: subprocess.Popen[bytes]) -> None:
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def _child_env(self, cookie: str) -> dict[str, str]:
        assert self.manager is not None
        env = dict(os.environ)
        env.update(self.env)
        # The manager's sys.path, so children import what it imports (test
        # modules included); '' means the current directory, which we pass on.
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        # Through the environment, not --cookie: a command line is visible to
        # every user of the host (ps).
        env["PYBEAM_COOKIE"] = cookie
        epmd_port = _manager_kernel(self.manager).options.epmd_port
        if epmd_port is not None:
            env["PYBEAM_EPMD_PORT"] = str(epmd_port)
        env.setdefault("PYTHONUNBUFFERED", "1")  # logs that are complete when read
        return env

    def _launch(self, again: str | None = None, *, cookie: str | None = None) -> str:
        assert self.manager is not None and self.cookie is not None
        cookie = cookie or self.cookie
        if again is None:
            name = f"{self.prefix}{self._next}{self.suffix}@{HOST}"
            self._next += 1
        else:
            name = again
        argv = [
            sys.executable,
            "-m",
            "pybeam",
            "node",
            "--name",
            name,
            "--exit-on-stdin-close",
            "--verbose",  # connections up and down in the log: what a failing test needs to show
            "--ticktime",
            repr(self.ticktime),
        ]
        if cookie == _manager_kernel(self.manager).cookie:
            argv += ["--connect", self.manager.name]
        self._cookies[name] = cookie
        for app in self.apps:
            argv += ["--app", app]
        with open(self._log_path(name), "wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,  # kept open: its EOF tells the child the manager is gone
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_env(cookie),
                cwd=os.getcwd(),
            )
        if again is None:
            self.nodes.append(name)
        self.processes[name] = proc
        return name

    async def _wait_connected(self, names: list[str]) -> None:
        """Wait until each of ``names`` is connected to the manager and to every
        other node of the cluster; raise :class:`ClusterError` if one exits or
        does not get there in time."""
        assert self.manager is not None
        kernel = _manager_kernel(self.manager)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        await self._wait_up(names, deadline)
        # The mesh: each node connects to the others when it connects to the
        # manager; wait for it so that tests start from a connected cluster.
        for name in self.nodes:
            if not self.alive(name):
                continue
            expected = {n for n in self.nodes if n != name and self.alive(n)}
            if not kernel.options.hidden:
                expected.add(self.manager.name)
            while True:
                self._check_running(name)
                seen = set(await run_in_process(_remote_nodes, name, node=self.manager))
                if expected <= seen:
                    break
                if loop.time() > deadline:
                    missing = ", ".join(sorted(expected - seen))
                    self._fail(name, f"did not connect to {missing} within {self.startup_timeout}s")
                await asyncio.sleep(_POLL)

    async def _wait_up(self, names: list[str], deadline: float) -> None:
        """Wait until each of ``names`` has booted and is connected to the manager."""
        assert self.manager is not None
        kernel = _manager_kernel(self.manager)
        loop = asyncio.get_running_loop()
        for name in names:
            if self._cookies[name] != kernel.cookie:
                # The child cannot connect to us with its cookie: we connect to
                # it with it.
                kernel.set_cookie(self._cookies[name], name)
        waiting = set(names)
        while waiting:
            for name in sorted(waiting):
                self._check_running(name)
                # Connected, and booted: the node prints its "up" line once its
                # applications have started.
                if kernel.is_connected(name) and f"node {name} up" in self.logs(name):
                    waiting.discard(name)
                elif self._cookies[name] != kernel.cookie and await self._registered(name):
                    await kernel.connect(name)
            if waiting:
                if loop.time() > deadline:
                    self._fail(sorted(waiting)[0], f"did not connect within {self.startup_timeout}s")
                await asyncio.sleep(_POLL)

    def _cookie_of(self, node: str) -> str:
        """The cookie ``node`` is to use: its partition's, if the manager
        partitioned it (see :mod:`pybeam.testing.schism`), else the cluster's."""
        from .schism import _membership

        assert self.manager is not None and self.cookie is not None
        side, _ = _membership(self.manager, node)
        return side or self.cookie

    async def _join(self, name: str, *, refuse: Sequence[str]) -> None:
        """Bring a node just launched into the cluster as the faults in force
        allow (see :meth:`restart_node`) and wait for the connections they allow."""
        from .schism import _membership, _rejoined

        assert self.manager is not None
        kernel = _manager_kernel(self.manager)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        await self._wait_up([name], deadline)
        cookie = self._cookie_of(name)
        if refuse:
            # It booted with a cookie nobody shares, so whatever it dialled so
            # far failed; now it takes its real one, and refuses ``refuse``.
            refusals = {peer: f"REFUSE{secrets.token_hex(12)}" for peer in refuse}
            await run_in_process(_take_cookies, name, cookie, refusals, node=self.manager)
            self._cookies[name] = cookie
            if cookie != kernel.cookie:
                kernel.set_cookie(cookie, name)
            else:
                kernel.clear_cookie(name)
        await self._wait_reachable(name, cookie, set(refuse), deadline)
        _, kept = _membership(self.manager, name)
        if not kept:
            # Its partition does not keep the manager: the connection made to
            # bring it up goes, and nothing the manager sends reaches it again.
            kernel.clear_cookie(name)
            kernel.disconnect(name)
        _rejoined(self.manager, name)

    async def _wait_reachable(self, name: str, cookie: str, refused: set[str], deadline: float) -> None:
        """Wait until ``name`` is connected to the manager and to each live node
        whose cookie is ``cookie`` (but ``refused``), and they to it."""
        from .schism import _membership

        assert self.manager is not None
        manager = self.manager
        kernel = _manager_kernel(manager)
        loop = asyncio.get_running_loop()
        peers = [n for n in self.nodes if n != name and n not in refused and self.alive(n)]

        async def cookie_of(peer: str) -> str | None:
            side, _ = _membership(manager, peer)
            if side is not None and peer not in kernel.nodes():
                return side  # in a partition the manager is kept out of: as it made it
            try:
                return await asyncio.wait_for(
                    run_in_process(_peer_cookie, peer, node=manager), _ASK_COOKIE + 1
                )
            except Exception:
                return None  # frozen, say: it could not connect now anyway

        async def lists(peer: str) -> bool:
            try:
                return name in await run_in_process(_remote_nodes, peer, node=manager)
            except Exception:
                return not self.alive(peer)  # gone meanwhile: nothing to wait for

        cookies = await asyncio.gather(*(cookie_of(peer) for peer in peers))
        expected = {peer for peer, theirs in zip(peers, cookies, strict=True) if theirs == cookie}
        nudge = loop.time() + _NUDGE
        while True:
            self._check_running(name)
            want = {peer for peer in expected if self.alive(peer)}
            seen = set(await run_in_process(_remote_nodes, name, node=manager))
            missing = want - seen
            if not kernel.options.hidden and manager.name not in seen:
                missing.add(manager.name)
            if not missing:
                # Both ends up: each peer the manager can ask lists it too.
                lagging = [peer for peer in sorted(want & set(kernel.nodes())) if not await lists(peer)]
                if not lagging:
                    return
            elif loop.time() > nudge:
                # The mesh tells it of the nodes the manager is connected to
                # when it connects; one the manager lost meanwhile it is not told of.
                nudge = loop.time() + _NUDGE
                await asyncio.gather(
                    *(run_in_process(_connect, name, peer, node=manager) for peer in missing - {manager.name})
                )
            if loop.time() > deadline:
                gone = ", ".join(sorted(missing)) or "(the other ends)"
                self._fail(name, f"did not connect to {gone} within {self.startup_timeout}s")
            await asyncio.sleep(_POLL)

    async def _registered(self, name: str) -> bool:
        from ..distribution import epmd

        assert self.manager is not None
        with contextlib.suppress(OSError, epmd.EpmdError):
            port = _manager_kernel(self.manager).options.epmd_port
            return await epmd.lookup(name, port) is not None
        return False

    def _check_running(self, name: str) -> None:
        code = self._process(name).poll()
        if code is not None:
            self._fail(name, f"exited with status {code} before joining the cluster")

    def _fail(self, name: str, why: str) -> None:
        log = self.logs(name).rstrip() or "(empty)"
        raise ClusterError(f"cluster node {name} {why}; its log:\n{log}")


async def _remote_nodes(node: str) -> list[str]:
    from .. import rpc

    result: list[str] = await rpc.call(node, "pybeam.net:nodes", timeout=_ASK)
    return result


async def _peer_cookie(node: str) -> str:
    from .. import rpc

    result: str = await rpc.call(node, "pybeam.net:get_cookie", timeout=_ASK_COOKIE)
    return result


async def _connect(node: str, peer: str) -> bool:
    """Have ``node`` connect to ``peer``; False if it could not (or did not answer)."""
    from .. import rpc

    try:
        result: bool = await rpc.call(node, "pybeam.net:connect", peer, timeout=_ASK)
    except Exception:
        return False
    return result


async def _take_cookies(node: str, cookie: str, refusals: dict[str, str]) -> None:
    from .. import rpc

    await rpc.call(node, _set_cookies, cookie, refusals, timeout=_ASK)


def _set_cookies(cookie: str, refusals: dict[str, str]) -> None:
    """On a node (by rpc): refuse each peer of ``refusals`` (a cookie for it
    alone), then take ``cookie``; in one step, so no handshake comes between."""
    from .. import net

    for peer, refusal in refusals.items():
        net.set_cookie(refusal, peer)
    net.set_cookie(cookie)

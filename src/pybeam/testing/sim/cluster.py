"""A cluster of real pybeam nodes in one process, on a simulated network.

::

    from pybeam.testing import sim

    async def main() -> None:
        async with sim.SimCluster(3) as cluster:
            a, b, c = cluster.names
            cluster.partition([a], [b, c])
            await cluster.sleep(30)           # virtual seconds: no wall-clock time
            ...

    sim.run(main, seed=1)

Every node is a :class:`pybeam.Node` with its real net kernel, port mapper
client, handshake, framing and ticks; only the bytes travel through
:class:`~pybeam.testing.sim.net.SimNetwork` instead of TCP, and time is the
loop's virtual time. Code runs on a node as one of its processes
(:meth:`SimCluster.call`, :meth:`SimCluster.spawn`), so ``rpc``, ``global_``,
``pg``, GenServers and supervisors work as on real nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from ... import errand
from ...distribution import epmd
from ...distribution.epmd import EpmdServer
from ...errors import PybeamError
from ...node import Node
from ...terms import Pid
from .loop import VirtualLoop
from .net import SimNetwork

__all__ = ["EPMD_PORT", "SimCluster", "run"]

T = TypeVar("T")

logger = logging.getLogger("pybeam.sim")

#: Where the simulated port mapper listens.
EPMD_PORT = 4369


class _SimEpmd(EpmdServer):
    """The real port mapper, with creations drawn from the run's seed (a
    fresh random one per name would make two runs' pids differ)."""

    def __init__(self, port: int, rng: random.Random, hosts: list[str]) -> None:
        super().__init__(port, hosts, max_requests=10_000, max_registrations=10_000)
        self._rng = rng

    def _next_creation(self, name: str) -> int:
        last = self._freed.pop(name, None)
        if last is None:
            return self._rng.randrange(1, 1 << 16)
        return last % epmd.MAX_CREATION + 1


class SimCluster:
    """``count`` (or ``names``) nodes on one :class:`VirtualLoop`, fully meshed.

    ``ticktime`` is every node's ``net_ticktime`` (a peer that stays silent
    for about that long is declared down); ``connect_timeout`` bounds a
    connect and a handshake; ``latency`` is each link's one-way latency in
    seconds. Start it inside :func:`run` (or on any :class:`VirtualLoop`).
    """

    def __init__(
        self,
        count: int = 3,
        *,
        names: Sequence[str] | None = None,
        ticktime: float = 4.0,
        connect_timeout: float = 2.0,
        latency: float = 0.001,
        cookie: str = "simulated",
        on_start: Callable[[SimCluster, str], Awaitable[None]] | None = None,
    ) -> None:
        self.names: list[str] = (
            list(names) if names is not None else [f"n{i}@127.0.0.1" for i in range(1, count + 1)]
        )
        self.ticktime = ticktime
        self.connect_timeout = connect_timeout
        self.latency = latency
        self.cookie = cookie
        #: Run after each node starts (at :meth:`start` and each :meth:`restart`):
        #: what a node's boot script would start (applications, services).
        self.on_start = on_start
        #: The running incarnation of each node (a killed one is absent).
        self.nodes: dict[str, Node] = {}
        #: What happened, in order: (virtual seconds since start, event, details...).
        self.trace: list[tuple[Any, ...]] = []
        self._loop: VirtualLoop | None = None
        self._net: SimNetwork | None = None
        self._epmd: _SimEpmd | None = None
        self._t0 = 0.0
        self._background: set[asyncio.Task[Any]] = set()
        #: Killed nodes whose distribution may still be closing.
        self._reaping: list[Node] = []
        self._thaws: dict[str, asyncio.TimerHandle] = {}

    def __repr__(self) -> str:
        return f"<SimCluster {self.names}>"

    @property
    def net(self) -> SimNetwork:
        """The simulated network (for faults not wrapped here)."""
        if self._net is None:
            raise PybeamError("the simulated cluster is not started")
        return self._net

    @property
    def loop(self) -> VirtualLoop:
        if self._loop is None:
            raise PybeamError("the simulated cluster is not started")
        return self._loop

    def now(self) -> float:
        """Virtual seconds since the cluster started."""
        return round(self.loop.time() - self._t0, 6)

    def record(self, event: str, *details: Any) -> None:
        """Add an event to :attr:`trace` (faults record themselves)."""
        self.trace.append((self.now(), event, *details))

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> SimCluster:
        """Start the port mapper and every node, and wait for the full mesh."""
        loop = asyncio.get_running_loop()
        if not isinstance(loop, VirtualLoop):
            raise PybeamError("a SimCluster runs on a VirtualLoop: start it inside pybeam.testing.sim.run()")
        if loop.net is not None:
            raise PybeamError("this loop already has a simulated cluster")
        self._loop = loop
        self._t0 = loop.time()
        self._net = loop.net = SimNetwork(loop, latency=self.latency)
        # One mapper for the whole simulation, on every host the names name
        # (nodes look each other up on the host of the name).
        hosts = list(dict.fromkeys(["127.0.0.1", *(n.partition("@")[2] for n in self.names)]))
        self._epmd = _SimEpmd(EPMD_PORT, random.Random(loop.seed), hosts)
        await self._epmd.start()
        for name in self.names:
            await self._boot(name)
        await self.wait_meshed()
        if len(self.names) > 1:
            lost = [name for name in self.names if not self.net.ends(name)]
            if lost:
                # Faults act on the ends a node owns: without owners they
                # would silently do nothing.
                raise PybeamError(
                    f"the simulated network cannot tell which node opened a connection ({lost[0]} owns none): "
                    "pybeam.testing.sim.loop._find_owner no longer matches the distribution's code"
                )
        if self.on_start is not None:
            for name in self.names:
                await self.on_start(self, name)
        self.record("started", len(self.names))
        return self

    def _new_node(self, name: str) -> Node:
        return Node(
            name,
            cookie=self.cookie,
            ticktime=self.ticktime,
            epmd_port=EPMD_PORT,
            connect_timeout=self.connect_timeout,
            # Nothing to gain in virtual time, and a spin's length is real
            # time: its extra iterations would change the interleaving.
            busy_wait=0,
        )

    async def _boot(self, name: str) -> Node:
        for _ in range(100):
            node = self._new_node(name)
            try:
                await node.start()
            except epmd.EpmdError as e:
                if e.reason != "name_taken":
                    raise
                # The mapper has not seen the crashed incarnation's
                # connection close yet: a moment later it has.
                await asyncio.sleep(self.latency * 2 + 0.01)
                continue
            self.nodes[name] = node
            return node
        raise PybeamError(f"{name} could not register with the port mapper")

    async def stop(self) -> None:
        """Stop every node (cleanly) and the port mapper."""
        for node in list(self._reaping):
            await node.wait_stopped()
        self._reaping.clear()
        for name in list(self.nodes):
            node = self.nodes.pop(name)
            with contextlib.suppress(Exception):
                await node.stop(timeout=1.0)
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._epmd is not None:
            await self._epmd.close()
            self._epmd = None
        if self._loop is not None:
            self._loop.net = None

    async def __aenter__(self) -> SimCluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- running code on nodes -----------------------------------------------------

    def node(self, name: str) -> Node:
        """The running node ``name`` (PybeamError if it is down)."""
        node = self.nodes.get(name)
        if node is None or not node.running:
            raise PybeamError(f"{name} is not running")
        return node

    async def call(self, name: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` in a new process on node ``name``; its result."""
        return await errand.run(fn, *args, node=self.node(name))

    def spawn(self, name: str, fn: Callable[..., Any], *args: Any) -> Pid:
        """Start ``fn(*args)`` as a process on node ``name``."""
        return self.node(name).spawn(fn, args)[0]

    async def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass."""
        await asyncio.sleep(seconds)

    def connected(self, name: str) -> list[str]:
        """The nodes ``name`` is connected to now (``nodes()`` as that node sees it)."""
        node = self.nodes.get(name)
        dist: Any = node.dist if node is not None else None
        return list(dist.nodes()) if dist is not None else []

    async def wait_meshed(self, names: Iterable[str] | None = None, timeout: float = 60.0) -> None:
        """Connect the running nodes (all, or ``names``) to each other and wait
        until each sees all the others; PybeamError after ``timeout`` virtual seconds."""
        group = sorted(self.nodes if names is None else set(names) & set(self.nodes))
        deadline = self.loop.time() + timeout
        while True:
            # Both ways: a peer may still hold the connection of a crashed
            # incarnation that the restarted one has never made.
            seen = {name: set(self.connected(name)) for name in group}
            missing = [(a, b) for a in group for b in group if a != b and b not in seen[a]]
            if not missing:
                return
            if self.loop.time() > deadline:
                raise PybeamError(f"no full mesh within {timeout}s: {missing[:5]} not connected")
            for a, b in missing[:64]:
                dist: Any = self.nodes[a].dist
                self._spawn_bg(dist.connect(b))
            await asyncio.sleep(0.1)

    def _spawn_bg(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- faults --------------------------------------------------------------------------

    def partition(
        self, side: Iterable[str], other: Iterable[str] | None = None, *, oneway: bool = False
    ) -> None:
        """Cut ``side`` off from ``other`` (default: every other node); with
        ``oneway`` only traffic from ``side`` to ``other`` is held."""
        side = sorted(side)
        rest = sorted(other) if other is not None else [n for n in self.names if n not in side]
        self.net.partition(side, rest, oneway=oneway)
        self.record("partition", side, rest, "oneway" if oneway else "both")

    def heal(self) -> None:
        """End every partition."""
        self.net.heal()
        self.record("heal")

    def delay(self, a: str, b: str, seconds: float, *, both: bool = True) -> None:
        """Delay traffic from ``a`` to ``b`` (and back, if ``both``) by ``seconds`` (0 ends it)."""
        self.net.delay(a, b, seconds)
        if both:
            self.net.delay(b, a, seconds)
        self.record("delay", a, b, seconds)

    def drop(self, a: str, b: str, refuse_for: float = 0.0) -> None:
        """Break the connection between ``a`` and ``b`` now (both see noconnection)
        and refuse new ones for ``refuse_for`` seconds."""
        broken = self.net.drop(a, b, refuse_for)
        self.record("drop", a, b, refuse_for, broken)

    def freeze(self, name: str, seconds: float) -> None:
        """Stop ``name`` for ``seconds``, as SIGSTOP would: none of its
        processes, timers or net kernel runs, and its traffic both ways is held
        (delivered when it thaws, if the connection still stands)."""
        self.net.freeze(name)
        self.loop.freeze(name)
        old = self._thaws.pop(name, None)
        if old is not None:
            old.cancel()
        self._thaws[name] = self.loop.call_later(seconds, self._thaw, name)
        self.record("freeze", name, seconds)

    def _thaw(self, name: str) -> None:
        self._thaws.pop(name, None)
        self.loop.thaw(name)
        self.net.thaw(name)
        self.record("thaw", name)

    def kill(self, name: str, *, fin: bool = False) -> None:
        """Crash ``name``: its connections vanish (peers notice by their tick
        timeout; with ``fin`` at once, as when only the OS process dies),
        then it halts (:meth:`pybeam.Node.halt`): every process dies at once."""
        node = self.nodes.pop(name, None)
        if node is None:
            return
        thaw = self._thaws.pop(name, None)
        if thaw is not None:
            thaw.cancel()
        # What a frozen node was kept from runs now, against dead processes
        # and a severed network: the crash is what ends it.
        self.loop.thaw(name)
        self.net.crashed(node)
        self.net.sever(name, fin=fin)
        # Every process dies now; what is left (the net kernel's tasks, the
        # mapper registration) goes in the background: nothing of it can
        # reach another node any more.
        node.halt()
        self._reaping.append(node)
        self.record("kill", name)

    async def restart(self, name: str) -> Node:
        """Start ``name`` again (a new incarnation: a new creation) and connect it to the cluster."""
        if name in self.nodes:
            raise PybeamError(f"{name} is running")
        node = await self._boot(name)
        self.record("restart", name)
        if self.on_start is not None:
            await self.on_start(self, name)
        return node

    def alive(self, name: str) -> bool:
        """Whether ``name`` runs now."""
        return name in self.nodes

    async def recover(self, settle: float = 0.0) -> None:
        """Undo every fault: heal, thaw, end delays, restart killed nodes; let
        the connections the faults doomed time out; wait for the full mesh,
        then ``settle`` more virtual seconds."""
        net = self.net
        net.heal()
        for name, handle in list(self._thaws.items()):
            handle.cancel()
            self._thaw(name)
        net.clear_delays()
        for name in self.names:
            if name not in self.nodes:
                await self.restart(name)
        # Connections that a fault has doomed (a tick timeout running out)
        # go down first, so that the mesh made next is one that lasts.
        await asyncio.sleep(self.ticktime * 1.5)
        await self.wait_meshed()
        self.record("recovered")
        if settle > 0:
            await asyncio.sleep(settle)


def run(main: Callable[[], Awaitable[T]], *, seed: int = 0) -> T:
    """Run ``main()`` to completion on a fresh :class:`VirtualLoop` seeded
    with ``seed`` (pybeam reads time only from its loop, so all of it runs on
    virtual time); returns its result.

    The module ``random`` is reseeded from ``seed`` for the run (and put back
    after), so that what pybeam draws from it (``global``'s back-offs) is
    the same in every run with that seed.
    """
    loop = VirtualLoop(seed)
    state = random.getstate()
    random.seed(seed)
    try:
        return loop.run_until_complete(main())
    finally:
        _cancel_all(loop)
        loop.close()
        random.setstate(state)


def _cancel_all(loop: VirtualLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        with contextlib.suppress(BaseException):
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

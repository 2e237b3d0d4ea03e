"""Replaying a schedule on real nodes: confirm a simulated counterexample.

:func:`replay_schedule` runs a :class:`~pybeam.testing.sim.Scenario` and a
schedule on a :class:`~pybeam.testing.LocalCluster` (OS processes, real TCP),
from the calling node (the manager, which must be distributed), through
:class:`RealCluster`: the same methods a scenario uses on a
:class:`~pybeam.testing.sim.SimCluster` (``names``, ``call``, ``spawn``,
``alive``, ``sleep``, ``connected``, ``recover``), so one scenario runs on both.

How each step becomes real (seconds are schedule seconds times ``time_scale``):

===========================  ==========================================================
``Wait(s)``                  ``asyncio.sleep``
``Partition(side)``          :func:`pybeam.testing.partition` (Schism: the side is cut
                             off from every other node at once)
``Partition(side, other)``   each pair across is disconnected at once, and each node
                             of a pair is given a random cookie for the other, so
                             neither can reconnect until ``Heal``; other links stay
``Partition(.., oneway=1)``  the pair's connection runs through a
                             :class:`~pybeam.testing.FaultProxy` whose direction
                             side -> other is stalled (bytes held, socket open): the
                             receiver's tick timeout drops the connection, as in the
                             simulation; the cookies forbid a reconnect either way
``Heal()``                   Schism's heal, cookies restored, stalled directions
                             resumed (held bytes delivered if the connection stood),
                             and every cut pair connected again
``Kill(i)``                  SIGSTOP (the kernel keeps its sockets open: no FIN,
                             peers notice by their tick timeout), then SIGKILL once
                             no live node lists it any more
``Kill(i, fin=True)``        SIGKILL (the OS closes its sockets: peers see a FIN)
``Restart(i)``               a new OS process under the same name, inside the
                             partitions and refusals in force (Schism's cookie, the
                             per-pair cookies), connected to the nodes they allow
``Freeze(i, s)``             SIGSTOP, then SIGCONT ``s`` later
``Drop(a, b, s)``            random cookies on the pair for ``s`` (new connections
                             fail their handshake), then ``disconnect`` on ``a``
``Delay(a, b, s)``           the pair's connection through a FaultProxy delaying both
                             ways by ``s``, order kept (0 ends it)
===========================  ==========================================================

What differs from the simulation (docs/testing_failures.md): a symmetric
partition breaks connections at once instead of at the tick timeout; a
delay or stall holds only the connection through the proxy (a connection
made later, after a fault broke that one, is direct until a later step
routes it through the proxy again, which reconnects the pair); a node being
silently killed still accepts TCP connections until it is reaped (their
handshake hangs) where a simulated one refuses them; a refused connection
(``Drop``) fails its handshake rather than its ``connect``; a restarted
node joins the mesh its faults allow at once, where a simulated one connects
when its code first talks to another node.

``time_scale`` maps virtual seconds to real ones; by default the ratio of the
real cluster's tick time to the scenario's, so that a wait "longer than the
tick time" stays one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ... import net, rpc
from ...node import current_node
from ...terms import Pid
from ..cluster import LocalCluster
from ..eventually import eventually
from ..proxy import Direction, FaultProxy, listening_port, route_through
from ..schism import heal, partition, partitioned
from .runner import Scenario
from .schedule import Delay, Drop, Freeze, Heal, Kill, Partition, Restart, Step, Wait

__all__ = ["RealCluster", "needs_proxies", "replay_schedule"]

T = TypeVar("T")

Pair = tuple[str, str]


async def _spawn(fn: Callable[..., Any], args: tuple[Any, ...]) -> Pid:
    import pybeam

    return pybeam.spawn(fn, *args)


async def _disconnect(node: str) -> bool:
    import pybeam

    return pybeam.disconnect(node)


def _set_peer_cookie(peer: str, cookie: str) -> None:
    """On a node (by rpc): use ``cookie`` with ``peer`` alone (a handshake with it fails)."""
    net.set_cookie(cookie, peer)


def _clear_peer_cookie(peer: str) -> None:
    """On a node (by rpc): undo :func:`_set_peer_cookie`."""
    dist: Any = current_node().dist
    dist.clear_cookie(peer)


def needs_proxies(schedule: list[Step]) -> bool:
    """Whether replaying ``schedule`` puts proxies between the nodes (a delay or a one-way partition)."""
    return any(isinstance(s, Delay) or (isinstance(s, Partition) and s.oneway) for s in schedule)


def _pair(a: str, b: str) -> Pair:
    """The pair's key: the smaller name dials the greater one through the pair's proxy."""
    return (a, b) if a < b else (b, a)


def _direction(src: str, dst: str) -> Direction:
    """The proxy direction of traffic from ``src`` to ``dst`` (the smaller name is the client)."""
    return "to_server" if src < dst else "to_client"


class RealCluster:
    """A :class:`LocalCluster` seen through the methods a scenario uses."""

    def __init__(self, cluster: LocalCluster, *, time_scale: float = 1.0) -> None:
        self.cluster = cluster
        self.names: list[str] = list(cluster.nodes)
        self.time_scale = time_scale
        #: Run after a node restarts (as :attr:`SimCluster.on_start`).
        self.on_start: Callable[[RealCluster, str], Awaitable[None]] | None = None
        self._stopped: set[str] = set()
        #: Per pair, the proxy its connection may run through.
        self.proxies: dict[Pair, FaultProxy] = {}
        self._delays: dict[Pair, float] = {}
        self._stalls: dict[Pair, set[Direction]] = {}
        #: Pairs whose handshakes fail (per-peer cookies), and why (partition, drop).
        self._cuts: dict[Pair, set[str]] = {}
        #: Silently killed nodes (stopped), each with the task that SIGKILLs it.
        self._dying: dict[str, asyncio.Task[None]] = {}
        self._timers: set[asyncio.Task[None]] = set()

    async def call(self, name: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``fn(*args)`` on node ``name`` (by rpc); its result."""
        result: T = await rpc.call(name, fn, *args, timeout=30)
        return result

    async def spawn(self, name: str, fn: Callable[..., Any], *args: Any) -> Pid:
        """Start ``fn(*args)`` as a process on ``name``."""
        pid: Pid = await rpc.call(name, _spawn, fn, args)
        return pid

    def alive(self, name: str) -> bool:
        """Whether ``name`` runs (a node being silently killed does not)."""
        return self.cluster.alive(name) and name not in self._dying

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of schedule time (``seconds * time_scale`` real ones)."""
        await asyncio.sleep(seconds * self.time_scale)

    async def connected(self, name: str) -> list[str]:
        nodes: list[str] = await rpc.call(name, "pybeam.net:nodes")
        return nodes

    def _name(self, index: int) -> str:
        return self.names[index % len(self.names)]

    async def apply(self, step: Step) -> None:
        """Do ``step`` to the real nodes (see the module's table)."""
        match step:
            case Wait(seconds):
                await self.sleep(seconds)
            case Partition(side, None, False):
                await partition(sorted({self._name(i) for i in side}))
            case Partition(side, other, oneway):
                cut = sorted({self._name(i) for i in side})
                rest = self.names if other is None else sorted({self._name(i) for i in other})
                await self._partition(cut, [n for n in rest if n not in cut], oneway)
            case Heal():
                await self._heal()
            case Kill(node, fin):
                await self._kill(self._name(node), fin)
            case Restart(node):
                name = self._name(node)
                if not self.alive(name):
                    await self.restart(name)
            case Freeze(node, seconds):
                name = self._name(node)
                if self.alive(name):
                    os.kill(self.cluster.processes[name].pid, signal.SIGSTOP)
                    self._stopped.add(name)
                    loop = asyncio.get_running_loop()
                    loop.call_later(seconds * self.time_scale, self._thaw, name)
            case Drop(a, b, seconds):
                first, second = self._name(a), self._name(b)
                if first != second and self.alive(first):
                    if seconds > 0:
                        pair = _pair(first, second)
                        await self._cut(pair, "drop")
                        self._later(seconds * self.time_scale, lambda: self._uncut(pair, "drop"))
                    with contextlib.suppress(Exception):
                        await rpc.call(first, _disconnect, second, timeout=5)
            case Delay(a, b, seconds):
                first, second = self._name(a), self._name(b)
                if first != second:
                    await self._delay(_pair(first, second), seconds * self.time_scale)
            case _:
                raise TypeError(f"not a schedule step: {step!r}")

    # -- proxies --------------------------------------------------------------------------

    async def route(self, pair: Pair) -> FaultProxy | None:
        """Make the connection of ``pair`` run through its proxy (made on first
        use, again after the target restarted); the proxy, None if there is
        none yet. A pair that cannot connect now (a node down or frozen, the
        pair cut) is left as it is."""
        dialer, target = pair
        if not (self.alive(dialer) and self.alive(target)):
            return None
        if dialer in self._stopped or target in self._stopped:
            return self.proxies.get(pair)  # frozen: cannot answer, and its connection stands as it is
        port = await listening_port(target)
        proxy = self.proxies.get(pair)
        if proxy is not None and proxy.target[1] != port:
            await proxy.close()
            proxy = None
        if proxy is None:
            proxy = self.proxies[pair] = await FaultProxy(port).start()
            proxy.delay(self._delays.get(pair, 0.0))
            for direction in self._stalls.get(pair, ()):
                proxy.stall(direction)
        if proxy.connections or pair in self._cuts:
            return proxy
        await route_through(proxy, dialer, target)
        return proxy

    async def route_all(self) -> None:
        """Put every pair's connection through its proxy (before a schedule that needs them)."""
        for i, a in enumerate(self.names):
            for b in self.names[i + 1 :]:
                await self.route(_pair(a, b))

    async def _delay(self, pair: Pair, seconds: float) -> None:
        self._delays[pair] = max(seconds, 0.0)
        proxy = await self.route(pair)
        if proxy is not None:
            proxy.delay(self._delays[pair])

    # -- partitions -----------------------------------------------------------------------

    async def _cut(self, pair: Pair, why: str) -> None:
        """Make every handshake between the pair fail (a random cookie each way)."""
        reasons = self._cuts.setdefault(pair, set())
        reasons.add(why)
        if len(reasons) > 1:
            return
        for node, peer in (pair, pair[::-1]):
            if self.cluster.alive(node):
                with contextlib.suppress(Exception):
                    await rpc.call(node, _set_peer_cookie, peer, "CUT" + secrets.token_hex(12), timeout=5)

    async def _uncut(self, pair: Pair, why: str) -> None:
        reasons = self._cuts.get(pair)
        if reasons is None:
            return
        reasons.discard(why)
        if reasons:
            return
        del self._cuts[pair]
        for node, peer in (pair, pair[::-1]):
            if self.cluster.alive(node):
                with contextlib.suppress(Exception):
                    await rpc.call(node, _clear_peer_cookie, peer, timeout=5)

    def _later(self, seconds: float, what: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await asyncio.sleep(seconds)
            await what()

        task = asyncio.ensure_future(run())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def _partition(self, side: list[str], other: list[str], oneway: bool) -> None:
        pairs = [(x, y) for x in side for y in other if x != y]
        if oneway:
            # Stall first, on the connection as it is: the cut comes after, so
            # that routing through the proxy is not refused by it.
            for x, y in pairs:
                pair = _pair(x, y)
                proxy = await self.route(pair)
                self._stalls.setdefault(pair, set()).add(_direction(x, y))
                if proxy is not None:
                    proxy.stall(_direction(x, y))
        for x, y in pairs:
            await self._cut(_pair(x, y), "partition")
        if not oneway:
            for x, y in pairs:
                if self.cluster.alive(x):
                    with contextlib.suppress(Exception):
                        await rpc.call(x, _disconnect, y, timeout=5)

    async def _heal(self) -> None:
        cut = list(partitioned())
        if cut:
            await heal(cut)
        healed = [pair for pair, why in self._cuts.items() if "partition" in why]
        for pair, directions in list(self._stalls.items()):
            proxy = self.proxies.get(pair)
            if proxy is not None:
                for direction in directions:
                    proxy.resume(direction)
                proxy.delay(self._delays.get(pair, 0.0))  # resume ends delays too
        self._stalls.clear()
        for pair in healed:
            await self._uncut(pair, "partition")
        for low, high in healed:
            if self.alive(low) and self.alive(high) and _pair(low, high) not in self._cuts:
                with contextlib.suppress(Exception):
                    await rpc.call(high, "pybeam.net:connect", low, timeout=10)

    # -- kills ----------------------------------------------------------------------------

    async def _kill(self, name: str, fin: bool) -> None:
        if not self.alive(name):
            return
        if fin:
            self._thaw(name)
            self.cluster.kill(name)
            return
        # Stopped, its sockets stay open and silent (the kernel still ACKs):
        # peers notice only by their tick timeout, as a host gone.
        self._stopped.discard(name)  # a pending thaw must not wake it
        os.kill(self.cluster.processes[name].pid, signal.SIGSTOP)
        self._dying[name] = asyncio.ensure_future(self._reap(name))

    async def _reap(self, name: str) -> None:
        """SIGKILL a silently killed node once no live node (the manager included) lists it."""

        async def forgotten() -> bool:
            if name in net.nodes():
                return False
            for other in self.names:
                if other != name and self.alive(other):
                    try:
                        if name in await rpc.call(other, "pybeam.net:nodes", timeout=2):
                            return False
                    except Exception:
                        continue  # frozen or cut off: it cannot hold the reap back
            return True

        try:
            await eventually(forgotten, timeout=60, every=0.2, what=f"every node noticed {name} is gone")
        except AssertionError:
            pass  # reaped anyway: the point is only that no FIN came first
        finally:
            self.cluster.kill(name)

    async def _reaped(self, name: str) -> None:
        """End a silent kill now (SIGKILL)."""
        task = self._dying.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.cluster.kill(name)

    def _thaw(self, name: str) -> None:
        if name in self._stopped:
            self._stopped.discard(name)
            with contextlib.suppress(OSError):
                os.kill(self.cluster.processes[name].pid, signal.SIGCONT)

    async def restart(self, name: str) -> None:
        """Start a new OS process for ``name`` (a new incarnation) under the
        faults in force: inside its partition (Schism's, see
        :meth:`LocalCluster.restart_node`), refusing the peers a group
        partition or a ``Drop`` keeps it from; it returns once the new node is
        connected to the live nodes those faults allow, as in the simulation
        (where nothing waits for a refusal or a partition to end)."""
        await self._reaped(name)
        refuse = sorted({peer for pair in self._cuts if name in pair for peer in pair} - {name})
        await self.cluster.restart_node(name, refuse=refuse)
        if self.on_start is not None:
            await self.on_start(self, name)

    async def recover(self, settle: float = 0.0) -> None:
        """Heal, thaw, end delays and refusals, restart the killed nodes, wait
        for the full mesh, then ``settle``."""
        for name in list(self._stopped):
            self._thaw(name)
        await self._heal()
        for timer in list(self._timers):
            timer.cancel()
        for pair in list(self._cuts):
            self._cuts[pair] = {"drop"}
            await self._uncut(pair, "drop")
        for pair in list(self._delays):
            await self._delay(pair, 0.0)
        for name in self.names:
            if not self.alive(name):
                await self.restart(name)

        async def meshed() -> bool:
            for name in self.names:
                seen = set(await self.connected(name))
                if not set(self.names) - {name} <= seen:
                    for other in set(self.names) - {name} - seen:
                        with contextlib.suppress(Exception):
                            await rpc.call(name, "pybeam.net:connect", other, timeout=5)
                    return False
            return True

        await eventually(meshed, timeout=30, what="full mesh after recovery")
        await self.sleep(settle)

    async def settled(self, every: float = 0.5) -> None:
        """Wait until the manager has stayed connected to every live node for
        ``every`` seconds: the calls a scenario makes are not part of the
        schedule, and a fresh cluster may still be replacing connections."""
        last: set[str] = set()

        def steady() -> bool:
            nonlocal last
            live = {n for n in self.names if self.alive(n) and n not in self._stopped}
            now = live & set(net.nodes())
            stable = now == live and last == live
            last = now
            return stable

        await eventually(steady, timeout=30, every=every, what="the manager steadily connected to every node")

    async def close(self) -> None:
        """Thaw what is stopped, end the silent kills and timers, close the proxies."""
        for name in list(self._stopped):
            self._thaw(name)
        for timer in list(self._timers):
            timer.cancel()
        for name in list(self._dying):
            await self._reaped(name)
        for proxy in self.proxies.values():
            await proxy.close()
        self.proxies.clear()


async def replay_schedule(
    make: Callable[[], Scenario],
    schedule: list[Step],
    *,
    time_scale: float | None = None,
    startup_timeout: float = 30.0,
) -> None:
    """Run scenario ``make()`` under ``schedule`` on a new :class:`LocalCluster`
    of ``make().nodes`` real nodes managed by the calling node; raises what the
    scenario raises. Every node is stopped afterwards. If the schedule has a
    delay or a one-way partition, every pair's connection is put through a
    :class:`~pybeam.testing.FaultProxy` before the scenario starts."""
    scenario = make()
    async with LocalCluster(scenario.nodes, startup_timeout=startup_timeout) as real:
        ticktime = real.ticktime or scenario.ticktime
        scale = time_scale if time_scale is not None else ticktime / scenario.ticktime
        cluster = RealCluster(real, time_scale=scale)
        started: Any = scenario.start
        cluster.on_start = started
        try:
            if needs_proxies(schedule):
                await cluster.route_all()
            await cluster.settled()
            # The scenario is written for a SimCluster; RealCluster has its methods.
            as_sim: Any = cluster
            for name in cluster.names:
                await scenario.start(as_sim, name)
            for i, step in enumerate(schedule):
                await cluster.apply(step)
                await scenario.during(as_sim, i)
                await scenario.invariant(as_sim)
            await cluster.recover(scenario.settle)
            await scenario.check(as_sim)
        finally:
            await cluster.close()

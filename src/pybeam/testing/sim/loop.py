"""A deterministic event loop in virtual time (trio's ``MockClock(autojump)`` for asyncio).

:class:`VirtualLoop` is an asyncio selector loop whose clock is virtual: when
nothing is ready to run, it jumps straight to the next timer instead of
sleeping, so ``asyncio.sleep(60)``, tick timeouts and ``receive(timeout=...)``
cost no wall-clock time. Each iteration runs its ready callbacks in an order
drawn from a seeded random generator: the seed picks one interleaving of the
ready processes, the same seed picks the same one again.

Everything the loop runs must stay inside it: a loop that has nothing ready,
no timer and no I/O has deadlocked, and says so (:class:`SimDeadlock`) rather
than hang.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import sys
import weakref
from contextvars import Context
from typing import Any, TypeVar

from ...node import Node
from ...process import Process
from ...scheduler import ProcessTask

__all__ = ["SimDeadlock", "VirtualLoop", "owner_of_task"]

T = TypeVar("T")

#: Virtual time starts here (not 0: code may treat 0 as "never").
EPOCH = 1000.0

#: Real seconds a loop with nothing to do waits for a thread to wake it
#: (``call_soon_threadsafe``) before it calls the run a deadlock.
_IDLE_GRACE = 2.0

#: How many frames up :func:`_find_owner` looks for the node doing the call.
_OWNER_DEPTH = 12


class SimDeadlock(RuntimeError):
    """Nothing can ever run again: every task waits, no timer is set."""


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop in virtual time whose interleaving a seed fixes.

    ``seed=None`` keeps asyncio's FIFO order (still deterministic).
    :attr:`net` is the simulated network the loop serves ``create_connection``
    and ``create_server`` from (see :mod:`pybeam.testing.sim.net`); None
    means the loop refuses both, so nothing can reach a real socket.
    """

    #: Tells pybeam's run queues to make every step of a process a callback of
    #: its own, which this loop orders (see pybeam.scheduler).
    interleaves = True

    def __init__(self, seed: int | None = 0) -> None:
        super().__init__()
        self._vtime = EPOCH
        self.seed = seed
        self._rng = random.Random(seed) if seed is not None else None
        self.net: Any = None
        #: Which simulated node each task works for (None: the harness).
        self._owners: weakref.WeakKeyDictionary[asyncio.Task[Any], Node | None] = weakref.WeakKeyDictionary()
        #: Callbacks run so far: a cheap measure of the work a run did.
        self.steps = 0
        #: Frozen nodes, and the callbacks of theirs that came due meanwhile.
        self._frozen: set[str] = set()
        self._held: list[tuple[str | None, Any]] = []

    def time(self) -> float:
        """Virtual seconds: only ever moves when the loop jumps to a timer."""
        return self._vtime

    # -- who is doing this ----------------------------------------------------------

    def create_task(self, coro: Any, *, name: object = None, context: Context | None = None) -> Any:
        task = super().create_task(coro, name=name, context=context)
        self._owners[task] = _find_owner(sys._getframe(1)) or self.current_owner()
        return task

    def current_owner(self) -> Node | None:
        """The node the running task works for (None: the harness)."""
        task = asyncio.current_task(self)
        return self._task_owner(task) if task is not None else None

    def _task_owner(self, task: asyncio.Task[Any]) -> Node | None:
        if task in self._owners:
            return self._owners[task]
        # A process's own task is made without loop.create_task (see
        # pybeam.node.Node.spawn): its coroutine is the process, which knows its node.
        proc = getattr(task, "_proc", None)  # a ProcessTask's
        node = proc.node if type(proc) is Process else None
        return node if isinstance(node, Node) and node.distributed else None

    def owner(self) -> Node | None:
        """The node the running code works for: found on the stack, else its task's."""
        return _find_owner(sys._getframe(1)) or self.current_owner()

    # -- the network ----------------------------------------------------------------

    def _check_network(self, kw: dict[str, Any]) -> None:
        if self.net is None:
            raise OSError("a simulated loop has no real network")
        if kw.get("ssl") is not None:
            raise OSError("TLS is not simulated")

    async def create_connection(
        self, protocol_factory: Any, host: Any = None, port: Any = None, **kw: Any
    ) -> Any:
        self._check_network(kw)
        return await self.net.connect(self.owner(), protocol_factory, host, port)

    async def create_server(
        self, protocol_factory: Any, host: Any = None, port: Any = None, **kw: Any
    ) -> Any:
        self._check_network(kw)
        return self.net.listen(self.owner(), protocol_factory, host, port)

    async def getaddrinfo(self, host: Any, port: Any, **kw: Any) -> Any:
        raise OSError(f"a simulated loop resolves no names (asked for {host!r})")

    # -- the iteration ----------------------------------------------------------------

    def _run_once(self) -> None:
        # asyncio's own loop state (private, hence Any): this loop replaces its iteration.
        this: Any = self
        scheduled = this._scheduled
        while scheduled and scheduled[0]._cancelled:
            this._timer_cancelled_count -= 1
            heapq.heappop(scheduled)._scheduled = False
        # Threads (call_soon_threadsafe) and signals still wake the loop.
        events = this._selector.select(0)
        if not events and not this._ready and not this._stopping:
            if scheduled:
                self._vtime = max(self._vtime, scheduled[0]._when)
            else:
                events = this._selector.select(_IDLE_GRACE)
                if not events:
                    raise SimDeadlock(
                        f"simulation deadlock at virtual time {self._vtime - EPOCH:.3f}s: "
                        "every task waits and no timer is set"
                        + (f" ({len(self._held)} callbacks of frozen nodes held)" if self._held else "")
                    )
        this._process_events(events)
        now = self._vtime
        while scheduled and scheduled[0]._when <= now:
            handle = heapq.heappop(scheduled)
            handle._scheduled = False
            this._ready.append(handle)
        ready = this._ready
        batch = [ready.popleft() for _ in range(len(ready))]
        if self._rng is not None and len(batch) > 1:
            self._rng.shuffle(batch)
        self.steps += len(batch)
        frozen = self._frozen
        for handle in batch:
            if handle._cancelled:
                continue
            if frozen:
                owner = self._owner_of(handle)
                if owner in frozen:
                    self._held.append((owner, handle))
                    continue
            handle._run()

    # -- frozen nodes ---------------------------------------------------------------------

    def freeze(self, node: str) -> None:
        """Run nothing of ``node`` (its processes, net kernel, timers) until :meth:`thaw`."""
        self._frozen.add(node)

    def thaw(self, node: str) -> None:
        """Let ``node`` run again: what it was kept from runs first, in order."""
        self._frozen.discard(node)
        held, self._held = self._held, []
        this: Any = self  # asyncio's private ready queue
        ready = this._ready
        for owner, handle in reversed(held):
            if owner == node:
                ready.appendleft(handle)
            else:
                self._held.insert(0, (owner, handle))

    def _owner_of(self, handle: Any) -> str | None:
        """The node a ready callback works for, if it can tell: a task's step
        (the task's node), or a bound method of a node, of something that has
        one as ``.node``, or of a connection (its net kernel's node)."""
        callback = handle._callback
        obj = getattr(callback, "__self__", None)
        if obj is None and handle._args:
            obj = handle._args[0]
        if obj is None:
            return None
        if isinstance(obj, (asyncio.Task, ProcessTask)):
            node = self._task_owner(obj)
            return node.name if node is not None else None
        if isinstance(obj, Node):
            return obj.name
        owner = getattr(obj, "owner", None)
        if isinstance(owner, str):
            return owner  # a simulated transport's end
        node = getattr(obj, "node", None)
        if not isinstance(node, Node):
            kernel = getattr(getattr(obj, "_dispatch", None), "__self__", None)
            node = getattr(kernel, "node", None)
        return node.name if isinstance(node, Node) else None


def owner_of_task(task: asyncio.Task[Any]) -> Node | None:
    """The simulated node ``task`` works for, if it runs on a :class:`VirtualLoop`."""
    loop = task.get_loop()
    return loop._task_owner(task) if isinstance(loop, VirtualLoop) else None


def _find_owner(frame: Any) -> Node | None:
    """The node whose code is on the stack: a ``self`` that is a distributed
    Node, or has one as ``.node`` (a net kernel, say)."""
    depth = 0
    while frame is not None and depth < _OWNER_DEPTH:
        this = frame.f_locals.get("self")
        if this is not None:
            if isinstance(this, Node):
                return this if this.distributed else None
            node = getattr(this, "node", None)
            if isinstance(node, Node):
                return node
        frame = frame.f_back
        depth += 1
    return None

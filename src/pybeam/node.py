"""The node: the process table, registered names, timers, and signal routing.

Every signal (a message, a link, an exit, a monitor, a DOWN) takes one path: the
node decides whether its target is local or remote; local goes straight to the
target process, remote goes to the node's :class:`RemoteRouter` (the
distribution layer, when the node has one). Without a router, a remote target
behaves as one on a node that cannot be reached: messages are dropped, links
and monitors fire at once with ``noconnection``.

A node is an async context manager. Code outside any process talks to the node
it entered most recently (or to a default node, ``nonode@nohost``, made on
first use for each event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import secrets
import traceback
import weakref
from collections.abc import Awaitable, Callable
from contextvars import Context as _Context
from typing import Any, Protocol

from . import process as _process
from .deadlines import Deadlines
from .errors import BadArg, NoProc
from .gc_policy import CHECK_EVERY
from .gc_policy import check as _gc_check
from .logtext import clip
from .nodename import check_node_name
from .pattern import ANY, compile_pattern
from .process import _CO_COROUTINE, Process, _call, _current, _is_async_function
from .scheduler import ProcessTask, RunQueue
from .terms import KILLED, NOCONNECTION, NOPROC, Pid, Ref

__all__ = ["Node", "RemoteRouter", "current_node"]

logger = logging.getLogger("pybeam")

DEFAULT_NAME = "nonode@nohost"
_CHECK_MASK = CHECK_EVERY - 1
_new = object.__new__
#: Sets the current process (in the new process's context): bound once, as a
#: bound method made at each spawn would be one more object per spawn.
_set_current = _current.set

#: What :meth:`Node.stop` sends an application master (see :mod:`pybeam.application`).
APPLICATION_STOP = "$pybeam_application_stop"

_node_ctx: contextvars.ContextVar[Node | None] = contextvars.ContextVar("pybeam_node", default=None)
#: Every node started in this interpreter (and not yet freed), for the gc policy.
_bound_nodes: weakref.WeakSet[Node] = weakref.WeakSet()
_default_nodes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Node] = weakref.WeakKeyDictionary()


def current_node() -> Node:
    """The node that code running here acts on.

    Inside a process, its own node; elsewhere the node most recently entered
    with ``async with``; failing that, this event loop's default node.
    """
    proc = _current.get()
    if proc is not None:
        return proc.node
    node = _node_ctx.get()
    if node is not None and node.running:
        return node
    loop = asyncio.get_running_loop()
    node = _default_nodes.get(loop)
    if node is None:
        node = Node()
        node._bind(loop)
        _default_nodes[loop] = node
    return node


def _failed(signal: str, pid: Pid, target: Any, error: Exception) -> None:
    tb = "".join(traceback.format_exception(error))
    logger.error("the %s from exited %r to %r failed:\n%s", signal, pid, target, clip(tb.rstrip()))


class RemoteRouter(Protocol):
    """What a node needs from its distribution layer to reach other nodes.

    Each method hands one signal to the connection of the target's node,
    connecting first if needed. None of them blocks; a signal for a node that
    cannot be reached is dropped and, for links and monitors, answered with
    ``noconnection`` through :meth:`Node.link_exit` / :meth:`Node.deliver_down`.
    """

    def send(self, to: Pid, msg: Any) -> None:
        """Send ``msg`` to a pid on another node."""

    def send_name(self, name: str, node: str, msg: Any) -> None:
        """Send ``msg`` to the process registered as ``name`` on ``node``."""

    def link(self, sender: Pid, to: Pid) -> None:
        """Ask ``to``'s node to add the link sender <-> to."""

    def unlink(self, sender: Pid, to: Pid) -> None:
        """Ask ``to``'s node to remove the link sender <-> to."""

    def exit(self, sender: Pid, to: Pid, reason: Any, from_link: bool) -> None:
        """Deliver an exit signal to ``to``."""

    def monitor(self, watcher: Pid, target: Pid | tuple[str, str], ref: Ref) -> None:
        """Ask the target's node to monitor ``target`` for ``watcher``."""

    def demonitor(self, watcher: Pid, target: Pid | tuple[str, str], ref: Ref) -> None:
        """Ask the target's node to drop the monitor ``ref``."""

    def down(self, watcher: Pid, ref: Ref, item: Any, reason: Any, sender: Pid | None = None) -> None:
        """Deliver a DOWN for monitor ``ref`` to a watcher on another node.

        ``sender``: the process that ended (the DOWN must not overtake what
        it sent before), if ``item`` is not its pid; it need not be the
        process running now."""


class Distribution(RemoteRouter, Protocol):
    """A node's distribution layer, as the node starts and stops it."""

    async def start(self) -> int:
        """Start listening and registering; returns the node's creation."""

    async def stop(self) -> None:
        """Close every connection and stop listening."""


#: Builds a node's distribution layer: installed by :mod:`pybeam.distribution` (the
#: layer above, which this module must not import) when it is imported.
DistributionFactory = Callable[["Node", dict[str, Any]], Distribution]
_distribution_factory: DistributionFactory | None = None


def set_distribution_factory(factory: DistributionFactory) -> None:
    """Install what builds a named node's distribution layer."""
    global _distribution_factory
    _distribution_factory = factory


#: Starts a node's kernel (the supervisor of global and pg): installed by
#: :mod:`pybeam.kernel_sup`, which builds on this module.
KernelStarter = Callable[["Node"], Awaitable[None]]
_kernel_starter: KernelStarter | None = None


def set_kernel_starter(starter: KernelStarter) -> None:
    """Install what starts a node's kernel when the node starts."""
    global _kernel_starter
    _kernel_starter = starter


class Node:
    """A BEAM-like node: it owns processes, names and timers.

    ``name`` is ``name@host`` (``nonode@nohost`` if not given). ``creation``
    tells this incarnation of the node from earlier ones; a pid carries it, so
    a pid from an earlier life of a node never reaches a process of this one.

    A named node is distributed (unless ``distributed=False``): when started it
    listens on the host its name names (``a@10.0.0.5`` on 10.0.0.5; a
    hostname is resolved), or on ``listen`` if given (``"0.0.0.0"``, say; the
    name stays what peers dial; ``host`` is an older spelling of it), on
    ``port`` (0: any free one), registers with the port
    mapper (``epmd_port``, default ``$PYBEAM_EPMD_PORT`` or 4370), and takes
    its creation from it. ``cookie`` defaults to ``$PYBEAM_COOKIE`` or
    ``~/.pybeam.cookie``; ``ticktime`` is ``net_ticktime`` in seconds;
    a ``hidden`` node is left out of ``nodes()`` and of the full mesh.
    ``max_handshakes`` caps the incoming connections that have not proved the
    cookie yet (see the security model in docs/distribution.md). ``tls``
    (a :class:`pybeam.distribution.tls.TLSOptions`) runs every connection and
    the port mapper over TLS with mutual authentication. ``busy_limit``
    (bytes, 1 MB by default, as ``dist_buf_busy_limit``) and ``hard_limit``
    (128 MB) bound what is queued to one peer: see backpressure in
    docs/distribution.md. Messages over ``fragment_size`` bytes encoded (64 KiB;
    0: never) travel in fragments, interleaved with other senders' messages.
    ``busy_wait`` (seconds, or a level name of erl's ``+sbwt``; ``medium`` or
    ``$PYBEAM_BUSY_WAIT`` by default) is how long the loop keeps polling after
    traffic with a peer before it sleeps: see :mod:`pybeam.distribution.busy_wait`.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        cookie: str | None = None,
        distributed: bool | None = None,
        host: str | None = None,
        listen: str | None = None,
        port: int = 0,
        epmd_port: int | None = None,
        ticktime: float = 60.0,
        hidden: bool = False,
        max_frame: int | None = None,
        connect_timeout: float | None = None,
        creation: int | None = None,
        max_handshakes: int | None = None,
        tls: Any = None,
        busy_limit: int | None = None,
        hard_limit: int | None = None,
        fragment_size: int | None = None,
        busy_wait: float | str | None = None,
    ) -> None:
        if name is not None:
            check_node_name(name, "name")
        self.name = name or DEFAULT_NAME
        self.creation = creation if creation is not None else (secrets.randbits(32) or 1)
        self.distributed = name is not None if distributed is None else distributed
        if self.distributed and name is None:
            raise BadArg("a distributed node needs a name")
        options: dict[str, Any] = {
            "cookie": cookie,
            "listen": listen or host,
            "port": port,
            "epmd_port": epmd_port,
            "ticktime": ticktime,
            "hidden": hidden,
            "max_frame": max_frame,
            "connect_timeout": connect_timeout,
            "max_handshakes": max_handshakes,
            "tls": tls,
            "busy_limit": busy_limit,
            "hard_limit": hard_limit,
            "fragment_size": fragment_size,
            "busy_wait": busy_wait,
        }
        self._dist_options = {k: v for k, v in options.items() if v is not None or k == "cookie"}
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Where the loop's processes wait to run (see pybeam.scheduler).
        self.run_queue: RunQueue | None = None
        self.running = False
        self.remote: RemoteRouter | None = None
        self.dist: Distribution | None = None
        #: The live processes by pid number (an int key hashes in C; a Pid's
        #: __hash__ is a Python call). See :meth:`process` for a lookup by pid.
        self._procs: dict[int, Process] = {}
        self._names: dict[str, Process] = {}
        self._next_id = itertools.count(1).__next__
        self._next_ref = itertools.count(1).__next__
        self._timers: dict[Ref, tuple[asyncio.TimerHandle, Any, Any]] = {}
        #: The timers aimed at each local pid: they die with it (as in BEAM).
        self._pid_timers: dict[Pid, set[Ref]] = {}
        #: Each application's name and master, in start order (see :mod:`pybeam.application`).
        self._applications: list[tuple[str, Pid]] = []
        #: The kernel's master process (see :mod:`pybeam.kernel_sup`), once started.
        self.kernel: Pid | None = None
        self._stopping: asyncio.Future[None] | None = None
        #: A stop started from a process of this node, running in the background.
        self._stopper: asyncio.Task[None] | None = None
        #: Done when the node has stopped (see :meth:`wait_stopped`).
        self._stopped: asyncio.Future[None] | None = None
        #: A halt's closing of the distribution, running in the background (see :meth:`halt`).
        self._halter: asyncio.Task[None] | None = None
        self._ctx_tokens: list[tuple[contextvars.Token[Node | None], contextvars.Token[Process | None]]] = []

    def __repr__(self) -> str:
        return f"<Node {self.name} creation={self.creation} processes={len(self._procs)}>"

    # -- life cycle -------------------------------------------------------

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        _bound_nodes.add(self)
        self.loop = loop
        self.run_queue = RunQueue(loop)
        self.running = True
        self._stopped = loop.create_future()

    async def start(self) -> Node:
        """Start the node on the running event loop (and its distribution)."""
        if self.running:
            raise BadArg(f"node {self.name} is already running")
        if self.distributed:
            if _distribution_factory is None:
                raise BadArg("distribution is not available: import pybeam.distribution")
            dist = _distribution_factory(self, self._dist_options)
            self.creation = await dist.start()
            self.dist = self.remote = dist
        self._bind(asyncio.get_running_loop())
        if _kernel_starter is not None:
            await _kernel_starter(self)
        return self

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the node as ``init:stop`` does: its applications in reverse
        start order (each supervision tree from the top, within its shutdown
        times), then the kernel's (global, pg), then every remaining process
        (reason ``shutdown``), then the distribution. ``timeout`` bounds the
        wait for the remaining processes.

        Called from a process of this node (other than a task adopted as one,
        such as a script's main), it returns at once and the node stops in the
        background, as ``init:stop/0`` does: the caller is among the processes
        the stop ends, and waiting for them would wait for itself (a caller in
        an application's tree for its whole shutdown time). :meth:`wait_stopped`
        waits for the end. :meth:`halt` is the abrupt stop (``erlang:halt/0``);
        a stop of a halted node waits until the halt is over.
        """
        if not self.running:
            if self._halter is not None:
                await self.wait_stopped()  # halted: its distribution is closing
            return
        caller = _current.get()
        if caller is not None and caller.node is self and not caller.adopted:
            if self._stopper is None and self._stopping is None:
                assert self.loop is not None
                # A fresh context: the stop is no process's, and not the caller's.
                stopper = self._stopper = self.loop.create_task(
                    self.stop(timeout), name=f"pybeam-stop-{self.name}", context=contextvars.Context()
                )
                stopper.add_done_callback(self._stopper_done)
            return
        if self._stopping is not None:
            # A second stop (a second SIGTERM, say) waits for the first.
            await asyncio.shield(self._stopping)
            return
        stopping = self._stopping = asyncio.get_running_loop().create_future()
        try:
            await self._stop_applications()
        finally:
            try:
                await self._stop_processes(timeout)
            finally:
                self._stopping = None
                stopping.set_result(None)
                # A halt during the stop says when it is over (see halt).
                if self._halter is None and self._stopped is not None and not self._stopped.done():
                    self._stopped.set_result(None)

    def halt(self) -> None:
        """Stop the node abruptly, as ``erlang:halt/0``: every process ends now
        with reason ``killed`` (no application is stopped, no process gets
        ``shutdown``), timers are dropped, then the distribution closes and
        the node unregisters from the port mapper.

        Synchronous, as ``halt/0`` does not return to a process's code: when
        it returns every process has ended (a caller that is one of them, not
        a task adopted as one, is cancelled at its next await, as
        :meth:`stop` from a process returns at once). The distribution closes
        in the background: :meth:`wait_stopped` (or :meth:`stop`) waits for
        it. From the outside this is the crash of the OS process: as BEAM's
        halt, it sends no exit signal to other nodes, whose links and monitors
        get ``noconnection`` when the connections close. Nothing on a node
        that is not running (stopped, stopping its processes, or halted).
        """
        if not self.running:
            return
        assert self.loop is not None
        self.running = False
        self._drop_timers()
        # First: the processes' ends send nothing to other nodes (nor does
        # the caller, if it is one of them, after this), as BEAM's halt.
        self.remote = None
        for proc in list(self._procs.values()):
            self.terminate(proc, KILLED, cancel=not proc.adopted)
        # A fresh context: the close is no process's, and not the caller's.
        halter = self._halter = self.loop.create_task(
            self._close_after_halt(), name=f"pybeam-halt-{self.name}", context=contextvars.Context()
        )
        halter.add_done_callback(self._halted)

    def _drop_timers(self) -> None:
        """Cancel every timer (the node is going away: none will fire)."""
        for handle, _, _ in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._pid_timers.clear()

    async def _close_after_halt(self) -> None:
        if self.dist is not None:
            await self.dist.stop()

    def _halted(self, task: asyncio.Task[None]) -> None:
        self._halter = None
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "node %s: closing the distribution after a halt failed", self.name, exc_info=task.exception()
            )
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _stopper_done(self, task: asyncio.Task[None]) -> None:
        self._stopper = None
        if not task.cancelled() and task.exception() is not None:
            logger.error("node %s: stopping failed", self.name, exc_info=task.exception())

    async def wait_stopped(self) -> None:
        """Wait until the node has stopped, whoever stopped it (a signal, a
        process calling :meth:`stop`, a permanent application's exit). At once
        if it has stopped, or never started."""
        stopped = self._stopped
        if stopped is not None:  # None: never started
            await asyncio.shield(stopped)

    def add_application(self, name: str, master: Pid) -> None:
        """Record a started application's master, for :meth:`stop`."""
        self._applications.append((name, master))

    def applications(self) -> list[str]:
        """The running applications' names, in start order."""
        return [name for name, master in self._applications if self.process(master) is not None]

    async def _stop_applications(self) -> None:
        while self._applications:
            _, master = self._applications.pop()
            await self._stop_master(master)
        # The kernel last, as init:stop stops the kernel application last.
        if self.kernel is not None:
            await self._stop_master(self.kernel)

    async def _stop_master(self, master: Pid) -> None:
        proc = self.process(master)
        if proc is None or proc.task is None or proc.task is asyncio.current_task():
            return
        proc.put(APPLICATION_STOP)
        # No time limit, as init:stop's default: each child's own shutdown bounds it.
        await asyncio.wait([proc.task])

    async def _stop_processes(self, timeout: float) -> None:
        if not self.running:
            return
        self.running = False
        self._drop_timers()
        tasks = []
        current = asyncio.current_task()
        for proc in list(self._procs.values()):
            task = proc.task
            self.terminate(proc, "shutdown", cancel=not proc.adopted)
            if task is not None and task is not current and not proc.adopted:
                tasks.append(task)
        if self.dist is not None:
            # After the processes: their links and monitors elsewhere get their
            # real exit reasons before the connections close.
            await self.dist.stop()
            self.remote = None
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                logger.warning("process task %r did not stop within %ss of node shutdown", t, timeout)

    async def __aenter__(self) -> Node:
        await self.start()
        self._ctx_tokens.append((_node_ctx.set(self), _current.set(None)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        node_token, proc_token = self._ctx_tokens.pop()
        try:
            await self.stop()
        finally:
            _current.reset(proc_token)
            _node_ctx.reset(node_token)

    # -- identity ---------------------------------------------------------

    def make_ref(self) -> Ref:
        """A new unique reference."""
        # Ref(self.name, i, self.creation) without its __init__ call (one per
        # monitor, timer and gen_server call): the same slots, the same hash.
        ref = _new(Ref)
        ref.node = name = self.name
        ref.id = i = self._next_ref()
        ref.creation = creation = self.creation
        ref._hash = hash((name, i, creation, "ref"))
        return ref

    def process(self, pid: Pid) -> Process | None:
        """The live local process ``pid``, if any."""
        if type(pid) is not Pid:
            return None
        proc = pid._proc  # set on the pid a spawn made, while its process lives
        if proc is not None and proc.node is self:
            return proc
        if pid.node != self.name:
            return None  # another node's: no look in the table
        proc = self._procs.get(pid.id)
        # Only the number is the key: a pid of this node's earlier life may share it.
        if proc is None or proc.pid.creation != pid.creation:
            return None
        return proc

    def named(self, name: str) -> Process | None:
        """The live local process registered as ``name``, if any."""
        return self._names.get(name)

    def processes(self) -> list[Pid]:
        """The pids of every live process."""
        return [proc.pid for proc in self._procs.values()]

    # -- processes ----------------------------------------------------------

    def spawn(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        # Not keyword-only, though meant to be passed by keyword: CPython 3.11
        # does not specialize calls to a function with keyword-only parameters.
        link: Process | None = None,
        monitor: Process | None = None,
        trap_exit: bool = False,
    ) -> tuple[Pid, Ref | None]:
        """Start ``fn(*args)`` as a process; optionally link it to, or have it
        monitored by, ``link`` / ``monitor`` (atomically, as spawn_link does)."""
        if not self.running or self.loop is None:
            raise BadArg(f"node {self.name} is not running")
        # The function's coroutine first: a call with arguments the function
        # does not take raises here, before there is a process to leave behind.
        # (Making a coroutine runs none of its code.)
        code = getattr(fn, "__code__", None)
        if code is not None and code.co_flags & _CO_COROUTINE:
            coro = fn(*args)
        else:
            coro = fn(*args) if code is None and _is_async_function(fn) else _call(fn, args)
        i = self._next_id()
        # Pid(...) and Process(self, pid) without their __init__ calls (a
        # Python call each, a fifth of what spawn costs above a bare task):
        # every slot set here as there (tests/test_process_table.py checks).
        pid = _new(Pid)
        pid.node = self.name
        pid.id = i
        pid.creation = self.creation
        proc = _new(Process)
        proc._queue = proc._waiter = proc._handed = proc._wait = proc.suspended_on = None
        proc._takes = False
        proc.node = self
        proc.pid = pid
        pid._proc = proc
        proc.task = proc.links = proc.monitored_by = proc.monitors = proc.name = proc.reason = None
        proc.trap_exit = trap_exit
        proc.alive = True
        proc.adopted = False
        proc.reductions = 0
        proc._coro = coro
        self._procs[i] = proc
        if link is not None:
            proc.links = {link.pid}
            if link.links is None:
                link.links = set()
            link.links.add(pid)
        ref = None
        if monitor is not None:
            ref = self.make_ref()
            proc.monitored_by = {ref: (monitor.pid, pid)}
            if monitor.monitors is None:
                monitor.monitors = {}
            monitor.monitors[ref] = pid
        # Start fn(*args) as the process's task (here rather than in a helper
        # of pybeam.process: a call less per spawn). Every exception ends the
        # process with a reason, SystemExit and KeyboardInterrupt included (in
        # a process they end the process, never the node, as exit/1 in BEAM).
        # The task (pybeam.scheduler.ProcessTask, which the run queue steps)
        # steps the function's own coroutine (no wrapper frame, to keep idle
        # processes small), in a context where proc is the current process. The
        # context starts empty: a process inherits no context variables from
        # its spawner, as a BEAM process inherits no process dictionary (so
        # that per-process state kept in one, and the spawner itself, are not
        # shared or kept alive by it).
        if not _process._gc_tuned:
            _process.tune_gc()
        ctx = _Context()
        ctx.run(_set_current, proc)
        proc.task = ProcessTask(proc, self.run_queue, ctx)  # type: ignore[arg-type]
        if not i & _CHECK_MASK:
            # The collector is per interpreter: so is the count that drives it.
            _gc_check(sum(len(node._procs) for node in _bound_nodes))
        return pid, ref

    def adopt(self) -> Process:
        """Make the running task a process of this node (for a script or a test)."""
        task = asyncio.current_task()
        if task is None:
            raise BadArg("pybeam needs to run inside an asyncio task")
        i = self._next_id()
        pid = Pid(self.name, i, self.creation)
        proc = Process(self, pid, adopted=True)
        proc.task = task
        self._procs[i] = proc
        _current.set(proc)
        task.add_done_callback(proc.task_done)
        return proc

    def terminate(self, proc: Process, reason: Any, cancel: bool = True) -> None:
        """End ``proc`` with ``reason``: free its name, fire its links and
        monitors, and (``cancel``) stop its task at its next await."""
        if not proc.alive:
            return
        proc.alive = False
        proc.reason = reason
        pid = proc.pid
        del self._procs[pid.id]
        if proc.name is not None:
            self._names.pop(proc.name, None)
            proc.name = None
        # Mailbox.clear's work, and the pid's shortcut to its process, without
        # the call (this runs at every exit; Process.returned has the same lines).
        proc._queue = None
        proc._waiter = proc._handed = None
        pid._proc = None
        # Looked up only if there are timers at all: a lookup hashes the pid.
        timers = self._pid_timers.pop(pid, None) if self._pid_timers else None
        if timers is not None:
            for tref in timers:
                entry = self._timers.pop(tref, None)
                if entry is not None:
                    entry[0].cancel()
        # Each signal on its own: one that fails (a bug, a distribution
        # error) must not keep the others from their links and monitors.
        if proc.monitors:
            monitors, proc.monitors = proc.monitors, None
            for ref, target in monitors.items():
                try:
                    self._drop_monitor(pid, target, ref)
                except Exception as e:
                    _failed("demonitor", pid, target, e)
        if proc.links:
            links, proc.links = proc.links, None
            for other in links:
                try:
                    self.link_exit(pid, other, reason)
                except Exception as e:
                    _failed("link exit", pid, other, e)
        if proc.monitored_by:
            watchers, proc.monitored_by = proc.monitored_by, None
            for ref, (watcher, item) in watchers.items():
                try:
                    # From pid, whoever runs this (it may be killing pid).
                    self.deliver_down(watcher, ref, item, reason, pid)
                except Exception as e:
                    _failed("DOWN", pid, watcher, e)
        if cancel:
            proc.cancel_task()

    # -- messages -----------------------------------------------------------

    def send(self, dest: Any, msg: Any) -> None:
        """Send ``msg`` to a pid, a registered name, or ``(name, node)``.

        A message to a dead or unknown pid is dropped, as in BEAM; a bare name
        nobody registered raises :class:`BadArg`.
        """
        if type(dest) is Pid:
            proc = dest._proc  # see process(), inlined: one lookup at most
            if proc is not None and proc.node is self:
                proc.put(msg)
            elif dest.node != self.name:
                # Another node's pid, told by its name: straight to the
                # distribution, without a look in the process table.
                if self.remote is not None:
                    self.remote.send(dest, msg)
            else:
                proc = self._procs.get(dest.id)
                if proc is not None and proc.pid.creation == dest.creation:
                    proc.put(msg)
        elif type(dest) is str:
            proc = self._names.get(dest)
            if proc is None:
                raise BadArg(f"no process is registered as {dest!r}")
            proc.put(msg)
        elif type(dest) is tuple and len(dest) == 2:
            name, node = dest
            if node == self.name:
                proc = self._names.get(name)
                if proc is not None:
                    proc.put(msg)
            else:
                # As BEAM: sending to {Name, BadNode} is badarg, connected or not.
                check_node_name(node, "dest's node")
                if self.remote is not None:
                    self.remote.send_name(name, node, msg)
        else:
            raise BadArg(f"cannot send to {dest!r}: not a pid, a name or a (name, node) pair")

    # -- exit signals and links ---------------------------------------------

    def exit(self, sender: Pid, target: Pid, reason: Any) -> None:
        """Send the exit signal ``reason`` from ``sender`` to ``target`` (``exit/2``)."""
        if type(target) is not Pid:
            raise BadArg(f"exit/2 needs a pid, got {target!r}")
        proc = self.process(target)
        if proc is not None:
            proc.exit_signal(sender, reason, from_link=False)
        elif target.node != self.name and self.remote is not None:
            self.remote.exit(sender, target, reason, False)

    def link_exit(self, sender: Pid, target: Pid, reason: Any) -> None:
        """Deliver the exit signal of linked process ``sender`` to ``target``."""
        proc = self.process(target)
        if proc is not None:
            proc.exit_signal(sender, reason, from_link=True)
        elif target.node != self.name and self.remote is not None:
            self.remote.exit(sender, target, reason, True)

    def link(self, proc: Process, target: Pid) -> None:
        """Link ``proc`` and ``target`` (both ways)."""
        if type(target) is not Pid:
            raise BadArg(f"link needs a pid, got {target!r}")
        if target == proc.pid or (proc.links is not None and target in proc.links):
            return
        if target.node == self.name:
            other = self.process(target)
            if other is None:
                # As BEAM: the link fails at once, as an exit signal ``noproc``
                # from the dead process; a trapper gets it as a message.
                if proc.trap_exit:
                    proc.put(("EXIT", target, NOPROC))
                    return
                raise NoProc(target, f"cannot link to {target!r}: no such process")
            self.add_link(other, proc.pid)
            self.add_link(proc, target)
        else:
            self.add_link(proc, target)
            if self.remote is not None:
                self.remote.link(proc.pid, target)
            else:
                proc.exit_signal(target, NOCONNECTION, from_link=True)

    def add_link(self, proc: Process, other: Pid) -> None:
        """Record half of a link: ``proc`` is linked to ``other``."""
        if proc.links is None:
            proc.links = set()
        proc.links.add(other)

    def unlink(self, proc: Process, target: Pid) -> None:
        """Remove the link between ``proc`` and ``target``, if any."""
        if proc.links is None or target not in proc.links:
            return
        proc.links.discard(target)
        other = self.process(target)
        if other is not None:
            if other.links is not None:
                other.links.discard(proc.pid)
        elif target.node != self.name and self.remote is not None:
            self.remote.unlink(proc.pid, target)

    # -- monitors -------------------------------------------------------------

    def monitor(self, proc: Process, target: Any) -> Ref:
        """Monitor a pid, a registered name or ``(name, node)`` for ``proc``."""
        ref = self.make_ref()
        if type(target) is str:
            target = (target, self.name)
        if type(target) is tuple and len(target) == 2 and type(target[0]) is str:
            name, node = target
            item: Any = (name, node)
            local = self._names.get(name) if node == self.name else None
            remote = node != self.name
            if remote:
                check_node_name(node, "the monitored name's node")
        elif type(target) is Pid:
            item = target
            local = self.process(target)
            remote = target.node != self.name
        else:
            raise BadArg(f"cannot monitor {target!r}: not a pid, a name or a (name, node) pair")
        if local is proc:
            # As BEAM: a process monitoring itself gets a ref, and no monitor
            # (it could never see the DOWN); demonitor's info then says False.
            return ref
        if proc.monitors is None:
            proc.monitors = {}
        # A monitor by name watches the process that held the name when it was
        # made, so the local side keeps its pid.
        proc.monitors[ref] = local.pid if local is not None else item
        if local is not None:
            if local.monitored_by is None:
                local.monitored_by = {}
            local.monitored_by[ref] = (proc.pid, item)
        elif remote and self.remote is not None:
            self.remote.monitor(proc.pid, item, ref)
        else:
            self.deliver_down(proc.pid, ref, item, NOCONNECTION if remote else NOPROC)
        return ref

    def add_monitor(self, target: Pid | str, watcher: Pid, ref: Ref, item: Any) -> Pid | None:
        """Record that ``watcher`` (on another node) monitors a local target, a
        pid or a registered name; its DOWN will name ``item``. Returns the
        monitored pid, or None if there is no such process (the caller then
        answers DOWN ``noproc``)."""
        proc = self.process(target) if isinstance(target, Pid) else self._names.get(target)
        if proc is None:
            return None
        if proc.monitored_by is None:
            proc.monitored_by = {}
        proc.monitored_by[ref] = (watcher, item)
        return proc.pid

    def demonitor(self, proc: Process, ref: Ref, flush: bool = False) -> bool:
        """Drop monitor ``ref``; with ``flush`` also drop its DOWN if it came.

        Returns False if ``proc`` held no such monitor (it fired or never was).
        """
        target = proc.monitors.pop(ref, None) if proc.monitors is not None else None
        if target is not None:
            self._drop_monitor(proc.pid, target, ref)
        if flush and proc._queue:  # an empty mailbox has nothing to flush (a call's common case)
            proc.remove_matching(compile_pattern(("DOWN", ref, ANY, ANY, ANY)))
        return target is not None

    def _drop_monitor(self, watcher: Pid, target: Any, ref: Ref) -> None:
        if type(target) is Pid:
            local = self.process(target)
            remote = target.node != self.name
        else:
            name, node = target
            local = self._names.get(name) if node == self.name else None
            remote = node != self.name
        if local is not None:
            if local.monitored_by is not None:
                local.monitored_by.pop(ref, None)
        elif remote and self.remote is not None:
            self.remote.demonitor(watcher, target, ref)

    def remove_monitor(self, target: Pid | tuple[str, str], ref: Ref) -> None:
        """Forget a monitor a remote watcher held on a local target."""
        proc = self.process(target) if isinstance(target, Pid) else self._names.get(target[0])
        if proc is not None and proc.monitored_by is not None:
            proc.monitored_by.pop(ref, None)

    def deliver_down(self, watcher: Pid, ref: Ref, item: Any, reason: Any, sender: Pid | None = None) -> None:
        """Give ``watcher`` its ``("DOWN", ref, "process", item, reason)``
        (``sender``: the process that ended, if known; see :meth:`RemoteRouter.down`)."""
        proc = self.process(watcher)
        if proc is not None:
            if proc.monitors is not None and proc.monitors.pop(ref, None) is not None:
                proc.put(("DOWN", ref, "process", item, reason))
        elif watcher.node != self.name and self.remote is not None:
            self.remote.down(watcher, ref, item, reason, sender)

    # -- registered names -------------------------------------------------------

    def register(self, name: str, pid: Pid) -> None:
        """Register ``pid`` (a live local process) as ``name``."""
        if type(name) is not str or not name:
            raise BadArg(f"a registered name must be a non-empty str, got {name!r}")
        if name in self._names:
            raise BadArg(f"name {name!r} is already registered to {self._names[name].pid!r}")
        proc = self.process(pid)
        if proc is None:
            raise BadArg(f"cannot register {name!r}: {pid!r} is not a live local process")
        if proc.name is not None:
            raise BadArg(f"{pid!r} is already registered as {proc.name!r}")
        proc.name = name
        self._names[name] = proc

    def unregister(self, name: str) -> None:
        """Remove the registered name ``name``."""
        proc = self._names.pop(name, None)
        if proc is None:
            raise BadArg(f"no process is registered as {name!r}")
        proc.name = None

    def whereis(self, name: str) -> Pid | None:
        """The pid registered as ``name``, or None."""
        proc = self._names.get(name)
        return None if proc is None else proc.pid

    def registered(self) -> list[str]:
        """Every registered name."""
        return list(self._names)

    # -- timers -------------------------------------------------------------------

    def send_after(self, delay: float, dest: Any, msg: Any) -> Ref:
        """Send ``msg`` to ``dest`` after ``delay`` seconds; returns the timer's ref.

        A name is looked up when the timer fires; if nobody holds it then, the
        message is dropped (as ``erlang:send_after/3`` does).
        """
        if self.loop is None:
            raise BadArg(f"node {self.name} is not running")
        ref = self.make_ref()
        if type(dest) is Pid and dest.node == self.name:
            # A timer aimed at a local pid dies with the process: at once if
            # it is gone already (its ref is then never running, as in BEAM).
            if self.process(dest) is None:
                return ref
            self._pid_timers.setdefault(dest, set()).add(ref)
        # Fired in no process's context, as BEAM's timers send on their own:
        # the setter is not the sender (nor suspended if the message meets a
        # busy connection), and its context is not kept alive by the timer.
        handle = self.loop.call_later(max(delay, 0.0), self._fire_timer, ref, context=_Context())
        self._timers[ref] = (handle, dest, msg)
        return ref

    #: The receive timeouts of this node's processes, on its loop (made on first use).
    _deadlines: Deadlines | None = None

    def receive_deadlines(self, loop: asyncio.AbstractEventLoop) -> Deadlines:
        """The one timer that wakes this node's receives that time out, on
        ``loop`` (see :mod:`pybeam.deadlines`)."""
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not loop:
            # First use, or the node runs on another loop since it last did.
            deadlines = self._deadlines = Deadlines(loop)
        return deadlines

    def _forget_timer(self, ref: Ref, dest: Any) -> None:
        if type(dest) is Pid:
            refs = self._pid_timers.get(dest)
            if refs is not None:
                refs.discard(ref)
                if not refs:
                    del self._pid_timers[dest]

    def _fire_timer(self, ref: Ref) -> None:
        entry = self._timers.pop(ref, None)
        if entry is None:
            return
        _, dest, msg = entry
        self._forget_timer(ref, dest)
        with contextlib.suppress(BadArg):
            self.send(dest, msg)

    def cancel_timer(self, ref: Ref) -> float | bool:
        """Cancel a timer; returns the seconds it had left, or False if it had
        already fired or been cancelled."""
        entry = self._timers.pop(ref, None)
        if entry is None:
            return False
        handle = entry[0]
        handle.cancel()
        self._forget_timer(ref, entry[1])
        assert self.loop is not None
        return max(handle.when() - self.loop.time(), 0.0)

    def read_timer(self, ref: Ref) -> float | bool:
        """Seconds left on a timer, or False if it is not running."""
        entry = self._timers.get(ref)
        if entry is None or self.loop is None:
            return False
        return max(entry[0].when() - self.loop.time(), 0.0)

    # -- for the distribution (pybeam.distribution.local.LocalNode) ----------------

    def deliver(self, to: Pid, msg: Any) -> bool:
        """Put ``msg`` in the mailbox of local process ``to``; False if there is none."""
        # A pid the codec decoded is the process table's own object while its
        # process lives (its _proc is set): no lookup then.
        proc = to._proc
        if proc is None or proc.node is not self:
            proc = self.process(to)
        if proc is None:
            return False
        proc.put(msg)
        return True

    def deliver_named(self, name: str, msg: Any) -> bool:
        """Put ``msg`` in the mailbox of the process registered as ``name``; False if none."""
        proc = self._names.get(name)
        if proc is None:
            return False
        proc.put(msg)
        return True

    def is_alive(self, pid: Pid) -> bool:
        """Whether ``pid`` is a live local process."""
        return self.process(pid) is not None

    def spawn_function(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        watcher: Pid | None = None,
        ref: Ref | None = None,
    ) -> Pid:
        """Start ``fn(*args)`` as a new process (for a peer's spawn request);
        with ``watcher`` (a remote pid), monitored by it as ``ref`` from the
        start, as :meth:`spawn`'s ``monitor`` does for a local one."""
        pid = self.spawn(fn, args)[0]
        if watcher is not None and ref is not None:
            proc = pid._proc
            assert proc is not None  # set by spawn, and no step has run yet
            proc.monitored_by = {ref: (watcher, pid)}
        return pid

    def link_remote(self, local: Pid, remote: Pid) -> bool:
        """Record that local process ``local`` is linked to ``remote``; False if it is not alive."""
        proc = self.process(local)
        if proc is None:
            return False
        self.add_link(proc, remote)
        return True

    def unlink_remote(self, local: Pid, remote: Pid) -> None:
        """Forget the link between local process ``local`` and ``remote``."""
        proc = self.process(local)
        if proc is not None and proc.links is not None:
            proc.links.discard(remote)

    def watch_remote(self, watcher: Pid, ref: Ref, target: Pid) -> bool:
        """Record that local ``watcher`` monitors remote ``target`` as ``ref``; False if it is not alive."""
        proc = self.process(watcher)
        if proc is None:
            return False
        if proc.monitors is None:
            proc.monitors = {}
        proc.monitors[ref] = target
        return True

    def suspend_sender(self, until: Callable[[], Awaitable[None]]) -> None:
        """The process running now, if any, waits for ``until()`` at its next await point."""
        proc = _current.get()
        if proc is not None:
            proc.suspended_on = until

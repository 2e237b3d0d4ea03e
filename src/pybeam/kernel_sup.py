"""The kernel supervisor: the servers every node runs, as OTP's ``kernel`` starts them.

Every node, when it starts (:meth:`pybeam.Node.start`; the default node of an
event loop on the first use of ``global_`` or ``pg``), starts its kernel::

    kernel master            (the supervisor's parent; stopped by Node.stop)
      kernel_sup             (one_for_one, 4 restarts in 3600 s)
        global_name_server   (pybeam.global_)
        pg                   (pybeam.pg, the default scope)
        other pg scopes      (added when first used on the node)

A server that crashes is restarted, and rebuilds its view from the cluster
as OTP's do when they start: it discovers the same server on every connected
node, which answers with what *its* node holds. What the crashed server held
for its own node (local pg memberships, local global names) was kept by it
alone, as OTP keeps it in tables the server owns, and is gone.

Where pybeam differs: OTP's ``kernel_sup`` is ``one_for_all`` with intensity
0 (a crash of ``global`` takes the node down) and starts ``pg`` only when
``start_pg`` is set, under ``kernel_safe_sup`` (``one_for_one``, 4 restarts
in an hour). pybeam runs both under one ``one_for_one`` supervisor with
``kernel_safe_sup``'s intensity, and restarts ``global`` too. A kernel
supervisor that reaches its intensity exits (logged) and the node goes on;
the servers it ran are then started again on demand, unsupervised.

The servers are spawned and registered in one step, before they run (see
:func:`start_service`): their names are never free while the node runs, so
the read functions (``whereis_name``, ``get_members``...) always find one,
even just after a crash. A server found running when its supervisor (re)starts
it is taken over (linked) rather than started twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import weakref
from typing import Any, NoReturn

from . import errand, gen_server, kernel, net, supervisor
from .errors import BadArg, NotDistributed, PybeamError
from .gen_server import GenServer
from .node import APPLICATION_STOP, Node, current_node, set_kernel_starter
from .pattern import ANY
from .supervisor import ChildSpec
from .terms import Pid, Ref

__all__ = [
    "MAX_RESTARTS",
    "MAX_SECONDS",
    "NAME",
    "Service",
    "SyncWaiters",
    "ask",
    "ensure_started",
    "node_subscribe",
    "service_spec",
    "start",
]

logger = logging.getLogger("pybeam")

#: The kernel supervisor's registered name (OTP's).
NAME = "kernel_sup"
#: Its restart intensity: OTP's ``kernel_safe_sup``'s.
MAX_RESTARTS = 4
MAX_SECONDS = 3600.0

# Each running service's class and state, by pid: the modules' read functions
# read the state directly (as OTP's read the servers' ETS tables). Entries go
# when their process's task ends.
_services: dict[Pid, tuple[type[Service], Any]] = {}
# The nodes whose kernel was started (the default node's lazily, at most
# once): the future gets the kernel supervisor's pid.
_booted: weakref.WeakKeyDictionary[Node, asyncio.Future[Pid]] = weakref.WeakKeyDictionary()


class Service(GenServer):
    """A kernel server: ``new_state(arg)`` builds its state when it is
    spawned (before it runs), then ``init(state)`` runs in the process."""

    def new_state(self, arg: Any) -> Any:
        """The state of a new server for ``arg`` (no side effects: it may be
        built outside the process)."""
        raise NotImplementedError


def state_of(name: str, cls: type[Service]) -> Any | None:
    """The state of this node's ``cls`` server registered as ``name``, if it runs."""
    pid = kernel.whereis(name)
    entry = None if pid is None else _services.get(pid)
    return entry[1] if entry is not None and entry[0] is cls else None


def start_service(cls: type[Service], name: str, arg: Any) -> tuple[Pid, bool]:
    """This node's ``cls`` server registered as ``name``: the running one, or
    a new one, spawned and registered at once. Returns ``(pid, new)``.

    Raises :class:`BadArg` if another kind of process holds the name.
    """
    pid = kernel.whereis(name)
    if pid is not None:
        entry = _services.get(pid)
        if entry is None or entry[0] is not cls:
            raise BadArg(f"{name!r} is registered by a process that is not a {cls.__name__}")
        return pid, False
    server = cls()
    state = server.new_state(arg)
    node = current_node()
    # Spawned by the node, not the caller: a service keeps nothing of
    # whichever process happened to need it first.
    pid, _ = node.spawn(_serve, (server, state))
    kernel.register(name, pid)
    _services[pid] = (cls, state)
    proc = node.process(pid)
    assert proc is not None and proc.task is not None
    proc.task.add_done_callback(lambda _: _services.pop(pid, None))
    return pid, True


async def _serve(server: Service, state: Any) -> NoReturn:
    state = server.init(state)
    if inspect.isawaitable(state):
        state = await state
    await gen_server.enter_loop(server, state)


def _start_child(cls: type[Service], name: str, arg: Any) -> Pid:
    """A child's start function, run by the kernel supervisor: the running
    server (started on demand since it crashed) is taken over."""
    pid, _ = start_service(cls, name, arg)
    kernel.link(pid)
    return pid


def service_spec(cls: type[Service], name: str, arg: Any, shutdown: float = 2.0) -> ChildSpec:
    """The kernel supervisor's child spec for a service (id: its name)."""
    return ChildSpec(name, (_start_child, (cls, name, arg)), "permanent", shutdown, "worker")


def ensure_started(cls: type[Service], name: str, arg: Any, *, static: bool) -> Pid:
    """This node's ``cls`` server registered as ``name``, started if needed
    (and the node's kernel with it). A ``static`` service is a fixed child
    of the kernel supervisor (which takes it over when it restarts it);
    another one is added to it as a new child."""
    pid, new = start_service(cls, name, arg)
    node = current_node()
    booted = _booted.get(node)
    if booted is None:
        booted = _boot(node)  # the default node: its kernel takes static servers over
    if new and not static:
        node.spawn(_supervise, (booted, service_spec(cls, name, arg)))
    return pid


async def _supervise(booted: asyncio.Future[Pid], spec: ChildSpec) -> None:
    # A new dynamic service: the kernel supervisor takes it over. Refused if
    # the child exists already (its restart, pending, takes it over) or if
    # the supervisor is gone (it stays unsupervised).
    with contextlib.suppress(PybeamError):
        await supervisor.start_child(await asyncio.shield(booted), spec)


def _children() -> list[ChildSpec]:
    # Imported here: those modules build on this one.
    from . import global_, pg

    return [
        service_spec(global_.NameServer, global_.NAME, None),
        service_spec(pg.Scope, pg.DEFAULT_SCOPE, pg.DEFAULT_SCOPE, shutdown=1.0),
    ]


def _boot(node: Node) -> asyncio.Future[Pid]:
    """Spawn ``node``'s kernel master; the future gets the kernel supervisor."""
    started: asyncio.Future[Pid] = asyncio.get_running_loop().create_future()
    _booted[node] = started
    master, _ = node.spawn(_master, (started,))
    node.kernel = master
    proc = node.process(master)
    assert proc is not None and proc.task is not None

    def ended(_: Any) -> None:
        if not started.done():
            started.set_exception(PybeamError("the kernel master ended before the kernel started"))

    proc.task.add_done_callback(ended)
    # Awaited or not (the default node's), its failure is logged by the master.
    started.add_done_callback(lambda f: f.cancelled() or f.exception())
    return started


async def start(node: Node) -> None:
    """Start ``node``'s kernel and wait until its servers run (called by
    :meth:`pybeam.Node.start`). A failure is logged: the node goes on."""
    try:
        await _boot(node)
    except PybeamError as e:
        logger.error("node %s: the kernel did not start: %s", node.name, e)


async def _master(started: asyncio.Future[Pid]) -> None:
    # The kernel supervisor's parent, as an application master is its top
    # supervisor's: Node.stop asks it to stop the tree, after the applications.
    kernel.trap_exit(True)
    try:
        sup = await supervisor.start_link(
            _children(),
            strategy="one_for_one",
            max_restarts=MAX_RESTARTS,
            max_seconds=MAX_SECONDS,
            name=NAME,
        )
    except Exception as e:
        logger.error("the kernel supervisor did not start: %s", e)
        if not started.done():
            started.set_exception(PybeamError(f"the kernel supervisor did not start: {e}"))
        return
    if not started.done():
        started.set_result(sup)
    while True:
        msg = await kernel.receive(ANY)
        if msg == APPLICATION_STOP:
            kernel.exit(sup, "shutdown")
            await kernel.receive(("EXIT", sup, ANY))
            return
        if type(msg) is tuple and len(msg) == 3 and msg[0] == "EXIT" and msg[1] == sup:
            logger.error(
                "the kernel supervisor exited (%r): global and pg run unsupervised from now on", msg[2]
            )
            return


set_kernel_starter(start)


# -- what the kernel's servers share ------------------------------------------------------


async def ask(server: Pid, request: Any) -> Any:
    """``gen_server.call`` to a local kernel server, with no time limit, made
    by an errand (see :mod:`pybeam.errand`): a cancelled caller leaves no
    monitor and no late reply behind. The server's end raises a
    :class:`~pybeam.gen_server.GenServerError` (a :class:`PybeamError`)."""
    return await errand.run(gen_server.call, server, request, None)


def node_subscribe() -> list[str]:
    """Subscribe the calling server to nodeup/nodedown and return the nodes
    connected now (subscribed first: a node that comes up in between is seen
    twice, which is harmless; none is missed)."""
    with contextlib.suppress(NotDistributed):
        net.monitor_nodes(True)
    return net.nodes()


class SyncWaiters:
    """Callers of a server's ``start(timeout)`` waiting until it has synced
    with every node connected when they asked (or until their timeout, sent
    to the server as ``("wait_timeout", ref)``); each gets True or False."""

    def __init__(self) -> None:
        self.waiting: list[tuple[tuple[Pid, Ref], set[str], Ref]] = []

    def wait(self, from_: tuple[Pid, Ref], timeout: float, synced: set[str]) -> bool | None:
        """True at once if nothing is left to sync, else None (the reply comes later)."""
        left = set(net.nodes()) - synced
        if not left:
            return True
        timer = kernel.send_after(timeout, kernel.self(), ("wait_timeout", from_[1]))
        self.waiting.append((from_, left, timer))
        return None

    def update(self, synced: set[str], timed_out: Ref | None = None) -> None:
        """Reply to those that need wait no more (the nodes they waited for
        synced or went down) or whose time is up."""
        if not self.waiting:
            return
        connected = set(net.nodes())
        keep = []
        for from_, left, timer in self.waiting:
            left &= connected
            left -= synced
            if not left or from_[1] == timed_out:
                kernel.cancel_timer(timer)
                gen_server.reply(from_, not left)
            else:
                keep.append((from_, left, timer))
        self.waiting = keep

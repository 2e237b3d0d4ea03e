"""pybeam: BEAM (Erlang VM) semantics for Python's asyncio.

Processes are async functions with mailboxes; they link, monitor, trap exits
and register names, on nodes that (with :mod:`pybeam.distribution`) connect over TCP.
The functions below are the ones a BEAM user knows; see ``docs/``.
"""

from . import dynamic_supervisor, errand, gen_server, global_, pg, rpc, supervisor
from .errors import BadArg, Exit, NodeDown, NoProc, NotDistributed, PybeamError, SpawnError
from .gen_server import GenServer
from .kernel import (
    cancel_timer,
    demonitor,
    exit,
    is_alive,
    link,
    make_ref,
    monitor,
    node_name,
    process_flag,
    process_info,
    processes,
    read_timer,
    receive,
    register,
    registered,
    self,
    send,
    send_after,
    spawn,
    spawn_link,
    spawn_monitor,
    trap_exit,
    unlink,
    unregister,
    whereis,
)
from .mailbox import NO_DEFAULT
from .net import (
    connect,
    disconnect,
    get_cookie,
    monitor_nodes,
    nodes,
    ping,
    set_cookie,
    spawn_on,
    spawn_request,
    spawn_request_abandon,
)
from .node import Node, current_node
from .pattern import ANY
from .runtime import new_event_loop, run
from .terms import KILL, KILLED, NOCONNECTION, NOPROC, NORMAL, Crash, Pid, Ref, Term

__all__ = [
    "ANY",
    "KILL",
    "KILLED",
    "NOCONNECTION",
    "NOPROC",
    "NORMAL",
    "NO_DEFAULT",
    "BadArg",
    "Crash",
    "Exit",
    "GenServer",
    "NoProc",
    "Node",
    "NodeDown",
    "NotDistributed",
    "Pid",
    "PybeamError",
    "Ref",
    "SpawnError",
    "Term",
    "cancel_timer",
    "connect",
    "current_node",
    "demonitor",
    "disconnect",
    "dynamic_supervisor",
    "errand",
    "exit",
    "gen_server",
    "get_cookie",
    "global_",
    "is_alive",
    "link",
    "make_ref",
    "monitor",
    "monitor_nodes",
    "new_event_loop",
    "node_name",
    "nodes",
    "pg",
    "ping",
    "process_flag",
    "process_info",
    "processes",
    "read_timer",
    "receive",
    "register",
    "registered",
    "rpc",
    "run",
    "self",
    "send",
    "send_after",
    "set_cookie",
    "spawn",
    "spawn_link",
    "spawn_monitor",
    "spawn_on",
    "spawn_request",
    "spawn_request_abandon",
    "supervisor",
    "trap_exit",
    "unlink",
    "unregister",
    "whereis",
]

__version__ = "0.1.0"

"""What a node's processes are doing, in a form that travels: the remote side
of ``pybeam processes NODE`` and ``pybeam top NODE`` (called over rpc, like
``observer_backend``)."""

from __future__ import annotations

import sys
from collections import deque
from typing import Any

from . import net
from .kernel import process_info, processes
from .node import current_node
from .process import Process

__all__ = ["memory", "node_info", "processes_info", "snapshot"]


def memory(proc: Process) -> int:
    """An estimate of the bytes ``proc`` holds, as ``process_info``'s ``memory``.

    ``sys.getsizeof`` of the process object, its mailbox (the queue and each
    queued message, shallowly: what a message refers to is not counted), its
    links and monitors, and its task and coroutine (frame included). Objects
    its code refers to (its state, say) are not counted: an estimate, not
    BEAM's exact heap size.
    """
    size = sys.getsizeof(proc)
    messages = proc.messages()
    if messages:
        size += sys.getsizeof(deque(messages)) + sum(sys.getsizeof(m) for m in messages)
    for held in (proc.links, proc.monitors, proc.monitored_by):
        if held is not None:
            size += sys.getsizeof(held)
    task = proc.task
    if task is not None:
        size += sys.getsizeof(task)
        size += sys.getsizeof(task.get_coro())  # the function's coroutine
    return size


def processes_info() -> list[dict[str, Any]]:
    """One row per live process of this node: pid, registered name, initial
    call, status, mailbox length, links and monitors counts, memory estimate
    and reductions.

    Counts rather than the lists themselves keep the answer small however
    many links a process holds. ``monitors`` counts the monitors the process
    holds, ``monitored_by`` those held on it. ``memory`` is :func:`memory`'s
    estimate in bytes; ``reductions`` counts the times the event loop resumed
    the process's code (BEAM counts function calls; a resumption is the unit
    of work here), 0 for a task adopted as a process (a script's main).
    """
    node = current_node()
    rows: list[dict[str, Any]] = []
    for pid in processes():
        info = process_info(pid)
        proc = node.process(pid)
        if info is None or proc is None:  # exited while we looked
            continue
        rows.append(
            {
                "pid": pid,
                "registered_name": info["registered_name"],
                "initial_call": info["initial_call"],
                "status": info["status"],
                "message_queue_len": info["message_queue_len"],
                "links": len(info["links"]),
                "monitors": len(info["monitors"]),
                "monitored_by": len(info["monitored_by"]),
                "memory": memory(proc),
                "reductions": proc.reductions,
            }
        )
    return rows


_CONNECTION_FIGURES = ("bytes_out", "bytes_in", "queued", "busy", "last_received", "last_sent", "ticktime")


def node_info() -> dict[str, Any]:
    """Node-level figures: name, process and registered-name counts, and one
    entry per connection (``node``, ``hidden``).

    Each connection also carries its traffic (``bytes_out``, ``bytes_in``,
    ``queued``: bytes waiting to be sent, ``busy``) and heartbeat state
    (``last_received``, ``last_sent``: seconds since, ``ticktime``); None
    where the connection went down between the listing and the reading.
    """
    node = current_node()
    connections: list[dict[str, Any]] = []
    if node.dist is not None:
        visible = set(net.nodes())
        for name in net.nodes(hidden=True):
            info = net.node_info(name) or dict.fromkeys(_CONNECTION_FIGURES)
            connections.append({"node": name, "hidden": name not in visible, **info})
    return {
        "node": node.name,
        "processes": len(node.processes()),
        "registered": len(node.registered()),
        "connections": connections,
    }


def snapshot() -> dict[str, Any]:
    """What ``pybeam top`` shows, in one call: ``{"node": node_info(),
    "processes": processes_info()}``."""
    return {"node": node_info(), "processes": processes_info()}

"""What a node's processes are doing, in a form that travels: the remote side
of ``pybeam processes NODE`` (called over rpc, like ``observer_backend``)."""

from __future__ import annotations

from typing import Any

from .kernel import process_info, processes

__all__ = ["processes_info"]


def processes_info() -> list[dict[str, Any]]:
    """One row per live process of this node: pid, registered name, initial
    call, status, mailbox length, links and monitors counts.

    Counts rather than the lists themselves keep the answer small however
    many links a process holds. ``monitors`` counts the monitors the process
    holds, ``monitored_by`` those held on it.
    """
    rows: list[dict[str, Any]] = []
    for pid in processes():
        info = process_info(pid)
        if info is None:  # exited while we looked
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
            }
        )
    return rows

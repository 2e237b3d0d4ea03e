"""A replicated grow-only counter (a G-counter CRDT), as a user would write one.

Every node runs a ``gcounter`` process holding one count per node
incarnation (name and creation: a restarted node must not reuse the
entry of its earlier life). An increment bumps the local entry and sends
the whole state to every connected node; a state received is merged by
taking the larger count of each entry, and passed on if it taught us
something (the sender may not reach every node we reach). A node that comes
up (``nodeup``) gets the whole state too: what was sent while a link was
down is lost with the connection, and this exchange is what makes up for it.

``buggy=True`` plants a bug: the exchange on ``nodeup`` is skipped (its
author thought the broadcasts enough). docs/testing_failures.md shows the
property test that finds it.
"""

from __future__ import annotations

from typing import Any

import pybeam
from pybeam import ANY, Pid, receive, send

NAME = "gcounter"

Entries = list[tuple[str, int, int]]


async def serve(buggy: bool) -> None:
    me = (pybeam.node_name(), pybeam.current_node().creation)
    counts: dict[tuple[str, int], int] = {}
    pybeam.monitor_nodes(True)

    def entries() -> Entries:
        return [(node, creation, n) for (node, creation), n in sorted(counts.items())]

    def merge(other: Entries) -> bool:
        changed = False
        for node, creation, n in other:
            key = (node, creation)
            if n > counts.get(key, 0):
                counts[key] = n
                changed = True
        return changed

    for node in pybeam.nodes():  # those connected before this process started
        send((NAME, node), ("sync", pybeam.self()))
    while True:
        match await receive():
            case ("increment", Pid() as caller):
                counts[me] = counts.get(me, 0) + 1
                for node in pybeam.nodes():
                    send((NAME, node), ("state", entries()))
                send(caller, ("incremented", pybeam.self()))
            case ("read", Pid() as caller):
                send(caller, ("value", sum(counts.values())))
            case ("state", list() as other):
                if merge(other):
                    # What we just learnt may be news to the others too:
                    # the sender may reach nodes we reach and it does not.
                    for node in pybeam.nodes():
                        send((NAME, node), ("state", entries()))
            case ("sync", Pid() as peer):
                send(peer, ("state", entries()))
            case ("nodeup", node):
                if not buggy:
                    send((NAME, node), ("state", entries()))
            case _:
                pass  # nodedown, and anything else


async def start(buggy: bool = False) -> Pid:
    """Start this node's counter."""
    pid = pybeam.spawn(serve, buggy)
    pybeam.register(NAME, pid)
    return pid


async def increment() -> None:
    """Count one, on this node."""
    counter = pybeam.whereis(NAME)
    assert counter is not None
    send(counter, ("increment", pybeam.self()))
    await receive(("incremented", counter))


async def value() -> Any:
    """The total as this node's replica has it."""
    counter = pybeam.whereis(NAME)
    assert counter is not None
    send(counter, ("read", pybeam.self()))
    _, n = await receive(("value", ANY))
    return n

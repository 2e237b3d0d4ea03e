"""Part 4: how many redirects each code had, counted on every node, converging.

Each code has a G-Counter (``gcounter.py``) with one entry per node. A redirect
increments this node's entry in memory (:meth:`Aggregates.hit`, called by the
HTTP handler: no message, no await); the *replicator*, a process of this node
in the ``aggregates`` process group, tells the other members:

- **Batched** (``batch`` seconds, default 5 ms): the first hit after a
  broadcast arms a timer; when it fires, one message per peer carries this
  node's entry of every code hit meanwhile. Under load that is a few messages
  per batch instead of one per redirect. ``batch=None`` sends at each
  redirect, to measure the difference (``stats()`` counts the messages).
- **State to newcomers**: when a member joins the group (a new node, or one
  seen again after a partition heals), each member sends it its whole state.
  pg's join notification is the "nodeup" that matters here: it arrives once
  the newcomer's replicator is there to receive, which a bare nodeup does not
  promise.
- **Merging**: maximum per entry, so duplicates, reordering and stale copies
  are harmless.

Counts survive a restart because each node persists *its own* entries in
Redis (``margarine:aggregates:<code>``, field = node name, absolute values
written by the *saver* at once when it is idle, and at most once per
:data:`SAVE_INTERVAL` under load, where a save after every batch would cost
more than the redirects) and a starting node loads every persisted entry
before it counts anything; :func:`~examples.margarine.app.stop` saves what is
left. A node killed outright may lose its last second from Redis, not from its
peers: they hold its entry and give it back when it rejoins under its name.
Rebuilding from peers alone would not do: a node that restarts alone, with its
old name, would count from 0 again and its new hits would hide under the
maximum of its old entry until they overtook it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

import pybeam
from pybeam import Pid, pg, receive, send

from . import gcounter, storage

__all__ = ["GROUP", "NAME", "Aggregates", "load", "replicator", "save"]

log = logging.getLogger("margarine")

#: The process group of the replicators, and a replicator's registered name.
GROUP = "aggregates"
NAME = "margarine_aggregates"
#: Seconds between two attempts to persist counts while Redis is away.
SAVE_RETRY = 1.0
#: Least seconds between two saves of this node's entries: what a node killed
#: outright may lose from Redis (its peers have it within a batch, see above).
SAVE_INTERVAL = 1.0


async def load(aggregates: Aggregates, client: aioredis.Redis) -> None:
    """Merge every persisted entry: done before the node serves, so it never counts from 0."""
    try:
        aggregates.merge(await storage.load_counters(client))
    except storage.StorageDown as e:
        log.warning("margarine: could not load the persisted counts (%s); peers will send theirs", e)


class Aggregates:
    """This node's copy of every counter; shared by the HTTP handlers and the replicator."""

    def __init__(self, node: str, batch: float | None) -> None:
        self.node = node
        self.batch = batch
        self.counters: dict[str, gcounter.GCounter] = {}
        #: Codes whose own entry changed since the last broadcast / the last save.
        self.unsent: set[str] = set()
        self.unsaved: set[str] = set()
        self.replicator: Pid | None = None
        self.saver: Pid | None = None
        self.timer_armed = False
        #: Counter messages sent to and received from other nodes.
        self.sent = 0
        self.received = 0

    def hit(self, code: str) -> None:
        """Count one redirect of ``code`` on this node."""
        # gcounter.increment, inlined and without setdefault's new dict per call: the hit path.
        counter = self.counters.get(code)
        if counter is None:
            counter = self.counters[code] = {}
        counter[self.node] = counter.get(self.node, 0) + 1
        if self.batch is None:
            self.broadcast({code: counter[self.node]})
            self.mark_unsaved({code})
            return
        self.unsent.add(code)
        if not self.timer_armed and self.replicator is not None:
            self.timer_armed = True
            pybeam.send_after(self.batch, self.replicator, "flush")

    def count(self, code: str) -> int | None:
        """The number of redirects of ``code`` seen from here, None if never visited."""
        counter = self.counters.get(code)
        return None if counter is None else gcounter.value(counter)

    def flush(self) -> None:
        """Send this node's entries of the codes hit since the last flush."""
        self.timer_armed = False
        if self.unsent:
            codes, self.unsent = self.unsent, set()
            self.broadcast({code: self.counters[code][self.node] for code in codes})
            self.mark_unsaved(codes)

    def broadcast(self, own: dict[str, int]) -> None:
        for pid in pg.get_members(GROUP):
            if pid.node != self.node:
                send(pid, ("gcounter", self.node, own))
                self.sent += 1

    def merge(self, counters: dict[str, dict[str, int]]) -> None:
        """Merge counters (``{code: {node: count}}``) received or loaded."""
        for code, counter in counters.items():
            gcounter.merge_into(self.counters.setdefault(code, {}), counter)

    def merge_entries(self, node: str, own: dict[str, int]) -> None:
        """Merge ``node``'s entries (``{code: count}``), as a batch carries them.

        The G-Counter merge (maximum) for one entry, inlined: under load a
        node merges more entries from its peers than it serves redirects.
        """
        counters = self.counters
        for code, n in own.items():
            counter = counters.get(code)
            if counter is None:
                counters[code] = {node: n}
            elif node not in counter or n > counter[node]:
                counter[node] = n

    def mark_unsaved(self, codes: set[str]) -> None:
        # Wake the saver only when there was nothing to save: one message per save, not per batch.
        if not self.unsaved and self.saver is not None:
            send(self.saver, "save")
        self.unsaved |= codes

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "received": self.received, "codes": len(self.counters)}


async def replicator(aggregates: Aggregates, client: aioredis.Redis) -> None:
    """The process that replicates ``aggregates`` to the other nodes' replicators."""
    me = pybeam.self()
    pybeam.register(NAME)
    aggregates.replicator = me
    aggregates.saver = pybeam.spawn_link(saver, aggregates, client)
    await pg.join(GROUP, me)
    ref, members = await pg.monitor(GROUP)
    # Those already here learn of us by their own join notification; we send them ours.
    send_state(aggregates, members)
    while True:
        match await receive():
            case "flush":
                aggregates.flush()
            case ("gcounter", node, own):
                aggregates.received += 1
                aggregates.merge_entries(node, own)
            case ("gcounter_state", counters):
                aggregates.received += 1
                aggregates.merge(counters)
            case (r, "join", _, pids) if r == ref:
                send_state(aggregates, pids)
            case (r, "leave", _, _) if r == ref:
                pass  # a departed node's entries stay: its redirects happened


def send_state(aggregates: Aggregates, pids: list[Pid]) -> None:
    for pid in pids:
        if pid.node != aggregates.node:
            send(pid, ("gcounter_state", aggregates.counters))
            aggregates.sent += 1


async def saver(aggregates: Aggregates, client: aioredis.Redis) -> None:
    """Persists this node's own entries: at once when idle, at most once per SAVE_INTERVAL
    under load; while Redis is away, retries every SAVE_RETRY s."""
    while True:
        if not aggregates.unsaved:
            await receive("save")  # at most one queued: sent when unsaved stops being empty
            continue
        started = time.monotonic()
        try:
            await save(aggregates, client)
        except storage.StorageDown:
            await asyncio.sleep(SAVE_RETRY)
            continue
        # Under load a save per batch would cost more than the redirects it counts
        # (a Redis command per code, every few ms): one save per interval covers them all.
        await asyncio.sleep(SAVE_INTERVAL - (time.monotonic() - started))


async def save(aggregates: Aggregates, client: aioredis.Redis) -> None:
    """Persist the entries changed since the last save; raises StorageDown (they stay unsaved)."""
    codes, aggregates.unsaved = aggregates.unsaved, set()
    if not codes:
        return
    own = {code: aggregates.counters[code][aggregates.node] for code in codes}
    try:
        await storage.save_counters(client, aggregates.node, own)
    except BaseException:
        aggregates.unsaved |= codes
        raise

"""One record per peer node, and the state machine of its connection.

As ``net_kernel.erl`` keeps one ``#connection{state = pending | up |
up_pending}`` per node, the net kernel keeps one :class:`Peer` per node it is
connected to or connecting with. The record holds the state of the setup, the
signals queued while it is pending (encoded once, when queued), and what
crosses the connection and must be undone when it goes down: links, monitors
both ways and spawn requests awaiting their reply.

The transitions are all in :data:`TRANSITIONS`: (state, event) -> (next
state, actions). :meth:`Peer.fire` applies one and returns the actions, which
the net kernel carries out in order (dialling, installing a connection,
failing what was queued...): the record decides, the kernel acts. Nothing
polls: every event is a handshake ending, a connection closing or a timer.

States (``pending`` in OTP's terms is CONNECTING, ACCEPTING and AWAITING_PEER):

- ``CONNECTING``: our own attempt (a dial) is under way.
- ``ACCEPTING``: the peer's attempt has proved the cookie here and is finishing.
- ``AWAITING_PEER``: simultaneous connect, and the peer's attempt won (our dial
  was refused as a duplicate): wait, within the connect timeout, for the
  peer's attempt to reach us. The queued signals share its fate, as in OTP.
- ``UP``: connected.
- ``UP_PENDING``: connected, and the peer is connecting again (it restarted, or
  reconnects): when that attempt is up it replaces the old connection. Its
  initiator is asked first whether it still wants it (OTP's ``alive``): an
  attempt it gave up, e.g. one that lost a simultaneous connect but proved the
  cookie here only after the winner was up, must not replace the winner.

Simultaneous connect (both nodes dial each other at once) is resolved as
``net_kernel`` resolves ``accept_pending`` on a pending connection: the node
with the greater name refuses the peer's attempt and keeps its own; the other
abandons its own attempt (OTP's ``remarked``) and accepts the peer's. So the
connection that survives is the one dialled by the greater name, on both sides.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["TRANSITIONS", "Action", "Event", "Peer", "State", "TransitionError"]


class State(enum.Enum):
    """Where the connection to a peer stands (a peer with no record is idle)."""

    IDLE = "idle"
    CONNECTING = "connecting"
    ACCEPTING = "accepting"
    AWAITING_PEER = "awaiting_peer"
    UP = "up"
    UP_PENDING = "up_pending"


#: The pending states: signals are queued, not sent.
PENDING: Final = frozenset({State.CONNECTING, State.ACCEPTING, State.AWAITING_PEER})


class Event(enum.Enum):
    """What can happen to a peer's connection."""

    #: Something needs the connection: a signal that connects, or ``connect()``.
    WANTED = "wanted"
    #: The peer's incoming attempt proved the cookie, and our name is greater
    #: than the peer's (in a simultaneous connect, ours wins).
    PROVEN_WE_WIN = "proven_we_win"
    #: The peer's incoming attempt proved the cookie; the peer's name is greater.
    PROVEN_PEER_WINS = "proven_peer_wins"
    #: Our dial finished its handshake.
    DIAL_UP = "dial_up"
    #: The peer refused our dial as a duplicate: it is dialling us and wins.
    DIAL_LOST_RACE = "dial_lost_race"
    #: Our dial failed (refused, unreachable, timed out).
    DIAL_FAILED = "dial_failed"
    #: The incoming attempt finished its handshake.
    ACCEPT_UP = "accept_up"
    #: The incoming attempt failed, and nothing else is to be tried.
    ACCEPT_FAILED = "accept_failed"
    #: The incoming attempt failed; signals wait and we have not dialled yet.
    ACCEPT_FAILED_REDIAL = "accept_failed_redial"
    #: The wait for the peer's attempt (AWAITING_PEER) timed out.
    TIMEOUT = "timeout"
    #: The live connection closed (lost, ticked out, or disconnected).
    CONN_LOST = "conn_lost"
    #: The node is stopping: a pending setup is abandoned.
    STOPPED = "stopped"


class Action(enum.Enum):
    """What the net kernel does on a transition, in the order listed."""

    #: Start our own dial.
    DIAL = "dial"
    #: Stop our own dial (it lost a simultaneous connect).
    CANCEL_DIAL = "cancel_dial"
    #: Tell the incoming attempt "ok": it goes on.
    ACCEPT = "accept"
    #: Tell the incoming attempt "duplicate": it is refused.
    REFUSE = "refuse"
    #: Tell the incoming attempt "alive": it goes on only if its initiator
    #: answers that it still wants it (else it fails, an ACCEPT_FAILED).
    ALIVE = "alive"
    #: Start the timer of the wait for the peer's attempt.
    START_TIMER = "start_timer"
    #: Stop that timer.
    CANCEL_TIMER = "cancel_timer"
    #: Close the live connection, whose end is then a CONN_LOST of its own.
    CLOSE_OLD = "close_old"
    #: Undo what crossed the connection: ``noconnection`` for links, monitors
    #: and spawn requests, forget the monitors the peer held; nodedown.
    DOWN = "down"
    #: Install the new connection, send what was queued, tell the waiters
    #: True; nodeup.
    UP = "up"
    #: The pending setup failed: stop our dial and timer, drop what was
    #: queued (``noconnection`` for the links, monitors and spawn requests in
    #: it), tell the waiters False.
    FAIL = "fail"


S, E, A = State, Event, Action

#: Every legal transition: (state, event) -> (next state, actions). An event
#: not listed for a state is a bug (:class:`TransitionError`).
TRANSITIONS: Final[dict[tuple[State, Event], tuple[State, tuple[Action, ...]]]] = {
    (S.IDLE, E.WANTED): (S.CONNECTING, (A.DIAL,)),
    (S.IDLE, E.PROVEN_WE_WIN): (S.ACCEPTING, (A.ACCEPT,)),
    (S.IDLE, E.PROVEN_PEER_WINS): (S.ACCEPTING, (A.ACCEPT,)),
    (S.CONNECTING, E.WANTED): (S.CONNECTING, ()),
    (S.CONNECTING, E.PROVEN_WE_WIN): (S.CONNECTING, (A.REFUSE,)),
    (S.CONNECTING, E.PROVEN_PEER_WINS): (S.ACCEPTING, (A.CANCEL_DIAL, A.ACCEPT)),
    (S.CONNECTING, E.DIAL_UP): (S.UP, (A.UP,)),
    (S.CONNECTING, E.DIAL_LOST_RACE): (S.AWAITING_PEER, (A.START_TIMER,)),
    (S.CONNECTING, E.DIAL_FAILED): (S.IDLE, (A.FAIL,)),
    (S.CONNECTING, E.STOPPED): (S.IDLE, (A.FAIL,)),
    (S.AWAITING_PEER, E.WANTED): (S.AWAITING_PEER, ()),
    (S.AWAITING_PEER, E.PROVEN_WE_WIN): (S.ACCEPTING, (A.CANCEL_TIMER, A.ACCEPT)),
    (S.AWAITING_PEER, E.PROVEN_PEER_WINS): (S.ACCEPTING, (A.CANCEL_TIMER, A.ACCEPT)),
    (S.AWAITING_PEER, E.TIMEOUT): (S.IDLE, (A.FAIL,)),
    (S.AWAITING_PEER, E.STOPPED): (S.IDLE, (A.FAIL,)),
    (S.ACCEPTING, E.WANTED): (S.ACCEPTING, ()),
    (S.ACCEPTING, E.PROVEN_WE_WIN): (S.ACCEPTING, (A.REFUSE,)),
    (S.ACCEPTING, E.PROVEN_PEER_WINS): (S.ACCEPTING, (A.REFUSE,)),
    (S.ACCEPTING, E.ACCEPT_UP): (S.UP, (A.UP,)),
    (S.ACCEPTING, E.ACCEPT_FAILED): (S.IDLE, (A.FAIL,)),
    (S.ACCEPTING, E.ACCEPT_FAILED_REDIAL): (S.CONNECTING, (A.DIAL,)),
    (S.ACCEPTING, E.STOPPED): (S.IDLE, (A.FAIL,)),
    (S.UP, E.WANTED): (S.UP, ()),
    (S.UP, E.PROVEN_WE_WIN): (S.UP_PENDING, (A.ALIVE,)),
    (S.UP, E.PROVEN_PEER_WINS): (S.UP_PENDING, (A.ALIVE,)),
    (S.UP, E.CONN_LOST): (S.IDLE, (A.DOWN,)),
    (S.UP_PENDING, E.WANTED): (S.UP_PENDING, ()),
    (S.UP_PENDING, E.PROVEN_WE_WIN): (S.UP_PENDING, (A.REFUSE,)),
    (S.UP_PENDING, E.PROVEN_PEER_WINS): (S.UP_PENDING, (A.REFUSE,)),
    (S.UP_PENDING, E.ACCEPT_UP): (S.UP, (A.CLOSE_OLD, A.DOWN, A.UP)),
    (S.UP_PENDING, E.ACCEPT_FAILED): (S.UP, ()),
    (S.UP_PENDING, E.ACCEPT_FAILED_REDIAL): (S.UP, ()),
    # OTP's up_pending_nodedown: the old connection is gone, the new one is
    # still being set up: pending, owned by the incoming attempt.
    (S.UP_PENDING, E.CONN_LOST): (S.ACCEPTING, (A.DOWN,)),
}
del S, E, A


class TransitionError(RuntimeError):
    """An event that cannot happen in the peer's state (a bug in the caller)."""


@dataclass(eq=False, slots=True)
class Peer:
    """The record of one peer node: its connection's state and what crosses it.

    ``conn`` is the live connection (in UP and UP_PENDING; the net kernel's
    :class:`~pybeam.distribution.connection.Connection`), ``dial`` our own
    attempt's task, ``timer`` the AWAITING_PEER timer, ``done`` the future
    ``connect()`` callers wait on (True once up, False if the setup failed).
    """

    name: str
    state: State = State.IDLE
    conn: Any = None
    dial: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    done: asyncio.Future[bool] | None = None
    #: The incoming attempt that owns the setup (ACCEPTING, UP_PENDING):
    #: whatever identifies it to the net kernel (its stream writer).
    acceptor: Any = None
    #: Whether the peer is a hidden node (known once up).
    hidden: bool = False
    #: Whether we dialled during this pending round (then a failed incoming
    #: attempt ends the round rather than making us dial).
    dialled: bool = False
    #: Signals queued while pending: (sender, encoded once, when queued).
    queue: list[tuple[Any, bytes]] = field(default_factory=list)
    #: (local pid, remote pid) pairs linked across the connection.
    links: set[tuple[Any, Any]] = field(default_factory=set)
    #: ref -> (local watcher, item): monitors held on the peer's processes.
    monitors_out: dict[Any, tuple[Any, Any]] = field(default_factory=dict)
    #: ref -> local target: monitors the peer holds on our processes.
    monitors_in: dict[Any, Any] = field(default_factory=dict)
    #: ref -> (local requester, options): spawn requests awaiting their reply.
    spawns: dict[Any, tuple[Any, dict[str, Any]]] = field(default_factory=dict)
    #: Every transition taken, for tests and debugging: (from, event, to).
    history: list[tuple[State, Event, State]] | None = None

    @property
    def pending(self) -> bool:
        """True while the connection is being set up (signals are queued)."""
        return self.state in PENDING

    @property
    def accepting(self) -> bool:
        """True while an incoming attempt of the peer's is finishing: a second
        one is a duplicate."""
        return self.state in (State.ACCEPTING, State.UP_PENDING)

    def proven_event(self, my_name: str) -> Event:
        """The event of the peer's attempt proving the cookie, by name
        comparison (who wins a simultaneous connect)."""
        return Event.PROVEN_WE_WIN if my_name > self.name else Event.PROVEN_PEER_WINS

    def accept_failed_event(self) -> Event:
        """The event of the incoming attempt failing: dial ourselves if
        signals or callers wait and we have not dialled in this round."""
        waiting = bool(self.queue) or (self.done is not None and not self.done.done())
        return Event.ACCEPT_FAILED_REDIAL if waiting and not self.dialled else Event.ACCEPT_FAILED

    def fire(self, event: Event) -> tuple[Action, ...]:
        """Take the transition for ``event``; return the actions to carry out."""
        try:
            state, actions = TRANSITIONS[self.state, event]
        except KeyError:
            raise TransitionError(
                f"peer {self.name}: no transition for {event.name} in {self.state.name}"
            ) from None
        if self.history is not None:
            self.history.append((self.state, event, state))
        self.state = state
        return actions

    def take_tracked(
        self,
    ) -> tuple[set[tuple[Any, Any]], dict[Any, tuple[Any, Any]], dict[Any, Any], dict[Any, tuple[Any, Any]]]:
        """Hand over and forget what crossed the connection (links, monitors
        out, monitors in, spawns): each is undone once, by whoever takes it."""
        taken = (self.links, self.monitors_out, self.monitors_in, self.spawns)
        self.links, self.monitors_out, self.monitors_in, self.spawns = set(), {}, {}, {}
        return taken

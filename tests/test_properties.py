"""Property tests of the runtime against a model of BEAM's rules."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pybeam
from pybeam import ANY, Pid, receive, send

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- selective receive ---------------------------------------------------------


@SETTINGS
@given(
    messages=st.lists(st.integers(min_value=0, max_value=20), max_size=30),
    modulus=st.integers(min_value=1, max_value=5),
    remainder=st.integers(min_value=0, max_value=4),
)
def test_selective_receive_takes_first_match_and_keeps_rest_in_order(
    messages: list[int], modulus: int, remainder: int
) -> None:
    def wanted(m: Any) -> bool:
        return isinstance(m, int) and m % modulus == remainder

    async def main() -> tuple[Any, list[Any]]:
        me = pybeam.self()
        for m in messages:
            send(me, m)
        got = await receive(wanted, timeout=0, default=None)
        rest = [await receive(timeout=0) for _ in range(len(messages) - (got is not None))]
        return got, rest

    got, rest = pybeam.run(main)
    first = next((i for i, m in enumerate(messages) if wanted(m)), None)
    if first is None:
        assert got is None
        assert rest == messages
    else:
        assert got == messages[first]
        assert rest == messages[:first] + messages[first + 1 :]


@SETTINGS
@given(
    backlog=st.integers(min_value=0, max_value=40),
    arrivals=st.lists(st.lists(st.integers(min_value=0, max_value=9), max_size=6), max_size=6),
    wanted_value=st.integers(min_value=0, max_value=9),
)
def test_a_waiting_selective_receive_takes_the_first_match_among_later_arrivals(
    backlog: int, arrivals: list[list[int]], wanted_value: int
) -> None:
    # The receive has looked at the backlog (none matches) before the arrivals
    # come, batch by batch, each batch waking it: it looks at the new ones
    # only (from the tail, when they are the shorter part), takes the first
    # match, and leaves everything else in arrival order.
    sent = [m for batch in arrivals for m in batch]

    async def waiter(reply: Pid) -> None:
        got = await receive(lambda m: m == wanted_value or m == "end")
        rest = []
        if got == "end":  # no match came: "end" was the last message
            got = None
            while (m := await receive(timeout=0, default=None)) is not None:
                rest.append(m)
        else:
            while (m := await receive()) != "end":
                rest.append(m)
        send(reply, (got, rest))

    async def main() -> tuple[Any, list[Any]]:
        pid = pybeam.spawn(waiter, pybeam.self())
        for i in range(backlog):
            send(pid, ("old", i))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for batch in arrivals:
            for m in batch:
                send(pid, m)
            await asyncio.sleep(0)
        send(pid, "end")
        result: tuple[Any, list[Any]] = await receive(timeout=5)
        return result

    got, rest = pybeam.run(main)
    old = [("old", i) for i in range(backlog)]
    if wanted_value in sent:
        first = sent.index(wanted_value)
        assert got == wanted_value
        assert rest == old + sent[:first] + sent[first + 1 :]
    else:
        assert got is None
        assert rest == old + sent


# -- links and monitors under random kills ------------------------------------


@dataclass
class Model:
    """BEAM's exit-signal rules, applied synchronously, for n processes."""

    trap: list[bool]
    links: set[frozenset[int]]
    dead: dict[int, Any] = field(default_factory=dict)
    exit_messages: dict[int, Counter[tuple[int, Any]]] = field(default_factory=dict)

    def linked(self, i: int) -> list[int]:
        return sorted(j for pair in self.links if i in pair for j in pair if j != i)

    def die(self, i: int, reason: Any) -> None:
        self.dead[i] = reason
        partners = self.linked(i)
        self.links = {p for p in self.links if i not in p}
        for j in partners:
            self.signal(j, i, reason, from_link=True)

    def signal(self, i: int, sender: int, reason: Any, *, from_link: bool) -> None:
        if i in self.dead:
            return
        if reason == "kill" and not from_link:
            self.die(i, "killed")
        elif self.trap[i]:
            self.exit_messages.setdefault(i, Counter())[(sender, reason)] += 1
        elif reason != "normal":
            self.die(i, reason)


REASONS = st.sampled_from(["kill", "normal", "boom", ("shutdown", 1)])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[bool], list[tuple[int, int]], list[tuple[int, Any]]]:
    n = draw(st.integers(min_value=2, max_value=8))
    trap = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    pairs = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda p: p[0] != p[1])
    links = draw(st.lists(pairs, max_size=2 * n))
    kills = draw(st.lists(st.tuples(st.integers(0, n - 1), REASONS), min_size=1, max_size=n))
    return trap, links, kills


async def member(me: Pid, trap: bool) -> None:
    pybeam.trap_exit(trap)
    send(me, ("ready", pybeam.self()))
    while True:
        match await receive(("link", ANY)):
            case ("link", other):
                pybeam.link(other)
                send(me, ("linked", pybeam.self()))


@SETTINGS
@given(scenarios())
def test_every_monitor_one_down_every_link_the_right_exit(
    scenario: tuple[list[bool], list[tuple[int, int]], list[tuple[int, Any]]],
) -> None:
    trap, links, kills = scenario
    n = len(trap)
    model = Model(trap, {frozenset(p) for p in links})
    for i, reason in kills:
        model.signal(i, -1, reason, from_link=False)
    # At the end everyone still alive is killed, so every monitor must fire.
    for i in range(n):
        model.signal(i, -1, "kill", from_link=False)

    async def main() -> tuple[dict[int, Any], dict[int, Counter[tuple[int, Any]]]]:
        me = pybeam.self()
        pids = [pybeam.spawn(member, me, t) for t in trap]
        for p in pids:
            await receive(("ready", p), timeout=5)
        index = {p: i for i, p in enumerate(pids)}
        refs = {pybeam.monitor(p): i for i, p in enumerate(pids)}
        for a, b in links:
            send(pids[a], ("link", pids[b]))
            await receive(("linked", pids[a]), timeout=5)
        # The exit signals come from this process; the model calls it -1.
        index[me] = -1
        exits: dict[int, Counter[tuple[int, Any]]] = {}

        def record_trapped() -> None:
            for i, p in enumerate(pids):
                info = pybeam.process_info(p)
                for msg in info["messages"] if info else []:
                    if msg[0] == "EXIT":
                        exits.setdefault(i, Counter())[(index[msg[1]], msg[2])] += 1

        for i, reason in kills:
            pybeam.exit(pids[i], reason)
        record_trapped()
        for p in pids:
            pybeam.exit(p, "kill")
        downs: dict[int, Any] = {}
        for _ in range(n):
            (_, ref, _, pid, reason) = await receive(("DOWN", ANY, "process", ANY, ANY), timeout=5)
            i = refs.pop(ref)
            assert pids[i] == pid
            downs[i] = reason
        assert await receive(("DOWN", ANY, ANY, ANY, ANY), timeout=0.01, default=None) is None
        await asyncio.sleep(0)
        return downs, exits

    downs, exits = pybeam.run(main)
    assert downs == model.dead
    # Trapped EXIT messages are read from the mailboxes of the survivors,
    # before the final kill-all.
    expected = Model(trap, {frozenset(p) for p in links})
    for i, reason in kills:
        expected.signal(i, -1, reason, from_link=False)
    assert exits == {i: c for i, c in expected.exit_messages.items() if i not in expected.dead}

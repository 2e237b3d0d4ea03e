"""Margarine's pure pieces: the G-Counter's laws and convergence, the hash ring, the codes."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from examples.margarine import codes, gcounter
from examples.margarine.aggregates import Aggregates
from examples.margarine.ring import HashRing

NODES = ["a@h", "b@h", "c@h", "d@h"]
counters = st.dictionaries(st.sampled_from(NODES), st.integers(0, 1000))


@given(counters, counters)
def test_merge_is_commutative(a: dict[str, int], b: dict[str, int]) -> None:
    assert gcounter.merge(a, b) == gcounter.merge(b, a)


@given(counters, counters, counters)
def test_merge_is_associative(a: dict[str, int], b: dict[str, int], c: dict[str, int]) -> None:
    assert gcounter.merge(gcounter.merge(a, b), c) == gcounter.merge(a, gcounter.merge(b, c))


@given(counters, counters)
def test_merge_is_idempotent(a: dict[str, int], b: dict[str, int]) -> None:
    assert gcounter.merge(a, a) == a
    ab = gcounter.merge(a, b)
    assert gcounter.merge(ab, b) == ab


codes_ = st.sampled_from(["c1", "c2", "c3"])


@given(
    st.dictionaries(codes_, counters), st.sampled_from(NODES), st.dictionaries(codes_, st.integers(0, 1000))
)
def test_a_batch_merges_as_the_g_counter_merge(
    state: dict[str, dict[str, int]], node: str, batch: dict[str, int]
) -> None:
    """The replicator's inlined merge of a peer's batch is the G-Counter's merge, entry by entry."""
    aggregates = Aggregates("me@h", None)
    aggregates.merge(state)
    aggregates.merge_entries(node, batch)
    expected = {code: dict(counter) for code, counter in state.items()}
    for code, n in batch.items():
        expected[code] = gcounter.merge(expected.get(code, {}), {node: n})
    assert aggregates.counters == expected


# A run of the replication: hits on random nodes; partitions that split the nodes
# into groups; deliveries of one node's state to another (only inside a group, any
# order, any number of times, or never); then a heal, after which everybody's
# state reaches everybody (the state sent to each newcomer on join).
ops = st.lists(
    st.one_of(
        st.tuples(st.just("hit"), st.integers(0, 3)),
        st.tuples(st.just("partition"), st.lists(st.integers(0, 2), min_size=4, max_size=4)),
        st.tuples(st.just("deliver"), st.integers(0, 3), st.integers(0, 3)),
    ),
    max_size=60,
)


@given(ops)
def test_every_node_converges_to_the_total_after_the_final_heal(run: list[tuple[Any, ...]]) -> None:
    states: list[gcounter.GCounter] = [{} for _ in NODES]
    group = [0, 0, 0, 0]
    total = 0
    for op in run:
        match op:
            case ("hit", i):
                gcounter.increment(states[i], NODES[i])
                total += 1
            case ("partition", groups):
                group = groups
            case ("deliver", i, j) if group[i] == group[j]:
                gcounter.merge_into(states[j], dict(states[i]))
        # A node never sees more than happened.
        assert all(gcounter.value(s) <= total for s in states)
    for i in range(4):  # the heal: each sends its state to each other
        for j in range(4):
            gcounter.merge_into(states[j], dict(states[i]))
    assert [gcounter.value(s) for s in states] == [total] * 4


def test_increment_only_grows() -> None:
    c: gcounter.GCounter = {}
    gcounter.increment(c, "a", 2)
    try:
        gcounter.increment(c, "a", -1)
    except ValueError:
        pass
    else:
        raise AssertionError("a G-Counter decremented")
    assert c == {"a": 2}


keys = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=200, unique=True)


@given(keys)
def test_a_joining_node_takes_codes_only_for_itself(ks: list[str]) -> None:
    before, after = HashRing(NODES[:3]), HashRing(NODES)
    for k in ks:
        assert after.owner(k) in (before.owner(k), NODES[3])


@given(keys)
def test_a_leaving_node_moves_only_its_own_codes(ks: list[str]) -> None:
    before, after = HashRing(NODES), HashRing(NODES[1:])
    for k in ks:
        if before.owner(k) != NODES[0]:
            assert after.owner(k) == before.owner(k)


def test_the_ring_spreads_codes_evenly_and_alike_everywhere() -> None:
    ring = HashRing(NODES[:3])
    owners = [ring.owner(f"code{i}") for i in range(30_000)]
    for node in NODES[:3]:
        assert 0.25 < owners.count(node) / len(owners) < 0.42
    assert HashRing(reversed(NODES[:3])).owner("code1") == ring.owner("code1")
    assert HashRing([]).owner("x") is None


def test_the_code_is_the_trainings() -> None:
    url = "https://keathley.io"
    digest = hashlib.md5(url.encode()).digest()
    # Elixir: <<code::32>> of the digest as an integer keeps its low 32 bits: the last 4 bytes.
    assert codes.short_code(url) == base64.urlsafe_b64encode(digest[-4:]).decode().rstrip("=")
    assert len(codes.short_code(url)) == 6
    assert codes.check_code(codes.short_code(url)) is None


@given(st.text())
def test_every_code_made_from_a_url_is_a_valid_code(url: str) -> None:
    code = codes.short_code(url.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
    assert codes.check_code(code) is None

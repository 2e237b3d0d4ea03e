"""The grow-only counter (G-Counter), a CRDT: pure functions on plain dicts.

A counter is ``{node: count}``: each node increments only its own entry, and
two copies merge by taking the maximum of each entry. The value is the sum.
Because the merge is commutative, associative and idempotent, copies that have
received the same increments — in any order, any number of times, directly or
through others — are equal: the counter converges without coordination.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["GCounter", "increment", "merge", "merge_into", "value"]

GCounter = dict[str, int]


def increment(counter: GCounter, node: str, by: int = 1) -> None:
    """Add ``by`` (≥ 0) to ``node``'s entry, in place."""
    if by < 0:
        raise ValueError("a G-Counter only grows")
    counter[node] = counter.get(node, 0) + by


def merge(a: Mapping[str, int], b: Mapping[str, int]) -> GCounter:
    """A new counter: the maximum of each entry of ``a`` and ``b``."""
    merged = dict(a)
    merge_into(merged, b)
    return merged


def merge_into(counter: GCounter, other: Mapping[str, int]) -> bool:
    """Merge ``other`` into ``counter`` in place; True if ``counter`` changed."""
    changed = False
    for node, count in other.items():
        if node not in counter or count > counter[node]:
            counter[node] = count
            changed = True
    return changed


def value(counter: Mapping[str, int]) -> int:
    """The count: the sum of the entries."""
    return sum(counter.values())

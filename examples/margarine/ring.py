"""Consistent hashing with virtual nodes: which node owns a code.

Each node is placed at ``VNODES`` points of a ring of 64-bit hashes; a code
belongs to the first point at or after its own hash (wrapping round). When a
node joins it takes over about 1/N of the codes, from every other node a
little; when one leaves, its codes spread over the others. Any other code
stays where it was: that is the point of the ring, compared to ``hash % N``
which moves almost every code when N changes.

The hash is MD5 (not Python's ``hash``, which differs from process to
process): every node must compute the same owner.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

__all__ = ["VNODES", "HashRing"]

#: Points per node: more points, more even shares (64 gives each of 3 nodes 33% ± 5%).
VNODES = 64


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.md5(key.encode()).digest()[:8], "big")


class HashRing:
    """An immutable ring of ``nodes``; :meth:`owner` finds a key's node."""

    def __init__(self, nodes: Iterable[str], vnodes: int = VNODES) -> None:
        self.nodes = frozenset(nodes)
        points = sorted((_hash(f"{node}#{i}"), node) for node in self.nodes for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._owners = [node for _, node in points]

    def owner(self, key: str) -> str | None:
        """The node that owns ``key``; None when the ring is empty."""
        if not self._hashes:
            return None
        i = bisect.bisect_left(self._hashes, _hash(key))
        return self._owners[i % len(self._owners)]

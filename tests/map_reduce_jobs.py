"""A job module for the Map Reduce tests: a word count whose ``map`` crashes on "poison"."""

from __future__ import annotations


def map(chunk: str) -> list[tuple[str, int]]:
    """``(word, 1)`` per word, the training's way; ZeroDivisionError on a chunk with "poison"."""
    if "poison" in chunk.split():
        return [("x", 1 // 0)]
    return [(word, 1) for word in chunk.split()]


def reduce(key: str, values: list[int]) -> int:
    """The sum."""
    return sum(values)

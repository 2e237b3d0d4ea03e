"""The word count job: how many times each word occurs.

A job module has two functions: ``map(chunk)`` turns a piece of the input
(whole lines) into ``(key, value)`` pairs, and ``reduce(key, values)`` turns
all the values one key got into one value. Words are what ``str.split``
separates (any Unicode whitespace); case matters ("And" is not "and").
"""

from __future__ import annotations


def map(chunk: str) -> list[tuple[str, int]]:
    """One ``(word, 1)`` per word of ``chunk``."""
    return [(word, 1) for word in chunk.split()]


def reduce(key: str, values: list[int]) -> int:
    """The number of times ``key`` occurred."""
    return sum(values)

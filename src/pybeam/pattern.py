"""Patterns for selective receive.

Python's ``match`` statement cannot be passed around as a value, so selective
receive takes either a predicate or a *pattern*, compiled here into one:

- :data:`ANY` matches anything;
- a class matches instances of it (``int`` matches ``3``);
- a tuple or list matches a tuple or list of the same length whose items match;
- a dict matches a dict that has every key of the pattern with a matching value
  (other keys are allowed, as in an Elixir map pattern);
- a non-class callable inside a pattern is a predicate on that item;
- anything else matches an equal value.

So ``receive(("DOWN", ref, ANY, ANY, ANY))`` waits for that monitor's DOWN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

__all__ = ["ANY", "Matcher", "compile_pattern"]

Matcher = Callable[[Any], bool]


class _Any:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ANY"


#: The wildcard: matches any value.
ANY: Final = _Any()


def _always(_: Any) -> bool:
    return True


def compile_pattern(pattern: Any) -> Matcher:
    """Turn a pattern (or a predicate) into a predicate on messages."""
    if pattern is ANY:
        return _always
    if isinstance(pattern, type):
        cls = pattern
        return lambda m: isinstance(m, cls)
    if callable(pattern):
        return pattern  # type: ignore[no-any-return]
    if type(pattern) is tuple or type(pattern) is list:
        return _compile_sequence(pattern)
    if type(pattern) is dict:
        return _compile_dict(pattern)
    value = pattern
    return lambda m: bool(m == value)


def _is_literal(p: Any) -> bool:
    return not (p is ANY or callable(p) or type(p) in (tuple, list, dict))


def _compile_sequence(pattern: tuple[Any, ...] | list[Any]) -> Matcher:
    kind = type(pattern)
    n = len(pattern)
    # Literal items are compared inline; only the others pay for a call.
    literals = [(i, p) for i, p in enumerate(pattern) if _is_literal(p)]
    others = [(i, compile_pattern(p)) for i, p in enumerate(pattern) if not _is_literal(p) and p is not ANY]

    def match(m: Any) -> bool:
        if type(m) is not kind or len(m) != n:
            return False
        for i, v in literals:
            if m[i] != v:
                return False
        return all(f(m[i]) for i, f in others)

    return match


def _compile_dict(pattern: dict[Any, Any]) -> Matcher:
    items = [(k, compile_pattern(v)) for k, v in pattern.items()]

    def match(m: Any) -> bool:
        if type(m) is not dict:
            return False
        return all(k in m and f(m[k]) for k, f in items)

    return match

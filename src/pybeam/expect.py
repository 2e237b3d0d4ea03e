"""The result type a caller states for a call whose answer is any term.

``rpc.call(node, fn, expect=int)`` and ``gen_server.call(server, req,
expect=int)`` are typed as returning ``int`` (so code passes ``mypy --strict``
without casts) and check it when the answer comes.
"""

from __future__ import annotations

from typing import Any, TypeVar, get_origin

__all__ = ["UnexpectedResult", "check_result"]

T = TypeVar("T")


class UnexpectedResult(TypeError):
    """A call's result is not of the type the caller stated with ``expect``.

    ``value`` is the result itself, ``expected`` the stated type.
    """

    def __init__(self, what: str, value: Any, expected: type[Any]) -> None:
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        super().__init__(
            f"{what} returned {type(value).__name__} {shown}, expected {getattr(expected, '__name__', expected)}"
        )
        self.value = value
        self.expected = expected


def check_result(what: str, value: Any, expected: type[T] | None) -> Any:
    """``value`` if it is an instance of ``expected`` (its origin, for a
    generic such as ``list[int]``: only the outer type is checked); else
    :class:`UnexpectedResult`. ``expected`` None: no check."""
    if expected is None:
        return value
    outer = get_origin(expected) or expected
    if not isinstance(value, outer):
        raise UnexpectedResult(what, value, expected)
    return value

"""Bounded text for log lines: terms, reasons and tracebacks of any size.

A message, an exit reason or an exception's text can be as large as a frame
(64 MiB by default); a log line that carried it whole would write hundreds of
megabytes and take as long. Everything pybeam logs about a term goes through
:func:`short` (a :mod:`reprlib` form: nested and long items elided) and every
traceback through :func:`clip` (its head and tail). Text a stranger chose (a
claimed node name, a request) goes through :func:`untrusted`: escaped, so it
cannot forge log lines or terminal escapes, and shorter still.
"""

from __future__ import annotations

import reprlib
from typing import Any, Final

from .terms import Crash

__all__ = ["MAX_TEXT", "UNTRUSTED_SHOWN", "clip", "short", "untrusted"]

#: Most characters of a traceback or other free text put in one log record.
MAX_TEXT: Final = 8000
#: Characters of untrusted text shown in a log line.
UNTRUSTED_SHOWN: Final = 64


class _Repr(reprlib.Repr):
    def repr_Crash(self, crash: Crash, level: int) -> str:
        # Crash's own repr holds the whole message, however long.
        return f"Crash({self.repr_str(crash.kind, level)[1:-1]}: {self.repr_str(crash.message, level)[1:-1]})"


_repr = _Repr()
_repr.maxlevel = 4
_repr.maxstring = _repr.maxother = 200
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 16


def short(value: Any) -> str:
    """A repr short enough for a log line, however large the value."""
    return _repr.repr(value)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` itself if it is at most ``limit`` characters, else its head and
    tail with a note of how much was left out."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half:,} characters omitted] ...\n{text[-half:]}"


def untrusted(value: object, limit: int = UNTRUSTED_SHOWN) -> str:
    """``value`` (a name or term a stranger sent) as safe log text.

    A str comes out as its ``repr``, so newlines, terminal escapes and other
    unprintable characters are escaped and the quotes show where it ends; past
    ``limit`` characters it is cut and its length given. Anything else gets
    :func:`short`'s form, cut to ``2 * limit`` characters.
    """
    if type(value) is str:
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value)} chars)"
    text = short(value)
    return text if len(text) <= 2 * limit else text[: 2 * limit - 3] + "..."

"""Bounded text for log lines: terms, reasons and tracebacks of any size.

A message, an exit reason or an exception's text can be as large as a frame
(64 MiB by default); a log line that carried it whole would write hundreds of
megabytes and take as long. Everything pybeam logs about a term goes through
:func:`short` (a :mod:`reprlib` form: nested and long items elided) and every
traceback through :func:`clip` (its head and tail).
"""

from __future__ import annotations

import reprlib
from typing import Any, Final

from .terms import Crash

__all__ = ["MAX_TEXT", "clip", "short"]

#: Most characters of a traceback or other free text put in one log record.
MAX_TEXT: Final = 8000


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

"""Which hot path runs: the compiled one or the pure-Python code it mirrors.

A local message's send, receive and the receiver's step have a C version,
:mod:`pybeam._speedups` (``src/pybeam/_speedups.c``), built when pybeam is
installed on a machine with a C compiler. It does what the Python code in
:mod:`pybeam.scheduler`, :mod:`pybeam.mailbox` and :mod:`pybeam.kernel`
does, and falls back on that code for anything but the common case.

``PYBEAM_PURE_PYTHON=1`` in the environment (read at import) runs the
Python code alone; so does a machine where the extension was not built.
"""

from __future__ import annotations

import os
from collections.abc import Coroutine
from types import ModuleType

__all__ = ["COMPILED", "speedups"]


def _load() -> ModuleType | None:
    if os.environ.get("PYBEAM_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    # What receive() returns is a coroutine to asyncio (as the Python
    # generator it replaces is): asyncio.create_task(receive()) works.
    Coroutine.register(_speedups.Receiving)
    return _speedups


#: The compiled hot path, or None when the Python code runs alone.
speedups: ModuleType | None = _load()

#: Whether the compiled hot path runs.
COMPILED: bool = speedups is not None

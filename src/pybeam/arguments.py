"""Checks for the arguments of pybeam's public functions, at the API's edge.

A bad argument is a :class:`~pybeam.errors.BadArg` (a ``ValueError``) whose
message names the argument, raised before anything is sent or awaited, rather
than a ``TypeError`` from deep inside or a value silently taken for another.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from .errors import BadArg
from .nodename import check_node_name

__all__ = ["check_delay", "check_nodes", "check_timeout"]

_INF = float("inf")


def _seconds(value: object, arg: str, allow_none: bool) -> float:
    # bool is an int to Python, never a number of seconds to us.
    if type(value) is bool or not isinstance(value, numbers.Real):
        expected = "None or a number of seconds" if allow_none else "a number of seconds"
        raise BadArg(f"{arg} must be {expected} (>= 0), got {type(value).__name__} {value!r:.100}")
    seconds = float(value)
    if not seconds >= 0:  # NaN too
        raise BadArg(f"{arg} must be >= 0 seconds, got {value!r}")
    return seconds


def check_timeout(value: object, arg: str = "timeout") -> float | None:
    """``value`` as seconds to wait: None (or infinity) waits forever."""
    if value is None:
        return None
    if (type(value) is float or type(value) is int) and 0 <= value < _INF:
        return float(value)  # the common case, without _seconds' ABC check (a tenth of an rpc's setup)
    seconds = _seconds(value, arg, True)
    return None if math.isinf(seconds) else seconds


def check_delay(value: object, arg: str = "delay") -> float:
    """``value`` as a finite number of seconds >= 0."""
    seconds = _seconds(value, arg, False)
    if math.isinf(seconds):
        raise BadArg(f"{arg} must be a finite number of seconds, got {value!r}")
    return seconds


def check_nodes(value: object, arg: str = "nodes") -> list[str]:
    """``value`` (a list or tuple of node names) as a list; each is checked."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise BadArg(f"{arg} must be a list of node names, got {type(value).__name__} {value!r:.100}")
    return [check_node_name(node, f"{arg}[{i}]") for i, node in enumerate(value)]

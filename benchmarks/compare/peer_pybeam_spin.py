"""pybeam with busy waiting on both nodes (``PYBEAM_BUSY_WAIT=medium``, erl's
default ``+sbwt``; pybeam's default is ``none``): beside the default, what
polling after traffic buys, or costs (see pybeam.distribution.busy_wait)."""

from __future__ import annotations

import os

from . import peer_pybeam


def run(workload: str, n: int) -> list[float]:
    """The workload's figures, busy waiting ``medium`` (the peer node inherits the setting)."""
    os.environ["PYBEAM_BUSY_WAIT"] = "medium"
    return peer_pybeam.run(workload, n)

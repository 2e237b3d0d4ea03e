"""pybeam with busy waiting off on both nodes (``PYBEAM_BUSY_WAIT=none``, as
``erl +sbwt none``; the default is ``medium``, as erl's): beside the default,
what polling after traffic buys, or costs (see pybeam.distribution.busy_wait)."""

from __future__ import annotations

import os

from . import peer_pybeam


def run(workload: str, n: int) -> list[float]:
    """The workload's figures, busy waiting off (the peer node inherits the setting)."""
    os.environ["PYBEAM_BUSY_WAIT"] = "none"
    return peer_pybeam.run(workload, n)

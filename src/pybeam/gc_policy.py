"""How the runtime drives CPython's cyclic garbage collector.

BEAM collects each process's heap on its own, so a million idle processes cost
a spawn nothing. CPython's cyclic collector instead walks every tracked
container object in the interpreter on each full collection, and an idle
process is about a dozen of them (its task, coroutine, context, future...):
left alone, the collector takes three quarters of spawn time from 100k live
processes on (see docs/benchmarks.md, "One node, many idle processes").

The runtime frees an ended process by reference counting alone (its exit
breaks every cycle it made), so long-lived processes need never be walked by
the cyclic collector. Policies (:func:`set_policy`, or ``$PYBEAM_GC`` at import):

- ``"freeze"`` (the default): as ``"thresholds"``, and each time the live
  processes (of all nodes in the interpreter) have grown by ``step`` (2,048) since the last freeze, a young
  collection followed by ``gc.freeze()``: what is alive then (processes, and
  anything else) moves out of the collector's reach, so spawn cost stays flat
  as processes accumulate. Frozen objects are still freed by reference
  counting; only cyclic garbage among them waits. So the runtime renews the
  frozen set (``gc.unfreeze()``, a full collection, ``gc.freeze()``) when the
  live processes fall below half the frozen count or when as many processes
  have been spawned since the last freeze as were frozen (the population may
  have turned over): garbage cycles that formed among frozen objects are
  reclaimed then. A program that calls ``gc.freeze()`` itself (before
  forking, say) should choose ``"thresholds"``.
- ``"thresholds"``: raise the youngest generation's threshold from Python's
  700 to 10,000 if the program left it at the default (a young collection
  every ~90 spawns otherwise).
- ``"python"``: leave the collector as the program set it.

Nodes call :func:`check` every :data:`CHECK_EVERY` spawns; the collector is
per interpreter, so the policy is a module setting, not a node option.
"""

from __future__ import annotations

import gc
import os
from typing import Any, Final

__all__ = [
    "CHECK_EVERY",
    "FREEZE_STEP",
    "GC_THRESHOLDS",
    "POLICIES",
    "check",
    "policy",
    "set_policy",
    "stats",
]

POLICIES: Final = ("freeze", "thresholds", "python")
#: Python's default thresholds for the cyclic garbage collector.
PYTHON_GC_THRESHOLDS: Final = (700, 10, 10)
#: What the runtime sets instead, unless the program chose its own: with the
#: default a young collection runs every ~90 spawns, each walking every
#: pending process; with this spawn-heavy code spends a third less time in
#: the collector (its memory bound is trivial: 10,000 young objects). Python
#: 3.13 raised the default to 2,000 for the same reason.
GC_THRESHOLDS: Final = (10_000, 10, 10)
#: Live processes gained between two freezes, by default: small, so that
#: most of a new process's objects are frozen before a young collection of
#: the collector's own walks them (one runs every ~800 spawns).
FREEZE_STEP: Final = 2048
#: A node checks the policy on every spawn whose pid number is a multiple of this.
CHECK_EVERY: Final = 1024


class _State:
    policy = "freeze"
    step = FREEZE_STEP
    #: Live processes at the last freeze (0: nothing frozen by us).
    frozen_live = 0
    #: Spawns counted by check(), and their number at the last freeze.
    spawns = 0
    spawns_at_freeze = 0
    freezes = 0
    renewals = 0


_state = _State()


def set_policy(name: str, *, step: int = FREEZE_STEP) -> None:
    """Choose the collector policy (see the module docstring); ``step`` is the
    growth in live processes between two freezes."""
    if name not in POLICIES:
        raise ValueError(f"unknown gc policy {name!r}: choose one of {', '.join(POLICIES)}")
    if type(step) is not int or step < 1:
        raise ValueError(f"the freeze step must be a positive int, got {step!r}")
    if _state.frozen_live and name != "freeze":
        gc.unfreeze()  # give back what this policy froze
        _state.frozen_live = 0
    _state.policy = name
    _state.step = step
    if name != "python":
        tune_thresholds()


def policy() -> str:
    """The policy in force."""
    return _state.policy


def stats() -> dict[str, Any]:
    """The policy, its step, the live processes at the last freeze, how many
    freezes and renewals it made, and how many objects are frozen now."""
    return {
        "policy": _state.policy,
        "step": _state.step,
        "frozen_live": _state.frozen_live,
        "freezes": _state.freezes,
        "renewals": _state.renewals,
        "frozen_objects": gc.get_freeze_count(),
    }


def tune_thresholds() -> None:
    """Raise the collector's thresholds to :data:`GC_THRESHOLDS` if they are
    still Python's default (and the policy is not ``"python"``)."""
    if _state.policy != "python" and gc.get_threshold() == PYTHON_GC_THRESHOLDS:
        gc.set_threshold(*GC_THRESHOLDS)


def check(live: int) -> None:
    """A node spawned :data:`CHECK_EVERY` more processes; ``live`` are alive
    on all nodes of this interpreter: freeze or renew the frozen set if the
    policy says so."""
    st = _state
    if st.policy != "freeze":
        return
    st.spawns += CHECK_EVERY
    frozen = st.frozen_live
    if live >= frozen + st.step:
        # Only what is new since the last freeze is walked: cost per spawn stays flat.
        # Only what is new since the last freeze is walked, by a young
        # collection (objects are then frozen before the collector's own young
        # collections walk them: cost per spawn stays flat). Older garbage
        # cycles frozen with the rest wait for the next renewal.
        gc.collect(0)
        gc.freeze()
        st.freezes += 1
    elif frozen and (live < frozen // 2 or st.spawns - st.spawns_at_freeze >= max(frozen, st.step)):
        gc.unfreeze()
        gc.collect()  # reclaims garbage cycles that formed among frozen objects
        st.renewals += 1
        if live < st.step:
            st.frozen_live = 0
            return
        gc.freeze()
    else:
        return
    st.frozen_live = live
    st.spawns_at_freeze = st.spawns


_env = os.environ.get("PYBEAM_GC") or "freeze"
if _env not in POLICIES:
    raise ValueError(f"PYBEAM_GC={_env!r} is not a gc policy: choose one of {', '.join(POLICIES)}")
_state.policy = _env

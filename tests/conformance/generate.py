"""Random conformance scenarios, for hypothesis.

A scenario is generated as a sequence of steps that run *one at a time*:
``main`` either acts itself or commands one child (``go`` / ``done``
messages) and waits for it, then lets any signal it caused settle. Children
act only when commanded, so no trace depends on which of two ready processes
runs first, which BEAM leaves open. Left out for that reason:

- processes acting concurrently, and receives with timeouts other than 0
  (except ``main`` waiting for a child that may have died meanwhile);
- anything a child does in a step after an operation that ends a process
  (``exit_sig``, ``exit``, a crash): on BEAM the target dies when it next
  runs, on pybeam at once, so what follows could see either;
- the order of messages from different senders: BEAM guarantees order only
  per sender, and a cascade of exits (a dies, so b dies) sends its DOWNs in
  an order its schedulers decide. So mailboxes are flushed sorted, polls
  take a message by its content, and children never end on their own;
- timers that could fire while the scenario runs (they are set 10 s ahead
  and only read or cancelled).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from .scenario import Op, Scenario

CHILDREN = ("b", "c", "d")
MESSAGES = ("a", "b", 1, 2, ("t", "@main"))
REASONS = ("normal", "kill", "boom", "shutdown")
NAMES = ("n1", "n2")
#: Long enough for BEAM to settle every signal of a step, short enough to be cheap.
SETTLE_MS = 10
#: main's wait for a child's ``done``: only a child that has died misses it.
DONE_MS = 100


def _targets(spawned: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(["@main", *(f"@{c}" for c in spawned)])


def _message(spawned: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(MESSAGES), _targets(spawned).map(lambda t: ("from", t)))


def _common_op(draw: Any, spawned: list[str], counter: list[int]) -> Op:
    """An operation either main or a commanded child may do."""
    kind = draw(
        st.sampled_from(
            [
                "send",
                "send",
                "exit_sig",
                "trap",
                "register",
                "unregister",
                "whereis",
                "link",
                "unlink",
                "monitor",
                "is_alive",
                "poll",
                "flush",
                "timer",
            ]
        )
    )
    target = draw(_targets(spawned))
    if kind == "send":
        return ("send", target, draw(_message(spawned)))
    if kind == "exit_sig":
        return ("exit_sig", target, draw(st.sampled_from(REASONS)))
    if kind == "trap":
        return ("trap", draw(st.booleans()))
    if kind in ("register", "unregister", "whereis"):
        return (kind, draw(st.sampled_from(NAMES)))
    if kind in ("link", "unlink", "is_alive"):
        return (kind, target)
    if kind == "monitor":
        counter[0] += 1
        return ("monitor", target, f"m{counter[0]}")
    if kind == "poll":
        return (
            "recv",
            draw(st.sampled_from(["_", "a", ("EXIT", "_", "_"), ("DOWN", "_", "_", "_", "_")])),
            0,
        )
    if kind == "flush":
        return ("flush",)
    counter[0] += 1
    return ("send_after", 10_000, target, "late", f"t{counter[0]}")


#: What may end a process (this one or another): only last in a child's step.
_ENDING = ("exit", "crash", "exit_sig")


def _segment(draw: Any, spawned: list[str], counter: list[int]) -> list[Op]:
    """What a commanded child does in one step."""
    ops = [_common_op(draw, spawned, counter) for _ in range(draw(st.integers(0, 3)))]
    ops = [op for op in ops if op[0] not in _ENDING]
    ending = draw(st.sampled_from(["none"] * 3 + ["exit", "crash", "signal"]))
    if ending == "exit":
        ops.append(("exit", draw(st.sampled_from(REASONS[1:]))))
    elif ending == "crash":
        ops.append(("crash", draw(st.sampled_from(["badarith", "badarg"]))))
    elif ending == "signal":
        ops.append(("exit_sig", draw(_targets(spawned)), draw(st.sampled_from(REASONS))))
    return ops


@st.composite
def scenarios(draw: Any) -> Scenario:
    """A random scenario whose trace BEAM's rules alone decide."""
    main: list[Op] = []
    procs: dict[str, list[Op]] = {}
    spawned: list[str] = []
    counter = [0]
    timers: list[str] = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        choice = draw(st.sampled_from(["spawn", "main", "main", "child", "child", "child", "timer"]))
        if choice == "spawn" or not spawned:
            if len(spawned) == len(CHILDREN):
                continue
            child = CHILDREN[len(spawned)]
            mode = draw(st.sampled_from(["plain", "link", "monitor"]))
            main.append(("spawn", child, mode, f"r{child}") if mode == "monitor" else ("spawn", child, mode))
            spawned.append(child)
            procs[child] = []
        elif choice == "main":
            op = _common_op(draw, spawned, counter)
            main.append(op)
            if op[0] == "send_after":
                timers.append(op[4])
        elif choice == "timer" and timers:
            main.append(
                (draw(st.sampled_from(["read_timer", "cancel_timer"])), draw(st.sampled_from(timers)))
            )
        else:
            child = draw(st.sampled_from(spawned))
            counter[0] += 1
            step = counter[0]
            ops = _segment(draw, spawned, counter)
            procs[child] += [("recv", ("go", step), "infinity"), *ops, ("send", "@main", ("done", step))]
            main += [("send", f"@{child}", ("go", step)), ("recv", ("done", step), DONE_MS)]
        main.append(("sleep", SETTLE_MS))
    main.append(("flush_sorted",))
    never: Op = ("recv", "never", "infinity")
    return Scenario("generated", tuple(main), {role: (*ops, never) for role, ops in procs.items()})

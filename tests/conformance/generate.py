"""Random conformance scenarios, for hypothesis.

A scenario is generated as a sequence of steps that run *one at a time*:
``main`` either acts itself or commands one child (``go`` / ``done``
messages) and waits for it, then lets any signal it caused settle. Children
act only when commanded, so no trace depends on which of two ready processes
runs first, which BEAM leaves open. Left out for that reason:

- processes acting concurrently, and receives with timeouts other than 0
  (except ``main`` waiting for a child that may have died meanwhile);
- anything a child does in a step after an operation that ends a process
  (``exit_sig``, ``exit``, a crash), even telling main it is done: on BEAM
  the target dies when it next runs, on pybeam at once, so what follows
  could see either (main's wait for ``done`` then times out instead);
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
REMOTE = ("x", "y")
DEMONITOR_OPTS = ("none", "flush", "info", "both")
MESSAGES = ("a", "b", 1, 2, ("t", "@main"))
REASONS = ("normal", "kill", "boom", "shutdown")
NAMES = ("n1", "n2")
#: Long enough for BEAM to settle every signal of a step, short enough to be cheap.
SETTLE_MS = 10
SETTLE_MS_TWO_NODES = 100
#: main's wait for a child's ``done``: only a child that has died misses it.
DONE_MS = 100


def _targets(roles: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(["@main", *(f"@{r}" for r in roles)])


def _message(roles: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(MESSAGES), _targets(roles).map(lambda t: ("from", t)))


class _Roles:
    """The roles spawned so far: local children, and (two nodes) idle ones on the peer."""

    def __init__(self) -> None:
        self.local: list[str] = []
        self.remote: list[str] = []
        self.refs: list[str] = []
        self.counter = 0

    @property
    def all(self) -> list[str]:
        return self.local + self.remote

    def next(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"


_KINDS = [
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
    "demonitor",
    "is_alive",
    "poll",
    "flush",
    "timer",
]


def _common_op(draw: Any, roles: _Roles) -> Op:
    """An operation either main or a commanded child may do."""
    kind = draw(st.sampled_from(_KINDS))
    target = draw(_targets(roles.all))
    if kind == "send":
        return ("send", target, draw(_message(roles.all)))
    if kind == "exit_sig":
        return ("exit_sig", target, draw(st.sampled_from(REASONS)))
    if kind == "trap":
        return ("trap", draw(st.booleans()))
    if kind in ("register", "unregister", "whereis"):
        return (kind, draw(st.sampled_from(NAMES)))
    if kind in ("link", "unlink"):
        return (kind, target)
    if kind == "is_alive":
        # Only of a local pid: BEAM's is_process_alive/1 takes no other.
        return (kind, draw(_targets(roles.local)))
    if kind == "monitor":
        ref = roles.next("m")
        roles.refs.append(ref)
        return ("monitor", target, ref)
    if kind == "demonitor" and roles.refs:
        return ("demonitor", draw(st.sampled_from(roles.refs)), draw(st.sampled_from(DEMONITOR_OPTS)))
    if kind == "poll":
        return ("recv", draw(st.sampled_from(["a", 1, ("from", "@main")])), 0)
    if kind == "flush":
        return ("flush_sorted",)
    # Only at a local pid: BEAM's send_after takes no other (see docs/semantics.md).
    return ("send_after", 10_000, draw(_targets(roles.local)), "late", roles.next("t"))


#: What may end a process (this one or another): only last in a child's step.
_ENDING = ("exit", "crash", "exit_sig")


def _segment(draw: Any, roles: _Roles) -> list[Op]:
    """What a commanded child does in one step."""
    ops = [_common_op(draw, roles) for _ in range(draw(st.integers(0, 3)))]
    ops = [op for op in ops if op[0] not in _ENDING]
    ending = draw(st.sampled_from(["none"] * 3 + ["exit", "crash", "signal"]))
    if ending == "exit":
        ops.append(("exit", draw(st.sampled_from(REASONS[1:]))))
    elif ending == "crash":
        ops.append(("crash", draw(st.sampled_from(["badarith", "badarg"]))))
    elif ending == "signal":
        ops.append(("exit_sig", draw(_targets(roles.all)), draw(st.sampled_from(REASONS))))
    return ops


@st.composite
def scenarios(draw: Any, two_nodes: bool = False) -> Scenario:
    """A random scenario whose trace BEAM's rules alone decide; with
    ``two_nodes``, some roles are idle processes on the peer node."""
    main: list[Op] = []
    procs: dict[str, list[Op]] = {}
    roles = _Roles()
    timers: list[str] = []
    settle = SETTLE_MS_TWO_NODES if two_nodes else SETTLE_MS
    steps = ["spawn", "main", "main", "child", "child", "child", "timer"]
    if two_nodes:
        steps += ["spawn_on", "spawn_on", "main", "register_there", "disconnect"]
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        choice = draw(st.sampled_from(steps))
        if choice == "spawn_on" and len(roles.remote) < len(REMOTE):
            role = REMOTE[len(roles.remote)]
            mode = draw(st.sampled_from(["plain", "link", "monitor"]))
            main.append(
                ("spawn_on", role, "idle", mode, f"r{role}")
                if mode == "monitor"
                else ("spawn_on", role, "idle", mode)
            )
            roles.remote.append(role)
        elif choice == "register_there" and roles.remote:
            main.append(("rpc_register", roles.next("rn"), f"@{draw(st.sampled_from(roles.remote))}"))
        elif choice == "disconnect":
            main.append(("disconnect",))
        elif choice == "spawn" or not roles.local:
            if len(roles.local) == len(CHILDREN):
                continue
            child = CHILDREN[len(roles.local)]
            mode = draw(st.sampled_from(["plain", "link", "monitor"]))
            main.append(("spawn", child, mode, f"r{child}") if mode == "monitor" else ("spawn", child, mode))
            roles.local.append(child)
            procs[child] = []
        elif choice in ("main", "spawn_on", "register_there"):
            op = _common_op(draw, roles)
            main.append(op)
            if op[0] == "send_after":
                timers.append(op[4])
        elif choice == "timer" and timers:
            main.append(
                (draw(st.sampled_from(["read_timer", "cancel_timer"])), draw(st.sampled_from(timers)))
            )
        else:
            child = draw(st.sampled_from(roles.local))
            step = roles.next("")
            ops = _segment(draw, roles)
            if not ops or ops[-1][0] not in _ENDING:
                # No done after an ending: main would get it before or after
                # the exits it causes, as BEAM's schedulers decide.
                ops.append(("send", "@main", ("done", step)))
            procs[child] += [("recv", ("go", step), "infinity"), *ops]
            main += [("send", f"@{child}", ("go", step)), ("recv", ("done", step), DONE_MS)]
        main.append(("sleep", settle))
    main.append(("flush_sorted",))
    never: Op = ("recv", "never", "infinity")
    return Scenario("generated", tuple(main), {role: (*ops, never) for role, ops in procs.items()})

"""The scenario language both interpreters run, and its Erlang text.

A scenario is what a handful of processes do, one list of operations per
*role*: ``main`` starts first, the others when an operation spawns them.
Terms are atoms (``str``), integers, booleans and tuples; ``"@b"`` stands for
role ``b``'s pid, ``"%main"`` / ``"%peer"`` for the two nodes; in a pattern
``"_"`` stands for anything and a monitor's name for its ref. Operations (tuples):

=======================================  ===================================================
``("spawn", role, "plain" | "link")``    spawn ``role`` (its ops are ``procs[role]``)
``("spawn", role, "monitor", ref)``      spawn_monitor; the monitor is named ``ref``
``("send", dest, msg)``                  dest: ``"@role"``, or a registered name
``("recv", pattern, ms | "infinity")``   records ``{got, Msg}`` or ``{got, timeout}``
``("flush",)``                           records ``{flushed, [Msgs]}``: every message queued
``("flush_sorted",)``                    the same, sorted by their text (order across senders
                                         is not BEAM's to keep)
``("exit", reason)``                     ``exit(Reason)``
``("exit_sig", "@role", reason)``        ``exit(Pid, Reason)``
``("trap", bool)``                       ``process_flag(trap_exit, Bool)``
``("register", name)`` / ``("unregister", name)`` / ``("whereis", name)`` (records it)
``("link", "@role")`` / ``("unlink", "@role")``
``("monitor", "@role" | name, ref)``     a monitor named ``ref``
``("demonitor", ref, opt)``              opt: none, flush, info or both; records the result
``("send_after", ms, dest, msg, t)``     a timer named ``t``
``("cancel_timer", t)`` / ``("read_timer", t)``  records false or ``time``
``("is_alive", "@role")``                records ``is_process_alive``
``("crash", "badarith" | "badarg")``     raise that error
``("sleep", ms)``                        let the others run (only where the order is certain)
``("log", term)``                        records ``{log, Term}``
``("spawn_on", role, body, mode[, ref])``  spawn on the peer: body idle, exit_boom or crash
``("rpc_register", name, "@role")``      register a peer's process there, by rpc
``("rpc", "ok" | "badarith" | "exit_boom")``  rpc:call on the peer; records the result
                                         (``{badrpc, {EXIT, Reason}}`` when it failed)
``("disconnect",)``                      drop the connection to the peer
=======================================  ===================================================

The trace is, for each role, what it recorded in order, then
``{final, Alive}`` once ``main`` has ended and everything has settled. Pids
show as their role, refs as their name, a crash as its error atom.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Op = tuple[Any, ...]


@dataclass(frozen=True)
class Scenario:
    """A named scenario: ``main``'s operations and those of every other role."""

    name: str
    main: tuple[Op, ...]
    procs: dict[str, tuple[Op, ...]] = field(default_factory=dict)

    def erlang(self) -> str:
        """The scenario as one line of Erlang term text (for the BEAM interpreter)."""
        procs = ", ".join(f"{_atom(role)} => {_ops(ops)}" for role, ops in self.procs.items())
        return f"{{scenario, {_ops(self.main)}, #{{{procs}}}}}."


Trace = dict[str, list[str]]


def _ops(ops: tuple[Op, ...]) -> str:
    return "[" + ", ".join("[" + ", ".join(_term(x) for x in op) + "]" for op in ops) + "]"


def _atom(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _term(x: Any) -> str:
    if type(x) is bool:
        return "true" if x else "false"
    if type(x) is int:
        return str(x)
    if type(x) is str:
        return _atom(x)
    if type(x) is tuple:
        return "{" + ", ".join(_term(i) for i in x) + "}"
    raise TypeError(f"not a scenario term: {x!r}")


def parse_trace(lines: list[str]) -> Trace:
    """Group ``role<TAB>event`` lines by role, keeping each role's order."""
    trace: Trace = {}
    for line in lines:
        role, event = line.split("\t", 1)
        trace.setdefault(role, []).append(event)
    return trace

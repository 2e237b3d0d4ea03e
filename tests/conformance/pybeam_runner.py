"""pybeam's interpreter of the conformance scenarios (see scenario.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pybeam
from pybeam import ANY, BadArg, Crash, Pid, Ref, rpc

from .scenario import Op, Scenario, Trace, parse_trace

#: Exception kinds as the error atoms BEAM would give.
ERROR_ATOMS = {
    "ZeroDivisionError": "badarith",
    "pybeam.errors.BadArg": "badarg",
    "pybeam.errors.NoProc": "noproc",
}

_NOTHING = object()

#: What a process on the peer node runs: module-level functions it can import.
REMOTE_BODIES: dict[str, tuple[Any, ...]] = {
    "idle": ("asyncio:sleep", 3600),
    "exit_boom": ("pybeam:exit", "boom"),
    "crash": ("operator:floordiv", 1, 0),
}

#: What an ("rpc", kind) calls on the peer.
RPC_CALLS: dict[str, tuple[Any, ...]] = {
    "ok": ("operator:abs", -1),
    "badarith": ("operator:floordiv", 1, 0),
    "exit_boom": ("pybeam:exit", "boom"),
}


class _Run:
    def __init__(self, scenario: Scenario, peer: str | None = None) -> None:
        self.scenario = scenario
        self.peer = peer
        self.node = pybeam.node_name()
        self.roles: dict[str, Pid] = {}
        self.pid_roles: dict[Pid, str] = {}
        self.refs: dict[Ref, str] = {}
        self.lines: list[str] = []

    # -- terms ----------------------------------------------------------------

    def resolve(self, x: Any) -> Any:
        if x == "%peer":
            return self.peer
        if x == "%main":
            return self.node
        if type(x) is str and x.startswith("@"):
            return self.roles[x[1:]]
        if type(x) is tuple:
            return tuple(self.resolve(i) for i in x)
        return x

    def pattern(self, x: Any) -> Any:
        if x == "_":
            return ANY
        if type(x) is tuple:
            return tuple(self.pattern(i) for i in x)
        ref = next((r for r, name in self.refs.items() if name == x), None)
        return ref if ref is not None else self.resolve(x)

    def fmt(self, x: Any) -> str:
        if x is True or x is False:
            return "true" if x else "false"
        if x is None:
            return "undefined"
        if type(x) is str:
            return "node_main" if x == self.node else "node_peer" if x == self.peer else x
        if type(x) is int:
            return str(x)
        if type(x) is Pid:
            return self.pid_roles.get(x, "pid?")
        if type(x) is Ref:
            return self.refs.get(x, "ref?")
        if type(x) is Crash:
            return ERROR_ATOMS.get(x.kind, x.kind)
        if type(x) is tuple:
            return "{" + ",".join(self.fmt(i) for i in x) + "}"
        if type(x) is list:
            return "[" + ",".join(self.fmt(i) for i in x) + "]"
        return repr(x)

    def record(self, role: str, event: Any) -> None:
        self.lines.append(f"{role}\t{self.fmt(event)}")

    # -- processes ------------------------------------------------------------

    def bind(self, role: str, pid: Pid) -> None:
        self.roles[role] = pid
        self.pid_roles[pid] = role

    async def body(self, role: str, ops: tuple[Op, ...]) -> None:
        timers: dict[str, Ref] = {}
        for op in ops:
            await self.op(role, op, timers)

    async def op(self, role: str, op: Op, timers: dict[str, Ref]) -> None:
        kind, *args = op
        if kind == "spawn":
            child = args[0]
            ops = self.scenario.procs[child]
            if args[1] == "plain":
                self.bind(child, pybeam.spawn(self.body, child, ops))
            elif args[1] == "link":
                self.bind(child, pybeam.spawn_link(self.body, child, ops))
            else:
                pid, ref = pybeam.spawn_monitor(self.body, child, ops)
                self.refs[ref] = args[2]
                self.bind(child, pid)
        elif kind == "spawn_on":
            assert self.peer is not None
            child, body, mode = args[0], REMOTE_BODIES[args[1]], args[2]
            if mode == "monitor":
                pid, ref = await pybeam.spawn_on(self.peer, *body, monitor=True)
                self.refs[ref] = args[3]
            else:
                pid = await pybeam.spawn_on(self.peer, *body, link=mode == "link")
            self.bind(child, pid)
        elif kind == "rpc_register":
            assert self.peer is not None
            await rpc.call(self.peer, "pybeam:register", args[0], self.resolve(args[1]))
        elif kind == "rpc":
            assert self.peer is not None
            fn, *fn_args = RPC_CALLS[args[0]]
            result: Any
            try:
                result = await rpc.call(self.peer, fn, *fn_args)
            except rpc.RemoteError as e:
                result = ("badrpc", ("EXIT", ERROR_ATOMS.get(e.kind, e.kind)))
            except rpc.RpcError as e:
                result = ("badrpc", ("EXIT", e.reason))
            self.record(role, ("rpc", args[0], result))
        elif kind == "disconnect":
            assert self.peer is not None
            pybeam.disconnect(self.peer)
        elif kind == "send":
            pybeam.send(self.resolve(args[0]), self.resolve(args[1]))
        elif kind == "recv":
            timeout = None if args[1] == "infinity" else args[1] / 1000
            msg = await pybeam.receive(self.pattern(args[0]), timeout=timeout, default="timeout")
            self.record(role, ("got", msg))
        elif kind in ("flush", "flush_sorted"):
            got = []
            while (msg := await pybeam.receive(timeout=0, default=_NOTHING)) is not _NOTHING:
                got.append(msg)
            if kind == "flush_sorted":
                got = sorted(got, key=self.fmt)
            self.record(role, ("flushed", got))
        elif kind == "exit":
            pybeam.exit(args[0])
        elif kind == "exit_sig":
            pybeam.exit(self.resolve(args[0]), args[1])
        elif kind == "trap":
            pybeam.trap_exit(args[0])
        elif kind == "register":
            pybeam.register(args[0])
        elif kind == "unregister":
            pybeam.unregister(args[0])
        elif kind == "whereis":
            self.record(role, ("whereis", args[0], pybeam.whereis(args[0])))
        elif kind == "link":
            pybeam.link(self.resolve(args[0]))
        elif kind == "unlink":
            pybeam.unlink(self.resolve(args[0]))
        elif kind == "monitor":
            self.refs[pybeam.monitor(self.resolve(args[0]))] = args[1]
        elif kind == "demonitor":
            ref = next(r for r, name in self.refs.items() if name == args[0])
            opt = args[1]
            result = pybeam.demonitor(ref, flush=opt in ("flush", "both"), info=opt in ("info", "both"))
            self.record(role, ("demonitor", args[0], result))
        elif kind == "send_after":
            timers[args[3]] = pybeam.send_after(args[0] / 1000, self.resolve(args[1]), self.resolve(args[2]))
        elif kind in ("cancel_timer", "read_timer"):
            fn = pybeam.cancel_timer if kind == "cancel_timer" else pybeam.read_timer
            left = fn(timers[args[0]])
            self.record(role, (kind, args[0], "time" if left is not False else False))
        elif kind == "is_alive":
            self.record(role, ("is_alive", args[0], pybeam.is_alive(self.resolve(args[0]))))
        elif kind == "crash":
            if args[0] == "badarith":
                zero = 0
                _ = 1 // zero  # ZeroDivisionError, as BEAM's 1 div 0
            raise BadArg("badarg")
        elif kind == "sleep":
            await asyncio.sleep(args[0] / 1000)
        elif kind == "log":
            self.record(role, ("log", self.resolve(args[0])))
        else:
            raise ValueError(f"unknown operation {op!r}")


async def run_scenario(scenario: Scenario, peer: str | None = None) -> Trace:
    """Run ``scenario`` on the current node (``"%peer"`` is ``peer``); its normalised trace."""
    run = _Run(scenario, peer)
    if peer is not None:
        await pybeam.connect(peer)  # again, after a scenario that disconnected
    pid, ref = pybeam.spawn_monitor(run.body, "main", scenario.main)
    run.bind("main", pid)
    await pybeam.receive(("DOWN", ref, "process", pid, ANY), timeout=20)
    await asyncio.sleep(0.1)
    for role in sorted(run.roles):
        pid = run.roles[role]
        if pid.node == run.node:
            alive = pybeam.is_alive(pid)
        else:
            alive = await rpc.call(pid.node, "pybeam:is_alive", pid, timeout=5)
        run.record(role, ("final", alive))
    for p in run.roles.values():
        pybeam.exit(p, "kill")
    return parse_trace(run.lines)


def run_scenario_sync(scenario: Scenario) -> Trace:
    """Run ``scenario`` on a fresh event loop (and its default node)."""

    async def main() -> Trace:
        try:
            return await run_scenario(scenario)
        finally:
            await pybeam.current_node().stop()

    return asyncio.run(main())

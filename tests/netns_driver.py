"""Runs inside one network namespace (a "host") for tests/test_multihost.py.

``python -m netns_driver ME COOKIE EPMD_PORT TICKTIME B C [--tls CERT KEY CA]``:
starts node ME (whose own port mapper serves loopback and ME's address), then
checks remote send, spawn, link, monitor, rpc, global and pg against nodes B
and C on other hosts, printing ``STEP <what>`` after each. Then it prints
``CUT`` and waits for C's nodedown (the test pulls C's cable), printing
``NODEDOWN <time.time()>``; then checks B is still reachable and prints ``DONE``.
Any failure ends it with a traceback and a non-zero status.

The functions above ``main`` run on B and C (imported there by this module's name).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import pybeam
from pybeam import ANY, global_, pg, rpc
from pybeam.distribution import epmd

# -- run on the remote nodes ------------------------------------------------------------


def whoami() -> tuple[str, int]:
    return pybeam.node_name(), os.getpid()


async def sleeper() -> None:
    await pybeam.receive()


async def echo() -> None:
    while True:
        match await pybeam.receive():
            case (pybeam.Pid() as sender, msg):
                pybeam.send(sender, ("echo", msg))


async def register_globally(name: str) -> pybeam.Pid:
    await global_.start()
    pid = pybeam.spawn(echo)
    assert await global_.register_name(name, pid)
    return pid


async def join_group(group: str) -> pybeam.Pid:
    await pg.start()
    pid = pybeam.spawn(echo)
    await pg.join(group, pid)
    return pid


# -- the driver ------------------------------------------------------------------------


def step(what: str) -> None:
    print(f"STEP {what}", flush=True)


async def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def run(epmd_port: int, ticktime: float, b: str, c: str, tls: bool) -> None:
    b_host = b.partition("@")[2]
    # The port mapper of another host answers lookups, refuses registrations.
    if not tls:
        assert await epmd.lookup(b, epmd_port, host=b_host) is not None
        try:
            await epmd.register("intruder", 4242, epmd_port, host=b_host)
        except epmd.EpmdError as e:
            assert e.reason == "not_local", e
        else:
            raise AssertionError("a remote host registered a name")
        step("epmd")

    assert await pybeam.connect(b), f"cannot connect to {b}"
    assert await pybeam.connect(c), f"cannot connect to {c}"

    async def mesh() -> bool:
        return c in await rpc.call(b, "pybeam.net:nodes")

    await wait_for(mesh, "the full mesh")
    step("connect")

    name_b, pid_b = await rpc.call(b, whoami)
    name_c, pid_c = await rpc.call(c, whoami)
    assert (name_b, name_c) == (b, c) and pid_b != pid_c != os.getpid()
    step("rpc")

    pid = await pybeam.spawn_on(b, echo)
    pybeam.send(pid, (pybeam.self(), "hello"))
    assert await pybeam.receive(("echo", ANY), timeout=10) == ("echo", "hello")
    step("send")

    pybeam.trap_exit(True)
    linked = await pybeam.spawn_on(c, sleeper, link=True)
    pybeam.exit(linked, "bye")
    assert await pybeam.receive(("EXIT", linked, ANY), timeout=10) == ("EXIT", linked, "bye")
    step("link")

    watched = await pybeam.spawn_on(b, sleeper)
    ref = pybeam.monitor(watched)
    pybeam.exit(watched, "kill")
    down = await pybeam.receive(("DOWN", ref, ANY, ANY, ANY), timeout=10)
    assert down[3:] == (watched, "killed"), down
    step("monitor")

    await global_.start()
    registered = await rpc.call(c, register_globally, "svc")

    async def found() -> bool:
        return bool(global_.whereis_name("svc") == registered)

    await wait_for(found, "the global name")
    global_.send("svc", (pybeam.self(), "global"))
    assert await pybeam.receive(("echo", ANY), timeout=10) == ("echo", "global")
    step("global")

    await pg.start()
    member = await rpc.call(b, join_group, "group")

    async def joined() -> bool:
        return pg.get_members("group") == [member]

    await wait_for(joined, "the pg member")
    step("pg")

    pybeam.monitor_nodes(True)
    print("CUT", flush=True)

    await pybeam.receive(("nodedown", c), timeout=10 * ticktime + 10)
    print(f"NODEDOWN {time.time():.6f}", flush=True)
    assert b in pybeam.nodes() and c not in pybeam.nodes()
    assert (await rpc.call(b, whoami))[0] == b
    print("DONE", flush=True)


def tls_options(rest: list[str]) -> Any:
    """``--tls CERT KEY CA`` -> the node's TLS options (None without)."""
    if not rest:
        return None
    from pybeam.distribution.tls import TLSOptions

    _, cert, key, ca = rest
    return TLSOptions(cert=cert, key=key, ca=ca)


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    me, cookie, port, ticktime, b, c, *rest = argv
    tls = tls_options(rest)
    options: dict[str, Any] = {"tls": tls} if tls is not None else {}
    node = pybeam.Node(me, cookie=cookie, epmd_port=int(port), ticktime=float(ticktime), **options)
    pybeam.run(run, int(port), float(ticktime), b, c, tls is not None, node=node)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Signals from a peer that name a target on a third node are dropped, not forwarded.

No node sends a signal over a connection for a process that is not on the
other end; BEAM treats one as invalid and drops it. Forwarding it would let a
peer make the node connect to, and act on, any other node. The peer here
completes a genuine handshake (it has the cookie) and sends such signals raw;
the third node is a real, hidden node the target has never connected to.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import pybeam
from pybeam import Pid, Ref, codec, rpc
from pybeam.distribution import epmd, handshake
from pybeam.distribution.connection import Op
from pybeam.distribution.framing import encode_frame
from pybeam.testing import LocalCluster, eventually

ClusterFactory = Callable[..., LocalCluster]


def node_here() -> str:
    return pybeam.node_name()


def hidden_nodes() -> list[str]:
    return pybeam.nodes(hidden=True)


def dropped() -> int:
    # getattr: the count did not exist before signals were dropped.
    return int(getattr(pybeam.current_node().dist, "foreign_signals_dropped", 0))


@pytest.fixture
async def third(beam_node: pybeam.Node, epmd_port: int) -> AsyncIterator[str]:
    """A hidden node nobody is connected to."""
    name = f"third_{secrets.token_hex(3)}@127.0.0.1"
    kernel: Any = beam_node.dist
    proc = subprocess.Popen(
        [sys.executable, "-m", "pybeam", "node", "--name", name, "--hidden"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "PYBEAM_COOKIE": kernel.cookie,
            "PYBEAM_EPMD_PORT": str(epmd_port),
            "PYTHONPATH": os.pathsep.join(sys.path),
        },
    )
    try:
        await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
        assert await epmd.lookup(name, epmd_port) is not None
        yield name
    finally:
        proc.kill()
        proc.wait()


async def test_signals_naming_a_third_nodes_pid_are_dropped_and_counted(
    cluster: ClusterFactory, third: str
) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        port = await epmd.lookup(n1)
        assert port is not None
        kernel: Any = pybeam.current_node().dist
        attacker = f"attacker_{secrets.token_hex(3)}@127.0.0.1"
        mine = Pid(attacker, 1, 1)
        far = Pid(third, 1, 1)
        ref = Ref(attacker, 1, 1)
        signals = [
            (Op.EXIT, mine, far, "kill"),
            (Op.LINK_EXIT, mine, far, "boom"),
            (Op.LINK, mine, far),
            (Op.UNLINK, mine, far),
            (Op.MONITOR, mine, far, ref),
            (Op.MONITOR, mine, ("registered", third), ref),
            (Op.DEMONITOR, mine, far, ref),
            (Op.DOWN, far, ref, mine, "gone"),
            (Op.SEND, far, "hello"),
            (Op.SPAWN_REPLY, ref, far, mine),
        ]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await handshake.initiate(
                reader,
                writer,
                my_name=attacker,
                my_creation=1,
                cookie=kernel.cookie,
                expected_peer=n1,
                timeout=5,
            )
            writer.write(encode_frame(codec.encode(signals)))
            await writer.drain()

            async def settled() -> bool:
                return third in await rpc.call(n1, hidden_nodes) or await rpc.call(n1, dropped) >= len(
                    signals
                )

            await eventually(settled)
            assert third not in await rpc.call(n1, hidden_nodes)
            assert await rpc.call(n1, dropped) == len(signals)
            # The peer itself was not hung up on, and the node keeps serving.
            assert attacker in await rpc.call(n1, hidden_nodes)
        finally:
            writer.close()
        assert await rpc.call(n1, node_here, timeout=5) == n1
        assert n1 in pybeam.nodes()

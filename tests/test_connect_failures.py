"""A failed connect names its cause: ``net.connect_failure`` and ``NodeDown.reason``
(real nodes: separate OS processes on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import pybeam
from pybeam import NodeDown, gen_server, net, rpc
from pybeam.testing import LocalCluster, eventually

ClusterFactory = Callable[..., LocalCluster]


async def test_a_wrong_cookie_is_named(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        assert pybeam.disconnect(n1)
        await eventually(lambda: n1 not in pybeam.nodes())
        pybeam.set_cookie("not-the-cookie", n1)
        assert await pybeam.connect(n1) is False
        why = net.connect_failure(n1)
        assert why is not None and "cookie refused by peer" in why
        with pytest.raises(NodeDown) as caught:
            await rpc.call(n1, "operator:add", 1, 2)
        assert caught.value.reason is not None and "cookie refused by peer" in caught.value.reason
        assert "cookie refused by peer" in str(caught.value)

        kernel = pybeam.current_node().dist
        kernel.clear_cookie(n1)  # type: ignore[union-attr]
        assert await pybeam.connect(n1) is True
        assert net.connect_failure(n1) is None


async def test_an_unregistered_name_is_named(cluster: ClusterFactory) -> None:
    async with cluster(1):
        ghost = "nobody@127.0.0.1"
        assert await pybeam.connect(ghost) is False
        why = net.connect_failure(ghost)
        assert why is not None and "not registered with the port mapper" in why
        with pytest.raises(NodeDown) as caught:
            await net.spawn_on(ghost, "operator:add", 1, 2)
        assert caught.value.reason is not None and "not registered" in caught.value.reason


async def test_a_refused_connection_is_named(cluster: ClusterFactory) -> None:
    async with cluster(1):
        port = pybeam.testing.free_port()
        assert await pybeam.connect(f"gone@127.0.0.1:{port}") is False
        why = net.connect_failure("gone@127.0.0.1")
        assert why is not None and "connection refused" in why


async def test_a_gen_server_call_to_an_unreachable_node_names_the_cause(cluster: ClusterFactory) -> None:
    async with cluster(1):
        with pytest.raises(NodeDown) as caught:
            await gen_server.call(("server", "nobody@127.0.0.1"), "get", timeout=10)
        assert caught.value.reason is not None and "not registered" in caught.value.reason
        assert "not registered with the port mapper" in str(caught.value)


async def dial_after(node: str, delay: float, reply_to: str) -> None:
    """On a peer: connect to ``node`` after ``delay`` and say how it went."""
    await asyncio.sleep(delay)
    ok = await pybeam.connect(node)
    if ok:
        pybeam.send((reply_to, node), ("dialled", ok))


async def _peer_dials_back(c: LocalCluster, n1: str) -> None:
    me = pybeam.node_name()
    pybeam.register("dial_result")
    await net.spawn_on(n1, dial_after, me, 1.0, "dial_result")
    assert pybeam.disconnect(n1)
    await eventually(lambda: n1 not in pybeam.nodes())


async def test_a_cookie_set_for_a_node_holds_for_the_connections_it_opens(cluster: ClusterFactory) -> None:
    # erlang:set_cookie/2 holds both ways: dist_util checks an incoming
    # connection with the cookie of the node it claims to be.
    async with cluster(1) as c:
        (n1,) = c.nodes
        me = pybeam.node_name()
        await rpc.call(n1, net.set_cookie, "pair-secret", me)
        pybeam.set_cookie("pair-secret", n1)
        await _peer_dials_back(c, n1)
        match await pybeam.receive(timeout=20):
            case ("dialled", True):
                pass
        assert n1 in pybeam.nodes()


async def test_a_cookie_set_for_a_node_refuses_it_when_it_dials_in(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (n1,) = c.nodes
        pybeam.set_cookie("only-here", n1)  # n1 still uses the common cookie
        await _peer_dials_back(c, n1)
        await eventually(lambda: "cookie" in c.logs(n1), timeout=20)
        assert n1 not in pybeam.nodes()
        assert await pybeam.receive(timeout=0.5, default=None) is None

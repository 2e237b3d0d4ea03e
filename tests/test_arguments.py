"""Malformed node names, addresses, timeouts and arguments are refused at the
API's edge with a ValueError naming the problem, before any network activity
(issue 8), and the node keeps serving."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import pybeam
from pybeam import gen_server, net, rpc
from pybeam.distribution.net_kernel import NetKernel
from pybeam.nodename import MAX_NAME_LENGTH, check_node_name, parse_address

BAD_NAMES: list[Any] = [
    "",
    "noat",
    "@host",
    "name@",
    "a@b@c",
    "a b@host",
    "a@host name",
    "a@-host",
    "a@host.",
    "a\n@host",
    "x" * 300 + "@127.0.0.1",
    "a@" + "h" * 260,
    None,
    42,
    b"a@127.0.0.1",
    ("a", "127.0.0.1"),
]
BAD_ADDRESSES: list[Any] = [
    *BAD_NAMES,
    "a@127.0.0.1:99999",
    "a@127.0.0.1:0",
    "a@127.0.0.1:",
    "a@127.0.0.1:-1",
    "a@127.0.0.1:http",
    "a@[::1",
    "a@[nothex]:80",
    "a@::1::2",
]


def echo_back(x: Any) -> Any:
    return x


def test_what_a_node_name_is() -> None:
    assert check_node_name("a@127.0.0.1") == "a@127.0.0.1"
    assert check_node_name("node-1_x@host.example.com") == "node-1_x@host.example.com"
    assert check_node_name("a@::1") == "a@::1"
    assert check_node_name("n" * (MAX_NAME_LENGTH - 4) + "@h.x") == "n" * (MAX_NAME_LENGTH - 4) + "@h.x"
    assert parse_address("a@127.0.0.1") == ("a@127.0.0.1", "127.0.0.1", None)
    assert parse_address("a@127.0.0.1:4370") == ("a@127.0.0.1", "127.0.0.1", 4370)
    assert parse_address("a@[::1]:65535") == ("a@::1", "::1", 65535)
    assert parse_address("a@host:1") == ("a@host", "host", 1)
    for bad in BAD_NAMES:
        with pytest.raises(ValueError, match="node"):
            check_node_name(bad)
    for bad in BAD_ADDRESSES:
        with pytest.raises(ValueError, match="node"):
            parse_address(bad)
    with pytest.raises(ValueError, match="port"):
        check_node_name("a@127.0.0.1:4370")  # an address is no node name
    with pytest.raises(ValueError, match="more than one '@'"):
        check_node_name("a@b@c")
    with pytest.raises(ValueError, match="more than 255"):
        check_node_name("x" * 300 + "@127.0.0.1")
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        parse_address("a@127.0.0.1:99999")


def test_a_node_is_named_by_the_same_rules() -> None:
    for bad in BAD_NAMES:
        if bad is None:
            continue  # no name: a node not distributed
        with pytest.raises(ValueError, match="name"):
            pybeam.Node(bad)
    with pytest.raises(ValueError, match="port"):
        pybeam.Node("a@127.0.0.1:4370")


def _no_network_activity(node: pybeam.Node) -> None:
    kernel = node.dist
    assert isinstance(kernel, NetKernel)
    assert not kernel.peers(), "a connection attempt was started"


async def _raises(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        result = fn(*args, **kwargs)
        if isinstance(result, Awaitable):
            # Old code could wait forever here: bound it, so the test fails instead.
            await asyncio.wait_for(result, 10)
    except ValueError as e:
        assert "node" in str(e), f"{what}: {e}"
        return
    raise AssertionError(f"{what} did not raise ValueError")


async def test_every_api_refuses_a_malformed_node_before_connecting(beam_node: pybeam.Node) -> None:
    me = pybeam.self()
    for bad in BAD_ADDRESSES:
        await _raises(f"connect({bad!r})", net.connect, bad)
        await _raises(f"ping({bad!r})", net.ping, bad)
        await _raises(f"disconnect({bad!r})", net.disconnect, bad)
    for bad in [*BAD_NAMES, "a@127.0.0.1:4370"]:
        await _raises(f"spawn_request({bad!r})", net.spawn_request, bad, echo_back, 1)
        await _raises(f"spawn_on({bad!r})", net.spawn_on, bad, echo_back, 1)
        await _raises(f"rpc.call({bad!r})", rpc.call, bad, echo_back, 1)
        await _raises(f"rpc.cast({bad!r})", rpc.cast, bad, echo_back, 1)
        await _raises(f"rpc.multicall([{bad!r}])", rpc.multicall, [bad], echo_back, 1)
        if isinstance(bad, str):
            # As BEAM: sending to {Name, BadNode} is badarg.
            await _raises(f"send(('x', {bad!r}))", pybeam.send, ("x", bad), "hi")
            await _raises(f"monitor(('x', {bad!r}))", pybeam.monitor, ("x", bad))
        _no_network_activity(beam_node)
    assert pybeam.process_info(me)["monitors"] == []  # type: ignore[index]
    assert pybeam.process_info(me)["message_queue_len"] == 0  # type: ignore[index]
    # And the node keeps serving.
    assert await rpc.call(beam_node.name, echo_back, 7) == 7
    assert await net.ping(beam_node.name) == "pong"


async def test_connect_to_an_impossible_port_returns_at_once(beam_node: pybeam.Node) -> None:
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        await asyncio.wait_for(net.connect("a@127.0.0.1:99999"), 10)
    _no_network_activity(beam_node)


BAD_TIMEOUTS: list[Any] = [-1, -0.5, "5", True, False, math.nan, [1], b"1"]


async def _bad_timeout(what: str, arg: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    with pytest.raises(ValueError, match=arg) as info:
        result = fn(*args, **kwargs)
        if isinstance(result, Awaitable):
            await asyncio.wait_for(result, 10)
    assert arg in str(info.value), f"{what}: {info.value}"


class Echo(gen_server.GenServer):
    async def handle_call(self, request: Any, from_: Any, state: Any) -> Any:
        return ("reply", request, state)


async def test_timeouts_are_none_or_a_number_of_seconds(beam_node: pybeam.Node) -> None:
    me = beam_node.name
    server = await Echo.start()
    for bad in BAD_TIMEOUTS:
        t = "timeout"
        await _bad_timeout(f"rpc.call {bad!r}", t, rpc.call, me, echo_back, 1, timeout=bad)
        await _bad_timeout(f"multicall {bad!r}", t, rpc.multicall, [me], echo_back, 1, timeout=bad)
        await _bad_timeout(f"gen_server.call {bad!r}", t, gen_server.call, server, 1, timeout=bad)
        await _bad_timeout(f"gen_server.stop {bad!r}", t, gen_server.stop, server, timeout=bad)
        await _bad_timeout(f"gen_server.start {bad!r}", t, Echo.start, timeout=bad)
        await _bad_timeout(f"receive {bad!r}", t, pybeam.receive, timeout=bad)
        await _bad_timeout(f"send_after {bad!r}", "delay", pybeam.send_after, bad, me, 1)
    await _bad_timeout("send_after inf", "delay", pybeam.send_after, math.inf, me, 1)
    # What is valid still is, and nothing was left running or queued.
    assert await rpc.call(me, echo_back, 1, timeout=5) == 1
    assert await rpc.call(me, echo_back, 2, timeout=None) == 2
    assert await rpc.call(me, echo_back, 3, timeout=math.inf) == 3
    assert await gen_server.call(server, 4, timeout=1) == 4
    assert await pybeam.receive(timeout=0, default="nothing") == "nothing"
    assert await pybeam.receive(timeout=0.0, default="nothing") == "nothing"


async def test_multicall_wants_a_list_of_nodes(beam_node: pybeam.Node) -> None:
    with pytest.raises(ValueError, match="list of node names"):
        await rpc.multicall(beam_node.name, echo_back, 1)
    with pytest.raises(ValueError, match=r"nodes\[1\]"):
        await rpc.multicall([beam_node.name, "bad"], echo_back, 1)
    _no_network_activity(beam_node)
    assert await rpc.multicall((beam_node.name,), echo_back, 1) == ([1], [])

"""What answers an rpc: the DOWN of the process that ran it, and nothing else
when that process ends at once (``spawn_request`` with ``reply="error_only"``,
as OTP's erpc asks for ``{reply, error_only}``).

The wire tests speak to a real node (an OS process) from a raw peer that
completes a genuine handshake, and read every control message the node sends
back; the others call real nodes through the public API.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import pybeam
from pybeam import ANY, BadArg, Pid, Ref, codec, net, rpc
from pybeam.distribution import epmd, handshake
from pybeam.distribution.connection import Op
from pybeam.distribution.framing import encode_frame, read_frame
from pybeam.testing import LocalCluster

ClusterFactory = Callable[..., LocalCluster]

# -- run on the cluster nodes ---------------------------------------------------------------


def node_here() -> str:
    return pybeam.node_name()


def next_pid_number() -> int:
    """The number the next process spawned on this node will get."""
    pid = pybeam.spawn(node_here)
    return pid.id + 1


def block_loop(seconds: float) -> str:
    """Holds the node's event loop: it cannot answer anything meanwhile."""
    import time

    time.sleep(seconds)
    return "late"


async def sleep_then_tell(whom: Pid, seconds: float) -> str:
    await asyncio.sleep(seconds)
    pybeam.send(whom, ("late", pybeam.node_name()))
    return "done"


class Later:
    """Not a coroutine, and awaitable: an rpc awaits it as it awaits one."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        yield from asyncio.sleep(0).__await__()
        return self.value


def returns_awaitable(value: Any) -> Later:
    return Later(value)


def returns_coroutine(value: Any) -> Any:
    return asyncio.sleep(0, value)


def returns_plain(value: Any) -> Any:
    return value


async def idle() -> None:
    await pybeam.receive()


async def slow_on(slow: str, seconds: float, whom: Pid) -> str:
    """Answers at once, but on node ``slow`` only after ``seconds``, then tells ``whom``."""
    if pybeam.node_name() == slow:
        await sleep_then_tell(whom, seconds)
    return pybeam.node_name()


def block_loop_on(blocked: str, seconds: float) -> str:
    if pybeam.node_name() == blocked:
        block_loop(seconds)
    return pybeam.node_name()


# -- a raw peer -----------------------------------------------------------------------------


class RawPeer:
    """A peer that has the cookie and writes and reads control messages itself."""

    def __init__(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.name = name
        self.me = Pid(name, 1, 1)
        self.reader = reader
        self.writer = writer
        self._refs = 0

    def ref(self) -> Ref:
        self._refs += 1
        return Ref(self.name, self._refs, 1)

    async def send(self, *controls: tuple[Any, ...]) -> None:
        self.writer.write(encode_frame(codec.encode(list(controls))))
        await self.writer.drain()

    async def answers(self, ref: Ref, timeout: float = 10.0) -> list[tuple[Any, ...]]:
        """Every control message about ``ref`` until its DOWN or an error reply
        (others, such as the mesh's, are skipped), and for 0.3 s after."""
        got: list[tuple[Any, ...]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        settle: float | None = None
        while True:
            end = deadline if settle is None else min(deadline, settle)
            try:
                frame = await asyncio.wait_for(
                    read_frame(self.reader, allow_empty=True), max(end - loop.time(), 0.0)
                )
            except TimeoutError:
                break
            if not frame:
                continue  # a tick
            for control in codec.decode(frame):
                if ref not in control:
                    continue
                got.append(control)
                ends = control[0] == Op.DOWN or (control[0] == Op.SPAWN_REPLY and type(control[3]) is tuple)
                if ends and settle is None:
                    settle = loop.time() + 0.3
        return got


@pytest.fixture
async def raw_peer(cluster: ClusterFactory) -> AsyncIterator[tuple[str, RawPeer]]:
    async with cluster(1) as c:
        (node,) = c.nodes
        port = await epmd.lookup(node)
        assert port is not None
        kernel: Any = pybeam.current_node().dist
        name = f"raw_{secrets.token_hex(3)}@127.0.0.1"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await handshake.initiate(
                reader,
                writer,
                my_name=name,
                my_creation=1,
                cookie=kernel.cookie,
                expected_peer=node,
                timeout=5,
            )
            yield node, RawPeer(name, reader, writer)
        finally:
            writer.close()


def spawn_request(peer: RawPeer, ref: Ref, fn: str, args: tuple[Any, ...], **opts: Any) -> tuple[Any, ...]:
    return (Op.SPAWN_REQUEST, ref, peer.me, fn, args, {"link": False, "monitor": True, **opts})


# -- on the wire ----------------------------------------------------------------------------


async def test_a_process_that_ends_at_once_is_answered_by_its_down_alone(
    raw_peer: tuple[str, RawPeer],
) -> None:
    node, peer = raw_peer
    ref = peer.ref()
    await peer.send(spawn_request(peer, ref, "operator:add", (2, 3), reply="error_only"))
    (down,) = await peer.answers(ref)
    assert down[:3] == (Op.DOWN, peer.me, ref)
    assert isinstance(down[3], Pid) and down[3].node == node
    assert down[4] == "normal"


async def test_an_rpc_process_ends_with_its_result_as_its_exit_reason(
    raw_peer: tuple[str, RawPeer],
) -> None:
    _, peer = raw_peer
    ref = peer.ref()
    await peer.send(
        spawn_request(peer, ref, "pybeam.rpc:_execute", ("operator:add", 2, 3), reply="error_only")
    )
    (down,) = await peer.answers(ref)
    assert down[:3] == (Op.DOWN, peer.me, ref)
    assert down[4] == ("rpc_return", 5)


async def test_a_process_still_running_gets_its_spawn_reply_before_its_down(
    raw_peer: tuple[str, RawPeer],
) -> None:
    _, peer = raw_peer
    ref = peer.ref()
    await peer.send(spawn_request(peer, ref, "asyncio:sleep", (0.2,), reply="error_only"))
    reply, down = await peer.answers(ref)
    assert reply[0] == Op.SPAWN_REPLY and isinstance(reply[3], Pid)
    assert down[0] == Op.DOWN and down[3] == reply[3]


async def test_a_full_reply_is_always_sent_and_an_error_whatever_was_asked(
    raw_peer: tuple[str, RawPeer],
) -> None:
    _, peer = raw_peer
    ref = peer.ref()
    await peer.send(spawn_request(peer, ref, "operator:add", (2, 3), reply=True))
    reply, down = await peer.answers(ref)
    assert reply[0] == Op.SPAWN_REPLY and down[0] == Op.DOWN
    bad = peer.ref()
    await peer.send(spawn_request(peer, bad, "no_such_module_here:f", (), reply="error_only"))
    (error,) = await peer.answers(bad)
    assert error[0] == Op.SPAWN_REPLY and error[3][0] == "error"


# -- through the API --------------------------------------------------------------------------


async def test_spawn_request_error_only_delivers_only_errors_and_the_down(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (node,) = c.nodes
        for where in (node, pybeam.node_name()):
            ref = net.spawn_request(where, "operator:add", 2, 3, monitor=True, reply="error_only")
            _, _, _, pid, reason = await pybeam.receive(("DOWN", ref, "process", ANY, ANY), timeout=10)
            assert pid.node == where and reason == "normal"
            assert await pybeam.receive(timeout=0.3, default=None) is None
            bad = net.spawn_request(where, "no_such_module_here:f", monitor=True, reply="error_only")
            msg = await pybeam.receive(("spawn_reply", bad, ANY, ANY), timeout=10)
            assert msg[2] == "error"
        with pytest.raises(BadArg):
            net.spawn_request(node, "operator:add", 2, 3, reply="yes")  # type: ignore[arg-type]


async def test_a_timed_out_call_kills_the_process_that_answered(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (node,) = c.nodes
        me = pybeam.self()
        assert await rpc.call(node, node_here) == node  # connected, this module imported there
        with pytest.raises(rpc.RpcTimeout, match="did not return"):
            await rpc.call(node, sleep_then_tell, me, 2.0, timeout=0.5)
        # Killed: it never tells, and nothing of the call comes either.
        assert await pybeam.receive(timeout=2.5, default=None) is None


async def test_an_answer_after_the_call_timed_out_never_reaches_the_caller(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (node,) = c.nodes
        assert await rpc.call(node, node_here) == node  # connected and warm
        # Held well under the tick timeout (ticktime 1 s): the connection stays up.
        with pytest.raises(rpc.RpcTimeout, match="no answer"):
            await rpc.call(node, block_loop, 0.6, timeout=0.2)
        # The node answers this call after the late one's DOWN (one connection, in order).
        assert await rpc.call(node, node_here, timeout=10) == node
        assert await pybeam.receive(timeout=0.5, default=None) is None
        assert net.spawn_request_abandon(Ref(node, 1, 1)) is False


async def test_sequential_calls_spawn_one_process_each_there_and_none_here(cluster: ClusterFactory) -> None:
    async with cluster(1) as c:
        (node,) = c.nodes
        calls = 20
        pybeam.self()  # the test's task becomes a process first
        here = next_pid_number()
        there = await rpc.call(node, next_pid_number)
        for i in range(calls):
            assert await rpc.call(node, "operator:add", i, 1) == i + 1
        assert next_pid_number() == here + 1  # only the probe's own process
        # Each call's process, and the probe's and its process.
        assert await rpc.call(node, next_pid_number) == there + calls + 2


async def test_multicall_timeouts_kill_or_abandon_and_leave_nothing(cluster: ClusterFactory) -> None:
    async with cluster(2) as c:
        n1, n2 = c.nodes
        me = pybeam.self()
        assert await rpc.multicall([n1, n2], node_here) == ([n1, n2], [])  # warm
        # n2's process runs past the timeout: it is killed, and never tells.
        assert await rpc.multicall([n1, n2], slow_on, n2, 2.0, me, timeout=0.5) == ([n1], [n2])
        # n2's loop is held: its request is abandoned, its late DOWN dropped.
        # (Held well under the tick timeout, ticktime 1 s: the connection stays up.)
        assert await rpc.multicall([n1, n2], block_loop_on, n2, 0.6, timeout=0.2) == ([n1], [n2])
        assert await rpc.call(n2, node_here, timeout=10) == n2
        assert await pybeam.receive(timeout=2.0, default=None) is None


async def test_a_call_to_this_node_times_out_and_kills_like_any_other() -> None:
    me = pybeam.self()
    here = pybeam.node_name()
    assert await rpc.call(here, "operator:add", 2, 3) == 5
    with pytest.raises(rpc.RpcTimeout, match="did not return"):
        await rpc.call(here, sleep_then_tell, me, 0.5, timeout=0.1)
    assert await pybeam.receive(timeout=1.0, default=None) is None


@pytest.mark.parametrize("fn", [returns_awaitable, returns_coroutine, returns_plain])
async def test_a_result_is_awaited_if_awaitable_and_returned_as_is_if_not(
    cluster: ClusterFactory, fn: Callable[[Any], Any]
) -> None:
    async with cluster(1) as c:
        (node,) = c.nodes
        for here_or_there in (node, pybeam.node_name()):
            for value in (7, [1, (2, "x")], {"k": (3, 4.5)}, None):
                assert await rpc.call(here_or_there, fn, value, timeout=10) == value

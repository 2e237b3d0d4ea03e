"""The fault-injecting proxy (pybeam.testing.FaultProxy): first on plain sockets,
then between two real nodes (separate OS processes, real TCP) whose connection
it delays, stalls, cuts and half-opens.

The nodes run with a ticktime of 2 s, so a peer is declared down 2 to 2.5 s
after the last data from it arrived (docs/distribution.md); the last data came
at most a tick period (0.5 s) before the fault. The windows asserted below
add a margin for a loaded machine on top.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import pybeam
from pybeam import ANY, Pid, rpc
from pybeam.testing import FaultProxy, eventually, route_through
from pybeam.testing.proxy import Direction, Side, listening_port

TICKTIME = 2.0
#: Seconds of slack for a loaded machine (2 cores shared by many test runs).
MARGIN = 1.5

# -- plain sockets ---------------------------------------------------------------------------


async def echo_server() -> tuple[asyncio.Server, asyncio.Queue[bytes]]:
    """A server that echoes each chunk and puts it in a queue; b"" at EOF (then closes)."""
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await got.put(data)
                writer.write(data)
                await writer.drain()
            await got.put(b"")
        except OSError:
            await got.put(b"RESET")
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, got


@pytest.fixture
async def echo() -> AsyncIterator[tuple[int, asyncio.Queue[bytes]]]:
    server, got = await echo_server()
    async with server:
        yield server.sockets[0].getsockname()[1], got


async def read_exactly(reader: asyncio.StreamReader, n: int, timeout: float = 5.0) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), timeout)


async def test_forwards_both_ways_and_passes_the_fin_on(echo: tuple[int, asyncio.Queue[bytes]]) -> None:
    port, _ = echo
    async with FaultProxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        payload = secrets.token_bytes(300_000)
        writer.write(payload)
        assert await read_exactly(reader, len(payload)) == payload
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server's FIN, through the proxy
        writer.close()
        await eventually(lambda: proxy.connections == [], what="the connection ended")
        [conn] = proxy.history
        assert conn.ended == "closed"
        assert conn.forwarded == {"to_server": len(payload), "to_client": len(payload)}


async def test_delay_holds_every_byte_and_keeps_the_order(echo: tuple[int, asyncio.Queue[bytes]]) -> None:
    port, _ = echo
    async with FaultProxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.delay(0.3, "to_server")
        started = time.monotonic()
        writer.write(b"first.")
        await writer.drain()
        await asyncio.sleep(0.05)
        proxy.delay(0.0, "to_server")  # a shorter delay must not let later bytes overtake
        writer.write(b"second")
        assert await read_exactly(reader, 12) == b"first.second"
        assert time.monotonic() - started >= 0.3
        writer.close()


async def test_stall_holds_one_direction_while_the_other_flows(
    echo: tuple[int, asyncio.Queue[bytes]],
) -> None:
    port, got = echo
    async with FaultProxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.stall("to_client")
        writer.write(b"ping")
        assert await asyncio.wait_for(got.get(), 5) == b"ping"  # reached the server...
        with pytest.raises(TimeoutError):
            await read_exactly(reader, 4, timeout=0.5)  # ...whose echo is held
        writer.write(b"pong")
        assert await asyncio.wait_for(got.get(), 5) == b"pong"
        proxy.resume("to_client")
        assert await read_exactly(reader, 8) == b"pingpong"
        writer.close()


@pytest.mark.parametrize("reset", [True, False])
async def test_cut_closes_both_sides(echo: tuple[int, asyncio.Queue[bytes]], reset: bool) -> None:
    port, got = echo
    async with FaultProxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        [conn] = await proxy.wait_connections(1)
        assert proxy.cut(reset=reset) == 1
        if reset:
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 5)
            assert await asyncio.wait_for(got.get(), 5) == b"RESET"
        else:
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert await asyncio.wait_for(got.get(), 5) == b""
        assert conn.ended == "cut"
        writer.close()


async def test_half_open_keeps_the_silent_side_open_and_closes_the_other(
    echo: tuple[int, asyncio.Queue[bytes]],
) -> None:
    port, got = echo
    async with FaultProxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.wait_connections(1)
        assert proxy.half_open("client") == 1
        assert await asyncio.wait_for(got.get(), 5) == b""  # the server side: closed
        writer.write(b"anyone?")
        await writer.drain()  # the socket is open: writes go out...
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 1.0)  # ...and nothing comes back, not even EOF
        assert got.empty()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), 5)  # closing the proxy finally lets it go
    writer.close()


async def test_blackhole_closes_nothing_and_forwards_nothing(echo: tuple[int, asyncio.Queue[bytes]]) -> None:
    port, got = echo
    async with FaultProxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.wait_connections(1)
        assert proxy.blackhole() == 1
        writer.write(b"hello")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 1.0)
        assert got.empty()  # the server heard neither the bytes nor a FIN
        writer.close()


async def test_a_target_that_refuses_is_a_refused_connection() -> None:
    server, _ = await echo_server()
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with FaultProxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert proxy.accepted == 0


def test_bad_arguments_are_clear_errors() -> None:
    proxy = FaultProxy(1)
    with pytest.raises(ValueError, match="seconds"):
        proxy.delay(-1)
    with pytest.raises(ValueError, match="direction"):
        proxy.stall("sideways")  # type: ignore[arg-type]


# -- between two real nodes ---------------------------------------------------------------------


async def event_watcher() -> None:
    """Records nodeup/nodedown with the time (CLOCK_MONOTONIC: one clock for every process of the host)."""
    pybeam.monitor_nodes(True)
    events: list[tuple[str, str, float]] = []
    while True:
        match await pybeam.receive():
            case ("events", Pid() as sender):
                pybeam.send(sender, ("events", list(events)))
            case (str() as kind, str() as node):
                events.append((kind, node, time.monotonic()))


def start_event_watcher() -> Pid:
    """On a node (by rpc): start the watcher, registered as ``fault_watcher``."""
    pid = pybeam.spawn(event_watcher)
    pybeam.register("fault_watcher", pid)
    return pid


async def nodedown_at(node: str, peer: str, since: float) -> float | None:
    """When ``node`` first saw ``peer`` go down after ``since`` (monotonic), None if it did not."""
    events: Any = await rpc.call(node, _events, timeout=5)
    return next((at for kind, who, at in events if kind == "nodedown" and who == peer and at >= since), None)


async def _events() -> list[tuple[str, str, float]]:
    pybeam.send("fault_watcher", ("events", pybeam.self()))
    _, events = await pybeam.receive(("events", ANY), timeout=5)
    return [(str(k), str(n), float(t)) for k, n, t in events]


@pytest.fixture
async def beam_node(epmd_port: int) -> AsyncIterator[pybeam.Node]:
    """The plugin's ``beam_node`` (which ``cluster`` manages from), with a ticktime of TICKTIME."""
    name = f"test_{secrets.token_hex(4)}@127.0.0.1"
    async with pybeam.Node(
        name, cookie=secrets.token_hex(16), ticktime=TICKTIME, epmd_port=epmd_port
    ) as node:
        yield node


@pytest.fixture
async def pair(cluster: Any) -> AsyncIterator[tuple[str, str, FaultProxy]]:
    """Nodes a and b, a dialing b through a proxy, with event watchers started."""
    async with cluster(2, prefix="fp") as c:
        a, b = c.nodes
        async with FaultProxy(await listening_port(b)) as proxy:
            for node in (a, b):
                await rpc.call(node, start_event_watcher)
            await route_through(proxy, a, b)
            yield a, b, proxy


async def wait_nodedown(node: str, peer: str, since: float, timeout: float = 10 * TICKTIME) -> float:
    """Wait until ``node`` sees ``peer`` go down after ``since``; when it did (monotonic)."""
    found: list[float] = []

    async def seen() -> bool:
        at = await nodedown_at(node, peer, since)
        if at is not None:
            found.append(at)
        return at is not None

    await eventually(seen, timeout, what=f"{node} sees {peer} down")
    return found[-1]


def assert_in_tick_window(delay: float) -> None:
    """Found down by the tick: ``ticktime`` to ``1.25 ticktime`` after the last data,
    which came at most two tick periods before the fault; plus a margin for a loaded machine."""
    assert 0.5 * TICKTIME - 0.1 <= delay <= 1.25 * TICKTIME + MARGIN, f"nodedown {delay:.2f}s after the fault"


@pytest.mark.parametrize("silent", ["client", "server"])
async def test_a_silent_peer_is_found_down_by_the_tick_alone(
    pair: tuple[str, str, FaultProxy], silent: Side
) -> None:
    a, b, proxy = pair
    quiet, told = (a, b) if silent == "client" else (b, a)  # a is the proxy's client
    cut_at = time.monotonic()
    assert proxy.half_open(silent) == 1
    down = await wait_nodedown(quiet, told, cut_at)
    told_down = await wait_nodedown(told, quiet, cut_at)
    print(f"silent {silent}: nodedown {down - cut_at:.3f}s after the fault (ticktime {TICKTIME}s)")
    # Nothing, not even a FIN, reaches the silent side: only the tick can tell.
    assert_in_tick_window(down - cut_at)
    # The other side was closed: it knew at once, long before a tick could tell.
    assert told_down - cut_at < 0.5 * TICKTIME


async def test_a_pulled_cable_is_found_down_by_the_tick_on_both_sides(
    pair: tuple[str, str, FaultProxy],
) -> None:
    a, b, proxy = pair
    cut_at = time.monotonic()
    assert proxy.blackhole() == 1
    for node, peer in ((a, b), (b, a)):
        delay = await wait_nodedown(node, peer, cut_at) - cut_at
        print(f"{node}: nodedown {delay:.3f}s after the cable was pulled")
        assert_in_tick_window(delay)


@pytest.mark.parametrize("direction", ["to_client", "to_server"])
async def test_a_one_way_stall_is_found_by_the_side_that_hears_nothing(
    pair: tuple[str, str, FaultProxy], direction: Direction
) -> None:
    a, b, proxy = pair
    # to_client: b's bytes no longer reach a, while a's still reach b.
    deaf, heard = (a, b) if direction == "to_client" else (b, a)
    stall_at = time.monotonic()
    proxy.stall(direction)
    down = await wait_nodedown(deaf, heard, stall_at)
    print(f"stall {direction}: {deaf} saw nodedown {down - stall_at:.3f}s after the stall")
    assert_in_tick_window(down - stall_at)
    # The side that still heard ticks learns it from the close that follows
    # (the close travels the direction that still flows), not from a tick of its own.
    other = await wait_nodedown(heard, deaf, stall_at)
    assert other >= down - 0.05


async def receive_in_order(count: int, report_to: Pid) -> None:
    """On b: receive ``count`` (sender, i) messages; report whether each sender's came in order."""
    last: dict[Any, int] = {}
    disorder = []
    for _ in range(count):
        _, sender, i = await pybeam.receive(("seq", ANY, ANY), timeout=60)
        if i != last.get(sender, -1) + 1:
            disorder.append((sender, last.get(sender), i))
        last[sender] = i
    pybeam.send(report_to, ("in_order", disorder, last))


def start_receiver(count: int, report_to: Pid) -> Pid:
    pid = pybeam.spawn(receive_in_order, count, report_to)
    pybeam.register("fault_receiver", pid)
    return pid


async def send_sequence(sender: int, to: str, count: int) -> None:
    """On a: send ``("seq", sender, i)`` for i in 0..count-1 to ``fault_receiver`` on ``to``,
    pausing now and then so that the proxy's delay changes between them."""
    for i in range(count):
        pybeam.send(("fault_receiver", to), ("seq", sender, i))
        if i % 50 == 0:
            await asyncio.sleep(0.01)


async def start_senders(senders: int, to: str, count: int) -> None:
    for s in range(senders):
        pybeam.spawn(send_sequence, s, to, count)


async def test_delays_that_change_keep_each_pairs_order(pair: tuple[str, str, FaultProxy]) -> None:
    a, b, proxy = pair
    senders, count = 4, 500
    await rpc.call(b, start_receiver, senders * count, pybeam.self())
    [conn] = proxy.connections
    before = conn.forwarded["to_server"]
    proxy.delay(0.2, "to_server")
    await rpc.call(a, start_senders, senders, b, count)
    # Shrinking delays: later bytes would overtake earlier ones if the proxy let them.
    for seconds in (0.15, 0.1, 0.05, 0.0):
        await asyncio.sleep(0.05)
        proxy.delay(seconds, "to_server")
    _, disorder, last = await pybeam.receive(("in_order", ANY, ANY), timeout=60)
    assert disorder == []
    assert sorted(last.values()) == [count - 1] * senders
    assert conn.open and conn.forwarded["to_server"] - before > senders * count * 10  # it went through us


async def hold(target: Pid, report_to: Pid) -> None:
    """On a node: link to and monitor ``target`` (trapping exits); report what comes."""
    pybeam.trap_exit(True)
    pybeam.link(target)
    ref = pybeam.monitor(target)
    pybeam.send(report_to, ("holding", pybeam.node_name()))
    got: dict[str, Any] = {}
    while len(got) < 2:
        match await pybeam.receive():
            case ("DOWN", r, "process", pid, reason) if r == ref and pid == target:
                got["down"] = reason
            case ("EXIT", pid, reason) if pid == target:
                got["exit"] = reason
    pybeam.send(report_to, ("held", pybeam.node_name(), got))


async def sleeper() -> None:
    await pybeam.receive()


async def linked(node: str, pid: Pid) -> bool:
    info: Any = await rpc.call(node, pybeam.process_info, pid)
    return bool(info and info["links"])


async def dead(node: str, pid: Pid) -> bool:
    return not await rpc.call(node, pybeam.is_alive, pid)


async def spawn_holder(target: Pid, report_to: Pid) -> Pid:
    return pybeam.spawn(hold, target, report_to)


@pytest.mark.parametrize("reset", [True, False])
async def test_a_cut_gives_noconnection_to_monitors_and_links_on_both_sides(
    pair: tuple[str, str, FaultProxy], reset: bool
) -> None:
    a, b, proxy = pair
    me = pybeam.self()
    on_a = await pybeam.spawn_on(a, sleeper)
    on_b = await pybeam.spawn_on(b, sleeper)
    await rpc.call(a, spawn_holder, on_b, me)
    await rpc.call(b, spawn_holder, on_a, me)
    for _ in range(2):
        await pybeam.receive(("holding", ANY), timeout=10)
    # A link is set up by a signal to the other node: wait until both ends
    # have it, else the cut could catch it on the way (and lose it, as BEAM would).
    for node, pid in ((a, on_a), (b, on_b)):
        await eventually(lambda n=node, p=pid: linked(n, p), what=f"{pid} is linked")  # type: ignore[misc]
    [conn] = proxy.connections
    assert proxy.cut(reset=reset) == 1
    reports = {}
    for _ in range(2):
        _, node, got = await pybeam.receive(("held", ANY, ANY), timeout=10)
        reports[node] = got
    assert reports == {
        a: {"down": "noconnection", "exit": "noconnection"},
        b: {"down": "noconnection", "exit": "noconnection"},
    }
    assert conn.ended == "cut"
    # The link's other end got the same exit signal, and (not trapping exits) died of it.
    for node, pid in ((a, on_a), (b, on_b)):
        await eventually(lambda n=node, p=pid: dead(n, p), what=f"{pid} died of the exit signal")  # type: ignore[misc]


def node_here() -> str:
    return pybeam.node_name()


async def call_over(node: str, fn: str) -> Any:
    """On a node (by rpc): an rpc from here to ``node``, over their direct connection."""
    return await rpc.call(node, fn, timeout=10)


async def test_a_slow_link_is_not_a_dead_one(pair: tuple[str, str, FaultProxy]) -> None:
    a, b, proxy = pair
    [conn] = proxy.connections
    since = time.monotonic()
    # Half the ticktime each way: ticks come late, but they keep coming.
    proxy.delay(TICKTIME / 2)
    assert await rpc.call(a, call_over, b, f"{__name__}:node_here", timeout=15) == b
    assert await rpc.call(b, call_over, a, f"{__name__}:node_here", timeout=15) == a
    # Past the tick window, with the delay on: long enough for a tick timeout, had there been one.
    await asyncio.sleep(max(0.0, since + 1.5 * TICKTIME + MARGIN - time.monotonic()))
    assert await nodedown_at(a, b, since) is None and await nodedown_at(b, a, since) is None
    assert conn.open and conn.forwarded["to_client"] > 0

"""pybeam.testing.sim: real nodes on a simulated network, in virtual time.

Each test runs a whole scenario inside ``sim.run`` (a fresh virtual-time
loop): waits of tens of seconds cost milliseconds, and faults are exact.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import pybeam
from pybeam import ANY, NodeDown, Pid, gen_server, receive, rpc, supervisor
from pybeam.gen_server import GenServer
from pybeam.testing import sim
from pybeam.testing.sim import SimCluster

TICK = 4.0


async def sleeper() -> None:
    await receive(lambda m: False)


async def collector(n: int, into: list[Any]) -> None:
    for _ in range(n):
        into.append(await receive())


def monitor_down(pid: Pid) -> Any:
    """An errand that monitors ``pid`` and returns its DOWN's reason."""

    async def wait() -> Any:
        ref = pybeam.monitor(pid)
        _, _, _, _, reason = await receive(("DOWN", ref, ANY, ANY, ANY))
        return reason

    return wait


def test_a_message_crosses_and_a_partition_gives_noconnection_after_the_tick_time() -> None:
    async def main() -> tuple[Any, float, float]:
        async with SimCluster(2, ticktime=TICK) as c:
            a, b = c.names
            got: list[Any] = []
            pid = c.spawn(b, collector, 1, got)

            async def send() -> None:
                pybeam.send(pid, ("hello", pybeam.self()))

            await c.call(a, send)
            await c.sleep(0.1)
            assert got and got[0][0] == "hello" and got[0][1].node == a
            watch = asyncio.ensure_future(c.call(a, monitor_down(c.spawn(b, sleeper))))
            await c.sleep(0.1)
            cut = c.now()
            c.partition([a], [b])
            reason = await watch
            return reason, cut, c.now()

    reason, cut, down = sim.run(main)
    assert reason == "noconnection"
    # Detected by the tick timeout: 4 quiet tick periods of ticktime/4, not before 3.
    assert 0.75 * TICK <= down - cut <= 1.5 * TICK


def test_a_heal_before_the_tick_timeout_delivers_what_was_held_in_order() -> None:
    async def main() -> list[Any]:
        async with SimCluster(2, ticktime=TICK) as c:
            a, b = c.names
            got: list[Any] = []
            pid = c.spawn(b, collector, 5, got)
            c.partition([a], [b])

            async def send() -> None:
                for i in range(5):
                    pybeam.send(pid, i)

            await c.call(a, send)
            await c.sleep(TICK / 2)
            assert got == []
            c.heal()
            await c.sleep(0.5)
            assert b in c.connected(a)
            return got

    assert sim.run(main) == [0, 1, 2, 3, 4]


def test_a_one_way_partition_brings_the_connection_down_on_both_sides() -> None:
    async def main() -> None:
        async with SimCluster(2, ticktime=TICK) as c:
            a, b = c.names
            c.partition([a], [b], oneway=True)
            await c.sleep(TICK * 1.5)
            assert c.connected(a) == [] and c.connected(b) == []
            c.heal()
            await c.wait_meshed()

    sim.run(main)


def test_a_dropped_link_breaks_at_once_and_refuses_for_a_while() -> None:
    async def main() -> None:
        async with SimCluster(2, ticktime=TICK) as c:
            a, b = c.names
            target = c.spawn(b, sleeper)
            watch = asyncio.ensure_future(c.call(a, monitor_down(target)))
            await c.sleep(0.1)
            t = c.now()
            c.drop(a, b, refuse_for=3.0)
            assert await watch == "noconnection"
            assert c.now() - t < 0.1

            async def ping() -> str:
                return await pybeam.ping(b)

            assert await c.call(a, ping) == "pang"
            await c.sleep(3.0)
            assert await c.call(a, ping) == "pong"

    sim.run(main)


@pytest.mark.parametrize("fin", [False, True])
def test_a_killed_node_is_noticed_by_tick_timeout_or_at_once_with_a_fin(fin: bool) -> None:
    async def main() -> float:
        async with SimCluster(3, ticktime=TICK) as c:
            a, b, _ = c.names
            watch = asyncio.ensure_future(c.call(a, monitor_down(c.spawn(b, sleeper))))
            await c.sleep(0.1)
            t = c.now()
            c.kill(b, fin=fin)
            assert await watch == "noconnection"
            return c.now() - t

    took = sim.run(main)
    if fin:
        assert took < 0.1
    else:
        assert took >= 0.75 * TICK


def test_a_killed_node_is_halted_at_once_and_stops() -> None:
    # kill is Node.halt on a severed network: its processes are dead when it
    # returns (killed), and the node then stops as a halted one does.
    async def main() -> None:
        async with SimCluster(2, ticktime=TICK) as c:
            _, b = c.names
            node = c.node(b)
            pid = c.spawn(b, sleeper)
            proc = node.process(pid)
            assert proc is not None
            c.kill(b, fin=True)
            assert not node.running and node.processes() == [] and proc.reason == "killed"
            await asyncio.wait_for(node.wait_stopped(), 10)
            assert not c.alive(b)

    sim.run(main)


def test_a_restarted_node_is_a_new_incarnation() -> None:
    async def main() -> None:
        async with SimCluster(2, ticktime=TICK) as c:
            a, b = c.names
            old_creation = c.node(b).creation
            old = c.spawn(b, sleeper)
            c.kill(b, fin=True)
            await c.sleep(0.5)
            node = await c.restart(b)
            assert node.creation != old_creation
            await c.wait_meshed()
            # A pid of the earlier incarnation names no process of this one.
            assert await c.call(a, monitor_down(old)) in ("noproc", "noconnection")
            assert await c.call(a, rpc.call, b, pybeam.node_name) == b

    sim.run(main)


def test_a_node_frozen_past_the_tick_time_is_declared_down_and_comes_back() -> None:
    async def main() -> None:
        async with SimCluster(3, ticktime=TICK) as c:
            a, b, d = c.names
            c.freeze(b, 2 * TICK)
            await c.sleep(1.5 * TICK)
            assert b not in c.connected(a) and b not in c.connected(d)
            await c.sleep(TICK)
            await c.wait_meshed()
            assert sorted(c.connected(b)) == [a, d]
            assert [e[1] for e in c.trace] == ["started", "freeze", "thaw"]

    sim.run(main)


def test_a_frozen_node_runs_nothing_until_it_thaws() -> None:
    # As SIGSTOP: its processes and timers wait; on thaw they run, late.
    async def main() -> list[Any]:
        async with SimCluster(2, ticktime=TICK) as c:
            b = c.names[1]
            ticks: list[Any] = []

            async def ticker() -> None:
                for _ in range(6):
                    await asyncio.sleep(1.0)
                    ticks.append(c.now())

            c.spawn(b, ticker)
            await c.sleep(2.5)
            c.freeze(b, 2.0)
            await c.sleep(1.0)
            assert len(ticks) == 2  # nothing ran on b while frozen
            await c.sleep(4.0)
            return ticks

    ticks = sim.run(main)
    assert len(ticks) == 6
    assert ticks[2] >= ticks[1] + 2.0  # the tick due during the freeze came at the thaw


def test_a_delayed_link_delivers_later_and_in_order() -> None:
    async def main() -> tuple[float, list[Any]]:
        async with SimCluster(2, ticktime=TICK) as c:
            a, b = c.names
            got: list[Any] = []
            pid = c.spawn(b, collector, 3, got)
            c.delay(a, b, 1.0)

            async def send() -> None:
                for i in range(3):
                    pybeam.send(pid, i)

            t = c.now()
            await c.call(a, send)
            while len(got) < 3:
                await c.sleep(0.01)
            return c.now() - t, got

    took, got = sim.run(main)
    assert got == [0, 1, 2]
    assert 1.0 <= took < 1.5


def _traced_run(seed: int) -> tuple[list[Any], list[Any], list[Any]]:
    async def main() -> tuple[list[Any], list[Any], list[Any]]:
        async with SimCluster(3, ticktime=TICK) as c:
            c.net.record = True
            a, b, d = c.names
            got: list[Any] = []
            sink = c.spawn(d, collector, 40, got)

            async def chatter(tag: str) -> None:
                for i in range(20):
                    pybeam.send(sink, (tag, i))
                    await asyncio.sleep(0.01)

            c.spawn(a, chatter, "a")
            c.spawn(b, chatter, "b")
            await c.sleep(0.05)
            c.partition([b], [d])
            await c.sleep(TICK * 1.5)
            c.heal()
            await c.wait_meshed()
            await c.sleep(0.5)
            return c.trace, c.net.deliveries, got

    return sim.run(main, seed=seed)


def test_the_same_seed_and_schedule_give_the_same_trace() -> None:
    first = _traced_run(7)
    second = _traced_run(7)
    assert first == second
    assert len(first[1]) > 50  # the trace holds the deliveries, not just the faults


def test_a_dozen_nodes_mesh_and_lose_one() -> None:
    async def main() -> None:
        async with SimCluster(12, ticktime=TICK) as c:
            assert all(len(c.connected(n)) == 11 for n in c.names)
            c.kill(c.names[3])
            await c.sleep(2 * TICK)
            assert all(len(c.connected(n)) == 10 for n in c.names if n != c.names[3])

    sim.run(main)


def test_nodes_may_have_any_host_names() -> None:
    # No name is resolved: a simulated host is a name on the simulated network.
    async def main() -> Any:
        async with SimCluster(names=["a@alpha", "b@beta.example"], ticktime=TICK) as c:
            assert c.connected("a@alpha") == ["b@beta.example"]
            return await c.call("a@alpha", rpc.call, "b@beta.example", pybeam.node_name)

    assert sim.run(main) == "b@beta.example"


def test_a_deadlocked_simulation_says_so() -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(sim.SimDeadlock):
        sim.run(main)


def test_a_simulated_loop_reaches_no_real_socket() -> None:
    async def main() -> None:
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", 1)

    sim.run(main)


def test_what_a_crashed_node_sent_into_a_partition_never_arrives() -> None:
    # Held by the cut link, those bytes were dropped by the network, and a
    # crashed host retransmits nothing: a heal must not deliver them.
    async def main() -> list[Any]:
        async with SimCluster(2, ticktime=TICK) as c:
            a, b = c.names
            got: list[Any] = []
            pid = c.spawn(b, collector, 1, got)
            c.partition([a], [b])

            async def send() -> None:
                pybeam.send(pid, "from the grave")

            await c.call(a, send)
            await c.sleep(0.5)
            c.kill(a)
            c.heal()
            await c.sleep(TICK * 2)
            return got

    assert sim.run(main) == []


def _faulty_run(seed: int) -> tuple[list[Any], list[Any], list[Any]]:
    schedule: list[sim.Step] = [
        sim.Partition((0,)),
        sim.Wait(5.0),
        sim.Kill(1),
        sim.Freeze(2, 6.0),
        sim.Drop(0, 2, 1.0),
        sim.Delay(0, 2, 0.5),
        sim.Wait(2.0),
        sim.Restart(1),
        sim.Heal(),
        sim.Partition((1,), oneway=True),
        sim.Wait(5.0),
    ]

    async def main() -> tuple[list[Any], list[Any], list[Any]]:
        async with SimCluster(3, ticktime=TICK) as c:
            c.net.record = True
            got: list[Any] = []
            sinks = {n: c.spawn(n, collector, 1000, got) for n in c.names}

            async def chatter(tag: str) -> None:
                for i in range(400):
                    for sink in sinks.values():
                        pybeam.send(sink, (tag, i))
                    await asyncio.sleep(0.05)

            for n in c.names:
                c.spawn(n, chatter, n)
            for step in schedule:
                await sim.apply(step, c)
            await c.recover(1.0)
            return c.trace, c.net.deliveries, got

    return sim.run(main, seed=seed)


def test_the_same_seed_and_a_schedule_of_every_fault_give_the_same_run() -> None:
    first = _faulty_run(3)
    assert first == _faulty_run(3)
    assert [e[1] for e in first[0]].count("restart") == 1


class Counter(GenServer):
    def init(self, n: int) -> int:
        return n

    def handle_call(self, request: Any, from_: Any, n: int) -> Any:
        if request == "bump":
            return ("reply", n + 1, n + 1)
        return super().handle_call(request, from_, n)


async def start_counter_tree() -> Pid:
    """A supervisor (not linked to the caller) of a Counter named ``counter``."""
    return await supervisor.start([supervisor.server_spec(Counter, 0, name="counter")])


async def kill_counter() -> None:
    pid = pybeam.whereis("counter")
    assert pid is not None
    pybeam.exit(pid, "kill")


def test_gen_server_calls_and_a_supervisor_restart_across_simulated_nodes() -> None:
    async def main() -> list[Any]:
        async with SimCluster(2, ticktime=TICK) as c:
            a, b = c.names
            await c.call(b, start_counter_tree)
            seen: list[Any] = [
                await c.call(a, gen_server.call, ("counter", b), "bump"),
                await c.call(a, gen_server.call, ("counter", b), "bump"),
            ]
            await c.call(b, kill_counter)
            await c.sleep(0.1)
            seen.append(await c.call(a, gen_server.call, ("counter", b), "bump"))  # restarted: from 0
            c.partition([a], [b])
            try:
                await c.call(a, gen_server.call, ("counter", b), "bump", 60.0)
            except NodeDown:
                seen.append(("nodedown", c.now() < 60.0))
            return seen

    assert sim.run(main) == [1, 2, 1, ("nodedown", True)]

"""The Ping Pong demo: ``python -m examples.ping_pong`` from the repository's root.

It starts two more nodes as OS processes, puts the producer on one and the
consumer on the other, then cuts the network between them and heals it,
narrating what each side sees. The consumer's log lines are forwarded from its
node to this one and printed as they happen.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys

import pybeam
from pybeam import Pid, receive, rpc, send
from pybeam.testing import LocalCluster, eventually, free_port, heal, partition

from . import expected_value, produce, start_consumer, start_producer


class _Forward(logging.Handler):
    """Sends each log record of this node to a process on another node."""

    def __init__(self, to: Pid) -> None:
        super().__init__()
        self.to = to

    def emit(self, record: logging.LogRecord) -> None:
        send(self.to, ("log", pybeam.node_name(), record.getMessage()))


def forward_logs(to: Pid) -> None:
    """Run on a node (by rpc): send its "ping_pong" log lines to ``to``."""
    logger = logging.getLogger("ping_pong")
    logger.setLevel(logging.INFO)
    logger.addHandler(_Forward(to))


async def printer() -> None:
    """Print the log lines other nodes forward to us."""
    while True:
        match await receive():
            case ("log", node, line):
                print(f"    [{node.split('@')[0]}] {line}")


def say(text: str) -> None:
    print(f"\n== {text}")


async def demo() -> None:
    console = pybeam.spawn(printer)
    say(f"This process is node {pybeam.node_name()}; starting two more nodes as OS processes")
    async with LocalCluster(2, prefix="pp", unique=False) as cluster:
        n1, n2 = cluster.nodes
        print(f"   connected to {', '.join(pybeam.nodes())}")
        for node in (n1, n2):
            await rpc.call(node, forward_logs, console)

        say(f"Producer on {n1} (started by rpc, reporting to us), consumer on {n2}")
        producer = await rpc.call(n1, start_producer, pybeam.self())
        consumer = await rpc.call(n2, start_consumer, producer)
        _, started = await receive(("starting", Pid), timeout=10)
        print(f"   the producer {started} says it is starting; the consumer is {consumer}")
        print(f"   the consumer expects {await expected_value(consumer)}")

        say("Produce twice: the pings cross from one node to the other")
        for _ in range(2):
            await produce(producer)
        await _settle(consumer, 2)

        say(f"Partition: cut {n2} off from {n1} (its cookie changes, the connection drops)")
        await partition([n2])
        print(f"   {n1} now sees {await rpc.call(n1, _nodes)}; {n2} sees {await rpc.call(n2, _nodes)}")
        print("   (we induced the partition, so we still reach both sides, as Schism does)")

        say("Produce four times: the producer sends pings 2..5, and every one is lost")
        for _ in range(4):
            await produce(producer)
        print(f"   the consumer still expects {await expected_value(consumer)}")

        say("Heal: the cookie is restored and the nodes may connect again")
        await heal([n2])

        say("Produce once more: ping 6 arrives where 2 was expected")
        await produce(producer)
        await _settle(consumer, 7)
        print(f"   the consumer resynchronised and now expects {await expected_value(consumer)}")

        say("Nodes fail too: kill the consumer's node and watch the monitor fire")
        ref = pybeam.monitor(consumer)
        cluster.kill(n2)
        _, _, _, _, reason = await receive(("DOWN", ref, "process", consumer, pybeam.ANY), timeout=10)
        print(f"   DOWN from the consumer with reason {reason!r}")
        say("Done")


def _nodes() -> list[str]:
    return pybeam.nodes()


async def _settle(consumer: Pid, value: int) -> None:
    # The ping and our question travel by different routes: wait until the
    # consumer has seen the ping before reporting.
    async def settled() -> bool:
        return await expected_value(consumer) == value

    try:
        await eventually(settled, timeout=2.0)
    except AssertionError:
        print(f"   (the consumer did not reach {value} in time)")


def main() -> int:
    """Run the demo on a node of its own, with a port mapper of its own."""
    os.environ.setdefault("PYBEAM_EPMD_PORT", str(free_port()))
    node = pybeam.Node(f"demo_{secrets.token_hex(2)}@127.0.0.1", cookie=secrets.token_hex(16), ticktime=2.0)
    pybeam.run(demo, node=node)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A first pybeam program: two processes play ping-pong on one node.

Run it with ``python -m examples.local_ping_pong``. It shows the moves every
pybeam program makes: spawn a process, send it messages, receive with
``match``, monitor it, and see how it ended.
"""

from __future__ import annotations

import pybeam
from pybeam import receive, send, spawn


async def ponger() -> None:
    """Answer every ("ping", n, sender) with ("pong", n); stop on "stop"."""
    while True:
        match await receive():
            case ("ping", n, sender):
                print(f"  ponger {pybeam.self()} got ping {n}")
                send(sender, ("pong", n))
            case "stop":
                print("  ponger stopping")
                return


async def crasher() -> None:
    """A process that fails: its monitor learns why."""
    raise ZeroDivisionError("divided by zero, as the training's producer does")


async def main() -> None:
    me = pybeam.self()
    print(f"main is process {me} on node {pybeam.node_name()}")
    pong = spawn(ponger)
    ref = pybeam.monitor(pong)
    for n in range(3):
        send(pong, ("ping", n, me))
        match await receive(("pong", n), timeout=5):
            case ("pong", got):
                print(f"main got pong {got}")
    send(pong, "stop")
    match await receive(("DOWN", ref, "process", pong, pybeam.ANY), timeout=5):
        case ("DOWN", _, _, _, reason):
            print(f"ponger exited: {reason}")

    print("spawning a process that crashes (its crash report follows):")
    _, ref = pybeam.spawn_monitor(crasher)
    match await receive(("DOWN", ref, "process", pybeam.ANY, pybeam.ANY), timeout=5):
        case ("DOWN", _, _, pid, pybeam.Crash() as crash):
            print(f"monitor saw {pid} crash: {crash.kind}: {crash.message}")


if __name__ == "__main__":
    pybeam.run(main)

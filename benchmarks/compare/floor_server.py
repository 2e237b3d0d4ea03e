"""The bare-asyncio floor's far end: framed msgpack over TCP, in its own OS process.

Prints the port it listens on, then serves until killed. Frames:
``["count", n]`` then n frames, answered ``"done"``; ``["ping", x]`` answered
``x``; ``["call", name, args]`` answered with the function's result.
"""

from __future__ import annotations

import asyncio
import operator
from typing import Any

import pybeam

from .peer_asyncio import FrameProtocol, frame

FUNCTIONS = {"add": operator.add}


class Server(FrameProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.counting = 0

    def received(self, msg: Any) -> None:
        assert self.transport is not None
        if self.counting:
            self.counting -= 1
            if not self.counting:
                self.transport.write(frame("done"))
            return
        kind = msg[0]
        if kind == "count":
            self.counting = msg[1]
        elif kind == "ping":
            self.transport.write(frame(msg[1]))
        elif kind == "call":
            self.transport.write(frame(FUNCTIONS[msg[1]](*msg[2])))


async def main() -> None:
    server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=pybeam.new_event_loop) as runner:
        runner.run(main())

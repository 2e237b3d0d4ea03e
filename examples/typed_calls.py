"""Typed calls: user code that passes ``mypy --strict`` without casts.

``gen_server.call`` and ``rpc.call`` answer with any term, so they are typed
``Any``; pass ``expect=T`` and they are typed ``T``, and the answer is checked
to be a ``T`` when it comes (else ``pybeam.expect.UnexpectedResult``, a
``TypeError``). Run it with ``python -m examples.typed_calls``.
"""

from __future__ import annotations

from typing import Any

import pybeam
from pybeam import GenServer, gen_server

# A global name is any hashable term, not only a string.
COUNTER = ("global", ("counter", 1))


class Counter(GenServer):
    def init(self, start: int) -> int:
        return start

    def handle_call(self, request: Any, from_: Any, count: int) -> Any:
        match request:
            case "get":
                return ("reply", count, count)
            case ("add", int(n)):
                return ("reply", count + n, count + n)
        return ("reply", "unknown request", count)


async def total(server: gen_server.ServerRef, amount: int) -> int:
    """A typed helper: mypy knows what the call returns."""
    return await gen_server.call(server, ("add", amount), expect=int)


async def main() -> tuple[int, int, str]:
    await Counter.start(40, name=COUNTER)
    after: int = await total(COUNTER, 2)
    now = await gen_server.call(COUNTER, "get", expect=int)  # inferred: int
    name = await pybeam.rpc.call(pybeam.node_name(), "builtins:str", now, expect=str)
    await gen_server.stop(COUNTER)
    return after, now + 0, name.upper()


if __name__ == "__main__":
    print(pybeam.run(main, node=pybeam.Node("typed@127.0.0.1")))

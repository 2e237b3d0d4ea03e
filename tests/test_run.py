"""pybeam.run: the program's main as a process of a node."""

from __future__ import annotations

from typing import Any

import pytest

import pybeam
from pybeam import Crash


async def _exits(reason: str) -> None:
    pybeam.exit(reason)


async def _raises() -> None:
    raise ValueError("bad")


def test_main_killed_through_a_link_raises_exit_with_the_reason() -> None:
    async def main() -> None:
        pybeam.spawn_link(_exits, "boom")
        await pybeam.receive()

    with pytest.raises(pybeam.Exit) as info:
        pybeam.run(main)
    assert info.value.reason == "boom"


def test_main_killed_by_a_linked_crash_raises_exit_with_the_crash() -> None:
    async def main() -> None:
        pybeam.spawn_link(_raises)
        await pybeam.receive()

    with pytest.raises(pybeam.Exit) as info:
        pybeam.run(main)
    assert isinstance(info.value.reason, Crash)
    assert info.value.reason.kind == "ValueError"


def test_main_that_traps_exits_gets_the_message_and_returns() -> None:
    async def main() -> Any:
        pybeam.process_flag("trap_exit", True)
        pid = pybeam.spawn_link(_exits, "boom")
        return await pybeam.receive(("EXIT", pid, pybeam.ANY))

    msg = pybeam.run(main)
    assert msg[0] == "EXIT" and msg[2] == "boom"

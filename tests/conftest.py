"""Shared fixtures: each test runs on a fresh event loop whose default node is
shut down afterwards, so no process outlives its test.

A run of the whole suite also checks that nothing was silently left out: every
``test_*.py`` under ``tests/`` must have given at least one test, and the total
must not fall below :data:`MIN_TESTS` (pytest skips folders such as ``dist`` or
``build`` without a word, which once hid 93 tests).
"""

from __future__ import annotations

import collections
import gc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import pybeam
from examples.redis_server import RedisServer
from pybeam.process import Process

if TYPE_CHECKING:
    from test_cli import Cli

pytest_plugins = ["pybeam.testing.pytest_plugin"]

#: The suite's size when this was last raised; lower it only with a reason in the commit.
MIN_TESTS = 1300

_TESTS = Path(__file__).parent

#: What the ``cycles`` fixture gives: see there.
Cycles = Callable[[], tuple[list[Process], collections.Counter[str]]]


def _whole_suite(config: pytest.Config) -> bool:
    opt = config.option
    return (
        config.args_source == pytest.Config.ArgsSource.TESTPATHS
        and not opt.keyword
        and not opt.markexpr
        and not getattr(opt, "lf", False)
        and not getattr(opt, "deselect", None)
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    if not _whole_suite(session.config):
        return
    collected = {Path(item.path) for item in session.items}
    missing = sorted(
        str(p.relative_to(_TESTS.parent)) for p in _TESTS.rglob("test_*.py") if p.resolve() not in collected
    )
    problems = []
    if missing:
        problems.append(f"test files that gave no test (a skipped folder?): {', '.join(missing)}")
    if len(session.items) < MIN_TESTS:
        problems.append(f"only {len(session.items)} tests collected, fewer than MIN_TESTS={MIN_TESTS}")
    if problems:
        raise pytest.UsageError("the whole suite was not collected: " + "; ".join(problems))


@pytest.fixture(autouse=True)
async def _stop_default_node() -> AsyncIterator[None]:
    yield
    await pybeam.current_node().stop()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A private ``redis-server`` on a free port for the test module (no persistence,
    stopped afterwards): ``redis_server.url``. See examples/redis_server.py."""
    with RedisServer.start() as server:
        yield server


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    """Starts ``pybeam`` commands with a private port mapper and home, and
    kills whatever is still running after the test (see tests/test_cli.py)."""
    from test_cli import Cli

    c = Cli(tmp_path)
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def cycles() -> Iterator[Cycles]:
    """The cyclic collector off for the test (reference counting alone frees
    what it ends), and a function that collects and returns the processes
    found only in reference cycles, with a count of all it found by type."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)

    def in_cycles() -> tuple[list[Process], collections.Counter[str]]:
        gc.collect()
        kept = collections.Counter(type(o).__name__ for o in gc.garbage)
        return [o for o in gc.garbage if isinstance(o, Process)], kept

    try:
        yield in_cycles
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()

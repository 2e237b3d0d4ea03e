"""A pytest plugin for tests that run real nodes: fixtures ``epmd_port``, ``beam_node``, ``cluster``.

Load it from a conftest (``pytest_plugins = ["pybeam.testing.pytest_plugin"]``)
or on the command line (``-p pybeam.testing.pytest_plugin``). It needs
pytest-asyncio.

``epmd_port`` (session)
    A free port for the port mapper, set as ``$PYBEAM_EPMD_PORT`` for the whole
    session (and for the child processes it starts), so that tests never meet
    the nodes of a developer's machine or of another test run.
``beam_node`` (function, async)
    A distributed node ``test_<random>@127.0.0.1`` with a random cookie and a
    ticktime of 1 s, entered for the test: in the test body
    ``pybeam.current_node()`` is this node (pytest-asyncio hands the context
    variables an async fixture sets on to the test), so ``pybeam.self()``,
    ``rpc.call``, ``pybeam.nodes()``... act on it. The fixture's value is the
    :class:`~pybeam.Node`.
``cluster`` (function, async)
    A factory of :class:`~pybeam.testing.LocalCluster` managed by ``beam_node``:
    ``async with cluster(3) as c:`` (or ``c = await cluster(3).start()``).
    Every cluster it made is stopped after the test, and when a test fails the
    log of each of their nodes is added to the report.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from ..distribution.epmd import PORT_ENV
from ..node import Node
from .cluster import LocalCluster, free_port

__all__ = ["beam_node", "cluster", "epmd_port", "free_port"]

_CLUSTERS = pytest.StashKey[list[LocalCluster]]()


@pytest.fixture(scope="session")
def epmd_port() -> Iterator[int]:
    """A private port mapper port, in ``$PYBEAM_EPMD_PORT`` for the session."""
    port = free_port()
    old = os.environ.get(PORT_ENV)
    os.environ[PORT_ENV] = str(port)
    try:
        yield port
    finally:
        if old is None:
            os.environ.pop(PORT_ENV, None)
        else:
            os.environ[PORT_ENV] = old


@pytest_asyncio.fixture
async def beam_node(epmd_port: int) -> AsyncIterator[Node]:
    """A distributed node the test runs on (ticktime 1 s, random name and cookie)."""
    name = f"test_{secrets.token_hex(4)}@127.0.0.1"
    async with Node(name, cookie=secrets.token_hex(16), ticktime=1.0, epmd_port=epmd_port) as node:
        yield node


@pytest_asyncio.fixture
async def cluster(
    beam_node: Node, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., LocalCluster]]:
    """A factory: ``cluster(count, **options)`` makes a :class:`LocalCluster` managed by ``beam_node``."""
    made: list[LocalCluster] = []
    request.node.stash[_CLUSTERS] = made

    def make(count: int, **options: Any) -> LocalCluster:
        options.setdefault("node", beam_node)
        c = LocalCluster(count, **options)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            await c.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """When a test fails, add the log of every node of its clusters to the report."""
    if call.excinfo is not None and call.when in ("setup", "call"):
        for c in item.stash.get(_CLUSTERS, []):
            for node in c.nodes:
                item.add_report_section(call.when, f"pybeam node {node}", c.logs(node) or "(empty)\n")
    return (yield)

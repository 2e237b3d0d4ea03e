"""Shared fixtures: each test runs on a fresh event loop whose default node is
shut down afterwards, so no process outlives its test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import pybeam

pytest_plugins = ["pybeam.testing.pytest_plugin"]


@pytest.fixture(autouse=True)
async def _stop_default_node() -> AsyncIterator[None]:
    yield
    await pybeam.current_node().stop()

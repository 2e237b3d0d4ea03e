"""The BEAM interpreter, started once for the conformance tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .beam_runner import Beam, beam_missing


@pytest.fixture(scope="session")
def beam() -> Iterator[Beam]:
    """A running BEAM interpreter of scenarios (the test skips without Erlang)."""
    why = beam_missing()
    if why is not None:
        pytest.skip(why)
    b = Beam()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="session")
def beam_dist() -> Iterator[Beam]:
    """A distributed BEAM interpreter with a peer node (its own epmd on a free port)."""
    why = beam_missing()
    if why is not None:
        pytest.skip(why)
    b = Beam(dist=True)
    try:
        yield b
    finally:
        b.close()

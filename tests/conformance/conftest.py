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

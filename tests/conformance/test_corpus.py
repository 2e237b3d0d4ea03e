"""The fixed corpus: each scenario gives the same trace on pybeam as on BEAM."""

from __future__ import annotations

import pytest

from .beam_runner import Beam
from .corpus import CORPUS
from .pybeam_runner import run_scenario
from .scenario import Scenario


def test_the_corpus_is_big_enough() -> None:
    names = [s.name for s in CORPUS]
    assert len(set(names)) == len(names)
    assert len(CORPUS) >= 60


@pytest.mark.parametrize("scenario", CORPUS, ids=lambda s: s.name)
async def test_same_trace_as_beam(scenario: Scenario, beam: Beam) -> None:
    expected = beam.run(scenario)
    assert await run_scenario(scenario) == expected

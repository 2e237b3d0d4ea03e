"""Two-node scenarios: the same trace on two pybeam nodes (separate OS
processes) as on two BEAM nodes."""

from __future__ import annotations

from typing import Any

import pytest

from .beam_runner import Beam
from .corpus import MULTI_CORPUS
from .pybeam_runner import run_scenario
from .scenario import Scenario


@pytest.mark.parametrize("scenario", MULTI_CORPUS, ids=lambda s: s.name)
async def test_same_trace_as_beam_on_two_nodes(scenario: Scenario, beam_dist: Beam, cluster: Any) -> None:
    expected = beam_dist.run(scenario)
    async with cluster(1) as c:
        assert await run_scenario(scenario, peer=c.nodes[0]) == expected

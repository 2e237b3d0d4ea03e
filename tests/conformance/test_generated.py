"""Generated scenarios: each gives the same trace on pybeam as on BEAM.

CI runs a few examples; for many, run (``TWO_NODE`` ones cost about 1 s each)
``PYBEAM_CONFORMANCE_EXAMPLES=2000 python -m pytest tests/conformance/test_generated.py``.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings

from .beam_runner import Beam
from .generate import scenarios
from .pybeam_runner import run_scenario, run_scenario_sync
from .scenario import Scenario

EXAMPLES = int(os.environ.get("PYBEAM_CONFORMANCE_EXAMPLES", "15"))
TWO_NODE_EXAMPLES = max(EXAMPLES // 3, 1)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
def test_generated_scenario_same_trace_as_beam(scenario: Scenario, beam: Beam) -> None:
    expected = beam.run(scenario)
    assert run_scenario_sync(scenario) == expected, scenario


async def test_generated_two_node_scenarios_same_trace_as_beam(beam_dist: Beam, cluster: Any) -> None:
    # One pybeam peer for every example (a node takes a second to start):
    # each scenario kills what it spawned, and connects again if it disconnected.
    async with cluster(1) as c:
        peer = c.nodes[0]

        @settings(
            max_examples=TWO_NODE_EXAMPLES,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(scenario=scenarios(two_nodes=True))
        def check(scenario: Scenario) -> None:
            expected = beam_dist.run(scenario)
            traces.append((scenario, expected))

        traces: list[tuple[Scenario, Any]] = []
        check()
        for scenario, expected in traces:
            assert await run_scenario(scenario, peer=peer) == expected, scenario

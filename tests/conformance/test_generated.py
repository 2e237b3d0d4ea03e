"""Generated scenarios: each gives the same trace on pybeam as on BEAM.

CI runs a few examples; for many, run
``PYBEAM_CONFORMANCE_EXAMPLES=2000 python -m pytest tests/conformance/test_generated.py``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings

from .beam_runner import Beam
from .generate import scenarios
from .pybeam_runner import run_scenario_sync
from .scenario import Scenario

EXAMPLES = int(os.environ.get("PYBEAM_CONFORMANCE_EXAMPLES", "15"))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
def test_generated_scenario_same_trace_as_beam(scenario: Scenario, beam: Beam) -> None:
    expected = beam.run(scenario)
    assert run_scenario_sync(scenario) == expected, scenario

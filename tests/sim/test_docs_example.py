"""docs/testing_failures.md's first simulated test runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing_failures.md"


def test_the_first_simulated_test_in_the_docs_runs() -> None:
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), re.S | re.M)
    first = next(b for b in blocks if "def test_a_partition_gives_noconnection" in b)
    space: dict[str, Any] = {}
    exec(compile(first, str(DOC), "exec"), space)
    space["test_a_partition_gives_noconnection"]()

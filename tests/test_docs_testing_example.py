"""The testing docs' copy-pasteable project (pyproject.toml, conftest.py and a
test file, in docs/cli_and_testing.md) runs as written: pytest in a subprocess
on a temporary folder holding exactly those three blocks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli_and_testing.md"
FILES = ("pyproject.toml", "conftest.py", "test_counter.py")


def _blocks() -> dict[str, str]:
    """The doc's code blocks whose first line is ``# <one of FILES>``, by file name."""
    found: dict[str, str] = {}
    for body in re.findall(r"^```(?:toml|python)\n(.*?)^```$", DOC.read_text(), re.S | re.M):
        first = body.split("\n", 1)[0]
        if first.startswith("# ") and first[2:] in FILES:
            found[first[2:]] = body
    return found


def test_the_documented_project_runs(tmp_path: Path) -> None:
    blocks = _blocks()
    assert sorted(blocks) == sorted(FILES)
    for name, body in blocks.items():
        (tmp_path / name).write_text(body)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src")  # pybeam itself, as if installed; nothing of this repo's tests
    env.pop("PYBEAM_EPMD_PORT", None)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Passed, not skipped: without asyncio_mode the async tests would not run at all.
    assert re.search(r"^2 passed", result.stdout, re.M), result.stdout

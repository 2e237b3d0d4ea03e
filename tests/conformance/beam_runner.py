"""BEAM's interpreter of the conformance scenarios: beam/scenario.escript,
kept running, fed one scenario a line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .scenario import Scenario, Trace, parse_trace

ESCRIPT = Path(__file__).parent / "beam" / "scenario.escript"


def beam_missing() -> str | None:
    """Why BEAM cannot run here, or None if it can."""
    if shutil.which("escript") is None:
        return "Erlang/OTP is not installed (escript not found): apt-get install erlang-nox"
    return None


class Beam:
    """One escript process running scenarios one after another."""

    def __init__(self) -> None:
        escript = shutil.which("escript")
        assert escript is not None
        self.proc = subprocess.Popen(
            [escript, str(ESCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, scenario: Scenario) -> Trace:
        """Run ``scenario`` on BEAM; its normalised trace."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(scenario.erlang() + "\n")
        stdin.flush()
        lines = []
        while (line := stdout.readline()) != "end\n":
            if not line:
                raise RuntimeError(f"the BEAM interpreter died on scenario {scenario.name}")
            lines.append(line.rstrip("\n"))
        return parse_trace(lines)

    def close(self) -> None:
        """Stop the escript (and wait for it)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

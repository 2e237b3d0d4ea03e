"""BEAM's interpreter of the conformance scenarios: beam/scenario.escript,
kept running, fed one scenario a line."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .scenario import Scenario, Trace, parse_trace

ESCRIPT = Path(__file__).parent / "beam" / "scenario.escript"


def beam_missing() -> str | None:
    """Why BEAM cannot run here, or None if it can."""
    if shutil.which("escript") is None:
        return "Erlang/OTP is not installed (escript not found): apt-get install erlang-nox"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Beam:
    """One escript process running scenarios one after another.

    With ``dist`` it is a distributed node with a peer node (the scenarios'
    ``"%peer"``), registered with an epmd of its own on a free port (never
    the default one, which something else may be using), stopped by :meth:`close`.
    """

    def __init__(self, dist: bool = False) -> None:
        escript = shutil.which("escript")
        assert escript is not None
        self.epmd: subprocess.Popen[bytes] | None = None
        env = dict(os.environ)
        args = [escript, str(ESCRIPT)]
        if dist:
            epmd = shutil.which("epmd")
            assert epmd is not None
            port = _free_port()
            env["ERL_EPMD_PORT"] = str(port)
            self.epmd = subprocess.Popen([epmd, "-port", str(port), "-address", "127.0.0.1"], env=env)
            _wait_listening(port)
            args += ["dist", secrets.token_hex(8)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

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
            if "\t" in line:  # anything else is not the trace's (a peer's output)
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
        if self.epmd is not None:
            self.epmd.kill()
            self.epmd.wait()


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

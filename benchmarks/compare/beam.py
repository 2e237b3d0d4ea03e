"""Erlang/OTP as a peer: compile ``benchmarks/beam/*.erl`` into a temporary
directory and run one workload per ``erl`` (a fresh VM each, as each Python
measurement gets a fresh process). Cross-node workloads start a peer node
(OTP's ``peer`` module) over a port mapper of our own on a free port, so no
system-wide epmd is touched or left behind."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from pybeam.testing import free_port

SOURCES = Path(__file__).resolve().parent.parent / "beam"
LOCAL = ("one_way", "ping_pong", "spawn_exit", "memory", "spawn_scale")


def missing() -> str | None:
    """Why Erlang cannot run here, with how to fix it; None if it can."""
    for tool in ("erl", "erlc", "epmd"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found: apt-get install erlang-nox"
    return None


def version() -> str:
    """OTP release and ERTS version, e.g. ``OTP 25, ERTS 13.1.5, 2 schedulers``."""
    script = (
        'io:format("OTP ~s, ERTS ~s, ~p schedulers", [erlang:system_info(otp_release), '
        "erlang:system_info(version), erlang:system_info(schedulers_online)]), halt()."
    )
    out = subprocess.run(["erl", "-noshell", "-eval", script], capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


class Beam:
    """Compiled workloads and a private port mapper, for the length of a comparison."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pybeam-compare-")
        self.cookie = secrets.token_hex(8)
        self.epmd_port = free_port()
        self.epmd: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Beam:
        try:
            sources = sorted(str(p) for p in SOURCES.glob("*.erl"))
            subprocess.run(["erlc", "-o", self.dir, *sources], check=True, capture_output=True, timeout=120)
            self.epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.epmd is not None:
            self.epmd.kill()
            self.epmd.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def command(self, workload: str, n: int, live: str = "") -> tuple[list[str], dict[str, str]]:
        """The ``erl`` command line (and environment) that measures ``workload`` once."""
        # Room for a million processes and more (the default limit is 262,144).
        argv = ["erl", "-noshell", "+P", "4000000", "-pa", self.dir]
        if workload not in LOCAL:
            argv += ["-name", f"cmp{secrets.token_hex(3)}@127.0.0.1", "-setcookie", self.cookie]
        argv += ["-run", "bench_compare", "main", workload, str(n)]
        if live:
            argv.append(live)
        return argv, {**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)}

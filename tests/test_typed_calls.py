"""Typed calls: ``expect=T`` types ``gen_server.call``/``rpc.call`` as ``T`` for
mypy and checks the answer at run time; global names are any hashable term."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pybeam
from pybeam import GenServer, gen_server, global_, rpc
from pybeam.expect import UnexpectedResult
from pybeam.testing import free_port

ROOT = Path(__file__).resolve().parent.parent


class _Answer(GenServer):
    def init(self, answer: Any) -> Any:
        return answer

    def handle_call(self, request: Any, from_: Any, answer: Any) -> Any:
        return ("reply", answer, answer)


async def test_expect_checks_a_gen_server_reply() -> None:
    pid = await _Answer.start(42)
    assert await gen_server.call(pid, "get", expect=int) == 42
    with pytest.raises(UnexpectedResult) as info:
        await gen_server.call(pid, "get", expect=str)
    assert isinstance(info.value, TypeError)
    assert info.value.value == 42
    assert "returned int 42, expected str" in str(info.value)
    # A generic is checked by its outer type.
    other = await _Answer.start([1, 2])
    assert await gen_server.call(other, "get", expect=list[int]) == [1, 2]
    await gen_server.stop(pid)
    await gen_server.stop(other)


async def test_a_global_name_may_be_any_hashable_term() -> None:
    name = ("global", ("answer", 7))
    pid = await _Answer.start("yes", name=name)
    assert global_.whereis_name(("answer", 7)) == pid
    assert await gen_server.call(name, "get", expect=str) == "yes"
    await gen_server.stop(name)


def test_expect_checks_an_rpc_result() -> None:
    async def main() -> None:
        here = pybeam.node_name()
        assert await rpc.call(here, "operator:add", 2, 3, expect=int) == 5
        with pytest.raises(UnexpectedResult, match=r"operator:add on .* returned int 5, expected str"):
            await rpc.call(here, "operator:add", 2, 3, expect=str)

    pybeam.run(main, node=pybeam.Node("typed@127.0.0.1", epmd_port=free_port()))


def test_typed_user_code_passes_mypy_strict_without_casts(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_types.py"
    wrong.write_text(
        "from pybeam import gen_server, rpc\n"
        "async def f() -> None:\n"
        "    a: int = await gen_server.call('s', 'get', expect=str)\n"
        "    b: str = await rpc.call('n@h', 'm:f', expect=int)\n"
    )
    example = ROOT / "examples" / "typed_calls.py"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(example), str(wrong)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"MYPYPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    # The example is clean; the mistakes are caught, one per line.
    assert not [e for e in errors if "typed_calls.py" in e], result.stdout
    assert [e.split(":")[1] for e in errors] == ["3", "4"], result.stdout


def test_the_typed_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.typed_calls"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYBEAM_EPMD_PORT": str(free_port())},
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "(42, 42, '42')\n"), result.stderr

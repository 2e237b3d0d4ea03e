"""TLS beyond the node itself: the commands that talk to a TLS node take the
same TLS options as ``pybeam node``, and TLS handshakes in progress count
against ``max_handshakes`` as plaintext ones do.

Real processes and sockets on 127.0.0.1; certificates made with the openssl
CLI (pybeam.testing.certs).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import pybeam
from pybeam.distribution.net_kernel import NetKernel
from pybeam.distribution.tls import TLSOptions
from pybeam.testing import certs, eventually, free_port

pytestmark = pytest.mark.skipif(certs.unavailable() is not None, reason=certs.unavailable() or "")

TIMEOUT = 60


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TLSOptions]:
    d = tmp_path_factory.mktemp("pki")
    ca = certs.make_ca(d, "ca")
    return {name: certs.make_cert(ca, d, name, ["127.0.0.1"]) for name in ("node", "client", "t")}


def tls_args(tls: TLSOptions) -> list[str]:
    return ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--tls-ca", str(tls.ca)]


@pytest.fixture
def tls_node(pki: dict[str, TLSOptions], tmp_path: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """A ``pybeam node`` over TLS (with its own TLS port mapper): its name,
    cookie, and the environment for commands to reach it."""
    name, cookie = f"tn{secrets.token_hex(3)}@127.0.0.1", secrets.token_hex(8)
    env = {**os.environ, "PYBEAM_EPMD_PORT": str(free_port()), "HOME": str(tmp_path)}
    env.pop("PYBEAM_COOKIE", None)
    argv = [sys.executable, "-m", "pybeam", "node", "--name", name, "--cookie", cookie]
    argv += ["--exit-on-stdin-close", *tls_args(pki["node"])]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " up " in line, line
        yield name, cookie, env
    finally:
        proc.kill()
        proc.wait(10)


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pybeam", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
    )


def test_rpc_names_processes_and_remsh_reach_a_tls_node(
    pki: dict[str, TLSOptions], tls_node: tuple[str, str, dict[str, str]]
) -> None:
    name, cookie, env = tls_node
    client = tls_args(pki["client"])

    result = run(env, "rpc", name, "operator:add", "2", "3", "--cookie", cookie, *client)
    assert (result.returncode, result.stdout) == (0, "5\n"), result.stderr

    names = run(env, "names", *client)
    assert names.returncode == 0, names.stderr
    assert any(line.startswith(name.partition("@")[0] + " ") for line in names.stdout.splitlines())

    listed = run(env, "processes", name, "--json", "--cookie", cookie, *client)
    assert listed.returncode == 0, listed.stderr
    assert isinstance(json.loads(listed.stdout), list)

    shell = run(env, "remsh", name, "--cookie", cookie, *client, stdin="pybeam.node_name()\n")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines() == [repr(name)], shell.stderr

    # Without TLS the node cannot be reached, and the command says so.
    plain = run(env, "rpc", name, "operator:add", "2", "3", "--cookie", cookie)
    assert plain.returncode == 1
    assert plain.stderr.startswith("pybeam rpc:"), plain.stderr
    # Some TLS files but not all: refused before anything starts.
    partial = run(env, "rpc", name, "operator:add", "--cookie", cookie, "--tls-cert", str(pki["client"].cert))
    assert partial.returncode == 1
    assert "TLS needs all of --tls-cert, --tls-key and --tls-ca" in partial.stderr


async def test_tls_handshakes_in_progress_count_against_max_handshakes(
    pki: dict[str, TLSOptions],
) -> None:
    cap = 3
    name = f"t{secrets.token_hex(3)}@127.0.0.1"
    # A connect timeout far longer than the test: only the cap can close them.
    async with pybeam.Node(
        name,
        cookie=secrets.token_hex(8),
        epmd_port=free_port(),
        tls=pki["t"],
        max_handshakes=cap,
        connect_timeout=600,
    ) as node:
        kernel = node.dist
        assert isinstance(kernel, NetKernel)
        port = kernel.port
        # Connections that never start their TLS handshake: each is one more
        # unauthenticated connection.
        opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(cap + 2):
                opened.append(await asyncio.open_connection("127.0.0.1", port))
                await asyncio.sleep(0.05)  # in order: the oldest first

            async def closed_by_node(reader: asyncio.StreamReader) -> bool:
                try:
                    return await asyncio.wait_for(reader.read(1), 0.2) == b""
                except TimeoutError:
                    return False
                except ConnectionError:
                    return True

            for reader, _ in opened[:2]:
                await eventually(functools.partial(closed_by_node, reader), 20, what="the oldest closed")
            for reader, _ in opened[2:]:
                assert not await closed_by_node(reader), "a connection within the cap was closed"
            # The node still serves a real TLS peer.
            async with pybeam.Node(
                f"c{secrets.token_hex(3)}@127.0.0.1",
                cookie=kernel.cookie,
                epmd_port=free_port(),
                tls=pki["client"],
            ) as other:
                assert isinstance(other.dist, NetKernel)
                assert await other.dist.connect(f"{name}:{port}")
        finally:
            for _, writer in opened:
                with contextlib.suppress(Exception):
                    writer.close()

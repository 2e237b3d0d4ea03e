"""Distribution over TLS with mutual authentication (``-proto_dist inet_tls``).

Certificates are made at test time with the openssl CLI (pybeam.testing.certs).
Each test has a port mapper port of its own: a TLS node's mapper speaks TLS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pybeam
from pybeam import rpc
from pybeam.distribution.tls import TLSOptions
from pybeam.testing import certs, eventually, free_port

pytestmark = pytest.mark.skipif(certs.unavailable() is not None, reason=certs.unavailable() or "")


def whoami() -> str:
    return pybeam.node_name()


def peer_certificate_subject(node: str) -> Any:
    """On a cluster node: the subject of the certificate ``node`` presented to it."""
    kernel = pybeam.current_node().dist
    conn = kernel.connection(node)  # type: ignore[union-attr]
    return conn._writer.get_extra_info("peercert")["subject"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TLSOptions]:
    d = tmp_path_factory.mktemp("pki")
    ca, other = certs.make_ca(d, "ca"), certs.make_ca(d, "other_ca")
    out = {name: certs.make_cert(ca, d, name, ["127.0.0.1"]) for name in ("t", "b", "c", "p")}
    out["stranger"] = certs.make_cert(other, d, "stranger", ["127.0.0.1"])
    return out


def _start(name: str, tls: TLSOptions, cookie: str, epmd_port: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "pybeam", "node", "--name", name, "--cookie", cookie]
    argv += ["--epmd-port", str(epmd_port), "--ticktime", "2", "--exit-on-stdin-close"]
    argv += ["--tls-cert", tls.cert, "--tls-key", tls.key, "--tls-ca", tls.ca]
    # It imports this module by name (for whoami): it sees what this process sees.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert " up " in line, line + proc.stdout.read()
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(10)


async def test_a_cluster_over_tls(pki: dict[str, TLSOptions], procs: list[subprocess.Popen[str]]) -> None:
    cookie, epmd_port = secrets.token_hex(8), free_port()
    tag = secrets.token_hex(3)
    b, c = f"b{tag}@127.0.0.1", f"c{tag}@127.0.0.1"
    async with pybeam.Node(f"t{tag}@127.0.0.1", cookie=cookie, epmd_port=epmd_port, tls=pki["t"]):
        # The first node (this one) runs the mapper, over TLS too.
        # In threads: this node's loop must answer them (it runs their mapper).
        procs.append(await asyncio.to_thread(_start, b, pki["b"], cookie, epmd_port))
        procs.append(await asyncio.to_thread(_start, c, pki["c"], cookie, epmd_port))
        assert await pybeam.connect(b) and await pybeam.connect(c)
        assert await rpc.call(b, whoami) == b

        # The mesh: b and c connect to each other, over TLS as well.
        async def meshed() -> bool:
            return c in await rpc.call(b, "pybeam.net:nodes")

        await eventually(meshed, 20)
        assert await rpc.call(b, peer_certificate_subject, c) == ((("commonName", "c"),),)
        assert await rpc.call(c, peer_certificate_subject, b) == ((("commonName", "b"),),)


async def test_a_certificate_from_another_ca_is_refused(
    pki: dict[str, TLSOptions], caplog: pytest.LogCaptureFixture
) -> None:
    cookie, tag = secrets.token_hex(8), secrets.token_hex(3)
    caplog.set_level(logging.INFO, logger="pybeam.distribution")
    async with pybeam.Node(f"t{tag}@127.0.0.1", cookie=cookie, epmd_port=free_port(), tls=pki["t"]) as node:
        port = node.dist.port  # type: ignore[union-attr]
        # Same cookie, another CA: refused in the TLS handshake, before the cookie counts,
        # whichever side dials.
        async with pybeam.Node(
            f"x{tag}@127.0.0.1", cookie=cookie, epmd_port=free_port(), tls=pki["stranger"]
        ) as stranger:
            stranger_port = stranger.dist.port  # type: ignore[union-attr]
            assert not await stranger.dist.connect(f"t{tag}@127.0.0.1:{port}")  # type: ignore[union-attr]
            assert not await node.dist.connect(f"x{tag}@127.0.0.1:{stranger_port}")  # type: ignore[union-attr]
            assert not pybeam.nodes()
    lines = [r.getMessage() for r in caplog.records]
    assert any("certificate verify failed" in line for line in lines), lines


async def test_a_plaintext_peer_is_refused_with_a_clear_log_line(
    pki: dict[str, TLSOptions], caplog: pytest.LogCaptureFixture
) -> None:
    cookie, tag = secrets.token_hex(8), secrets.token_hex(3)
    caplog.set_level(logging.WARNING, logger="pybeam.distribution")
    async with pybeam.Node(f"t{tag}@127.0.0.1", cookie=cookie, epmd_port=free_port(), tls=pki["t"]) as node:
        port = node.dist.port  # type: ignore[union-attr]
        async with pybeam.Node(f"p{tag}@127.0.0.1", cookie=cookie, epmd_port=free_port()) as plain:
            assert not await plain.dist.connect(f"t{tag}@127.0.0.1:{port}")  # type: ignore[union-attr]
    lines = [r.getMessage() for r in caplog.records]
    assert any("does not speak TLS" in line for line in lines), lines


def test_tls_options_need_all_three_files(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pybeam", "node", "--name", "a@127.0.0.1", "--tls-cert", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "--tls-key" in out.stderr

"""Throwaway certificates for tests and benchmarks of TLS distribution, made with the ``openssl`` CLI.

``make_ca(dir, "ca")`` makes a CA; ``make_cert(ca, dir, "node", hosts)`` a
certificate it signs for both server and client use, naming ``hosts`` (IPs or
DNS names) as subject alternative names. :func:`unavailable` says why not
(no ``openssl``), for a skip.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..distribution.tls import TLSOptions

__all__ = ["CA", "make_ca", "make_cert", "unavailable"]


def unavailable() -> str | None:
    """Why test certificates cannot be made here, or None."""
    return None if shutil.which("openssl") else "making test certificates needs the openssl command"


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class CA:
    """A CA's certificate and key (PEM files)."""

    cert: Path
    key: Path


def make_ca(directory: Path, name: str) -> CA:
    """A self-signed CA, valid for two days."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return CA(cert, key)


def make_cert(ca: CA, directory: Path, name: str, hosts: list[str]) -> TLSOptions:
    """A certificate signed by ``ca`` for ``hosts``; the :class:`TLSOptions` that use it."""
    cert, key, csr = directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.csr"
    sans = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            sans.append(f"IP:{host}")
        except ValueError:
            sans.append(f"DNS:{host}")
    ext = directory / f"{name}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "authorityKeyIdentifier=keyid\n"
        f"subjectAltName={','.join(sans) or 'DNS:localhost'}\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext,
    )  # fmt: skip
    return TLSOptions(cert=str(cert), key=str(key), ca=str(ca.cert))

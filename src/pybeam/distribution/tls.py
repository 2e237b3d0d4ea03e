"""TLS for the distribution and the port mapper (Erlang's ``-proto_dist inet_tls``).

A node given :class:`TLSOptions` speaks TLS on every connection it makes or
accepts, and to the port mapper. Authentication is mutual: each side presents
a certificate signed by the CA (``ca``) and refuses a peer whose certificate
is not, so only holders of a certificate from that CA get as far as the cookie
handshake, which still runs inside (both must hold). ``verify_hostname``
also checks that the certificate of a node dialled names the host it was
dialled at (off by default, as in ``inet_tls`` without ``server_name_indication``:
the CA is the trust anchor). The port mapper's connections never check
hostnames (nodes register over loopback); the CA check applies to them too.

A node with TLS can only talk to nodes and a port mapper with TLS: a plaintext
peer is refused (and logged as such) in the TLS handshake, before any byte of
the distribution protocol is read.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["TLSOptions", "describe_failure"]


@dataclass(frozen=True)
class TLSOptions:
    """Files (PEM) of this node's certificate and key, and of the CA that signs every peer's."""

    cert: str
    key: str
    ca: str
    #: Check that a dialled node's certificate names the host it was dialled at.
    verify_hostname: bool = False

    def _context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        ctx = ssl.create_default_context(purpose, cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        ctx.verify_mode = ssl.CERT_REQUIRED  # both ways: a client must present one too
        return ctx

    def server_context(self, on_refused: Callable[[str], None] | None = None) -> ssl.SSLContext:
        """For accepting: requires the client's certificate, signed by the CA.

        ``on_refused(why)`` is called when a client's TLS handshake fails
        (asyncio itself only logs that in debug mode): a plaintext peer, a
        certificate from another CA, none at all.
        """
        ctx = self._context(ssl.Purpose.CLIENT_AUTH)
        if on_refused is not None:
            ctx.sslobject_class = _reporting(on_refused)
        return ctx

    def client_context(self, *, check_hostname: bool | None = None) -> ssl.SSLContext:
        """For dialling: presents ours, requires the server's, signed by the CA."""
        ctx = self._context(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = self.verify_hostname if check_hostname is None else check_hostname
        return ctx


def describe_failure(error: BaseException) -> str:
    """Why a TLS handshake failed, in words a log reader can act on."""
    reason = getattr(error, "reason", None) or ""
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"):
        return f"the peer does not speak TLS (a plaintext node or client?): {error}"
    if reason in ("CERTIFICATE_VERIFY_FAILED", "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE"):
        return f"certificate refused (not signed by our CA, or expired): {error}"
    if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
        return f"the peer presented no certificate: {error}"
    return f"TLS handshake failed: {error}"


def _reporting(on_refused: Callable[[str], None]) -> type[ssl.SSLObject]:
    """An SSLObject class that reports a failed handshake. Both asyncio's and
    uvloop's TLS make theirs with ``context.wrap_bio``, which uses this class."""

    class ReportingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> Any:
            try:
                return super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # the handshake is under way, not failed
            except ssl.SSLError as e:
                on_refused(describe_failure(e))
                raise

    return ReportingSSLObject

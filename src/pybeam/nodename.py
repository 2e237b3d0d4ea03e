"""What a valid node name and node address are: the one check every API uses.

A node name is ``name@host`` (BEAM's node atom): ``name`` is ASCII letters,
digits, ``_`` and ``-``; ``host`` a hostname (labels of letters, digits, ``_``
and ``-``, separated by dots) or an IP literal. The whole name is at most
:data:`MAX_NAME_LENGTH` characters, the longest the handshake carries.

An address is a node name with an optional port, ``name@host:port``
(``name@[::1]:port`` for an IPv6 host): only :func:`pybeam.net.connect` and
:func:`pybeam.net.ping` take one, to reach a node without the port mapper.

Everything malformed is a :class:`~pybeam.errors.BadArg` (a ``ValueError``)
naming the problem, raised before any network activity.
"""

from __future__ import annotations

import ipaddress
import re

from .errors import BadArg

__all__ = ["MAX_NAME_LENGTH", "check_node_name", "parse_address"]

#: The longest node name (``name@host``), as the handshake's ``MAX_NAME_LENGTH``.
MAX_NAME_LENGTH = 255

_ALIVE = re.compile(r"[A-Za-z0-9_-]+")
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_SHAPE = "a node name must look like 'name@host'"


def _bad(arg: str, node: object, problem: str) -> BadArg:
    return BadArg(f"{arg} {node!r:.300} is not a valid node name: {problem} ({_SHAPE})")


def _check_host(arg: str, node: str, host: str) -> None:
    if not host:
        raise _bad(arg, node, "the host part after '@' is empty")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if ":" in host:
        raise _bad(arg, node, f"{host!r} is not an IP address")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise _bad(arg, node, f"{host!r} is neither a hostname nor an IP address")


def _split(node: object, arg: str) -> tuple[str, str]:
    if type(node) is not str:
        raise BadArg(f"{arg} must be a node name (str), got {type(node).__name__} {node!r:.100}")
    if node.count("@") != 1:
        what = "no '@'" if "@" not in node else "more than one '@'"
        raise _bad(arg, node, what)
    alive, _, rest = node.partition("@")
    if not alive:
        raise _bad(arg, node, "the name part before '@' is empty")
    if not _ALIVE.fullmatch(alive):
        raise _bad(arg, node, "the name part may hold only ASCII letters, digits, '_' and '-'")
    return alive, rest


def _check_length(arg: str, original: str, name: str) -> None:
    if len(name) > MAX_NAME_LENGTH:
        raise _bad(arg, original, f"{len(name)} characters, more than {MAX_NAME_LENGTH}")


# Names already found valid: a send to (name, node) checks its node each time.
_valid: set[str] = set()
_VALID_MAX = 4096


def check_node_name(node: object, arg: str = "node") -> str:
    """``node`` itself if it is a valid node name (``name@host``, no port);
    else :class:`BadArg` naming the problem and the argument ``arg``."""
    if type(node) is str and node in _valid:
        return node
    _, host = _split(node, arg)
    assert type(node) is str
    _check_length(arg, node, node)
    if host.startswith("[") or (host.count(":") == 1 and host.rpartition(":")[2].isdigit()):
        raise _bad(arg, node, "a port is given (only connect and ping take 'name@host:port')")
    _check_host(arg, node, host)
    if len(_valid) >= _VALID_MAX:
        _valid.clear()
    _valid.add(node)
    return node


def parse_address(node: object, arg: str = "node") -> tuple[str, str, int | None]:
    """``name@host[:port]`` -> (node name, host, port or None); :class:`BadArg`
    naming the problem if it is not one. An IPv6 host with a port is written
    in brackets: ``name@[::1]:4370``."""
    alive, rest = _split(node, arg)
    assert type(node) is str
    port_text: str | None = None
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise _bad(arg, node, "a bracketed host is written '[address]' or '[address]:port'")
        if after:
            port_text = after[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(arg, node, f"{host!r} in brackets is not an IPv6 address") from None
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host = rest  # no port, or an IPv6 literal (checked below)
    name = f"{alive}@{host}"
    _check_length(arg, node, name)
    _check_host(arg, node, host)
    if port_text is None:
        return name, host, None
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 65535:
        raise _bad(arg, node, f"the port {port_text!r} is not a number in 1..65535")
    return name, host, int(port_text)

"""Strict decoding of the small, fixed-shape terms a node reads from strangers.

Before a peer has proved the cookie (the handshake) and at the port mapper,
frames are decoded here rather than by :mod:`pybeam.codec`. The general codec
builds any term, and some terms are expensive to build: a dict whose keys are
pids with colliding hashes costs a quadratic number of comparisons, and a frame
of those is CPU a stranger could spend for free. This decoder accepts only what
those protocols send:

- one tuple of at most :attr:`Limits.max_items` items, each
- a *scalar*: None, bool, an int of MessagePack's int family (no big ints), a
  float, a str of at most :attr:`Limits.max_str` bytes of UTF-8, or bytes of
  at most :attr:`Limits.max_bytes`; or
- a flat dict of at most :attr:`Limits.max_keys` entries, each a str key of at
  most :attr:`Limits.max_key` bytes mapped to a scalar.

Nothing else: no pids, refs, crashes, lists or nesting. The encodings are the
ones :func:`pybeam.codec.encode` writes for such terms, so the bytes of an
accepted term decode here exactly as the codec would decode them. The work is
linear in the size of the input, which its frame limit bounds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

from pybeam.codec import EXT_TUPLE, DecodeError

__all__ = ["Limits", "decode"]


@dataclass(frozen=True, slots=True)
class Limits:
    """The largest term :func:`decode` accepts."""

    #: Items of the tuple.
    max_items: int = 8
    #: Bytes of a str (UTF-8); 1020 holds any 255-character name.
    max_str: int = 1024
    #: Bytes of a bytes value (nonces and proofs are 32).
    max_bytes: int = 64
    #: Entries of the one level of dict allowed (the handshake's flags).
    max_keys: int = 16
    #: Bytes of a dict key.
    max_key: int = 64


_TUPLE_MARKER: Final = bytes((0xC7, 0x00, EXT_TUPLE))  # ext 8, empty payload
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_I8: Final = struct.Struct(">b")
_I16: Final = struct.Struct(">h")
_I32: Final = struct.Struct(">i")
_I64: Final = struct.Struct(">q")
_F32: Final = struct.Struct(">f")
_F64: Final = struct.Struct(">d")
# Fixed-size scalars: first byte -> the struct that reads what follows it.
_FIXED: Final[dict[int, struct.Struct]] = {
    0xCA: _F32,
    0xCB: _F64,
    0xCC: struct.Struct(">B"),
    0xCD: _U16,
    0xCE: _U32,
    0xCF: _U64,
    0xD0: _I8,
    0xD1: _I16,
    0xD2: _I32,
    0xD3: _I64,
}
_CONSTANTS: Final[dict[int, Any]] = {0xC0: None, 0xC2: False, 0xC3: True}
_LENGTH: Final[dict[int, struct.Struct]] = {0xD9: struct.Struct(">B"), 0xDA: _U16, 0xDB: _U32}
_BIN_LENGTH: Final[dict[int, struct.Struct]] = {0xC4: struct.Struct(">B"), 0xC5: _U16, 0xC6: _U32}


class _Reader:
    __slots__ = ("data", "limits", "pos")

    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.limits = limits
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError("truncated term")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> Any:
        return fmt.unpack(self.take(fmt.size))[0]

    def container(self, fix_base: int, u16: int, u32: int, what: str) -> int:
        """The length of the array or map that starts here."""
        b = self.take(1)[0]
        if fix_base <= b <= fix_base + 0x0F:
            return b - fix_base
        if b == u16:
            return int(self.unpack(_U16))
        if b == u32:
            return int(self.unpack(_U32))
        raise DecodeError(f"expected {what}, found byte 0x{b:02x}")

    def text(self, limit: int) -> str:
        b = self.take(1)[0]
        if 0xA0 <= b <= 0xBF:
            n = b - 0xA0
        elif b in _LENGTH:
            n = self.unpack(_LENGTH[b])
        else:
            raise DecodeError(f"expected a str, found byte 0x{b:02x}")
        return self._utf8(n, limit)

    def _utf8(self, n: int, limit: int) -> str:
        if n > limit:
            raise DecodeError(f"str of {n} bytes exceeds the limit of {limit}")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"str is not UTF-8: {e}") from None

    def scalar(self) -> Any:
        b = self.take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if b in _CONSTANTS:
            return _CONSTANTS[b]
        if b in _FIXED:
            return self.unpack(_FIXED[b])
        if 0xA0 <= b <= 0xBF:
            return self._utf8(b - 0xA0, self.limits.max_str)
        if b in _LENGTH:
            return self._utf8(self.unpack(_LENGTH[b]), self.limits.max_str)
        if b in _BIN_LENGTH:
            n = self.unpack(_BIN_LENGTH[b])
            if n > self.limits.max_bytes:
                raise DecodeError(f"bytes of {n} exceed the limit of {self.limits.max_bytes}")
            return self.take(n)
        raise DecodeError(f"byte 0x{b:02x} does not start a value allowed here")

    def item(self) -> Any:
        b = self.data[self.pos] if self.pos < len(self.data) else -1
        if not (0x80 <= b <= 0x8F or b in (0xDE, 0xDF)):
            return self.scalar()
        n = self.container(0x80, 0xDE, 0xDF, "a map")
        limits = self.limits
        if n > limits.max_keys:
            raise DecodeError(f"map of {n} entries exceeds the limit of {limits.max_keys}")
        out: dict[str, Any] = {}
        for _ in range(n):
            # str keys only: their hashes are salted per process, so a stranger
            # cannot make them collide.
            key = self.text(limits.max_key)
            if key in out:
                raise DecodeError(f"duplicate map key {key!r:.80}")
            out[key] = self.scalar()
        return out


def decode(data: bytes, limits: Limits = Limits()) -> tuple[Any, ...]:
    """Decode ``data`` as a small flat tuple (see the module docstring).

    Raises :class:`pybeam.codec.DecodeError` for anything else, including
    trailing bytes.
    """
    r = _Reader(bytes(data), limits)
    n = r.container(0x90, 0xDC, 0xDD, "a tuple")
    if n == 0 or r.take(len(_TUPLE_MARKER)) != _TUPLE_MARKER:
        raise DecodeError("expected a tuple")
    if n - 1 > limits.max_items:
        raise DecodeError(f"tuple of {n - 1} items exceeds the limit of {limits.max_items}")
    term = tuple(r.item() for _ in range(n - 1))
    if r.pos != len(r.data):
        raise DecodeError(f"{len(r.data) - r.pos} bytes after the term")
    return term

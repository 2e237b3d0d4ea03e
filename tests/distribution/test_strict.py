"""Tests for pybeam.distribution.strict: the bounded decoder of what strangers send."""

from __future__ import annotations

import struct
import time
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pybeam import Pid, codec
from pybeam.distribution import strict
from pybeam.distribution.strict import Limits

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=32)
)
flags = st.dictionaries(st.text(max_size=16), scalars, max_size=8)


@given(st.lists(scalars | flags, max_size=7).map(tuple))
def test_decodes_what_the_codec_encodes_as_the_codec_does(term: tuple[Any, ...]) -> None:
    data = codec.encode(term)
    decoded = strict.decode(data)
    assert decoded == codec.decode(data) == term
    assert [type(x) for x in decoded] == [type(x) for x in term]


def test_handshake_messages() -> None:
    hello = ("hello", 1, "a@host", 2**32 - 1, bytes(32), {"hidden": False, "port": 4370})
    assert strict.decode(codec.encode(hello)) == hello
    assert strict.decode(codec.encode(("proof", bytes(32)))) == ("proof", bytes(32))
    assert strict.decode(codec.encode(("names",))) == ("names",)
    name = "é" * 255  # the longest name, in two-byte characters
    assert strict.decode(codec.encode(("lookup", name))) == ("lookup", name)


@pytest.mark.parametrize(
    "term",
    [
        ["hello", 1],  # a list, not a tuple
        ("hello", Pid("a@b", 1, 2)),  # pids, refs and the like never appear before the cookie
        ("hello", {"k": Pid("a@b", 1, 2)}),
        ("hello", {1: 2}),  # only str keys
        ("hello", {"k": {"nested": 1}}),
        ("hello", ("nested",)),
        ("hello", [1, 2]),
        ("hello", 2**64),  # a big int
        ("x",) * 9,  # too many items
        ("hello", "x" * 1025),  # too long
        ("hello", b"x" * 65),
        ("hello", {f"k{i}": i for i in range(17)}),
        ("hello", {"k" * 65: 1}),
    ],
)
def test_refuses_anything_else(term: Any) -> None:
    with pytest.raises(codec.DecodeError):
        strict.decode(codec.encode(term))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x91",  # truncated
        b"\x90\xc7\x00\x01",  # an empty list followed by a marker
        codec.encode(("a",)) + b"\x00",  # trailing bytes
        b"\x92\xc7\x00\x01\xa1\xff",  # not UTF-8
        b"\x92\xc7\x00\x01\xdb\xff\xff\xff\xff",  # a str that claims 4 GiB
        b"\x92\xc7\x00\x01\xd6\xff\x00\x00\x00\x00",  # msgpack's timestamp
        b"\x92\xc7\x00\x01\xc1",  # never used
        b"\x92\xc7\x00\x01\x82\xa1k\x01\xa1k\x02",  # a key twice
    ],
)
def test_refuses_malformed_bytes(data: bytes) -> None:
    with pytest.raises(codec.DecodeError):
        strict.decode(data)


def test_limits_are_the_callers() -> None:
    tight = Limits(max_items=2, max_str=4, max_bytes=0, max_keys=0)
    assert strict.decode(codec.encode(("ab", "cd")), tight) == ("ab", "cd")
    for term in [("a", "b", "c"), ("abcde",), (b"x",), ({"a": 1},)]:
        with pytest.raises(codec.DecodeError):
            strict.decode(codec.encode(term), tight)


def test_hash_colliding_pid_keys_are_refused_at_once() -> None:
    # The attack on the general codec: pid keys that all hash alike.
    keys = {msgpack.ExtType(codec.EXT_PID, struct.pack(">QI", i, i) + b"x@y"): None for i in range(3400)}
    data = msgpack.packb(["hello", keys])
    t0 = time.perf_counter()
    with pytest.raises(codec.DecodeError):
        strict.decode(data)
    assert time.perf_counter() - t0 < 0.05

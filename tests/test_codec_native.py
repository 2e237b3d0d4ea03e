"""The tuple-native term format (``codec.encode_native``/``decode_native``).

Every term comes back as exactly the same types as in the base format; the
bytes are those the module's doc specifies; and bad input, including what
the base format writes and a list marker anywhere but at the head of an
array, is a DecodeError, never a misread term.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from pybeam import codec
from pybeam.terms import Crash, Pid, Ref

PID = Pid("a@127.0.0.1", 5, 7)
REF = Ref("a@127.0.0.1", 9, 7)

TERMS: list[Any] = [
    None,
    True,
    0,
    -(2**70),
    2**64,
    1.5,
    "text",
    b"bytes",
    (),
    [],
    [[]],
    [()],
    ((),),
    ([],),
    (1, [2, (3, [4, []])]),
    {"k": [1, 2], (1, (2,)): (PID, [REF])},
    {1: []},
    [{"a": [{"b": ()}]}],
    (PID, REF, Crash("k", "m", "t")),
    list(range(100)),
    tuple(range(100)),
    [(i, [i]) for i in range(20)],
    (0, PID, ("msg", 1)),
    ("reply", [1, 2], {"k": 1}, (3,), []),  # lists marked by the two-level fast path
    [[1], (2,), [], "x"],
    (9, REF, PID, "m:f", ("m:g", 1, 2), {"monitor": True, "reply": "error_only"}),
]


def same(a: Any, b: Any) -> bool:
    """Equal, with the same type at every level (a list is not a tuple)."""
    if type(a) is not type(b):
        return False
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize("term", TERMS, ids=repr)
def test_every_term_comes_back_with_the_same_types(term: Any) -> None:
    assert same(codec.decode_native(codec.encode_native(term)), term)
    # And the base format still does (the dict fast path in encode, too).
    assert same(codec.decode(codec.encode(term)), term)


def test_tuples_are_plain_arrays_and_lists_carry_a_marker() -> None:
    assert codec.encode_native(("msg", 1)) == bytes.fromhex("92 a3 6d7367 01")
    assert codec.encode_native(["msg", 1]) == bytes.fromhex("93 c70006 a3 6d7367 01")
    assert codec.encode_native([]) == bytes.fromhex("91 c70006")
    assert codec.encode_native(()) == bytes.fromhex("90")
    # Pids, refs, big ints and crashes are as in the base format.
    assert codec.encode_native(PID) == codec.encode(PID)
    assert codec.encode_native(2**70) == codec.encode(2**70)


@pytest.mark.parametrize(
    ("hexdata", "why"),
    [
        ("c70001", "not where"),  # the base format's tuple marker
        ("93c70001a36d736701", "not where"),  # a base-format tuple
        ("c70006", "misplaced list marker"),  # a bare list marker
        ("92 01 c70006", "misplaced list marker"),  # not at the head
        ("81 c70006 01", "misplaced list marker"),  # as a map key
        ("81 01 c70006", "misplaced list marker"),  # as a map value
        ("92 c70006 c70006", "misplaced list marker"),  # two at the head of one array
        ("91 c8000006", "not where"),  # a marker written as ext 16: no list without the hooks
        ("91 c9 00000000 06", "not where"),  # ... or ext 32
        ("91 c70106 00", "payload"),  # a marker with a payload, beside a genuine one
        ("92 c70006 d6ff00000000", "unknown ext type"),  # msgpack's timestamp
        ("d6ff00000000", "unknown ext type"),
        ("c70007", "unknown ext type"),
        ("92 c70006", "malformed"),  # truncated
    ],
)
def test_bad_input_is_a_decode_error(hexdata: str, why: str) -> None:
    data = bytes.fromhex(hexdata.replace(" ", ""))
    if why == "payload":
        data = bytes.fromhex("92c70006") + data[1:]  # [marker, ext 6 with a payload]
    with pytest.raises(codec.DecodeError, match=why):
        codec.decode_native(data)


def test_deep_nesting_is_refused_both_ways() -> None:
    term: Any = 1
    for _ in range(codec.MAX_DEPTH + 1):
        term = [term]
    with pytest.raises(codec.EncodeError, match="nested deeper"):
        codec.encode_native(term)
    # A peer's arrays nested far deeper than that: an error, not a crash.
    with pytest.raises(codec.DecodeError):
        codec.decode_native(b"\x91" * 100_000 + b"\x01")
    with pytest.raises(codec.DecodeError):
        codec.decode_native(b"\x92\xc7\x00\x06" * 100_000 + b"\x01")


def test_what_cannot_travel_is_refused() -> None:
    class Sub(tuple):  # type: ignore[type-arg]
        pass

    for bad in (Sub((1,)), bytearray(b"x"), msgpack.ExtType(6, b""), [object()], ({1: {2}},)):
        with pytest.raises(codec.EncodeError):
            codec.encode_native(bad)


def test_base_and_native_encodings_are_not_taken_for_each_other() -> None:
    # A list in the base format is a plain array: read natively it is a
    # tuple, never silently taken as the list; the base decoder refuses the
    # native list marker, so a peer that mixes them is told apart.
    assert codec.decode_native(codec.encode([1, 2])) == (1, 2)
    with pytest.raises(codec.DecodeError):
        codec.decode(codec.encode_native([1, 2]))

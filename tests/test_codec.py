"""Tests for the term codec (pybeam.codec)."""

from __future__ import annotations

import collections
import enum
import math
import sys
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pybeam.codec import (
    EXT_BIGINT,
    EXT_CRASH,
    EXT_PID,
    EXT_REF,
    EXT_TUPLE,
    MAX_DEPTH,
    DecodeError,
    Decoder,
    EncodeError,
    decode,
    encode,
)
from pybeam.terms import Crash, Pid, Ref

PID = Pid("a@127.0.0.1", 7, 3)
REF = Ref("b@10.0.0.2", 2**40 + 5, 9)


def assert_same(a: Any, b: Any, path: str = "term") -> None:
    """Assert ``b`` equals ``a`` with the same type at every level (nan equals nan)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} became {type(b).__name__}"
    if type(a) is float:
        if math.isnan(a):
            assert math.isnan(b), f"{path}: {a!r} became {b!r}"
        else:
            assert a == b and math.copysign(1.0, a) == math.copysign(1.0, b), f"{path}: {a!r} became {b!r}"
    elif type(a) in (tuple, list):
        assert len(a) == len(b), f"{path}: length {len(a)} became {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif type(a) is dict:
        assert len(a) == len(b), f"{path}: {len(a)} keys became {len(b)}"
        # Encoding keeps iteration order, so pairs line up; comparing keys by
        # == alone would miss 1 becoming True.
        for i, ((ka, va), (kb, vb)) in enumerate(zip(a.items(), b.items(), strict=True)):
            assert_same(ka, kb, f"{path}.key{i}")
            assert_same(va, vb, f"{path}[{ka!r}]")
    elif type(a) in (Pid, Ref):
        assert a == b, f"{path}: {a!r} became {b!r}"
        assert_same(a.node, b.node, f"{path}.node")
        assert_same(a.id, b.id, f"{path}.id")
        assert_same(a.creation, b.creation, f"{path}.creation")
    elif type(a) is Crash:
        assert_same(a.kind, b.kind, f"{path}.kind")
        assert_same(a.message, b.message, f"{path}.message")
        assert_same(a.traceback, b.traceback, f"{path}.traceback")
        assert b.exception is None, f"{path}: exception travelled"
    else:
        assert a == b, f"{path}: {a!r} became {b!r}"


def roundtrip(term: Any) -> Any:
    return decode(encode(term))


def decode_stream(chunks: list[bytes], decoder: Decoder | None = None) -> list[Any]:
    decoder = Decoder() if decoder is None else decoder
    out: list[Any] = []
    for chunk in chunks:
        decoder.feed(chunk)
        out.extend(decoder)
    return out


# --- round trips --------------------------------------------------------------

EDGE_INTS = [
    0,
    1,
    -1,
    -32,
    -33,
    127,
    128,
    255,
    256,
    2**31,
    2**32,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    -(2**64),
    2**71,
    -(2**71),
    10**100,
    -(10**100),
    2**1000 + 12345,
]


@pytest.mark.parametrize("value", EDGE_INTS, ids=repr)
def test_int_round_trips(value: int) -> None:
    assert_same(value, roundtrip(value))
    assert_same((value, [value], {value: value}), roundtrip((value, [value], {value: value})))


def test_ints_outside_64_bits_use_the_bigint_ext() -> None:
    assert encode(2**64)[2] == EXT_BIGINT
    assert encode(-(2**63) - 1)[2] == EXT_BIGINT
    assert encode(2**64 - 1) == msgpack.packb(2**64 - 1)
    assert encode(-(2**63)) == msgpack.packb(-(2**63))


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0.0,
        -0.0,
        1.5,
        -1e300,
        math.inf,
        -math.inf,
        5e-324,
        "",
        "ping",
        "héllo wörld ✓ 🐍",
        "x" * 100_000,
        b"",
        b"\x00\xff" * 10,
        b"x" * 100_000,
        (),
        [],
        {},
        ("ping", 42),
        ("hello", PID),
        [(), [], {}, ((),), [[]]],
        list(range(100)),
        tuple(range(-10, 10)),
        [("t", i) for i in range(20)],
        {"a": 1, b"a": 2, 1: 3, 1.5: 4, None: 5, False: 6, (): 7},
        PID,
        REF,
        Crash("ValueError", "boom", "Traceback ...\nValueError: boom\n"),
        Crash("k", "", ""),
    ],
    ids=repr,
)
def test_value_round_trips(value: Any) -> None:
    assert_same(value, roundtrip(value))


def test_nan_round_trips() -> None:
    assert math.isnan(roundtrip(math.nan))
    assert_same((math.nan, [math.nan]), roundtrip((math.nan, [math.nan])))


def test_bool_stays_bool_and_int_stays_int() -> None:
    for value in (True, False, 1, 0, (True, 1), [False, 0], {True: 1, 0: False}):
        assert_same(value, roundtrip(value))
    assert roundtrip(True) is True
    assert roundtrip(False) is False
    assert type(roundtrip(1)) is int


def test_str_and_bytes_stay_distinct() -> None:
    term = ("abc", b"abc", ["abc", b"abc"], {"abc": b"abc", b"abc": "abc"})
    assert_same(term, roundtrip(term))


def test_tuple_and_list_stay_distinct_at_every_depth() -> None:
    term: Any = 0
    shapes: list[type] = [tuple, list, tuple, tuple, list, list, tuple]
    for shape in shapes:
        term = shape([term, shape(), "x"])
    assert_same(term, roundtrip(term))
    for value in [(), [], ((),), [[]], ([],), [()], ((), []), [[], ()]]:
        assert_same(value, roundtrip(value))


def test_list_starting_like_a_tuple_stays_a_list() -> None:
    for value in [[()], [(), 1], [None, 1], [[], 1], [PID, 1], [REF], [b""]]:
        assert_same(value, roundtrip(value))


def test_dict_keys_of_any_hashable_term() -> None:
    term = {
        (1, 2): "pair",
        (1, (2, (3, ()))): "nested",
        (): "empty",
        ("a", b"b", None, True, 1.5): "mixed",
        PID: "pid",
        REF: "ref",
        (PID, REF): "both",
        Crash("E", "m"): "crash",
        frozen_key(): "deep",
    }
    decoded = roundtrip(term)
    assert_same(term, decoded)
    assert decoded[(1, (2, (3, ())))] == "nested"
    assert decoded[Pid("a@127.0.0.1", 7, 3)] == "pid"


def frozen_key() -> tuple[Any, ...]:
    key: tuple[Any, ...] = ()
    for i in range(20):
        key = (i, key)
    return key


def test_pid_and_ref_round_trip_equal() -> None:
    for term in (PID, REF, Pid("", 0, 0), Pid("n✓@host", 2**64 - 1, 2**32 - 1), Ref("r", 0, 2**32 - 1)):
        decoded = roundtrip(term)
        assert decoded == term
        assert hash(decoded) == hash(term)
        assert_same(term, decoded)
    assert roundtrip(PID) != roundtrip(Ref(PID.node, PID.id, PID.creation))


def test_pids_with_long_and_many_node_names() -> None:
    for node in ("n" * 255, "n" * 256, "é" * 10_000):
        assert_same(Pid(node, 1, 2), roundtrip(Pid(node, 1, 2)))
        assert_same(Ref(node, 1, 2), roundtrip(Ref(node, 1, 2)))
    many = [Pid(f"node{i}@host", i, 1) for i in range(10_000)]
    assert_same(many, roundtrip(many))
    assert_same(many, roundtrip(many))


def test_a_pid_encoded_here_decodes_as_that_very_object() -> None:
    # So a reply to a process finds it in the process table by identity.
    pid = Pid("ident@host", 12345, 6)
    assert decode(encode(("reply_to", pid)))[1] is pid
    twin = Pid("ident@host", 12345, 6)  # equal, another object: both encode alike
    assert encode(twin) == encode(pid)
    for i in range(10_000):  # more than the caches hold: they are emptied, never wrong
        p = Pid(f"n{i % 7}@host", i, i % 3)
        assert_same(p, decode(encode(p)))


def test_crash_round_trips_without_exception() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        crash = Crash.from_exception(exc)
    assert crash.exception is not None
    decoded = roundtrip(crash)
    assert type(decoded) is Crash
    assert (decoded.kind, decoded.message, decoded.traceback) == (crash.kind, crash.message, crash.traceback)
    assert "KeyError" in decoded.traceback
    assert decoded.exception is None
    assert decoded == crash


def test_crash_with_lone_surrogates_still_travels() -> None:
    crash = Crash("OSError", "bad name \udcff", "File '/tmp/\udc80'")
    decoded = roundtrip(crash)
    assert (decoded.kind, decoded.message, decoded.traceback) == (
        "OSError",
        "bad name \\udcff",
        "File '/tmp/\\udc80'",
    )


def test_deep_nesting_up_to_max_depth() -> None:
    for shape in (list, tuple):
        term: Any = "leaf"
        for _ in range(MAX_DEPTH):
            term = shape([term])
        assert_same(term, roundtrip(term))
        with pytest.raises(EncodeError, match="nested deeper"):
            encode(shape([term]))
    nested_dict: Any = 1
    for _ in range(MAX_DEPTH):
        nested_dict = {"k": nested_dict}
    assert_same(nested_dict, roundtrip(nested_dict))


def test_wire_format_is_stable() -> None:
    # These bytes are the protocol: other nodes must keep understanding them.
    assert EXT_TUPLE == 1 and EXT_PID == 2 and EXT_REF == 3 and EXT_CRASH == 4 and EXT_BIGINT == 5
    assert encode(("ping", 42)) == b"\x93\xc7\x00\x01\xa4ping\x2a"
    assert encode(()) == b"\x91\xc7\x00\x01"
    assert encode(PID) == b"\xc7\x17\x02" + (7).to_bytes(8, "big") + (3).to_bytes(4, "big") + b"a@127.0.0.1"
    assert encode(Ref("n", 1, 2)) == b"\xc7\x0d\x03" + (1).to_bytes(8, "big") + (2).to_bytes(4, "big") + b"n"
    assert encode(2**64) == b"\xc7\x09\x05\x01" + bytes(8)
    assert encode(-(2**64)) == b"\xc7\x09\x05\xff" + bytes(8)
    assert encode(Crash("K", "M", "T")) == b"\xc7\x07\x04\x93\xa1K\xa1M\xa1T"
    assert encode([b"b", "s", 1.0]) == b"\x93\xc4\x01b\xa1s\xcb" + bytes.fromhex("3ff0000000000000")


def test_decode_accepts_memoryview() -> None:
    data = encode(("hello", PID, [1, 2]))
    assert_same(("hello", PID, [1, 2]), decode(memoryview(data)))
    assert_same(("hello", PID, [1, 2]), decode(memoryview(b"xx" + data)[2:]))


def test_decode_refuses_non_buffers() -> None:
    with pytest.raises(TypeError):
        decode(5)  # type: ignore[arg-type]


def test_large_message_then_small_ones() -> None:
    big = b"x" * (3 * 1024 * 1024)
    assert_same(big, roundtrip(big))
    assert_same(("ping", 1), roundtrip(("ping", 1)))


def test_encode_is_safe_across_threads() -> None:
    terms = [("hello", Pid(f"n{i}@h", i, 1), (i, (i,), [(), i])) for i in range(50)]
    expected = [encode(term) for term in terms]
    errors: list[str] = []

    def work() -> None:
        for _ in range(40):
            for term, data in zip(terms, expected, strict=True):
                if encode(term) != data or decode(data) != term:
                    errors.append(repr(term))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []


# --- refusals -------------------------------------------------------------------


class Point(NamedTuple):
    x: int
    y: int


Pair = collections.namedtuple("Pair", ["a", "b"])


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


class MyDict(dict[Any, Any]):
    pass


class MyList(list[Any]):
    pass


class MyFloat(float):
    pass


class MyBytes(bytes):
    pass


class MyPid(Pid):
    pass


REFUSED: list[tuple[Any, str]] = [
    ({1, 2}, "'set'"),
    (frozenset({1}), "'frozenset'"),
    (object(), "'object'"),
    (lambda: None, "'function'"),
    (len, "'builtin_function_or_method'"),
    (msgpack.ExtType(EXT_TUPLE, b""), "ExtType"),
    (msgpack.ExtType(EXT_PID, b"x" * 12), "ExtType"),
    (msgpack.Timestamp(1, 0), "Timestamp"),
    (bytearray(b"ab"), "'bytearray'"),
    (memoryview(b"ab"), "'memoryview'"),
    (Point(1, 2), "Point"),
    (Pair(1, 2), "Pair"),
    (Color.RED, "Color"),
    (Name("x"), "Name"),
    (MyDict(), "MyDict"),
    (collections.OrderedDict(), "OrderedDict"),
    (MyList(), "MyList"),
    (MyFloat(1.0), "MyFloat"),
    (MyBytes(b""), "MyBytes"),
    (MyPid("a", 1, 1), "MyPid"),
    (1j, "'complex'"),
    (range(3), "'range'"),
    (type, "'type'"),
    (ValueError("x"), "'ValueError'"),
]


@pytest.mark.parametrize(("value", "name"), REFUSED, ids=[name for _, name in REFUSED])
def test_refused_types_name_the_type(value: Any, name: str) -> None:
    with pytest.raises(EncodeError, match="cannot encode value of type .*" + name.strip("'")) as info:
        encode(value)
    assert name.strip("'") in str(info.value)
    # Wherever the value hides.
    for term in (
        (value,),
        ("x", 1, value),
        [value],
        [1, [2, (3, value)]],
        {"k": value},
        {"k": [1, {"j": (value,)}]},
        ((1, 2), value),
        [0] * 20 + [value],
        (*range(9), value),
        ([0] * 9, [[value]]),
    ):
        with pytest.raises(EncodeError, match=name.strip("'")):
            encode(term)


def test_refused_hashable_values_as_dict_keys() -> None:
    for value in (
        frozenset({1}),
        msgpack.ExtType(EXT_TUPLE, b""),
        msgpack.Timestamp(1, 0),
        Point(1, 2),
        Color.RED,
        Name("k"),
        memoryview(b"k"),
    ):
        with pytest.raises(EncodeError, match="cannot encode value of type"):
            encode({value: 1})
        with pytest.raises(EncodeError, match="cannot encode value of type"):
            encode({(1, value): 1})


def test_encode_error_is_a_type_error_and_decode_error_a_value_error() -> None:
    assert issubclass(EncodeError, TypeError)
    assert issubclass(DecodeError, ValueError)


def test_extype_cannot_forge_a_tuple() -> None:
    with pytest.raises(EncodeError):
        encode([msgpack.ExtType(EXT_TUPLE, b""), 1, 2])


@pytest.mark.parametrize(
    "term",
    [
        Pid("a", -1, 1),
        Pid("a", 2**64, 1),
        Pid("a", 1, 2**32),
        Pid("a", 1, -1),
        Pid("a", 1.5, 1),  # type: ignore[arg-type]
        Pid(b"a", 1, 1),  # type: ignore[arg-type]
        Pid("a\udc80", 1, 1),
        Ref("a", -1, 1),
        Ref(None, 1, 1),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_unencodable_pid_and_ref_fields(term: Any) -> None:
    with pytest.raises(EncodeError):
        encode(("x", term))


def test_crash_fields_must_be_str() -> None:
    with pytest.raises(EncodeError, match="Crash"):
        encode(Crash("k", 1, ""))  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="Crash"):
        encode(Crash(Name("k"), "m", ""))


def test_str_with_lone_surrogate_is_refused() -> None:
    with pytest.raises(EncodeError):
        encode("a\ud800b")
    with pytest.raises(EncodeError):
        encode(("ok", ["a\udc80"]))


def test_cyclic_terms_are_refused() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    with pytest.raises(EncodeError, match="nested deeper"):
        encode(cyclic)
    cyclic_dict: dict[str, Any] = {}
    cyclic_dict["self"] = cyclic_dict
    with pytest.raises(EncodeError, match="nested deeper"):
        encode(cyclic_dict)


def test_encoder_still_works_after_errors() -> None:
    for bad in ({1}, [1, {2}], ("a", object()), "\ud800", Pid("a", -1, 1)):
        with pytest.raises(EncodeError):
            encode(bad)
        assert encode(("ping", 42)) == b"\x93\xc7\x00\x01\xa4ping\x2a"


# --- malformed input ---------------------------------------------------------------

SAMPLES: list[Any] = [
    None,
    ("ping", 42),
    ("hello", PID),
    {"k": [1, (2, REF)], (1, 2): b"bin"},
    2**100,
    -(2**70),
    Crash("E", "msg", "tb"),
    [1.5, "héllo", b"\x00" * 40, "s" * 40],
    {PID: {"deep": ((), [()], ([[]],))}},
]


@pytest.mark.parametrize("term", SAMPLES, ids=repr)
def test_every_truncation_raises_decode_error(term: Any) -> None:
    data = encode(term)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:cut])


@pytest.mark.parametrize("term", SAMPLES, ids=repr)
def test_decoder_waits_for_the_rest_at_every_cut(term: Any) -> None:
    data = encode(term)
    for cut in range(len(data) + 1):
        decoder = Decoder()
        decoder.feed(data[:cut])
        early = list(decoder)
        decoder.feed(data[cut:])
        late = list(decoder)
        assert len(early + late) == 1
        assert_same(term, (early + late)[0])
        assert list(decoder) == []


def pid_payload(node: bytes = b"n", id_: int = 1, creation: int = 1) -> bytes:
    return id_.to_bytes(8, "big") + creation.to_bytes(4, "big") + node


def ext(code: int, payload: bytes) -> bytes:
    data: bytes = msgpack.packb(msgpack.ExtType(code, payload))
    return data


TUPLE_MARK = ext(EXT_TUPLE, b"")

MALFORMED: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("reserved byte", b"\xc1"),
    ("extra trailing byte", encode(("ping", 42)) + b"\x00"),
    ("two terms", encode(1) + encode(2)),
    ("unknown ext code", ext(99, b"")),
    ("unknown ext code 0", ext(0, b"abc")),
    ("unknown ext nested", b"\x92\x01" + ext(42, b"x")),
    ("timestamp fixext4", b"\xd6\xff\x00\x00\x00\x01"),
    ("timestamp fixext8", b"\xd7\xff" + bytes(8)),
    ("timestamp ext8", b"\xc7\x0c\xff" + bytes(12)),
    ("timestamp in a tuple", b"\x93" + TUPLE_MARK + b"\x01\xd6\xff\x00\x00\x00\x01"),
    ("timestamp as dict key", b"\x81\xd6\xff\x00\x00\x00\x01\x01"),
    ("timestamp as dict value", b"\x81\x01\xd7\xff" + bytes(8)),
    ("bad timestamp length", b"\xd4\xff\x00"),
    ("short pid payload", ext(EXT_PID, b"\x00" * 11)),
    ("empty pid payload", ext(EXT_PID, b"")),
    ("short ref payload", ext(EXT_REF, b"\x00" * 5)),
    ("pid node not utf-8", ext(EXT_PID, pid_payload(b"\xff\xfe"))),
    ("ref node not utf-8", ext(EXT_REF, pid_payload(b"\xc3"))),
    ("str not utf-8", b"\xa2\xc3\x28"),
    ("dict key not utf-8", b"\x81\xa1\xff\x01"),
    ("empty bigint", ext(EXT_BIGINT, b"")),
    ("crash not msgpack", ext(EXT_CRASH, b"\xc1")),
    ("crash empty", ext(EXT_CRASH, b"")),
    ("crash not a list", ext(EXT_CRASH, msgpack.packb("kind"))),
    ("crash two fields", ext(EXT_CRASH, msgpack.packb(["k", "m"]))),
    ("crash four fields", ext(EXT_CRASH, msgpack.packb(["k", "m", "t", "x"]))),
    ("crash bytes field", ext(EXT_CRASH, msgpack.packb(["k", b"m", "t"], use_bin_type=True))),
    ("crash trailing data", ext(EXT_CRASH, msgpack.packb(["k", "m", "t"]) + b"\x00")),
    ("tuple mark alone", TUPLE_MARK),
    ("tuple mark with payload", b"\x91" + ext(EXT_TUPLE, b"x")),
    ("tuple mark second", b"\x92\x01" + TUPLE_MARK),
    ("tuple mark twice", b"\x92" + TUPLE_MARK + TUPLE_MARK),
    ("tuple mark as dict key", b"\x81" + TUPLE_MARK + b"\x01"),
    ("tuple mark as dict value", b"\x81\x01" + TUPLE_MARK),
    ("tuple mark in nested dict", b"\x92" + TUPLE_MARK + b"\x81\x01" + TUPLE_MARK),
    ("list as dict key", b"\x81\x91\x01\x02"),
    ("dict as dict key", b"\x81\x80\x02"),
    ("tuple holding a list as dict key", b"\x81\x92" + TUPLE_MARK + b"\x91\x01\x02"),
    ("array claims 4G items", b"\xdd\xff\xff\xff\xff"),
    ("map claims 4G items", b"\xdf\xff\xff\xff\xff"),
    ("str claims 4 GiB", b"\xdb\xff\xff\xff\xff"),
    ("bin claims 4 GiB", b"\xc6\xff\xff\xff\xff"),
    ("ext claims 4 GiB", b"\xc9\xff\xff\xff\xff\x02"),
    ("too deep", b"\x91" * 5000 + b"\x00"),
]


@pytest.mark.parametrize("data", [d for _, d in MALFORMED], ids=[n for n, _ in MALFORMED])
def test_malformed_input_raises_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


STREAM_MALFORMED = [(n, d) for n, d in MALFORMED if n not in ("empty", "extra trailing byte", "two terms")]


@pytest.mark.parametrize("data", [d for _, d in STREAM_MALFORMED], ids=[n for n, _ in STREAM_MALFORMED])
def test_decoder_raises_decode_error_on_malformed_input(data: bytes) -> None:
    # Whole, and one byte at a time: a timestamp header split across feeds too.
    # A header claiming a huge str or bin just waits for its payload, until
    # the data outgrows the buffer.
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        decoder = Decoder(max_buffer_size=1 << 16)
        with pytest.raises(DecodeError):
            decode_stream([*chunks, b"\xc0" * 8, bytes(1 << 16)], decoder)
        # Broken for good: the stream has lost its framing.
        with pytest.raises(DecodeError):
            decoder.feed(encode(1))
        with pytest.raises(DecodeError):
            next(decoder)


def test_decoder_checks_only_the_terms_near_a_timestamp() -> None:
    good = encode(("x", -1, b"\xd6\xff\x00\x00"))  # looks like a timestamp header but is not one
    decoder = Decoder()
    assert_same([("x", -1, b"\xd6\xff\x00\x00")] * 3, decode_stream([good * 3], decoder))
    assert_same([("x", -1, b"\xd6\xff\x00\x00")] * 2, decode_stream([good, good], decoder))
    with pytest.raises(DecodeError):
        decode_stream([good + b"\x91\xd6\xff\x00\x00\x00\x01"], decoder)


def test_decoder_buffer_limit() -> None:
    decoder = Decoder(max_buffer_size=64)
    assert decode_stream([encode("x" * 50)], decoder) == ["x" * 50]
    with pytest.raises(DecodeError):
        decoder.feed(encode("x" * 100))
    decoder = Decoder(max_buffer_size=64)
    with pytest.raises(DecodeError):
        decode_stream([b"\xdd\x00\x01\x00\x00"], decoder)


def test_decoder_accepts_memoryview_and_empty_feeds() -> None:
    data = encode(("hello", PID)) + encode([1, (2,)])
    decoder = Decoder()
    decoder.feed(b"")
    assert list(decoder) == []
    decoder.feed(memoryview(data)[:5])
    assert list(decoder) == []
    decoder.feed(memoryview(data)[5:])
    assert_same([("hello", PID), [1, (2,)]], list(decoder))


def test_decoder_is_an_iterator() -> None:
    decoder = Decoder()
    assert iter(decoder) is decoder
    with pytest.raises(StopIteration):
        next(decoder)
    decoder.feed(encode(5))
    assert next(decoder) == 5


def test_decode_error_wraps_the_cause() -> None:
    with pytest.raises(DecodeError) as info:
        decode(ext(EXT_PID, b"short"))
    assert info.value.__cause__ is not None


# --- property tests -----------------------------------------------------------------

node_names = st.text(max_size=12)
pids = st.builds(Pid, node_names, st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))
refs = st.builds(Ref, node_names, st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))
crashes = st.builds(Crash, st.text(max_size=10), st.text(max_size=10), st.text(max_size=20))
ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.sampled_from(EDGE_INTS),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
    pids,
    refs,
    crashes,
)
hashables = st.recursive(scalars, lambda children: st.lists(children, max_size=3).map(tuple), max_leaves=4)
terms = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(hashables, children, max_size=5),
    ),
    max_leaves=12,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(terms)
def test_any_term_round_trips(term: Any) -> None:
    assert_same(term, roundtrip(term))


@FAST
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_to_a_term_or_raise_decode_error(data: bytes) -> None:
    check_decodes_to_a_term_or_fails(data)


def check_decodes_to_a_term_or_fails(data: bytes) -> None:
    try:
        term = decode(data)
    except DecodeError:
        return
    # Whatever decodes is a real term: it travels again unchanged.
    assert_same(term, roundtrip(term))


@settings(FAST, max_examples=200)
@given(terms, st.data())
def test_corrupted_encodings_decode_to_a_term_or_raise_decode_error(term: Any, data: st.DataObject) -> None:
    encoded = bytearray(encode(term))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(encoded)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert" or pos == len(encoded):
            encoded.insert(pos, data.draw(st.integers(0, 255)))
        elif action == "flip":
            encoded[pos] = data.draw(st.integers(0, 255))
        else:
            del encoded[pos]
    check_decodes_to_a_term_or_fails(bytes(encoded))


def split_at(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        yield data[start:cut]
        start = cut
    yield data[start:]


@settings(FAST, max_examples=150)
@given(st.lists(terms, max_size=4), st.lists(st.integers(0, 10_000), max_size=12))
def test_decoder_yields_the_terms_whatever_the_chunking(items: list[Any], cuts: list[int]) -> None:
    stream = b"".join(encode(term) for term in items)
    assert_same(items, decode_stream(list(split_at(stream, cuts))))

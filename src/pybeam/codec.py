"""The term codec: how terms travel between nodes.

:func:`encode` turns a term into bytes and :func:`decode` turns them back;
:class:`Decoder` decodes a stream of concatenated encodings, as read from a
socket. Only these types travel, and they come back as exactly the same types:
None, bool, int (any size), float, str, bytes, tuple, list, dict (any hashable
term as key), :class:`~pybeam.terms.Pid`, :class:`~pybeam.terms.Ref` and
:class:`~pybeam.terms.Crash`, nested to at most :data:`MAX_DEPTH` levels.
Everything else, subclasses included, raises :class:`EncodeError`. No pickle.

Wire format (part of the distribution protocol)
-----------------------------------------------
A term is exactly one MessagePack object
(https://github.com/msgpack/msgpack/blob/master/spec.md):

* None, bool, float (always float 64), str (str family, UTF-8), bytes (bin
  family), list (array) and dict (map, in iteration order) are MessagePack's own.
* int from -2**63 to 2**64-1 uses the int family. Other ints are ext
  ``EXT_BIGINT`` (5); payload: the int in big-endian two's complement, at least
  one byte.
* tuple is an array whose first element is ext ``EXT_TUPLE`` (1) with an empty
  payload (``c7 00 01``), followed by the tuple's items. That marker is
  valid nowhere else.
* Pid is ext ``EXT_PID`` (2); payload: id as u64 big-endian, creation as u32
  big-endian, then the node name in UTF-8 (the rest of the payload).
* Ref is ext ``EXT_REF`` (3), laid out as Pid.
* Crash is ext ``EXT_CRASH`` (4); payload: a MessagePack array of three str,
  ``[kind, message, traceback]``. The exception object does not travel.

No other ext code is valid, including MessagePack's timestamp (-1).

The tuple-native format (:func:`encode_native`, :func:`decode_native`)
----------------------------------------------------------------------
Two nodes that both offer it in the handshake (the ``tuple_arrays`` flag) use
it after the handshake: the same, except that a tuple is a plain array and a
list is an array whose first element is ext ``EXT_LIST`` (6) with an empty
payload (``c7 00 06``); ``EXT_TUPLE`` is then valid nowhere. Tuples are far
commoner than lists in messages (every control message and most user
messages are tuples), and msgpack's C code builds a tuple from an array
itself: a term without lists is decoded with no Python call but one per pid,
ref, crash or big int.
"""

from __future__ import annotations

import struct
import threading
from typing import Any, Final

import msgpack

from pybeam.terms import Crash, Pid, Ref, Term

__all__ = [
    "DEFAULT_MAX_BUFFER_SIZE",
    "EXT_BIGINT",
    "EXT_CRASH",
    "EXT_LIST",
    "EXT_PID",
    "EXT_REF",
    "EXT_TUPLE",
    "MAX_DEPTH",
    "DecodeError",
    "Decoder",
    "EncodeError",
    "decode",
    "decode_native",
    "encode",
    "encode_native",
    "pid_bytes",
    "ref_bytes",
]

EXT_TUPLE: Final = 1
EXT_PID: Final = 2
EXT_REF: Final = 3
EXT_CRASH: Final = 4
EXT_BIGINT: Final = 5
EXT_LIST: Final = 6

#: Deepest nesting of containers that :func:`encode` accepts. Well below
#: msgpack's own limits (511 levels to pack in msgpack 1.0, 1024 to unpack), and
#: low enough for its pure-Python fallback, which recurses up to two frames a
#: level: whatever one node encodes, every node decodes.
MAX_DEPTH: Final = 256

#: The largest amount of undecoded data a :class:`Decoder` holds by default.
DEFAULT_MAX_BUFFER_SIZE: Final = 64 * 1024 * 1024


class EncodeError(TypeError):
    """The term holds a value that cannot travel between nodes."""


class DecodeError(ValueError):
    """The bytes are not the encoding of a term."""


_ID: Final = struct.Struct(">QI")
_ID_SIZE: Final = _ID.size

# ExtType.__new__ validates in Python and costs ~4x building the namedtuple
# directly; our codes and payloads are valid by construction.
_make_ext: Final = tuple.__new__
_ExtType: Final = msgpack.ExtType
_TUPLE_EXT: Final = msgpack.ExtType(EXT_TUPLE, b"")
_LIST_EXT: Final = msgpack.ExtType(EXT_LIST, b"")
#: How a list marker is encoded (the only way encode_native writes it).
_LIST_MARK_BYTES: Final = b"\xc7\x00\x06"

# Exact types that msgpack packs natively or that _default converts. It also
# packs bytearray, memoryview, ExtType and Timestamp natively even with
# strict_types, which would decode as other types or forge our own ext codes,
# so encode() checks every value against this allowlist before packing.
_LEAF_TYPES: Final = frozenset({type(None), bool, int, float, str, bytes, Pid, Ref, Crash})
_CONTAINER_TYPES: Final = frozenset({tuple, list, dict})

# A Packer keeps its buffer at the largest size it ever packed; one that grew
# past this is replaced rather than kept for the thread's lifetime.
_PACKER_KEEP_LIMIT: Final = 1024 * 1024


def _type_name(value: object) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _refuse(value: object) -> EncodeError:
    return EncodeError(f"cannot encode value of type {_type_name(value)!r}")


def _check(term: Term) -> bool:
    """Raise EncodeError unless ``term`` holds only encodable values; tell
    whether it holds a list."""
    # An explicit stack, not recursion: nesting is bounded by MAX_DEPTH, not by
    # Python's recursion limit, and a cyclic term ends at MAX_DEPTH too.
    stack: list[tuple[Any, int]] = [(term, 0)]
    leaf_types = _LEAF_TYPES
    lists = False
    while stack:
        value, depth = stack.pop()
        t = type(value)
        if t in leaf_types:
            continue
        if t is list:
            lists = True
        elif t not in _CONTAINER_TYPES:
            raise _refuse(value)
        if depth >= MAX_DEPTH:
            raise EncodeError(f"cannot encode a term nested deeper than {MAX_DEPTH} levels")
        depth += 1
        if t is dict:
            if not leaf_types.issuperset(map(type, value)):
                stack.extend((key, depth) for key in value)
            value = value.values()
        if not leaf_types.issuperset(map(type, value)):
            stack.extend((item, depth) for item in value)
    return lists


def _flat_dict(value: dict[Any, Any]) -> bool:
    """Whether every key and value of ``value`` is a leaf (nothing to walk)."""
    for key, item in value.items():
        if type(key) not in _LEAF_TYPES or type(item) not in _LEAF_TYPES:
            return False
    return True


def _encode_id(value: Pid | Ref) -> bytes:
    try:
        return _ID.pack(value.id, value.creation) + value.node.encode()
    except (struct.error, AttributeError, UnicodeEncodeError) as exc:
        raise EncodeError(f"cannot encode {type(value).__name__} {value!r}: {exc}") from exc


def _encode_crash(crash: Crash) -> bytes:
    fields = [crash.kind, crash.message, crash.traceback]
    if any(type(field) is not str for field in fields):
        raise EncodeError("cannot encode Crash whose kind, message or traceback is not a str")
    # Not the thread's Packer: we are called from inside it and it is not re-entrant.
    try:
        payload: bytes = msgpack.packb(fields, use_bin_type=True)
    except UnicodeEncodeError:
        # A crash report must still travel when its text holds lone surrogates
        # (e.g. file names decoded with surrogateescape); they become \udcXX text.
        fields = [field.encode("utf-8", "backslashreplace").decode() for field in fields]
        payload = msgpack.packb(fields, use_bin_type=True)
    return payload


def _ext_bytes(code: int, payload: bytes) -> bytes:
    """How msgpack encodes ``ExtType(code, payload)`` (fixext, ext 8, 16 or 32)."""
    n = len(payload)
    if 16 < n < 0x100 and code in (EXT_PID, EXT_REF):
        # Ext 8: a pid's or a ref's with a node name of 5 to 243 bytes.
        return _EXT8_HEADS[code][n] + payload
    head = _FIXEXT_HEADS.get(n)
    if head is None:
        if n < 0x100:
            head = b"\xc7" + n.to_bytes(1, "big")
        elif n < 0x10000:
            head = b"\xc8" + n.to_bytes(2, "big")
        else:
            head = b"\xc9" + n.to_bytes(4, "big")
    return head + code.to_bytes(1, "big") + payload


_FIXEXT_HEADS: Final = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}
#: The ext 8 headers of pids and refs, by payload length.
_EXT8_HEADS: Final = {
    code: tuple(bytes((0xC7, n, code)) for n in range(0x100)) for code in (EXT_PID, EXT_REF)
}

# The ext of each pid encoded lately, keyed by id(pid) and holding the pid (so
# its id is not reused while cached): a process's pid is sent again and again.
_pid_exts: dict[int, tuple[Pid, Any]] = {}
# The encoding of each pid encode_native was given alone (a reply address).
_pid_bytes: dict[int, tuple[Pid, bytes]] = {}


def _pid_encoding(pid: Pid) -> bytes:
    payload = _encode_id(pid)
    data = _ext_bytes(EXT_PID, payload)
    if len(_pid_bytes) >= _CACHE_LIMIT:
        _pid_bytes.clear()
    _pid_bytes[id(pid)] = (pid, data)
    _comes_back(_pids, payload, pid)
    return data


def _pid_entry(pid: Pid) -> tuple[Pid, Any]:
    return _remember(pid, EXT_PID, _encode_id(pid), _pid_exts, _pids)


def _remember(
    term: Any, code: int, payload: bytes, exts: dict[int, tuple[Any, Any]], table: dict[bytes, Any]
) -> tuple[Any, Any]:
    """Cache ``term``'s ext (in ``exts``, by identity, holding the term so its
    id is not reused meanwhile) and the term itself for its payload (``table``)."""
    entry = (term, _make_ext(_ExtType, (code, payload)))
    if len(exts) >= _CACHE_LIMIT:
        exts.clear()
    exts[id(term)] = entry
    _comes_back(table, payload, term)
    return entry


def pid_bytes(pid: Pid) -> bytes:
    """The encoding of ``pid`` (the same in both formats), cached: for a
    caller that builds an encoding from parts (a control message's)."""
    cached = _pid_bytes.get(id(pid))
    if cached is not None and cached[0] is pid:
        return cached[1]
    return _pid_encoding(pid)


def ref_bytes(ref: Ref) -> bytes:
    """The encoding of ``ref`` (the same in both formats), as :func:`pid_bytes`."""
    entry = _ref_exts.get(id(ref))
    if entry is None or entry[0] is not ref:
        entry = _ref_entry(ref)
    return _ext_bytes(EXT_REF, entry[1][1])


def _comes_back(table: dict[bytes, Any], payload: bytes, term: Pid | Ref) -> None:
    """Decode ``payload`` to this very ``term`` from now on (in ``table``,
    ``_pids`` or ``_refs``): a pid comes back in a reply to it, a ref in a
    reply or a DOWN, and the process table or a dict keyed by it then finds
    it by identity, without ``__eq__`` (a Python call)."""
    if len(payload) <= _ID_SIZE + _CACHED_NAME_SIZE:
        if len(table) >= _CACHE_LIMIT:
            table.clear()
        table[payload] = term


# The same for refs: a ref this node made comes back in a reply or a DOWN,
# and one that arrived (a spawn request's, a call's tag) often goes back out
# in one.
_ref_exts: dict[int, tuple[Ref, Any]] = {}
_new: Final = object.__new__


def _ref_entry(ref: Ref) -> tuple[Ref, Any]:
    return _remember_ref(ref, _encode_id(ref))


def _remember_ref(ref: Ref, payload: bytes) -> tuple[Ref, Any]:
    return _remember(ref, EXT_REF, payload, _ref_exts, _refs)


def _default(value: Any) -> Any:
    # msgpack calls this for every type it does not pack natively under
    # strict_types; _check has already refused everything not handled here.
    t = type(value)
    if t is tuple:
        # msgpack packs the items itself: no nested pack call per tuple.
        return [_TUPLE_EXT, *value]
    if t is Pid:
        entry = _pid_exts.get(id(value))
        if entry is None or entry[0] is not value:
            entry = _pid_entry(value)
        return entry[1]
    if t is Ref:
        ref_entry = _ref_exts.get(id(value))
        if ref_entry is None or ref_entry[0] is not value:
            ref_entry = _ref_entry(value)
        return ref_entry[1]
    if t is int:
        # msgpack hands over the ints that do not fit its 64-bit int family.
        data = value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)
        return _make_ext(_ExtType, (EXT_BIGINT, data))
    if t is Crash:
        return _make_ext(_ExtType, (EXT_CRASH, _encode_crash(value)))
    raise _refuse(value)


def _new_packer() -> Any:
    return msgpack.Packer(default=_default, strict_types=True, use_bin_type=True, datetime=False)


# One Packer per thread: reusing one saves ~170 ns a call over packb(), but a
# Packer shared between threads would interleave two terms in one buffer
# whenever the GIL switches inside _default.
_local = threading.local()


def encode(term: Term) -> bytes:
    """Encode ``term`` for another node; raise EncodeError if it cannot travel."""
    t = type(term)
    # Fast path for the common flat message; anything else gets the full check.
    if t is tuple or t is list:
        if len(term) <= 8:
            # Cheaper than issuperset() for a few items: on Python 3.11 that
            # first builds a set from the iterator. Two levels are checked
            # inline: a control message wrapping a flat user message is the
            # commonest term on the wire.
            for item in term:
                ti = type(item)
                if ti in _LEAF_TYPES:
                    continue
                if (ti is tuple or ti is list) and len(item) <= 8:
                    for sub in item:
                        if type(sub) not in _LEAF_TYPES:
                            break
                    else:
                        continue
                elif ti is dict and len(item) <= 8 and _flat_dict(item):
                    continue  # a spawn request's options, say
                _check(term)
                break
        elif not _LEAF_TYPES.issuperset(map(type, term)):
            _check(term)
    elif t not in _LEAF_TYPES:
        _check(term)
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = _new_packer()
    try:
        data: bytes = packer.pack(term)
    except EncodeError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # e.g. a str with lone surrogates, a container over 2**32-1 items, or
        # msgpack's pure-Python fallback called from an already deep stack.
        raise EncodeError(f"cannot encode term: {exc!r}") from exc
    if len(data) > _PACKER_KEEP_LIMIT:
        _local.packer = _new_packer()
    return data


def _new_native_packer() -> Any:
    # Not strict: tuples and lists pack as arrays with no call to _default;
    # the allowlist check before packing has refused every subclass, and
    # _mark_lists has turned every list into a marked tuple.
    return msgpack.Packer(default=_default, strict_types=False, use_bin_type=True, datetime=False)


def _mark_lists(value: Any) -> Any:
    """``value`` with each list turned into a tuple led by the list marker
    (the tuple-native format); tuples and dicts are rebuilt only around one.
    Recursive: _check has bounded the depth at MAX_DEPTH."""
    t = type(value)
    if t is dict:
        out: dict[Any, Any] = {}
        for key, item in value.items():
            out[key] = _mark_lists(item) if type(item) in _CONTAINER_TYPES else item
        return out
    if _LEAF_TYPES.issuperset(map(type, value)):
        return (_LIST_EXT, *value) if t is list else value
    items = [_LIST_EXT] if t is list else []
    for item in value:
        items.append(_mark_lists(item) if type(item) in _CONTAINER_TYPES else item)
    return tuple(items)


def _mark_two_levels(value: Any) -> Any:
    """_mark_lists for a tuple or list whose items are leaves or hold only leaves."""
    items = [(_LIST_EXT, *item) if type(item) is list else item for item in value]
    return (_LIST_EXT, *items) if type(value) is list else tuple(items)


def encode_native(term: Term) -> bytes:
    """Encode ``term`` in the tuple-native format (see the module's doc), for
    a node that offered it; raise EncodeError if it cannot travel."""
    t = type(term)
    if t is Pid:
        # A pid alone (a reply address, say): its encoding, cached (pid_bytes inlined).
        cached = _pid_bytes.get(id(term))
        if cached is not None and cached[0] is term:
            return cached[1]
        return _pid_encoding(term)
    lists = t is list
    deep = False  # whether a list may sit below the second level
    # encode()'s fast path, which also notes whether a list was seen.
    if t is tuple or t is list:
        if len(term) <= 8:
            for item in term:
                ti = type(item)
                if ti in _LEAF_TYPES:
                    continue
                if (ti is tuple or ti is list) and len(item) <= 8:
                    for sub in item:
                        if type(sub) not in _LEAF_TYPES:
                            break
                    else:
                        if ti is list:
                            lists = True
                        continue
                elif ti is dict and len(item) <= 8 and _flat_dict(item):
                    continue
                lists = deep = _check(term)
                break
        elif not _LEAF_TYPES.issuperset(map(type, term)):
            lists = deep = _check(term)
        elif lists:
            term = (_LIST_EXT, *term)  # a flat list: marked without another walk
            lists = False
    elif t not in _LEAF_TYPES:
        lists = deep = _check(term)
    try:
        packer = _local.native_packer
    except AttributeError:
        packer = _local.native_packer = _new_native_packer()
    try:
        if lists:
            # Two levels (the fast path's) are marked without the recursion.
            term = _mark_lists(term) if deep else _mark_two_levels(term)
        data: bytes = packer.pack(term)
    except EncodeError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise EncodeError(f"cannot encode term: {exc!r}") from exc
    if len(data) > _PACKER_KEEP_LIMIT:
        _local.native_packer = _new_native_packer()
    return data


# --- decoding ---------------------------------------------------------------

# ext_hook's stand-in for a tuple marker; list_hook replaces any list starting
# with it by a tuple. Never part of a decoded term.
_MARK: Final = object()

_node_names: dict[bytes, str] = {}
_pids: dict[bytes, Pid] = {}
_refs: dict[bytes, Ref] = {}
# Bounds for the caches above, so a peer sending many or long names cannot
# grow them without limit: longer names are not cached, and a full cache is
# simply emptied.
_CACHE_LIMIT: Final = 4096
_CACHED_NAME_SIZE: Final = 255


def _node_name(data: bytes) -> str:
    # The same few node names recur; this also shares one str among the pids
    # of a node, which makes Pid.__eq__ hit its identity fast path.
    name = _node_names.get(data)
    if name is None:
        name = data.decode()
        if len(data) <= _CACHED_NAME_SIZE:
            if len(_node_names) >= _CACHE_LIMIT:
                _node_names.clear()
            _node_names[data] = name
    return name


def _decode_ref(data: bytes) -> Ref:
    id_, creation = _ID.unpack_from(data)
    node = _node_name(data[_ID_SIZE:])
    # Ref(node, id_, creation) without the __init__ call: the same slots.
    ref: Ref = _new(Ref)
    ref.node = node
    ref.id = id_
    ref.creation = creation
    ref._hash = hash((node, id_, creation, "ref"))
    _remember_ref(ref, data)
    return ref


def _decode_ext(code: int, data: bytes) -> Any:
    if code == EXT_PID:
        # Pids are immutable and a process's pid arrives again and again:
        # reuse the object rather than build (and hash) a new one each time.
        pid = _pids.get(data)
        if pid is None:
            id_, creation = _ID.unpack_from(data)
            # Pid(node, id_, creation) without the __init__ call: the same slots.
            pid = _new(Pid)
            pid.node = _node_name(data[_ID_SIZE:])
            pid.id = id_
            pid.creation = creation
            pid._proc = None
            _comes_back(_pids, data, pid)
        return pid
    if code == EXT_REF:
        ref = _refs.get(data)
        return _decode_ref(data) if ref is None else ref
    if code == EXT_BIGINT:
        if not data:
            raise DecodeError("empty big int payload")
        return int.from_bytes(data, "big", signed=True)
    if code == EXT_CRASH:
        fields = msgpack.unpackb(data, raw=False)
        if type(fields) is not list or len(fields) != 3 or any(type(f) is not str for f in fields):
            raise DecodeError("malformed Crash payload")
        return Crash(fields[0], fields[1], fields[2])
    raise DecodeError(f"unknown ext type {code}")


class _Hooks:
    """The unpacking hooks of one decoding stream.

    ``pending`` counts tuple markers made but not yet consumed as the first
    item of a list; it must be 0 whenever a whole term has been decoded, else a
    marker sits where no valid encoding puts one.
    """

    __slots__ = ("ext_hook", "list_hook", "pending")

    def __init__(self) -> None:
        self.pending = 0
        # Bound once: msgpack takes the hooks on every unpackb() call.
        self.ext_hook = self._ext_hook
        self.list_hook = self._list_hook

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == EXT_TUPLE:
            if data:
                raise DecodeError("tuple marker with a payload")
            self.pending += 1
            return _MARK
        if code == EXT_PID:
            pid = _pids.get(data)  # _decode_ext's first step, without the call
            if pid is not None:
                return pid
        return _decode_ext(code, data)

    def _list_hook(self, items: list[Any]) -> Any:
        if items and items[0] is _MARK:
            self.pending -= 1
            del items[0]  # msgpack's list, ours to change: no slice copy
            return tuple(items)
        return items


def _may_hold_timestamp(data: bytes) -> bool:
    # msgpack decodes its timestamp ext (-1) itself without calling ext_hook.
    # It can only be fixext 4, fixext 8 or ext 8 of length 12; data without
    # these byte pairs cannot hold one.
    # find(), not ``in``: on Python 3.11 ``bytes in bytes`` first tries the
    # operand as an int and formats (then clears) a TypeError every time.
    return data.find(b"\xd6\xff") >= 0 or data.find(b"\xd7\xff") >= 0 or data.find(b"\xc7\x0c\xff") >= 0


_TERM_TYPES: Final = _LEAF_TYPES | _CONTAINER_TYPES


def _check_decoded(term: Term) -> None:
    """Raise DecodeError if ``term`` holds a value that is not a term."""
    stack = [term]
    while stack:
        value = stack.pop()
        t = type(value)
        if t not in _TERM_TYPES:
            raise DecodeError(f"unknown ext type, decoded as {_type_name(value)!r}")
        if t is dict:
            stack.extend(value)
            stack.extend(value.values())
        elif t is tuple or t is list:
            stack.extend(value)


# msgpack's pure-Python Unpacker (PyPy, MSGPACK_PUREPYTHON) parses an
# incomplete term again from its start on each attempt, calling the hooks
# again; the C one resumes where it stopped, keeping what the hooks returned.
_REPARSES: Final = msgpack.Unpacker.__module__ == "msgpack.fallback"


def _as_bytes(data: Any) -> bytes:
    # memoryview() refuses non-buffers, where bytes() would turn an int n into
    # n zero bytes.
    return data if type(data) is bytes else memoryview(data).tobytes()


def decode(data: bytes | memoryview) -> Term:
    """Decode one encoded term; raise DecodeError unless ``data`` is exactly that."""
    if type(data) is not bytes:
        data = _as_bytes(data)
    try:
        hooks = _local.hooks
    except AttributeError:
        hooks = _local.hooks = _Hooks()
    hooks.pending = 0
    try:
        # unpackb caps every length at len(data), so a small input cannot claim
        # a huge allocation.
        term = msgpack.unpackb(
            data,
            ext_hook=hooks.ext_hook,
            list_hook=hooks.list_hook,
            raw=False,
            use_list=True,
            strict_map_key=False,
        )
    except DecodeError:
        raise
    except Exception as exc:
        # msgpack's own errors, and struct.error, UnicodeDecodeError or an
        # unhashable key's TypeError from the hooks: all mean malformed input.
        raise DecodeError(f"malformed term: {exc!r}") from exc
    if hooks.pending:
        raise DecodeError("misplaced tuple marker")
    if 0xFF in data and _may_hold_timestamp(data):
        _check_decoded(term)
    return term


# decode_native's hooks. A list marker is only ever written as
# _LIST_MARK_BYTES, so data without those bytes is decoded with no list_hook
# (msgpack builds the tuples itself); a marker written another way (ext 16 or
# 32 with length 0) then reaches _native_ext_hook, which refuses it, so no
# encoding of a list can be taken for a tuple.
_LMARK: Final = object()


def _native_ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_PID:
        pid = _pids.get(data)
        if pid is not None:
            return pid
    elif code == EXT_REF:
        ref = _refs.get(data)
        if ref is not None:
            return ref
        return _decode_ref(data)  # a spawn request's, a call's tag: one per request
    elif code in (EXT_LIST, EXT_TUPLE):
        raise DecodeError(f"ext {code} not where the tuple-native format puts one")
    return _decode_ext(code, data)


class _NativeHooks:
    """decode_native's hooks for data that may hold list markers; ``pending``
    as in :class:`_Hooks`."""

    __slots__ = ("ext_hook", "list_hook", "pending")

    def __init__(self) -> None:
        self.pending = 0
        self.ext_hook = self._ext_hook
        self.list_hook = self._list_hook

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == EXT_LIST:
            if data:
                raise DecodeError("list marker with a payload")
            self.pending += 1
            return _LMARK
        return _native_ext_hook(code, data)

    def _list_hook(self, items: tuple[Any, ...]) -> Any:
        if items and items[0] is _LMARK:
            self.pending -= 1
            out = list(items)
            del out[0]
            return out
        return items


def decode_native(data: bytes | memoryview) -> Term:
    """Decode one term in the tuple-native format; raise DecodeError unless
    ``data`` is exactly that."""
    if type(data) is not bytes:
        data = _as_bytes(data)
    try:
        if data.find(_LIST_MARK_BYTES) >= 0:  # not ``in``: see _may_hold_timestamp
            try:
                hooks = _local.native_hooks
            except AttributeError:
                hooks = _local.native_hooks = _NativeHooks()
            hooks.pending = 0
            term = msgpack.unpackb(
                data,
                ext_hook=hooks.ext_hook,
                list_hook=hooks.list_hook,
                raw=False,
                use_list=False,
                strict_map_key=False,
            )
            if hooks.pending:
                raise DecodeError("misplaced list marker")
        else:
            term = msgpack.unpackb(
                data, ext_hook=_native_ext_hook, raw=False, use_list=False, strict_map_key=False
            )
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"malformed term: {exc!r}") from exc
    if 0xFF in data and _may_hold_timestamp(data):
        _check_decoded(term)
    return term


class Decoder:
    """Decode a stream of concatenated encodings, fed in arbitrary pieces.

    Feed data with :meth:`feed`, then iterate to get each term completed so
    far; iteration stops when more data is needed and can resume after the
    next feed. At most ``max_buffer_size`` bytes may wait undecoded, so iterate
    after every feed; a term larger than that cannot be decoded. Malformed data
    raises :class:`DecodeError`, after which the decoder is unusable.
    """

    def __init__(self, max_buffer_size: int = DEFAULT_MAX_BUFFER_SIZE) -> None:
        self._hooks = _Hooks()
        self._unpacker: Any = msgpack.Unpacker(
            max_buffer_size=max_buffer_size,
            ext_hook=self._hooks.ext_hook,
            list_hook=self._hooks.list_hook,
            raw=False,
            use_list=True,
            strict_map_key=False,
        )
        self._fed = 0
        # The last two bytes fed, to spot a timestamp header split across feeds.
        self._tail = b""
        # Stream offset up to which the data may hold a timestamp ext; terms
        # are checked until one ends there. 0 when there is nothing to check.
        self._suspect_until = 0
        self._error: DecodeError | None = None

    def _fail(self, error: DecodeError) -> DecodeError:
        self._error = error
        return error

    def _check_usable(self) -> None:
        if self._error is not None:
            raise DecodeError("decoder already failed on malformed data") from self._error

    def feed(self, data: bytes | memoryview) -> None:
        """Append ``data`` to the stream; raise DecodeError if the buffer would overflow."""
        self._check_usable()
        data = _as_bytes(data)
        if 0xFF in data and (_may_hold_timestamp(data) or _may_hold_timestamp(self._tail + data[:2])):
            self._suspect_until = self._fed + len(data)
        try:
            self._unpacker.feed(data)
        except Exception as exc:
            raise self._fail(DecodeError(f"cannot buffer data: {exc!r}")) from exc
        self._fed += len(data)
        self._tail = (self._tail + data[-2:])[-2:]

    def __iter__(self) -> Decoder:
        return self

    def __next__(self) -> Term:
        self._check_usable()
        if _REPARSES:
            self._hooks.pending = 0
        try:
            term = next(self._unpacker)
        except StopIteration:
            raise
        except DecodeError as exc:
            raise self._fail(exc) from None
        except Exception as exc:
            raise self._fail(DecodeError(f"malformed term: {exc!r}")) from exc
        if self._hooks.pending:
            raise self._fail(DecodeError("misplaced tuple marker"))
        if self._suspect_until:
            try:
                _check_decoded(term)
            except DecodeError as exc:
                raise self._fail(exc) from None
            if self._unpacker.tell() >= self._suspect_until:
                self._suspect_until = 0
        return term

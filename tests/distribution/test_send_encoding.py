"""A message to a pid is encoded by a shortcut (the control tuple is never
built): it must give exactly the codec's bytes, the wire format."""

from __future__ import annotations

from typing import Any

import pytest

from pybeam import codec
from pybeam.distribution.connection import Op, _down_bytes, _send_head, _spawn_request_bytes
from pybeam.terms import Pid, Ref

# Node names whose pid payload (12 bytes + the name) takes each ext form:
# fixext 16, ext 8 and ext 16.
NODES = ["a@bc", "a@b", "node@127.0.0.1", "n" * 243 + "@h", "n" * 300 + "@host", "é@h"]
MESSAGES: list[Any] = [None, 1, "x", ("msg", 7), [1, (2, 3)], {"k": Pid("o@h", 1, 2)}, b"\xff" * 70_000]


@pytest.mark.parametrize("native", [False, True], ids=["base", "tuple-native"])
@pytest.mark.parametrize("node", NODES)
def test_the_send_shortcut_gives_the_codecs_bytes(node: str, native: bool) -> None:
    encode = codec.encode_native if native else codec.encode
    decode = codec.decode_native if native else codec.decode
    to = Pid(node, 2**40 + 3, 7)
    for msg in [*MESSAGES, to, Ref(node, 1, 1)]:
        assert _send_head(to, native) + encode(msg) == encode((Op.SEND, to, msg))
        assert decode(_send_head(to, native) + encode(msg)) == (Op.SEND, to, msg)


REASONS: list[Any] = [
    "normal",
    ("rpc_return", 6),
    ("rpc_return", [1, (2, [3])]),
    {"k": (1, [2])},
    b"\xff" * 300,
]


@pytest.mark.parametrize("node", NODES)
def test_a_down_put_together_from_parts_gives_the_codecs_bytes(node: str) -> None:
    watcher, pid, ref = Pid(node, 2**40 + 3, 7), Pid("other@h", 9, 1), Ref(node, 2**50, 3)
    for item in (pid, ("name", node)):
        for reason in REASONS:
            control = (Op.DOWN, watcher, ref, item, reason)
            assert _down_bytes(watcher, ref, item, reason) == codec.encode_native(control)


@pytest.mark.parametrize("node", NODES)
def test_a_spawn_request_put_together_from_parts_gives_the_codecs_bytes(node: str) -> None:
    ref, requester = Ref(node, 2**50, 3), Pid(node, 2**40 + 3, 7)
    for args in [(), ("m:f", 1, 2), ([1, (2, [3])], {"k": [4]}), ("x" * 70_000,)]:
        for link, monitor, reply in [(False, True, "error_only"), (True, True, True), (False, False, False)]:
            opts: dict[str, Any] = {"link": link, "monitor": monitor, "reply": reply}
            control = (Op.SPAWN_REQUEST, ref, requester, "pybeam.rpc:_execute", args, opts)
            data = _spawn_request_bytes(ref, requester, "pybeam.rpc:_execute", args, opts)
            assert data == codec.encode_native(control)
            assert codec.decode_native(data) == control


def test_a_ref_that_went_out_comes_back_as_the_same_object() -> None:
    # Dicts keyed by it (a spawn request's, a monitor's) then find it by
    # identity, with no Ref.__eq__ call; a pid does the same.
    ref, pid = Ref("me@h", 2**33 + 1, 5), Pid("me@h", 77, 5)
    for encode, decode in ((codec.encode, codec.decode), (codec.encode_native, codec.decode_native)):
        back = decode(encode(("DOWN", ref, pid)))
        assert back == ("DOWN", ref, pid)
        assert back[1] is ref and back[2] is pid


def test_a_ref_that_came_in_goes_back_out_with_the_same_bytes() -> None:
    data = codec.encode_native(("call", Ref("peer@h", 12345, 9)))
    ref = codec.decode_native(data)[1]
    assert codec.encode_native(("call", ref)) == data
    assert codec.ref_bytes(ref) == codec.encode_native(ref) == codec.encode(ref)


@pytest.mark.parametrize("node", NODES)
def test_a_pid_alone_has_the_codecs_bytes(node: str) -> None:
    pid = Pid(node, 2**40 + 3, 7)
    assert codec.encode_native(pid) == codec.pid_bytes(pid) == codec.encode(pid)
    assert codec.encode_native(pid) == codec.encode_native(pid)  # from the cache
    assert codec.decode_native(codec.encode_native(pid)) == pid

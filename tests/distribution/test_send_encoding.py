"""A message to a pid is encoded by a shortcut (the control tuple is never
built): it must give exactly the codec's bytes, the wire format."""

from __future__ import annotations

from typing import Any

import pytest

from pybeam import codec
from pybeam.distribution.connection import Op, _send_head
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

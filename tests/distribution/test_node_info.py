"""``net.node_info``: a connection's traffic and heartbeat figures (``net_kernel:node_info/1``),
between this node and a real node in another OS process."""

from __future__ import annotations

from typing import Any

import pytest

import pybeam
from pybeam import net, rpc
from pybeam.errors import BadArg


def blob(size: int) -> bytes:
    return b"x" * size


async def test_node_info_counts_bytes_both_ways_and_tells_the_heartbeat(cluster: Any) -> None:
    async with cluster(1) as c:
        (peer,) = c.nodes
        before = net.node_info(peer)
        assert before is not None
        assert set(before) == {
            "bytes_out",
            "bytes_in",
            "queued",
            "busy",
            "last_received",
            "last_sent",
            "ticktime",
        }
        assert before["ticktime"] == pybeam.current_node().dist.options.ticktime  # type: ignore[union-attr]
        assert before["busy"] is False
        assert before["last_received"] >= 0 and before["last_sent"] >= 0
        # 200 kB back from the peer, a few bytes to it.
        assert len(await rpc.call(peer, blob, 200_000)) == 200_000
        after = net.node_info(peer)
        assert after is not None
        assert after["bytes_in"] - before["bytes_in"] >= 200_000
        assert 0 < after["bytes_out"] - before["bytes_out"] < 10_000
        # Traffic counts as heard-from: the reply just arrived.
        assert after["last_received"] < before["ticktime"]


async def test_node_info_of_a_node_not_connected_is_none(beam_node: pybeam.Node) -> None:
    assert net.node_info("nobody@127.0.0.1") is None
    with pytest.raises(BadArg):
        net.node_info("not a node name")

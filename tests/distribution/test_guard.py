"""Tests for pybeam.distribution.guard: caps, escaping and rate-limited logs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pybeam.distribution.guard import ConnectionCap, RefusalLog, default_cap, fd_limit, untrusted


def test_untrusted_escapes_and_bounds() -> None:
    assert untrusted("alice@host") == "'alice@host'"
    shown = untrusted("evil\n2026-01-01 CRITICAL: forged\x1b[2J\r")
    assert "\n" not in shown and "\r" not in shown and "\x1b" not in shown
    assert "\\n2026-01-01" in shown
    long = untrusted("x" * 10_000)
    assert len(long) < 100 and "10000 chars" in long
    assert "\ud800" not in untrusted("\ud800")  # a lone surrogate is escaped too
    assert len(untrusted({i: "y" * 1000 for i in range(1000)})) <= 128
    assert untrusted(b"\n") == "b'\\n'"


def test_default_cap_follows_the_descriptor_limit() -> None:
    assert fd_limit() > 0
    assert 16 <= default_cap(8, 16, 256) <= 256
    assert default_cap(8, 16, 256) <= max(16, fd_limit() // 8)


def test_connection_cap_drops_the_oldest() -> None:
    dropped: list[int] = []
    cap = ConnectionCap(3)
    for i in range(3):
        assert cap.admit(i, lambda i=i: dropped.append(i)) == 0  # type: ignore[misc]
    cap.release(1)
    assert cap.admit(3, lambda: dropped.append(3)) == 0
    assert cap.admit(4, lambda: dropped.append(4)) == 1
    assert dropped == [0]
    assert len(cap) == 3 and cap.dropped == 1
    cap.drop_all()
    assert dropped == [0, 2, 3, 4] and len(cap) == 0
    with pytest.raises(ValueError):
        ConnectionCap(0)


async def test_refusal_log_logs_a_burst_then_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.refusals")
    log = RefusalLog(logger, burst=3, interval=0.2, what="refusals")
    with caplog.at_level(logging.INFO, logger="test.refusals"):
        for i in range(1000):
            log.log(logging.WARNING, "refused %d", i)
        assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1", "refused 2"]
        await asyncio.sleep(0.35)  # the interval ends: one line sums up the rest
        assert caplog.records[-1].getMessage() == "997 more refusals in the last 0 s were not logged"
        assert len(caplog.records) == 4
        log.log(logging.WARNING, "refused again")  # a new interval
        assert caplog.records[-1].getMessage() == "refused again"

"""``edge.throttled_log``: one line per kind and interval, with the count of those left out."""

from __future__ import annotations

import logging

import pytest

from edge.throttled_log import MAX_KINDS, ThrottledLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_kind_and_interval_then_the_count_left_out(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = ThrottledLog(logging.getLogger("t"), clock, interval=60)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(5):
            log.log(logging.WARNING, 400, "bad request (400)")
        log.log(logging.WARNING, 408, "too slow (408)")  # another kind: its own line
        clock.now += 59.9
        log.log(logging.WARNING, 400, "bad request (400)")
        clock.now += 0.1
        log.log(logging.ERROR, 400, "bad request (400)")
        clock.now += 60
        log.log(logging.WARNING, 400, "bad request (400)")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "bad request (400)"),
        (logging.WARNING, "too slow (408)"),
        (logging.ERROR, "bad request (400) (5 more like it in the 60 s before, not logged)"),
        (logging.WARNING, "bad request (400)"),
    ]


def test_a_message_is_never_taken_for_a_format(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="t"):
        ThrottledLog(logging.getLogger("t"), Clock()).log(logging.WARNING, 1, "transfer coding '%s' refused")
    assert caplog.records[0].getMessage() == "transfer coding '%s' refused"


def test_kinds_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    log = ThrottledLog(logging.getLogger("t"), Clock())
    with caplog.at_level(logging.INFO, logger="t"):
        for kind in range(MAX_KINDS * 3):
            log.log(logging.WARNING, kind, f"kind {kind}")
    assert len(log._kinds) <= MAX_KINDS and len(caplog.records) == MAX_KINDS * 3

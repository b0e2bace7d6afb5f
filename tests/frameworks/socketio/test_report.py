"""The manager's log lines about losses come at a bounded rate, and count everything.

A buffer that overflows under a flood leaves one gap in a publisher's numbers per
dropped stretch: one line per gap would flood the log with hundreds of lines.
"""

from __future__ import annotations

import logging

import pytest

from redismpx_socketio._report import REPEAT_SECONDS, Report


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_gaps_in_a_row_give_one_line_and_the_next_line_carries_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    report = Report(logging.getLogger("test.redismpx_socketio"), "socketio", "10 events", clock)
    caplog.set_level(logging.WARNING, logger="test.redismpx_socketio")
    for gap in range(300):  # 300 gaps of 2 events each, within one repeat period
        report.missed("host-a", 10 * gap + 1, 10 * gap + 2)
    assert report.events_missed == 600
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith("missed 2 event(s) of the server with host_id host-a")
    assert "more in gaps" not in lines[0]

    clock.now += REPEAT_SECONDS
    report.missed("host-a", 5001, 5003)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[1].startswith("missed 3 event(s)")
    assert lines[1].endswith("; and 598 more in gaps since the last such line")
    assert report.statistics().events_missed == 603

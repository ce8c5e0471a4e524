"""A flood of one kind of event makes one log line per interval, and says what it held back."""

from __future__ import annotations

import logging

from zmeshlib.telemetry.logs import LimitedLog


def test_one_line_per_kind_per_interval_and_the_count_of_what_was_held(caplog):
    now = [0.0]
    limited = LimitedLog(logging.getLogger("zmeshlib.test"), interval=1.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="zmeshlib.test"):
        assert limited.warning("denied", "call %s denied", "a")
        for _ in range(20_000):
            assert not limited.warning("denied", "call %s denied", "b")
        assert limited.warning("refused", "handshake refused")  # another kind: its own budget
        now[0] = 1.0
        assert limited.warning("denied", "call %s denied", "c")
    assert [r.getMessage() for r in caplog.records] == [
        "call a denied",
        "handshake refused",
        "call c denied (and 20000 more like it since the last such line)",
    ]

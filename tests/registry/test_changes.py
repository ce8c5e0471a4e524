"""The change log a store keeps so that a registry can patch its index: every answer, and
every case where it must say "cannot tell" (None) rather than a partial set."""

from __future__ import annotations

import pytest

from zmeshlib.registry._changes import NO_CARD, UNKNOWN, ChangeLog


def test_the_keys_touched_after_a_token() -> None:
    log = ChangeLog()
    start = log.count
    assert log.since(start) == frozenset()
    t1 = log.moved("aa")
    log.moved("bb")
    log.moved(NO_CARD)  # the policy: no card
    t2 = log.moved("aa")
    assert log.since(start) == {"aa", "bb"}
    assert log.since(t1) == {"aa", "bb"}
    assert log.since(t2) == frozenset() and log.count == t2


def test_an_unknown_change_means_read_everything() -> None:
    log = ChangeLog()
    before = log.moved("aa")
    log.moved(UNKNOWN)
    after = log.moved("bb")
    assert log.since(before) is None and log.since(0) is None
    assert log.since(after - 1) == {"bb"}  # after the unknown one: known again


@pytest.mark.parametrize("token", [object(), None, -1, 4, True, 1.0, "1"])
def test_a_token_it_never_gave_is_not_answered(token: object) -> None:
    log = ChangeLog()
    for key in ("aa", "bb", "cc"):
        log.moved(key)
    assert log.since(token) is None


def test_changes_older_than_it_keeps_are_not_answered() -> None:
    log = ChangeLog(size=3)
    for key in ("aa", "bb", "cc", "dd"):
        log.moved(key)
    assert log.since(0) is None  # "aa" is no longer kept
    assert log.since(1) == {"bb", "cc", "dd"}

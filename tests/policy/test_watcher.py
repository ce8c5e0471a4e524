"""PolicyWatcher on real files: new valid versions are delivered, broken ones keep the old policy."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zmeshlib._exceptions import PolicyError
from zmeshlib.policy import Policy, PolicyWatcher

V1 = "authorization: [{name: v1, rules: [{to: {call: [a]}}]}]\n"
V2 = "authorization: [{name: v2, rules: [{to: {call: [b]}}]}]\n"
BROKEN = "authorization: [{name: v3, action: NOPE}]\n"
V4 = "authorization: [{name: v4}]\n"


class Recorder:
    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, object]] = queue.Queue()

    def change(self, policy: Policy) -> None:
        self.events.put(("change", policy))

    def error(self, error: PolicyError) -> None:
        self.events.put(("error", error))

    def next(self, timeout: float = 10.0) -> tuple[str, object]:
        return self.events.get(timeout=timeout)

    def assert_quiet(self) -> None:
        assert self.events.empty(), self.events.get_nowait()


def rewrite(path: Path, text: str) -> None:
    """Replace the file atomically, as editors and config management do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def watched(tmp_path: Path, recorder: Recorder) -> Iterator[tuple[Path, PolicyWatcher]]:
    path = tmp_path / "mesh.yaml"
    path.write_text(V1)
    watcher = PolicyWatcher(path, recorder.change, recorder.error, interval=0.02)
    yield path, watcher
    watcher.close()


def names(policy: object) -> list[str]:
    assert isinstance(policy, Policy)
    return [p.name for p in policy.authorization]


def test_thread_delivers_changes_and_keeps_the_old_policy_on_errors(
    watched: tuple[Path, PolicyWatcher], recorder: Recorder
) -> None:
    path, watcher = watched
    watcher.start()
    assert watcher.policy is not None and names(watcher.policy) == ["v1"]
    recorder.assert_quiet()  # the baseline is not a change

    rewrite(path, V2)
    kind, policy = recorder.next()
    assert kind == "change" and names(policy) == ["v2"]
    assert watcher.policy is policy

    rewrite(path, BROKEN)
    kind, error = recorder.next()
    assert kind == "error" and isinstance(error, PolicyError)
    assert any(p.startswith("authorization[0].action:") for p in error.problems)
    assert names(watcher.policy) == ["v2"]  # kept

    rewrite(path, V4)
    kind, policy = recorder.next()
    assert kind == "change" and names(policy) == ["v4"]


def test_thread_stops_on_close(watched: tuple[Path, PolicyWatcher], recorder: Recorder) -> None:
    path, watcher = watched
    watcher.start()
    thread = watcher._thread
    assert thread is not None and thread.daemon and thread.is_alive()
    watcher.close()
    assert not thread.is_alive()
    rewrite(path, V2)
    recorder.assert_quiet()  # nobody polls any more...
    assert watcher.poll()  # ...but a manual poll still works
    assert names(recorder.next(timeout=0)[1]) == ["v2"]


def test_poll_reports_each_content_once(
    watched: tuple[Path, PolicyWatcher], recorder: Recorder
) -> None:
    path, watcher = watched
    watcher._check(report_change=False)  # baseline without a thread: poll() drives it
    assert not watcher.poll()
    path.write_text(V1)  # same bytes rewritten: not a change
    assert not watcher.poll()
    path.write_text(V2)  # same size, same second: caught by the content hash
    assert watcher.poll()
    assert not watcher.poll()
    assert names(recorder.next(timeout=0)[1]) == ["v2"]
    path.write_text(BROKEN)
    assert not watcher.poll() and not watcher.poll()
    assert recorder.next(timeout=0)[0] == "error"
    recorder.assert_quiet()  # reported once, not on every poll


def test_missing_file_is_reported_once_and_recovers(
    watched: tuple[Path, PolicyWatcher], recorder: Recorder
) -> None:
    path, watcher = watched
    watcher._check(report_change=False)
    path.unlink()
    assert not watcher.poll() and not watcher.poll()
    kind, error = recorder.next(timeout=0)
    assert kind == "error" and "cannot read policy" in str(error)
    recorder.assert_quiet()
    assert names(watcher.policy) == ["v1"]
    path.write_text(V2)
    assert watcher.poll()
    assert names(recorder.next(timeout=0)[1]) == ["v2"]


def test_invalid_baseline_goes_to_on_error(tmp_path: Path, recorder: Recorder) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text("version = [")
    with PolicyWatcher(path, recorder.change, recorder.error, interval=0.02) as watcher:
        assert watcher.policy is None
        kind, error = recorder.next(timeout=0)
        assert kind == "error" and "not valid TOML" in str(error)
        path.write_text('[[authorization]]\nname = "t"\n')
        kind, policy = recorder.next()
        assert kind == "change" and names(policy) == ["t"]


def test_a_raising_callback_does_not_stop_the_watcher(tmp_path: Path, recorder: Recorder) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(V1)
    calls: list[Policy] = []

    def flaky(policy: Policy) -> None:
        calls.append(policy)
        if len(calls) == 1:
            raise RuntimeError("subscriber bug")
        recorder.change(policy)

    with PolicyWatcher(path, flaky, interval=0.02):
        rewrite(path, V2)
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        rewrite(path, V4)
        assert names(recorder.next()[1]) == ["v4"]


def test_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="interval must be positive"):
        PolicyWatcher(tmp_path / "x.yaml", lambda p: None, interval=0)

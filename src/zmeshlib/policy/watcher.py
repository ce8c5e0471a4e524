"""Live reload: watch a policy file and hand every valid new version to a callback.

Rules this module keeps:

* A broken new file never replaces a good policy: the error goes to
  ``on_error`` (or the ``zmeshlib.policy`` logger) and the last good policy
  stays current.
* A change is a change of content: the file is re-read when its stat
  signature (mtime, size, inode) changes, or while its mtime is too recent
  to trust (a write within the filesystem's timestamp granularity could
  otherwise go unseen); a rewrite with identical bytes is not reported.
* Each distinct content is reported once, good or bad, however many times
  it is polled.
* Callbacks run on the watcher's daemon thread; an exception in one is
  logged and does not stop the watcher.

Theory of operation: :meth:`PolicyWatcher.start` takes the file as it is
as the baseline (``watcher.policy``; an invalid baseline is reported to
``on_error``), then a daemon thread calls :meth:`poll` every ``interval``
seconds until :meth:`close`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .._exceptions import PolicyError
from ._document import load_policy
from .model import Policy

log = logging.getLogger("zmeshlib.policy")

#: A file modified less than this long ago is re-read on every poll.
_RACY_SECONDS = 2.0
_MISSING = b"missing"


class PolicyWatcher:
    """Poll ``path`` and call ``on_change(policy)`` for each new valid version."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_change: Callable[[Policy], None],
        on_error: Callable[[PolicyError], None] | None = None,
        interval: float = 1.0,
    ) -> None:
        if interval <= 0:
            raise PolicyError(f"the watch interval must be positive, got {interval}")
        self.path = Path(path)
        self.interval = interval
        self._on_change = on_change
        self._on_error = on_error
        self._policy: Policy | None = None
        self._signature: tuple[int, int, int] | None = None
        self._digest: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def policy(self) -> Policy | None:
        """The last valid policy seen (None until one was)."""
        return self._policy

    def start(self) -> PolicyWatcher:
        if self._thread is not None:
            return self
        self._check(report_change=False)
        self._thread = threading.Thread(
            target=self._run, name=f"zmesh-policy-watch:{self.path.name}", daemon=True
        )
        self._thread.start()
        return self

    def poll(self) -> bool:
        """Check the file once; True when a new valid policy was reported."""
        return self._check(report_change=True)

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, 2 * self.interval))

    def __enter__(self) -> PolicyWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # never let the watcher die silently
                log.exception("policy watcher for %s failed to poll", self.path)

    def _check(self, *, report_change: bool) -> bool:
        try:
            st = os.stat(self.path)
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            racy = time.time() - st.st_mtime < _RACY_SECONDS
            if signature == self._signature and not racy:
                return False
            self._signature = signature
            data = self.path.read_bytes()
        except OSError as exc:
            if self._digest != _MISSING:
                self._digest, self._signature = _MISSING, None
                self._report(PolicyError(f"cannot read policy {str(self.path)!r}: {exc}"))
            return False
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            policy = load_policy(self.path, data=data)
        except PolicyError as exc:
            self._report(exc)
            return False
        self._policy = policy
        if report_change:
            log.info("policy %s reloaded: revision %s", self.path, policy.revision)
            self._call(self._on_change, policy)
        return report_change

    def _report(self, error: PolicyError) -> None:
        log.warning("policy %s not applied, keeping the current one: %s", self.path, error)
        if self._on_error is not None:
            self._call(self._on_error, error)

    def _call(self, fn: Callable[..., None], arg: object) -> None:
        try:
            fn(arg)
        except Exception:
            log.exception("policy watcher callback %r raised", fn)

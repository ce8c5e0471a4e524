"""Log lines a peer can cause, at a bounded rate.

Rules this module keeps:

* A peer must not be able to flood the log: a refused handshake, a denied
  call or subscription, a dropped message is logged at most once per
  ``interval`` per kind of event; the lines held back are counted and the next
  line says how many there were. The counters in ``stats`` (and the metrics)
  keep the exact numbers; the log is for a human.
* Thread-safe (the ZAP thread and the sockets' threads share one), and cheap
  when a line is held back: one lock, one clock read, one add.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class LimitedLog:
    """One logger's flood-prone lines, at most one per kind per ``interval`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless a ``kind`` line went out less than ``interval`` ago;
        True when it was logged."""
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._held[kind] = self._held.get(kind, 0) + 1
                return False
            self._last[kind] = now
            held = self._held.pop(kind, 0)
            if len(self._last) > 1024:  # kinds are few; never let the table grow without bound
                self._last = {kind: now}
        if held:
            message += f" (and {held} more like it since the last such line)"
        self._logger.log(level, message, *args)
        return True

    def warning(self, kind: str, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, message, *args)

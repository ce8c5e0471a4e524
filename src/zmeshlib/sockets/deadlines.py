"""Deadlines that travel: a handler's calls inherit what is left of its request's deadline.

Rules this module keeps:

* While a REP socket's ``serve()`` or ``handle()`` runs a handler (sync, or
  awaited in the asyncio flavour), the request's deadline is the current one
  of that thread or task (a ``contextvars`` variable, so threads and tasks
  never see each other's).
* A request made meanwhile waits at most until that deadline: the shorter
  of it and its own ``timeout=``. One whose inherited deadline has already
  passed is not sent (``Timeout``, delivery NOT_SENT): its caller's caller
  has given up.
* Deadlines are kept on the monotonic clock of this process. A request's
  deadline arrives as the time left when it was sent (and as an absolute
  time, for peers that send nothing else); turning it into this process's
  clock on arrival is what keeps a skewed clock from dropping valid requests
  or running expired ones.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

_DEADLINE: ContextVar[float | None] = ContextVar("zmeshlib_deadline", default=None)


def inherited() -> float | None:
    """The deadline (monotonic seconds) of the request being handled here, if any."""
    return _DEADLINE.get()


def enter(wall_deadline: float | None) -> Token[float | None]:
    """Make a request's deadline (``msg.deadline``, time.time() seconds) current until
    :func:`leave` (a ``try``/``finally`` pair: cheaper than a context manager, and it runs
    once per request)."""
    if wall_deadline is None:
        return _DEADLINE.set(None)
    return _DEADLINE.set(time.monotonic() + (wall_deadline - time.time()))


leave = _DEADLINE.reset


def remaining(timeout: float) -> float:
    """``timeout``, shortened to what is left of the inherited deadline (may be <= 0)."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    return min(timeout, deadline - time.monotonic())

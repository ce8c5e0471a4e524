"""``serve(handler)`` for SUB and PULL: each message handled inside its CONSUMER span.

Rules this module keeps:

* Each message is handled inside ``msg.process()``: its span (when traced) is
  current while the handler runs, and records what the handler raised.
* A handler's exception never ends ``serve()``: there is no one to answer, so
  it is counted (``stats["handler_errors"]``) and logged at a bounded rate,
  and the next message is served. ``serve()`` ends when ``stop()`` is true,
  ``max_messages`` were handled, or the socket is closed (from any thread).
* The sync and asyncio loops differ only in how they wait (and the asyncio
  one awaits a handler that returns an awaitable).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._exceptions import Closed, Timeout
from .._models import Message
from .drivers import REFRESH_INTERVAL

WAIT = REFRESH_INTERVAL * 5  # seconds between looks at stop()


def serve_messages(
    sock: Any,
    handler: Callable[[Message], Any],
    max_messages: int | None,
    stop: Callable[[], bool] | None,
) -> int:
    served = 0
    try:
        while (max_messages is None or served < max_messages) and not (stop and stop()):
            try:
                msg = sock.recv(timeout=WAIT)
            except Timeout:
                continue
            try:
                with msg.process():
                    handler(msg)
            except Exception as error:
                _failed(sock, msg, error)
            served += 1
    except Closed:
        pass
    return served


async def serve_messages_async(
    sock: Any,
    handler: Callable[[Message], Any],
    max_messages: int | None,
    stop: Callable[[], bool] | None,
) -> int:
    served = 0
    try:
        while (max_messages is None or served < max_messages) and not (stop and stop()):
            try:
                msg = await sock.recv(timeout=WAIT)
            except Timeout:
                continue
            try:
                with msg.process():
                    result = handler(msg)
                    if hasattr(result, "__await__"):
                        await result
            except Exception as error:
                _failed(sock, msg, error)
            served += 1
    except Closed:
        pass
    return served


def _failed(sock: Any, msg: Message, error: Exception) -> None:
    sock.counts["handler_errors"] += 1
    sock._mesh._log_limited(
        f"handler-{id(sock)}",
        "%s handler raised on %s from %s: %s: %s",
        sock.kind.name,
        msg.topic if msg.topic is not None else sock.service,
        msg.peer,
        type(error).__name__,
        error,
    )

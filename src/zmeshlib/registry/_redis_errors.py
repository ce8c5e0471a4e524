"""What a Redis failure means, said with what to do about it: the one place the Redis store
turns redis-py's exceptions into :class:`~zmeshlib.RegistryError` messages.

Rules this module keeps:

* A message names the server (its URL, the password shown as ``***``), what failed, the
  cause, and a fix; it never includes the command's bytes (redis-py adds them to
  pipeline errors: a card's bytes are no one's business in a log).
* The table of causes:

  ==============================  ==============================================
  redis-py raised                 the message says
  ==============================  ==============================================
  AuthenticationError,            the credentials were refused: check the URL's
  AuthorizationError              user and password
  ConnectionError, TimeoutError   cannot reach the server: the root cause (an
                                  OS error, TLS), and whether it runs or the host
                                  answers (``unreachable``: the store then fails
                                  fast for a while)
  a cluster's MOVED / CROSSSLOT   Redis Cluster is not supported
  ReadOnlyError                   the URL names a replica: use the primary
  NoPermissionError               the ACL must allow the prefix's keys and channel
  any other                       the server refused or failed: see its log
  ==============================  ==============================================
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .._exceptions import RegistryError


def redis_module() -> Any:
    """The redis module, imported on first use so zmeshlib imports without it."""
    try:
        import redis
    except ImportError as e:
        raise RegistryError(
            "a redis:// registry needs the redis package: pip install 'zmeshlib[redis]'"
        ) from e
    return redis


def shown_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _cause(e: BaseException) -> tuple[str, str]:
    """The root cause of a connection failure as a sentence, and the fix to suggest."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            text = seen.strerror
            break
        seen = seen.__cause__ or seen.__context__
    else:
        text = str(e) or type(e).__name__
    if "certificate" in text.lower() or "ssl" in type(seen).__name__.lower():
        return text, "check the server's TLS certificate and the CA the client trusts"
    if "timed out" in text.lower() or "timeout" in type(e).__name__.lower():
        return text, "is the host reachable and the server answering?"
    return text, "is redis-server running?"


def translate(r: Any, e: Exception, what: str, shown: str) -> tuple[RegistryError, bool]:
    """The RegistryError for redis-py's ``e`` while trying to ``what``, and whether the
    server could not be reached at all."""
    auth = (r.AuthenticationError, getattr(r, "AuthorizationError", r.AuthenticationError))
    if isinstance(e, auth):
        return RegistryError(
            f"Redis at {shown} refused the credentials ({e}); check the user and "
            "password in the URL (redis://USER:PASSWORD@host:port/db)"
        ), False
    if isinstance(e, (r.ConnectionError, r.TimeoutError)):
        cause, fix = _cause(e)
        return RegistryError(f"cannot reach Redis at {shown}: {cause}; {fix}"), True
    if isinstance(e, r.ResponseError):
        return RegistryError(f"Redis at {shown} refused to {what}: {_refusal(r, e)}"), False
    return RegistryError(f"Redis at {shown} failed to {what}: {e}"), False


_PIPELINE_NOTE = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)
_CLUSTER_ERRORS = ("AskError", "ClusterDownError", "ClusterCrossSlotError", "TryAgainError")


def _refusal(r: Any, e: Exception) -> str:
    """A server's refusal and its fix, without the command (a card's bytes) redis-py adds."""
    text = _PIPELINE_NOTE.sub("", str(e))
    exceptions = r.exceptions
    if isinstance(
        e, tuple(getattr(exceptions, n) for n in _CLUSTER_ERRORS if hasattr(exceptions, n))
    ):
        return (
            f"{text}; Redis Cluster is not supported: use a single node or a Sentinel-managed "
            "primary"
        )
    if isinstance(e, exceptions.ReadOnlyError):
        return f"{text}; the URL names a replica: point it at the primary"
    if isinstance(e, getattr(exceptions, "NoPermissionError", ())):
        return f"{text}; the Redis user needs its ACL to allow the prefix's keys and channel"
    return f"{text}; see the server's log"

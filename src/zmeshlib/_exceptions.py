"""Every error zmeshlib raises, in one place.

Rules this module keeps:

* Every error is a :class:`MeshError`, so ``except zmeshlib.MeshError`` is
  always enough.
* An error that travels over the wire maps to exactly one status code
  (:class:`zmeshlib.StatusCode`), and a status code received from a peer is
  raised as exactly one class: :func:`error_for_status` is that table.
* Messages say what was wrong and what to do about it; the machine-readable
  part (a rule name, a status, a policy name) is an attribute, never only
  text inside the message.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import zmq

if TYPE_CHECKING:
    from ._models import Delivery, StatusCode


class MeshError(Exception):
    """Base class of every zmeshlib error."""

    #: Status code sent to a peer when this error ends a request on a server.
    status_name: str = "INTERNAL"

    @property
    def status(self) -> StatusCode:
        from ._models import StatusCode

        return StatusCode[self.status_name]


class IdentityError(MeshError):
    """A SPIFFE ID, SVID, trust bundle or identity card failed a rule.

    ``rule`` names the rule that was broken (e.g. ``"trust-domain-charset"``,
    ``"leaf-is-ca"``, ``"card-expired"``) so callers and tests need not parse
    the message.
    """

    status_name = "UNAUTHENTICATED"

    def __init__(self, message: str, *, rule: str = "unspecified") -> None:
        super().__init__(message)
        self.rule = rule


class PolicyError(MeshError):
    """A policy document is invalid. ``problems`` lists every problem with its path."""

    status_name = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, problems: tuple[str, ...] = ()) -> None:
        if problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(message)
        self.problems = problems


class SignedPolicyError(MeshError):
    """A signed policy document was refused (decoded, verified, signed or published).

    ``reason`` is a stable name (``"malformed"``, ``"untrusted"``, ``"bad-signature"``,
    ``"not-a-signer"``, ``"older"``...; the table is in
    :mod:`zmeshlib.policy.distribution`), the label of the refusal counters.
    """

    status_name = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Closed(MeshError):
    """The socket or Mesh was closed (by this thread or another) before or during the operation."""

    status_name = "CANCELLED"


class RegistryError(MeshError):
    """The card registry could not be opened, read or written."""

    status_name = "UNAVAILABLE"


class ProtocolError(MeshError):
    """A frame broke the zmeshlib wire protocol (see docs/protocol.md).

    ``reason`` is a short stable name (``"truncated"``, ``"version"``,
    ``"too-large"``...) used as the label of the drop counters.
    """

    status_name = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


# -- errors that mirror a status code received from (or sent to) a peer ------


class RemoteError(MeshError):
    """Base of errors that carry a status code from the other side.

    ``detail`` is the peer's human-readable explanation, ``policy`` the name
    of the authorization policy that decided (when one did). ``delivery``
    says what is known of the request's fate (:class:`~zmeshlib.Delivery`):
    an error raised on this side before anything was sent is ``NOT_SENT``, a
    timeout or a lost endpoint ``UNKNOWN``, a status from the server
    ``ANSWERED``; a retry policy reads it instead of guessing.
    """

    def __init__(
        self,
        message: str,
        *,
        detail: str = "",
        policy: str = "",
        delivery: Delivery | None = None,
    ) -> None:
        super().__init__(message)
        self.detail = detail
        self.policy = policy
        if delivery is None:
            from ._models import Delivery

            delivery = Delivery.ANSWERED
        self.delivery = delivery


class PermissionDenied(RemoteError):
    """An authorization policy denied the operation."""

    status_name = "PERMISSION_DENIED"


class Timeout(RemoteError, zmq.Again):
    """A deadline passed before the operation finished.

    Also a ``zmq.Again`` (errno ``EAGAIN``), as pyzmq raises when ``RCVTIMEO``
    expires or ``NOBLOCK`` finds nothing: ``except zmq.Again`` code keeps working.
    """

    status_name = "DEADLINE_EXCEEDED"

    def __init__(
        self,
        message: str,
        *,
        detail: str = "",
        policy: str = "",
        delivery: Delivery | None = None,
    ) -> None:
        RemoteError.__init__(self, message, detail=detail, policy=policy, delivery=delivery)
        self.errno = errno.EAGAIN
        self.strerror = message

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Unavailable(RemoteError):
    """No healthy, verified endpoint could take the operation."""

    status_name = "UNAVAILABLE"


class Cancelled(RemoteError):
    status_name = "CANCELLED"


class InvalidArgument(RemoteError):
    status_name = "INVALID_ARGUMENT"


class NotFound(RemoteError):
    status_name = "NOT_FOUND"


class ResourceExhausted(RemoteError):
    status_name = "RESOURCE_EXHAUSTED"


class InternalError(RemoteError):
    status_name = "INTERNAL"


class Unimplemented(RemoteError):
    status_name = "UNIMPLEMENTED"


class Unauthenticated(RemoteError):
    status_name = "UNAUTHENTICATED"


class ApplicationError(RemoteError):
    """The remote handler raised an application error.

    ``retriable`` is the handler's own statement of whether trying again may
    succeed; retry policies read it instead of guessing.
    """

    status_name = "APPLICATION"

    def __init__(
        self,
        message: str,
        *,
        detail: str = "",
        policy: str = "",
        retriable: bool = False,
        delivery: Delivery | None = None,
    ) -> None:
        super().__init__(message, detail=detail, policy=policy, delivery=delivery)
        self.retriable = retriable


_BY_STATUS: dict[str, type[RemoteError]] = {
    cls.status_name: cls
    for cls in (
        PermissionDenied,
        Timeout,
        Unavailable,
        Cancelled,
        InvalidArgument,
        NotFound,
        ResourceExhausted,
        InternalError,
        Unimplemented,
        Unauthenticated,
        ApplicationError,
    )
}

_ADVICE: dict[str, str] = {
    "PERMISSION_DENIED": "check the authorization policy that names this operation",
    "DEADLINE_EXCEEDED": "raise the timeout, or check that the server is alive and not overloaded",
    "UNAVAILABLE": "check that a verified server is bound for this service and reachable",
    "INVALID_ARGUMENT": "check the request: the server could not decode or accept it",
    "NOT_FOUND": "check the method or resource name",
    "RESOURCE_EXHAUSTED": "back off and retry later, or raise the server's limits",
    "INTERNAL": "see the server's log for the exception",
    "UNIMPLEMENTED": "the server has no handler for this method",
    "UNAUTHENTICATED": "check this workload's identity and trust bundles",
    "CANCELLED": "the operation was cancelled",
    "APPLICATION": "the application handler reported an error",
}


def error_for_status(
    status: StatusCode,
    detail: str = "",
    *,
    policy: str = "",
    retriable: bool = False,
    what: str = "",
) -> RemoteError:
    """Build the exception a client raises for a non-OK status from a peer."""
    cls = _BY_STATUS.get(status.name, InternalError)
    head = f"{what}: {status.name}" if what else status.name
    text = f"{head}: {detail}" if detail else head
    if policy:
        text += f" (policy {policy!r})"
    advice = _ADVICE.get(status.name)
    if advice:
        text += f"; {advice}"
    if cls is ApplicationError:
        return ApplicationError(text, detail=detail, policy=policy, retriable=retriable)
    return cls(text, detail=detail, policy=policy)

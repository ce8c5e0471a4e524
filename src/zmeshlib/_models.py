"""zmeshlib's value types, in one place.

All are small frozen attrs classes: safe to share between threads, cheap to
compare, and never changed after a socket hands them out.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import attrs

from . import _compiled

if TYPE_CHECKING:
    from .identity.spiffe_id import SpiffeId


class StatusCode(enum.IntEnum):
    """The outcome of an operation, named and numbered after gRPC's canonical codes.

    ``APPLICATION`` is zmeshlib's own: the handler raised an application error,
    whose retriable flag travels with it.
    """

    OK = 0
    CANCELLED = 1
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16
    APPLICATION = 100


class Delivery(enum.Enum):
    """What is known of a failed request's delivery: whether a retry may run it twice.

    ``NOT_SENT``: it never left this process (no endpoint, a full queue, a
    circuit breaker, an inherited deadline already passed): nothing ran.
    ``UNKNOWN``: it was sent and no answer came (a timeout, the endpoint went
    away in flight): it may or may not have run. ``ANSWERED``: the server
    answered with a status.
    """

    NOT_SENT = "not-sent"
    UNKNOWN = "unknown"
    ANSWERED = "answered"


class SocketKind(enum.Enum):
    """The mesh socket kinds; the value is the kind a peer must have to talk to it."""

    PUB = "SUB"
    SUB = "PUB"
    REQ = "REP"
    REP = "REQ"
    PUSH = "PULL"
    PULL = "PUSH"

    @property
    def counterpart(self) -> SocketKind:
        return SocketKind[self.value]


@attrs.frozen
class Endpoint:
    """One bound socket of a workload, as recorded on its card."""

    address: str
    kind: str  # the bound mesh socket's kind: "PUB", "REP", "PULL", "SUB", "PUSH", "REQ"
    service: str = ""


@attrs.frozen
class Peer:
    """Who sent a message, as authenticated at the handshake.

    ``spiffe_id`` is None for an anonymous peer (PERMISSIVE or DISABLE mode).
    """

    spiffe_id: SpiffeId | None
    curve_key: bytes | None = None
    labels: Mapping[str, str] = attrs.field(factory=dict, eq=False)

    @property
    def authenticated(self) -> bool:
        return self.spiffe_id is not None

    @property
    def trust_domain(self) -> str | None:
        return self.spiffe_id.trust_domain if self.spiffe_id else None

    @property
    def namespace(self) -> str | None:
        return self.spiffe_id.namespace if self.spiffe_id else None

    def __str__(self) -> str:
        return str(self.spiffe_id) if self.spiffe_id else "anonymous"


ANONYMOUS = Peer(None)


@attrs.frozen
class TraceContext:
    """W3C trace context as carried in the envelope (``traceparent`` fields)."""

    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes
    flags: int = 1
    tracestate: str = ""

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id.hex()}-{self.span_id.hex()}-{self.flags:02x}"


#: The header a mirrored copy of a request carries: the service the original went to.
SHADOW_HEADER = "zmesh-shadow"


@attrs.frozen(slots=False)
class Message:
    """A received mesh message: what was said, by whom, and on which topic or method.

    ``peer`` is always the authenticated sender (never taken from the message
    itself). On a REP socket, :meth:`reply` answers this request.
    """

    frames: tuple[bytes, ...]
    peer: Peer = ANONYMOUS
    topic: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    message_id: int = 0
    method: str = ""
    status: StatusCode = StatusCode.OK
    trace: TraceContext | None = None
    deadline: float | None = None  # absolute time.time() seconds, None = none
    attempt: int = 0
    _replier: Callable[..., Any] | None = attrs.field(
        default=None, eq=False, repr=False, alias="replier"
    )
    # where a request's reply goes: its routing id on the REP socket's ROUTER
    _route: bytes = attrs.field(default=b"", eq=False, repr=False, alias="route")
    # the receiving socket's tracing, for process(): a SUB's or PULL's mesh
    _receiver: Any = attrs.field(default=None, eq=False, repr=False, alias="receiver")

    def process(self) -> AbstractContextManager[Any]:
        """``with msg.process():`` the CONSUMER span ``process {topic}`` of this message,
        current for the block (a call or publication made inside continues the trace),
        with an exception raised in the block recorded on it. Its parent is the context
        the message was sent in. Without tracing (no SDK, or the policy's
        ``telemetry.tracing`` off) it makes nothing and costs nothing.
        """
        from .telemetry.tracing import process_span

        return process_span(self)

    @property
    def shadow(self) -> bool:
        """A mirror's copy of a request (``traffic.<service>.mirror``): its reply is discarded.

        Marked by the ``zmesh-shadow`` header, which names the service the original went to
        (Envoy marks its copies by a ``-shadow`` suffix on the host instead).
        """
        return SHADOW_HEADER in self.headers

    @property
    def payload(self) -> bytes:
        """The payload as one bytes object (frames joined when there are several)."""
        if len(self.frames) == 1:
            return self.frames[0]
        return b"".join(self.frames)

    def reply(
        self,
        payload: bytes | Sequence[bytes] = b"",
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer this request (REP sockets only)."""
        if self._replier is None:
            from ._exceptions import MeshError

            raise MeshError(
                "this message is not a request: only messages received on a REP socket can be replied to"
            )
        self._replier(self, payload, headers)

    @classmethod
    def _received(
        cls,
        frames: tuple[bytes, ...],
        peer: Peer,
        topic: str | None,
        headers: Mapping[str, str],
        message_id: int,
        trace: TraceContext | None,
        method: str = "",
        deadline: float | None = None,
        attempt: int = 0,
        replier: Callable[..., Any] | None = None,
        route: bytes = b"",
        receiver: Any = None,
    ) -> Message:
        """The receive hot path's constructor: gives a bare instance its whole ``__dict__`` at
        once (a fifth of the cost of the generated ``__init__``, which sets each field
        through ``object.__setattr__``).

        Only valid while no field has a validator or converter, and every field is
        listed here (tests/test_models.py checks both).
        """
        msg = _new(cls)
        _set(
            msg,
            "__dict__",
            {
                "frames": frames,
                "peer": peer,
                "topic": topic,
                "headers": headers,
                "message_id": message_id,
                "method": method,
                "status": _OK,
                "trace": trace,
                "deadline": deadline,
                "attempt": attempt,
                "_replier": replier,
                "_route": route,
                "_receiver": receiver,
            },
        )
        return msg

    def reply_error(self, status: StatusCode, detail: str = "", *, retriable: bool = False) -> None:
        """Answer this request with a non-OK status (e.g. NOT_FOUND)."""
        if self._replier is None:
            from ._exceptions import MeshError

            raise MeshError(
                "this message is not a request: only messages received on a REP socket can be replied to"
            )
        self._replier(self, b"", status=status, detail=detail, retriable=retriable)


_new = object.__new__
_set = object.__setattr__
_OK = StatusCode.OK

#: The Python constructor of received messages, whichever is in use: the specification
#: of the compiled one (``_message.c``), which takes the same arguments.
py_received = Message._received
_message = _compiled.load("_message")
if _message is not None:
    _message.setup(Message, _OK)
    Message._received = staticmethod(_message.received)  # type: ignore[method-assign]

"""The envelope: the small binary header frame that every mesh message carries.

A mesh message is ``[envelope frame][payload frames...]``; in pub/sub the first frame is ``topic NUL envelope``.
This module turns an :class:`Envelope` into that frame and back, and nothing
else: no sockets, no clocks, no policy (a sans-I/O codec in h11's manner).
docs/protocol.md is the specification; this module docstring is its summary.

Rules this module keeps:

* The first byte is the protocol version (``1``), so a frame of another
  version is refused before anything else in it is read.
* A fixed 12-byte part (version, kind, flags, message id) is always present;
  every other field is optional, present only when its flag bit is set, and
  encoded in flag-bit order. An envelope whose optional fields are all at
  their defaults is exactly the 12 fixed bytes.
* :func:`decode` raises :class:`~zmeshlib.ProtocolError` and nothing else for
  any frame, whatever its bytes; ``reason`` says what was wrong (table below).
  It never reads past the frame and never trusts a length before checking it
  against the frame and the :class:`Limits`.
* :func:`encode` checks our own sends against the same limits, so what we send
  a peer with the same limits will accept.
* Integers are big-endian. Text is UTF-8. Headers travel as one UTF-8 block
  of NUL-terminated names and values (one decode and one split, not a loop);
  their order is the sender's and a name appears at most once.

Theory of operation. Decoding a minimal envelope is one
``Struct.unpack_from``, one tuple index for the kind and one test that the
flags are zero. Otherwise the optional parts are read in a straight line, each
behind ``if flags & BIT``, with explicit bounds checks before every slice (a
slice past the end would silently come back short). Encoding collects the
present parts into a list and joins it once. Errors take a slow path: when
encoding trips over a value (a negative id, a header value that is not a
``str``), :func:`_explain` re-checks the envelope field by field to name the
culprit, so the fast path pays nothing for good error messages.

The sockets' hot path skips the :class:`Envelope`: :func:`encode_request` packs
a request with one ``Struct`` cached per method and per set of present parts,
and :func:`decode_plain` reads the usual request (a method, a deadline, the
timeout) with one ``unpack_from`` and one text decode, walking the request's
parts only for the rarer shapes. Both answer exactly what :func:`encode` and
:func:`decode` would, and hand every other case to them; ``wire/_plain.c`` is
their compiled twin, held to the same answers.

Growing the format. Flag bits 9-14 are reserved and refused when set (reason
``flags``): a decoder could not know how long an unknown part is. New fields
go in the extension area (flag bit 15): type-length-value entries up to the
end of the frame, which a decoder that does not know a type skips, unless the
type's high bit (``0x8000``, *critical*) says it must refuse the frame
(reason ``extension``). A change that old peers must not misread takes a new
version byte.

The extensions this codec knows (docs/protocol.md, "Extension area"):

========  ===========  ======  =============================================================
type      field        value   why
========  ===========  ======  =============================================================
0x0001    timeout_ms   u32     the time left (ms) when the request was sent: a receiver whose
                               clock disagrees with the sender's can still tell how long the
                               caller waits, as gRPC's ``grpc-timeout``. Not critical: a
                               decoder that does not know it loses nothing it had before
                               (the absolute deadline is still there) and skips it.
========  ===========  ======  =============================================================

A known extension is read only from a value of exactly its length, and at most
once per frame (reason ``extension`` otherwise): a second timeout would let two
decoders read two different values from one frame. The encoder sends the
timeout extension only when ``timeout_ms`` is not 0, so the encoding stays
unique, and it is the only extension it sends.

=====================  ===============================================================
reason                 when (``ProtocolError.reason``)
=====================  ===============================================================
``empty``              the frame has no bytes
``too-large``          the frame exceeds ``max_envelope_bytes`` (or, encoding, a field
                       exceeds its length field)
``version``            the first byte is not a version this codec speaks (1)
``truncated``          the frame ends inside a part
``kind``               the kind byte is not 1-4
``flags``              a reserved flag bit (9-14) is set
``status``             the status code is not in the status table
``utf8``               a text field is not valid UTF-8 (or, encoding, not encodable)
``too-many-headers``   more headers than ``max_headers``
``header-too-large``   one header's name + value exceed ``max_header_bytes``
``header-name``        a header name is empty
``duplicate-header``   a header name appears twice
``header-block``       the header block is not ``count`` NUL-terminated name/value pairs
                       (encoding: a header name or value contains NUL)
``extension``          an extension the decoder does not know is marked critical, or a
                       known one has a value of the wrong length or appears twice
                       (the timeout: exactly 4 bytes, once)
``trailing-bytes``     bytes follow the last part and the extension flag is not set
``range``              encoding only: an integer does not fit its field, or a trace or
                       span id has the wrong length
``type``               encoding only: a field has the wrong Python type
=====================  ===============================================================

Unknown status codes are refused (``status``) rather than mapped to a catch-all:
a reply whose outcome we cannot name must not be mistaken for a known one, and
:class:`~zmeshlib.StatusCode` has no member to map it to.
"""

from __future__ import annotations

import enum
import struct
import types
from collections.abc import Mapping
from itertools import chain
from typing import Any, Final, Literal

import attrs

from .. import _compiled
from .._exceptions import ProtocolError
from .._models import StatusCode, TraceContext

__all__ = [
    "DEFAULT_LIMITS",
    "FIXED_SIZE",
    "NO_HEADERS",
    "PROTOCOL_VERSION",
    "Envelope",
    "Kind",
    "Limits",
    "PlainEnvelope",
    "PlainRequest",
    "decode",
    "decode_plain",
    "encode",
    "encode_minimal",
    "encode_publish",
]

PROTOCOL_VERSION: Final = 1


class Kind(enum.IntEnum):
    """What a message is; the envelope's second byte."""

    PUBLISH = 1
    REQUEST = 2
    REPLY = 3
    PUSH = 4


#: The headers of an envelope that has none (read-only, shared).
NO_HEADERS: Final[Mapping[str, str]] = types.MappingProxyType({})


@attrs.frozen(slots=False)
class Envelope:
    """The decoded envelope frame of one mesh message.

    Fields are not validated on construction; :func:`encode` checks them.
    ``headers`` is left out of the hash so that an envelope with a plain
    ``dict`` inside stays hashable.

    Not slotted, on purpose: :func:`decode` builds one per message by filling
    a fresh instance's ``__dict__`` from :data:`_DEFAULTS` (a third of the
    cost of the generated frozen ``__init__``, which sets each field through
    ``object.__setattr__``). That is equivalent only because no field has a
    validator, converter or factory; tests/wire checks this stays true.
    """

    kind: Kind
    message_id: int  # u64, unique per sender; a reply repeats its request's id
    method: str = ""  # request method, at most 255 UTF-8 bytes
    status: StatusCode = StatusCode.OK  # replies only
    deadline_ms: int = 0  # absolute unix time in ms, 0 = none
    attempt: int = 0  # retry attempt number, 0 = first try
    timeout_ms: int = 0  # u32, the time left in ms when sent (the timeout extension), 0 = none
    trace: TraceContext | None = None
    headers: Mapping[str, str] = attrs.field(default=NO_HEADERS, hash=False)
    detail: str = ""  # human explanation of a non-OK status
    policy: str = ""  # the authorization policy that denied (PERMISSION_DENIED)
    retriable: bool = False  # APPLICATION errors: may a retry succeed?


@attrs.frozen
class Limits:
    """Bounds on what a peer may make us parse or hold; checked on decode and encode.

    ``max_message_bytes`` bounds the payload frames of a whole message; the
    codec never sees those, the sockets enforce it.
    """

    max_envelope_bytes: int = 16 * 1024
    max_headers: int = 64
    max_header_bytes: int = 8 * 1024  # one header's name + value, UTF-8 bytes
    max_message_bytes: int = 16 * 1024 * 1024


DEFAULT_LIMITS: Final = Limits()

# Every field but kind and message_id, at its default: what decode starts from.
_DEFAULTS: Final[dict[str, object]] = {
    name: value
    for name, value in vars(Envelope(Kind.PUBLISH, 0)).items()
    if name not in ("kind", "message_id")
}
_new: Final = object.__new__

# -- layout (docs/protocol.md, "Layout") ---------------------------------------

_FIXED: Final = struct.Struct(">BBHQ")  # version, kind, flags, message id
FIXED_SIZE: Final = _FIXED.size  # 12
_U8: Final = struct.Struct(">B")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_TRACE: Final = struct.Struct(">16s8sBH")  # trace id, span id, trace flags, tracestate length
_HEADER_BLOCK: Final = struct.Struct(">HI")  # header count, block length
_EXT: Final = struct.Struct(">HH")  # extension type, value length
_EXT_TIMEOUT: Final = struct.Struct(">HHI")  # the whole timeout extension: type, 4, time left

F_METHOD: Final = 0x0001
F_STATUS: Final = 0x0002
F_DEADLINE: Final = 0x0004
F_ATTEMPT: Final = 0x0008
F_TRACE: Final = 0x0010
F_HEADERS: Final = 0x0020
F_DETAIL: Final = 0x0040
F_POLICY: Final = 0x0080
F_RETRIABLE: Final = 0x0100
F_RESERVED: Final = 0x7E00
F_EXTENSIONS: Final = 0x8000
EXT_CRITICAL: Final = 0x8000
EXT_TIMEOUT: Final = 0x0001
_TIMEOUT: Final = _EXT.pack(EXT_TIMEOUT, 4)  # what the timeout extension starts with

_MAX_U8: Final = 0xFF
_MAX_U16: Final = 0xFFFF
_MAX_U32: Final = 0xFFFF_FFFF
_MAX_U64: Final = 0xFFFF_FFFF_FFFF_FFFF

# Indexed by the kind byte: one lookup, no enum call, no range test.
_KIND_BY_BYTE: Final[tuple[Kind | None, ...]] = tuple(
    {int(k): k for k in Kind}.get(b) for b in range(256)
)
_STATUS_BY_CODE: Final[dict[int, StatusCode]] = {int(s): s for s in StatusCode}
_KINDS: Final = frozenset(Kind)


def _error(reason: str, message: str) -> ProtocolError:
    return ProtocolError(f"invalid envelope: {message} [{reason}]", reason=reason)


# -- decoding ------------------------------------------------------------------


def decode(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Parse one envelope frame; raise :class:`ProtocolError` (only) if it is not one."""
    if type(data) is not bytes:
        data = _to_bytes(data, limits)
    size = len(data)
    if size > limits.max_envelope_bytes:
        raise _error("too-large", f"{size} bytes, the limit is {limits.max_envelope_bytes}")
    try:
        version, kind_byte, flags, message_id = _FIXED.unpack_from(data)
    except struct.error:
        raise _short_fixed(data) from None
    if version != PROTOCOL_VERSION:
        raise _bad_version(version)
    kind = _KIND_BY_BYTE[kind_byte]
    if kind is None:
        raise _error("kind", f"unknown message kind {kind_byte}")
    if not flags:
        if size != FIXED_SIZE:
            raise _error("trailing-bytes", f"{size - FIXED_SIZE} bytes after the last part")
        # _blank_envelope(kind, message_id), inlined: the call would cost a quarter of it.
        env = _new(Envelope)
        fields = env.__dict__
        fields.update(_DEFAULTS)
        fields["kind"] = kind
        fields["message_id"] = message_id
        return env
    return _decode_parts(data, size, kind, flags, message_id, limits)


def _to_bytes(data: bytes | bytearray | memoryview, limits: Limits) -> bytes:
    # Check the size before copying, so an oversized buffer is never copied.
    view = memoryview(data)
    if view.nbytes > limits.max_envelope_bytes:
        raise _error("too-large", f"{view.nbytes} bytes, the limit is {limits.max_envelope_bytes}")
    return view.tobytes()


def _short_fixed(data: bytes) -> ProtocolError:
    # A frame shorter than the fixed part: say the most useful thing about it.
    if not data:
        return _error("empty", "the envelope frame is empty")
    if data[0] != PROTOCOL_VERSION:
        return _bad_version(data[0])
    return _error("truncated", f"{len(data)} bytes, the fixed part alone is {FIXED_SIZE}")


def _bad_version(version: int) -> ProtocolError:
    return _error(
        "version",
        f"protocol version {version}, this zmeshlib speaks version {PROTOCOL_VERSION}"
        " (upgrade the older side)",
    )


def _truncated(what: str) -> ProtocolError:
    return _error("truncated", f"the frame ends inside the {what}")


def _bad_utf8(what: str) -> ProtocolError:
    return _error("utf8", f"the {what} is not valid UTF-8")


def _blank_envelope(kind: Kind, message_id: int) -> Envelope:
    """``Envelope(kind, message_id)`` without the generated ``__init__`` (see Envelope)."""
    env = _new(Envelope)
    fields = env.__dict__
    fields.update(_DEFAULTS)
    fields["kind"] = kind
    fields["message_id"] = message_id
    return env


def _decode_parts(
    data: bytes, size: int, kind: Kind, flags: int, message_id: int, limits: Limits
) -> Envelope:
    if flags & F_RESERVED:
        raise _error("flags", f"reserved flag bits {flags & F_RESERVED:#06x} are set")
    env = _blank_envelope(kind, message_id)
    fields = env.__dict__  # the parts are written straight into the new envelope
    pos = FIXED_SIZE
    what = "method"  # the part being read, for the truncation message
    try:
        if flags & F_METHOD:
            n = data[pos]
            end = pos + 1 + n
            if end > size:
                raise _truncated(what)
            try:
                fields["method"] = str(data[pos + 1 : end], "utf-8")
            except UnicodeDecodeError:
                raise _bad_utf8(what) from None
            pos = end
        if flags & F_STATUS:
            what = "status"
            (code,) = _U16.unpack_from(data, pos)
            pos += 2
            status = _STATUS_BY_CODE.get(code)
            if status is None:
                raise _error("status", f"unknown status code {code}")
            fields["status"] = status
        if flags & F_DEADLINE:
            what = "deadline"
            (fields["deadline_ms"],) = _U64.unpack_from(data, pos)
            pos += 8
        if flags & F_ATTEMPT:
            what = "attempt"
            (fields["attempt"],) = _U16.unpack_from(data, pos)
            pos += 2
        if flags & F_TRACE:
            what = "trace context"
            trace_id, span_id, trace_flags, n = _TRACE.unpack_from(data, pos)
            pos += _TRACE.size
            end = pos + n
            if end > size:
                raise _truncated(what)
            try:
                tracestate = str(data[pos:end], "utf-8")
            except UnicodeDecodeError:
                raise _bad_utf8("tracestate") from None
            pos = end
            fields["trace"] = TraceContext(trace_id, span_id, trace_flags, tracestate)
        if flags & F_HEADERS:
            what = "headers"
            fields["headers"], pos = _decode_headers(data, pos, size, limits)
        if flags & F_DETAIL:
            what = "detail"
            fields["detail"], pos = _decode_text16(data, pos, size, what)
        if flags & F_POLICY:
            what = "policy"
            fields["policy"], pos = _decode_text16(data, pos, size, what)
        if flags & F_EXTENSIONS:
            what = "extensions"
            pos = _decode_extensions(data, pos, size, fields)
    except (struct.error, IndexError):
        raise _truncated(what) from None
    if pos != size:
        raise _error("trailing-bytes", f"{size - pos} bytes after the last part")
    if flags & F_RETRIABLE:
        fields["retriable"] = True
    return env


def _decode_text16(data: bytes, pos: int, size: int, what: str) -> tuple[str, int]:
    (n,) = _U16.unpack_from(data, pos)
    pos += 2
    end = pos + n
    if end > size:
        raise _truncated(what)
    try:
        return str(data[pos:end], "utf-8"), end
    except UnicodeDecodeError:
        raise _bad_utf8(what) from None


def _decode_headers(data: bytes, pos: int, size: int, limits: Limits) -> tuple[dict[str, str], int]:
    count, n = _HEADER_BLOCK.unpack_from(data, pos)
    pos += _HEADER_BLOCK.size
    if count > limits.max_headers:
        raise _error("too-many-headers", f"{count} headers, the limit is {limits.max_headers}")
    end = pos + n
    if end > size:
        raise _truncated("headers")
    try:
        items = str(data[pos:end], "utf-8").split("\0")
    except UnicodeDecodeError:
        raise _bad_utf8("headers") from None
    # A well-formed block is NUL-terminated name, value pairs: 2 * count NULs.
    if len(items) != 2 * count + 1 or items.pop():
        raise _error("header-block", f"the header block does not hold {count} NUL-terminated pairs")
    pairs = iter(items)
    headers = dict(zip(pairs, pairs))  # noqa: B905 (even length, see above; strict= costs)
    _check_headers(headers, count, n - 2 * count, limits)
    return headers, end


def _check_headers(headers: Mapping[str, str], count: int, text_bytes: int, limits: Limits) -> None:
    """The rules on header names and sizes; ``text_bytes`` is all names and values together."""
    if len(headers) != count:
        raise _error("duplicate-header", "a header name appears more than once")
    if "" in headers:
        raise _error("header-name", "a header name is empty")
    max_bytes = limits.max_header_bytes
    if text_bytes <= max_bytes:  # then no single header can be over: skip the loop
        return
    for name, value in headers.items():
        n = len(name.encode()) + len(value.encode())
        if n > max_bytes:
            raise _error(
                "header-too-large", f"header {name!r} is {n} bytes, the limit is {max_bytes}"
            )


def _decode_extensions(data: bytes, pos: int, size: int, fields: dict[str, Any]) -> int:
    """Read the known extensions into ``fields``, skip the others, refuse unknown critical ones."""
    timeout_seen = False
    while pos < size:
        ext_type, n = _EXT.unpack_from(data, pos)
        value_at = pos + _EXT.size
        pos = value_at + n
        if pos > size:
            raise _truncated("extensions")
        if ext_type == EXT_TIMEOUT:
            if n != 4:
                raise _error(
                    "extension", f"the timeout extension (0x0001) holds {n} bytes, it must hold 4"
                )
            if timeout_seen:
                raise _error("extension", "the timeout extension (0x0001) appears twice")
            timeout_seen = True
            (fields["timeout_ms"],) = _U32.unpack_from(data, value_at)
        elif ext_type & EXT_CRITICAL:
            raise _error("extension", f"unknown critical extension {ext_type:#06x}")
    return pos


#: The parts the hot path's request shape may hold (the extension area: the timeout only).
_PLAIN_REQUEST_PARTS: Final = F_METHOD | F_DEADLINE | F_ATTEMPT | F_EXTENSIONS
# The flags of each request shape encode_request packs (all with a method and a deadline).
_REQ_D: Final = F_METHOD | F_DEADLINE
_REQ_DT: Final = F_METHOD | F_DEADLINE | F_EXTENSIONS
_REQ_DA: Final = F_METHOD | F_DEADLINE | F_ATTEMPT
_REQ_DAT: Final = F_METHOD | F_DEADLINE | F_ATTEMPT | F_EXTENSIONS
_REQUEST: Final = Kind.REQUEST  # a module global: the enum's class attribute costs more
_TIMEOUT_U32: Final = int.from_bytes(_TIMEOUT, "big")  # the timeout extension's head, as a u32
_DEADLINE_TIMEOUT: Final = struct.Struct(">QII")  # deadline, the timeout extension's head, value
_USUAL_REQUESTS: Final = frozenset((_REQ_D, _REQ_DT))  # method + deadline (+ timeout)
#: The minimal envelope of a publish, a reply or a push: ``(kind, message_id, "", 0)``.
PlainEnvelope = tuple[Literal[Kind.PUBLISH, Kind.REPLY, Kind.PUSH], int, str, int]
#: A request: ``(Kind.REQUEST, message_id, method, deadline_ms, timeout_ms, attempt)``.
PlainRequest = tuple[Literal[Kind.REQUEST], int, str, int, int, int]


def decode_plain(
    data: bytes, limits: Limits = DEFAULT_LIMITS
) -> PlainEnvelope | PlainRequest | None:
    """The hot path's two shapes as tuples, no Envelope built; None: ask :func:`decode`.

    ==========================  ===================================================
    the frame                   the answer
    ==========================  ===================================================
    kind REQUEST, no part but   ``(REQUEST, message_id, method, deadline_ms,
    method, deadline, attempt,  timeout_ms, attempt)``, an absent part at its
    timeout extension           default (what :func:`encode_request` makes)
    another kind, no part       ``(kind, message_id, "", 0)`` (a publish, a push,
                                an OK reply)
    anything else               None
    ==========================  ===================================================

    The kind alone says the length, so a caller that has tested it unpacks
    without testing ``len``. Whatever it returns, :func:`decode` would return
    the same fields for, every other field at its default; anything else,
    malformed frames included, is None, and :func:`decode` then judges it (and
    names what is wrong). An extension area holding anything but one timeout
    extension (another type, a second timeout) is left to :func:`decode` too.
    """
    if type(data) is not bytes:
        return None
    size = len(data)
    if size < FIXED_SIZE or size > limits.max_envelope_bytes:
        return None
    version, kind_byte, flags, message_id = _FIXED.unpack_from(data)
    kind = _KIND_BY_BYTE[kind_byte]
    if version != PROTOCOL_VERSION or kind is None:
        return None
    if kind is not _REQUEST:
        return (kind, message_id, "", 0) if not flags and size == FIXED_SIZE else None
    if flags in _USUAL_REQUESTS and size > FIXED_SIZE:
        # The usual requests in a straight line: a method, a deadline and, with the extension
        # flag, exactly one timeout extension. ``head`` is that extension's head as read, or
        # as it must be; any other size or head is left to the walk below.
        end = FIXED_SIZE + 1 + data[FIXED_SIZE]
        if size == end + 8 and flags == _REQ_D:
            deadline_ms, head, timeout_ms = _U64.unpack_from(data, end)[0], _TIMEOUT_U32, 0
        elif size == end + 16 and flags == _REQ_DT:
            deadline_ms, head, timeout_ms = _DEADLINE_TIMEOUT.unpack_from(data, end)
        else:
            head = None
        if head == _TIMEOUT_U32:
            try:
                method = str(data[FIXED_SIZE + 1 : end], "utf-8")
            except UnicodeDecodeError:
                return None
            return (_REQUEST, message_id, method, deadline_ms, timeout_ms, 0)
    if flags & ~_PLAIN_REQUEST_PARTS:
        return None
    pos = FIXED_SIZE
    method = ""
    deadline_ms = timeout_ms = attempt = 0
    if flags & F_METHOD:
        if pos == size:
            return None
        end = pos + 1 + data[pos]
        if end > size:
            return None
        try:
            method = str(data[pos + 1 : end], "utf-8")
        except UnicodeDecodeError:
            return None
        pos = end
    if flags & F_DEADLINE:
        if pos + 8 > size:
            return None
        (deadline_ms,) = _U64.unpack_from(data, pos)
        pos += 8
    if flags & F_ATTEMPT:
        if pos + 2 > size:
            return None
        (attempt,) = _U16.unpack_from(data, pos)
        pos += 2
    if pos != size:  # then the extension area, which must be one timeout extension
        if not flags & F_EXTENSIONS or size != pos + 8 or data[pos : pos + 4] != _TIMEOUT:
            return None
        (timeout_ms,) = _U32.unpack_from(data, pos + 4)
    return (_REQUEST, message_id, method, deadline_ms, timeout_ms, attempt)


# -- encoding ------------------------------------------------------------------


def encode_minimal(kind: Kind, message_id: int) -> bytes:
    """``encode(Envelope(kind, message_id))``: the 12 fixed bytes, no optional part."""
    try:
        if type(kind) is Kind:  # an identity test: hashing an enum member costs more than packing
            return _FIXED.pack(PROTOCOL_VERSION, kind, 0, message_id)
    except (struct.error, TypeError):
        pass
    raise _explain(Envelope(kind, message_id), DEFAULT_LIMITS)


def encode_publish(message_id: int) -> bytes:
    """``encode(Envelope(Kind.PUBLISH, message_id))``, the sockets' hottest case, 4x faster."""
    try:
        return _FIXED.pack(PROTOCOL_VERSION, 1, 0, message_id)
    except struct.error:
        raise _explain(Envelope(Kind.PUBLISH, message_id), DEFAULT_LIMITS) from None


def encode_request(
    message_id: int, method: str, deadline_ms: int, timeout_ms: int = 0, attempt: int = 0
) -> bytes:
    """``encode(Envelope(Kind.REQUEST, message_id, method=..., deadline_ms=..., timeout_ms=...,
    attempt=...))``.

    The sockets' usual request (a method, a deadline, the time left, a retry's
    attempt number, nothing else), without building an Envelope: one ``pack``
    of a layout cached per method and per set of present parts. Anything out of
    the fast path's range (no deadline, a value out of range or of another
    type) takes ``encode``, which names what is wrong.
    """
    try:
        layout = _REQUEST_LAYOUTS.get(method)
        if layout is None:
            layout = _request_layout(method)
        if layout is not None and 0 < deadline_ms <= _MAX_U64 and 0 <= message_id <= _MAX_U64:
            part = layout[0]  # each pack: version 1, kind REQUEST (2), flags, id, method, ...
            if not attempt:
                if not timeout_ms:
                    return layout[1](1, 2, _REQ_D, message_id, part, deadline_ms)
                if 0 < timeout_ms <= _MAX_U32:
                    return layout[2](
                        1, 2, _REQ_DT, message_id, part, deadline_ms, _TIMEOUT, timeout_ms
                    )
            elif 0 < attempt <= _MAX_U16:
                if not timeout_ms:
                    return layout[3](1, 2, _REQ_DA, message_id, part, deadline_ms, attempt)
                if 0 < timeout_ms <= _MAX_U32:
                    return layout[4](
                        1, 2, _REQ_DAT, message_id, part, deadline_ms, attempt, _TIMEOUT, timeout_ms
                    )
    except (TypeError, struct.error):  # a value of another type (or an unhashable method)
        pass
    env = Envelope(
        Kind.REQUEST,
        message_id,
        method=method,
        deadline_ms=deadline_ms,
        attempt=attempt,
        timeout_ms=timeout_ms,
    )
    return encode(env)


#: method -> (its METHOD part, then the pack of each shape: deadline; + timeout; + attempt;
#: + attempt + timeout). A method only ``encode`` can judge is never cached.
_REQUEST_LAYOUTS: dict[str, tuple[bytes, Any, Any, Any, Any]] = {}


def _request_layout(method: str) -> tuple[bytes, Any, Any, Any, Any] | None:
    """The cached layouts of a request calling ``method``; None when ``encode`` must judge it."""
    try:
        raw = method.encode()
    except (UnicodeError, AttributeError):
        return None
    if not 0 < len(raw) <= _MAX_U8:
        return None
    head = f">BBHQ{1 + len(raw)}sQ"  # fixed part, method part, deadline
    layout = (
        bytes((len(raw),)) + raw,
        struct.Struct(head).pack,
        struct.Struct(head + "4sI").pack,  # + the timeout extension (its head, the time left)
        struct.Struct(head + "H").pack,  # + attempt
        struct.Struct(head + "H4sI").pack,  # + attempt, the timeout extension
    )
    if len(_REQUEST_LAYOUTS) < 1024:  # methods are few; a caller inventing names gets no cache
        _REQUEST_LAYOUTS[method] = layout
    return layout


def encode(env: Envelope, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Serialize ``env``; raise :class:`ProtocolError` if a peer with ``limits`` would refuse it."""
    kind = env.kind
    parts: list[bytes] = [b""]  # [0] becomes the fixed part once the flags are known
    flags = 0
    try:
        if kind not in _KINDS:
            raise _explain(env, limits)
        if env.method:
            raw = env.method.encode()
            if len(raw) > _MAX_U8:
                raise _error("too-large", f"the method is {len(raw)} UTF-8 bytes, at most 255")
            parts += (_U8.pack(len(raw)), raw)
            flags = F_METHOD
        status = env.status
        if status:
            if status not in _STATUS_BY_CODE:
                raise _explain(env, limits)
            parts.append(_U16.pack(status))
            flags |= F_STATUS
        if env.deadline_ms:
            parts.append(_U64.pack(env.deadline_ms))
            flags |= F_DEADLINE
        if env.attempt:
            parts.append(_U16.pack(env.attempt))
            flags |= F_ATTEMPT
        trace = env.trace
        if trace is not None:
            if len(trace.trace_id) != 16 or len(trace.span_id) != 8:
                raise _explain(env, limits)
            raw = trace.tracestate.encode()
            if len(raw) > _MAX_U16:
                raise _error("too-large", f"the tracestate is {len(raw)} bytes, at most 65535")
            parts += (_TRACE.pack(trace.trace_id, trace.span_id, trace.flags, len(raw)), raw)
            flags |= F_TRACE
        if env.headers:
            _encode_headers(parts, env.headers, limits)
            flags |= F_HEADERS
        if env.detail:
            _encode_text16(parts, env.detail, "detail")
            flags |= F_DETAIL
        if env.policy:
            _encode_text16(parts, env.policy, "policy")
            flags |= F_POLICY
        if env.retriable:
            flags |= F_RETRIABLE
        if env.timeout_ms:
            parts.append(_EXT_TIMEOUT.pack(EXT_TIMEOUT, 4, env.timeout_ms))
            flags |= F_EXTENSIONS
        parts[0] = _FIXED.pack(PROTOCOL_VERSION, kind, flags, env.message_id)
    except (struct.error, TypeError, AttributeError, UnicodeError):
        raise _explain(env, limits) from None
    data = b"".join(parts)
    if len(data) > limits.max_envelope_bytes:
        raise _error("too-large", f"{len(data)} bytes, the limit is {limits.max_envelope_bytes}")
    return data


def _encode_text16(parts: list[bytes], text: str, what: str) -> None:
    raw = text.encode()
    if len(raw) > _MAX_U16:
        raise _error("too-large", f"the {what} is {len(raw)} UTF-8 bytes, at most 65535")
    parts += (_U16.pack(len(raw)), raw)


def _encode_headers(parts: list[bytes], headers: Mapping[str, str], limits: Limits) -> None:
    count = len(headers)
    if count > limits.max_headers:
        raise _error("too-many-headers", f"{count} headers, the limit is {limits.max_headers}")
    text = "\0".join(chain.from_iterable(headers.items())) + "\0"
    if text.count("\0") != 2 * count:
        raise _error("header-block", "a header name or value contains NUL (U+0000)")
    raw = text.encode()
    if len(raw) > _MAX_U32:
        raise _error("too-large", f"the header block is {len(raw)} bytes")
    _check_headers(headers, count, len(raw) - 2 * count, limits)
    parts += (_HEADER_BLOCK.pack(count, len(raw)), raw)


def _explain(env: Envelope, limits: Limits) -> ProtocolError:
    """Find the field that made encoding fail; slow, runs only on that failure."""
    if not isinstance(env.kind, int) or env.kind not in _KINDS:
        return _error("kind", f"kind {env.kind!r} is not a Kind")
    if env.trace is not None and not isinstance(env.trace, TraceContext):
        return _error("type", f"trace is {type(env.trace).__name__}, not a TraceContext")
    checks: list[tuple[str, object, int]] = [
        ("message_id", env.message_id, _MAX_U64),
        ("deadline_ms", env.deadline_ms, _MAX_U64),
        ("attempt", env.attempt, _MAX_U16),
        ("timeout_ms", env.timeout_ms, _MAX_U32),
    ]
    if env.trace is not None:
        checks.append(("trace flags", env.trace.flags, _MAX_U8))
    for what, value, top in checks:
        if not isinstance(value, int):
            return _error("type", f"{what} is {type(value).__name__}, not int")
        if not 0 <= value <= top:
            return _error("range", f"{what} {value} is outside 0..{top}")
    if not isinstance(env.status, int) or env.status not in _STATUS_BY_CODE:
        return _error("status", f"status {env.status!r} is not a StatusCode")
    texts: list[tuple[str, object]] = [
        ("method", env.method),
        ("detail", env.detail),
        ("policy", env.policy),
    ]
    if env.trace is not None:
        ids = (("trace id", env.trace.trace_id, 16), ("span id", env.trace.span_id, 8))
        for what, ident, n in ids:
            if not isinstance(ident, bytes):
                return _error("type", f"the {what} is {type(ident).__name__}, not bytes")
            if len(ident) != n:
                return _error("range", f"the {what} is {len(ident)} bytes, it must be {n}")
        texts.append(("tracestate", env.trace.tracestate))
    if not isinstance(env.headers, Mapping):
        return _error("type", f"headers is {type(env.headers).__name__}, not a mapping")
    for name, value in env.headers.items():
        texts += ((f"header name {name!r}", name), (f"header {name!r}", value))
    for what, text in texts:
        if not isinstance(text, str):
            return _error("type", f"the {what} is {type(text).__name__}, not str")
        try:
            text.encode()
        except UnicodeError:
            return _error("utf8", f"the {what} cannot be encoded as UTF-8")
    return _error("malformed", f"cannot encode {env!r}")


# -- the compiled hot path ----------------------------------------------------------

#: The Python implementations, whichever is in use: the specification the compiled ones
#: are tested against, and their fallback for anything but the clean case.
py_decode_plain, py_encode_minimal, py_encode_publish, py_encode_request = (
    decode_plain,
    encode_minimal,
    encode_publish,
    encode_request,
)


def _bind(module: Any) -> Any:
    """Hand the compiled module what it falls back on and the format's constants."""
    module.setup(
        tuple(Kind(byte) for byte in range(1, 5)),
        DEFAULT_LIMITS,
        py_decode_plain,
        py_encode_minimal,
        py_encode_publish,
        py_encode_request,
        PROTOCOL_VERSION,
        (F_METHOD, F_DEADLINE, F_ATTEMPT, F_EXTENSIONS, EXT_TIMEOUT),
    )
    return module


_accelerated = _compiled.load("wire._plain")
#: True when the compiled hot-path functions are in use (the same answers, faster).
COMPILED = _accelerated is not None
if _accelerated is not None:
    _bind(_accelerated)
    decode_plain = _accelerated.decode_plain
    encode_minimal = _accelerated.encode_minimal
    encode_publish = _accelerated.encode_publish
    encode_request = _accelerated.encode_request

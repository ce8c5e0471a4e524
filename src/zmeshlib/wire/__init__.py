"""The zmeshlib wire format: the envelope frame of every mesh message (docs/protocol.md)."""

from .envelope import (
    DEFAULT_LIMITS,
    FIXED_SIZE,
    NO_HEADERS,
    PROTOCOL_VERSION,
    Envelope,
    Kind,
    Limits,
    PlainEnvelope,
    PlainRequest,
    decode,
    decode_plain,
    encode,
    encode_minimal,
    encode_publish,
    encode_request,
)

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
    "encode_request",
]

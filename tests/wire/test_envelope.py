"""Targeted tests of the envelope codec: each rule of docs/protocol.md, one by one."""

from __future__ import annotations

import itertools
import struct

import attrs
import pytest

from zmeshlib._exceptions import MeshError, ProtocolError
from zmeshlib._models import StatusCode, TraceContext
from zmeshlib.wire import (
    DEFAULT_LIMITS,
    FIXED_SIZE,
    Envelope,
    Kind,
    Limits,
    decode,
    encode,
    encode_minimal,
    encode_publish,
    encode_request,
)

TRACE = TraceContext(bytes(range(16)), bytes(range(8)), 1, "vendor=x")


def fixed(kind: int = 1, flags: int = 0, message_id: int = 42, version: int = 1) -> bytes:
    return struct.pack(">BBHQ", version, kind, flags, message_id)


def u16_text(raw: bytes) -> bytes:
    return struct.pack(">H", len(raw)) + raw


def header_block(count: int, raw: bytes) -> bytes:
    return struct.pack(">HI", count, len(raw)) + raw


def reason_of(data: bytes | memoryview, limits: Limits = DEFAULT_LIMITS) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(data, limits)
    assert isinstance(info.value, MeshError)
    return info.value.reason


def encode_reason(env: Envelope, limits: Limits = DEFAULT_LIMITS) -> str:
    with pytest.raises(ProtocolError) as info:
        encode(env, limits)
    return info.value.reason


# -- the fixed part ------------------------------------------------------------


def test_minimal_envelope_is_the_twelve_fixed_bytes() -> None:
    data = encode(Envelope(Kind.PUBLISH, 0x0102030405060708))
    assert data == bytes.fromhex("0101 0000 0102030405060708")
    assert len(data) == FIXED_SIZE


def test_fast_paths_match_encode() -> None:
    for message_id in (0, 1, 2**63, 2**64 - 1):
        assert encode_publish(message_id) == encode(Envelope(Kind.PUBLISH, message_id))
        for kind in Kind:
            assert encode_minimal(kind, message_id) == encode(Envelope(kind, message_id))
        for method in ("x", "charge", "é" * 127, "m" * 255, "", "m" * 256):
            for deadline, timeout, attempt in itertools.product(
                (0, 1, 2**63), (0, 1, 2**32 - 1, 2**32), (0, 1, 2**16 - 1, 2**16)
            ):
                env = Envelope(
                    Kind.REQUEST,
                    message_id,
                    method=method,
                    deadline_ms=deadline,
                    timeout_ms=timeout,
                    attempt=attempt,
                )
                try:
                    expected = encode(env)
                except ProtocolError as e:
                    with pytest.raises(ProtocolError) as info:
                        encode_request(message_id, method, deadline, timeout, attempt)
                    assert info.value.reason == e.reason
                else:
                    assert (
                        encode_request(message_id, method, deadline, timeout, attempt) == expected
                    )
                    by_name = encode_request(
                        message_id, method, deadline, attempt=attempt, timeout_ms=timeout
                    )
                    assert by_name == expected
                    if not (timeout or attempt):  # the three-argument call of old
                        assert encode_request(message_id, method, deadline) == expected


@pytest.mark.parametrize(
    ("args", "reason", "names"),
    [
        ((1.0, "m", 5), "type", "message_id"),
        (("1", "m", 5), "type", "message_id"),
        ((1, "m", 5.0), "type", "deadline_ms"),
        ((1, "m", 5, "7"), "type", "timeout_ms"),
        ((1, "m", 5, 1, 2.5), "type", "attempt"),
        ((1, ["m"], 5), "type", "method"),
        ((1, b"m", 5), "type", "method"),
        ((1, "m", 5, -1), "range", "timeout_ms"),
        ((1, "m", 5, 2**32), "range", "timeout_ms"),
        ((1, "m", 5, 1, 2**16), "range", "attempt"),
        ((1, "\ud800", 5, 1), "utf8", "method"),
    ],
)
def test_encode_request_names_the_bad_argument(
    args: tuple[object, ...], reason: str, names: str
) -> None:
    with pytest.raises(ProtocolError, match=names) as info:
        encode_request(*args)  # type: ignore[arg-type]
    assert info.value.reason == reason


@pytest.mark.parametrize("bad", [-1, 2**64])
def test_fast_paths_refuse_out_of_range_ids(bad: int) -> None:
    with pytest.raises(ProtocolError, match="message_id") as info:
        encode_publish(bad)
    assert info.value.reason == "range"
    with pytest.raises(ProtocolError) as info:
        encode_minimal(Kind.PUSH, bad)
    assert info.value.reason == "range"
    with pytest.raises(ProtocolError) as info:
        encode_minimal(9, 1)  # type: ignore[arg-type]
    assert info.value.reason == "kind"


def test_decoded_minimal_envelope_is_a_normal_envelope() -> None:
    # decode builds envelopes without __init__: that is only right while every field has a
    # plain default and no validator or converter. This test fails the day that changes.
    for field in attrs.fields(Envelope):
        assert field.validator is None and field.converter is None, field.name
        assert not isinstance(field.default, attrs.Factory), field.name  # type: ignore[arg-type]
    for kind in Kind:
        built = Envelope(kind, 99)
        got = decode(encode(built))
        assert vars(got) == vars(built)
        assert got == built and hash(got) == hash(built)
        assert type(got.kind) is Kind and type(got.status) is StatusCode


def test_empty_frame() -> None:
    assert reason_of(b"") == "empty"


@pytest.mark.parametrize(
    "data", [b"\x00", b"\x02", b"\xff" * 40, fixed(version=2), fixed(version=0)]
)
def test_unknown_version_is_detected_from_the_first_byte(data: bytes) -> None:
    assert reason_of(data) == "version"


def test_short_frame_of_our_version_is_truncated() -> None:
    assert reason_of(b"\x01") == "truncated"
    assert reason_of(fixed()[:-1]) == "truncated"


@pytest.mark.parametrize("kind", [0, 5, 255])
def test_unknown_kind(kind: int) -> None:
    assert reason_of(fixed(kind=kind)) == "kind"


@pytest.mark.parametrize("bit", range(9, 15))
def test_reserved_flag_bits_are_refused(bit: int) -> None:
    assert reason_of(fixed(flags=1 << bit)) == "flags"


@pytest.mark.parametrize(
    "data",
    [
        fixed() + b"\x00",
        fixed(flags=0x0100) + b"\x00",
        encode(Envelope(Kind.REQUEST, 1, "m")) + b"x",
    ],
)
def test_trailing_bytes(data: bytes) -> None:
    assert reason_of(data) == "trailing-bytes"


def test_buffers_decode_like_bytes() -> None:
    env = Envelope(Kind.REQUEST, 5, method="charge", trace=TRACE, headers={"a": "b"})
    data = encode(env)
    framed = b"xx" + data + b"yy"
    assert decode(memoryview(framed)[2:-2]) == env
    assert decode(bytearray(data)) == env
    assert reason_of(memoryview(data), Limits(max_envelope_bytes=len(data) - 1)) == "too-large"


# -- optional parts --------------------------------------------------------------


def test_status_codes_round_trip_with_their_grpc_numbers() -> None:
    for status in StatusCode:
        data = encode(Envelope(Kind.REPLY, 1, status=status))
        if status is StatusCode.OK:
            assert data == fixed(kind=3, message_id=1)  # OK is the absence of a status part
        else:
            assert data == fixed(kind=3, flags=0x0002, message_id=1) + struct.pack(">H", status)
        assert decode(data).status is status


@pytest.mark.parametrize("code", [2, 6, 15, 99, 65535])
def test_unknown_status_code_is_refused(code: int) -> None:
    assert reason_of(fixed(kind=3, flags=0x0002) + struct.pack(">H", code)) == "status"


@pytest.mark.parametrize(
    ("flags", "body"),
    [
        (0x0001, b"\x02\xc3\x28"),  # method
        (0x0040, u16_text(b"\xff")),  # detail
        (0x0080, u16_text(b"ok\xe2\x82")),  # policy, cut inside a character
        (0x0010, bytes(24) + b"\x01" + u16_text(b"\xc0\xaf")),  # tracestate, overlong form
        (0x0020, header_block(1, b"k\x00\xed\xa0\x80\x00")),  # header value, a surrogate
    ],
)
def test_bad_utf8(flags: int, body: bytes) -> None:
    assert reason_of(fixed(flags=flags) + body) == "utf8"


def test_method_length_bounds() -> None:
    longest = "é" * 127 + "x"  # 255 UTF-8 bytes
    assert decode(encode(Envelope(Kind.REQUEST, 1, method=longest))).method == longest
    assert encode_reason(Envelope(Kind.REQUEST, 1, method=longest + "x")) == "too-large"


def test_text_fields_keep_unicode() -> None:
    env = Envelope(Kind.REPLY, 1, status=StatusCode.NOT_FOUND, detail="naïve 🚀", policy="règle")
    assert decode(encode(env)) == env


# -- headers -----------------------------------------------------------------------


def test_header_block_layout() -> None:
    data = encode(Envelope(Kind.PUSH, 1, headers={"a": "1", "bc": ""}))
    assert data == fixed(kind=4, flags=0x0020, message_id=1) + header_block(
        2, b"a\x001\x00bc\x00\x00"
    )


def test_too_many_headers() -> None:
    limits = Limits(max_headers=3)
    many = {f"h{i}": "v" for i in range(4)}
    assert encode_reason(Envelope(Kind.PUBLISH, 1, headers=many), limits) == "too-many-headers"
    data = encode(Envelope(Kind.PUBLISH, 1, headers=many))
    assert reason_of(data, limits) == "too-many-headers"
    # The count is checked before the block is read: a huge claimed count costs nothing.
    assert reason_of(fixed(flags=0x0020) + struct.pack(">HI", 65535, 0)) == "too-many-headers"


def test_header_size_limit_counts_name_and_value_bytes() -> None:
    limits = Limits(max_header_bytes=10)
    fits = Envelope(Kind.PUBLISH, 1, headers={"name": "é" * 3, "other": "x" * 5})  # 4+6, 5+5
    assert decode(encode(fits, limits), limits) == fits
    over = Envelope(Kind.PUBLISH, 1, headers={"name": "é" * 3 + "x"})  # 4 + 7
    assert encode_reason(over, limits) == "header-too-large"
    assert reason_of(encode(over), limits) == "header-too-large"


def test_header_names_must_not_be_empty() -> None:
    assert encode_reason(Envelope(Kind.PUBLISH, 1, headers={"": "v"})) == "header-name"
    assert reason_of(fixed(flags=0x0020) + header_block(1, b"\x00v\x00")) == "header-name"


def test_duplicate_header_names_are_refused() -> None:
    block = header_block(2, b"region\x00eu\x00region\x00us\x00")
    assert reason_of(fixed(flags=0x0020) + block) == "duplicate-header"


@pytest.mark.parametrize(
    "block",
    [
        header_block(2, b"a\x001\x00"),  # fewer pairs than counted
        header_block(1, b"a\x001\x00b\x002\x00"),  # more
        header_block(1, b"a\x001"),  # value not terminated
        header_block(1, b"a\x00\x001\x00"),  # a NUL inside a value shifts the pairs
    ],
)
def test_malformed_header_block(block: bytes) -> None:
    assert reason_of(fixed(flags=0x0020) + block) == "header-block"


@pytest.mark.parametrize("headers", [{"a\0b": "v"}, {"k": "v\0"}])
def test_nul_in_headers_is_refused_on_encode(headers: dict[str, str]) -> None:
    assert encode_reason(Envelope(Kind.PUBLISH, 1, headers=headers)) == "header-block"


def test_decoded_envelope_with_headers_is_hashable() -> None:
    env = decode(encode(Envelope(Kind.PUBLISH, 1, headers={"k": "v"})))
    assert hash(env) == hash(Envelope(Kind.PUBLISH, 1, headers={"other": "x"}))
    assert env == Envelope(Kind.PUBLISH, 1, headers={"k": "v"})


# -- extensions ----------------------------------------------------------------------


def ext(ext_type: int, value: bytes) -> bytes:
    return struct.pack(">HH", ext_type, len(value)) + value


def test_unknown_extensions_are_skipped() -> None:
    body = u16_text(b"why") + ext(0x0002, b"future") + ext(0x7FFF, b"") + ext(0x0042, b"\x00" * 9)
    env = decode(fixed(kind=3, flags=0x0040 | 0x8000) + body)
    assert env == Envelope(Kind.REPLY, 42, detail="why")
    assert decode(fixed(flags=0x8000)) == Envelope(Kind.PUBLISH, 42)  # an empty area is fine


def test_unknown_critical_extension_is_refused() -> None:
    data = fixed(flags=0x8000) + ext(0x0002, b"ok") + ext(0x8001, b"must-understand")
    assert reason_of(data) == "extension"


@pytest.mark.parametrize(
    "tail",
    [b"\x00", b"\x00\x01\x00", ext(2, b"abc")[:-1], ext(1, b"\x00\x00\x05\xdc")[:-1]],
)
def test_cut_extension_is_truncated(tail: bytes) -> None:
    assert reason_of(fixed(flags=0x8000) + tail) == "truncated"


# -- the timeout extension (type 0x0001) -------------------------------------------------


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def test_timeout_travels_as_a_non_critical_extension() -> None:
    env = Envelope(Kind.REQUEST, 42, method="m", deadline_ms=7, timeout_ms=1500)
    data = encode(env)
    # fixed part, METHOD, DEADLINE, then the extension area: type 0x0001, length 4, the value
    assert data == fixed(kind=2, flags=0x8005) + b"\x01m" + struct.pack(">Q", 7) + ext(1, u32(1500))
    assert not 0x0001 & 0x8000  # not critical
    assert decode(data) == env
    # no timeout, no extension area: what encoders without the field send, byte for byte
    assert encode(attrs.evolve(env, timeout_ms=0)) == fixed(kind=2, flags=0x0005) + data[12:-8]


def test_timeout_follows_every_other_part() -> None:
    env = Envelope(
        Kind.REQUEST, 1, method="m", attempt=2, trace=TRACE, headers={"k": "v"}, timeout_ms=9
    )
    data = encode(env)
    assert data.endswith(ext(1, u32(9)))
    assert struct.unpack_from(">H", data, 2)[0] == 0x0001 | 0x0008 | 0x0010 | 0x0020 | 0x8000


def test_a_decoder_that_does_not_know_the_timeout_skips_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The format's rule for growing: what a decoder without the field makes of a frame with it.
    from zmeshlib.wire import envelope

    env = Envelope(Kind.REQUEST, 5, method="charge", deadline_ms=1_700_000_000_000, attempt=1)
    data = encode(attrs.evolve(env, timeout_ms=250))
    monkeypatch.setattr(envelope, "EXT_TIMEOUT", 0x7FFE)  # now type 0x0001 is unknown here
    assert decode(data) == env


def test_timeout_bounds() -> None:
    for timeout in (1, 2**32 - 1):
        env = Envelope(Kind.REQUEST, 1, timeout_ms=timeout)
        assert decode(encode(env)).timeout_ms == timeout
    assert encode_reason(Envelope(Kind.REQUEST, 1, timeout_ms=2**32)) == "range"


def test_a_present_timeout_of_zero_reads_as_none() -> None:
    env = decode(fixed(kind=2, flags=0x8000) + ext(1, u32(0)))
    assert env == Envelope(Kind.REQUEST, 42)


def test_timeout_is_found_among_unknown_extensions() -> None:
    body = ext(0x0042, b"x") + ext(1, u32(30_000)) + ext(0x7FFF, b"")
    assert decode(fixed(kind=2, flags=0x8000) + body).timeout_ms == 30_000


@pytest.mark.parametrize(
    "value", [b"", b"\x01", b"\x00\x05\xdc", b"\x00\x00\x05\xdc\x00", bytes(8)]
)
def test_timeout_of_another_length_is_refused(value: bytes) -> None:
    with pytest.raises(ProtocolError, match="timeout extension") as info:
        decode(fixed(kind=2, flags=0x8000) + ext(1, value))
    assert info.value.reason == "extension"


def test_timeout_twice_is_refused() -> None:
    # Two readers could take two different values from one frame, as with a repeated header.
    data = fixed(kind=2, flags=0x8000) + ext(1, u32(100)) + ext(0x0042, b"") + ext(1, u32(100))
    with pytest.raises(ProtocolError, match="twice") as info:
        decode(data)
    assert info.value.reason == "extension"


def test_a_frame_cut_where_its_extensions_begin_is_an_envelope_without_them() -> None:
    # An empty extension area is allowed, so the cut is not detectable; ZeroMQ delivers frames
    # whole, so no frame arrives cut.
    data = encode(Envelope(Kind.REQUEST, 3, method="m", timeout_ms=100))
    assert decode(data[:-8]) == Envelope(Kind.REQUEST, 3, method="m")
    for n in range(len(data) - 7, len(data)):
        assert reason_of(data[:n]) == "truncated"


# -- encoding refuses what a peer would refuse -----------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason", "names"),
    [
        ({"message_id": -1}, "range", "message_id"),
        ({"message_id": 2**64}, "range", "message_id"),
        ({"deadline_ms": -5}, "range", "deadline_ms"),
        ({"attempt": 65536}, "range", "attempt"),
        ({"timeout_ms": 2**32}, "range", "timeout_ms"),
        ({"timeout_ms": -1}, "range", "timeout_ms"),
        ({"timeout_ms": 1.5}, "type", "timeout_ms"),
        ({"kind": 9}, "kind", "kind"),
        ({"status": 2}, "status", "status"),
        ({"trace": TraceContext(b"x" * 15, b"y" * 8)}, "range", "trace id"),
        ({"trace": TraceContext(b"x" * 16, b"y" * 9)}, "range", "span id"),
        ({"trace": TraceContext(b"x" * 16, b"y" * 8, flags=256)}, "range", "trace flags"),
        ({"trace": ("not", "a", "trace")}, "type", "TraceContext"),
        ({"method": b"bytes"}, "type", "method"),
        ({"message_id": "7"}, "type", "message_id"),
        ({"headers": {"k": 1}}, "type", "header 'k'"),
        ({"headers": {1: "v"}}, "type", "header name 1"),
        ({"detail": "\ud800"}, "utf8", "detail"),
        ({"headers": {"k": "\udfff"}}, "utf8", "header 'k'"),
        ({"policy": "p" * 65536}, "too-large", "policy"),
    ],
)
def test_encode_names_the_bad_field(changes: dict[str, object], reason: str, names: str) -> None:
    env = attrs.evolve(Envelope(Kind.REQUEST, 1, method="m", detail="d"), **changes)
    with pytest.raises(ProtocolError, match=names) as info:
        encode(env)
    assert info.value.reason == reason


def test_encode_checks_the_envelope_size_limit() -> None:
    env = Envelope(Kind.REPLY, 1, status=StatusCode.INTERNAL, detail="x" * 100)
    size = len(encode(env))
    assert len(encode(env, Limits(max_envelope_bytes=size))) == size
    assert encode_reason(env, Limits(max_envelope_bytes=size - 1)) == "too-large"


def test_the_compiled_codec_is_in_use_where_it_can_be_built(c_toolchain, monkeypatch):
    from zmeshlib import _compiled
    from zmeshlib.wire import envelope

    monkeypatch.delenv("ZMESHLIB_PURE_PYTHON", raising=False)
    assert _compiled.load("wire._plain") is not None, (
        "a C compiler is present, but no _plain.c build"
    )
    if envelope.COMPILED:  # the names the sockets import are the compiled functions
        assert envelope.decode_plain is not envelope.py_decode_plain
        assert envelope.encode_request is not envelope.py_encode_request

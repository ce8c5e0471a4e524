"""Property tests of the envelope codec: round trips, and any bytes in -> ProtocolError out."""

from __future__ import annotations

import itertools
import struct

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmeshlib._exceptions import ProtocolError
from zmeshlib._models import StatusCode, TraceContext
from zmeshlib.wire import Envelope, Kind, Limits, decode, decode_plain, encode, encode_request
from zmeshlib.wire import envelope as envelope_module

# Derandomized: the same examples on every run and every machine.
PROPERTY = settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

U64 = 2**64 - 1
U32 = 2**32 - 1


def utf8_text(max_bytes: int, **kw: int) -> st.SearchStrategy[str]:
    return st.text(**kw).filter(lambda s: len(s.encode()) <= max_bytes)


no_nul = st.text(max_size=30).map(lambda s: s.replace("\0", ""))
header_names = no_nul.filter(bool)
traces = st.builds(
    TraceContext,
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=8, max_size=8),
    st.integers(0, 255),
    st.text(max_size=40),
)


def maybe(default: object, strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Each optional field is absent (its default) or random: every combination gets tried."""
    return st.one_of(st.just(default), strategy)


envelopes = st.builds(
    Envelope,
    kind=st.sampled_from(Kind),
    message_id=st.one_of(st.integers(0, U64), st.sampled_from([0, 1, U64])),
    method=maybe("", utf8_text(255, max_size=100)),
    status=st.sampled_from(StatusCode),
    deadline_ms=maybe(0, st.integers(0, U64)),
    attempt=maybe(0, st.integers(0, 0xFFFF)),
    timeout_ms=maybe(0, st.integers(0, U32)),
    trace=maybe(None, traces),
    headers=maybe({}, st.dictionaries(header_names, no_nul, max_size=8)),
    detail=maybe("", st.text(max_size=80)),
    policy=maybe("", st.text(max_size=40)),
    retriable=st.booleans(),
)


def decode_or_reason(data: bytes, limits: Limits | None = None) -> Envelope | str:
    """Decode, turning a ProtocolError into its reason; any other exception fails the test."""
    try:
        return decode(data) if limits is None else decode(data, limits)
    except ProtocolError as exc:
        assert f"[{exc.reason}]" in str(exc)
        return exc.reason


@PROPERTY
@given(envelopes)
def test_round_trip(env: Envelope) -> None:
    data = encode(env)
    back = decode(data)
    assert back == env
    assert encode(back) == data
    assert decode(memoryview(data)) == env
    assert decode(bytearray(data)) == env


@PROPERTY
@given(envelopes)
def test_every_proper_prefix_is_truncated(env: Envelope) -> None:
    data = encode(env)
    # but one: an empty extension area is allowed, so the frame cut where the timeout
    # extension (8 bytes, the last part) begins is the envelope without it
    ext_start = len(data) - 8 if env.timeout_ms else None
    assert decode_or_reason(b"") == "empty"
    for n in range(1, len(data)):
        if n == ext_start:
            assert decode_or_reason(data[:n]) == attrs.evolve(env, timeout_ms=0)
        else:
            assert decode_or_reason(data[:n]) == "truncated", n


@PROPERTY
@given(envelopes, st.binary(min_size=1, max_size=8))
def test_appended_bytes_are_trailing(env: Envelope, extra: bytes) -> None:
    got = decode_or_reason(encode(env) + extra)
    if env.timeout_ms:  # then the bytes are read as more extensions, skipped or refused
        assert got in ("truncated", "extension") or got == env
    else:
        assert got == "trailing-bytes"


@PROPERTY
@given(envelopes)
def test_limits_hold_both_ways(env: Envelope) -> None:
    data = encode(env)
    tight = Limits(max_envelope_bytes=len(data) - 1)
    assert decode_or_reason(data, tight) == "too-large"
    with pytest.raises(ProtocolError) as info:
        encode(env, tight)
    assert info.value.reason == "too-large"
    assert decode(data, Limits(max_envelope_bytes=len(data))) == env


def fixed(kind: int = 1, flags: int = 0, version: int = 1) -> bytes:
    return struct.pack(">BBHQ", version, kind, flags, 42)


# Inputs a fuzzer is unlikely to reach from random bytes alone: a valid fixed part with
# random flags and body, and small mutations of valid envelopes.
@st.composite
def plain_frames(draw: st.DrawFn) -> bytes:
    """Frames near decode_plain's request shape: its parts in flag order, now and then odd."""
    kind = draw(st.sampled_from([2, 2, 2, 2, 1, 3, 4, 0, 5]))
    bits = draw(st.lists(st.sampled_from([0x0001, 0x0004, 0x0008, 0x8000]), max_size=4))
    flags = sum(set(bits)) | draw(st.sampled_from([0] * 8 + [0x0002, 0x0010, 0x0200]))
    method = draw(st.one_of(st.binary(max_size=6), st.just("é".encode()), st.just(b"\xc3")))
    method_len = draw(st.sampled_from([len(method)] * 6 + [0, len(method) + 1, 255]))
    deadline = draw(st.sampled_from([bytes(8), b"\x00\x00\x01\x8b\xcf\xe5\x68\x00", b"\xff" * 8]))
    attempt = draw(st.sampled_from([b"\x00\x02", b"\xff\xff", b"\x00\x00"]))
    ext_type = draw(st.sampled_from([1] * 6 + [2, 0x7FFF, 0x8001]))
    ext_len = draw(st.sampled_from([4] * 6 + [0, 3, 5]))
    value = draw(
        st.sampled_from([b"\x00\x00\x05\xdc"] * 3 + [b"\xff" * 4, bytes(4), b"", b"\x01" * 5])
    )
    area = draw(st.sampled_from([b""] + [struct.pack(">HH", ext_type, ext_len) + value] * 3))
    body = (
        (bytes([method_len]) + method if flags & 0x0001 else b"")
        + (deadline if flags & 0x0004 else b"")
        + (attempt if flags & 0x0008 else b"")
        + (area if flags & 0x8000 else b"")
    )
    body += draw(st.sampled_from([b""] * 8 + [b"\x00", area]))  # now and then one part too many
    cut = draw(st.sampled_from([0] * 8 + [1, 2, 4, 8]))
    return (fixed(kind, flags) + body)[: len(body) + 12 - cut]


garbage = st.one_of(
    st.binary(max_size=64),
    plain_frames(),
    st.builds(
        lambda kind, flags, body: fixed(kind, flags) + body,
        st.integers(0, 6),
        st.integers(0, 0xFFFF),
        st.binary(max_size=96),
    ),
    st.builds(
        lambda env, at, byte: (lambda d: d[: at % len(d)] + bytes([byte]) + d[at % len(d) + 1 :])(
            encode(env)
        ),
        envelopes,
        st.integers(0, 10_000),
        st.integers(0, 255),
    ),
    st.builds(
        lambda env, at, cut: (lambda d: d[: at % len(d)] + d[at % len(d) + cut :])(encode(env)),
        envelopes,
        st.integers(0, 10_000),
        st.integers(1, 4),
    ),
)


@settings(PROPERTY, max_examples=2000)
@given(garbage)
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    result = decode_or_reason(data)
    if isinstance(result, Envelope):
        # Whatever decodes re-encodes canonically and means the same.
        assert decode(encode(result)) == result


PLAIN_REQUEST_FIELDS = {"method": "", "deadline_ms": 0, "timeout_ms": 0, "attempt": 0}


def is_plain(env: Envelope) -> bool:
    """Whether env has one of decode_plain's shapes (a request's parts, or no part)."""
    allowed = PLAIN_REQUEST_FIELDS if env.kind is Kind.REQUEST else {}
    return attrs.evolve(env, **allowed) == Envelope(env.kind, env.message_id)


def agrees_with_decode(data: bytes, limits: Limits | None = None) -> None:
    """decode_plain answers only for frames decode accepts, with the same fields."""
    limits = limits or Limits()
    plain = decode_plain(data, limits)
    if plain is None:
        return
    env = decode(data, limits)
    if env.kind is Kind.REQUEST:  # the kind says the shape
        assert plain == (
            Kind.REQUEST,
            env.message_id,
            env.method,
            env.deadline_ms,
            env.timeout_ms,
            env.attempt,
        )
        assert [type(v) for v in plain[1:]] == [int, str, int, int, int]
    else:
        assert plain == (env.kind, env.message_id, "", 0)
    assert type(plain[0]) is Kind
    # a plain envelope is all there is: every other field at its default
    assert is_plain(env)


@settings(PROPERTY, max_examples=800)
@given(garbage)
def test_decode_plain_agrees_with_decode_on_any_bytes(data: bytes) -> None:
    agrees_with_decode(data)


@PROPERTY
@given(envelopes)
def test_decode_plain_agrees_with_decode_on_envelopes(env: Envelope) -> None:
    data = encode(env)
    agrees_with_decode(data)
    assert (decode_plain(data) is not None) == is_plain(env)  # it answers for every plain one
    agrees_with_decode(data, Limits(max_envelope_bytes=len(data) - 1))
    for n in range(len(data)):
        agrees_with_decode(data[:n])


@PROPERTY
@given(
    st.sampled_from([Kind.PUBLISH, Kind.REPLY, Kind.PUSH]),
    st.integers(0, U64),
    utf8_text(255, min_size=1, max_size=100),
    maybe(0, st.integers(1, U64)),
    maybe(0, st.integers(1, U32)),
    maybe(0, st.integers(1, 0xFFFF)),
)
def test_decode_plain_reads_both_hot_shapes(
    kind: Kind, message_id: int, method: str, deadline: int, timeout: int, attempt: int
) -> None:
    assert decode_plain(encode(Envelope(kind, message_id))) == (kind, message_id, "", 0)
    request = encode_request(message_id, method, deadline, timeout, attempt)
    expected = (Kind.REQUEST, message_id, method, deadline, timeout, attempt)
    assert decode_plain(request) == expected
    assert decode_plain(bytearray(request)) is None  # only bytes, as frames arrive
    # a request without a method, or with no part at all, has the request shape too
    bare = encode(Envelope(Kind.REQUEST, message_id, deadline_ms=deadline, timeout_ms=timeout))
    assert decode_plain(bare) == (Kind.REQUEST, message_id, "", deadline, timeout, 0)


def test_every_combination_of_optional_fields() -> None:
    # One sample value per optional field, each with the flag bit it must set.
    samples: dict[str, tuple[object, int]] = {
        "method": ("charge", 0x0001),
        "status": (StatusCode.APPLICATION, 0x0002),
        "deadline_ms": (1_700_000_000_000, 0x0004),
        "attempt": (2, 0x0008),
        "timeout_ms": (1500, 0x8000),  # the timeout extension: the extension area's flag
        "trace": (TraceContext(b"\x11" * 16, b"\x22" * 8, 1, "k=v"), 0x0010),
        "headers": ({"region": "eu"}, 0x0020),
        "detail": ("out of stock", 0x0040),
        "policy": ("deny-rogue", 0x0080),
        "retriable": (True, 0x0100),
    }
    names = list(samples)
    seen = set()
    for r in range(len(names) + 1):
        for subset in itertools.combinations(names, r):
            env = Envelope(Kind.REPLY, 7, **{n: samples[n][0] for n in subset})
            data = encode(env)
            flags = struct.unpack_from(">H", data, 2)[0]
            assert flags == sum(samples[n][1] for n in subset)
            assert decode(data) == env
            seen.add(flags)
    assert len(seen) == 2 ** len(names)


odd_values = st.sampled_from(
    [None, -1, 2**70, 1.5, "x", "\ud800", b"x", "", 0, True, [], {}, {"k": None}, {"": "v"}]
)


@PROPERTY
@given(envelopes, st.sampled_from([a.name for a in attrs.fields(Envelope)]), odd_values)
def test_encode_of_any_field_value_succeeds_or_raises_protocol_error(
    env: Envelope, field: str, value: object
) -> None:
    odd = attrs.evolve(env, **{field: value})
    try:
        data = encode(odd)
    except ProtocolError as exc:
        assert f"[{exc.reason}]" in str(exc)
    else:
        assert encode(decode(data)) == data


# -- the compiled hot path: one answer with the Python functions ---------------------

try:
    from zmeshlib.wire import _plain as compiled_plain  # type: ignore[attr-defined]
except ImportError:  # built only where there is a C compiler (tests/wire/test_envelope.py)
    compiled_plain = None
else:
    envelope_module._bind(compiled_plain)  # also where ZMESHLIB_PURE_PYTHON keeps it out of use

needs_compiled = pytest.mark.skipif(
    compiled_plain is None, reason="the compiled codec is not built"
)


def outcome(fn, *args):
    """What a call gives: its value, or its exception's type and message."""
    try:
        return "value", fn(*args)
    except Exception as exc:
        return "raised", type(exc), str(exc), getattr(exc, "reason", None)


@needs_compiled
@settings(PROPERTY, max_examples=2000)
@given(garbage, st.sampled_from([None, 12, 20, 64, 16 * 1024, 2**70, -1, 20.5]))
def test_compiled_decode_plain_is_the_python_one_on_any_bytes(data: bytes, bound) -> None:
    args = (data,) if bound is None else (data, Limits(max_envelope_bytes=bound))
    assert outcome(compiled_plain.decode_plain, *args) == outcome(
        envelope_module.py_decode_plain, *args
    )


@needs_compiled
@PROPERTY
@given(envelopes)
def test_compiled_decode_plain_is_the_python_one_on_envelopes_and_prefixes(env) -> None:
    data = encode(env)
    for n in range(len(data) + 1):
        got = compiled_plain.decode_plain(data[:n])
        assert got == envelope_module.py_decode_plain(data[:n])
        if got is not None:
            shape = (env.kind, 0, "", 0, 0, 0) if env.kind is Kind.REQUEST else (env.kind, 0, "", 0)
            assert [type(v) for v in got] == [type(v) for v in shape]


@needs_compiled
@pytest.mark.parametrize(
    ("timeout", "attempt", "method"),
    [(0, 0, "charge"), (1500, 0, "charge"), (0, 3, "charge"), (U32, 0xFFFF, "é"), (7, 0, "")],
)
def test_compiled_decode_plain_is_the_python_one_on_every_near_miss(
    timeout: int, attempt: int, method: str
) -> None:
    """Every frame one byte away from a request (changed, cut, added): where bugs hide."""
    env = Envelope(Kind.REQUEST, 9, method=method, deadline_ms=1 << 40, timeout_ms=timeout)
    data = encode(attrs.evolve(env, attempt=attempt))
    near = [data[:n] for n in range(len(data))] + [data + bytes([b]) for b in range(256)]
    for at in range(len(data)):
        near += [data[:at] + bytes([b]) + data[at + 1 :] for b in range(256)]
    for frame in near:
        assert compiled_plain.decode_plain(frame) == envelope_module.py_decode_plain(frame), frame


not_ints = st.sampled_from([True, False, 1.0, "1", None, b""])


def field_args(top: int) -> st.SearchStrategy[object]:
    """Arguments for an integer field of ``top`` at most: in range, at its edges, or not ints."""
    return st.one_of(
        st.integers(0, top),
        st.sampled_from([0, 1, top, top + 1, -1, 2**64, -(2**65)]),
        not_ints,
    )


int_args = field_args(U64)
method_args = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["", "echo", "\ud800", "é" * 128, "x" * 255, "x" * 256, b"echo", None, 5]),
    st.sampled_from(["echo", "charge", "é" * 127]),
)


def outcome_kw(fn, args, kwargs):
    try:
        return "value", fn(*args, **kwargs)
    except Exception as exc:
        return "raised", type(exc), str(exc), getattr(exc, "reason", None)


PARAMETERS = ("message_id", "method", "deadline_ms", "timeout_ms", "attempt")


@needs_compiled
@settings(PROPERTY, max_examples=1500)
@given(
    int_args,
    method_args,
    int_args,
    st.one_of(st.just(None), field_args(U32)),
    st.one_of(st.just(None), field_args(0xFFFF)),
    st.integers(0, 5),
    st.sampled_from([None] * 6 + ["bogus", "method", "timeout_ms"]),
)
def test_compiled_encode_request_is_the_python_one_on_any_arguments(
    mid, method, deadline, timeout, attempt, positional, extra
):
    """Any values, passed by position or by name (the first ``positional`` by position)."""
    values = dict(zip(PARAMETERS, (mid, method, deadline, timeout, attempt), strict=True))
    if timeout is None:
        del values["timeout_ms"]
    if attempt is None:
        del values["attempt"]
    names = list(values)
    args = tuple(values[n] for n in names[:positional])
    kwargs = {n: values[n] for n in names[positional:]}
    if extra is not None:  # an unknown name, or one already given by position
        kwargs[extra] = 1
    assert outcome_kw(compiled_plain.encode_request, args, kwargs) == outcome_kw(
        envelope_module.py_encode_request, args, kwargs
    )


@needs_compiled
@PROPERTY
@given(st.one_of(st.sampled_from(Kind), st.sampled_from([0, 1, 5, None, "PUBLISH"])), int_args)
def test_compiled_encode_minimal_and_publish_are_the_python_ones(kind, mid):
    assert outcome(compiled_plain.encode_minimal, kind, mid) == outcome(
        envelope_module.py_encode_minimal, kind, mid
    )
    assert outcome(compiled_plain.encode_publish, mid) == outcome(
        envelope_module.py_encode_publish, mid
    )


@needs_compiled
def test_compiled_functions_check_their_argument_count():
    for fn, args in [
        (compiled_plain.decode_plain, ()),
        (compiled_plain.decode_plain, (b"", None, None)),
        (compiled_plain.encode_request, (1, "m")),
        (compiled_plain.encode_request, (1, "m", 5, 1, 1, 1)),
        (compiled_plain.encode_minimal, (Kind.PUSH,)),
        (compiled_plain.encode_publish, ()),
    ]:
        with pytest.raises(TypeError):
            fn(*args)

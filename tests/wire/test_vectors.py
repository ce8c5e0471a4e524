"""The published test vectors: the codec matches them byte for byte, and the spec shows them."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from zmeshlib._exceptions import ProtocolError
from zmeshlib._models import StatusCode, TraceContext
from zmeshlib.wire import Envelope, Kind, decode, encode
from zmeshlib.wire import envelope as envelope_module

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "envelope.json").read_text(encoding="utf-8"))
SPEC = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
VALID = {v["name"]: v for v in VECTORS["valid"]}
INVALID = {v["name"]: v for v in VECTORS["invalid"]}


def envelope_from(fields: dict[str, Any]) -> Envelope:
    kw = dict(fields)
    kw["kind"] = Kind[fields["kind"]]
    if "status" in fields:
        kw["status"] = StatusCode[fields["status"]]
    if "trace" in fields:
        t = fields["trace"]
        kw["trace"] = TraceContext(
            bytes.fromhex(t["trace_id"]), bytes.fromhex(t["span_id"]), t["flags"], t["tracestate"]
        )
    return Envelope(**kw)


def test_the_required_vectors_are_there() -> None:
    assert {
        "minimal-publish",
        "request-full",
        "permission-denied-reply",
        "application-error-retriable",
        "request-timeout",
        "request-timeout-retry",
    } <= set(VALID)
    assert {"timeout-wrong-length", "timeout-twice"} <= set(INVALID)


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_vector(name: str) -> None:
    vector = VALID[name]
    env = envelope_from(vector["fields"])
    data = bytes.fromhex(vector["hex"])
    assert decode(data) == env
    if not vector.get("decode_only"):
        assert encode(env).hex() == vector["hex"]


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_vector(name: str) -> None:
    vector = INVALID[name]
    with pytest.raises(ProtocolError) as info:
        decode(bytes.fromhex(vector["hex"]))
    assert info.value.reason == vector["reason"]


@pytest.mark.parametrize("name", sorted(VALID) + sorted(INVALID))
def test_spec_shows_every_vector(name: str) -> None:
    vector = VALID.get(name) or INVALID[name]
    assert f"`{name}`" in SPEC
    assert vector["hex"] in SPEC
    if name in INVALID:
        assert f"`{vector['reason']}`" in SPEC


def test_request_vector_follows_the_layout_table() -> None:
    # Built from docs/protocol.md's tables alone, not from the codec.
    f = VALID["request-full"]["fields"]
    t = f["trace"]
    method = f["method"].encode()
    tracestate = t["tracestate"].encode()
    block = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in f["headers"].items())
    expected = (
        bytes([1, 2])  # version, kind REQUEST
        + (0x0001 | 0x0004 | 0x0008 | 0x0010 | 0x0020).to_bytes(2, "big")  # flags
        + f["message_id"].to_bytes(8, "big")
        + bytes([len(method)])
        + method
        + f["deadline_ms"].to_bytes(8, "big")
        + f["attempt"].to_bytes(2, "big")
        + bytes.fromhex(t["trace_id"] + t["span_id"])
        + bytes([t["flags"]])
        + len(tracestate).to_bytes(2, "big")
        + tracestate
        + struct.pack(">HI", len(f["headers"]), len(block))
        + block
    )
    assert expected.hex() == VALID["request-full"]["hex"]


def test_timeout_vector_follows_the_layout_and_registry_tables() -> None:
    # Built from docs/protocol.md's tables alone: flags, parts in flag order, then the
    # extension area with the TIMEOUT extension (type 0x0001, a u32 of 4 bytes).
    f = VALID["request-timeout-retry"]["fields"]
    method = f["method"].encode()
    expected = (
        bytes([1, 2])
        + (0x0001 | 0x0004 | 0x0008 | 0x8000).to_bytes(2, "big")
        + f["message_id"].to_bytes(8, "big")
        + bytes([len(method)])
        + method
        + f["deadline_ms"].to_bytes(8, "big")
        + f["attempt"].to_bytes(2, "big")
        + struct.pack(">HHI", 0x0001, 4, f["timeout_ms"])
    )
    assert expected.hex() == VALID["request-timeout-retry"]["hex"]


ANNOTATED = re.compile(r"<!-- annotated: ([a-z0-9-]+) -->\n```\n(.*?)```", re.DOTALL)


def test_annotated_vectors_add_up_to_their_bytes() -> None:
    blocks = dict(ANNOTATED.findall(SPEC))
    assert {"request-full", "request-timeout", "request-timeout-retry"} <= set(blocks)
    for name, block in blocks.items():
        # each line: hex groups, then two or more spaces, then what they are
        hex_text = "".join(re.split(r"\s{2,}", line)[0] for line in block.splitlines())
        assert hex_text.replace(" ", "") == VALID[name]["hex"], name


HOT_PATHS = [
    pytest.param(envelope_module.py_encode_request, envelope_module.py_decode_plain, id="python"),
    pytest.param(envelope_module.encode_request, envelope_module.decode_plain, id="in-use"),
]


@pytest.mark.parametrize(("encode_request", "decode_plain"), HOT_PATHS)
@pytest.mark.parametrize("name", ["request-timeout", "request-timeout-retry"])
def test_hot_path_makes_and_reads_the_request_vectors(encode_request, decode_plain, name) -> None:
    f = VALID[name]["fields"]
    data = bytes.fromhex(VALID[name]["hex"])
    args = (f["message_id"], f["method"], f["deadline_ms"], f["timeout_ms"], f.get("attempt", 0))
    assert encode_request(*args) == data
    assert decode_plain(data) == (Kind.REQUEST, *args)

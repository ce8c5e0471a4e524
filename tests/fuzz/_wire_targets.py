"""Fuzz targets of what reads the network or a policy file (the identity ones: _targets.py).

Each target takes bytes and returns normally when zmeshlib accepted the input or
refused it with its own error; anything else escapes and is the finding.

==================  ======================================================================
target              what it feeds
==================  ======================================================================
``envelope``        bytes to ``decode`` (``ProtocolError`` only) and to ``decode_plain``,
                    whose compiled twin must give the Python one's answer
``policy``          bytes as a policy file (the first byte picks YAML, JSON or TOML) to
                    the loader (``PolicyError`` only)
``trace_context``   a trace field and ``traceparent``/``tracestate``/``baggage`` headers
                    from the network to ``from_envelope``, which never raises
==================  ======================================================================

Seeds: ``corpus/envelope`` (real envelopes) and ``corpus/trace_context``; the
policy target starts from ``corpus/policy``, the policy fuzz tests' corpus.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from zmeshlib import PolicyError, ProtocolError, TraceContext
from zmeshlib.policy._document import load_policy
from zmeshlib.telemetry.tracing import from_envelope
from zmeshlib.wire import decode
from zmeshlib.wire import envelope as envelope_module

FORMATS = ("yaml", "json", "toml")


class Finding(AssertionError):
    """A target found a problem that is not an exception of its own."""


def _answer(run: Callable[[], object]) -> object:
    """What a call returned, or the type of the error it raised."""
    try:
        return run()
    except Exception as exc:
        return type(exc)


def envelope(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError:
        pass
    compiled = envelope_module.decode_plain
    if compiled is not envelope_module.py_decode_plain:
        python = _answer(lambda: envelope_module.py_decode_plain(data))
        if _answer(lambda: compiled(data)) != python:
            raise Finding(f"the compiled decode_plain differs from the Python one on {data!r}")


def policy(data: bytes) -> None:
    fmt = FORMATS[data[0] % 3] if data else "yaml"
    try:
        load_policy(Path(f"mesh.{fmt}"), data=data[1:])
    except PolicyError:
        pass


def trace_context(data: bytes) -> None:
    field = None
    if len(data) >= 25:
        field = TraceContext(data[:16], data[16:24], data[24], data[25:80].decode("latin-1"))
    parts = data[80:].decode("utf-8", "replace").split("\n")
    headers = dict(zip(("traceparent", "tracestate", "baggage"), parts, strict=False))
    from_envelope(field, headers)  # never raises: bad context from the network is ignored


TARGETS: dict[str, Callable[[bytes], None]] = {
    "envelope": envelope,
    "policy": policy,
    "trace_context": trace_context,
}

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
``signed_policy``   bytes from a registry to ``SignedPolicy.from_bytes`` and ``verify``
                    against the anchors (``SignedPolicyError`` only), and to the policy
                    rebuild alone (``PolicyError`` only)
==================  ======================================================================

Seeds: ``corpus/envelope`` (real envelopes) and ``corpus/trace_context``; the
policy target starts from ``corpus/policy``, the policy fuzz tests' corpus. The
``signed_policy`` seeds are real documents signed by a dev CA whose root is
``anchors/signed-policy-bundle.pem``, written by
``python tests/fuzz/_wire_targets.py --write-seeds`` (the verdicts at
``anchors/signed-policy-at.txt``: a document by the signer, with an intermediate
in its chain, and one by another workload, signed with an Ed25519 key).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from zmeshlib import Bundles, PolicyError, ProtocolError, SignedPolicyError, TraceContext
from zmeshlib.policy import SignedPolicy
from zmeshlib.policy._document import load_policy
from zmeshlib.policy._rebuild import policy_from_canonical
from zmeshlib.telemetry.tracing import from_envelope
from zmeshlib.wire import decode
from zmeshlib.wire import envelope as envelope_module

FORMATS = ("yaml", "json", "toml")
HERE = Path(__file__).parent
SIGNERS = ["example.org/ns/mesh/*"]
_ANCHORS: list[tuple[Bundles, float]] = []


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


def signed_policy_anchors() -> tuple[Bundles, float]:
    """The bundles the signed_policy seeds verify against, and the instant they verify at."""
    if not _ANCHORS:
        pem = (HERE / "anchors" / "signed-policy-bundle.pem").read_bytes()
        at = datetime.fromisoformat((HERE / "anchors" / "signed-policy-at.txt").read_text().strip())
        _ANCHORS.append((Bundles.from_pem(pem, "example.org"), at.timestamp()))
    return _ANCHORS[0]


def signed_policy(data: bytes) -> None:
    bundles, at = signed_policy_anchors()
    try:
        SignedPolicy.from_bytes(data).verify(bundles, SIGNERS, applied=None, now=at)
    except SignedPolicyError as exc:
        if not exc.reason:
            raise Finding(f"a SignedPolicyError without a reason: {exc}") from exc
    try:
        policy_from_canonical(data)
    except PolicyError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "envelope": envelope,
    "policy": policy,
    "trace_context": trace_context,
    "signed_policy": signed_policy,
}


def write_seeds() -> None:  # pragma: no cover - run by hand, its output is kept
    """Write fresh signed_policy seeds and their anchors (keeping the crash-* files)."""
    import time
    from datetime import timezone

    from zmeshlib import DevCA, Policy

    ca = DevCA.create("example.org", intermediate=True)
    (HERE / "anchors" / "signed-policy-bundle.pem").write_bytes(ca.bundle.to_pem())
    at = datetime.fromtimestamp(int(time.time()) + 60, timezone.utc)
    (HERE / "anchors" / "signed-policy-at.txt").write_text(at.isoformat() + "\n")
    rich = Policy.from_dict(
        {
            "trust_domains": ["example.org"],
            "services": {"payment": {"identities": ["example.org/ns/shop/sa/payment*"]}},
            "authorization": [{"name": "a", "rules": [{"to": {"call": ["status"]}}]}],
            "traffic": {
                "payment": {
                    "timeout": "2s",
                    "routes": [{"match": [{"headers": {"x": {"regex": "v[0-9]"}}}]}],
                }
            },
        }
    )
    control = ca.issue_svid("spiffe://example.org/ns/mesh/sa/control")
    other = ca.issue_svid("spiffe://example.org/ns/shop/sa/other", key="ed25519")
    seeds = {
        "signer.bin": SignedPolicy.sign(rich, control, version=7, now=at.timestamp() - 30),
        "not-a-signer.bin": SignedPolicy.sign(Policy(), other, version=1, now=at.timestamp() - 30),
    }
    directory = HERE / "corpus" / "signed_policy"
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        if not old.name.startswith("crash-"):
            old.unlink()
    for name, doc in seeds.items():
        (directory / name).write_bytes(doc.to_bytes())


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--write-seeds"]:
        write_seeds()
    else:
        sys.exit("usage: python tests/fuzz/_wire_targets.py --write-seeds")

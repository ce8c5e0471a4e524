"""Fuzz targets of zmeshlib's identity parsing, shared by the hypothesis tests and atheris.

Each target takes one input and returns normally when zmeshlib accepted it or
refused it with an :class:`IdentityError`; anything else (another exception, a
path search past its signature budget) escapes and is the finding.

========================  ==============================================================
target                    what it feeds
========================  ==============================================================
``spiffe_id``             text to ``SpiffeId.parse``, ``coerce`` and ``validate_trust_domain``
``svid_parse``            bytes to ``X509Svid.parse``, as PEM and as one DER certificate
``bundle_pem``            bytes to ``TrustBundle.from_pem`` and ``Bundles.from_pem``
``verify_chain``          the certificates cryptography loads from the bytes to
                          ``verify_chain``, against the anchors, at the anchors' instant
``card``                  bytes to ``Card.from_bytes``, then ``Card.verify``
========================  ==============================================================

The corpus (``corpus/<target>/``) holds the seeds this module writes
(``python tests/fuzz/_targets.py --write-seeds``: real dev CA material) and the
inputs that once made a target fail, named ``crash-*``. ``anchors/`` holds the
trust anchors and the instant the seeds verify at, so a seed that verified when
written verifies forever.
"""

from __future__ import annotations

import base64
import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zmeshlib._exceptions import IdentityError
from zmeshlib.identity import Bundles, SpiffeId, TrustBundle, X509Svid, verify_chain
from zmeshlib.identity import svid as svid_module
from zmeshlib.identity.card import Card
from zmeshlib.identity.spiffe_id import validate_trust_domain

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
ANCHORS = HERE / "anchors"


class Finding(AssertionError):
    """A target found a problem that is not an exception of its own."""


def anchors() -> tuple[Bundles, datetime]:
    """The trust bundles the verify targets use, and the instant they verify at."""
    bundles = Bundles.from_pem((ANCHORS / "bundle.pem").read_bytes(), "example.org")
    at = datetime.fromisoformat((ANCHORS / "at.txt").read_text().strip())
    return bundles, at


def as_pem(der: bytes, label: bytes = b"CERTIFICATE") -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN " + label + b"-----\n" + body + b"-----END " + label + b"-----\n"


@contextlib.contextmanager
def counting_signatures() -> Iterator[list[int]]:
    """Count the signature checks made inside the block (the real check still runs)."""
    counted = [0]
    real = svid_module._signed_by

    def counting(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
        counted[0] += 1
        return real(issuer, cert)

    svid_module._signed_by = counting  # type: ignore[assignment]
    try:
        yield counted
    finally:
        svid_module._signed_by = real  # type: ignore[assignment]


def _refused(attempt: Callable[[], object]) -> None:
    try:
        attempt()
    except IdentityError as exc:
        if not exc.rule or exc.rule == "unspecified":
            raise Finding(f"an IdentityError without a rule: {exc}") from exc


# -- the targets ------------------------------------------------------------------------


def spiffe_id(text: str) -> None:
    _refused(lambda: SpiffeId.parse(text))
    _refused(lambda: SpiffeId.coerce(text))
    _refused(lambda: validate_trust_domain(text))
    _refused(lambda: SpiffeId.from_parts(text, text))


def svid_parse(data: bytes) -> None:
    _refused(lambda: X509Svid.parse(data))
    _refused(lambda: X509Svid.parse(data, data))
    _refused(lambda: X509Svid.parse(as_pem(data)))


def bundle_pem(data: bytes) -> None:
    for pem in (data, as_pem(data)):
        _refused(partial(TrustBundle.from_pem, "example.org", pem))
        _refused(partial(Bundles.from_pem, pem, "example.org"))


def _loadable(data: bytes) -> list[x509.Certificate]:
    """What cryptography itself loads from the bytes: its own refusals are not ours."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return x509.load_pem_x509_certificates(data)
    except Exception:
        return []


def verify_chain_target(data: bytes) -> None:
    certificates = _loadable(data)
    if not certificates:
        return
    bundles, at = anchors()
    with counting_signatures() as checks:
        _refused(lambda: verify_chain(certificates, bundles, at=at))
    if checks[0] > svid_module.MAX_SIGNATURE_CHECKS:
        raise Finding(f"one verify checked {checks[0]} signatures")


def card(data: bytes) -> None:
    bundles, at = anchors()

    def decode_and_verify() -> None:
        Card.from_bytes(data).verify(bundles, now=at.timestamp())

    _refused(decode_and_verify)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "svid_parse": svid_parse,
    "bundle_pem": bundle_pem,
    "verify_chain": verify_chain_target,
    "card": card,
}


def corpus(target: str) -> list[tuple[str, bytes]]:
    return sorted((p.name, p.read_bytes()) for p in (CORPUS / target).iterdir() if p.is_file())


# -- writing the seeds ------------------------------------------------------------------


def write_seeds() -> None:  # pragma: no cover - run by hand, its output is kept
    """Write fresh seeds and anchors (replacing the old seeds, keeping the crash-* files)."""
    import time

    import zmq

    from zmeshlib.identity import DevCA

    ours = DevCA.create("example.org", intermediate=True)
    partner = DevCA.create("partner.org")
    orders = ours.issue_svid("spiffe://example.org/ns/shop/sa/orders")
    theirs = partner.issue_svid("spiffe://partner.org/ns/billing/sa/invoices", key="ed25519")
    ANCHORS.mkdir(exist_ok=True)
    (ANCHORS / "bundle.pem").write_bytes(ours.bundle.to_pem() + partner.bundle.to_pem())
    at = datetime.fromtimestamp(int(time.time()) + 60, timezone.utc)
    (ANCHORS / "at.txt").write_text(at.isoformat() + "\n")
    public, secret = zmq.curve_keypair()
    signed = Card.sign(orders, public, curve_secret=secret, now=at.timestamp() - 30)
    der = [c.public_bytes(serialization.Encoding.DER) for c in orders.certificates]
    seeds = {
        "spiffe_id": {
            "valid.txt": b"spiffe://example.org/ns/shop/sa/orders",
            "istio.txt": b"example.org/ns/shop/sa/orders",
            "dot-segment.txt": b"spiffe://example.org/a/../b",
            "port.txt": b"spiffe://example.org:443/x",
        },
        "svid_parse": {
            "chain-and-key.pem": orders.certs_pem() + orders.key_pem(),
            "ed25519-leaf.pem": theirs.certs_pem() + theirs.key_pem(),
            "leaf.der": der[0],
        },
        "bundle_pem": {
            "mixed.pem": ours.bundle.to_pem() + partner.bundle.to_pem(),
            "intermediate.pem": orders.certificates[1].public_bytes(serialization.Encoding.PEM),
            "root.der": ours.root.public_bytes(serialization.Encoding.DER),
        },
        "verify_chain": {
            "chain.pem": orders.certs_pem(),
            "partner-chain.pem": theirs.certs_pem(),
            "chain-with-root.pem": orders.certs_pem() + ours.bundle.to_pem(),
        },
        "card": {"card.bin": signed.to_bytes()},
    }
    for target, files in seeds.items():
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            if not old.name.startswith("crash-"):
                old.unlink()
        for name, content in files.items():
            (directory / name).write_bytes(content)


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--write-seeds"]:
        write_seeds()
    else:
        sys.exit("usage: python tests/fuzz/_targets.py --write-seeds")

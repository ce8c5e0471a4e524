"""Identity cards: a CURVE public key bound to a SPIFFE ID by the SVID's own key.

A card is self-authenticating. It carries the X.509-SVID chain (leaf first),
the 32-byte CURVE public key, a validity window, labels and endpoints, a proof
that its maker holds the CURVE secret key, and a signature made with the
SVID's private key over a canonical, domain-separated encoding. Anyone may
store or forward a card; a forged, altered or stale one fails
:meth:`Card.verify`, and so does a card binding a CURVE key its signer does
not hold. The byte layout is specified in docs/protocol.md, section "Identity
cards", with test vectors in tests/vectors/cards.json.

Rules this module keeps:

* One byte string per card content: labels are sorted by key, every length is
  explicit and bounded, times are integer milliseconds, and
  :meth:`Card.from_bytes` accepts only the canonical form (decode, re-encode,
  compare), so the stored bytes are exactly the bytes that were signed plus
  the signature.
* The signed bytes start with :data:`MAGIC` and the version byte, so a card
  signature can never be mistaken for a signature over anything else the SVID
  key signs (TLS handshakes, JWTs, envelopes).
* A card proves possession of its CURVE key. The SVID signature alone only
  says "this SVID's holder published this": a workload could publish a card
  binding another workload's CURVE public key (which is public, on that
  workload's own card) to its own SPIFFE ID, and every connection made with
  that key would then be authenticated as the wrong identity. So the CURVE
  secret key signs too: ``key_proof`` is an XEdDSA signature
  (:mod:`zmeshlib.identity._xeddsa`) over :meth:`Card.key_proof_message`, which
  is :data:`KEY_PROOF_DOMAIN` followed by everything the card says except the
  proof and the SVID signature (version, SPIFFE ID, CURVE key, window, labels,
  endpoints, chain). A card for a key its signer does not hold cannot be made.
* The two signatures are nested, proof inside: the CURVE key signs the
  content, and the SVID key signs the content *and the proof*
  (:meth:`Card.signed_bytes`). Neither can be lifted onto another card: the
  proof names the SPIFFE ID, the chain, the labels and endpoints, so it
  verifies on no card that differs in any of them, and the SVID signature
  covers the proof, so no proof can be swapped under it. This order (rather
  than a proof over the SVID-signed bytes) lets the verifier check the SVID
  signature first, so the failures stay apart: any change to the bytes is
  ``card-signature`` (tampering), while ``card-key-proof`` means exactly that
  the SVID's holder published a binding to a key it cannot sign with. It also
  keeps a card ``signed_bytes || signature`` as in every version.
* The signature algorithm follows from the leaf's key type (table below);
  nothing in the card names it, so it cannot be downgraded. The proof is
  always XEdDSA, since CURVE keys are always X25519.
* Version 1 cards carry no proof of key possession; they are refused
  (``card-version``), never accepted on the SVID signature alone.
* :meth:`Card.from_bytes` raises only :class:`IdentityError` (``card-malformed``,
  ``card-too-large``, ``card-version``), whatever the input.
* Every verification failure names its own rule (``IdentityError.rule``):

  ========================  ===================================================
  rule                      the card is rejected because
  ========================  ===================================================
  ``card-version``          its format version is not one this code accepts
                            (version 1 has no key proof; later ones are unknown)
  ``card-malformed``        a field breaks the layout limits
  ``card-too-large``        it encodes to more than :data:`MAX_CARD_SIZE` bytes
  ``card-wrong-key``        its CURVE key is not the key it was presented for
  ``card-signature``        the signature does not verify with the leaf's key
  ``card-key-type``         the leaf's key type has no card signature algorithm
  ``card-key-proof``        its key proof does not verify with its CURVE key,
                            or that key is one no secret key has (u >= p,
                            u = p - 1, or a point of small order)
  (SVID rules)              the chain fails :func:`verify_chain` at ``now``;
                            the SVID's own rule is passed through
  ``card-id-mismatch``      its SPIFFE ID is not the leaf certificate's
  ``card-outlives-svid``    its window is not inside the chain's validity
  ``card-not-yet-valid``    ``now`` is before its ``not_before``
  ``card-expired``          ``now`` is at or after its ``not_after``
  ========================  ===================================================

  Signing refuses with ``card-no-private-key`` (a peer's SVID),
  ``card-key-mismatch`` (``curve_secret`` is not the secret of the CURVE
  public key), ``card-svid-expired`` (an empty window) or ``card-key-type``.

Signature algorithms, by the leaf certificate's public key (the field codec and these
algorithms are :mod:`zmeshlib.identity._signed`'s, shared with signed policy documents):

=================  ============================================================
leaf key           card signature
=================  ============================================================
Ed25519            Ed25519 (RFC 8032, pure), 64 bytes
EC P-256           ECDSA with SHA-256, DER-encoded (r, s)
EC P-384           ECDSA with SHA-384, DER-encoded (r, s)
RSA (>= 2048 bit)  RSASSA-PSS, SHA-256, MGF1-SHA-256, salt length 32
=================  ============================================================

Theory of operation: :meth:`Card.sign` checks that the CURVE secret is the
public key's, clamps the window to the SVID chain's, makes the key proof over
:meth:`Card.key_proof_message`, then signs :meth:`Card.signed_bytes` (which end
with the proof) with the SVID key; :meth:`Card.to_bytes` appends the
signature. Nothing of the CURVE secret is kept on the card. A verifier checks
the cheap things first (version, expected key), then the SVID signature, then
the key proof (an Ed25519 verification, as cheap as the signature's), then the
chain, then time. Because a valid card's window lies inside its chain's, a
verdict reached at any instant of the window holds for the whole window: a
cache (the registry's) may verify once and afterwards re-check only
:meth:`Card.check_window`.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Iterable, Mapping

import attrs
import zmq
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from zmq.utils import z85

from .._exceptions import IdentityError
from .._models import Endpoint, Peer
from . import _xeddsa
from ._signed import Reader, Writer, sign_with, validity, verify_with
from .spiffe_id import SpiffeId
from .svid import Bundles, X509Svid, verify_chain

#: Domain-separation prefix of every card encoding (and of the signed bytes).
MAGIC = b"zmeshlib-card\x00"
#: Domain-separation prefix of the message the CURVE key signs (the key proof).
KEY_PROOF_DOMAIN = b"zmeshlib-card-key-proof\x00"
#: The card format version this module writes and reads.
VERSION = 2
#: Size of the key proof (an XEdDSA signature), in bytes.
KEY_PROOF_SIZE = 64
#: Default bound on an encoded card, in bytes.
MAX_CARD_SIZE = 64 * 1024

_CURVE_KEY_SIZE = 32
_MAX_ID = 2048
_MAX_LABELS = 64
_MAX_LABEL_KEY = 255
_MAX_LABEL_VALUE = 1024
_MAX_ENDPOINTS = 64
_MAX_ADDRESS = 1024
_MAX_KIND = 16
_MAX_SERVICE = 255
_MAX_CERTS = 8
_MAX_CERT = 16 * 1024
_MAX_SIGNATURE = 1024
_MAX_MS = 2**63 - 1


def _malformed(why: str) -> IdentityError:
    return IdentityError(f"malformed identity card: {why}", rule="card-malformed")


def _check_version(version: int) -> None:
    if version == VERSION:
        return
    if version == 1:
        raise IdentityError(
            "identity card version 1 carries no proof that its signer holds the card's CURVE "
            f"secret key, so it is refused: the workload that published it must upgrade zmeshlib "
            f"and publish a version {VERSION} card",
            rule="card-version",
        )
    raise IdentityError(
        f"identity card version {version} is not supported (this zmeshlib reads version "
        f"{VERSION}); upgrade zmeshlib",
        rule="card-version",
    )


# -- field conversion (constructor) --------------------------------------------


def coerce_curve_key(key: bytes | str) -> bytes:
    """Accept a CURVE public key raw (32 bytes) or in Z85 (40 characters, as pyzmq returns it)."""
    if isinstance(key, str):
        key = key.encode("ascii", "replace")
    if isinstance(key, (bytes, bytearray, memoryview)):
        key = bytes(key)
        if len(key) == 40:
            try:
                return z85.decode(key)
            except (ValueError, KeyError, IndexError, struct.error) as e:
                raise _malformed("the CURVE key is 40 bytes but not valid Z85") from e
        return key
    raise _malformed(f"a CURVE key is bytes or a Z85 str, not {type(key).__name__}")


def _curve_secret(secret: object) -> bytes:
    """A CURVE secret key, raw (32 bytes) or in Z85 (40 characters, as pyzmq returns it)."""
    if isinstance(secret, str):
        secret = secret.encode("ascii", "replace")
    if isinstance(secret, (bytes, bytearray, memoryview)):
        raw = bytes(secret)
        if len(raw) == 40:
            try:
                raw = z85.decode(raw)
            except (ValueError, KeyError, IndexError, struct.error):
                raw = b""
        if len(raw) == _CURVE_KEY_SIZE:
            return raw
    raise IdentityError(
        "curve_secret must be the CURVE secret key, 32 raw bytes or 40 Z85 characters "
        "(the second half of zmq.curve_keypair())",
        rule="card-key-mismatch",
    )


def _spiffe_id(value: str | SpiffeId) -> SpiffeId:
    return SpiffeId.coerce(value)


def _labels(value: Mapping[str, str] | None) -> dict[str, str]:
    items = dict(value or {})
    return {k: items[k] for k in sorted(items, key=lambda k: str(k).encode("utf-8", "replace"))}


def _endpoints(value: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    return tuple(value)


def _certificates(value: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    return tuple(value)


# -- the canonical encoding --------------------------------------------------------


def _to_ms(t: float, what: str) -> int:
    if not isinstance(t, (int, float)) or not math.isfinite(t):
        raise _malformed(f"{what} must be a finite number of epoch seconds")
    return round(t * 1000)


# -- signatures ------------------------------------------------------------------


def _sign_with(private_key: object, data: bytes) -> bytes:
    return sign_with(private_key, data, what="a card", rule="card-key-type")


def _verify_with(public_key: object, signature: bytes, data: bytes) -> None:
    """Raise InvalidSignature, or IdentityError(card-key-type) for a key with no algorithm."""
    verify_with(public_key, signature, data, what="card", rule="card-key-type")


def chain_window(certificates: Iterable[x509.Certificate]) -> tuple[float, float]:
    """The instants (epoch seconds) between which every certificate of the chain is valid."""
    certs = tuple(certificates)
    if not certs:
        raise _malformed("the card carries no certificate")
    return validity(certs)


# -- the card ----------------------------------------------------------------------


@attrs.frozen
class Card:
    """A CURVE public key bound to a SPIFFE ID, signed with the SVID's key and the CURVE key.

    Build with :meth:`sign` or :meth:`from_bytes`; trust only what
    :meth:`verify` returns. ``key_proof`` defaults to empty only so that a card
    can be assembled before it is proven; such a card neither encodes nor
    verifies.
    """

    spiffe_id: SpiffeId = attrs.field(converter=_spiffe_id)
    curve_key: bytes = attrs.field(converter=coerce_curve_key)
    not_before: float
    not_after: float
    labels: Mapping[str, str] = attrs.field(converter=_labels, hash=False)
    endpoints: tuple[Endpoint, ...] = attrs.field(converter=_endpoints)
    certificates: tuple[x509.Certificate, ...] = attrs.field(converter=_certificates)
    signature: bytes = attrs.field(converter=bytes)
    key_proof: bytes = attrs.field(default=b"", converter=bytes)
    version: int = VERSION

    # -- building --------------------------------------------------------------

    @classmethod
    def sign(
        cls,
        svid: X509Svid,
        curve_public: bytes | str,
        *,
        curve_secret: bytes | str,
        labels: Mapping[str, str] | None = None,
        endpoints: Iterable[Endpoint] = (),
        now: float | None = None,
        ttl: float | None = None,
    ) -> Card:
        """Sign a card valid from ``now`` until ``now + ttl``, cut to the SVID's validity.

        ``curve_secret`` must be the secret key of ``curve_public`` (both raw
        or Z85, as ``zmq.curve_keypair()`` returns them): it makes the key
        proof, and is not kept. Times are rounded down to whole milliseconds
        (the encoding's unit), so the card returned equals the card its bytes
        decode to.
        """
        if svid.private_key is None:
            raise IdentityError(
                f"cannot sign a card for {svid.spiffe_id}: the SVID has no private key "
                "(load it with the key PEM)",
                rule="card-no-private-key",
            )
        public = coerce_curve_key(curve_public)
        if len(public) != _CURVE_KEY_SIZE:
            raise _malformed(f"the CURVE key is {len(public)} bytes, not 32")
        secret = _curve_secret(curve_secret)
        if z85.decode(zmq.curve_public(z85.encode(secret))) != public:
            raise IdentityError(
                f"cannot sign a card for {svid.spiffe_id} and CURVE key {public.hex()}: "
                "curve_secret is not that key's secret key (pass the pair zmq.curve_keypair() "
                "returned, the one the sockets use)",
                rule="card-key-mismatch",
            )
        if now is None:
            now = time.time()
        start, end = chain_window(svid.certificates)
        if ttl is not None:
            end = min(end, now + ttl)
        start = max(start, now)
        not_before = math.floor(start * 1000) / 1000
        not_after = math.floor(end * 1000) / 1000
        if not_after <= not_before:
            raise IdentityError(
                f"cannot sign a card for {svid.spiffe_id}: the SVID is not valid after "
                f"{start:.3f} (expired, or ttl is not positive); renew the SVID",
                rule="card-svid-expired",
            )
        unproven = cls(
            spiffe_id=svid.spiffe_id,
            curve_key=public,
            not_before=not_before,
            not_after=not_after,
            labels=labels,
            endpoints=endpoints,
            certificates=svid.certificates,
            signature=b"",
        )
        proven = attrs.evolve(
            unproven, key_proof=_xeddsa.sign(secret, unproven.key_proof_message())
        )
        signature = _sign_with(svid.private_key, proven.signed_bytes())
        return attrs.evolve(proven, signature=signature)

    # -- encoding --------------------------------------------------------------

    def key_proof_message(self) -> bytes:
        """What the CURVE key signs: :data:`KEY_PROOF_DOMAIN`, then the card's content.

        The content is :meth:`signed_bytes` without the proof at its end (the
        layout's fields 1 to 9), so the proof binds the version, SPIFFE ID,
        CURVE key, window, labels, endpoints and chain.
        """
        return KEY_PROOF_DOMAIN + self._content_bytes()

    def signed_bytes(self) -> bytes:
        """What the SVID key signs: the canonical, domain-separated content, then the key proof."""
        return self._content_bytes() + self._checked_proof()

    def _checked_proof(self) -> bytes:
        if len(self.key_proof) != KEY_PROOF_SIZE:
            raise _malformed(
                f"the key proof is {len(self.key_proof)} bytes, not {KEY_PROOF_SIZE} "
                "(sign the card with Card.sign)"
            )
        return self.key_proof

    def _content_bytes(self) -> bytes:
        _check_version(self.version)
        w = Writer(_malformed)
        w.raw(MAGIC)
        w.uint(">B", self.version, "version")
        w.text(">H", str(self.spiffe_id), "spiffe_id", 1, _MAX_ID)
        if len(self.curve_key) != _CURVE_KEY_SIZE:
            raise _malformed(f"the CURVE key is {len(self.curve_key)} bytes, not 32")
        w.raw(self.curve_key)
        not_before = _to_ms(self.not_before, "not_before")
        not_after = _to_ms(self.not_after, "not_after")
        if not 0 <= not_before < not_after <= _MAX_MS:
            raise _malformed("the window must satisfy 0 <= not_before < not_after")
        w.uint(">Q", not_before, "not_before")
        w.uint(">Q", not_after, "not_after")
        w.count(len(self.labels), "labels", _MAX_LABELS)
        for key, value in self.labels.items():
            w.text(">B", key, "label key", 1, _MAX_LABEL_KEY)
            w.text(">H", value, f"label {key!r}", 0, _MAX_LABEL_VALUE)
        w.count(len(self.endpoints), "endpoints", _MAX_ENDPOINTS)
        for ep in self.endpoints:
            if not isinstance(ep, Endpoint):
                raise _malformed(f"an endpoint must be an Endpoint, not {type(ep).__name__}")
            w.text(">H", ep.address, "endpoint address", 1, _MAX_ADDRESS)
            w.text(">B", ep.kind, "endpoint kind", 1, _MAX_KIND)
            w.text(">B", ep.service, "endpoint service", 0, _MAX_SERVICE)
        if not self.certificates:
            raise _malformed("the card carries no certificate")
        w.count(len(self.certificates), "certificates", _MAX_CERTS)
        for cert in self.certificates:
            w.blob(">H", cert.public_bytes(serialization.Encoding.DER), "certificate", 1, _MAX_CERT)
        return b"".join(w.parts)

    def to_bytes(self) -> bytes:
        """The card as stored and sent: :meth:`signed_bytes`, then the signature."""
        w = Writer(_malformed)
        w.raw(self.signed_bytes())
        w.blob(">H", self.signature, "signature", 1, _MAX_SIGNATURE)
        data = b"".join(w.parts)
        if len(data) > MAX_CARD_SIZE:
            raise IdentityError(
                f"the card encodes to {len(data)} bytes, more than {MAX_CARD_SIZE}: "
                "shorten the chain, labels or endpoints",
                rule="card-too-large",
            )
        return data

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int = MAX_CARD_SIZE) -> Card:
        """Decode a card (no trust decision: call :meth:`verify`)."""
        try:
            data = bytes(data)
        except (TypeError, ValueError) as e:
            raise _malformed(f"a card is bytes, not {type(data).__name__}") from e
        if len(data) > max_size:
            raise IdentityError(
                f"identity card is {len(data)} bytes, more than the {max_size} allowed",
                rule="card-too-large",
            )
        r = Reader(data, _malformed)
        if r.take(len(MAGIC), "magic") != MAGIC:
            raise _malformed("it does not start with the zmeshlib card magic")
        version = r.uint(">B", "version")
        _check_version(version)
        spiffe_text = r.text(">H", "spiffe_id")
        curve_key = r.take(_CURVE_KEY_SIZE, "curve key")
        not_before = r.uint(">Q", "not_before")
        not_after = r.uint(">Q", "not_after")
        labels = {}
        for _ in range(r.uint(">B", "label count")):
            key = r.text(">B", "label key")
            labels[key] = r.text(">H", "label value")
        endpoints = []
        for _ in range(r.uint(">B", "endpoint count")):
            address = r.text(">H", "endpoint address")
            kind = r.text(">B", "endpoint kind")
            endpoints.append(Endpoint(address, kind, r.text(">B", "endpoint service")))
        certificates: list[x509.Certificate] = []
        for _ in range(r.uint(">B", "certificate count")):
            certificates.append(
                r.certificate(">H", "certificate", f"certificate {len(certificates)}")
            )
        key_proof = r.take(KEY_PROOF_SIZE, "key proof")
        signature = r.blob(">H", "signature")
        if r.pos != len(data):
            raise _malformed(f"{len(data) - r.pos} bytes follow the signature")
        try:
            card = cls(
                spiffe_id=SpiffeId.parse(spiffe_text),
                curve_key=curve_key,
                not_before=not_before / 1000,
                not_after=not_after / 1000,
                labels=labels,
                endpoints=tuple(endpoints),
                certificates=tuple(certificates),
                signature=signature,
                key_proof=key_proof,
                version=version,
            )
            canonical = card.to_bytes()
        except IdentityError as e:
            if e.rule.startswith("card-"):
                raise
            raise _malformed(f"{e} (rule {e.rule})") from e
        if canonical != data:
            raise _malformed("it is not in canonical form (label order, lengths or times)")
        return card

    # -- verification ------------------------------------------------------------

    def verify(
        self,
        bundles: Bundles,
        now: float | None = None,
        *,
        curve_key: bytes | str | None = None,
    ) -> Peer:
        """Check every rule of the module docstring's table; return the authenticated peer."""
        if now is None:
            now = time.time()
        content = self._content_bytes()  # card-version, card-malformed
        signed = content + self._checked_proof()
        if curve_key is not None and coerce_curve_key(curve_key) != self.curve_key:
            raise IdentityError(
                f"the card of {self.spiffe_id} is for CURVE key {self.key_id}, not for "
                f"the key {coerce_curve_key(curve_key).hex()} it was presented for",
                rule="card-wrong-key",
            )
        if not self.signature:
            raise IdentityError(
                f"the card of {self.spiffe_id} is not signed", rule="card-signature"
            )
        try:
            leaf_key = self.certificates[0].public_key()
        except (ValueError, UnsupportedAlgorithm) as e:
            raise IdentityError(
                f"the leaf certificate of the card claiming {self.spiffe_id} has an unreadable "
                f"public key: {e}",
                rule="card-key-type",
            ) from e
        try:
            _verify_with(leaf_key, self.signature, signed)
        except InvalidSignature:
            raise IdentityError(
                f"the card claiming {self.spiffe_id} has a signature that does not verify "
                "with its SVID's key: it was altered or signed by another key",
                rule="card-signature",
            ) from None
        self._verify_key_proof(KEY_PROOF_DOMAIN + content)
        try:
            leaf_id = verify_chain(self.certificates, bundles, at=now)
        except IdentityError as e:
            raise IdentityError(
                f"the SVID on the card claiming {self.spiffe_id} is not valid: {e}", rule=e.rule
            ) from e
        if leaf_id != self.spiffe_id:
            raise IdentityError(
                f"the card claims {self.spiffe_id} but its SVID is {leaf_id}",
                rule="card-id-mismatch",
            )
        start, end = chain_window(self.certificates)
        if self.not_before < start or self.not_after > end:
            raise IdentityError(
                f"the card of {self.spiffe_id} is valid {self.not_before:.3f}..{self.not_after:.3f}, "
                f"outside its SVID's validity {start:.0f}..{end:.0f}",
                rule="card-outlives-svid",
            )
        self.check_window(now)
        return self.peer

    def _verify_key_proof(self, message: bytes) -> None:
        try:
            edwards = _xeddsa.edwards_public_key(self.curve_key)
        except _xeddsa.UnusableKey as e:
            raise IdentityError(
                f"the card claiming {self.spiffe_id} is for CURVE key {self.key_id}, which no "
                f"secret key has ({e}): it proves nothing and is refused",
                rule="card-key-proof",
            ) from None
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(edwards).verify(self.key_proof, message)
        except (InvalidSignature, ValueError):
            raise IdentityError(
                f"the card claiming {self.spiffe_id} for CURVE key {self.key_id} has a key proof "
                "that does not verify with that key: its signer does not hold the key's secret "
                "(or the proof was taken from another card), so it may not bind it",
                rule="card-key-proof",
            ) from None

    def check_window(self, now: float) -> None:
        """Raise ``card-not-yet-valid`` / ``card-expired`` unless ``not_before <= now < not_after``."""
        if now < self.not_before:
            raise IdentityError(
                f"the card of {self.spiffe_id} is not valid before {self.not_before:.3f} "
                f"(now {now:.3f}); check the clocks",
                rule="card-not-yet-valid",
            )
        if now >= self.not_after:
            raise IdentityError(
                f"the card of {self.spiffe_id} expired at {self.not_after:.3f} (now {now:.3f}); "
                "its workload must publish a new one",
                rule="card-expired",
            )

    # -- views -------------------------------------------------------------------

    @property
    def curve_key_z85(self) -> str:
        return z85.encode(self.curve_key).decode("ascii")

    @property
    def key_id(self) -> str:
        """The CURVE key in lowercase hex: stable, and safe as a file or key name."""
        return self.curve_key.hex()

    @property
    def peer(self) -> Peer:
        return Peer(self.spiffe_id, self.curve_key, dict(self.labels))

    @property
    def services(self) -> frozenset[str]:
        """Every service this card claims: its ``service`` label and its endpoints' services."""
        claimed = {ep.service or self.labels.get("service", "") for ep in self.endpoints}
        claimed.add(self.labels.get("service", ""))
        claimed.discard("")
        return frozenset(claimed)

    def endpoints_for(self, service: str, kind: str | None = None) -> tuple[Endpoint, ...]:
        """Endpoints serving ``service`` (an endpoint without a service serves the label's)."""
        default = self.labels.get("service", "")
        return tuple(
            ep
            for ep in self.endpoints
            if (ep.service or default) == service and (kind is None or ep.kind == kind)
        )

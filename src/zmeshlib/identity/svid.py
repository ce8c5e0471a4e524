"""X.509-SVIDs and trust bundles, judged by the SPIFFE X509-SVID specification.

Rules this module keeps:

* Pure: no I/O, no threads, and no clock read except ``at=None``, which means now.
* Every rejection is an :class:`IdentityError` whose ``rule`` is one of the names
  below (or one of :class:`SpiffeId`'s own); messages name the certificate at fault.
* Parsing (:meth:`X509Svid.parse`) applies the shape rules alone, with no trust and
  no time check, like go-spiffe's ``x509svid.Parse``. Verifying
  (:func:`verify_chain`) applies the shape rules, then finds a signature path to an
  authority of the *leaf's* trust domain, then checks every certificate on that
  path at the time ``at``.
* Values are immutable: a :class:`Bundles` is replaced, never changed.

Shape rules (``parse`` and ``verify``):

==================================  ======================================================
rule                                what it requires
==================================  ======================================================
``no-certificates``                 at least one certificate
``malformed-pem``                   PEM blocks decode (certificates and keys)
``encrypted-key``                   the private key is not encrypted
``no-private-key``                  a key was asked for (``key_pem`` given) and found
``key-mismatch``                    the private key belongs to the leaf
``no-uri-san``                      the leaf has a URI SAN
``multiple-uri-sans``               the leaf has exactly one URI SAN
(SpiffeId's rules)                  that URI is a valid SPIFFE ID
``leaf-is-ca``                      the leaf's basicConstraints say cA=false
``leaf-id-no-path``                 the leaf's SPIFFE ID has a path (spec 3.1, 5.2)
``leaf-missing-digital-signature``  the leaf has keyUsage with digitalSignature
``leaf-has-key-cert-sign``          the leaf's keyUsage lacks keyCertSign
``leaf-has-crl-sign``               the leaf's keyUsage lacks cRLSign
``signer-not-ca``                   every other certificate (and authority) is cA=true
``signer-missing-key-cert-sign``    ... and has keyUsage with keyCertSign
``signer-id-has-path``              a signer's SPIFFE ID, if any, has no path (spec 3.2)
``unsupported-key``                 keys are ECDSA P-256/P-384, RSA or Ed25519
``weak-key``                        RSA keys have at least 2048 bits
``unknown-critical-extension``      no critical extension this module cannot judge
``id-mismatch``                     an X509Svid's ``spiffe_id`` is its leaf's
==================================  ======================================================

Trust rules (``verify`` only):

==================================  ======================================================
rule                                what it requires
==================================  ======================================================
``no-bundle-for-trust-domain``      a bundle exists for the leaf's trust domain
``untrusted``                       signatures chain the leaf to one of its authorities
``path-length``                     no signer's pathLenConstraint is exceeded
``expired``                         no certificate on the path ended before ``at``
``not-yet-valid``                   no certificate on the path starts after ``at``
==================================  ======================================================

Bundle rules (``TrustBundle``, ``Bundles``):

==================================  ======================================================
rule                                what it requires
==================================  ======================================================
``empty-bundle``                    a trust bundle has at least one authority
``trust-domain-has-path``           a bundle's trust domain is not a SPIFFE ID with a path
``duplicate-bundle``                one bundle per trust domain in a Bundles
``type``                            values have the expected types
==================================  ======================================================

Theory of operation: the leaf's SPIFFE ID picks the one bundle that may vouch for
it, so an authority of a federated domain can never vouch for a local ID. Path
building is a bounded depth-first search over the chain's other certificates
(in any order, unused ones ignored, as RFC 5280 validators do) ending at an
authority; each candidate issuer must match by name and by signature
(``verify_directly_issued_by``). The first path that also passes the time and
path-length checks wins; if none does, the first path's failure is reported,
and ``untrusted`` when no signature path exists at all.

Not enforced (as go-spiffe): URI name constraints, the criticality of keyUsage,
and the leaf's extendedKeyUsage contents.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtensionOID

from .._exceptions import IdentityError
from .spiffe_id import SpiffeId, validate_trust_domain

__all__ = ["Bundles", "TrustBundle", "X509Svid", "verify_chain"]

#: Longest path searched: leaf + intermediates + authority.
MAX_PATH_LENGTH = 8

_CURVES = frozenset({"secp256r1", "secp384r1"})
_MIN_RSA_BITS = 2048
#: Extensions this module reads or may safely ignore when marked critical.
_KNOWN_CRITICAL = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.POLICY_CONSTRAINTS,
    }
)
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
_KEY_LABELS = frozenset({b"PRIVATE KEY", b"EC PRIVATE KEY", b"RSA PRIVATE KEY"})


# -- helpers shared by parsing and verification ---------------------------------------


def _fail(rule: str, why: str) -> IdentityError:
    return IdentityError(f"{why} [{rule}]", rule=rule)


def _describe(cert: x509.Certificate) -> str:
    """A short name for a certificate in messages: its subject, else its URI SAN."""
    subject = cert.subject.rfc4514_string()
    if subject:
        return repr(subject)
    uris = _uri_sans(cert)
    return repr(uris[0]) if uris else f"serial {cert.serial_number:x}"


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _uri_sans(cert: x509.Certificate) -> list[str]:
    san = _ext(cert, x509.SubjectAlternativeName)
    if san is None:
        return []
    assert isinstance(san, x509.SubjectAlternativeName)
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _is_ca(cert: x509.Certificate) -> bool:
    bc = _ext(cert, x509.BasicConstraints)
    return isinstance(bc, x509.BasicConstraints) and bc.ca


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    ku = _ext(cert, x509.KeyUsage)
    return ku if isinstance(ku, x509.KeyUsage) else None


def _check_key_algorithm(cert: x509.Certificate, role: str) -> None:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise _fail(
                "unsupported-key",
                f"{role} {_describe(cert)} uses curve {key.curve.name}; use P-256 or P-384",
            )
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise _fail(
                "weak-key",
                f"{role} {_describe(cert)} has a {key.key_size}-bit RSA key; "
                f"at least {_MIN_RSA_BITS} bits are required",
            )
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise _fail(
            "unsupported-key",
            f"{role} {_describe(cert)} has a {type(key).__name__}; "
            "use ECDSA P-256/P-384, RSA >= 2048 or Ed25519",
        )


def _check_extensions(cert: x509.Certificate, role: str) -> None:
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise _fail(
                "unknown-critical-extension",
                f"{role} {_describe(cert)} has critical extension {ext.oid.dotted_string} "
                "that zmeshlib cannot judge",
            )


def _check_leaf(cert: x509.Certificate) -> SpiffeId:
    uris = _uri_sans(cert)
    if not uris:
        raise _fail("no-uri-san", f"leaf {_describe(cert)} has no URI SAN, so no SPIFFE ID")
    if len(uris) > 1:
        raise _fail(
            "multiple-uri-sans",
            f"leaf {_describe(cert)} has {len(uris)} URI SANs {uris}; an SVID has exactly one",
        )
    spiffe_id = SpiffeId.parse(uris[0])
    if _is_ca(cert):
        raise _fail("leaf-is-ca", f"leaf {_describe(cert)} is a CA certificate (cA=true)")
    if not spiffe_id.path:
        raise _fail(
            "leaf-id-no-path",
            f"leaf SPIFFE ID {spiffe_id} has no path; a workload ID names more than its trust domain",
        )
    ku = _key_usage(cert)
    if ku is None or not ku.digital_signature:
        raise _fail(
            "leaf-missing-digital-signature",
            f"leaf {_describe(cert)} must have keyUsage with digitalSignature",
        )
    if ku.key_cert_sign:
        raise _fail("leaf-has-key-cert-sign", f"leaf {_describe(cert)} may not have keyCertSign")
    if ku.crl_sign:
        raise _fail("leaf-has-crl-sign", f"leaf {_describe(cert)} may not have cRLSign")
    _check_key_algorithm(cert, "leaf")
    _check_extensions(cert, "leaf")
    return spiffe_id


def _check_signer(cert: x509.Certificate, role: str) -> None:
    if not _is_ca(cert):
        raise _fail("signer-not-ca", f"{role} {_describe(cert)} is not a CA certificate (cA=true)")
    ku = _key_usage(cert)
    if ku is None or not ku.key_cert_sign:
        raise _fail(
            "signer-missing-key-cert-sign",
            f"{role} {_describe(cert)} must have keyUsage with keyCertSign",
        )
    for uri in _uri_sans(cert):
        if uri.startswith("spiffe://") and SpiffeId.parse(uri).path:
            raise _fail(
                "signer-id-has-path",
                f"{role} {_describe(cert)} has SPIFFE ID {uri} with a path; a signer's ID may not",
            )
    _check_key_algorithm(cert, role)
    _check_extensions(cert, role)


def check_svid_chain(certificates: Sequence[x509.Certificate]) -> SpiffeId:
    """Apply the shape rules to a chain (leaf first); return the leaf's SPIFFE ID."""
    if not certificates:
        raise _fail("no-certificates", "an X.509-SVID needs at least its leaf certificate")
    spiffe_id = _check_leaf(certificates[0])
    for cert in certificates[1:]:
        _check_signer(cert, "intermediate")
    return spiffe_id


def _as_utc(at: datetime | float | None) -> datetime:
    if at is None:
        return datetime.now(timezone.utc)
    if isinstance(at, datetime):
        return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
    return datetime.fromtimestamp(at, timezone.utc)


def _issued(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    if issuer.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _paths(
    path: list[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    authorities: Sequence[x509.Certificate],
) -> Iterator[list[x509.Certificate]]:
    """Every signature path from ``path[-1]`` to an authority, depth first, bounded."""
    current = path[-1]
    for authority in authorities:
        if _issued(authority, current):
            yield [*path, authority]
    if len(path) + 1 >= MAX_PATH_LENGTH:
        return
    for candidate in intermediates:
        if candidate not in path and _issued(candidate, current):
            yield from _paths([*path, candidate], intermediates, authorities)


def _check_path(path: Sequence[x509.Certificate], when: datetime) -> None:
    for index, cert in enumerate(path):
        role = "leaf" if index == 0 else "authority" if index == len(path) - 1 else "intermediate"
        if when > cert.not_valid_after_utc:
            raise _fail(
                "expired",
                f"{role} {_describe(cert)} expired at {cert.not_valid_after_utc.isoformat()} "
                f"(checked at {when.isoformat()})",
            )
        if when < cert.not_valid_before_utc:
            raise _fail(
                "not-yet-valid",
                f"{role} {_describe(cert)} is valid only from "
                f"{cert.not_valid_before_utc.isoformat()} (checked at {when.isoformat()})",
            )
        if index >= 2:  # a signer with index-1 intermediates below it
            bc = _ext(cert, x509.BasicConstraints)
            below = index - 1
            limit = bc.path_length if isinstance(bc, x509.BasicConstraints) else None
            if limit is not None and below > limit:
                raise _fail(
                    "path-length",
                    f"{role} {_describe(cert)} allows {limit} intermediates "
                    f"below it, the path has {below}",
                )


def verify_chain(
    certificates: Sequence[x509.Certificate],
    bundles: Bundles | TrustBundle | Iterable[TrustBundle],
    at: datetime | float | None = None,
) -> SpiffeId:
    """Verify an X.509-SVID chain (leaf first) and return its SPIFFE ID.

    Only the bundle of the leaf's own trust domain may vouch for it. ``at`` is a
    datetime (naive = UTC) or epoch seconds; None means now.
    """
    certificates = tuple(certificates)
    spiffe_id = check_svid_chain(certificates)
    bundle = Bundles.coerce(bundles).get(spiffe_id.trust_domain)
    if bundle is None:
        raise _fail(
            "no-bundle-for-trust-domain",
            f"no trust bundle for trust domain {spiffe_id.trust_domain!r} (of {spiffe_id}); "
            "add its CA certificates to the identity's bundles to trust it",
        )
    when = _as_utc(at)
    first_error: IdentityError | None = None
    leaf = certificates[0]
    intermediates = [c for c in certificates[1:] if c not in bundle.authorities]
    for path in _paths([leaf], intermediates, bundle.authorities):
        try:
            _check_path(path, when)
        except IdentityError as exc:
            first_error = first_error or exc
            continue
        return spiffe_id
    if first_error is not None:
        raise first_error
    raise _fail(
        "untrusted",
        f"leaf {_describe(leaf)} ({spiffe_id}, issued by {leaf.issuer.rfc4514_string()!r}) "
        f"does not chain to any authority of trust domain {spiffe_id.trust_domain!r}",
    )


# -- PEM ------------------------------------------------------------------------------


def _pem_blocks(data: bytes | str) -> list[tuple[bytes, bytes, bytes]]:
    """(label, whole block, body) for each PEM block, in order."""
    if isinstance(data, str):
        data = data.encode()
    return [(m.group(1), m.group(0), m.group(2)) for m in _PEM_BLOCK.finditer(data)]


def _load_certificates(data: bytes | str) -> tuple[x509.Certificate, ...]:
    certs = []
    for label, _, body in _pem_blocks(data):
        if label == b"CERTIFICATE":
            try:
                certs.append(x509.load_der_x509_certificate(base64.b64decode(body)))
            except ValueError as exc:
                raise _fail("malformed-pem", f"a CERTIFICATE block does not decode: {exc}") from exc
    return tuple(certs)


def _load_private_key(data: bytes | str) -> PrivateKeyTypes | None:
    for label, block, body in _pem_blocks(data):
        if label == b"ENCRYPTED PRIVATE KEY" or b"ENCRYPTED" in body:
            raise _fail("encrypted-key", "the private key is encrypted; give it unencrypted")
        if label in _KEY_LABELS:
            try:
                return serialization.load_pem_private_key(block, password=None)
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise _fail(
                    "malformed-pem", f"the {label.decode()} block does not decode: {exc}"
                ) from exc
    return None


def _certificates_pem(certificates: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- value types ----------------------------------------------------------------------


def _trust_domain_name(value: str) -> str:
    if value.startswith("spiffe://"):
        sid = SpiffeId.parse(value)
        if sid.path:
            raise _fail("trust-domain-has-path", f"{value!r} is a SPIFFE ID, not a trust domain")
        return sid.trust_domain
    return validate_trust_domain(value)


def _unique(certificates: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    return tuple(dict.fromkeys(certificates))


@attrs.frozen
class TrustBundle:
    """The X.509 authorities (CA certificates) that vouch for one trust domain."""

    trust_domain: str = attrs.field(converter=_trust_domain_name)
    authorities: tuple[x509.Certificate, ...] = attrs.field(converter=_unique)

    def __attrs_post_init__(self) -> None:
        if not self.authorities:
            raise _fail(
                "empty-bundle", f"the trust bundle of {self.trust_domain!r} has no authority"
            )
        for cert in self.authorities:
            _check_signer(cert, f"authority of {self.trust_domain!r}")

    @classmethod
    def from_pem(cls, trust_domain: str, pem: bytes | str) -> TrustBundle:
        return cls(trust_domain, _load_certificates(pem))

    def to_pem(self) -> bytes:
        return _certificates_pem(self.authorities)


def _bundle_tuple(value: Iterable[TrustBundle]) -> tuple[TrustBundle, ...]:
    seen: dict[str, TrustBundle] = {}
    for bundle in value:
        if not isinstance(bundle, TrustBundle):
            raise IdentityError(
                f"Bundles holds TrustBundle values, not {type(bundle).__name__}", rule="type"
            )
        if bundle.trust_domain in seen and seen[bundle.trust_domain] != bundle:
            raise _fail(
                "duplicate-bundle",
                f"two different bundles for trust domain {bundle.trust_domain!r}; "
                "merge their authorities into one",
            )
        seen[bundle.trust_domain] = bundle
    return tuple(seen[td] for td in sorted(seen))


@attrs.frozen
class Bundles:
    """The trust bundles of every trust domain this workload trusts (federation).

    Immutable and ordered by trust domain, so two equal sets compare equal.
    """

    bundles: tuple[TrustBundle, ...] = attrs.field(default=(), converter=_bundle_tuple)

    def get(self, trust_domain: str) -> TrustBundle | None:
        for bundle in self.bundles:
            if bundle.trust_domain == trust_domain:
                return bundle
        return None

    @property
    def trust_domains(self) -> frozenset[str]:
        return frozenset(b.trust_domain for b in self.bundles)

    def with_bundle(self, bundle: TrustBundle) -> Bundles:
        """A copy where ``bundle`` replaces any bundle of its trust domain."""
        others = (b for b in self.bundles if b.trust_domain != bundle.trust_domain)
        return Bundles((*others, bundle))

    @classmethod
    def coerce(cls, value: Bundles | TrustBundle | Iterable[TrustBundle]) -> Bundles:
        if isinstance(value, Bundles):
            return value
        if isinstance(value, TrustBundle):
            return cls((value,))
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise IdentityError(
                f"expected Bundles, a TrustBundle or TrustBundles, not {type(value).__name__}",
                rule="type",
            )
        return cls(value)

    def __iter__(self) -> Iterator[TrustBundle]:
        return iter(self.bundles)

    def __len__(self) -> int:
        return len(self.bundles)

    def __contains__(self, trust_domain: object) -> bool:
        return any(b.trust_domain == trust_domain for b in self.bundles)


@attrs.frozen
class X509Svid:
    """An X.509-SVID: the leaf certificate, its intermediates, and (when ours) the key.

    Constructing one applies the shape rules; :meth:`verify` adds trust and time.
    A peer's SVID has no private key.
    """

    spiffe_id: SpiffeId
    certificates: tuple[x509.Certificate, ...] = attrs.field(converter=tuple)
    private_key: PrivateKeyTypes | None = attrs.field(default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        found = check_svid_chain(self.certificates)
        if found != self.spiffe_id:
            raise _fail("id-mismatch", f"the leaf is {found}, not {self.spiffe_id}")
        if self.private_key is not None and _spki(self.private_key.public_key()) != _spki(
            self.leaf.public_key()
        ):
            raise _fail(
                "key-mismatch",
                f"the private key does not belong to the leaf certificate of {self.spiffe_id}",
            )

    @classmethod
    def from_certificates(
        cls, certificates: Iterable[x509.Certificate], private_key: PrivateKeyTypes | None = None
    ) -> X509Svid:
        certificates = tuple(certificates)
        return cls(check_svid_chain(certificates), certificates, private_key)

    @classmethod
    def parse(cls, certs_pem: bytes | str, key_pem: bytes | str | None = None) -> X509Svid:
        """Parse PEM certificates (leaf first) and an optional PEM key.

        With ``key_pem`` None, a key found in ``certs_pem`` is used; an SVID without
        a key is still valid (a peer's). A ``key_pem`` without a key is an error.
        """
        certificates = _load_certificates(certs_pem)
        if key_pem is None:
            key = _load_private_key(certs_pem)
        else:
            key = _load_private_key(key_pem)
            if key is None:
                raise _fail("no-private-key", "no PRIVATE KEY block in the key PEM")
        return cls.from_certificates(certificates, key)

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[0]

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id.trust_domain

    @property
    def not_before(self) -> float:
        """When the leaf became valid, epoch seconds."""
        return self.leaf.not_valid_before_utc.timestamp()

    @property
    def not_after(self) -> float:
        """When the first certificate of the chain expires, epoch seconds."""
        return min(c.not_valid_after_utc for c in self.certificates).timestamp()

    def verify(
        self,
        bundles: Bundles | TrustBundle | Iterable[TrustBundle],
        at: datetime | float | None = None,
    ) -> SpiffeId:
        return verify_chain(self.certificates, bundles, at)

    def certs_pem(self) -> bytes:
        return _certificates_pem(self.certificates)

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        if self.private_key is None:
            raise _fail("no-private-key", f"the SVID of {self.spiffe_id} carries no private key")
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

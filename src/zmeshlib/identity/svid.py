"""X.509-SVIDs and trust bundles, judged by the SPIFFE X509-SVID specification.

Rules this module keeps:

* Pure: no I/O, no threads, and no clock read except ``at=None``, which means now.
* Every rejection is an :class:`IdentityError` whose ``rule`` is one of the names
  below (or one of :class:`SpiffeId`'s own); messages name the certificate at fault.
  That holds whatever the bytes: certificates, PEM and IDs come from files and
  from the network, so no other exception leaves this module for any input.
* Parsing (:meth:`X509Svid.parse`) applies the shape rules alone, with no trust and
  no time check, like go-spiffe's ``x509svid.Parse``. Verifying
  (:func:`verify_chain`) applies the shape rules, then finds a signature path to an
  authority of the *leaf's* trust domain, then checks every certificate on that
  path at the time ``at``.
* The work one verification does is bounded by the limits below, not by the
  input: a chain built to make the path search explode is refused at the limit.
* A CA certificate that names a SPIFFE trust domain in its URI SAN is an
  authority of that trust domain only, wherever a PEM file puts it.
* Values are immutable: a :class:`Bundles` is replaced, never changed.

Shape rules (``parse`` and ``verify``):

==================================  ======================================================
rule                                what it requires
==================================  ======================================================
``no-certificates``                 at least one certificate
``malformed-pem``                   PEM blocks decode (certificates and keys)
``malformed-certificate``           every part of a certificate this module reads
                                    (names, extensions, SANs, key, validity) decodes
``duplicate-extension``             no extension appears twice in a certificate
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
``path-search-limit``               a path is found within the search limits below
``path-length``                     no signer's pathLenConstraint is exceeded
``expired``                         no certificate on the path ended before ``at``
``not-yet-valid``                   no certificate on the path starts after ``at``
``invalid-time``                    ``at`` is None, a datetime or epoch seconds in range
==================================  ======================================================

Search limits (per call of ``verify``):

==========================  =====  ==================================================
limit                       value  why
==========================  =====  ==================================================
``MAX_PATH_LENGTH``         8      certificates on a path, leaf and authority included;
                                   SPIRE's deepest real chains have 4 or 5
``MAX_SIGNATURE_CHECKS``    64     signatures checked in all; a valid chain needs one
                                   per certificate plus one per same-named decoy, while
                                   7 mutually-issued intermediates (2.9 KB of DER) cost
                                   8,659 unbounded, and every added one multiplies that
==========================  =====  ==================================================

Bundle rules (``TrustBundle``, ``Bundles``):

=================================  ======================================================
rule                               what it requires
=================================  ======================================================
``empty-bundle``                   a trust bundle has at least one authority
``trust-domain-has-path``          a bundle's trust domain is not a SPIFFE ID with a path
``bundle-trust-domain-mismatch``   a PEM bundle of one trust domain holds no CA
                                   certificate naming another (or several) in its URI SAN
``duplicate-bundle``               one bundle per trust domain in a Bundles
``type``                           values have the expected types
=================================  ======================================================

Where a PEM file's certificates belong (``Bundles.from_pem(pem, default)``; the
same table makes ``TrustBundle.from_pem(td, pem)`` refuse what is not ``td``'s):

=====================================  ==================================================
the CA certificate's URI SANs          it is an authority of
=====================================  ==================================================
no ``spiffe://`` URI                   ``default`` (the file's own trust domain)
``spiffe://partner.org``               partner.org only
two trust domains                      refused: ``bundle-trust-domain-mismatch``
=====================================  ==================================================

Theory of operation: cryptography decodes names, extensions and keys lazily, on
first access, and raises whatever its decoders raise (``ValueError``,
``DuplicateExtension``, ``UnsupportedGeneralNameType``, ``ipaddress``'s errors...).
So every certificate is first decoded once, by :func:`_decode`, into a
:class:`_Cert` holding every part the rules read; :func:`_part` is the single
place a decoding failure becomes ``malformed-certificate`` (or
``duplicate-extension``, ``unsupported-key``), and the rules then read only the
decoded values. The leaf's SPIFFE ID picks the one bundle that may vouch for it,
so an authority of a federated domain can never vouch for a local ID. Path
building is a depth-first search over the chain's other certificates (in any
order, unused ones ignored, as RFC 5280 validators do) ending at an authority;
each candidate issuer must match by name and by signature
(``verify_directly_issued_by``), and every signature checked counts against
``MAX_SIGNATURE_CHECKS`` (as Go's crypto/x509 counts them), so the search ends
after at most that many. The first path that also passes the time and
path-length checks wins; if none does, the first path's failure is reported,
``path-search-limit`` when the search was cut short (the budget ran out, or
issuers exist only deeper than ``MAX_PATH_LENGTH``), and ``untrusted`` when no
signature path exists at all.

Not enforced (as go-spiffe): URI name constraints, the criticality of keyUsage,
and the leaf's extendedKeyUsage contents.
"""

from __future__ import annotations

import base64
import re
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import TypeVar

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtensionOID

from .._exceptions import IdentityError
from .spiffe_id import SpiffeId, validate_trust_domain

__all__ = ["Bundles", "TrustBundle", "X509Svid", "verify_chain"]

#: Longest path searched: leaf + intermediates + authority.
MAX_PATH_LENGTH = 8
#: Signatures one verification may check before it gives up (``path-search-limit``).
MAX_SIGNATURE_CHECKS = 64

_T = TypeVar("_T")
_ANY_PRIVATE_KEY = typing.get_args(PrivateKeyTypes)
#: Private keys whose public half can pass the key rules (so can match a leaf).
_SVID_PRIVATE_KEYS = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)
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
_SCHEME = "spiffe://"


# -- decoding: the one place cryptography's lazy parsing may fail --------------------


def _fail(rule: str, why: str) -> IdentityError:
    return IdentityError(f"{why} [{rule}]", rule=rule)


def _fingerprint(cert: x509.Certificate) -> str:
    """The certificate's short SHA-256 (not its serial: reading a non-positive serial
    warns, while the DER digest names this exact certificate without decoding it)."""
    return cert.fingerprint(hashes.SHA256()).hex()[:16]


def _part(cert: x509.Certificate, role: str, what: str, read: Callable[[], _T]) -> _T:
    """Read one lazily decoded part of a certificate, turning any failure into a rule.

    Which exception types cryptography raises on damaged input is not part of
    its API (it has changed between releases), so any ``Exception`` from a read
    means the input is unusable; ``BaseException`` (KeyboardInterrupt) passes.
    """
    try:
        return read()
    except Exception as exc:
        raise _decoding_error(f"{role} (sha256 {_fingerprint(cert)})", what, exc) from exc


def _decoding_error(label: str, what: str, exc: Exception) -> IdentityError:
    if isinstance(exc, x509.DuplicateExtension):
        return _fail(
            "duplicate-extension",
            f"{label} has the {exc.oid.dotted_string} extension more than once; a "
            "certificate may carry each extension once (RFC 5280 4.2): reissue it",
        )
    if isinstance(exc, UnsupportedAlgorithm):
        return _fail(
            "unsupported-key",
            f"{label} has a {what} of an algorithm zmeshlib cannot read ({exc}); "
            "use ECDSA P-256/P-384, RSA >= 2048 or Ed25519",
        )
    return _fail(
        "malformed-certificate",
        f"{label} is damaged: its {what} cannot be decoded ({exc}); "
        "the certificate must be re-issued or re-copied",
    )


@attrs.frozen(eq=False)
class _Cert:
    """A certificate with every part the rules read, decoded once (compared by identity)."""

    cert: x509.Certificate
    name: str  # for messages: the subject, else the first URI SAN, else the fingerprint
    subject: x509.Name
    issuer: x509.Name
    issuer_text: str
    extensions: tuple[x509.Extension[x509.ExtensionType], ...]
    uris: tuple[str, ...]
    basic_constraints: x509.BasicConstraints | None
    key_usage: x509.KeyUsage | None
    public_key: CertificatePublicKeyTypes
    not_before: datetime
    not_after: datetime

    @property
    def is_ca(self) -> bool:
        return self.basic_constraints is not None and self.basic_constraints.ca


def _decode(cert: object, role: str) -> _Cert:
    if not isinstance(cert, x509.Certificate):
        raise _fail(
            "type", f"{role} must be a cryptography x509.Certificate, not {type(cert).__name__}"
        )
    subject = _part(cert, role, "subject name", lambda: cert.subject)
    subject_text = _part(cert, role, "subject name", subject.rfc4514_string)
    issuer = _part(cert, role, "issuer name", lambda: cert.issuer)
    issuer_text = _part(cert, role, "issuer name", issuer.rfc4514_string)
    extensions = _part(cert, role, "extensions", lambda: tuple(cert.extensions))
    values = {ext.oid: ext.value for ext in extensions}
    san = values.get(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    uris = (
        tuple(
            _part(
                cert,
                role,
                "subject alternative names",
                lambda: san.get_values_for_type(x509.UniformResourceIdentifier),
            )
        )
        if isinstance(san, x509.SubjectAlternativeName)
        else ()
    )
    bc = values.get(ExtensionOID.BASIC_CONSTRAINTS)
    ku = values.get(ExtensionOID.KEY_USAGE)
    if subject_text:
        name = repr(subject_text)
    elif uris:
        name = repr(uris[0])
    else:
        name = f"sha256 {_fingerprint(cert)}"
    return _Cert(
        cert=cert,
        name=name,
        subject=subject,
        issuer=issuer,
        issuer_text=issuer_text,
        extensions=extensions,
        uris=uris,
        basic_constraints=bc if isinstance(bc, x509.BasicConstraints) else None,
        key_usage=ku if isinstance(ku, x509.KeyUsage) else None,
        public_key=_part(cert, role, "public key", cert.public_key),
        not_before=_part(cert, role, "validity", lambda: cert.not_valid_before_utc),
        not_after=_part(cert, role, "validity", lambda: cert.not_valid_after_utc),
    )


def _decode_all(certificates: object, role: str) -> tuple[_Cert, ...]:
    if isinstance(certificates, (str, bytes)) or not isinstance(certificates, Iterable):
        raise _fail(
            "type",
            f"expected certificates (an iterable of x509.Certificate), not "
            f"{type(certificates).__name__}; PEM text goes to X509Svid.parse",
        )
    return tuple(
        _decode(cert, role if index == 0 else f"intermediate {index + 1}")
        for index, cert in enumerate(certificates)
    )


def named_trust_domains(cert: x509.Certificate) -> frozenset[str]:
    """The SPIFFE trust domains a CA certificate names in its URI SAN (``spiffe://td``)."""
    return _named_trust_domains(_decode(cert, "certificate"))


def _named_trust_domains(view: _Cert) -> frozenset[str]:
    return frozenset(SpiffeId.parse(u).trust_domain for u in view.uris if u.startswith(_SCHEME))


# -- shape rules ------------------------------------------------------------------------


def _check_key_algorithm(view: _Cert, role: str) -> None:
    key = view.public_key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise _fail(
                "unsupported-key",
                f"{role} {view.name} uses curve {key.curve.name}; use P-256 or P-384",
            )
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise _fail(
                "weak-key",
                f"{role} {view.name} has a {key.key_size}-bit RSA key; "
                f"at least {_MIN_RSA_BITS} bits are required",
            )
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise _fail(
            "unsupported-key",
            f"{role} {view.name} has a {type(key).__name__}; "
            "use ECDSA P-256/P-384, RSA >= 2048 or Ed25519",
        )


def _check_extensions(view: _Cert, role: str) -> None:
    for ext in view.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise _fail(
                "unknown-critical-extension",
                f"{role} {view.name} has critical extension {ext.oid.dotted_string} "
                "that zmeshlib cannot judge",
            )


def _check_leaf(view: _Cert) -> SpiffeId:
    uris = view.uris
    if not uris:
        raise _fail("no-uri-san", f"leaf {view.name} has no URI SAN, so no SPIFFE ID")
    if len(uris) > 1:
        raise _fail(
            "multiple-uri-sans",
            f"leaf {view.name} has {len(uris)} URI SANs {list(uris)}; an SVID has exactly one",
        )
    spiffe_id = SpiffeId.parse(uris[0])
    if view.is_ca:
        raise _fail("leaf-is-ca", f"leaf {view.name} is a CA certificate (cA=true)")
    if not spiffe_id.path:
        raise _fail(
            "leaf-id-no-path",
            f"leaf SPIFFE ID {spiffe_id} has no path; a workload ID names more than its trust domain",
        )
    ku = view.key_usage
    if ku is None or not ku.digital_signature:
        raise _fail(
            "leaf-missing-digital-signature",
            f"leaf {view.name} must have keyUsage with digitalSignature",
        )
    if ku.key_cert_sign:
        raise _fail("leaf-has-key-cert-sign", f"leaf {view.name} may not have keyCertSign")
    if ku.crl_sign:
        raise _fail("leaf-has-crl-sign", f"leaf {view.name} may not have cRLSign")
    _check_key_algorithm(view, "leaf")
    _check_extensions(view, "leaf")
    return spiffe_id


def _check_signer(view: _Cert, role: str) -> None:
    if not view.is_ca:
        raise _fail("signer-not-ca", f"{role} {view.name} is not a CA certificate (cA=true)")
    ku = view.key_usage
    if ku is None or not ku.key_cert_sign:
        raise _fail(
            "signer-missing-key-cert-sign",
            f"{role} {view.name} must have keyUsage with keyCertSign",
        )
    for uri in view.uris:
        if uri.startswith(_SCHEME) and SpiffeId.parse(uri).path:
            raise _fail(
                "signer-id-has-path",
                f"{role} {view.name} has SPIFFE ID {uri} with a path; a signer's ID may not",
            )
    _check_key_algorithm(view, role)
    _check_extensions(view, role)


def _check_chain(views: Sequence[_Cert]) -> SpiffeId:
    if not views:
        raise _fail("no-certificates", "an X.509-SVID needs at least its leaf certificate")
    spiffe_id = _check_leaf(views[0])
    for view in views[1:]:
        _check_signer(view, "intermediate")
    return spiffe_id


def check_svid_chain(certificates: Iterable[x509.Certificate]) -> SpiffeId:
    """Apply the shape rules to a chain (leaf first); return the leaf's SPIFFE ID."""
    return _check_chain(_decode_all(certificates, "leaf"))


# -- trust: the bounded path search ---------------------------------------------------


def _as_utc(at: datetime | float | None) -> datetime:
    if at is None:
        return datetime.now(timezone.utc)
    if isinstance(at, datetime):
        return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        try:
            return datetime.fromtimestamp(at, timezone.utc)
        except (OverflowError, OSError, ValueError) as exc:
            raise _fail(
                "invalid-time", f"at={at!r} is not a representable instant ({exc})"
            ) from exc
    raise _fail(
        "invalid-time",
        f"at must be None (now), a datetime or epoch seconds, not {type(at).__name__}",
    )


def _signed_by(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    """One signature check: is ``cert`` signed by ``issuer``'s key?"""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


class _PathSearch:
    """One verification's depth-first path search, and what it spent."""

    def __init__(self, intermediates: Sequence[_Cert], authorities: Sequence[_Cert]) -> None:
        self.intermediates = intermediates
        self.authorities = authorities
        self.signature_checks = 0
        self.exhausted = False  # the signature budget ran out
        self.too_deep = False  # issuers existed past MAX_PATH_LENGTH

    def _issued(self, issuer: _Cert, cert: _Cert) -> bool:
        if issuer.subject != cert.issuer:
            return False
        if self.signature_checks >= MAX_SIGNATURE_CHECKS:
            self.exhausted = True
            return False
        self.signature_checks += 1
        return _signed_by(issuer.cert, cert.cert)

    def paths(self, path: list[_Cert]) -> Iterator[list[_Cert]]:
        """Every signature path from ``path[-1]`` to an authority, within the limits."""
        current = path[-1]
        for authority in self.authorities:
            if self._issued(authority, current):
                yield [*path, authority]
        if len(path) + 1 >= MAX_PATH_LENGTH:
            if any(c.subject == current.issuer and c not in path for c in self.intermediates):
                self.too_deep = True
            return
        for candidate in self.intermediates:
            if self.exhausted:
                return
            if candidate not in path and self._issued(candidate, current):
                yield from self.paths([*path, candidate])


def _check_path(path: Sequence[_Cert], when: datetime) -> None:
    for index, view in enumerate(path):
        role = "leaf" if index == 0 else "authority" if index == len(path) - 1 else "intermediate"
        if when > view.not_after:
            raise _fail(
                "expired",
                f"{role} {view.name} expired at {view.not_after.isoformat()} "
                f"(checked at {when.isoformat()})",
            )
        if when < view.not_before:
            raise _fail(
                "not-yet-valid",
                f"{role} {view.name} is valid only from "
                f"{view.not_before.isoformat()} (checked at {when.isoformat()})",
            )
        if index >= 2:  # a signer with index-1 intermediates below it
            below = index - 1
            bc = view.basic_constraints
            limit = bc.path_length if bc is not None else None
            if limit is not None and below > limit:
                raise _fail(
                    "path-length",
                    f"{role} {view.name} allows {limit} intermediates "
                    f"below it, the path has {below}",
                )


def verify_chain(
    certificates: Iterable[x509.Certificate],
    bundles: Bundles | TrustBundle | Iterable[TrustBundle],
    at: datetime | float | None = None,
) -> SpiffeId:
    """Verify an X.509-SVID chain (leaf first) and return its SPIFFE ID.

    Only the bundle of the leaf's own trust domain may vouch for it. ``at`` is a
    datetime (naive = UTC) or epoch seconds; None means now.
    """
    views = _decode_all(certificates, "leaf")
    spiffe_id = _check_chain(views)
    bundle = Bundles.coerce(bundles).get(spiffe_id.trust_domain)
    if bundle is None:
        raise _fail(
            "no-bundle-for-trust-domain",
            f"no trust bundle for trust domain {spiffe_id.trust_domain!r} (of {spiffe_id}); "
            "add its CA certificates to the identity's bundles to trust it",
        )
    when = _as_utc(at)
    leaf = views[0]
    seen = set(bundle.authorities)
    intermediates = []
    for view in views[1:]:
        if view.cert not in seen:  # duplicates and authorities add no path
            seen.add(view.cert)
            intermediates.append(view)
    search = _PathSearch(intermediates, bundle._decoded)
    first_error: IdentityError | None = None
    for path in search.paths([leaf]):
        try:
            _check_path(path, when)
        except IdentityError as exc:
            first_error = first_error or exc
            continue
        return spiffe_id
    where = f"leaf {leaf.name} ({spiffe_id}, issued by {leaf.issuer_text!r})"
    if search.exhausted:
        found = f"; the first path found failed: {first_error}" if first_error else ""
        raise _fail(
            "path-search-limit",
            f"gave up after {MAX_SIGNATURE_CHECKS} signature checks looking for a path from "
            f"{where} to an authority of trust domain {spiffe_id.trust_domain!r}{found}; "
            "a chain needs only the leaf and its own intermediates, leaf first",
        )
    if first_error is not None:
        raise first_error
    if search.too_deep:
        raise _fail(
            "path-search-limit",
            f"no path of at most {MAX_PATH_LENGTH} certificates (leaf, intermediates, "
            f"authority) leads from {where} to an authority of trust domain "
            f"{spiffe_id.trust_domain!r}; longer paths are not searched: shorten the chain",
        )
    raise _fail(
        "untrusted",
        f"{where} does not chain to any authority of trust domain {spiffe_id.trust_domain!r}",
    )


# -- PEM ------------------------------------------------------------------------------


def _pem_blocks(data: bytes | str) -> list[tuple[bytes, bytes, bytes]]:
    """(label, whole block, body) for each PEM block, in order."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise _fail("type", f"PEM must be bytes or str, not {type(data).__name__}")
    return [(m.group(1), m.group(0), m.group(2)) for m in _PEM_BLOCK.finditer(bytes(data))]


def _load_certificates(data: bytes | str) -> tuple[x509.Certificate, ...]:
    certs = []
    for label, _, body in _pem_blocks(data):
        if label == b"CERTIFICATE":
            try:
                der = base64.b64decode(body)
                with warnings.catch_warnings():
                    # cryptography still parses some invalid encodings with a deprecation
                    # warning; as the card decoder does, such a certificate is malformed
                    warnings.simplefilter("error", CryptographyDeprecationWarning)
                    certs.append(x509.load_der_x509_certificate(der))
            except Exception as exc:  # see _part: any decoder failure is damaged input
                raise _fail(
                    "malformed-pem",
                    f"CERTIFICATE block {len(certs) + 1} does not decode: {exc}",
                ) from exc
    return tuple(certs)


def _load_private_key(data: bytes | str) -> PrivateKeyTypes | None:
    for label, block, body in _pem_blocks(data):
        if label == b"ENCRYPTED PRIVATE KEY" or b"ENCRYPTED" in body:
            raise _fail("encrypted-key", "the private key is encrypted; give it unencrypted")
        if label in _KEY_LABELS:
            try:
                return serialization.load_pem_private_key(block, password=None)
            except Exception as exc:  # see _part: any decoder failure is damaged input
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
    if not isinstance(value, str):
        raise _fail(
            "type",
            f"a trust domain must be a str such as 'example.org', not {type(value).__name__}",
        )
    if value.startswith(_SCHEME):
        sid = SpiffeId.parse(value)
        if sid.path:
            raise _fail("trust-domain-has-path", f"{value!r} is a SPIFFE ID, not a trust domain")
        return sid.trust_domain
    return validate_trust_domain(value)


def _unique(certificates: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    if isinstance(certificates, (str, bytes)) or not isinstance(certificates, Iterable):
        raise _fail(
            "type",
            "a trust bundle's authorities are an iterable of x509.Certificate, not "
            f"{type(certificates).__name__}; PEM text goes to TrustBundle.from_pem",
        )
    certs = tuple(certificates)
    for cert in certs:
        if not isinstance(cert, x509.Certificate):
            raise _fail(
                "type", f"a trust bundle holds x509.Certificate values, not {type(cert).__name__}"
            )
    return tuple(dict.fromkeys(certs))


def _placed(view: _Cert, default: str, where: str) -> str:
    """The trust domain a CA certificate of a PEM file belongs to (the module's table)."""
    named = _named_trust_domains(view)
    if len(named) > 1:
        raise _fail(
            "bundle-trust-domain-mismatch",
            f"{where} ({view.name}) names trust domains {', '.join(sorted(named))} in its "
            "URI SAN; a PEM file cannot say which it vouches for: build "
            "TrustBundle(trust_domain, [certificate]) for the one it serves",
        )
    return next(iter(named)) if named else default


@attrs.frozen
class TrustBundle:
    """The X.509 authorities (CA certificates) that vouch for one trust domain.

    The constructor takes the caller's word for which domain the authorities
    serve (the Workload API says so); :meth:`from_pem` reads a file, which says
    nothing, so it trusts only what the certificates themselves name.
    """

    trust_domain: str = attrs.field(converter=_trust_domain_name)
    authorities: tuple[x509.Certificate, ...] = attrs.field(converter=_unique)
    _decoded: tuple[_Cert, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.authorities:
            raise _fail(
                "empty-bundle", f"the trust bundle of {self.trust_domain!r} has no authority"
            )
        role = f"authority of {self.trust_domain!r}"
        views = tuple(_decode(cert, role) for cert in self.authorities)
        for view in views:
            _check_signer(view, role)
        object.__setattr__(self, "_decoded", views)

    @classmethod
    def from_pem(cls, trust_domain: str, pem: bytes | str) -> TrustBundle:
        """The CA certificates of ``pem`` as ``trust_domain``'s authorities.

        A certificate whose URI SAN names another trust domain is refused
        (``bundle-trust-domain-mismatch``): a file holding several trust domains'
        roots goes to :meth:`Bundles.from_pem`.
        """
        td = _trust_domain_name(trust_domain)
        certs = _load_certificates(pem)
        for index, cert in enumerate(certs):
            where = f"certificate {index + 1} of the bundle PEM"
            other = _placed(_decode(cert, where), td, where)
            if other != td:
                raise _fail(
                    "bundle-trust-domain-mismatch",
                    f"{where} names trust domain {other!r} in its URI SAN "
                    f"(spiffe://{other}), so it is an authority of {other!r} only, never of "
                    f"{td!r}; keep one bundle file per trust domain, or load a file of "
                    f"several with Bundles.from_pem(pem, default_trust_domain={td!r})",
                )
        return cls(td, certs)

    def to_pem(self) -> bytes:
        return _certificates_pem(self.authorities)


def _bundle_tuple(value: Iterable[TrustBundle]) -> tuple[TrustBundle, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise _fail("type", f"Bundles holds TrustBundle values, not {type(value).__name__}")
    seen: dict[str, TrustBundle] = {}
    for bundle in value:
        if not isinstance(bundle, TrustBundle):
            raise _fail("type", f"Bundles holds TrustBundle values, not {type(bundle).__name__}")
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

    @classmethod
    def from_pem(cls, pem: bytes | str, default_trust_domain: str) -> Bundles:
        """The bundles of a PEM file that may hold several trust domains' CA certificates.

        Each certificate that names a SPIFFE trust domain in its URI SAN
        (``spiffe://partner.org``) joins that domain's bundle only; one that names
        none joins ``default_trust_domain``'s (the file owner's own domain).
        """
        default = _trust_domain_name(default_trust_domain)
        certs = _load_certificates(pem)
        if not certs:
            raise _fail("empty-bundle", "the bundle PEM holds no CERTIFICATE block")
        groups: dict[str, list[x509.Certificate]] = {}
        for index, cert in enumerate(certs):
            where = f"certificate {index + 1} of the bundle PEM"
            groups.setdefault(_placed(_decode(cert, where), default, where), []).append(cert)
        return cls(TrustBundle(td, group) for td, group in groups.items())

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
            raise _fail(
                "type",
                f"expected Bundles, a TrustBundle or TrustBundles, not {type(value).__name__}",
            )
        return cls(value)

    def __iter__(self) -> Iterator[TrustBundle]:
        return iter(self.bundles)

    def __len__(self) -> int:
        return len(self.bundles)

    def __contains__(self, trust_domain: object) -> bool:
        return any(b.trust_domain == trust_domain for b in self.bundles)


def _certificate_tuple(value: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise _fail(
            "type",
            f"an SVID's certificates are an iterable of x509.Certificate, not "
            f"{type(value).__name__}; PEM text goes to X509Svid.parse",
        )
    certs = tuple(value)
    for cert in certs:
        if not isinstance(cert, x509.Certificate):
            raise _fail("type", f"an SVID holds x509.Certificate values, not {type(cert).__name__}")
    return certs


@attrs.frozen
class X509Svid:
    """An X.509-SVID: the leaf certificate, its intermediates, and (when ours) the key.

    Constructing one applies the shape rules; :meth:`verify` adds trust and time.
    A peer's SVID has no private key.
    """

    spiffe_id: SpiffeId
    certificates: tuple[x509.Certificate, ...] = attrs.field(converter=_certificate_tuple)
    private_key: PrivateKeyTypes | None = attrs.field(default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        views = _decode_all(self.certificates, "leaf")
        found = _check_chain(views)
        if found != self.spiffe_id:
            raise _fail("id-mismatch", f"the leaf is {found}, not {self.spiffe_id}")
        key = self.private_key
        if key is None:
            return
        if not isinstance(key, _ANY_PRIVATE_KEY):
            raise _fail(
                "type",
                f"an SVID's private key is a cryptography private key, not {type(key).__name__}",
            )
        if not isinstance(key, _SVID_PRIVATE_KEYS) or _spki(key.public_key()) != _spki(
            views[0].public_key
        ):
            raise _fail(
                "key-mismatch",
                f"the private key does not belong to the leaf certificate of {self.spiffe_id}",
            )

    @classmethod
    def from_certificates(
        cls, certificates: Iterable[x509.Certificate], private_key: PrivateKeyTypes | None = None
    ) -> X509Svid:
        certs = _certificate_tuple(certificates)
        return cls(check_svid_chain(certs), certs, private_key)

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

"""A development certificate authority: X.509-SVIDs without SPIRE.

Rules this module keeps:

* Everything it issues passes the SVID rules of :mod:`zmeshlib.identity.svid`;
  each SVID is checked by constructing an :class:`X509Svid` before it is returned.
* A leaf is issued only for a SPIFFE ID of the CA's own trust domain, and never
  outlives the certificate that signs it.
* Private keys on disk are mode 0600 and replaced atomically, so a reader
  (``Identity.from_pem``) never sees half a file.

Theory of operation: a root (self-signed, ECDSA P-256, ``cA=true``,
``keyCertSign``+``cRLSign``, URI SAN ``spiffe://<trust domain>``) signs leaves,
or signs one intermediate that signs them (``intermediate=True``). The bundle is
the root alone; an SVID's chain carries the intermediate. Both CA certificates
name their trust domain in the URI SAN, as SPIRE's do, so a bundle file holding
this root next to other domains' roots still says which domain it vouches for
(``Bundles.from_pem``).

Directory layout written by :meth:`DevCA.save` and read by :meth:`DevCA.load`:

========================  =====================================================
file                      content
========================  =====================================================
``root.pem``              the root certificate: the trust bundle to distribute
``root_key.pem``          its private key (PKCS#8, mode 0600)
``intermediate.pem``      the intermediate certificate (only with an intermediate)
``intermediate_key.pem``  its private key (PKCS#8, mode 0600)
========================  =====================================================
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .._exceptions import IdentityError
from .spiffe_id import SpiffeId, validate_trust_domain
from .svid import Bundles, TrustBundle, X509Svid, named_trust_domains

if TYPE_CHECKING:
    from .source import Identity

__all__ = ["KEY_TYPES", "DevCA", "write_file"]

#: Leaf key algorithms :meth:`DevCA.issue_svid` can generate.
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "ed25519")

ROOT_FILE = "root.pem"
ROOT_KEY_FILE = "root_key.pem"
INTERMEDIATE_FILE = "intermediate.pem"
INTERMEDIATE_KEY_FILE = "intermediate_key.pem"

#: A leaf starts this much before it is issued (at most 10% of its life) so that
#: peers with a slightly slow clock accept it at once.
_BACKDATE = 10.0


def write_file(path: str | os.PathLike[str], data: bytes, *, private: bool = False) -> Path:
    """Write ``data`` atomically (temp file + rename); ``private`` makes it mode 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _generate_key(kind: str) -> CertificateIssuerPrivateKeyTypes:
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise IdentityError(
        f"unknown key type {kind!r}; choose one of {', '.join(KEY_TYPES)}", rule="unsupported-key"
    )


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(int(epoch), timezone.utc)


def _key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _signer_certificate(
    trust_domain: str,
    name: str,
    key: CertificateIssuerPrivateKeyTypes,
    issuer: tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes] | None,
    not_before: float,
    not_after: float,
    path_length: int,
) -> x509.Certificate:
    """A CA certificate; self-signed when ``issuer`` is None."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zmeshlib dev CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {trust_domain}"[:64]),
        ]
    )
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _read(directory: Path, name: str) -> bytes:
    try:
        return (directory / name).read_bytes()
    except OSError as exc:
        raise IdentityError(
            f"cannot read the dev CA file {directory / name}: {exc.strerror}; "
            f"create the CA with `zmesh ca init --trust-domain <td> --dir {directory}`",
            rule="ca-unreadable",
        ) from exc


def _load_pair(
    directory: Path, cert_name: str, key_name: str
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """A CA certificate and its key, checked to belong together."""
    cert_pem, key_pem = _read(directory, cert_name), _read(directory, key_name)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, None)
        der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        matches = key.public_key().public_bytes(*der) == cert.public_key().public_bytes(*der)
    except Exception as exc:  # cryptography's decoders raise many types on damaged files
        raise IdentityError(
            f"the dev CA in {directory} is damaged: {cert_name} or {key_name} does not decode "
            f"({exc})",
            rule="ca-invalid",
        ) from exc
    if not matches:
        raise IdentityError(
            f"the dev CA in {directory} is damaged: {key_name} is not the key of {cert_name}",
            rule="ca-invalid",
        )
    return cert, key  # type: ignore[return-value]


def _root_trust_domain(directory: Path, root: x509.Certificate) -> str:
    try:
        named = named_trust_domains(root)
    except IdentityError as exc:
        raise IdentityError(
            f"the dev CA root in {directory} is damaged: {exc}", rule="ca-invalid"
        ) from exc
    if len(named) != 1:
        raise IdentityError(
            f"the dev CA root in {directory} names {len(named)} trust domains in its URI SAN; "
            "it must name exactly one (spiffe://<trust domain>)",
            rule="ca-invalid",
        )
    return next(iter(named))


class DevCA:
    """A development CA for one trust domain. Not for production: keys live in files."""

    def __init__(
        self,
        trust_domain: str,
        root: x509.Certificate,
        root_key: CertificateIssuerPrivateKeyTypes,
        intermediate: tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes] | None = None,
    ) -> None:
        self.trust_domain = validate_trust_domain(trust_domain)
        self._root = root
        self._root_key = root_key
        self._intermediate = intermediate
        self._bundle = TrustBundle(self.trust_domain, (root,))

    @classmethod
    def create(
        cls, trust_domain: str, *, intermediate: bool = False, ttl: float = 365 * 86400
    ) -> DevCA:
        validate_trust_domain(trust_domain)
        now = time.time()
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = _signer_certificate(
            trust_domain, "root", root_key, None, now, now + ttl, 1 if intermediate else 0
        )
        chain = None
        if intermediate:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _signer_certificate(
                trust_domain, "intermediate", key, (root, root_key), now, now + ttl, 0
            )
            chain = (cert, key)
        return cls(trust_domain, root, root_key, chain)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DevCA:
        directory = Path(directory)
        root, root_key = _load_pair(directory, ROOT_FILE, ROOT_KEY_FILE)
        chain = None
        if (directory / INTERMEDIATE_FILE).exists():
            chain = _load_pair(directory, INTERMEDIATE_FILE, INTERMEDIATE_KEY_FILE)
        # the root names the trust domain; TrustBundle checks it is a usable authority
        bundle = TrustBundle(_root_trust_domain(directory, root), (root,))
        return cls(bundle.trust_domain, root, root_key, chain)

    def new_intermediate(self, *, ttl: float | None = None) -> DevCA:
        """The same root with a fresh intermediate CA (a rotation of the issuing key).

        The root, and so the trust bundle, stays: SVIDs issued before and after verify
        alike, since each card carries its own chain. ``ttl`` defaults to the root's
        remaining life. Refused for a CA made without an intermediate (its root signs
        leaves and has no room for one below it: ``path_length`` 0).
        """
        if self._intermediate is None:
            raise IdentityError(
                f"{self!r} signs SVIDs with its root and has no intermediate to rotate; "
                "create it with DevCA.create(..., intermediate=True)",
                rule="no-intermediate",
            )
        now = time.time()
        end = self._root.not_valid_after_utc.timestamp()
        if ttl is not None:
            end = min(end, now + ttl)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _signer_certificate(
            self.trust_domain, "intermediate", key, (self._root, self._root_key), now, end, 0
        )
        return DevCA(self.trust_domain, self._root, self._root_key, (cert, key))

    def save(self, directory: str | os.PathLike[str]) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_file(directory / ROOT_FILE, self._root.public_bytes(serialization.Encoding.PEM))
        write_file(directory / ROOT_KEY_FILE, _key_pem(self._root_key), private=True)
        if self._intermediate is not None:
            cert, key = self._intermediate
            write_file(directory / INTERMEDIATE_FILE, cert.public_bytes(serialization.Encoding.PEM))
            write_file(directory / INTERMEDIATE_KEY_FILE, _key_pem(key), private=True)

    @property
    def bundle(self) -> TrustBundle:
        return self._bundle

    @property
    def bundles(self) -> Bundles:
        return Bundles((self._bundle,))

    @property
    def root(self) -> x509.Certificate:
        return self._root

    @property
    def intermediate(self) -> x509.Certificate | None:
        return self._intermediate[0] if self._intermediate else None

    def issue_svid(
        self,
        spiffe_id: str | SpiffeId,
        ttl: float = 3600,
        *,
        key: str = "ec-p256",
        not_before: float | None = None,
    ) -> X509Svid:
        """Issue a leaf SVID valid for ``ttl`` seconds (capped at the signer's expiry)."""
        sid = SpiffeId.coerce(spiffe_id)
        if sid.trust_domain != self.trust_domain:
            raise IdentityError(
                f"this dev CA issues SVIDs of trust domain {self.trust_domain!r} only, not {sid}",
                rule="foreign-trust-domain",
            )
        if not sid.path:
            raise IdentityError(
                f"{sid} has no path; a workload SVID needs one (e.g. /ns/<ns>/sa/<sa>)",
                rule="leaf-id-no-path",
            )
        if ttl <= 0:
            raise IdentityError(f"ttl must be positive, not {ttl}", rule="bad-ttl")
        signer, signer_key = self._intermediate or (self._root, self._root_key)
        start = time.time() - min(_BACKDATE, ttl / 10) if not_before is None else not_before
        end = min(start + ttl, signer.not_valid_after_utc.timestamp())
        leaf_key = _generate_key(key)
        is_rsa = isinstance(leaf_key, rsa.RSAPrivateKey)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zmeshlib")]))
            .issuer_name(signer.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(start))
            .not_valid_after(_utc(end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=is_rsa,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(sid))]),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(signer_key, hashes.SHA256())
        )
        chain = (leaf, signer) if self._intermediate else (leaf,)
        return X509Svid(sid, chain, leaf_key)

    def issue(
        self, spiffe_id: str | SpiffeId, ttl: float = 3600, *, key: str = "ec-p256"
    ) -> Identity:
        """An :class:`Identity` whose ``renew()`` issues a fresh SVID from this CA."""
        from .source import Identity

        sid = SpiffeId.coerce(spiffe_id)

        def renewer() -> tuple[X509Svid, Bundles]:
            return self.issue_svid(sid, ttl, key=key), self.bundles

        return Identity(self.issue_svid(sid, ttl, key=key), self.bundles, renewer=renewer)

    def __repr__(self) -> str:
        kind = "root+intermediate" if self._intermediate else "root"
        return f"<DevCA {self.trust_domain} ({kind})>"

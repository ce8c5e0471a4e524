"""Certificate factories for identity tests: real keys, real signatures, any rule broken on demand."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

HOUR = 3600.0


class Node(NamedTuple):
    """A certificate and its private key."""

    cert: x509.Certificate
    key: Any


def make_key(kind: str = "ec-p256") -> Any:
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ec-p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[4:]))
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def _usage(**flags: bool) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


def make_cert(
    name: str,
    issuer: Node | None = None,
    *,
    uris: Sequence[str] = (),
    ca: bool | None = False,
    path_length: int | None = None,
    key_usage: dict[str, bool] | None = None,
    key: Any = None,
    not_before: float | None = None,
    not_after: float | None = None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> Node:
    """One certificate. ``ca=None`` omits basicConstraints; ``key_usage={}`` omits keyUsage.

    By default a CA gets keyCertSign+cRLSign and a leaf digitalSignature.
    """
    key = key if key is not None else make_key()
    now = time.time()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = (issuer.cert.subject, issuer.key) if issuer else (subject, key)
    if key_usage is None:
        key_usage = {"key_cert_sign": True, "crl_sign": True} if ca else {"digital_signature": True}
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(
            datetime.fromtimestamp(now - HOUR if not_before is None else not_before, timezone.utc)
        )
        .not_valid_after(
            datetime.fromtimestamp(now + HOUR if not_after is None else not_after, timezone.utc)
        )
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if key_usage:
        builder = builder.add_extension(_usage(**key_usage), critical=True)
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    digest = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return Node(builder.sign(signer, digest), key)


def make_root(trust_domain: str = "example.org", **kw: Any) -> Node:
    return make_cert(f"root {trust_domain}", uris=[f"spiffe://{trust_domain}"], ca=True, **kw)


def make_intermediate(issuer: Node, name: str = "intermediate", **kw: Any) -> Node:
    kw.setdefault("uris", [f"spiffe://{_td(issuer)}"])
    return make_cert(name, issuer, ca=True, **kw)


def make_leaf(
    issuer: Node, spiffe_id: str = "spiffe://example.org/ns/shop/sa/orders", **kw: Any
) -> Node:
    kw.setdefault("uris", [spiffe_id])
    return make_cert("leaf", issuer, **kw)


def _td(node: Node) -> str:
    san = node.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)[0].removeprefix("spiffe://")


def resign(
    cert: x509.Certificate, issuer_key: Any, edit: Callable[[bytes], bytes]
) -> x509.Certificate:
    """``cert`` with its to-be-signed bytes edited (same length) and signed again.

    The issuer key must be Ed25519 (a fixed 64-byte signature keeps every outer
    length) or None: a self-signed authority whose signature nobody checks keeps
    its old one. This is how a well-signed certificate with a broken inside is made.
    """
    der = cert.public_bytes(serialization.Encoding.DER)
    tbs = cert.tbs_certificate_bytes
    edited = edit(tbs)
    assert len(edited) == len(tbs) and edited != tbs, "the edit must change bytes in place"
    der = der.replace(tbs, edited)
    if issuer_key is not None:
        assert isinstance(issuer_key, ed25519.Ed25519PrivateKey)
        der = der[:-64] + issuer_key.sign(edited)
    return x509.load_der_x509_certificate(der)


class Pki:
    """The factories, reachable from a fixture (tests run with --import-mode=importlib)."""

    Node = Node
    resign = staticmethod(resign)
    key = staticmethod(make_key)
    cert = staticmethod(make_cert)
    root = staticmethod(make_root)
    intermediate = staticmethod(make_intermediate)
    leaf = staticmethod(make_leaf)


@pytest.fixture(scope="session")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="session")
def root(pki: Pki) -> Node:
    """The example.org root, shared (key generation is the slow part)."""
    return pki.root("example.org")

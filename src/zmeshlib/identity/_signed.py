"""What every document the SVID key signs shares: the field codec and the signature algorithms.

Rules this module keeps:

* Pure: no I/O, no clock. Identity cards (:mod:`zmeshlib.identity.card`) and
  signed policy documents (:mod:`zmeshlib.policy.distribution`) are both
  encoded with :class:`Writer` and decoded with :class:`Reader`, and signed
  and verified with :func:`sign_with` and :func:`verify_with`; each document
  starts with its own magic, so a signature over one kind can never be taken
  for a signature over another.
* The codec raises only the error its document gives it (``malformed``, a
  function from the reason to the exception), so each document keeps its own
  typed errors and rule names whatever the input.
* The signature algorithm follows from the key type; nothing in a document
  names it, so it cannot be downgraded:

  =================  ============================================================
  key                signature
  =================  ============================================================
  Ed25519            Ed25519 (RFC 8032, pure), 64 bytes
  EC P-256           ECDSA with SHA-256, DER-encoded (r, s)
  EC P-384           ECDSA with SHA-384, DER-encoded (r, s)
  RSA (>= 2048 bit)  RSASSA-PSS, SHA-256, MGF1-SHA-256, salt length 32
  =================  ============================================================

Theory of operation: a document is a sequence of fields, each fixed-size or
length-prefixed with an explicit, bounded length; :class:`Writer` refuses a
field outside its bounds and :class:`Reader` refuses any shortfall, so the
encoding of a value is unique and a decoder can check canonical form by
encoding again and comparing.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning

from .._exceptions import IdentityError

#: Turns the reason a field is wrong into the document's own error.
Malformed = Callable[[str], Exception]

_RSA_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_ECDSA_HASH: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
}


class Writer:
    """Appends length-prefixed fields, enforcing each field's bound."""

    def __init__(self, malformed: Malformed) -> None:
        self.parts: list[bytes] = []
        self._malformed = malformed

    def raw(self, data: bytes) -> None:
        self.parts.append(data)

    def uint(self, fmt: str, value: int, what: str) -> None:
        try:
            self.parts.append(struct.pack(fmt, value))
        except struct.error as e:
            raise self._malformed(f"{what} ({value!r}) is out of range") from e

    def blob(self, fmt: str, data: bytes, what: str, lo: int, hi: int) -> None:
        if not lo <= len(data) <= hi:
            raise self._malformed(f"{what} is {len(data)} bytes, the limit is {lo}..{hi}")
        self.parts.append(struct.pack(fmt, len(data)))
        self.parts.append(data)

    def text(self, fmt: str, value: object, what: str, lo: int, hi: int) -> None:
        if not isinstance(value, str):
            raise self._malformed(f"{what} must be a str, not {type(value).__name__}")
        self.blob(fmt, value.encode("utf-8"), what, lo, hi)

    def count(self, n: int, what: str, hi: int) -> None:
        if n > hi:
            raise self._malformed(f"{n} {what}, at most {hi} are allowed")
        self.parts.append(struct.pack(">B", n))

    def done(self) -> bytes:
        return b"".join(self.parts)


class Reader:
    """Reads what :class:`Writer` wrote; any shortfall is the document's ``malformed``."""

    def __init__(self, data: bytes, malformed: Malformed) -> None:
        self.data = data
        self.pos = 0
        self._malformed = malformed

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise self._malformed(f"truncated in {what}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, fmt: str, what: str) -> int:
        (value,) = struct.unpack(fmt, self.take(struct.calcsize(fmt), what))
        return int(value)

    def blob(self, fmt: str, what: str) -> bytes:
        return self.take(self.uint(fmt, what), what)

    def text(self, fmt: str, what: str) -> str:
        try:
            return self.blob(fmt, what).decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._malformed(f"{what} is not UTF-8") from e

    def certificate(self, fmt: str, what: str, name: str = "") -> x509.Certificate:
        """A length-prefixed DER certificate (``what`` in a shortfall's reason, ``name`` in a
        refusal's); one cryptography cannot load is malformed."""
        der = self.blob(fmt, what)
        try:
            with warnings.catch_warnings():
                # cryptography still parses some invalid encodings with a deprecation
                # warning; from the network such a certificate is simply malformed
                warnings.simplefilter("error", CryptographyDeprecationWarning)
                return x509.load_der_x509_certificate(der)
        except (ValueError, x509.InvalidVersion, CryptographyDeprecationWarning) as e:
            raise self._malformed(f"{name or what} is not DER X.509: {e}") from e


def sign_with(
    private_key: object, data: bytes, *, what: str = "a card", rule: str = "card-key-type"
) -> bytes:
    """Sign ``data`` with the algorithm of the key's type (module docstring's table).

    A key with no algorithm is an :class:`IdentityError` with ``rule``, naming ``what``
    could not be signed.
    """
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        digest = _ECDSA_HASH.get(private_key.curve.name)
        if digest is not None:
            return private_key.sign(data, ec.ECDSA(digest()))
    if isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size >= 2048:
        return private_key.sign(data, _RSA_PSS, hashes.SHA256())
    raise IdentityError(
        f"cannot sign {what} with a {type(private_key).__name__}: use an Ed25519, "
        "EC P-256/P-384 or RSA (>= 2048 bit) SVID key",
        rule=rule,
    )


def verify_with(
    public_key: object,
    signature: bytes,
    data: bytes,
    *,
    what: str = "card",
    rule: str = "card-key-type",
) -> None:
    """Raise ``InvalidSignature``, or :class:`IdentityError` with ``rule`` for a key with
    no ``what`` signature algorithm."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(signature, data)
        return
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        digest = _ECDSA_HASH.get(public_key.curve.name)
        if digest is not None:
            public_key.verify(signature, data, ec.ECDSA(digest()))
            return
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size >= 2048:
        public_key.verify(signature, data, _RSA_PSS, hashes.SHA256())
        return
    raise IdentityError(
        f"the SVID's {type(public_key).__name__} has no {what} signature algorithm",
        rule=rule,
    )


def validity(certificates: tuple[x509.Certificate, ...]) -> tuple[float, float]:
    """The instants (epoch seconds) between which every certificate of a non-empty chain is
    valid (start after end: never at once)."""
    start = max(c.not_valid_before_utc.timestamp() for c in certificates)
    end = min(c.not_valid_after_utc.timestamp() for c in certificates)
    return start, end

"""Signed policy documents: one policy, its version and its signer's SVID, signed by that SVID.

A signed policy document carries a policy from whoever may set it (a control
workload, an operator's ``zmesh policy push``) to every workload that follows
the registry (:meth:`zmeshlib.Mesh.follow_policy`). The registry's store keeps
one such document (``put_policy`` / ``get_policy``); the store is untrusted,
as for cards: the document authenticates itself. The byte layout is in
docs/protocol.md, section "Signed policy documents".

Rules this module keeps:

* One byte string per document: every length is explicit and bounded, times
  are integer milliseconds, the policy is its canonical bytes
  (:func:`~zmeshlib.policy.model.canonical_bytes`, what ``Policy.revision``
  hashes), and :meth:`SignedPolicy.from_bytes` accepts only the canonical
  form (decode, encode again, compare).
* The signed bytes start with :data:`MAGIC` and the format byte, so a policy
  signature can never be taken for a card's or for anything else the SVID key
  signs. The algorithm follows from the leaf's key type
  (:mod:`zmeshlib.identity._signed`, as for cards), so it cannot be downgraded.
* Pure: :meth:`SignedPolicy.verify` takes the trust bundles, the signer
  patterns, the version already applied and the clock; it reads nothing else.
  Only :func:`publish_policy` does I/O. What follows from the bytes alone (the
  signature, the chain at the signing time, the rebuild) is remembered per
  process (:mod:`zmeshlib.policy._verdicts`): the Meshes of a process judge a
  push once. The clock, the signers and the version are checked every call.
* Decoding any bytes raises only :class:`~zmeshlib.SignedPolicyError`, and
  verifying any decoded document too; the policy inside is parsed only after
  its signature, chain and signer were accepted.
* Versions only go up: a follower applies a document only if its ``version``
  is greater than the one it applied, so a replayed old document (the store is
  anyone's to write) changes nothing. A rollback is the old policy published
  again with a newer version.
* The SVID chain is verified at the document's signing time, not at the
  verifier's: a policy stays valid after the short-lived SVID that signed it
  has expired, so a workload that starts an hour later still gets it. A
  document whose signing time lies more than :data:`MAX_CLOCK_SKEW` ahead of
  the verifier's clock is refused until that time comes.
* A policy cannot lock its own signer out: trust is the identity's bundles
  restricted by the policy in force (``trust_domains``), so a document whose
  policy lists trust domains without its signer's would make every later
  document of that signer unverifiable. It is refused (``lockout``), at
  signing and at verification.

Every refusal names its reason (``SignedPolicyError.reason``):

==================  ==============================================================
reason              the document is refused because
==================  ==============================================================
``malformed``       its bytes break the layout, a bound, or the canonical form, or
                    it is larger than :data:`MAX_DOCUMENT_SIZE`
``unsupported``     its format byte is not :data:`FORMAT`
``bad-signature``   the signature does not verify with the leaf certificate's key
                    (altered, or signed by another key)
``untrusted``       the chain does not verify against the trust bundles (another
                    trust domain's CA, a trust domain the policy in force does not
                    list, a certificate breaking the SVID rules)
``expired``         the signer's SVID was not valid at the document's signing time
``not-yet-valid``   its signing time is more than :data:`MAX_CLOCK_SKEW` ahead of now
``not-a-signer``    the signer's SPIFFE ID matches none of the signer patterns
``older``           its version is not greater than the version applied
``invalid-policy``  the policy bytes do not rebuild into a policy
                    (:mod:`zmeshlib.policy._rebuild`: a newer zmeshlib's field, say)
``lockout``         the policy's ``trust_domains`` leave out the signer's own
==================  ==============================================================

Signing and publishing refuse with ``no-private-key``, ``key-type``,
``svid-expired`` (the SVID is not valid now), ``version`` (not 1 to 2**64 - 1),
``lockout``, ``older`` (not newer than the document stored) and
``stored-unreadable`` (the store's document cannot be decoded, so the next
version cannot be told: give ``version=``).

Theory of operation: :meth:`SignedPolicy.sign` checks the SVID's window and
the lockout rule, encodes the fields (:meth:`SignedPolicy.signed_bytes`) and
signs them; :meth:`SignedPolicy.to_bytes` appends the signature. A verifier
checks the signature first (cheap, and it makes every later field
authentic), then the chain at the signing time, the clock, the signer
patterns, the version, and last rebuilds the policy. :func:`publish_policy`
is the shell: it reads the stored document's version, signs the next one,
verifies it as a follower would and writes it.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from .._exceptions import IdentityError, PolicyError, SignedPolicyError
from ..identity._signed import Reader, Writer, sign_with, validity, verify_with
from ..identity.spiffe_id import SpiffeId
from ..identity.svid import Bundles, X509Svid, verify_chain
from ._document import _principal_pattern, as_policy
from ._patterns import PatternIndex, parse_pattern
from ._reader import Reader as DocumentReader
from ._reader import reported
from ._rebuild import policy_from_canonical
from ._verdicts import VERDICTS
from .model import Policy, canonical_bytes, istio_form

if TYPE_CHECKING:
    from ..identity.source import Identity
    from ..registry import CardStore, Registry

#: Domain-separation prefix of every signed policy document (and of its signed bytes).
MAGIC = b"zmeshlib-policy\x00"
#: The document format this module writes and reads.
FORMAT = 1
#: Largest encoded document, in bytes (what a ``dir://`` store reads of a file).
MAX_DOCUMENT_SIZE = 1 << 20
#: Largest policy inside, in bytes of canonical JSON.
MAX_POLICY_SIZE = MAX_DOCUMENT_SIZE - 160 * 1024
#: Largest version; versions start at 1.
MAX_VERSION = 2**64 - 1
#: How far ahead of the verifier's clock a signing time may lie, in seconds.
MAX_CLOCK_SKEW = 300.0

#: Every reason :meth:`SignedPolicy.from_bytes` and :meth:`SignedPolicy.verify` refuse with.
REFUSALS = (
    "malformed",
    "unsupported",
    "bad-signature",
    "untrusted",
    "expired",
    "not-yet-valid",
    "not-a-signer",
    "older",
    "invalid-policy",
    "lockout",
)

_MAX_CERTS = 8
_MAX_CERT = 16 * 1024
_MAX_SIGNATURE = 1024
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: every later instant is no time


def _malformed(why: str) -> SignedPolicyError:
    return SignedPolicyError(f"malformed signed policy document: {why}", reason="malformed")


# -- signers ---------------------------------------------------------------------------


class Signers:
    """The principal patterns whose documents a follower accepts, compiled once.

    The syntax is the policy's for principals (``example.org/ns/mesh/sa/control``,
    with or without ``spiffe://``; ``prefix*``, ``*suffix``, ``*``), and so is the match:
    against the signer's SPIFFE ID in Istio form (no scheme).
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        if isinstance(patterns, str):
            raise PolicyError(
                f"signers is a list of principal patterns, not one string: write "
                f"signers=[{patterns!r}]"
            )
        problems: list[str] = []
        read = DocumentReader(problems, "signers").list_of(list(patterns), _principal_pattern)
        if read is None:
            raise PolicyError("invalid signers", problems=reported(problems)[1])
        self.patterns: tuple[str, ...] = read
        parsed = [parse_pattern(p) for p in read]
        self._index = PatternIndex((p, 1) for p in parsed if not isinstance(p, str))

    @classmethod
    def coerce(cls, value: Signers | Iterable[str]) -> Signers:
        return value if isinstance(value, Signers) else cls(value)

    def allows(self, spiffe_id: SpiffeId) -> bool:
        return bool(self._index.lookup(istio_form(spiffe_id)))

    def trust_domains(self) -> frozenset[str] | None:
        """The trust domains a signer can be of, or None when a pattern leaves it open."""
        found = set()
        for text in self.patterns:
            td, slash, _ = text.partition("/")
            if not slash or "*" in td:
                return None
            found.add(td)
        return frozenset(found)

    def __repr__(self) -> str:
        return f"Signers({list(self.patterns)!r})"


# -- the document ----------------------------------------------------------------------


@attrs.frozen
class Verified:
    """What :meth:`SignedPolicy.verify` accepted: the policy, and who signed which version when."""

    policy: Policy
    version: int
    signer: SpiffeId
    signed_at: float


def _certificates(value: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    return tuple(value)


@attrs.frozen
class SignedPolicy:
    """A policy's canonical bytes, its version and signing time, the signer's chain, signed.

    Build with :meth:`sign` or :meth:`from_bytes`; trust only what :meth:`verify` returns.
    """

    version: int
    signed_at: float
    policy_bytes: bytes = attrs.field(converter=bytes)
    certificates: tuple[x509.Certificate, ...] = attrs.field(converter=_certificates)
    signature: bytes = attrs.field(converter=bytes)

    @classmethod
    def sign(
        cls,
        policy: Policy,
        svid: X509Svid,
        *,
        version: int,
        now: float | None = None,
    ) -> SignedPolicy:
        """Sign ``policy`` as ``version`` with the SVID's key, as of ``now`` (default: the clock).

        The signing time is rounded down to whole milliseconds (the encoding's unit),
        so the document returned equals the one its bytes decode to.
        """
        if not isinstance(policy, Policy):
            raise SignedPolicyError(
                f"sign takes a zmeshlib.Policy, not {type(policy).__name__}", reason="malformed"
            )
        if svid.private_key is None:
            raise SignedPolicyError(
                f"cannot sign a policy as {svid.spiffe_id}: the SVID has no private key "
                "(load it with the key PEM)",
                reason="no-private-key",
            )
        _check_version(version)
        if now is None:
            now = time.time()
        start, end = validity(svid.certificates)
        if not start <= now < end:
            raise SignedPolicyError(
                f"cannot sign a policy as {svid.spiffe_id}: its SVID is valid "
                f"{start:.0f}..{end:.0f}, not now ({now:.0f}); renew the SVID",
                reason="svid-expired",
            )
        _check_lockout(policy, svid.spiffe_id)
        unsigned = cls(
            version=version,
            signed_at=math.floor(now * 1000) / 1000,
            policy_bytes=canonical_bytes(policy),
            certificates=svid.certificates,
            signature=b"",
        )
        try:
            signature = sign_with(
                svid.private_key, unsigned.signed_bytes(), what="a policy", rule="key-type"
            )
        except IdentityError as e:
            raise SignedPolicyError(str(e), reason="key-type") from None
        return attrs.evolve(unsigned, signature=signature)

    # -- encoding ------------------------------------------------------------------

    def signed_bytes(self) -> bytes:
        """What the SVID key signs: :data:`MAGIC`, the format, then every field but the signature."""
        w = Writer(_malformed)
        w.raw(MAGIC)
        w.uint(">B", FORMAT, "format")
        if not isinstance(self.version, int) or not 1 <= self.version <= MAX_VERSION:
            raise _malformed(f"the version ({self.version!r}) is not 1..{MAX_VERSION}")
        w.uint(">Q", self.version, "version")
        signed_at = self.signed_at
        if not isinstance(signed_at, (int, float)) or not math.isfinite(signed_at):
            raise _malformed("signed_at must be a finite number of epoch seconds")
        ms = round(signed_at * 1000)
        if not 0 <= ms <= _MAX_MS:
            raise _malformed(f"signed_at ({signed_at!r}) is not between 1970 and 9999")
        w.uint(">Q", ms, "signed_at")
        w.blob(">I", self.policy_bytes, "the policy", 2, MAX_POLICY_SIZE)
        if not self.certificates:
            raise _malformed("it carries no certificate")
        w.count(len(self.certificates), "certificates", _MAX_CERTS)
        for cert in self.certificates:
            w.blob(">H", cert.public_bytes(serialization.Encoding.DER), "certificate", 1, _MAX_CERT)
        return w.done()

    def to_bytes(self) -> bytes:
        """The document as stored: :meth:`signed_bytes`, then the signature."""
        w = Writer(_malformed)
        w.raw(self.signed_bytes())
        w.blob(">H", self.signature, "signature", 1, _MAX_SIGNATURE)
        data = w.done()
        if len(data) > MAX_DOCUMENT_SIZE:
            raise _malformed(
                f"it encodes to {len(data)} bytes, more than {MAX_DOCUMENT_SIZE}: "
                "shorten the policy or the chain"
            )
        return data

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int = MAX_DOCUMENT_SIZE) -> SignedPolicy:
        """Decode a document (no trust decision: call :meth:`verify`)."""
        try:
            data = bytes(data)
        except (TypeError, ValueError) as e:
            raise _malformed(f"a document is bytes, not {type(data).__name__}") from e
        if len(data) > max_size:
            raise _malformed(f"it is {len(data)} bytes, more than the {max_size} allowed")
        r = Reader(data, _malformed)
        if r.take(len(MAGIC), "magic") != MAGIC:
            raise _malformed("it does not start with the zmeshlib policy magic")
        fmt = r.uint(">B", "format")
        if fmt != FORMAT:
            raise SignedPolicyError(
                f"signed policy format {fmt} is not supported (this zmeshlib reads format "
                f"{FORMAT}); upgrade zmeshlib",
                reason="unsupported",
            )
        version = r.uint(">Q", "version")
        signed_ms = r.uint(">Q", "signed_at")
        policy_bytes = r.blob(">I", "the policy")
        certificates = [
            r.certificate(">H", "certificate", f"certificate {i}")
            for i in range(r.uint(">B", "certificate count"))
        ]
        signature = r.blob(">H", "signature")
        if r.pos != len(data):
            raise _malformed(f"{len(data) - r.pos} bytes follow the signature")
        doc = cls(
            version=version,
            signed_at=signed_ms / 1000,
            policy_bytes=policy_bytes,
            certificates=tuple(certificates),
            signature=signature,
        )
        if doc.to_bytes() != data:
            raise _malformed("it is not in canonical form (lengths, counts or times)")
        return doc

    @property
    def revision(self) -> str:
        """The revision of the policy inside (``Policy.revision``), read without rebuilding it."""
        return hashlib.sha256(self.policy_bytes).hexdigest()[:12]

    # -- verification ----------------------------------------------------------------

    def verify(
        self,
        bundles: Bundles,
        signers: Signers | Iterable[str],
        *,
        applied: int | None = None,
        now: float | None = None,
    ) -> Verified:
        """Check every rule of the module docstring's table; return what was signed.

        ``applied`` is the version in force (None: none yet, any version is newer).
        """
        if now is None:
            now = time.time()
        signers = Signers.coerce(signers)
        signed = self.signed_bytes()
        signer = VERDICTS.judge(
            ("chain", hashlib.sha256(signed + self.signature).digest()),
            bundles,
            lambda: self._authenticate(signed, bundles),
        )
        if self.signed_at > now + MAX_CLOCK_SKEW:
            raise SignedPolicyError(
                f"policy version {self.version} by {signer} says it was signed at "
                f"{_iso(self.signed_at)}, {self.signed_at - now:.0f} s from now; check the "
                "signer's clock (the document applies once that time is near)",
                reason="not-yet-valid",
            )
        if not signers.allows(signer):
            raise SignedPolicyError(
                f"policy version {self.version} is signed by {signer}, which is not one of "
                f"the signers {list(signers.patterns)}",
                reason="not-a-signer",
            )
        if applied is not None and self.version <= applied:
            raise SignedPolicyError(
                f"policy version {self.version} by {signer} is not newer than version "
                f"{applied}, in force; to roll back, publish the old policy with a newer version",
                reason="older",
            )
        policy = VERDICTS.judge(
            ("policy", hashlib.sha256(self.policy_bytes).digest() + str(signer).encode()),
            None,
            lambda: self._rebuild(signer),
        )
        return Verified(policy, self.version, signer, self.signed_at)

    def _authenticate(self, signed: bytes, bundles: Bundles) -> SpiffeId:
        """The signer, once the signature and the chain at the signing time verify."""
        try:
            leaf_key = self.certificates[0].public_key()
            verify_with(leaf_key, self.signature, signed, what="policy", rule="key-type")
        except (InvalidSignature, IdentityError, ValueError, UnsupportedAlgorithm) as e:
            raise SignedPolicyError(
                "the signed policy's signature does not verify with its SVID's key: it was "
                f"altered or signed by another key ({type(e).__name__})",
                reason="bad-signature",
            ) from None
        try:
            return verify_chain(self.certificates, bundles, at=self.signed_at)
        except IdentityError as e:
            if e.rule in ("expired", "not-yet-valid"):
                raise SignedPolicyError(
                    f"the SVID that signed policy version {self.version} was not valid when "
                    f"the document says it was signed ({_iso(self.signed_at)}): {e}",
                    reason="expired",
                ) from None
            raise SignedPolicyError(
                f"the SVID that signed policy version {self.version} is not trusted here "
                f"(rule {e.rule}): {e}",
                reason="untrusted",
            ) from None

    def _rebuild(self, signer: SpiffeId) -> Policy:
        try:
            policy = policy_from_canonical(self.policy_bytes)
        except PolicyError as e:
            raise SignedPolicyError(
                f"policy version {self.version} by {signer} does not rebuild: {e}",
                reason="invalid-policy",
            ) from None
        _check_lockout(policy, signer)
        return policy


def _check_version(version: object) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise SignedPolicyError(
            f"a policy version is an integer from 1 to {MAX_VERSION}, not {version!r}",
            reason="version",
        )


def _check_lockout(policy: Policy, signer: SpiffeId) -> None:
    domains = policy.trust_domains
    if domains and signer.trust_domain not in domains:
        raise SignedPolicyError(
            f"the policy's trust_domains {list(domains)} leave out {signer.trust_domain}, the "
            f"trust domain of its signer {signer}: once applied, no later document of that "
            "signer could verify. Add the signer's trust domain to trust_domains",
            reason="lockout",
        )


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# -- publishing (the shell) ------------------------------------------------------------


def publish_policy(
    policy: Policy | str | os.PathLike[str] | Mapping[str, Any],
    *,
    identity: Identity,
    registry: str | Registry | CardStore,
    version: int | None = None,
) -> int:
    """Sign ``policy`` with ``identity``'s SVID and put it in the registry; return its version.

    ``policy`` is what ``Mesh(policy=...)`` takes (a Policy, a file path, a mapping).
    ``registry`` is a registry URL (``dir:///path``, ``memory://``...), a
    :class:`~zmeshlib.Registry` or a store. ``version`` defaults to the stored document's
    plus one (1 when the store holds none); one not newer than the stored one is refused.
    """
    from ..identity.source import Identity
    from ..registry import Registry, open_store

    if not isinstance(identity, Identity):
        raise IdentityError(
            f"identity= takes a zmeshlib.Identity (DevCA.issue, Identity.from_pem), "
            f"not {type(identity).__name__}",
            rule="type",
        )
    chosen = as_policy(policy)
    opened = isinstance(registry, str)
    store: CardStore
    if isinstance(registry, str):
        store = open_store(registry)
    elif isinstance(registry, Registry):
        store = registry.store
    else:
        store = registry
    try:
        stored = _stored_version(store, required=version is None)
        if version is None:
            version = 1 if stored is None else stored + 1
        _check_version(version)
        if stored is not None and version <= stored:
            raise SignedPolicyError(
                f"version {version} is not newer than version {stored}, which the registry "
                "holds: followers would refuse it. Omit the version, or give a greater one",
                reason="older",
            )
        svid, bundles = identity.current()
        doc = SignedPolicy.sign(chosen, svid, version=version)
        data = doc.to_bytes()
        # what every follower will check first: a document this signer's own trust would
        # refuse is never written
        SignedPolicy.from_bytes(data).verify(bundles, [str(svid.spiffe_id)], applied=stored)
        store.put_policy(data)
    finally:
        if opened:
            store.close()
    return version


def _stored_version(store: CardStore, *, required: bool) -> int | None:
    """The stored document's version; None when there is none, or when it cannot be read
    and the caller gave a version (not ``required``)."""
    from ..registry import Unreadable

    data = store.get_policy()
    if data is None:
        return None
    if isinstance(data, Unreadable):
        why = data.reason
    else:
        try:
            return SignedPolicy.from_bytes(data).version
        except SignedPolicyError as e:
            why = str(e)
    if not required:
        return None
    raise SignedPolicyError(
        f"the registry holds a signed policy that cannot be read ({why}), so the next version "
        "cannot be told: give version= (the CLI's --version), greater than any published",
        reason="stored-unreadable",
    )

"""Follow the registry's signed policy: apply each newer document a signer published.

Rules this module keeps:

* A refused document never replaces the policy in force: it is counted by
  reason (:attr:`PolicyFollower.counts`, and ``on_refused``), logged once per
  document and reason (not once per poll), and the current policy stays. The
  decision is :meth:`SignedPolicy.verify
  <zmeshlib.policy.distribution.SignedPolicy.verify>`'s; this module only
  reads, remembers and applies.
* A store that cannot be read (or a document it cannot read as bytes) keeps
  the current policy too; it is logged once per failure streak, and once when
  it reads again.
* A late joiner catches up at once: :meth:`PolicyFollower.start` reads the
  store and applies the document there before it returns.
* Cheap when nothing changes: a poll asks the store's ``policy_version()``
  token (a ``stat`` of one file for ``dir://``, a counter for ``memory://`` and
  for Redis, whose listener moves it; card writes leave it alone, so a fleet's
  lease renewals cost its followers nothing), and reads the document
  only when the token moved; it verifies only bytes it has not judged yet,
  judged bytes again only when the trust bundles changed (a new bundles object)
  or, for ``not-yet-valid``, once their signing time is near. Bytes already
  applied are never judged again.
* A store that can share one read among the process's followers
  (``policy_at(token)``: Redis) is read through it: a push costs Redis one
  read per process, and each follower judges the bytes through the process's
  remembered verdicts (:mod:`zmeshlib.policy._verdicts`), so one verification.
* A store that says when its policy moved (``wait_policy``: Redis, whose
  change feed moves it) is waited on instead of polled: followers then cost
  nothing between pushes and see one at once; they still look every
  ``NOTIFIED_RECHECK`` seconds, for trust changes the store cannot see.
* Waiting costs no CPU (an event wait between polls, a condition for
  :meth:`PolicyFollower.wait`); :meth:`PolicyFollower.close` stops the thread
  and joins it.

Theory of operation: :meth:`PolicyFollower.start` polls once, then a daemon
thread polls every ``interval`` seconds until :meth:`close`. A poll takes the
store's token *before* reading the document, so a write after the read moves
the token again and is seen at the next poll. An accepted document goes to
``apply`` (``Mesh.update_policy``), then becomes :attr:`version`,
:attr:`signer` and :attr:`revision`, and wakes :meth:`wait`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .._exceptions import PolicyError, RegistryError, SignedPolicyError
from ..identity.spiffe_id import SpiffeId
from ..identity.svid import Bundles
from .distribution import MAX_CLOCK_SKEW, SignedPolicy, Signers, Verified
from .model import Policy

if TYPE_CHECKING:
    from ..registry.stores import CardStore

log = logging.getLogger("zmeshlib.policy")

# with a store that notifies, the longest a follower sleeps between looks: trust bundles
# change without the store knowing, and a document signed ahead of the clock ripens
NOTIFIED_RECHECK = 1.0
_NEVER = object()  # a token no store returns: the first poll always reads


class PolicyFollower:
    """Apply every newer signed policy of ``store`` whose signer matches ``signers``."""

    def __init__(
        self,
        store: CardStore,
        signers: Signers | Iterable[str],
        *,
        bundles: Callable[[], Bundles],
        apply: Callable[[Policy], None],
        interval: float = 0.1,
        on_refused: Callable[[SignedPolicyError], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval > 0:
            raise PolicyError(f"the follow interval must be positive, got {interval}")
        self.signers = Signers.coerce(signers)
        self.interval = interval
        self._store = store
        self._bundles = bundles
        self._apply = apply
        self._on_refused = on_refused
        self._clock = clock
        self._changed = threading.Condition()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._applied: Verified | None = None
        self._applied_digest = b""
        self._applied_at: float | None = None
        self._counts: Counter[str] = Counter()
        self._read_errors = 0
        self._failing = False
        self._token: object = _NEVER
        # the last bytes judged and refused: their digest, the bundles and the reason,
        # and when to judge them again regardless (not-yet-valid)
        self._refused: tuple[bytes, Bundles, str] | None = None
        self._retry_at = float("inf")

    # -- what it applied -----------------------------------------------------------------

    @property
    def version(self) -> int | None:
        """The signed version applied (None until one was)."""
        applied = self._applied
        return applied.version if applied is not None else None

    @property
    def signer(self) -> SpiffeId | None:
        """Who signed the version applied."""
        applied = self._applied
        return applied.signer if applied is not None else None

    @property
    def revision(self) -> str | None:
        """The revision (``Policy.revision``) of the version applied."""
        applied = self._applied
        return applied.policy.revision if applied is not None else None

    @property
    def applied_at(self) -> float | None:
        """When (the follower's clock, epoch seconds) the version applied was applied."""
        return self._applied_at

    @property
    def counts(self) -> dict[str, int]:
        """Refused documents by reason (each document counted once per reason)."""
        with self._changed:
            return dict(self._counts)

    @property
    def read_errors(self) -> int:
        """Polls that could not read the store."""
        return self._read_errors

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    # -- running ------------------------------------------------------------------------

    def start(self) -> PolicyFollower:
        """Read the store once (applying what verifies), then follow it on a thread."""
        if self._thread is not None or self._stop.is_set():
            return self
        trusted = self._bundles().trust_domains
        domains = self.signers.trust_domains()
        if domains is not None and not domains & trusted:
            log.warning(
                "no signer of %s is of a trust domain this workload trusts now (%s): every "
                "signed policy will be refused as untrusted until one is",
                list(self.signers.patterns),
                ", ".join(sorted(trusted)) or "none",
            )
        self.poll()
        self._thread = threading.Thread(
            target=self._run, name="zmeshlib-policy-follow", daemon=True
        )
        self._thread.start()
        return self

    def poll(self) -> bool:
        """Check the store once; True when a new version was applied."""
        with self._poll_lock:
            if self._stop.is_set():
                return False
            bundles = self._bundles()
            try:
                token = self._store.policy_version()
                if token == self._token and not self._judge_again(bundles):
                    return False
                data = self._read(token)
                if data is not None and not isinstance(data, bytes):
                    raise RegistryError(
                        f"the store's signed policy cannot be read: {getattr(data, 'reason', data)}"
                    )
            except Exception as exc:  # a store is anyone's code: keep the policy, keep polling
                self._read_failed(exc)
                return False
            self._read_ok()
            self._token = token
            if data is None:
                return False
            return self._consider(data, bundles)

    def wait(self, version: int, timeout: float | None = None) -> bool:
        """Block until ``version`` (or a later one) is applied; False on timeout or close."""
        with self._changed:
            return self._changed.wait_for(
                lambda: (self.version or 0) >= version or self._stop.is_set(), timeout
            ) and ((self.version or 0) >= version)

    def close(self) -> None:
        """Stop following (the policy in force stays); joins the thread. Idempotent."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        wake = getattr(self._store, "wake_policy_waiters", None)
        if wake is not None:
            wake()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, 2 * self.interval))

    def __enter__(self) -> PolicyFollower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _run(self) -> None:
        notified = getattr(self._store, "wait_policy", None)
        while True:
            if notified is not None:  # the store says when the policy moved (Redis)
                notified(self._token, NOTIFIED_RECHECK, self._stop.is_set)
                if self._stop.is_set():
                    return
            elif self._stop.wait(self.interval):
                return
            try:
                self.poll()
            except Exception:  # never let the follower die silently
                log.exception("the signed policy follower failed to poll")

    def _read(self, token: object) -> object:
        """The store's document as of ``token``: shared with the process's other followers
        where the store can (``policy_at``: Redis), else read."""
        shared = getattr(self._store, "policy_at", None)
        return shared(token) if shared is not None else self._store.get_policy()

    def _judge_again(self, bundles: Bundles) -> bool:
        """Whether the refused bytes deserve another verdict without a store change."""
        refused = self._refused
        if refused is None:
            return False
        return bundles is not refused[1] or self._clock() >= self._retry_at

    def _consider(self, data: bytes, bundles: Bundles) -> bool:
        digest = hashlib.sha256(data).digest()
        if digest == self._applied_digest:
            return False
        refused = self._refused
        if (
            refused is not None
            and refused[0] == digest
            and refused[1] is bundles
            and self._clock() < self._retry_at
        ):
            return False
        doc: SignedPolicy | None = None
        try:
            doc = SignedPolicy.from_bytes(data)
            verified = doc.verify(bundles, self.signers, applied=self.version, now=self._clock())
        except SignedPolicyError as exc:
            self._refuse(digest, bundles, doc, exc)
            return False
        try:
            self._apply(verified.policy)
        except Exception:
            log.exception("applying signed policy version %d failed", verified.version)
            return False
        with self._changed:
            self._applied = verified
            self._applied_digest = digest
            self._applied_at = self._clock()
            self._refused = None
            self._retry_at = float("inf")
            self._changed.notify_all()
        log.info(
            "signed policy version %d (revision %s) by %s applied",
            verified.version,
            verified.policy.revision,
            verified.signer,
        )
        return True

    def _refuse(
        self, digest: bytes, bundles: Bundles, doc: SignedPolicy | None, exc: SignedPolicyError
    ) -> None:
        again = self._refused is not None and self._refused[::2] == (digest, exc.reason)
        self._refused = (digest, bundles, exc.reason)
        near = doc.signed_at - MAX_CLOCK_SKEW if doc is not None else float("inf")
        self._retry_at = near if exc.reason == "not-yet-valid" else float("inf")
        if again:
            return
        with self._changed:
            self._counts[exc.reason] += 1
        log.warning(
            "signed policy refused (%s), keeping the policy in force (%s): %s",
            exc.reason,
            f"version {self.version}" if self.version is not None else "not a signed one",
            exc,
        )
        if self._on_refused is not None:
            try:
                self._on_refused(exc)
            except Exception:
                log.exception("on_refused callback %r raised", self._on_refused)

    def _read_failed(self, exc: Exception) -> None:
        self._read_errors += 1
        if not self._failing:
            self._failing = True
            log.warning(
                "cannot read the signed policy from the registry, keeping the policy in force: %s",
                exc,
            )

    def _read_ok(self) -> None:
        if self._failing:
            self._failing = False
            log.info("the registry's signed policy can be read again")

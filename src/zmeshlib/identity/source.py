"""Identity sources: where a workload's SVID and trust bundles come from, and how they rotate.

Rules this module keeps:

* An :class:`Identity` always holds one consistent (SVID, bundles) pair; readers
  never see the SVID of one rotation with the bundles of another (``current()``).
* It starts no thread. Whoever runs the mesh calls :meth:`Identity.renewal_due`
  and :meth:`Identity.renew` on a timer; a push source (the Workload API) calls
  :meth:`Identity.rotate` itself, from its own thread.
* An identity never changes its SPIFFE ID. Rotation replaces the SVID of the same
  ID; an SVID of another ID from any source (files now holding someone else's
  SVID, a ``rotate()`` call, a Workload API push) is refused with
  ``identity-changed`` and the current SVID stays. Peers, policies and cards
  already know this workload by its ID, so a silent change would make it someone
  else while its connections and cards still speak for the old ID.
* A rotation installs first, then notifies; a failing callback is logged and does
  not stop the others. A source that yields an invalid SVID raises and leaves the
  current one in place, so the next renew() simply tries again (and raises again
  while the source still holds the wrong SVID: the caller logs each time).
* A bundle file may hold several trust domains' CA certificates: it is read with
  ``Bundles.from_pem``, so a root that names ``spiffe://partner.org`` becomes
  partner.org's bundle (federation), never an authority of the SVID's own domain.

Sources:

==========================  ===========================================================
constructor                 renew() does
==========================  ===========================================================
``DevCA.issue(id, ttl)``    issues a fresh SVID from the CA (same ttl)
``Identity.from_pem(...)``  re-reads the files when one changed (inode, mtime, size)
``from_workload_api()``     nothing: the SPIFFE Workload API pushes rotations
``Identity(svid, b)``       nothing (a fixed identity), unless ``renewer`` is given
==========================  ===========================================================

A ``renewer`` returns the new (SVID, bundles) pair, or None when it has nothing new.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._exceptions import IdentityError
from .spiffe_id import SpiffeId
from .svid import Bundles, TrustBundle, X509Svid

__all__ = ["Identity", "Renewer"]

log = logging.getLogger("zmeshlib.identity")

Renewer = Callable[[], "tuple[X509Svid, Bundles] | None"]

#: Fraction of an SVID's lifetime after which renewal is due (SPIRE's default).
RENEW_AT = 0.5


class Identity:
    """The current SVID and trust bundles of one workload; thread-safe."""

    def __init__(
        self,
        svid: X509Svid,
        bundles: Bundles | TrustBundle,
        *,
        renewer: Renewer | None = None,
        closer: Callable[[], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._state = self._checked(svid, bundles)
        self._renewer = renewer
        self._closer = closer
        self._callbacks: list[Callable[[Identity], None]] = []
        self._closed = False

    @staticmethod
    def _checked(svid: X509Svid, bundles: Bundles | TrustBundle | None) -> tuple[X509Svid, Bundles]:
        if not isinstance(svid, X509Svid):
            raise IdentityError(
                f"an Identity holds an X509Svid, not {type(svid).__name__}", rule="type"
            )
        if svid.private_key is None:
            raise IdentityError(
                f"the SVID of {svid.spiffe_id} has no private key; a workload's own "
                "identity needs one",
                rule="no-private-key",
            )
        return svid, Bundles.coerce(bundles if bundles is not None else ())

    # -- reading ------------------------------------------------------------------

    def current(self) -> tuple[X509Svid, Bundles]:
        """The (SVID, bundles) pair of one rotation."""
        return self._state

    @property
    def svid(self) -> X509Svid:
        return self._state[0]

    @property
    def bundles(self) -> Bundles:
        return self._state[1]

    @property
    def spiffe_id(self) -> SpiffeId:
        return self._state[0].spiffe_id

    @property
    def renews_at(self) -> float:
        """When the SVID is due for renewal (epoch seconds): half its lifetime."""
        svid = self._state[0]
        return svid.not_before + (svid.not_after - svid.not_before) * RENEW_AT

    def renewal_due(self, now: float | None = None) -> bool:
        """True once half of the SVID's lifetime has passed."""
        return (time.time() if now is None else now) >= self.renews_at

    # -- rotation -----------------------------------------------------------------

    def on_rotate(self, callback: Callable[[Identity], None]) -> Callable[[], None]:
        """Call ``callback(identity)`` after each rotation; returns the unsubscribe function."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def renew(self) -> bool:
        """Ask the source for a new SVID; True if one was installed.

        Raises :class:`IdentityError` and keeps the current SVID when the source
        offers an invalid one, or one of another SPIFFE ID (``identity-changed``).
        """
        if self._renewer is None or self._closed:
            return False
        fresh = self._renewer()
        if fresh is None:
            return False
        svid, bundles = fresh
        if (svid, bundles) == self._state:
            return False
        _same_id(self.spiffe_id, svid.spiffe_id, "the identity source offered")
        self.rotate(svid, bundles)
        return True

    def rotate(self, svid: X509Svid, bundles: Bundles | TrustBundle | None = None) -> None:
        """Install a new SVID of the same SPIFFE ID (and bundles, if given), then notify."""
        with self._lock:
            state = self._checked(svid, bundles if bundles is not None else self._state[1])
            _same_id(self._state[0].spiffe_id, svid.spiffe_id, "rotate() was given")
            self._state = state
            callbacks = list(self._callbacks)
        log.info(
            "identity %s rotated: SVID valid until %s",
            svid.spiffe_id,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(svid.not_after)),
        )
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("identity rotation callback %r failed", callback)

    def close(self) -> None:
        """Stop the source (the Workload API stream); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._callbacks.clear()
            closer, self._closer = self._closer, None
        if closer is not None:
            closer()

    def __enter__(self) -> Identity:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        svid = self._state[0]
        return f"<Identity {svid.spiffe_id} until {svid.not_after:.0f}>"

    # -- sources ------------------------------------------------------------------

    @classmethod
    def from_pem(
        cls,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str] | None = None,
        bundle_path: str | os.PathLike[str] | None = None,
    ) -> Identity:
        """Load an SVID (certificates, key) and the trust bundle of its trust domain.

        The key may be in ``cert_path``. ``renew()`` re-reads the files when one of
        them changed; write them by atomic rename (as ``zmesh ca issue`` does).
        The SVID must verify against the bundle now. ``bundle_path`` may hold
        several trust domains' CA certificates (see :meth:`Bundles.from_pem`): each
        one that names a trust domain in its URI SAN vouches for that domain only.
        """
        if bundle_path is None:
            raise IdentityError(
                "Identity.from_pem needs bundle_path: the PEM of your trust domain's CA "
                "certificates (bundle.pem from `zmesh ca issue`, or root.pem of the dev CA)",
                rule="bundle-required",
            )
        paths = tuple(Path(p) for p in (cert_path, key_path or cert_path, bundle_path))
        loader = _PemFiles(*paths)
        svid, bundles = loader.load()
        return cls(svid, bundles, renewer=loader.changed)

    @classmethod
    def from_workload_api(
        cls, socket_path: str | None = None, *, timeout: float | None = 10.0
    ) -> Identity:
        """Follow the SPIFFE Workload API (e.g. a SPIRE agent) through the ``spiffe`` package.

        ``socket_path`` (``unix:///run/spire/agent.sock``, or a bare absolute path)
        defaults to ``$SPIFFE_ENDPOINT_SOCKET``. Rotations pushed by the agent rotate
        this identity; close() ends the stream.
        """
        if socket_path and socket_path.startswith("/"):
            socket_path = "unix://" + socket_path
        try:
            import spiffe
        except ImportError as exc:
            raise IdentityError(
                "the SPIFFE Workload API needs the 'spiffe' package: "
                "pip install 'zmeshlib[spiffe]'",
                rule="spiffe-not-installed",
            ) from exc
        try:
            source = spiffe.X509Source(socket_path=socket_path, timeout_in_seconds=timeout)
        except Exception as exc:
            raise IdentityError(
                f"cannot reach the SPIFFE Workload API at {socket_path or '$SPIFFE_ENDPOINT_SOCKET'}: "
                f"{exc}",
                rule="workload-api-unavailable",
            ) from exc
        return cls.from_x509_source(source)

    @classmethod
    def from_x509_source(cls, source: Any) -> Identity:
        """Adapt an object shaped like ``spiffe.X509Source`` (owned from now on)."""
        svid, bundles = _from_x509_context(source.get_x509_context())
        identity: Identity

        def pushed() -> None:  # runs on the spiffe package's watcher thread
            try:
                svid, bundles = _from_x509_context(source.get_x509_context())
                _same_id(identity.spiffe_id, svid.spiffe_id, "the SPIFFE Workload API pushed")
                identity.rotate(svid, bundles)
            except IdentityError as exc:  # another ID, or an SVID our rules refuse
                log.error("ignoring an update from the SPIFFE Workload API: %s", exc)
            except Exception:
                log.exception("ignoring an update from the SPIFFE Workload API")

        def closer() -> None:
            source.unsubscribe_for_updates(pushed)
            source.close()

        identity = cls(svid, bundles, closer=closer)
        source.subscribe_for_updates(pushed)
        return identity


def _from_x509_context(context: Any) -> tuple[X509Svid, Bundles]:
    """Translate a ``spiffe.X509Context`` into zmeshlib values, applying our SVID rules."""
    svid = context.default_svid
    ours = X509Svid.from_certificates(svid.cert_chain, svid.private_key)
    bundles = Bundles(
        TrustBundle(
            bundle.trust_domain.name,
            sorted(bundle.x509_authorities, key=lambda c: c.tbs_certificate_bytes),
        )
        for bundle in context.x509_bundle_set.bundles
    )
    return ours, bundles


def _same_id(current: SpiffeId, offered: SpiffeId, source: str) -> None:
    if offered != current:
        raise IdentityError(
            f"{source} an SVID of {offered}, but this identity is {current}: an identity "
            f"never changes its SPIFFE ID, so the SVID of {current} stays. Put an SVID of "
            f"{current} back, or start another Identity (and Mesh) for {offered} "
            "[identity-changed]",
            rule="identity-changed",
        )


class _PemFiles:
    """The PEM files of one identity, re-read when their (inode, mtime, size) change.

    The files' stamp is taken only once they held a usable SVID of the first
    load's SPIFFE ID, so files that hold a bad or foreign SVID are refused again
    on every renew() until they are fixed.
    """

    def __init__(self, cert: Path, key: Path, bundle: Path) -> None:
        self._paths = (cert, key, bundle)
        self._stamp: tuple[tuple[int, int, int], ...] | None = None
        self._spiffe_id: SpiffeId | None = None

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        # the inode catches an atomic rename even within one mtime tick
        try:
            return tuple(
                (s.st_ino, s.st_mtime_ns, s.st_size) for s in (p.stat() for p in self._paths)
            )
        except OSError as exc:
            raise IdentityError(
                f"cannot read identity file {exc.filename}: {exc.strerror}", rule="unreadable"
            ) from exc

    def load(self) -> tuple[X509Svid, Bundles]:
        stamp = self._stat()
        cert, key, bundle = self._paths
        try:
            certs_pem, key_pem, bundle_pem = (p.read_bytes() for p in (cert, key, bundle))
        except OSError as exc:
            raise IdentityError(
                f"cannot read identity file {exc.filename}: {exc.strerror}", rule="unreadable"
            ) from exc
        svid = X509Svid.parse(certs_pem, key_pem)
        if self._spiffe_id is not None:
            _same_id(self._spiffe_id, svid.spiffe_id, f"{cert} now holds")
        bundles = Bundles.from_pem(bundle_pem, svid.trust_domain)
        svid.verify(bundles)
        self._stamp, self._spiffe_id = stamp, svid.spiffe_id
        return svid, bundles

    def changed(self) -> tuple[X509Svid, Bundles] | None:
        if self._stat() == self._stamp:
            return None
        return self.load()

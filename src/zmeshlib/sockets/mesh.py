"""The Mesh: one workload's identity, policy, registry and handshake authority.

Rules this module keeps:

* One Mesh, one CURVE keypair, one card. The card binds that key to the
  workload's SPIFFE ID, lists the endpoints it has bound, and is re-signed
  and re-published whenever the SVID rotates or an endpoint is added, so a
  new handshake always finds a card that verifies. Established connections
  are not disturbed by a rotation (as with TLS).
* The policy is one immutable object behind one reference (a
  ``PolicyInForce`` the sockets' cores share): ``update_policy`` swaps it,
  and every socket sees the new one at its next operation.
* ``close()`` leaves nothing behind, from any thread: sockets closed (each
  by the thread inside an operation on it, if one is), card withdrawn, the
  ZAP, keeper and directory threads stopped, the context terminated if the
  Mesh made it. A Mesh that fails to start leaves nothing either.
* The card lists exactly the endpoints of open sockets: a closed socket's or
  an unbound address's endpoints are withdrawn at once. If the store loses
  the card (deleted, overwritten), the keeper publishes it again.
* The card is a lease: valid for the registry's ``lease`` (``?lease=15s``),
  re-signed every third of it, so a workload killed without closing leaves
  every lookup within one lease.
* ``trust_domains`` in the policy restricts trust: a card whose SPIFFE ID is
  of an unlisted trust domain does not verify, whatever bundles the
  identity source holds (empty list: every domain with a bundle).
* Every underlying socket takes its message-size bound from the Mesh's
  ``limits`` (``ZMQ_MAXMSGSIZE``, so an oversized frame, handshake included,
  is refused by libzmq before it is buffered) and a handshake deadline.

Theory of operation: the Mesh owns three threads. The ZAP thread
(``handshake.py``) answers libzmq's question "who is this CURVE key?" from the
registry. The directory thread (``directory.py``) keeps the sockets' view of
the registry fresh. The keeper thread renews the SVID when half its life has
passed (``Identity.renewal_due``), re-signs the card, and re-publishes it if
the store lost it. Everything else happens in the threads that use the sockets.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import zmq

from .._exceptions import Closed, IdentityError, MeshError, PolicyError, RegistryError
from .._models import Endpoint, SocketKind
from ..identity.card import Card, chain_window
from ..identity.source import Identity
from ..identity.spiffe_id import SpiffeId
from ..identity.svid import Bundles
from ..policy import Policy, PolicyFollower, PolicyWatcher
from ..policy._document import as_policy as _as_policy
from ..registry import Registry
from ..telemetry import MeshMetrics
from ..telemetry.access import AccessLog
from ..telemetry.logs import LimitedLog
from ..telemetry.tracing import Tracing
from ..wire.envelope import DEFAULT_LIMITS, Limits
from .addresses import default_advertise_host
from .base import MeshSocket
from .client import ReqSocket
from .core import MAX_TOPIC_BYTES, PolicyInForce
from .directory import Directory
from .drivers import SYNC
from .handshake import ZapHandler
from .pipeline import PullSocket, PushSocket
from .pubsub import PubSocket, SubSocket
from .server import RepSocket
from .traffic import Traffic

log = logging.getLogger("zmeshlib.mesh")

KEEPER_INTERVAL = 0.2  # seconds between renewal checks
CARD_CHECK_INTERVAL = 2.0  # seconds between checks that the store still holds our card
HANDSHAKE_IVL_MS = 10_000  # a connection that has not finished its handshake by then is dropped
# libzmq listens with a backlog of 100: a burst of connections (a fleet reconnecting to a
# restarted server) overflowed it whenever the I/O thread was late to accept, and each
# connection refused that way waits a second for its SYN to be sent again
LISTEN_BACKLOG = 1024

_KINDS = {
    zmq.PUB: SocketKind.PUB,
    zmq.SUB: SocketKind.SUB,
    zmq.REQ: SocketKind.REQ,
    zmq.REP: SocketKind.REP,
    zmq.PUSH: SocketKind.PUSH,
    zmq.PULL: SocketKind.PULL,
}


SYNC_CLASSES: Mapping[SocketKind, type[MeshSocket]] = {
    SocketKind.PUB: PubSocket,
    SocketKind.SUB: SubSocket,
    SocketKind.REQ: ReqSocket,
    SocketKind.REP: RepSocket,
    SocketKind.PUSH: PushSocket,
    SocketKind.PULL: PullSocket,
}


class Mesh:
    """A workload's membership of the mesh; makes mesh sockets. Context manager.

    ``policy`` is a :class:`~zmeshlib.Policy`, a path to a policy file (loaded with
    :meth:`Policy.load`) or a mapping (:meth:`Policy.from_dict`). ``advertise_host`` is
    the host a wildcard bind (``tcp://*:0``) is advertised with on the card (default:
    this host's address on its default route).
    """

    _socket_classes: Mapping[SocketKind, type[MeshSocket]] = SYNC_CLASSES
    _driver: Any = SYNC

    def __init__(
        self,
        identity: Identity | None = None,
        policy: Policy | str | os.PathLike[str] | Mapping[str, Any] | None = None,
        registry: str | Registry = "memory://",
        *,
        context: zmq.Context | None = None,
        labels: Mapping[str, str] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        meter_provider: Any = None,
        tracer_provider: Any = None,
        advertise_host: str | None = None,
    ) -> None:
        self._closed = True  # until fully started: close() of a half-made Mesh does nothing
        self._in_force = PolicyInForce(_as_policy(policy))
        if identity is not None and not isinstance(identity, Identity):
            raise IdentityError(
                f"identity= takes a zmeshlib.Identity (DevCA.issue, Identity.from_pem, "
                f"Identity.from_workload_api), not {type(identity).__name__}",
                rule="type",
            )
        if not isinstance(limits, Limits):
            raise MeshError(f"limits= takes a zmeshlib.Limits, not {type(limits).__name__}")
        if identity is None and self.mode != "DISABLE":
            raise IdentityError(
                f"peer_authentication mode {self.mode} needs an identity: pass "
                "identity=DevCA.issue(...), Identity.from_pem(...) or Identity.from_workload_api()",
                rule="no-identity",
            )
        self.identity = identity
        self.limits = limits
        self.labels = dict(labels or {})
        self.advertise_host = advertise_host or default_advertise_host()
        self._lock = threading.RLock()
        self._bundles_memo: tuple[object, tuple[str, ...], Bundles] | None = None
        self._limited = LimitedLog(log)
        self._endpoints: list[Endpoint] = []
        self._sockets: weakref.WeakSet[MeshSocket] = weakref.WeakSet()
        self._watchers: list[PolicyWatcher | PolicyFollower] = []
        self._policy_updates = 0
        self._policy_rejected = 0
        self.card: Card | None = None
        self._unsubscribe_rotation: Any = None
        self._stop = threading.Event()
        self._started: list[Any] = []  # what close() must undo, in the order it was made
        try:
            self._start(context, registry, meter_provider, tracer_provider)
        except BaseException:
            self._undo()
            raise
        self._closed = False
        log.info(
            "mesh member %s up (mode %s, policy %s)",
            self.spiffe_id or "anonymous",
            self.mode,
            self._in_force.policy.revision,
        )

    def _start(
        self,
        context: zmq.Context | None,
        registry: str | Registry,
        meter_provider: Any,
        tracer_provider: Any = None,
    ) -> None:
        self._own_context = context is None
        self.context = context if context is not None else self._new_context()
        if self._own_context:
            self._started.append(self.context.term)
        # the sockets underneath are always synchronous; asyncio waits on them from outside
        self._zmq_context: zmq.Context = zmq.Context.shadow(self.context.underlying)
        public, secret = zmq.curve_keypair()
        self.curve_public: bytes = public
        self._curve_secret: bytes = secret
        self._own_registry = not isinstance(registry, Registry)
        self.registry = (
            registry
            if isinstance(registry, Registry)
            else Registry(registry, bundles=self._bundles, may_serve=self._may_serve)
        )
        if self._own_registry:
            self._started.append(self.registry.close)
        # before the card, so that a context with another ZAP handler leaves nothing behind
        self._zap = ZapHandler(self._zmq_context, lambda: self.mode, self.registry.by_key)
        self._started.append(self._zap.close)
        self._directory = Directory(self.registry, self._in_force)
        self._started.append(self._directory.close)
        self._traffic = Traffic()  # per destination service: budget, circuit breaker
        if self.identity is not None:
            self._publish_card(startup=True)
            self._started.append(self._withdraw_card)
            self._unsubscribe_rotation = self.identity.on_rotate(
                lambda _ident: self._publish_card()
            )
        self.metrics = MeshMetrics(self, meter_provider)
        self.access = AccessLog(self._in_force, str(self.spiffe_id or ""))
        #: Spans and trace context (``telemetry/tracing.py``): the global provider by default.
        self.tracing = Tracing(
            str(self.identity.spiffe_id) if self.identity else "", tracer_provider, self._in_force
        )
        self._keeper = threading.Thread(target=self._keep, name="zmeshlib-keeper", daemon=True)
        self._keeper.start()
        self._started.append(self._stop_keeper)

    def _undo(self) -> None:
        """Undo what ``_start`` did, newest first (a failed start, or close())."""
        for step in reversed(self._started):
            try:
                step()
            except MeshError as e:
                log.warning("while closing the mesh: %s", e)
        self._started.clear()

    def _stop_keeper(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._keeper:
            self._keeper.join(5)

    def _withdraw_card(self) -> None:
        self.registry.withdraw(self.curve_public)

    def _new_context(self) -> zmq.Context:
        return zmq.Context()

    def _limit(self, sock: zmq.Socket) -> None:
        """The bounds every underlying socket gets from the Mesh (module docstring)."""
        limits = self.limits
        sock.maxmsgsize = max(
            limits.max_message_bytes, limits.max_envelope_bytes + MAX_TOPIC_BYTES + 1
        )
        sock.handshake_ivl = HANDSHAKE_IVL_MS
        sock.backlog = LISTEN_BACKLOG

    def _log_limited(self, kind: str, message: str, *args: Any) -> None:
        """A WARNING at most once a second per kind (a flood must not flood the log)."""
        self._limited.warning(kind, message, *args)

    # -- identity and card -------------------------------------------------------

    @property
    def spiffe_id(self) -> SpiffeId | None:
        return self.identity.spiffe_id if self.identity is not None else None

    def _bundles(self) -> Bundles:
        """The trust bundles cards verify against: the identity source's, restricted to the
        policy's ``trust_domains`` when it lists any (one object per input, so the
        registry's verdict cache stays valid while nothing changed)."""
        if self.identity is None:
            return Bundles()
        bundles = self.identity.bundles
        domains = self._in_force.policy.trust_domains
        if not domains:
            return bundles
        memo = self._bundles_memo
        if memo is None or memo[0] is not bundles or memo[1] != domains:
            kept = Bundles(b for b in bundles if b.trust_domain in domains)
            memo = self._bundles_memo = (bundles, domains, kept)
        return memo[2]

    def _may_serve(self, service: str, spiffe_id: SpiffeId) -> bool:
        return self._in_force.policy.may_serve(service, spiffe_id)

    def _publish_card(self, *, startup: bool = False) -> None:
        """Sign this workload's card with the current SVID and publish it."""
        if self.identity is None:
            return
        with self._lock:
            if self._closed and not startup:
                return
            labels = dict(self.labels)
            services = sorted({e.service for e in self._endpoints if e.service})
            if services and "service" not in labels:
                labels["service"] = services[0]
            self.card = Card.sign(
                self.identity.svid,
                self.curve_public,
                curve_secret=self._curve_secret,
                ttl=self.registry.lease,
                labels=labels,
                endpoints=tuple(self._endpoints),
            )
            self.registry.publish(self.card)
            log.debug("published card %s for %s", self.card.key_id[:12], self.card.spiffe_id)

    def _add_endpoint(self, address: str, kind: str, service: str) -> None:
        with self._lock:
            self._endpoints.append(Endpoint(address, kind, service))
            self._publish_card()

    def _remove_endpoints(self, addresses: list[str]) -> None:
        """Withdraw endpoints from the card (a closed socket's, an unbound address)."""
        if not addresses:
            return
        with self._lock:
            kept = [e for e in self._endpoints if e.address not in addresses]
            if len(kept) == len(self._endpoints):
                return
            self._endpoints = kept
            try:
                self._publish_card()
            except MeshError as e:
                log.warning("could not withdraw endpoints %s from the card: %s", addresses, e)

    def _keep(self) -> None:
        """Renew the SVID when due, the card's lease every third of it, and check every
        ``CARD_CHECK_INTERVAL`` that the store still holds the card; asleep in between.

        A renewal that brings nothing new (an identity from PEM files nobody rewrote)
        does not stop the lease: the card is renewed until the SVID itself ends.
        """
        next_card_check = time.monotonic() + CARD_CHECK_INTERVAL
        store_retry_at = 0.0  # after the store refused a card write: not before then
        while not self._stop.wait(self._keeper_wait(next_card_check, store_retry_at)):
            ident = self.identity
            if ident is None:
                continue
            try:
                if ident.renewal_due() and ident.renew():
                    log.info("SVID of %s rotated", ident.spiffe_id)  # on_rotate re-published
                elif self._lease_renewal_at() <= time.time():
                    if time.monotonic() >= store_retry_at:
                        self._publish_card()
                elif time.monotonic() >= next_card_check:
                    next_card_check = time.monotonic() + CARD_CHECK_INTERVAL
                    self._check_card()
            except RegistryError as e:
                store_retry_at = time.monotonic() + CARD_CHECK_INTERVAL
                self._limited.log(
                    logging.WARNING,
                    "card-renewal",
                    "could not renew this workload's card in the registry (trying again "
                    "every %.0f s; its lease ends %s): %s",
                    CARD_CHECK_INTERVAL,
                    time.strftime("%H:%M:%S", time.localtime(self.card.not_after))
                    if self.card is not None
                    else "now",
                    e,
                )
            except MeshError as e:
                log.error("identity renewal failed, keeping the current SVID: %s", e)

    def _lease_renewal_at(self) -> float:
        """When the card's lease is to be renewed (a third of it left), or inf when the
        card already ends with its SVID and a new one would be no longer."""
        card, ident = self.card, self.identity
        if (
            card is None
            or ident is None
            or card.not_after >= chain_window(ident.svid.certificates)[1] - 0.001
        ):
            return math.inf
        return card.not_after - self.registry.lease * 2 / 3

    def _keeper_wait(self, next_card_check: float, store_retry_at: float = 0.0) -> float:
        """Seconds until the keeper's next duty, between KEEPER_INTERVAL and CARD_CHECK_INTERVAL
        (a lease renewal the store refused is not due before ``store_retry_at``, monotonic)."""
        ident = self.identity
        if ident is None:
            return CARD_CHECK_INTERVAL
        now, mono = time.time(), time.monotonic()
        due = min(
            ident.renews_at - now,
            max(self._lease_renewal_at() - now, store_retry_at - mono),
            next_card_check - mono,
        )
        return min(max(due, KEEPER_INTERVAL), CARD_CHECK_INTERVAL)

    def _check_card(self) -> None:
        """Publish the card again if the store no longer holds it (deleted or overwritten)."""
        card = self.card
        if card is None:
            return
        try:
            held = self.registry.holds(card)
        except RegistryError:
            return  # the store is away, which is not "lost" (the registry says so itself)
        if not held:
            log.warning("the registry lost this workload's card; publishing it again")
            self._publish_card()

    # -- policy --------------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self._in_force.policy

    @property
    def mode(self) -> str:
        return self._in_force.policy.peer_authentication.mode

    @property
    def policy_version(self) -> str:
        """The revision (content hash) of the active policy (a signed document's ``version``
        orders documents; this names the content: see :meth:`follow_policy`)."""
        return self._in_force.policy.revision

    def update_policy(self, policy: Policy) -> None:
        """Swap the policy: the next message, call or subscription of every socket sees it."""
        if not isinstance(policy, Policy):
            raise MeshError(f"update_policy takes a zmeshlib.Policy, not {type(policy).__name__}")
        old = self._in_force.policy
        self._in_force.policy = policy
        self._policy_updates += 1
        self.metrics.policy_updates.add(1, {"revision": policy.revision})
        log.info("policy %s -> %s", old.revision, policy.revision)

    def watch_policy(self, path: str, *, interval: float = 1.0) -> PolicyWatcher:
        """Reload ``path`` whenever it changes; a broken file keeps the current policy (and is logged).

        The watcher stops when the Mesh closes.
        """

        def rejected(error: PolicyError) -> None:
            self._policy_rejected += 1
            self.metrics.policy_rejected.add(1, {"path": str(path)})
            log.error("policy file %s rejected, keeping %s: %s", path, self.policy_version, error)

        watcher = PolicyWatcher(path, self.update_policy, on_error=rejected, interval=interval)
        watcher.start()
        if watcher.policy is not None:
            self.update_policy(watcher.policy)
        self._watchers.append(watcher)
        return watcher

    def follow_policy(self, signers: Iterable[str], *, interval: float = 0.1) -> PolicyFollower:
        """Apply each newer signed policy the registry holds from one of ``signers``
        (principal patterns), verified against this workload's trust; the document there
        now applies before this returns. Refusals keep the current policy. Stops when the
        Mesh closes. See docs/policy.md, "Signed policy distribution"."""
        if self.identity is None:
            raise IdentityError(
                "follow_policy verifies documents against this workload's trust bundles, "
                "and a Mesh without identity has none: pass identity=",
                rule="no-identity",
            )

        def refused(error: MeshError) -> None:
            self.metrics.policy_refused.add(1, {"reason": getattr(error, "reason", "")})

        follower = PolicyFollower(
            self.registry.store,
            signers,
            bundles=self._bundles,
            apply=self.update_policy,
            interval=interval,
            on_refused=refused,
        )
        with self._lock:
            if self._closed:
                raise Closed("this Mesh is closed")
            self._watchers.append(follower)
        return follower.start()

    # -- sockets -------------------------------------------------------------------

    def socket(self, kind: int) -> Any:
        """A mesh socket: zmq.PUB, SUB, REQ, REP, PUSH or PULL.

        Not DEALER or ROUTER: a mesh socket's frames are the mesh's envelope and its
        request ids, and its routing is the mesh's (docs/sockets.md says why).
        """
        if self._closed:
            raise Closed("this Mesh is closed")
        sk = _KINDS.get(kind)  # type: ignore[call-overload]
        if sk is None:
            raise MeshError(
                f"unsupported socket type {kind!r}: use zmq.PUB, SUB, REQ, REP, PUSH or PULL"
                + (
                    " (DEALER and ROUTER carry no mesh envelope: build on REQ/REP)"
                    if kind in (zmq.DEALER, zmq.ROUTER)
                    else ""
                )
            )
        sock = self._socket_classes[sk](self, self._driver)  # type: ignore[call-arg]
        with self._lock:
            if self._closed:  # closed by another thread meanwhile
                sock.close()
                raise Closed("this Mesh is closed")
            self._sockets.add(sock)
            self.metrics.socket_opened(sock)
        return sock

    def _forget_socket(self, sock: MeshSocket, endpoints: list[str]) -> None:
        self._sockets.discard(sock)
        self.metrics.socket_closed(sock)  # its counts stay in the totals
        if not self._closed:
            self._remove_endpoints(endpoints)

    @property
    def closed(self) -> bool:
        return self._closed

    def handshake_counts(self) -> dict[str, int]:
        """Handshake decisions so far, by outcome."""
        return dict(self._zap.counters)

    def traffic_counts(self) -> dict[tuple[str, str], int]:
        """Traffic shaping so far, by (destination service, event): ``fault.delay``,
        ``fault.abort``, ``mirror.sent``, ``mirror.dropped``, over every REQ socket."""
        with self._traffic._lock:
            return dict(self._traffic.counts)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: ``handshake.<outcome>``, ``registry.<name>``, ``policy.updates|rejected``."""
        out = {f"handshake.{k}": v for k, v in self.handshake_counts().items()}
        out.update({f"registry.{k}": v for k, v in self.registry.stats.items()})
        out["policy.updates"] = self._policy_updates
        out["policy.rejected"] = self._policy_rejected
        return out

    def close(self) -> None:
        """Close every socket (waking operations blocked in other threads: they end with
        :class:`~zmeshlib.Closed`), withdraw the card, stop the threads. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop_keeper()
        for watcher in self._watchers:
            watcher.close()
        for sock in list(self._sockets):
            sock.close()
        if self._unsubscribe_rotation is not None:
            self._unsubscribe_rotation()
        self._undo()

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

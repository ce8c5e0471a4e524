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
* ``close()`` leaves nothing behind: sockets closed, card withdrawn, the ZAP
  and renewal threads stopped, the context terminated if the Mesh made it.

Theory of operation: the Mesh owns two threads. The ZAP thread
(``handshake.py``) answers libzmq's question "who is this CURVE key?" from the
registry. The keeper thread renews the SVID when half its life has passed
(``Identity.renewal_due``) and re-signs the card. Everything else happens in
the threads that use the sockets.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

import zmq

from .._exceptions import IdentityError, MeshError, PolicyError
from .._models import Endpoint, SocketKind
from ..identity.card import Card
from ..identity.source import Identity
from ..identity.spiffe_id import SpiffeId
from ..identity.svid import Bundles
from ..policy import Policy, PolicyWatcher
from ..registry import Registry
from ..telemetry import MeshMetrics
from ..wire.envelope import DEFAULT_LIMITS, Limits
from .core import PolicyInForce
from .handshake import ZapHandler
from .shell import SYNC_CLASSES, MeshSocket

log = logging.getLogger("zmeshlib.mesh")

KEEPER_INTERVAL = 0.2  # seconds between renewal checks

_KINDS = {
    zmq.PUB: SocketKind.PUB,
    zmq.SUB: SocketKind.SUB,
    zmq.REQ: SocketKind.REQ,
    zmq.REP: SocketKind.REP,
    zmq.PUSH: SocketKind.PUSH,
    zmq.PULL: SocketKind.PULL,
}


class Mesh:
    """A workload's membership of the mesh; makes mesh sockets. Context manager."""

    _socket_classes: Mapping[SocketKind, type[MeshSocket]] = SYNC_CLASSES

    def __init__(
        self,
        identity: Identity | None = None,
        policy: Policy | None = None,
        registry: str | Registry = "memory://",
        *,
        context: zmq.Context | None = None,
        labels: Mapping[str, str] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        meter_provider: Any = None,
    ) -> None:
        self._in_force = PolicyInForce(policy if policy is not None else Policy())
        if identity is None and self.mode != "DISABLE":
            raise IdentityError(
                f"peer_authentication mode {self.mode} needs an identity: pass "
                "identity=DevCA.issue(...), Identity.from_pem(...) or Identity.from_workload_api()",
                rule="no-identity",
            )
        self.identity = identity
        self.limits = limits
        self.labels = dict(labels or {})
        self._lock = threading.RLock()
        self._closed = False
        self._own_context = context is None
        self.context = context if context is not None else self._new_context()
        # the sockets underneath are always synchronous; asyncio waits on them from outside
        self._zmq_context = zmq.Context.shadow(self.context.underlying)
        public, secret = zmq.curve_keypair()
        self.curve_public: bytes = public
        self._curve_secret: bytes = secret
        self.registry = (
            registry
            if isinstance(registry, Registry)
            else Registry(registry, bundles=self._bundles, may_serve=self._may_serve)
        )
        self._own_registry = not isinstance(registry, Registry)
        try:  # first, so that a context with another ZAP handler leaves nothing behind
            self._zap = ZapHandler(self._zmq_context, lambda: self.mode, self.registry.by_key)
        except MeshError:
            if self._own_registry:
                self.registry.close()
            if self._own_context:
                self.context.term()
            raise
        self._endpoints: list[Endpoint] = []
        self._sockets: weakref.WeakSet[MeshSocket] = weakref.WeakSet()
        self._watchers: list[PolicyWatcher] = []
        self._policy_updates = 0
        self._policy_rejected = 0
        self.card: Card | None = None
        self._unsubscribe_rotation = None
        if identity is not None:
            self._publish_card()
            self._unsubscribe_rotation = identity.on_rotate(lambda _ident: self._publish_card())
        self.metrics = MeshMetrics(self, meter_provider)
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name="zmeshlib-keeper", daemon=True)
        self._keeper.start()
        log.info(
            "mesh member %s up (mode %s, policy %s)",
            self.spiffe_id or "anonymous",
            self.mode,
            self._in_force.policy.revision,
        )

    def _new_context(self) -> zmq.Context:
        return zmq.Context()

    # -- identity and card -------------------------------------------------------

    @property
    def spiffe_id(self) -> SpiffeId | None:
        return self.identity.spiffe_id if self.identity is not None else None

    def _bundles(self) -> Bundles:
        return self.identity.bundles if self.identity is not None else Bundles()

    def _may_serve(self, service: str, spiffe_id: SpiffeId) -> bool:
        return self._in_force.policy.may_serve(service, spiffe_id)

    def _publish_card(self) -> None:
        """Sign this workload's card with the current SVID and publish it."""
        if self.identity is None:
            return
        with self._lock:
            if self._closed:
                return
            labels = dict(self.labels)
            services = sorted({e.service for e in self._endpoints if e.service})
            if services and "service" not in labels:
                labels["service"] = services[0]
            self.card = Card.sign(
                self.identity.svid,
                self.curve_public,
                curve_secret=self._curve_secret,
                labels=labels,
                endpoints=tuple(self._endpoints),
            )
            self.registry.publish(self.card)
            log.debug("published card %s for %s", self.card.key_id[:12], self.card.spiffe_id)

    def _add_endpoint(self, address: str, kind: str, service: str) -> None:
        with self._lock:
            self._endpoints.append(Endpoint(address, kind, service))
            self._publish_card()

    def _keep(self) -> None:
        while not self._stop.wait(KEEPER_INTERVAL):
            ident = self.identity
            if ident is None:
                continue
            try:
                if ident.renewal_due():
                    if ident.renew():
                        log.info("SVID of %s rotated", ident.spiffe_id)
                elif (
                    self.card is not None
                    and self.card.not_after - time.time() < 2 * KEEPER_INTERVAL
                ):
                    self._publish_card()
            except MeshError as e:
                log.error("identity renewal failed, keeping the current SVID: %s", e)

    # -- policy --------------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self._in_force.policy

    @property
    def mode(self) -> str:
        return self._in_force.policy.peer_authentication.mode

    @property
    def policy_version(self) -> str:
        """The revision (content hash) of the active policy."""
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

    # -- sockets -------------------------------------------------------------------

    def socket(self, kind: int) -> Any:
        """A mesh socket: zmq.PUB, SUB, REQ, REP, PUSH or PULL."""
        if self._closed:
            raise MeshError("this Mesh is closed")
        sk = _KINDS.get(kind)
        if sk is None:
            raise MeshError(
                f"unsupported socket type {kind!r}: use zmq.PUB, SUB, REQ, REP, PUSH or PULL"
            )
        sock = self._socket_classes[sk](self)
        self._sockets.add(sock)
        return sock

    def _forget_socket(self, sock: MeshSocket) -> None:
        self._sockets.discard(sock)

    @property
    def closed(self) -> bool:
        return self._closed

    def handshake_counts(self) -> dict[str, int]:
        """Handshake decisions so far, by outcome."""
        return dict(self._zap.counters)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: ``handshake.<outcome>``, ``registry.<name>``, ``policy.updates|rejected``."""
        out = {f"handshake.{k}": v for k, v in self.handshake_counts().items()}
        out.update({f"registry.{k}": v for k, v in self.registry.stats.items()})
        out["policy.updates"] = self._policy_updates
        out["policy.rejected"] = self._policy_rejected
        return out

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._keeper.join(5)
        for watcher in self._watchers:
            watcher.close()
        for sock in list(self._sockets):
            sock.close()
        if self._unsubscribe_rotation is not None:
            self._unsubscribe_rotation()
        try:
            self.registry.withdraw(self.curve_public)
        except MeshError as e:
            log.warning("could not withdraw this workload's card: %s", e)
        self._zap.close()
        if self._own_registry:
            self.registry.close()
        if self._own_context:
            self.context.term()

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

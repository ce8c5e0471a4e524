"""The policy object: one frozen, validated value that configures the whole mesh.

Rules this module keeps:

* Every class here is a small frozen attrs value; mappings are read-only
  views. A policy is never changed: a new document makes a new
  :class:`Policy`, and sockets swap the whole object (hot reload).
* Constructing these classes directly does no validation; documents come in
  through :meth:`Policy.from_dict` / :meth:`Policy.load`, which report every
  problem at once (see :mod:`zmeshlib.policy._document`).
* Durations are float seconds, percentages are floats from 0 to 100, status
  codes are :class:`~zmeshlib.StatusCode` members.
* Work derived from a policy (its revision, its compiled authorizer) is done
  once, lazily, and kept on the object under a lock. A value that is asked
  something per request compiles what it needs once, when it is built
  (:meth:`RetryPolicy.is_idempotent`'s patterns).
* Defaults are the anchors' (Istio, Envoy, Linkerd, gRPC) where one exists,
  and a default that is a value (``RetryPolicy.budget``) is on unless the
  document turns it off.

Theory of operation: ``Policy.from_dict`` walks the document with a
problem-collecting reader and builds these values; ``Policy.authorizer()``
compiles the ``authorization`` section once into bit-mask indexes
(:mod:`zmeshlib.policy.authz`); everything else is read as plain attributes
by the sockets and the resilience code.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Mapping
from enum import Enum
from os import PathLike
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs

from .._models import Endpoint, StatusCode
from ._patterns import Pattern, PatternIndex, parse_pattern

if TYPE_CHECKING:
    from ..identity.spiffe_id import SpiffeId
    from .authz import Authorizer, AuthzRequest

PEER_AUTHENTICATION_MODES = ("STRICT", "PERMISSIVE", "DISABLE")
ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
LOAD_BALANCERS = ("round_robin", "random", "least_request", "peak_ewma")
#: ``retry_on`` values besides status names: the request never reached a
#: verified server, or the server's handler flagged its error retriable.
RETRY_CONDITIONS = ("connect-failure", "retriable")


def status_key(code: StatusCode) -> str:
    """The document's spelling of a status code: ``DEADLINE_EXCEEDED`` -> ``deadline-exceeded``."""
    return code.name.lower().replace("_", "-")


#: Every non-OK status code, by its document spelling.
STATUS_BY_KEY: Mapping[str, StatusCode] = MappingProxyType(
    {status_key(c): c for c in StatusCode if c is not StatusCode.OK}
)


def _frozen_map(value: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return value if isinstance(value, MappingProxyType) else MappingProxyType(dict(value))


def _map_field() -> Any:
    return attrs.field(factory=dict, converter=_frozen_map, hash=False)


def istio_form(spiffe_id: SpiffeId) -> str:
    """The principal as Istio writes it, ``td/path`` without the scheme: what patterns match."""
    return f"{spiffe_id.trust_domain}{spiffe_id.path}"


# -- peer authentication and services -----------------------------------------


@attrs.frozen
class PeerAuthentication:
    """How peers must authenticate: ``STRICT`` (a verified card, always), ``PERMISSIVE``
    (anonymous peers accepted as principal None), ``DISABLE`` (no CURVE at all)."""

    mode: str = "STRICT"


@attrs.frozen
class Subset:
    """A named group of a service's servers, selected by the labels on their cards."""

    name: str
    labels: Mapping[str, str] = _map_field()

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.labels.items())


@attrs.frozen
class ServiceSpec:
    """What the mesh knows about one service without asking the registry.

    ``identities`` are principal patterns (Istio form) allowed to serve it:
    secure naming. Empty means any verified identity may.
    """

    identities: tuple[str, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    subsets: Mapping[str, Subset] = _map_field()

    def may_serve(self, spiffe_id: SpiffeId) -> bool:
        if not self.identities:
            return True
        principal = istio_form(spiffe_id)
        for text in self.identities:
            pattern = parse_pattern(text)
            if not isinstance(pattern, str) and pattern.matches(principal):
                return True
        return False


# -- authorization -------------------------------------------------------------


@attrs.frozen
class Source:
    """``from``: who the request comes from. Fields AND together, values OR.

    ``None`` means unconstrained. A ``not_*`` field is met when the peer's
    value is absent or matches none of its patterns.
    """

    principals: tuple[str, ...] | None = None
    not_principals: tuple[str, ...] | None = None
    namespaces: tuple[str, ...] | None = None
    not_namespaces: tuple[str, ...] | None = None
    trust_domains: tuple[str, ...] | None = None
    not_trust_domains: tuple[str, ...] | None = None


@attrs.frozen
class Operation:
    """``to``: which operations. A request matches the list of its own action only."""

    publish: tuple[str, ...] | None = None
    subscribe: tuple[str, ...] | None = None
    call: tuple[str, ...] | None = None

    def patterns_for(self, action: str) -> tuple[str, ...] | None:
        return getattr(self, action)


@attrs.frozen
class Condition:
    """One ``when`` entry: a message header must (not) match one of the patterns."""

    key: str
    values: tuple[str, ...] | None = None
    not_values: tuple[str, ...] | None = None

    @property
    def header(self) -> str:
        return self.key.removeprefix("header:")


@attrs.frozen
class Rule:
    """``from`` AND ``to`` AND every ``when``; an omitted part matches everything."""

    from_: Source | None = None
    to: Operation | None = None
    when: tuple[Condition, ...] = ()


@attrs.frozen
class AuthorizationPolicy:
    """One named policy. ``selector`` None = mesh-wide; ``provider`` names a CUSTOM callable."""

    name: str
    action: str = "ALLOW"
    rules: tuple[Rule, ...] = ()
    selector: tuple[str, ...] | None = None
    provider: str | None = None

    def selects(self, service: str) -> bool:
        return self.selector is None or service in self.selector


# -- traffic -------------------------------------------------------------------


@attrs.frozen
class Backoff:
    """Jittered exponential backoff between attempts."""

    base_interval: float = 0.025
    max_interval: float = 0.25


@attrs.frozen
class RetryBudget:
    """Linkerd's retry budget: retries may add ``retry_ratio`` of the requests sent over the
    last ``ttl`` seconds, plus ``min_retries_per_second`` always (so a quiet client can retry).

    A ratio of requests, not of requests in flight (Envoy's budget), so it bounds a
    sequential client too.
    """

    retry_ratio: float = 0.2
    min_retries_per_second: float = 10.0
    ttl: float = 10.0


def _compile_methods(patterns: tuple[str, ...]) -> PatternIndex:
    """The idempotent method patterns, compiled; an invalid one (never from a document) is skipped."""
    parsed = (parse_pattern(p) for p in patterns)
    return PatternIndex((p, 1) for p in parsed if not isinstance(p, str))


@attrs.frozen
class RetryPolicy:
    """``attempts`` = retries after the first try (Istio's meaning).

    ``idempotent_methods`` are method patterns (exact, ``prefix*``, ``*suffix``, ``*``)
    whose calls may run twice: only they may be retried after the request may have
    reached a server, and only they may be hedged. ``budget`` None = no budget.
    """

    attempts: int = 2
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = ("connect-failure", "unavailable")
    backoff: Backoff = Backoff()
    budget: RetryBudget | None = RetryBudget()
    idempotent_methods: tuple[str, ...] = ()
    _idempotent: PatternIndex = attrs.field(init=False, eq=False, hash=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # compiled once here, because is_idempotent is asked per request
        object.__setattr__(self, "_idempotent", _compile_methods(self.idempotent_methods))

    def is_idempotent(self, method: str) -> bool:
        """May a call of ``method`` run twice (be retried after possible delivery, or hedged)?"""
        return bool(self._idempotent.lookup(method))

    @property
    def statuses(self) -> frozenset[StatusCode]:
        """The reply status codes that trigger a retry."""
        return frozenset(STATUS_BY_KEY[k] for k in self.retry_on if k in STATUS_BY_KEY)

    @property
    def on_connect_failure(self) -> bool:
        return "connect-failure" in self.retry_on

    @property
    def on_retriable(self) -> bool:
        return "retriable" in self.retry_on


@attrs.frozen
class HedgingPolicy:
    """gRPC's hedging: send another copy of an idempotent request every ``delay`` seconds
    until one answers, up to ``max_attempts`` copies in all (the first included)."""

    delay: float
    max_attempts: int = 2


#: Envoy's floor for the longest ejection when ``max_ejection_time`` is not given.
DEFAULT_MAX_EJECTION_TIME = 300.0


@attrs.frozen
class OutlierDetection:
    """Eject an endpoint after ``consecutive_errors`` replies whose status is in ``error_codes``.

    An ejection lasts ``base_ejection_time`` times the number of times the endpoint was
    ejected, at most :attr:`effective_max_ejection_time`. ``max_ejection_percent`` caps the
    share ejected at once, except that one endpoint may always be ejected while
    ``always_eject_one``; below ``min_health_percent`` healthy endpoints, balancing ignores
    ejections (Envoy's panic threshold, as Istio maps ``minHealthPercent``).
    """

    consecutive_errors: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: float = 10.0
    error_codes: frozenset[StatusCode] = frozenset(
        {StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED, StatusCode.INTERNAL}
    )
    max_ejection_time: float | None = None
    always_eject_one: bool = True
    min_health_percent: float = 0.0

    @property
    def effective_max_ejection_time(self) -> float:
        """``max_ejection_time``, or Envoy's default: max(300 s, ``base_ejection_time``)."""
        if self.max_ejection_time is not None:
            return self.max_ejection_time
        return max(DEFAULT_MAX_EJECTION_TIME, self.base_ejection_time)


@attrs.frozen
class PoolSpec:
    """Limits on upstream use; ``None`` = unlimited."""

    max_connections: int | None = None
    max_requests: int | None = None
    max_pending: int | None = None
    connect_timeout: float | None = None
    idle_timeout: float | None = None


@attrs.frozen
class DelayFault:
    fixed_delay: float
    percentage: float = 100.0


@attrs.frozen
class AbortFault:
    status: StatusCode
    percentage: float = 100.0


@attrs.frozen
class FaultSpec:
    """Injected on the client side, before sending: a delay, an abort, or both."""

    delay: DelayFault | None = None
    abort: AbortFault | None = None


@attrs.frozen
class SplitDestination:
    subset: str
    weight: int


@attrs.frozen
class MirrorSpec:
    """Send a copy of ``percentage`` of requests to ``service`` (or its ``subset``); replies ignored."""

    service: str
    subset: str | None = None
    percentage: float = 100.0


@attrs.frozen
class HeaderMatch:
    """One header condition of a route: the value ``exact``, starting with ``prefix``, or
    matching ``regex`` as a whole (``re.fullmatch``, as Istio's RE2 match). Exactly one of the
    three is set. A request without the header never matches. Names are compared as sent.
    """

    name: str
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    _compiled: re.Pattern[str] | None = attrs.field(init=False, eq=False, hash=False, repr=False)

    def __attrs_post_init__(self) -> None:
        compiled = re.compile(self.regex) if self.regex is not None else None
        object.__setattr__(self, "_compiled", compiled)

    def matches(self, headers: Mapping[str, str]) -> bool:
        value = headers.get(self.name)
        if value is None:
            return False
        if self.exact is not None:
            return value == self.exact
        if self.prefix is not None:
            return value.startswith(self.prefix)
        return self._compiled is not None and self._compiled.fullmatch(value) is not None


@attrs.frozen
class RouteMatch:
    """One alternative of a route's ``match``: every field it sets must hold (AND).

    ``method`` is a pattern as in authorization's ``call`` (exact, ``prefix*``,
    ``*suffix`` or ``*``); ``None`` matches every method.
    """

    method: str | None = None
    headers: tuple[HeaderMatch, ...] = ()
    _method: Pattern | None = attrs.field(init=False, eq=False, hash=False, repr=False)

    def __attrs_post_init__(self) -> None:
        parsed = parse_pattern(self.method) if self.method is not None else None
        object.__setattr__(self, "_method", parsed if isinstance(parsed, Pattern) else None)

    def matches(self, method: str, headers: Mapping[str, str]) -> bool:
        if self._method is not None and not self._method.matches(method):
            return False
        for header in self.headers:  # noqa: SIM110 (a loop, not all(): a generator costs)
            if not header.matches(headers):
                return False
        return True


@attrs.frozen
class Route:
    """One entry of ``traffic.<service>.routes``.

    ``match`` holds alternatives (OR); empty matches every request. ``traffic`` is the
    service's settings with the route's own ``split``, ``timeout``, ``retries``,
    ``hedging``, ``faults`` and ``mirror`` put over them, resolved once when the document
    is read; its ``routes`` is empty. Balancing, outlier detection and the pool stay the
    service's: they belong to the destination, not to the route.
    """

    traffic: TrafficSpec
    match: tuple[RouteMatch, ...] = ()
    name: str | None = None

    def matches(self, method: str, headers: Mapping[str, str]) -> bool:
        if not self.match:
            return True
        for alternative in self.match:  # noqa: SIM110 (a loop, not any(): a generator costs)
            if alternative.matches(method, headers):
                return True
        return False


@attrs.frozen
class TrafficSpec:
    """Resilience settings for requests to one destination service."""

    timeout: float | None = None
    retries: RetryPolicy = RetryPolicy()
    load_balancer: str = "least_request"
    outlier_detection: OutlierDetection | None = None
    pool: PoolSpec = PoolSpec()
    faults: FaultSpec | None = None
    split: tuple[SplitDestination, ...] = ()
    mirror: MirrorSpec | None = None
    hedging: HedgingPolicy | None = None
    routes: tuple[Route, ...] = ()


# -- telemetry -------------------------------------------------------------------


@attrs.frozen
class TracingSpec:
    """``sampling``: percentage of new root traces recorded (a sampled parent is always followed)."""

    enabled: bool = True
    sampling: float = 100.0


#: The most topic segments a metric label keeps (``telemetry.metrics.topic_depth``).
MAX_TOPIC_DEPTH = 8


@attrs.frozen
class MetricsSpec:
    """``istio_compatible`` adds Istio's standard metrics; ``topic_depth`` is how many
    leading segments of a topic the message metrics label (0: none; never the raw topic)."""

    enabled: bool = True
    istio_compatible: bool = False
    topic_depth: int = 1


@attrs.frozen
class AccessLogSpec:
    """``sampling``: the percentage of requests and messages logged."""

    enabled: bool = False
    sampling: float = 100.0


@attrs.frozen
class TelemetrySpec:
    tracing: TracingSpec = TracingSpec()
    metrics: MetricsSpec = MetricsSpec()
    access_log: AccessLogSpec = AccessLogSpec()


# -- the policy ------------------------------------------------------------------

_DEFAULT_TRAFFIC = TrafficSpec()
_COMPILE_LOCK = threading.Lock()


@attrs.frozen
class Policy:
    """The mesh policy. ``Policy()`` is STRICT, with no services and no authorization
    (everything allowed to authenticated peers)."""

    version: int = 1
    peer_authentication: PeerAuthentication = PeerAuthentication()
    trust_domains: tuple[str, ...] = ()
    services: Mapping[str, ServiceSpec] = _map_field()
    authorization: tuple[AuthorizationPolicy, ...] = ()
    traffic: Mapping[str, TrafficSpec] = _map_field()
    telemetry: TelemetrySpec = TelemetrySpec()
    _memo: dict[str, Any] = attrs.field(factory=dict, init=False, eq=False, hash=False, repr=False)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Policy:
        """Validate and build; :class:`~zmeshlib.PolicyError` lists every problem with its path."""
        from ._document import build_policy

        return build_policy(document)

    @classmethod
    def load(cls, path: str | PathLike[str]) -> Policy:
        """Read a ``.yaml``/``.yml``/``.toml``/``.json`` file (by suffix) and validate it."""
        from ._document import load_policy

        return load_policy(path)

    def may_serve(self, service: str, spiffe_id: SpiffeId) -> bool:
        """Secure naming: may this identity serve ``service``? An unlisted service: yes."""
        spec = self.services.get(service)
        return True if spec is None else spec.may_serve(spiffe_id)

    def traffic_for(self, service: str) -> TrafficSpec:
        return self.traffic.get(service, _DEFAULT_TRAFFIC)

    @property
    def revision(self) -> str:
        """A short content hash of the normalized policy: the "policy version" in logs and metrics."""
        rev = self._memo.get("revision")
        if rev is None:
            rev = hashlib.sha256(canonical_bytes(self)).hexdigest()[:12]
            self._memo["revision"] = rev
        return rev

    def authorizer(
        self, providers: Mapping[str, Callable[[AuthzRequest], bool]] | None = None
    ) -> Authorizer:
        """The compiled authorizer, built once per policy and shared by every caller.

        ``providers`` adds CUSTOM providers for this authorizer only (consulted
        before the ones registered with :func:`register_provider`); it shares the
        compiled tables but has its own decision cache.
        """
        from .authz import Authorizer, CompiledPolicy

        default = self._memo.get("authorizer")
        if default is None:
            with _COMPILE_LOCK:
                default = self._memo.get("authorizer")
                if default is None:
                    default = Authorizer(CompiledPolicy(self.authorization), self.revision)
                    self._memo["authorizer"] = default
        if not providers:
            return default
        return Authorizer(default.compiled, self.revision, providers=providers)


def canonical_bytes(policy: Policy) -> bytes:
    """The normalized policy as compact JSON with sorted keys: what :attr:`Policy.revision`
    hashes, and what a signed policy document carries (``zmeshlib.policy._rebuild`` makes
    the :class:`Policy` again from it)."""
    return json.dumps(_canonical(policy), sort_keys=True, separators=(",", ":")).encode()


def _canonical(value: Any) -> Any:
    if attrs.has(type(value)):
        return {
            f.name: _canonical(getattr(value, f.name))
            for f in attrs.fields(type(value))
            if not f.name.startswith("_")
        }
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, frozenset):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, Enum):
        return value.name
    return value

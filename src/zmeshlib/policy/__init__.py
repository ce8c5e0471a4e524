"""The mesh policy: one validated document, and the authorization engine compiled from it.

``Policy`` is the document (peer authentication, services and secure naming,
authorization, traffic, telemetry); ``Policy.authorizer()`` is the compiled
``Authorizer`` the sockets ask on every operation; ``PolicyWatcher`` reloads a
policy file live; ``SignedPolicy``, ``publish_policy`` and ``PolicyFollower``
carry a signed policy through the registry to every workload that follows it; ``analyze(policy)`` lists what is valid but likely a mistake
(routes that can never be chosen). See docs/policy.md and docs/authorization.md.
"""

from __future__ import annotations

from ._traffic import analyze
from .authz import (
    ACTIONS,
    Authorizer,
    AuthzRequest,
    Decision,
    register_provider,
    unregister_provider,
)
from .distribution import SignedPolicy, Signers, Verified, publish_policy
from .follower import PolicyFollower
from .model import (
    LOAD_BALANCERS,
    AbortFault,
    AccessLogSpec,
    AuthorizationPolicy,
    Backoff,
    Condition,
    DelayFault,
    FaultSpec,
    HeaderMatch,
    HedgingPolicy,
    MetricsSpec,
    MirrorSpec,
    Operation,
    OutlierDetection,
    PeerAuthentication,
    Policy,
    PoolSpec,
    RetryBudget,
    RetryPolicy,
    Route,
    RouteMatch,
    Rule,
    ServiceSpec,
    Source,
    SplitDestination,
    Subset,
    TelemetrySpec,
    TracingSpec,
    TrafficSpec,
)
from .watcher import PolicyWatcher

__all__ = [
    "ACTIONS",
    "LOAD_BALANCERS",
    "AbortFault",
    "AccessLogSpec",
    "AuthorizationPolicy",
    "Authorizer",
    "AuthzRequest",
    "Backoff",
    "Condition",
    "Decision",
    "DelayFault",
    "FaultSpec",
    "HeaderMatch",
    "HedgingPolicy",
    "MetricsSpec",
    "MirrorSpec",
    "Operation",
    "OutlierDetection",
    "PeerAuthentication",
    "Policy",
    "PolicyFollower",
    "PolicyWatcher",
    "PoolSpec",
    "RetryBudget",
    "RetryPolicy",
    "Route",
    "RouteMatch",
    "Rule",
    "ServiceSpec",
    "SignedPolicy",
    "Signers",
    "Source",
    "SplitDestination",
    "Subset",
    "TelemetrySpec",
    "TracingSpec",
    "TrafficSpec",
    "Verified",
    "analyze",
    "publish_policy",
    "register_provider",
    "unregister_provider",
]

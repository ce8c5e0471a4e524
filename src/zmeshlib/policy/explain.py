"""Why a policy decides what it decides: every authorization policy's part in one decision,
and the route, split, retries and timeouts a request would get.

Rules this module keeps:

* Pure and read-only: it asks the same compiled policy the sockets ask
  (:meth:`Authorizer.check <zmeshlib.policy.authz.Authorizer.check>` gives the
  verdict) and reads the same traffic settings the client reads
  (:func:`zmeshlib.resilience.routing.select` picks the route), so what it says
  is what the mesh does; it never re-implements a decision.
* Every authorization policy is listed, in document order, with what it did
  for this request: it does not select the service, it has no rules, no rule
  matches, ``rules[i]`` matches, or ``rules[i]`` matches all but its ``when``
  conditions (given these headers).
* Traffic is explained for ``call`` only (publications and subscriptions have
  no route); a split is shown as weights, not drawn.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ..identity.spiffe_id import SpiffeId
from ..resilience.routing import select
from .authz import Decision
from .model import Policy, TrafficSpec


@attrs.frozen
class PolicyPart:
    """One authorization policy's part in a decision."""

    name: str
    action: str  # ALLOW, DENY, AUDIT or CUSTOM
    outcome: str  # a sentence: "does not select payment", "rules[0] matches", ...


@attrs.frozen
class Explanation:
    """A decision, each policy's part in it, and (for ``call``) the route taken."""

    decision: Decision
    parts: tuple[PolicyPart, ...]
    route: str | None  # "route 'canary' (routes[0])", "the service's settings", None
    traffic: TrafficSpec | None

    def lines(self) -> list[str]:
        """The explanation as text, one line each (``zmesh policy explain`` prints them)."""
        d = self.decision
        out = decision_lines(d)[:2]
        out.append("authorization policies, in document order:")
        if not self.parts:
            out.append("  (none: every operation is allowed)")
        for part in self.parts:
            out.append(f"  {part.action:<6} {part.name}: {part.outcome}")
        out.extend(decision_lines(d)[2:])  # the audits, after the policies that made them
        if self.traffic is not None:
            out.append(f"traffic: {self.route}")
            out.extend(f"  {line}" for line in traffic_lines(self.traffic))
        return out


def decision_lines(d: Decision) -> list[str]:
    """A decision as ``zmesh policy decide`` prints it: the verdict, why, and the audits."""
    lines = [f"{'ALLOWED' if d.allowed else 'DENIED'} ({d.action}"
             f"{': ' + d.policy if d.policy else ''})", f"  {d.reason}"]  # fmt: skip
    if d.audited:
        lines.append(f"  audited by: {', '.join(d.audited)}")
    return lines


def explain(
    policy: Policy,
    principal: SpiffeId | None,
    action: str,
    service: str,
    resource: str,
    headers: Mapping[str, str] | None = None,
) -> Explanation:
    """Explain ``principal`` doing ``action`` on ``service``'s ``resource`` (topic or method)."""
    headers = dict(headers or {})
    authorizer = policy.authorizer()
    decision = authorizer.check(principal, action, service, resource, headers)
    c = authorizer.compiled
    selected = c.selected(service)
    matched = c.match(principal, action, service, resource)
    parts = []
    for pi, doc in enumerate(c.policies):
        bits = [b for b, owner in enumerate(c.rule_policy) if owner == pi]
        if not bits:
            parts.append(PolicyPart(doc.name, doc.action, "has no rules: matches nothing"))
            continue
        if not selected & (1 << bits[0]):
            parts.append(PolicyPart(doc.name, doc.action, f"does not select {service}"))
            continue
        hits = [b for b in bits if matched & (1 << b)]
        holding = [b for b in hits if c.holds(b, headers)]
        if holding:
            outcome = f"rules[{c.rule_pos[holding[0]]}] matches"
        elif hits:
            outcome = (
                f"rules[{c.rule_pos[hits[0]]}] matches but its when conditions do not hold"
                " (for these headers)"
            )
        else:
            outcome = "no rule matches"
        parts.append(PolicyPart(doc.name, doc.action, outcome))
    route, traffic = None, None
    if action == "call":
        spec = policy.traffic_for(service)
        traffic = select(spec, resource, headers)
        route = "the service's settings" + ("" if spec.routes else " (no routes)")
        for i, r in enumerate(spec.routes):
            if r.traffic is traffic:
                route = f"route {r.name or i!r} (routes[{i}])"
                break
    return Explanation(decision, tuple(parts), route, traffic)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def traffic_lines(t: TrafficSpec) -> list[str]:
    """The settings a request gets, one per line, in the policy's words."""
    r = t.retries
    lines = [f"timeout: {_duration(t.timeout)}"]
    retry = (
        f"retries: {r.attempts} attempts, per try {_duration(r.per_try_timeout)}, on "
        f"{', '.join(r.retry_on) or 'nothing'}, backoff {_duration(r.backoff.base_interval)}"
        f"..{_duration(r.backoff.max_interval)}"
    )
    if r.idempotent_methods:
        retry += f", idempotent {', '.join(r.idempotent_methods)}"
    lines.append(retry)
    if t.hedging is not None:
        lines.append(
            f"hedging: up to {t.hedging.max_attempts} attempts, {_duration(t.hedging.delay)} apart"
        )
    if t.split:
        total = sum(d.weight for d in t.split) or 1
        shares = ", ".join(f"{d.subset} {100 * d.weight / total:g}%" for d in t.split)
        lines.append(f"split: {shares}")
    lines.append(f"load balancer: {t.load_balancer}")
    o = t.outlier_detection
    if o is not None:
        lines.append(
            f"outlier detection: {o.consecutive_errors} consecutive errors eject for "
            f"{_duration(o.base_ejection_time)}, at most {o.max_ejection_percent:g}% ejected"
        )
    if t.faults is not None:
        if t.faults.delay is not None:
            d = t.faults.delay
            lines.append(f"fault: delay {_duration(d.fixed_delay)} for {d.percentage:g}%")
        if t.faults.abort is not None:
            a = t.faults.abort
            lines.append(
                f"fault: abort with {a.status.name.lower().replace('_', '-')} for {a.percentage:g}%"
            )
    if t.mirror is not None:
        m = t.mirror
        to = m.service + (f" ({m.subset})" if m.subset else "")
        lines.append(f"mirror: {m.percentage:g}% to {to}")
    return lines

"""Authorization: Istio's ALLOW / DENY / AUDIT / CUSTOM semantics, applied to messages.

Rules this module keeps:

* Pure: no sockets, no clock. Sockets ask :meth:`Authorizer.check` (publish,
  call) and :meth:`Authorizer.allowed_subscription` (subscribe); the answer
  depends only on the compiled policy, the request and the CUSTOM providers.
* Evaluation order, as in Istio:

  ======  ========================================  ==============================
  step    when                                      outcome
  ======  ========================================  ==============================
  1       a matching CUSTOM policy's provider says  denied (action ``CUSTOM``)
          no, raises, or is not registered
  2       any DENY policy matches                   denied (action ``DENY``)
  3       ALLOW policies select the service and     allowed (action ``ALLOW``)
          one matches
  4       ALLOW policies select the service and     denied (action ``ALLOW``,
          none matches                              policy ``""``)
  5       no ALLOW policy selects the service       allowed (action ``default``)
  ======  ========================================  ==============================

  AUDIT policies never change the outcome: their names are listed in
  ``Decision.audited`` and logged on the ``zmeshlib.authz`` logger.
* A policy matches when one of its rules matches; a rule matches when its
  ``from``, ``to`` and every ``when`` condition do. A policy with no rules
  matches nothing (an ALLOW policy with no rules is Istio's "allow nothing").
* An anonymous peer (principal None) has no principal, namespace or trust
  domain: a positive field never matches it, a ``not_*`` field always does.
* Compiled once per policy version, never per message: every rule is one
  bit; each field of every rule goes into a :class:`PatternIndex` that maps
  a value to the mask of rules it satisfies, so a decision is a handful of
  dictionary probes and big-integer ANDs, whatever the number of rules.
* Decisions are cached per (principal, action, service, resource), bounded.
  When the outcome may depend on headers (a ``when`` condition could change
  it) or on a CUSTOM provider, what is cached is the *plan*: the few rules
  left to test against each message's headers.

Subscriptions are prefixes, so ``allowed_subscription`` answers a different
question: which prefixes may be applied at the publisher such that *every*
topic they deliver is allowed? It narrows the request to the ALLOW
patterns, drops every candidate that overlaps a DENY pattern (a prefix
subscription cannot exclude a sub-range), and treats ``when`` conditions
conservatively: an ALLOW rule with ``when`` never grants a subscription, a
DENY rule with ``when`` always blocks one (headers are unknown at subscribe
time).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from .._exceptions import MeshError
from ..identity.spiffe_id import SpiffeId
from ._patterns import EXACT, Pattern, PatternIndex, parse_pattern
from .model import AuthorizationPolicy, Condition, istio_form

log = logging.getLogger("zmeshlib.authz")

ACTIONS = ("publish", "subscribe", "call")
_SOURCE_FIELDS = ("principals", "namespaces", "trust_domains")
_DEFAULT_CACHE_SIZE = 65536


@attrs.frozen
class Decision:
    """The outcome of one authorization check, with who decided and why."""

    allowed: bool
    policy: str = ""
    action: str = "default"
    reason: str = ""
    audited: tuple[str, ...] = ()


@attrs.frozen
class AuthzRequest:
    """What a CUSTOM provider is asked about; ``policy`` is the CUSTOM policy asking."""

    principal: SpiffeId | None
    action: str
    service: str
    resource: str
    headers: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    policy: str = ""


Provider = Callable[[AuthzRequest], bool]
_providers: dict[str, Provider] = {}
_providers_lock = threading.Lock()


def register_provider(name: str, fn: Provider) -> None:
    """Register the callable a CUSTOM policy names with ``provider: NAME`` (True = allow)."""
    if not callable(fn):
        raise MeshError(f"CUSTOM provider {name!r} must be callable, got {type(fn).__name__}")
    with _providers_lock:
        _providers[name] = fn


def unregister_provider(name: str) -> None:
    """Forget a provider; policies naming it then deny (fail-closed)."""
    with _providers_lock:
        _providers.pop(name, None)


def _bits(mask: int) -> Iterator[int]:
    """The set bits of ``mask``, lowest first (rules in document order)."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _first_bit(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


class _CompiledCondition:
    __slots__ = ("header", "not_values", "values")

    def __init__(self, condition: Condition) -> None:
        self.header = condition.header
        self.values = _patterns(condition.values)
        self.not_values = _patterns(condition.not_values)

    def holds(self, headers: Mapping[str, str]) -> bool:
        value = headers.get(self.header)
        if self.values is not None and (
            value is None or not any(p.matches(value) for p in self.values)
        ):
            return False
        return not (
            self.not_values is not None
            and value is not None
            and any(p.matches(value) for p in self.not_values)
        )


def _patterns(
    texts: Sequence[str] | None, *, suffix_allowed: bool = True
) -> tuple[Pattern, ...] | None:
    if texts is None:
        return None
    out = []
    for text in texts:
        pattern = parse_pattern(text, suffix_allowed=suffix_allowed)
        if isinstance(pattern, str):
            raise MeshError(f"invalid pattern in a policy built without validation: {pattern}")
        out.append(pattern)
    return tuple(out)


class CompiledPolicy:
    """The ``authorization`` section as bit-mask indexes (one bit per rule, document order)."""

    def __init__(self, policies: Sequence[AuthorizationPolicy]) -> None:
        self.policies = tuple(policies)
        self.rule_policy: list[int] = []
        self.rule_pos: list[int] = []
        self.conditions: list[tuple[_CompiledCondition, ...]] = []
        self.subscribe: list[tuple[Pattern, ...] | None] = []
        by_action = dict.fromkeys(("ALLOW", "DENY", "AUDIT", "CUSTOM"), 0)
        self.conditional = 0
        self.mesh_wide = 0
        self.by_service: dict[str, int] = {}
        self.allow_mesh_wide: list[int] = []
        self.allow_by_service: dict[str, list[int]] = {}
        positive: dict[str, list[tuple[Pattern, int]]] = {f: [] for f in _SOURCE_FIELDS}
        negative: dict[str, list[tuple[Pattern, int]]] = {f: [] for f in _SOURCE_FIELDS}
        self.unconstrained = dict.fromkeys(_SOURCE_FIELDS, 0)
        to_entries: dict[str, list[tuple[Pattern, int]]] = {a: [] for a in ACTIONS}
        self.to_any = 0
        self.subscribe_rules = 0

        for pi, policy in enumerate(self.policies):
            if policy.action == "ALLOW":
                if policy.selector is None:
                    self.allow_mesh_wide.append(pi)
                else:
                    for service in policy.selector:
                        self.allow_by_service.setdefault(service, []).append(pi)
            for ri, rule in enumerate(policy.rules):
                bit = 1 << len(self.rule_policy)
                self.rule_policy.append(pi)
                self.rule_pos.append(ri)
                by_action[policy.action] |= bit
                if policy.selector is None:
                    self.mesh_wide |= bit
                else:
                    for service in policy.selector:
                        self.by_service[service] = self.by_service.get(service, 0) | bit
                self.conditions.append(tuple(_CompiledCondition(c) for c in rule.when))
                if rule.when:
                    self.conditional |= bit
                source = rule.from_
                for field in _SOURCE_FIELDS:
                    pos = getattr(source, field) if source else None
                    if pos is None:
                        self.unconstrained[field] |= bit
                    else:
                        positive[field].extend((p, bit) for p in _patterns(pos) or ())
                    neg = getattr(source, f"not_{field}") if source else None
                    negative[field].extend((p, bit) for p in _patterns(neg) or ())
                if rule.to is None:
                    self.to_any |= bit
                    self.subscribe.append(None)
                    self.subscribe_rules |= bit
                    continue
                for action in ACTIONS:
                    topic = action != "call"
                    found = _patterns(rule.to.patterns_for(action), suffix_allowed=not topic)
                    to_entries[action].extend((p, bit) for p in found or ())
                    if action == "subscribe":
                        self.subscribe.append(found or ())
                        if found:
                            self.subscribe_rules |= bit

        self.all_rules = (1 << len(self.rule_policy)) - 1
        self.allow, self.deny = by_action["ALLOW"], by_action["DENY"]
        self.audit, self.custom = by_action["AUDIT"], by_action["CUSTOM"]
        self.positive = {f: PatternIndex(positive[f]) for f in _SOURCE_FIELDS}
        self.negative = {f: PatternIndex(negative[f]) for f in _SOURCE_FIELDS if negative[f]}
        self.to_index = {a: PatternIndex(to_entries[a]) for a in ACTIONS}
        self._from_cache: dict[SpiffeId | None, int] = {}
        self._lock = threading.Lock()

    # -- matching ---------------------------------------------------------------

    def selected(self, service: str) -> int:
        return self.mesh_wide | self.by_service.get(service, 0)

    def allow_policies(self, service: str) -> list[int]:
        """Indices of the ALLOW policies that select ``service`` (document order)."""
        return sorted(self.allow_mesh_wide + self.allow_by_service.get(service, []))

    def from_mask(self, principal: SpiffeId | None) -> int:
        """The rules whose ``from`` this principal satisfies (cached per principal)."""
        mask = self._from_cache.get(principal)
        if mask is not None:
            return mask
        if principal is None:
            values: tuple[str | None, ...] = (None, None, None)
        else:
            values = (istio_form(principal), principal.namespace, principal.trust_domain)
        mask = self.all_rules
        for field, value in zip(_SOURCE_FIELDS, values, strict=True):
            ok = self.unconstrained[field]
            if value is not None:
                ok |= self.positive[field].lookup(value)
                negative = self.negative.get(field)
                if negative is not None:
                    mask &= ~negative.lookup(value)
            mask &= ok
        with self._lock:
            if len(self._from_cache) >= _DEFAULT_CACHE_SIZE:
                self._from_cache.clear()
            self._from_cache[principal] = mask
        return mask

    def match(self, principal: SpiffeId | None, action: str, service: str, resource: str) -> int:
        """Rules that match the request on everything but ``when``."""
        to = self.to_any | self.to_index[action].lookup(resource)
        return self.selected(service) & to & self.from_mask(principal)

    def name(self, bit: int) -> str:
        return self.policies[self.rule_policy[bit]].name

    def where(self, bit: int) -> str:
        return f"{self.name(bit)!r} (rules[{self.rule_pos[bit]}])"

    def holds(self, bit: int, headers: Mapping[str, str]) -> bool:
        return all(c.holds(headers) for c in self.conditions[bit])

    def policy_names(self, mask: int) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.name(b) for b in _bits(mask)))


class _Plan:
    """What is left to decide per message once the header-free part is known."""

    __slots__ = (
        "allow",
        "allow_conditional",
        "audit",
        "audit_conditional",
        "custom",
        "decisions",
        "deny",
        "deny_conditional",
        "selecting",
    )

    def __init__(self, c: CompiledPolicy, matched: int, selecting: tuple[str, ...]) -> None:
        static, conditional = matched & ~c.conditional, matched & c.conditional
        self.audit = static & c.audit
        self.audit_conditional = conditional & c.audit
        self.custom = matched & c.custom
        self.deny = static & c.deny
        self.deny_conditional = conditional & c.deny
        self.allow = static & c.allow
        self.allow_conditional = conditional & c.allow
        self.selecting = selecting
        self.decisions: dict[tuple[str, int, int], Decision] = {}

    @property
    def header_free(self) -> bool:
        """Is the outcome, deciding policy included, the same whatever the headers?

        The deciding policy is the first matching one in document order, so a
        conditional rule *before* the first unconditional one still matters.
        """
        if self.custom or self.audit_conditional:
            return False
        if self.deny:
            return not self.deny_conditional & ((self.deny & -self.deny) - 1)
        if self.deny_conditional:
            return False
        if self.allow:
            return not self.allow_conditional & ((self.allow & -self.allow) - 1)
        return not self.allow_conditional


class Authorizer:
    """Answers "may this principal do this?" for one compiled policy version.

    Thread-safe: cache hits take no lock, misses take one briefly.
    """

    def __init__(
        self,
        compiled: CompiledPolicy,
        revision: str,
        *,
        providers: Mapping[str, Provider] | None = None,
        cache_size: int = _DEFAULT_CACHE_SIZE,
    ) -> None:
        self.compiled = compiled
        self._revision = revision
        self._providers = dict(providers or {})
        self._cache: dict[tuple[Any, ...], Decision | _Plan] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def policy_revision(self) -> str:
        return self._revision

    def check(
        self,
        principal: SpiffeId | None,
        action: str,
        service: str,
        resource: str,
        headers: Mapping[str, str] | None = None,
    ) -> Decision:
        """Decide one operation. ``resource`` is the topic (publish, subscribe) or method (call)."""
        key = (principal, action, service, resource)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._plan(key)
        if entry.__class__ is Decision:
            if entry.audited:
                self._log_audit(entry, key)
            return entry
        decision = self._decide(entry, key, headers or {})  # type: ignore[arg-type]
        if decision.audited:
            self._log_audit(decision, key)
        return decision

    def allowed_subscription(
        self, principal: SpiffeId | None, service: str, prefix: str
    ) -> tuple[str, ...]:
        """The prefixes to apply at the publisher for a request to subscribe to ``prefix``.

        Every topic the result delivers is allowed; ``()`` means denied.
        """
        c = self.compiled
        matched = c.selected(service) & c.from_mask(principal) & c.subscribe_rules
        allow: list[str] = [] if c.allow_policies(service) else [""]
        deny: list[str] = []
        custom: dict[int, list[str]] = {}
        audit: list[int] = []
        for bit in _bits(matched):
            topics = c.subscribe[bit]
            if topics is None:
                topics = (Pattern("any", ""),)
            literals = [p.literal for p in topics]
            if (1 << bit) & c.allow:
                if not (1 << bit) & c.conditional:
                    # an exact topic is granted as "topic NUL": that topic and no longer one
                    allow.extend(p.literal + "\0" if p.kind == EXACT else p.literal for p in topics)
            elif (1 << bit) & c.deny:
                deny.extend(literals)
            elif (1 << bit) & c.custom:
                custom.setdefault(c.rule_policy[bit], []).extend(literals)
            elif any(_overlap(t, prefix) for t in literals):
                audit.append(bit)
        candidates = {a if a.startswith(prefix) else prefix for a in allow if _overlap(a, prefix)}
        candidates = {q for q in candidates if not any(_overlap(q, d) for d in deny)}
        for pi, literals in custom.items():
            for q in sorted(candidates):
                if any(_overlap(q, t) for t in literals):
                    request = AuthzRequest(
                        principal, "subscribe", service, q, {}, c.policies[pi].name
                    )
                    if self._ask_provider(c.policies[pi], request) is not None:
                        candidates.discard(q)
        granted: list[str] = []
        for q in sorted(candidates, key=len):
            if not any(q.startswith(k) for k in granted):
                granted.append(q)
        result = tuple(sorted(granted))
        for name in dict.fromkeys(c.name(b) for b in audit):
            log.info(
                "AUDIT policy=%s principal=%s action=subscribe service=%s resource=%r granted=%r revision=%s",
                name, principal or "anonymous", service, prefix, result, self._revision,
            )  # fmt: skip
        return result

    # -- internals ------------------------------------------------------------------

    def _plan(self, key: tuple[Any, ...]) -> Decision | _Plan:
        principal, action, service, resource = key
        if action not in ACTIONS:
            raise MeshError(
                f"unknown authorization action {action!r}: expected one of {', '.join(ACTIONS)}"
            )
        c = self.compiled
        selecting = tuple(c.policies[i].name for i in c.allow_policies(service))
        plan = _Plan(c, c.match(principal, action, service, resource), selecting)
        entry: Decision | _Plan = self._decide(plan, key, {}) if plan.header_free else plan
        with self._lock:
            if len(self._cache) >= self._cache_size:
                # FIFO eviction: drop the oldest eighth in one go, amortising the lock.
                for old in list(self._cache)[: max(1, self._cache_size // 8)]:
                    del self._cache[old]
            self._cache[key] = entry
        return entry

    def _decide(self, plan: _Plan, key: tuple[Any, ...], headers: Mapping[str, str]) -> Decision:
        """Evaluate a plan against one message's headers (and its CUSTOM providers)."""
        c = self.compiled
        audit = plan.audit | _holding(c, plan.audit_conditional, headers)
        seen: set[int] = set()
        for bit in _bits(plan.custom):
            pi = c.rule_policy[bit]
            if pi in seen or not c.holds(bit, headers):
                continue
            seen.add(pi)
            policy = c.policies[pi]
            principal, action, service, resource = key
            request = AuthzRequest(principal, action, service, resource, headers, policy.name)
            refusal = self._ask_provider(policy, request)
            if refusal is not None:
                reason = (
                    f"{_subject(key)} may not {_what(key)}: CUSTOM policy {policy.name!r} {refusal}"
                )
                return Decision(False, policy.name, "CUSTOM", reason, c.policy_names(audit))
        deny = plan.deny | _holding(c, plan.deny_conditional, headers)
        if deny:
            outcome = ("DENY", _first_bit(deny), audit)
        elif not plan.selecting:
            outcome = ("default", -1, audit)
        else:
            allow = plan.allow | _holding(c, plan.allow_conditional, headers)
            outcome = ("ALLOW", _first_bit(allow) if allow else -1, audit)
        decision = plan.decisions.get(outcome)
        if decision is None:
            decision = plan.decisions[outcome] = self._explain(plan, key, *outcome)
        return decision

    def _explain(
        self, plan: _Plan, key: tuple[Any, ...], action: str, bit: int, audit: int
    ) -> Decision:
        """The Decision for an outcome, with its one-sentence reason (built once per plan and outcome)."""
        c = self.compiled
        audited = c.policy_names(audit)
        subject, what = _subject(key), _what(key)
        if action == "DENY":
            reason = f"{subject} may not {what}: DENY policy {c.where(bit)} matches"
            return Decision(False, c.name(bit), "DENY", reason, audited)
        if action == "default":
            reason = f"{subject} may {what}: no ALLOW policy selects this service"
            return Decision(True, "", "default", reason, audited)
        if bit >= 0:
            reason = f"{subject} may {what}: ALLOW policy {c.where(bit)} matches"
            return Decision(True, c.name(bit), "ALLOW", reason, audited)
        names = ", ".join(repr(n) for n in plan.selecting[:3])
        more = f" and {len(plan.selecting) - 3} more" if len(plan.selecting) > 3 else ""
        reason = (
            f"{subject} may not {what}: ALLOW policies select this service ({names}{more}) "
            "and none matches"
        )
        return Decision(False, "", "ALLOW", reason, audited)

    def _ask_provider(self, policy: AuthorizationPolicy, request: AuthzRequest) -> str | None:
        """None when the provider allows, else the end of a sentence saying why not (fail-closed)."""
        name = policy.provider or ""
        fn = self._providers.get(name) or _providers.get(name)
        if fn is None:
            return f"names provider {name!r}, which is not registered (denied: CUSTOM fails closed)"
        try:
            verdict = fn(request)
        except Exception as exc:
            log.exception("CUSTOM provider %r raised; denying", name)
            return f"denied: provider {name!r} raised {type(exc).__name__}: {exc}"
        if verdict is True:
            return None
        return f"denied: provider {name!r} said no"

    def _log_audit(self, decision: Decision, key: tuple[Any, ...]) -> None:
        principal, action, service, resource = key
        for name in decision.audited:
            log.info(
                "AUDIT policy=%s principal=%s action=%s service=%s resource=%r allowed=%s revision=%s",
                name, principal or "anonymous", action, service, resource, decision.allowed, self._revision,
            )  # fmt: skip


def _holding(c: CompiledPolicy, mask: int, headers: Mapping[str, str]) -> int:
    """The rules of ``mask`` whose ``when`` conditions hold for these headers."""
    out = 0
    for bit in _bits(mask):
        if c.holds(bit, headers):
            out |= 1 << bit
    return out


def _subject(key: tuple[Any, ...]) -> str:
    return str(key[0]) if key[0] is not None else "an anonymous peer"


def _what(key: tuple[Any, ...]) -> str:
    return f"{key[1]} {key[3]!r} on service {key[2]!r}"


def _overlap(a: str, b: str) -> bool:
    """Do the topic ranges of prefixes ``a`` and ``b`` intersect?"""
    return a.startswith(b) or b.startswith(a)

"""Authorization decisions, table-driven: one mesh (orders, payment, inventory, a rogue service)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from zmeshlib._exceptions import MeshError
from zmeshlib.identity.spiffe_id import SpiffeId
from zmeshlib.policy import AuthzRequest, Policy, register_provider, unregister_provider

MESH = {
    "trust_domains": ["example.org", "partner.io"],
    "authorization": [
        {
            "name": "deny-rogue",
            "action": "DENY",
            "rules": [{"from": {"namespaces": ["rogue"]}}],
        },
        {
            "name": "deny-partner-writes",
            "action": "DENY",
            "rules": [{"from": {"trust_domains": ["partner.io"]}, "to": {"publish": ["*"]}}],
        },
        {
            "name": "deny-internal-topics",
            "action": "DENY",
            "selector": {"services": ["orders"]},
            "rules": [
                {
                    "from": {"not_principals": ["spiffe://example.org/ns/shop/sa/orders"]},
                    "to": {"subscribe": ["orders.internal.*"]},
                }
            ],
        },
        {
            "name": "audit-refunds",
            "action": "AUDIT",
            "selector": {"services": ["payment"]},
            "rules": [{"to": {"call": ["refund*"]}}],
        },
        {
            "name": "audit-everything-anonymous",
            "action": "AUDIT",
            "rules": [{"from": {"not_principals": ["*"]}}],
        },
        {
            "name": "orders-allow",
            "selector": {"services": ["orders"]},
            "action": "ALLOW",
            "rules": [
                {
                    "from": {"principals": ["example.org/ns/shop/sa/orders"]},
                    "to": {"publish": ["orders.*"]},
                },
                {
                    "from": {"namespaces": ["shop", "ops*"]},
                    "to": {"subscribe": ["orders.*"]},
                },
                {
                    "from": {"principals": ["*"], "not_principals": ["*/sa/intern"]},
                    "to": {"subscribe": ["orders.public.*"]},
                },
                {"from": {"not_namespaces": ["shop"]}, "to": {"publish": ["orders.anon"]}},
            ],
        },
        {
            "name": "payment-allow",
            "selector": {"services": ["payment"]},
            "rules": [
                {
                    "from": {"principals": ["spiffe://example.org/ns/shop/*"]},
                    "to": {"call": ["charge", "status", "refund*"]},
                },
                {
                    "from": {"principals": ["example.org/ns/shop/sa/payment"]},
                    "to": {"publish": ["payments.*"]},
                    "when": [{"key": "header:region", "values": ["eu", "ch*"]}],
                },
                {
                    "from": {"principals": ["*/sa/auditor"], "trust_domains": ["example.org"]},
                    "to": {"call": ["*status"]},
                },
                {
                    "from": {"namespaces": ["ops"]},
                    "to": {"call": ["charge"]},
                    "when": [{"key": "header:mode", "not_values": ["live"]}],
                },
            ],
        },
        {
            "name": "inventory-check",
            "action": "CUSTOM",
            "provider": "stock-check",
            "selector": {"services": ["inventory"]},
            "rules": [{"to": {"call": ["reserve"]}}],
        },
        {
            "name": "inventory-allow",
            "selector": {"services": ["inventory"]},
            "rules": [{"from": {"not_namespaces": ["rogue"]}, "to": {"call": ["*"]}}],
        },
        {"name": "locked-allow-nothing", "selector": {"services": ["locked"]}},
    ],
}

SHOP_ORDERS = "example.org/ns/shop/sa/orders"
SHOP_PAYMENT = "example.org/ns/shop/sa/payment"
SHOP_WEB = "example.org/ns/shop/sa/web"
SHOP_INTERN = "example.org/ns/shop/sa/intern"
OPS = "example.org/ns/ops/sa/tool"
OPS_EU = "example.org/ns/ops-eu/sa/tool"
OPSX = "example.org/ns/xops/sa/tool"
ROGUE = "example.org/ns/rogue/sa/orders"
AUDITOR = "example.org/ns/finance/sa/auditor"
PARTNER_AUDITOR = "partner.io/ns/finance/sa/auditor"
PARTNER = "partner.io/ns/shop/sa/orders"
NO_NS = "example.org/batch/nightly"
ANON = None

# (principal, action, service, resource, headers, allowed, action, policy, audited)
CASES = [
    # orders: publish only by the orders workload, on orders.*
    (SHOP_ORDERS, "publish", "orders", "orders.created", None, True, "ALLOW", "orders-allow", ()),
    (SHOP_ORDERS, "publish", "orders", "orders.", None, True, "ALLOW", "orders-allow", ()),
    (SHOP_ORDERS, "publish", "orders", "orders", None, False, "ALLOW", "", ()),
    (SHOP_ORDERS, "publish", "orders", "ordersX", None, False, "ALLOW", "", ()),
    (SHOP_ORDERS, "publish", "orders", "payments.x", None, False, "ALLOW", "", ()),
    (SHOP_WEB, "publish", "orders", "orders.created", None, False, "ALLOW", "", ()),
    (
        "spiffe://" + SHOP_ORDERS,
        "publish",
        "orders",
        "orders.x",
        None,
        True,
        "ALLOW",
        "orders-allow",
        (),
    ),
    (SHOP_ORDERS + "-v2", "publish", "orders", "orders.x", None, False, "ALLOW", "", ()),
    # orders: subscribe by namespace (exact and prefix), derived from the SPIFFE ID
    (SHOP_WEB, "subscribe", "orders", "orders.created", None, True, "ALLOW", "orders-allow", ()),
    (OPS, "subscribe", "orders", "orders.created", None, True, "ALLOW", "orders-allow", ()),
    (OPS_EU, "subscribe", "orders", "orders.created", None, True, "ALLOW", "orders-allow", ()),
    (OPSX, "subscribe", "orders", "orders.created", None, False, "ALLOW", "", ()),
    (NO_NS, "subscribe", "orders", "orders.created", None, False, "ALLOW", "", ()),
    # orders.public.* for any authenticated principal except interns
    (NO_NS, "subscribe", "orders", "orders.public.menu", None, True, "ALLOW", "orders-allow", ()),
    (OPSX, "subscribe", "orders", "orders.public.menu", None, True, "ALLOW", "orders-allow", ()),
    (
        SHOP_INTERN,
        "subscribe",
        "orders",
        "orders.public.menu",
        None,
        True,
        "ALLOW",
        "orders-allow",
        (),
    ),
    (
        "example.org/ns/x/sa/intern",
        "subscribe",
        "orders",
        "orders.public.m",
        None,
        False,
        "ALLOW",
        "",
        (),
    ),
    (
        ANON,
        "subscribe",
        "orders",
        "orders.public.menu",
        None,
        False,
        "ALLOW",
        "",
        ("audit-everything-anonymous",),
    ),
    # not_namespaces matches the anonymous peer and peers without a namespace
    (
        ANON,
        "publish",
        "orders",
        "orders.anon",
        None,
        True,
        "ALLOW",
        "orders-allow",
        ("audit-everything-anonymous",),
    ),
    (NO_NS, "publish", "orders", "orders.anon", None, True, "ALLOW", "orders-allow", ()),
    (SHOP_WEB, "publish", "orders", "orders.anon", None, False, "ALLOW", "", ()),
    (OPS, "publish", "orders", "orders.anon", None, True, "ALLOW", "orders-allow", ()),
    # DENY wins over ALLOW
    (
        SHOP_WEB,
        "subscribe",
        "orders",
        "orders.internal.audit",
        None,
        False,
        "DENY",
        "deny-internal-topics",
        (),
    ),
    (
        SHOP_ORDERS,
        "subscribe",
        "orders",
        "orders.internal.audit",
        None,
        True,
        "ALLOW",
        "orders-allow",
        (),
    ),
    (
        ANON,
        "subscribe",
        "orders",
        "orders.internal.x",
        None,
        False,
        "DENY",
        "deny-internal-topics",
        ("audit-everything-anonymous",),
    ),
    (ROGUE, "publish", "orders", "orders.created", None, False, "DENY", "deny-rogue", ()),
    (ROGUE, "subscribe", "catalog", "anything", None, False, "DENY", "deny-rogue", ()),
    (ROGUE, "call", "payment", "status", None, False, "DENY", "deny-rogue", ()),
    ("example.org/ns/rogue", "call", "catalog", "x", None, False, "DENY", "deny-rogue", ()),
    ("example.org/ns/rogueish/sa/a", "call", "catalog", "x", None, True, "default", "", ()),
    # trust domains
    (PARTNER, "publish", "catalog", "catalog.x", None, False, "DENY", "deny-partner-writes", ()),
    (PARTNER, "subscribe", "catalog", "catalog.x", None, True, "default", "", ()),
    (PARTNER, "subscribe", "orders", "orders.x", None, True, "ALLOW", "orders-allow", ()),
    (PARTNER_AUDITOR, "call", "payment", "status", None, False, "ALLOW", "", ()),
    (AUDITOR, "call", "payment", "status", None, True, "ALLOW", "payment-allow", ()),
    (AUDITOR, "call", "payment", "batch-status", None, True, "ALLOW", "payment-allow", ()),
    (AUDITOR, "call", "payment", "status-all", None, False, "ALLOW", "", ()),
    (AUDITOR, "call", "payment", "charge", None, False, "ALLOW", "", ()),
    # services without ALLOW policies: allowed by default, anonymous included
    (ANON, "call", "catalog", "list", None, True, "default", "", ("audit-everything-anonymous",)),
    (SHOP_WEB, "publish", "catalog", "catalog.x", None, True, "default", "", ()),
    # an ALLOW policy with no rules selects its service and allows nothing
    (SHOP_WEB, "call", "locked", "x", None, False, "ALLOW", "", ()),
    (ANON, "publish", "locked", "x", None, False, "ALLOW", "", ("audit-everything-anonymous",)),
    # payment: methods, prefix patterns, and AUDIT leaving the outcome unchanged
    (SHOP_WEB, "call", "payment", "charge", None, True, "ALLOW", "payment-allow", ()),
    (SHOP_WEB, "call", "payment", "charged", None, False, "ALLOW", "", ()),
    (
        SHOP_WEB,
        "call",
        "payment",
        "refund",
        None,
        True,
        "ALLOW",
        "payment-allow",
        ("audit-refunds",),
    ),
    (
        SHOP_WEB,
        "call",
        "payment",
        "refund-partial",
        None,
        True,
        "ALLOW",
        "payment-allow",
        ("audit-refunds",),
    ),
    (OPSX, "call", "payment", "refund", None, False, "ALLOW", "", ("audit-refunds",)),
    (ROGUE, "call", "payment", "refund", None, False, "DENY", "deny-rogue", ("audit-refunds",)),
    (SHOP_WEB, "subscribe", "payment", "payments.x", None, False, "ALLOW", "", ()),
    # payment: when conditions on headers
    (
        SHOP_PAYMENT,
        "publish",
        "payment",
        "payments.x",
        {"region": "eu"},
        True,
        "ALLOW",
        "payment-allow",
        (),
    ),
    (
        SHOP_PAYMENT,
        "publish",
        "payment",
        "payments.x",
        {"region": "ch-zh"},
        True,
        "ALLOW",
        "payment-allow",
        (),
    ),
    (SHOP_PAYMENT, "publish", "payment", "payments.x", {"region": "us"}, False, "ALLOW", "", ()),
    (SHOP_PAYMENT, "publish", "payment", "payments.x", {"Region": "eu"}, False, "ALLOW", "", ()),
    (SHOP_PAYMENT, "publish", "payment", "payments.x", None, False, "ALLOW", "", ()),
    (SHOP_WEB, "publish", "payment", "payments.x", {"region": "eu"}, False, "ALLOW", "", ()),
    (OPS, "call", "payment", "charge", {"mode": "test"}, True, "ALLOW", "payment-allow", ()),
    (OPS, "call", "payment", "charge", None, True, "ALLOW", "payment-allow", ()),
    (OPS, "call", "payment", "charge", {"mode": "live"}, False, "ALLOW", "", ()),
    # inventory: CUSTOM first, then DENY, then ALLOW
    (SHOP_WEB, "call", "inventory", "reserve", {"qty": "3"}, True, "ALLOW", "inventory-allow", ()),
    (
        SHOP_WEB,
        "call",
        "inventory",
        "reserve",
        {"qty": "30"},
        False,
        "CUSTOM",
        "inventory-check",
        (),
    ),
    (SHOP_WEB, "call", "inventory", "reserve", None, False, "CUSTOM", "inventory-check", ()),
    (SHOP_WEB, "call", "inventory", "count", {"qty": "30"}, True, "ALLOW", "inventory-allow", ()),
    (
        ANON,
        "call",
        "inventory",
        "count",
        None,
        True,
        "ALLOW",
        "inventory-allow",
        ("audit-everything-anonymous",),
    ),
    (ROGUE, "call", "inventory", "reserve", {"qty": "3"}, False, "DENY", "deny-rogue", ()),
    (ROGUE, "call", "inventory", "reserve", {"qty": "30"}, False, "CUSTOM", "inventory-check", ()),
]


def stock_check(request: AuthzRequest) -> bool:
    return int(request.headers.get("qty", "1000")) <= 10


@pytest.fixture
def stock_provider() -> Iterator[None]:
    register_provider("stock-check", stock_check)
    yield
    unregister_provider("stock-check")


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.from_dict(MESH)


def principal_of(text: str | None) -> SpiffeId | None:
    return None if text is None else SpiffeId.coerce(text)


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 50
    assert len({(c[0], c[1], c[2], c[3], str(c[4])) for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("principal", "op", "service", "resource", "headers", "allowed", "action", "name", "audited"),
    CASES,
    ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3]}-{c[4]}" for c in CASES],
)
def test_decision(
    policy: Policy,
    stock_provider: None,
    principal: str | None,
    op: str,
    service: str,
    resource: str,
    headers: dict[str, str] | None,
    allowed: bool,
    action: str,
    name: str,
    audited: tuple[str, ...],
) -> None:
    authorizer = policy.authorizer()
    for _ in range(2):  # the second answer comes from the decision cache
        decision = authorizer.check(principal_of(principal), op, service, resource, headers)
        assert (decision.allowed, decision.action, decision.policy, decision.audited) == (
            allowed,
            action,
            name,
            audited,
        ), decision.reason
        assert resource in decision.reason and service in decision.reason
        assert decision.reason.count(" may ") == 1


def test_audit_is_logged_and_changes_nothing(
    policy: Policy, caplog: pytest.LogCaptureFixture
) -> None:
    authorizer = policy.authorizer()
    with caplog.at_level(logging.INFO, logger="zmeshlib.authz"):
        first = authorizer.check(principal_of(SHOP_WEB), "call", "payment", "refund")
        second = authorizer.check(principal_of(SHOP_WEB), "call", "payment", "refund")
    assert first is second  # cached, and still audited every time
    records = [r.getMessage() for r in caplog.records if r.name == "zmeshlib.authz"]
    assert len(records) == 2
    assert all("AUDIT policy=audit-refunds" in r and "allowed=True" in r for r in records)
    without_audit = Policy.from_dict(
        {"authorization": [p for p in MESH["authorization"] if p.get("action") != "AUDIT"]}  # type: ignore[union-attr]
    )
    for principal, op, service, resource, headers, *_ in CASES:
        if service == "inventory":
            continue  # needs the provider; covered by the table
        a = policy.authorizer().check(principal_of(principal), op, service, resource, headers)
        b = without_audit.authorizer().check(
            principal_of(principal), op, service, resource, headers
        )
        assert (a.allowed, a.action, a.policy) == (b.allowed, b.action, b.policy)


def test_custom_provider_unregistered_fails_closed(policy: Policy) -> None:
    decision = policy.authorizer().check(
        principal_of(SHOP_WEB), "call", "inventory", "reserve", {"qty": "1"}
    )
    assert not decision.allowed and decision.action == "CUSTOM"
    assert "'stock-check', which is not registered" in decision.reason


def test_custom_provider_given_to_the_authorizer(policy: Policy) -> None:
    seen: list[AuthzRequest] = []

    def provider(request: AuthzRequest) -> bool:
        seen.append(request)
        return True

    authorizer = policy.authorizer(providers={"stock-check": provider})
    assert authorizer is not policy.authorizer()
    assert authorizer.compiled is policy.authorizer().compiled
    for _ in range(3):  # a CUSTOM decision is never cached: the provider is asked every time
        assert authorizer.check(
            principal_of(SHOP_WEB), "call", "inventory", "reserve", {"qty": "99"}
        ).allowed
    assert len(seen) == 3
    assert seen[0] == AuthzRequest(
        principal_of(SHOP_WEB), "call", "inventory", "reserve", {"qty": "99"}, "inventory-check"
    )
    assert seen[0].headers == {"qty": "99"}


def test_custom_provider_that_raises_or_returns_non_bool_denies(policy: Policy) -> None:
    def broken(request: AuthzRequest) -> bool:
        raise RuntimeError("backend down")

    decision = policy.authorizer(providers={"stock-check": broken}).check(
        principal_of(SHOP_WEB), "call", "inventory", "reserve"
    )
    assert not decision.allowed and "raised RuntimeError: backend down" in decision.reason
    maybe = policy.authorizer(providers={"stock-check": lambda r: "yes"})  # type: ignore[arg-type, return-value]
    assert not maybe.check(principal_of(SHOP_WEB), "call", "inventory", "reserve").allowed


def test_authorizer_is_compiled_once_and_shared(policy: Policy) -> None:
    assert policy.authorizer() is policy.authorizer()
    assert policy.authorizer().policy_revision == policy.revision


def test_unknown_action_is_an_error(policy: Policy) -> None:
    with pytest.raises(MeshError, match="unknown authorization action 'read'"):
        policy.authorizer().check(None, "read", "orders", "x")


def test_register_provider_requires_a_callable() -> None:
    with pytest.raises(MeshError, match="must be callable"):
        register_provider("x", "not callable")  # type: ignore[arg-type]


def test_cache_is_bounded(policy: Policy) -> None:
    from zmeshlib.policy.authz import Authorizer

    authorizer = Authorizer(policy.authorizer().compiled, policy.revision, cache_size=16)
    who = principal_of(SHOP_WEB)
    for i in range(100):
        assert authorizer.check(who, "subscribe", "orders", f"orders.{i}").allowed
    assert len(authorizer._cache) <= 16
    assert not authorizer.check(who, "subscribe", "orders", "orders.internal.0").allowed


# -- subscriptions: the part of a requested prefix that may be applied at the publisher ---------

SUBSCRIPTION_MESH = {
    "authorization": [
        {
            "name": "deny-secret",
            "action": "DENY",
            "selector": {"services": ["payment"]},
            "rules": [{"to": {"subscribe": ["payments.secret*"]}}],
        },
        {
            "name": "deny-by-header",
            "action": "DENY",
            "selector": {"services": ["orders"]},
            "rules": [
                {
                    "to": {"subscribe": ["orders.us.*"]},
                    "when": [{"key": "header:x", "values": ["y"]}],
                }
            ],
        },
        {
            "name": "orders",
            "selector": {"services": ["orders"]},
            "rules": [
                {
                    "from": {"namespaces": ["shop"]},
                    "to": {"subscribe": ["orders.eu.*", "orders.us.*"]},
                },
                {"from": {"namespaces": ["ops"]}, "to": {"subscribe": ["*"]}},
                {
                    "from": {"namespaces": ["web"]},
                    "to": {"subscribe": ["orders.*"]},
                    "when": [{"key": "header:x", "values": ["y"]}],
                },
            ],
        },
        {
            "name": "payments",
            "selector": {"services": ["payment"]},
            "rules": [{"from": {"namespaces": ["shop"]}, "to": {"subscribe": ["payments.*"]}}],
        },
    ]
}


@pytest.mark.parametrize(
    ("principal", "service", "prefix", "expected"),
    [
        ("example.org/ns/shop/sa/a", "orders", "orders.", ("orders.eu.",)),
        ("example.org/ns/shop/sa/a", "orders", "orders.eu.x", ("orders.eu.x",)),
        ("example.org/ns/shop/sa/a", "orders", "orders.eu.", ("orders.eu.",)),
        ("example.org/ns/shop/sa/a", "orders", "", ("orders.eu.",)),
        ("example.org/ns/shop/sa/a", "orders", "orders.us.", ()),  # a DENY with `when` blocks
        ("example.org/ns/shop/sa/a", "orders", "orders.fr", ()),
        ("example.org/ns/ops/sa/a", "orders", "", ()),  # '*' minus orders.us.*: not expressible
        ("example.org/ns/ops/sa/a", "orders", "orders.eu", ("orders.eu",)),
        ("example.org/ns/ops/sa/a", "orders", "orders.u", ()),
        ("example.org/ns/ops/sa/a", "orders", "x", ("x",)),
        ("example.org/ns/web/sa/a", "orders", "orders.", ()),  # an ALLOW with `when` never grants
        (None, "orders", "orders.", ()),
        ("example.org/ns/shop/sa/a", "payment", "", ()),  # payments.* overlaps payments.secret*
        ("example.org/ns/shop/sa/a", "payment", "payments.", ()),
        ("example.org/ns/shop/sa/a", "payment", "payments.eu", ("payments.eu",)),
        ("example.org/ns/shop/sa/a", "payment", "payments.secret.x", ()),
        ("example.org/ns/shop/sa/a", "payment", "payments.s", ()),
        ("example.org/ns/shop/sa/a", "catalog", "", ("",)),  # no ALLOW policy: everything
        (None, "catalog", "cat.", ("cat.",)),
    ],
)
def test_allowed_subscription(
    principal: str | None, service: str, prefix: str, expected: tuple[str, ...]
) -> None:
    authorizer = Policy.from_dict(SUBSCRIPTION_MESH).authorizer()
    assert authorizer.allowed_subscription(principal_of(principal), service, prefix) == expected


def test_allowed_subscription_narrows_to_several_prefixes() -> None:
    policy = Policy.from_dict(
        {
            "authorization": [
                {
                    "name": "a",
                    "rules": [
                        {"to": {"subscribe": ["orders.eu.*", "orders.ch.*", "orders.eu.x*"]}}
                    ],
                }
            ]
        }
    )
    assert policy.authorizer().allowed_subscription(None, "orders", "orders.") == (
        "orders.ch.",
        "orders.eu.",
    )


def test_allowed_subscription_asks_custom_providers_per_prefix() -> None:
    asked: list[str] = []

    def provider(request: AuthzRequest) -> bool:
        asked.append(request.resource)
        assert request.action == "subscribe" and request.headers == {}
        return request.resource != "b."

    policy = Policy.from_dict(
        {
            "authorization": [
                {
                    "name": "c",
                    "action": "CUSTOM",
                    "provider": "p",
                    "rules": [{"to": {"subscribe": ["b*"]}}],
                },
                {"name": "a", "rules": [{"to": {"subscribe": ["a.*", "b.*"]}}]},
            ]
        }
    )
    authorizer = policy.authorizer(providers={"p": provider})
    assert authorizer.allowed_subscription(None, "s", "") == ("a.",)
    assert asked == ["b."]
    assert (
        Policy.from_dict(policy_doc_without_provider())
        .authorizer()
        .allowed_subscription(None, "s", "")
        == ()
    )


def policy_doc_without_provider() -> dict[str, object]:
    return {
        "authorization": [{"name": "c", "action": "CUSTOM", "provider": "nobody", "rules": [{}]}]
    }

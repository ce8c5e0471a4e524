"""SPIFFE IDs: a table of valid and invalid strings, each invalid one with the rule it breaks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmeshlib._exceptions import IdentityError
from zmeshlib.identity import SpiffeId
from zmeshlib.identity.spiffe_id import validate_trust_domain

VALID: list[tuple[str, str, str]] = [
    # (id, trust domain, path)
    ("spiffe://example.org", "example.org", ""),
    ("spiffe://example.org/ns/shop/sa/orders", "example.org", "/ns/shop/sa/orders"),
    ("spiffe://a/b", "a", "/b"),
    ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
    ("spiffe://my_domain-1.example/x", "my_domain-1.example", "/x"),
    ("spiffe://example.org/UPPER/case", "example.org", "/UPPER/case"),
    ("spiffe://example.org/a.b/c-d/e_f", "example.org", "/a.b/c-d/e_f"),
    ("spiffe://example.org/...", "example.org", "/..."),
    ("spiffe://example.org/.hidden", "example.org", "/.hidden"),
    ("spiffe://example.org/0/1/2", "example.org", "/0/1/2"),
    ("spiffe://" + "d" * 255 + "/x", "d" * 255, "/x"),
    (
        "spiffe://example.org/" + "p" * (2048 - len("spiffe://example.org/")),
        "example.org",
        "/" + "p" * 2027,
    ),
]

INVALID: list[tuple[str, str]] = [
    # (id, rule)
    ("", "empty"),
    ("example.org/ns/a", "scheme"),
    ("http://example.org/a", "scheme"),
    ("spiffe:/example.org/a", "scheme"),
    ("spiffe:example.org", "scheme"),
    ("SPIFFE://example.org/a", "scheme"),
    ("Spiffe://example.org/a", "scheme"),
    (" spiffe://example.org/a", "scheme"),
    ("spiffe://", "trust-domain-missing"),
    ("spiffe:///path", "trust-domain-missing"),
    ("spiffe://" + "d" * 256, "trust-domain-too-long"),
    ("spiffe://example.org/" + "p" * 2028, "too-long"),
    ("spiffe://user@example.org/a", "userinfo"),
    ("spiffe://user:pw@example.org/a", "userinfo"),
    ("spiffe://example.org:8080/a", "port"),
    ("spiffe://example.org:/a", "port"),
    ("spiffe://Example.org/a", "trust-domain-charset"),
    ("spiffe://EXAMPLE.ORG", "trust-domain-charset"),
    ("spiffe://exa mple.org/a", "trust-domain-charset"),
    ("spiffe://exämple.org/a", "trust-domain-charset"),
    ("spiffe://example.org\n", "trust-domain-charset"),
    ("spiffe://example!.org/a", "trust-domain-charset"),
    ("spiffe://example.org?x=1", "query"),
    ("spiffe://example.org/a?b", "query"),
    ("spiffe://example.org#frag", "fragment"),
    ("spiffe://example.org/a#b", "fragment"),
    ("spiffe://example.org/a%20b", "percent-encoding"),
    ("spiffe://example%2eorg/a", "percent-encoding"),
    ("spiffe://example.org/", "path-trailing-slash"),
    ("spiffe://example.org/a/", "path-trailing-slash"),
    ("spiffe://example.org//a", "path-empty-segment"),
    ("spiffe://example.org/a//b", "path-empty-segment"),
    ("spiffe://example.org/.", "path-dot-segment"),
    ("spiffe://example.org/..", "path-dot-segment"),
    ("spiffe://example.org/a/./b", "path-dot-segment"),
    ("spiffe://example.org/a/../b", "path-dot-segment"),
    ("spiffe://example.org/a b", "path-charset"),
    ("spiffe://example.org/a\n", "path-charset"),
    ("spiffe://example.org/a:b", "path-charset"),
    ("spiffe://example.org/a@b", "path-charset"),
    ("spiffe://example.org/caf\u00e9", "path-charset"),
    ("spiffe://example.org/a+b", "path-charset"),
    ("spiffe://example.org/a*", "path-charset"),
    # text that is not valid UTF-8 (lone surrogates) or not printable fails like any other
    ("spiffe://example.org/a\ud800", "path-charset"),
    ("spiffe://\udcffexample.org/a", "trust-domain-charset"),
    ("\ud800spiffe://example.org/a", "scheme"),
    ("spiffe://example.org/a\x00b", "path-charset"),
    ("spiffe://example.org/" + "\ud800" * 700, "too-long"),
]


def test_table_is_large_enough():
    assert len(VALID) + len(INVALID) >= 40


@pytest.mark.parametrize(("value", "trust_domain", "path"), VALID, ids=[v[:40] for v, *_ in VALID])
def test_valid(value, trust_domain, path):
    sid = SpiffeId.parse(value)
    assert (sid.trust_domain, sid.path) == (trust_domain, path)
    assert str(sid) == value
    assert SpiffeId.from_parts(trust_domain, path) == sid


@pytest.mark.parametrize(("value", "rule"), INVALID, ids=[f"{r}:{v[:30]!r}" for v, r in INVALID])
def test_invalid(value, rule):
    with pytest.raises(IdentityError) as exc:
        SpiffeId.parse(value)
    assert exc.value.rule == rule
    assert f"[{rule}]" in str(exc.value)


@pytest.mark.parametrize(
    "attempt",
    [
        lambda: SpiffeId.parse(b"spiffe://example.org/a"),  # type: ignore[arg-type]
        lambda: SpiffeId.coerce(42),  # type: ignore[arg-type]
        lambda: SpiffeId.from_parts(b"example.org", "/a"),  # type: ignore[arg-type]
        lambda: SpiffeId.from_parts("example.org", 7),  # type: ignore[arg-type]
        lambda: validate_trust_domain(None),  # type: ignore[arg-type]
    ],
)
def test_not_a_string(attempt):
    with pytest.raises(IdentityError) as exc:
        attempt()
    assert exc.value.rule == "type"


def test_coerce_accepts_istio_form_and_instances():
    sid = SpiffeId.parse("spiffe://example.org/ns/shop/sa/orders")
    assert SpiffeId.coerce("example.org/ns/shop/sa/orders") == sid
    assert SpiffeId.coerce(str(sid)) == sid
    assert SpiffeId.coerce(sid) is sid
    with pytest.raises(IdentityError) as exc:
        SpiffeId.coerce("https://example.org/ns/shop")
    assert exc.value.rule == "scheme"


def test_istio_accessors():
    sid = SpiffeId.parse("spiffe://example.org/ns/shop/sa/orders")
    assert (sid.namespace, sid.service_account) == ("shop", "orders")
    assert sid.segments == ("ns", "shop", "sa", "orders")
    other = SpiffeId.parse("spiffe://example.org/workload")
    assert (other.namespace, other.service_account) == (None, None)
    assert sid.member_of("example.org") and not sid.member_of("other.org")


def test_from_parts_adds_the_leading_slash_and_validates():
    assert str(SpiffeId.from_parts("example.org", "ns/a")) == "spiffe://example.org/ns/a"
    with pytest.raises(IdentityError) as exc:
        SpiffeId.from_parts("example.org", "a//b")
    assert exc.value.rule == "path-empty-segment"


_TD = st.from_regex(r"[a-z0-9._-]{1,40}", fullmatch=True)
_SEGMENT = st.from_regex(r"[a-zA-Z0-9._-]{1,12}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)


@given(_TD, st.lists(_SEGMENT, max_size=6))
def test_round_trip_of_generated_ids(trust_domain, segments):
    value = "spiffe://" + trust_domain + "".join("/" + s for s in segments)
    sid = SpiffeId.parse(value)
    assert str(sid) == value
    assert sid.segments == tuple(segments)

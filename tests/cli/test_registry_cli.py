"""``zmesh registry list`` in a subprocess, against a real dir:// registry that real meshes publish to."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import zmeshlib
from zmeshlib.identity.card import Card
from zmeshlib.registry import DirStore

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
PAYMENT = "spiffe://example.org/ns/shop/sa/payment"
OLD = "spiffe://example.org/ns/shop/sa/old"
EARLY = "spiffe://example.org/ns/shop/sa/early"
ROGUE = "spiffe://example.org/ns/rogue/sa/mallory"
SRC = Path(zmeshlib.__file__).resolve().parents[1]


def zmesh(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "zmeshlib.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def sign(svid: Any, **kw: Any) -> Card:
    """``Card.sign`` with a fresh CURVE key pair (the secret too when it proves possession)."""
    public, secret = zmq.curve_keypair()
    if "curve_secret" in inspect.signature(Card.sign).parameters:
        kw["curve_secret"] = secret
    return Card.sign(svid, public, **kw)


class Fleet:
    """A registry directory with what a real one gathers: live workloads and debris."""

    def __init__(self, tmp: Path) -> None:
        self.cards = tmp / "cards"
        self.url = f"dir://{self.cards}"
        self.ca = zmeshlib.DevCA.create("example.org")
        self.ca.save(tmp / "ca")
        self.root = str(tmp / "ca" / "root.pem")
        self.other_ca = zmeshlib.DevCA.create("example.org")  # same domain, not trusted
        self.other_ca.save(tmp / "other")
        self.other_root = str(tmp / "other" / "root.pem")
        self.meshes = [
            zmeshlib.Mesh(identity=self.ca.issue(ORDERS), registry=self.url),
            zmeshlib.Mesh(identity=self.ca.issue(PAYMENT), registry=self.url),
            zmeshlib.Mesh(identity=self.other_ca.issue(ROGUE), registry=self.url),
        ]
        orders, payment, rogue = self.meshes
        orders.socket(zmq.PUB).bind("tcp://127.0.0.1:0", service="orders")
        orders.socket(zmq.REP).bind("tcp://127.0.0.1:0", service="orders-admin")
        payment.socket(zmq.REP).bind("tcp://127.0.0.1:0", service="payment")
        rogue.socket(zmq.PUB).bind("tcp://127.0.0.1:0", service="orders")
        self.orders, self.payment, self.rogue = (m.card for m in self.meshes)
        now = time.time()
        store = DirStore(self.cards)
        # a card that lived 2 ms (its CA is as young as this test: nothing older can chain)
        self.expired = sign(
            self.ca.issue_svid(OLD), now=now, ttl=0.002, labels={"service": "legacy"}
        )
        deadline = now + 5
        while time.time() <= self.expired.not_after:  # the wall clock passes it at once
            assert time.time() < deadline
        self.early = sign(self.ca.issue_svid(EARLY), now=now + 600, labels={"service": "beta"})
        self.misfiled = sign(self.ca.issue_svid(PAYMENT))
        for card in (self.expired, self.early):
            store.put(card.key_id, card.to_bytes())
        store.put("f" * 64, self.misfiled.to_bytes())
        (self.cards / "junk.card").write_bytes(b"not a card")
        os.mkfifo(self.cards / "fifo.card")

    def close(self) -> None:
        for mesh in self.meshes:
            mesh.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        yield fleet  # the meshes stay up (their cards published) until every test ran
    finally:
        fleet.close()


def listing(fleet: Fleet, *extra: str) -> dict[str, Any]:
    done = zmesh("registry", "list", "--registry", fleet.url, *extra, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_json_lists_every_card_with_its_state_and_every_rejected_entry(fleet):
    doc = listing(fleet, "--trust-bundle", fleet.root)
    assert doc["verified"] is True and "warning" not in doc
    cards = {c["key_id"]: c for c in doc["cards"]}
    assert {k: c["state"] for k, c in cards.items()} == {
        fleet.orders.key_id: "valid",
        fleet.payment.key_id: "valid",
        fleet.expired.key_id: "expired",
        fleet.early.key_id: "not yet valid",
    }
    orders = cards[fleet.orders.key_id]
    assert orders["spiffe_id"] == ORDERS
    assert orders["services"] == ["orders", "orders-admin"]
    assert [(e["kind"], e["service"]) for e in orders["endpoints"]] == [
        ("PUB", "orders"),
        ("REP", "orders-admin"),
    ]
    assert [e["address"] for e in orders["endpoints"]] == [
        e.address for e in fleet.orders.endpoints
    ]
    assert orders["labels"] == dict(fleet.orders.labels)
    assert (orders["not_before"], orders["not_after"]) == (
        fleet.orders.not_before,
        fleet.orders.not_after,
    )
    assert orders["not_after_utc"].endswith("Z")
    rejected = {r["key_id"]: (r["rule"], r["claims"]) for r in doc["rejected"]}
    assert rejected == {
        fleet.rogue.key_id: ("untrusted", ROGUE),
        "f" * 64: ("card-wrong-key", PAYMENT),
        "junk": ("card-malformed", None),
        "fifo": ("not-a-file", None),
    }


def test_the_table_has_aligned_columns_and_the_same_content(fleet):
    done = zmesh("registry", "list", "--registry", fleet.url, "--trust-bundle", fleet.root)
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == "4 cards"
    header, rows = lines[1], lines[2:6]
    assert header.split() == [
        "STATE", "SPIFFE", "ID", "KEY", "SERVICES", "ENDPOINTS", "LABELS", "NOT", "BEFORE",
        "NOT", "AFTER",
    ]  # fmt: skip
    for column in ("SPIFFE ID", "KEY", "SERVICES", "NOT AFTER"):
        start = header.index(column)
        for row in rows:  # every cell starts where its column's title does
            assert row[start - 2 : start] == "  " and row[start] != " ", (column, row)
    by_key = {row.split()[1 if row.startswith(("valid", "expired")) else 3]: row for row in rows}
    orders = by_key[ORDERS]
    assert orders.startswith("valid ")
    assert fleet.orders.key_id[:16] in orders
    pub, rep = fleet.orders.endpoints
    assert f"{pub.address} (PUB orders), {rep.address} (REP orders-admin)" in orders
    assert "service=orders" in orders
    assert any(row.startswith("not yet valid ") and EARLY in row for row in rows)
    assert any(row.startswith("expired ") and OLD in row for row in rows)
    assert lines[6] == "4 rejected entries"
    assert lines[7].split() == ["KEY", "REASON", "CLAIMS"]
    assert sorted(line.split()[1] for line in lines[8:]) == [
        "card-malformed",
        "card-wrong-key",
        "not-a-file",
        "untrusted",
    ]


def test_without_a_trust_bundle_nothing_is_claimed_valid(fleet):
    done = zmesh("registry", "list", "--registry", fleet.url)
    assert done.returncode == 0
    assert done.stderr.startswith("warning: no --trust-bundle given")
    assert "valid " not in done.stdout.replace("unverified", "")
    doc = listing(fleet)
    assert doc["verified"] is False and doc["warning"].startswith("warning:")
    states = {c["key_id"]: c["state"] for c in doc["cards"]}
    # the untrusted card is listed too: without a bundle nothing tells it apart
    assert states == dict.fromkeys(
        [fleet.orders.key_id, fleet.payment.key_id, fleet.rogue.key_id, fleet.expired.key_id,
         fleet.early.key_id],
        "unverified",
    )  # fmt: skip
    assert {r["key_id"]: r["rule"] for r in doc["rejected"]} == {
        "f" * 64: "card-wrong-key",
        "junk": "card-malformed",
        "fifo": "not-a-file",
    }


def test_several_bundles_are_merged_per_trust_domain(fleet):
    doc = listing(fleet, "--trust-bundle", fleet.root, "--trust-bundle", fleet.other_root)
    states = {c["key_id"]: c["state"] for c in doc["cards"]}
    assert states[fleet.rogue.key_id] == "valid"  # its CA is now trusted too
    assert fleet.rogue.key_id not in {r["key_id"] for r in doc["rejected"]}


def test_trust_domain_names_the_bundles_domain(fleet):
    same = listing(fleet, "--trust-bundle", fleet.root, "--trust-domain", "example.org")
    assert same == listing(fleet, "--trust-bundle", fleet.root)
    other = listing(fleet, "--trust-bundle", fleet.root, "--trust-domain", "other.org")
    assert other["cards"] == []
    rules = {r["key_id"]: r["rule"] for r in other["rejected"]}
    assert rules[fleet.orders.key_id] == "no-bundle-for-trust-domain"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--registry", "dir:///nonexistent/zmesh-cards"], "no such registry directory"),
        (["--registry", "memory://"], "lives inside one process"),
        (["--registry", "redis://127.0.0.1:1/0"], "cannot reach Redis at redis://127.0.0.1:1/0"),
        (["--registry", "ftp://x"], "unsupported registry URL"),
        (["--trust-domain", "example.org"], "--trust-domain names the domain of --trust-bundle"),
        (["--trust-bundle", "/nonexistent/root.pem"], "cannot read trust bundle"),
    ],
)
def test_bad_arguments_are_one_line_errors(fleet, args, message):
    if "--registry" not in args:
        args = ["--registry", fleet.url, *args]
    done = zmesh("registry", "list", *args)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("zmesh registry: error: ")
    assert message in done.stderr and done.stderr.count("\n") == 1
    assert not Path("/nonexistent/zmesh-cards").exists()


@pytest.mark.parametrize(
    "content",
    [b"not PEM at all", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"],
)
def test_a_bundle_file_that_is_no_certificate_is_an_error(fleet, tmp_path, content):
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    done = zmesh("registry", "list", "--registry", fleet.url, "--trust-bundle", str(bad))
    assert done.returncode == 1 and "holds no PEM certificate" in done.stderr


def test_a_leaf_certificate_is_no_trust_bundle(fleet, tmp_path):
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(fleet.ca.issue_svid(ORDERS).certs_pem())
    done = zmesh(
        "registry", "list", "--registry", fleet.url, "--trust-bundle", str(leaf),
        "--trust-domain", "example.org",
    )  # fmt: skip
    assert done.returncode == 1 and "unusable trust bundle" in done.stderr


def test_show_prints_one_workloads_entries_in_full(fleet):
    done = zmesh("registry", "show", ORDERS, "--registry", fleet.url, "--trust-bundle", fleet.root)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"card {fleet.orders.key_id}"  # the whole key id
    assert f"  spiffe_id  {ORDERS}" in lines and "  state      valid" in lines
    assert "  services   orders, orders-admin" in lines
    for ep in fleet.orders.endpoints:
        assert f"  endpoint   {ep.address} {ep.kind} {ep.service}" in lines
    assert not [line for line in lines if PAYMENT in line]  # only the one asked for


def test_show_by_key_id_prefix_and_a_rejected_entry(fleet):
    done = zmesh("registry", "show", fleet.payment.key_id[:12], "--registry", fleet.url,
                 "--trust-bundle", fleet.root, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [c["key_id"] for c in doc["cards"]] == [fleet.payment.key_id]
    rogue = zmesh("registry", "show", ROGUE, "--registry", fleet.url, "--trust-bundle", fleet.root)
    assert rogue.returncode == 0, rogue.stderr
    assert rogue.stdout.startswith(f"rejected {fleet.rogue.key_id}\n  rule       ")
    assert f"  claims     {ROGUE}" in rogue.stdout


def test_show_of_nothing_there_says_so_and_exits_1(fleet):
    done = zmesh("registry", "show", "spiffe://example.org/ns/none/sa/x", "--registry", fleet.url,
                 "--trust-bundle", fleet.root)  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (
        f"zmesh registry: no entry of {fleet.url} is spiffe://example.org/ns/none/sa/x"
    )

"""Identity sources and rotation: dev CA, PEM files, and the SPIFFE Workload API adapter."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import spiffe

from zmeshlib._exceptions import IdentityError
from zmeshlib.identity import DevCA, Identity, SpiffeId, X509Svid
from zmeshlib.identity.devca import write_file

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
PAYMENT = "spiffe://example.org/ns/shop/sa/payment"


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.create("example.org", intermediate=True)


def write_svid(directory: Path, ca: DevCA, svid: X509Svid) -> tuple[Path, Path, Path]:
    return (
        write_file(directory / "svid.pem", svid.certs_pem()),
        write_file(directory / "svid_key.pem", svid.key_pem(), private=True),
        write_file(directory / "bundle.pem", ca.bundle.to_pem()),
    )


# -- Identity itself ------------------------------------------------------------------


def test_renewal_due_after_half_the_lifetime(ca):
    svid = ca.issue_svid(ORDERS, ttl=100, not_before=1_000_000)
    ident = Identity(svid, ca.bundles)
    assert not ident.renewal_due(now=1_000_000)
    assert not ident.renewal_due(now=1_000_049)
    assert ident.renewal_due(now=1_000_050)
    assert ident.renewal_due(now=2_000_000)


def test_fixed_identity_does_not_renew(ca):
    ident = Identity(ca.issue_svid(ORDERS), ca.bundle)  # a TrustBundle is coerced
    assert ident.bundles == ca.bundles
    assert ident.renew() is False


def test_rotate_notifies_every_callback_even_if_one_fails(ca, caplog):
    ident = Identity(ca.issue_svid(ORDERS), ca.bundles)
    calls: list[str] = []

    def broken(_: Identity) -> None:
        raise RuntimeError("boom")

    ident.on_rotate(lambda i: calls.append("a"))
    ident.on_rotate(broken)
    unsubscribe = ident.on_rotate(lambda i: calls.append(str(i.svid.spiffe_id)))
    new = ca.issue_svid(ORDERS)
    ident.rotate(new)
    assert calls == ["a", ORDERS]
    assert ident.svid is new and ident.bundles == ca.bundles  # bundles kept
    assert "boom" in caplog.text
    unsubscribe()
    unsubscribe()  # idempotent
    ident.rotate(ca.issue_svid(ORDERS))
    assert calls == ["a", ORDERS, "a"]


def test_rotate_refuses_an_svid_without_key(ca):
    ident = Identity(ca.issue_svid(ORDERS), ca.bundles)
    keyless = X509Svid.parse(ca.issue_svid(ORDERS).certs_pem())
    with pytest.raises(IdentityError) as exc:
        ident.rotate(keyless)
    assert exc.value.rule == "no-private-key"
    with pytest.raises(IdentityError):
        Identity(keyless, ca.bundles)


def test_rotate_refuses_an_svid_of_another_spiffe_id(ca):
    ident = Identity(ca.issue_svid(ORDERS), ca.bundles)
    before = ident.current()
    notified: list[Identity] = []
    ident.on_rotate(notified.append)
    with pytest.raises(IdentityError) as exc:
        ident.rotate(ca.issue_svid(PAYMENT))
    assert exc.value.rule == "identity-changed"
    assert ORDERS in str(exc.value) and PAYMENT in str(exc.value)
    assert ident.current() == before and notified == []


def test_renew_refuses_a_renewer_that_offers_another_spiffe_id(ca):
    ident = Identity(
        ca.issue_svid(ORDERS), ca.bundles, renewer=lambda: (ca.issue_svid(PAYMENT), ca.bundles)
    )
    before = ident.current()
    for _ in range(2):  # refused every time, not once
        with pytest.raises(IdentityError) as exc:
            ident.renew()
        assert exc.value.rule == "identity-changed"
        assert ident.current() == before


def test_renew_with_nothing_new(ca):
    svid = ca.issue_svid(ORDERS)
    answers = [None, (svid, ca.bundles)]
    ident = Identity(svid, ca.bundles, renewer=lambda: answers.pop(0))
    assert ident.renew() is False  # the source had nothing
    assert ident.renew() is False  # the source gave the same pair


def test_readers_always_see_a_consistent_pair():
    # two CAs of one trust domain: an SVID of one never verifies with the other's bundle
    cas = [DevCA.create("example.org"), DevCA.create("example.org")]
    pairs = [(c.issue_svid(ORDERS), c.bundles) for c in cas]
    ident = Identity(*pairs[0])
    stop = threading.Event()

    def rotator() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            ident.rotate(*pairs[i % 2])

    thread = threading.Thread(target=rotator)
    thread.start()
    try:
        for _ in range(200):
            svid, bundles = ident.current()
            assert svid.verify(bundles) == SpiffeId.parse(ORDERS)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_close_is_idempotent_and_stops_renewing(ca):
    closed: list[bool] = []
    ident = Identity(
        ca.issue_svid(ORDERS),
        ca.bundles,
        renewer=lambda: (ca.issue_svid(ORDERS), ca.bundles),
        closer=lambda: closed.append(True),
    )
    with ident:
        assert ident.renew() is True
    ident.close()
    assert closed == [True]
    assert ident.renew() is False


# -- PEM files ------------------------------------------------------------------------


def test_from_pem_and_rotation_by_rewriting_files(ca, tmp_path):
    cert, key, bundle = write_svid(tmp_path, ca, ca.issue_svid(ORDERS))
    ident = Identity.from_pem(cert, key, bundle)
    assert str(ident.spiffe_id) == ORDERS
    assert ident.svid.verify(ident.bundles) == ident.spiffe_id
    assert ident.renew() is False  # nothing changed on disk
    rotated: list[X509Svid] = []
    ident.on_rotate(lambda i: rotated.append(i.svid))
    new = ca.issue_svid(ORDERS)
    write_svid(tmp_path, ca, new)
    assert ident.renew() is True
    assert rotated == [new] and ident.svid == new
    assert ident.renew() is False


def test_from_pem_with_key_in_the_certificate_file(ca, tmp_path):
    svid = ca.issue_svid(ORDERS)
    both = write_file(tmp_path / "both.pem", svid.certs_pem() + svid.key_pem(), private=True)
    bundle = write_file(tmp_path / "bundle.pem", ca.bundle.to_pem())
    assert Identity.from_pem(both, bundle_path=bundle).svid == svid


def test_from_pem_keeps_the_old_svid_when_new_files_are_bad(ca, tmp_path):
    cert, key, bundle = write_svid(tmp_path, ca, ca.issue_svid(ORDERS))
    ident = Identity.from_pem(cert, key, bundle)
    old = ident.svid
    write_file(cert, ca.issue_svid(ORDERS).certs_pem())  # a new cert, but the old key
    with pytest.raises(IdentityError) as exc:
        ident.renew()
    assert exc.value.rule == "key-mismatch"
    assert ident.svid == old
    fixed = ca.issue_svid(ORDERS)
    write_svid(tmp_path, ca, fixed)  # the writer finishes: the next renew picks it up
    assert ident.renew() is True and ident.svid == fixed


def test_from_pem_refuses_files_that_now_hold_another_identity(ca, tmp_path):
    cert, key, bundle = write_svid(tmp_path, ca, ca.issue_svid(ORDERS))
    ident = Identity.from_pem(cert, key, bundle)
    before = ident.current()
    write_svid(tmp_path, ca, ca.issue_svid(PAYMENT))  # `zmesh ca issue` of another ID, same dir
    for _ in range(2):  # refused on every renew while the files stay foreign
        with pytest.raises(IdentityError) as exc:
            ident.renew()
        assert exc.value.rule == "identity-changed"
        assert str(cert) in str(exc.value) and PAYMENT in str(exc.value)
        assert ident.current() == before
    fixed = ca.issue_svid(ORDERS)
    write_svid(tmp_path, ca, fixed)  # our own SVID again: rotation resumes
    assert ident.renew() is True and ident.svid == fixed


def test_from_pem_needs_a_bundle_that_trusts_the_svid(ca, tmp_path):
    cert, key, _ = write_svid(tmp_path, ca, ca.issue_svid(ORDERS))
    with pytest.raises(IdentityError) as exc:
        Identity.from_pem(cert, key)
    assert exc.value.rule == "bundle-required"
    assert "bundle" in str(exc.value)
    stranger = write_file(tmp_path / "other.pem", DevCA.create("example.org").bundle.to_pem())
    with pytest.raises(IdentityError) as exc:
        Identity.from_pem(cert, key, stranger)
    assert exc.value.rule == "untrusted"
    with pytest.raises(IdentityError) as exc:
        Identity.from_pem(tmp_path / "missing.pem", key, stranger)
    assert exc.value.rule == "unreadable"


# -- SPIFFE Workload API --------------------------------------------------------------
# No SPIRE agent runs here, so these tests drive the adapter with a fake shaped like
# spiffe.X509Source (get_x509_context, subscribe/unsubscribe_for_updates, close),
# filled with the spiffe package's real X509Svid, X509Bundle and X509Context types.


class FakeX509Source:
    def __init__(self, context: object) -> None:
        self.context = context
        self.subscribers: list = []
        self.closed = False

    def get_x509_context(self) -> object:
        return self.context

    def subscribe_for_updates(self, callback) -> None:
        self.subscribers.append(callback)

    def unsubscribe_for_updates(self, callback) -> None:
        self.subscribers.remove(callback)

    def close(self) -> None:
        self.closed = True

    def push(self, context: object) -> None:
        """What the spiffe package's watcher thread does on a rotation."""
        self.context = context
        for callback in list(self.subscribers):
            callback()


def spiffe_context(ca: DevCA, *extra: DevCA, key: object = None, spiffe_id: str = ORDERS) -> object:
    from spiffe.workloadapi.x509_context import X509Context

    ours = ca.issue_svid(spiffe_id)
    svid = spiffe.X509Svid(
        spiffe.SpiffeId(spiffe_id), list(ours.certificates), key or ours.private_key
    )
    bundles = spiffe.X509BundleSet.of(
        [
            spiffe.X509Bundle(spiffe.TrustDomain(c.trust_domain), set(c.bundle.authorities))
            for c in (ca, *extra)
        ]
    )
    return X509Context([svid], bundles)


def test_workload_api_adapter_follows_pushed_rotations(ca):
    partner = DevCA.create("partner.org")
    source = FakeX509Source(spiffe_context(ca))
    ident = Identity.from_x509_source(source)
    assert str(ident.spiffe_id) == ORDERS
    assert ident.bundles.trust_domains == {"example.org"}
    assert ident.renew() is False  # push-based: nothing to poll
    rotations: list[Identity] = []
    ident.on_rotate(rotations.append)
    first = ident.svid
    source.push(spiffe_context(ca, partner))  # new SVID and a federated bundle
    assert rotations == [ident]
    assert ident.svid != first and ident.svid.verify(ident.bundles) == ident.spiffe_id
    assert ident.bundles.trust_domains == {"example.org", "partner.org"}
    ident.close()
    assert source.closed and source.subscribers == []


def test_workload_api_adapter_ignores_an_invalid_push(ca, caplog):
    source = FakeX509Source(spiffe_context(ca))
    ident = Identity.from_x509_source(source)
    before = ident.current()
    stray_key = ca.issue_svid(ORDERS).private_key
    source.push(spiffe_context(ca, key=stray_key))
    assert ident.current() == before
    assert "key-mismatch" in caplog.text


def test_workload_api_adapter_ignores_a_push_of_another_spiffe_id(ca, caplog):
    source = FakeX509Source(spiffe_context(ca))
    ident = Identity.from_x509_source(source)
    before = ident.current()
    source.push(spiffe_context(ca, spiffe_id=PAYMENT))
    assert ident.current() == before
    assert "identity-changed" in caplog.text and PAYMENT in caplog.text
    source.push(spiffe_context(ca))  # a later push of our own ID rotates as usual
    assert ident.svid != before[0] and str(ident.spiffe_id) == ORDERS


def test_workload_api_without_the_spiffe_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "spiffe", None)  # import spiffe now raises ImportError
    with pytest.raises(IdentityError) as exc:
        Identity.from_workload_api("/nonexistent.sock")
    assert exc.value.rule == "spiffe-not-installed"
    assert "pip install 'zmeshlib[spiffe]'" in str(exc.value)


def test_workload_api_unreachable(tmp_path):
    # the real spiffe package, pointed at a socket no agent listens on
    for address in (str(tmp_path / "agent.sock"), f"unix://{tmp_path}/agent.sock"):
        with pytest.raises(IdentityError) as exc:
            Identity.from_workload_api(address, timeout=2.0)
        assert exc.value.rule == "workload-api-unavailable"
        assert "agent.sock" in str(exc.value)

"""Identity is checked at the handshake: who is refused, and what the application sees of them.

Refused peers never complete a handshake, so the server application sees
nothing of them: no message, no subscription. Each refusal is counted.
"""

from __future__ import annotations

import threading
import time
import types

import pytest
import zmq

import zmeshlib
from zmeshlib import (
    Bundles,
    DevCA,
    Identity,
    IdentityError,
    Mesh,
    Policy,
    Registry,
    Timeout,
    TrustBundle,
)
from zmeshlib.sockets.handshake import decide

SERVER = "spiffe://example.org/ns/shop/sa/payment"
CLIENT = "spiffe://example.org/ns/shop/sa/client"


def _refused(mesh: Mesh) -> int:
    return mesh.stats.get("handshake.refused", 0)


def test_decision_table():
    card = types.SimpleNamespace(spiffe_id=SERVER)
    found = lambda key: card  # noqa: E731
    missing = lambda key: None  # noqa: E731

    def broken(key):
        raise IdentityError("bad chain", rule="untrusted")

    cases = [
        ("STRICT", "CURVE", found, (True, "verified")),
        ("STRICT", "CURVE", missing, (False, "unknown-key")),
        ("STRICT", "CURVE", broken, (False, "unknown-key")),
        ("STRICT", "NULL", found, (False, "mechanism")),
        ("PERMISSIVE", "CURVE", found, (True, "verified")),
        ("PERMISSIVE", "CURVE", missing, (True, "anonymous")),
        ("PERMISSIVE", "NULL", found, (False, "mechanism")),
        ("DISABLE", "NULL", missing, (True, "anonymous")),
        ("DISABLE", "CURVE", found, (False, "mechanism")),
    ]
    for mode, mechanism, lookup, expected in cases:
        d = decide(mode, mechanism, b"k" * 32, lookup)
        assert (d.accepted, d.reason) == expected, (mode, mechanism, lookup)


def _pull_server(mesh_factory) -> tuple[Mesh, object]:
    server = mesh_factory(SERVER)
    pull = server.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0", service="jobs")
    return server, pull


def _assert_refused(server: Mesh, pull, eventually) -> None:
    eventually(lambda: _refused(server) >= 1, what="a refused handshake")
    with pytest.raises(Timeout):
        pull.recv(timeout=0.5)


def test_client_from_untrusted_ca_is_refused(ca, mesh_factory, registry_url, eventually):
    server, pull = _pull_server(mesh_factory)
    impostor_ca = DevCA.create("example.org")  # same trust domain name, a root nobody trusts
    # the impostor trusts both roots, so it can verify the server and publish its own card
    both = TrustBundle("example.org", (*ca.bundle.authorities, *impostor_ca.bundle.authorities))
    impostor_ident = Identity(impostor_ca.issue_svid(CLIENT), Bundles([both]))
    with Mesh(identity=impostor_ident, registry=registry_url) as impostor:
        push = impostor.socket(zmq.PUSH)
        push.connect(service="jobs")
        try:
            push.send(b"let me in", timeout=0.5)  # queued, or refused outright: it never arrives
        except Timeout:
            pass
        _assert_refused(server, pull, eventually)
        assert server.stats.get("handshake.unknown-key", 0) >= 1


def test_client_with_expired_svid_is_refused(ca, registry_url, eventually):
    # The server judges cards two hours ahead of the wall clock: the client's one-hour SVID
    # (and so its card) has expired there, the server's own four-hour one has not.
    server_ident = ca.issue(SERVER, ttl=4 * 3600)
    later = Registry(
        registry_url,
        bundles=lambda: server_ident.bundles,
        clock=lambda: time.time() + 7200,
        lease=3 * 3600,  # the server's own card must outlive that clock
    )
    with (
        Mesh(identity=server_ident, registry=later) as server,
        Mesh(identity=ca.issue(CLIENT, ttl=3600), registry=registry_url) as client,
    ):
        sub_side = server.socket(zmq.PUB)
        sub_side.bind("tcp://127.0.0.1:0", service="orders")
        sub = client.socket(zmq.SUB)
        sub.connect(service="orders")
        sub.subscribe("orders.")
        eventually(lambda: _refused(server) >= 1, what="the expired client refused")
        for _ in range(20):
            sub_side.send(b"secret", topic="orders.created")
        # the publisher never saw the subscription at all
        assert sub_side.stats.get("subscriptions_allowed", 0) == 0
        with pytest.raises(Timeout):
            sub.recv(timeout=0.3)
        later.close()


def test_client_without_a_card_is_refused(mesh_factory, zctx, eventually):
    server, pull = _pull_server(mesh_factory)
    public, secret = zmq.curve_keypair()
    raw = zctx.socket(zmq.PUSH)
    raw.linger = 0
    raw.curve_serverkey = server.curve_public
    raw.curve_publickey, raw.curve_secretkey = public, secret
    raw.connect(pull.endpoints[0])
    raw.send_multipart(
        [zmeshlib.wire.encode(zmeshlib.wire.Envelope(zmeshlib.wire.Kind.PUSH, 1)), b"x"]
    )
    _assert_refused(server, pull, eventually)


def test_client_refuses_a_server_its_policy_does_not_name(mesh_factory):
    policy = Policy.from_dict(
        {"version": 1, "services": {"payment": {"identities": ["example.org/ns/shop/sa/payment"]}}}
    )
    # the rogue's own (permissive) policy lets it claim the service; ours does not
    rogue = mesh_factory("spiffe://example.org/ns/rogue/sa/evil")
    rep = rogue.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="payment")
    client = mesh_factory(CLIENT, policy=policy)
    req = client.socket(zmq.REQ)
    with pytest.raises(IdentityError) as err:
        req.connect(service="payment")
    assert err.value.rule == "secure-naming"
    assert "spiffe://example.org/ns/rogue/sa/evil" in str(err.value)
    assert "services.payment.identities" in str(err.value)
    assert req.upstreams == []


def test_close_leaves_no_thread_socket_or_card(ca, registry_url):
    before = {t.name for t in threading.enumerate()}
    mesh = Mesh(identity=ca.issue(SERVER), registry=registry_url)
    rep = mesh.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="payment")
    key = mesh.curve_public
    assert mesh.registry.by_key(key) is not None
    mesh.close()
    assert rep.closed
    assert {t.name for t in threading.enumerate()} <= before
    with Registry(registry_url, bundles=ca.bundles) as reg:
        assert reg.by_key(key) is None


def test_plain_peer_at_a_strict_socket_is_counted(mesh_factory, zctx):
    """libzmq refuses a NULL client at a CURVE listener before asking ZAP: the socket's
    monitor counts it instead."""
    _server, pull = _pull_server(mesh_factory)
    plain = zctx.socket(zmq.PUSH)
    plain.linger = 0
    plain.connect(pull.endpoints[0])
    plain.send_multipart(
        [zmeshlib.wire.encode(zmeshlib.wire.Envelope(zmeshlib.wire.Kind.PUSH, 1)), b"x"]
    )
    deadline = time.monotonic() + 5
    # which side notices the NULL/CURVE mismatch first varies: any handshake failure counts
    while not any(k.startswith("handshake_failed.") for k in pull.stats):
        assert time.monotonic() < deadline, pull.stats
        with pytest.raises(Timeout):
            pull.recv(timeout=0.05)  # nothing arrives; the wait runs the socket's housekeeping


def test_junk_from_an_authenticated_subscriber_makes_the_publisher_rebind(
    mesh_factory, raw_peer, zctx, publish_until, eventually
):
    """Junk on an XPUB_MANUAL socket would pair later subscriptions with the wrong peers in
    libzmq: the publisher rebinds so that every subscriber re-sends (at most once a second)."""
    server = mesh_factory(SERVER)
    pub = server.socket(zmq.PUB)
    address = pub.bind("tcp://127.0.0.1:0", service="orders")
    junk = raw_peer(server, "spiffe://example.org/ns/rogue/sa/junk")
    xsub = junk.client(zctx.socket(zmq.XSUB), server.curve_public)
    xsub.connect(address)
    xsub.send(b"junk")
    sub = mesh_factory(CLIENT).socket(zmq.SUB)
    sub.connect(service="orders")
    sub.subscribe("orders.")
    eventually(
        lambda: pub.send(b"x", topic="orders.tick") or pub.stats.get("junk_restarts"),
        what="a rebind after junk",
    )
    assert pub.stats["drop.subscription-malformed"] >= 1
    publish_until(pub, sub, topic="orders.created")  # the honest subscriber is served


def test_one_mesh_per_context(ca, registry_url):
    context = zmq.Context()
    try:
        with Mesh(identity=ca.issue(SERVER), registry=registry_url, context=context):
            with pytest.raises(IdentityError) as err:
                Mesh(identity=ca.issue(CLIENT), registry=registry_url, context=context)
            assert err.value.rule == "zap-in-use"
            with Registry(registry_url, bundles=ca.bundles) as reg:
                assert len(list(reg.store.scan())) == 1  # only the first mesh's card
    finally:
        context.term()

"""SVID rotation under traffic: established streams keep flowing, new handshakes see the new card.

SVIDs here live three seconds, so the keeper renews them every 1.5 s (half
their life). The loops run until both workloads have rotated twice (bounded
by a deadline), checking that no publication is lost and no request fails.
"""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from zmeshlib import Timeout

pytestmark = pytest.mark.slow

TTL = 3.0


def test_streams_survive_two_rotations(mesh_factory, publish_until):
    server = mesh_factory("spiffe://example.org/ns/shop/sa/orders", ttl=TTL)
    client = mesh_factory("spiffe://example.org/ns/shop/sa/client", ttl=TTL)
    rotations = {"server": 0, "client": 0}
    server.identity.on_rotate(lambda _i: rotations.__setitem__("server", rotations["server"] + 1))
    client.identity.on_rotate(lambda _i: rotations.__setitem__("client", rotations["client"] + 1))
    first_serial = server.identity.svid.leaf.serial_number

    pub = server.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:0", service="orders")
    rep = server.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="orders")
    sub = client.socket(zmq.SUB)
    sub.connect(service="orders")
    sub.subscribe("orders.")
    req = client.socket(zmq.REQ)
    req.connect(service="orders")
    publish_until(pub, sub, topic="orders.ready")
    stop = threading.Event()
    server_thread = threading.Thread(
        target=rep.serve, args=(lambda m: b"pong " + m.payload,), kwargs={"stop": stop.is_set}
    )
    server_thread.start()

    seq = 0
    received = []
    requests = 0
    deadline = time.monotonic() + 20 * TTL
    while min(rotations.values()) < 2 or requests < 10:
        assert time.monotonic() < deadline, f"rotations seen: {rotations}"
        pub.send(b"%d" % seq, topic="orders.seq")
        seq += 1
        while True:
            try:
                msg = sub.recv(timeout=0.001 if seq % 50 else 0.2)
            except Timeout:
                break
            if msg.topic == "orders.seq":
                received.append(int(msg.payload))
            if seq % 50 == 0 and received and received[-1] == seq - 1:
                break
        if seq % 10 == 0:
            assert req.request(b"ping %d" % seq, method="ping", timeout=5).payload == (
                b"pong ping %d" % seq
            )
            requests += 1

    # drain what is still in flight, then: nothing lost, nothing reordered
    last = seq - 1
    drain_deadline = time.monotonic() + 5
    while (not received or received[-1] != last) and time.monotonic() < drain_deadline:
        try:
            msg = sub.recv(timeout=0.1)
        except Timeout:
            continue
        if msg.topic == "orders.seq":
            received.append(int(msg.payload))
    assert received == list(range(received[0], seq)), "a publication was lost across rotations"
    assert received[0] == 0
    assert server.identity.svid.leaf.serial_number != first_serial

    stop.set()
    server_thread.join(5)

    # a handshake made now sees the re-signed card of the rotated SVID
    late = mesh_factory("spiffe://example.org/ns/shop/sa/late", ttl=TTL)
    late_req = late.socket(zmq.REQ)
    late_req.connect(service="orders")
    assert late_req.upstreams
    assert server.card.certificates[0].serial_number == server.identity.svid.leaf.serial_number
    assert server.stats.get("handshake.refused", 0) == 0


def test_a_static_identity_keeps_its_card_alive_after_its_renewal_time(
    ca, tmp_path, registry_url, eventually
):
    """An identity read from PEM files that nobody rewrites has nothing to renew to:
    past half its SVID's life the keeper must go on renewing the card's lease until
    the SVID itself ends, not stop (the card would lapse a lease later while the
    SVID is still valid)."""
    import zmeshlib
    from zmeshlib.identity.source import Identity

    svid = ca.issue_svid("spiffe://example.org/ns/shop/sa/static", 4.0)
    (tmp_path / "svid.pem").write_bytes(svid.certs_pem())
    (tmp_path / "key.pem").write_bytes(svid.key_pem())
    (tmp_path / "bundle.pem").write_bytes(ca.bundle.to_pem())
    identity = Identity.from_pem(
        tmp_path / "svid.pem", tmp_path / "key.pem", tmp_path / "bundle.pem"
    )
    half = svid.not_before + (svid.not_after - svid.not_before) / 2
    url = registry_url.partition("?")[0] + "?lease=1s"
    with zmeshlib.Mesh(identity, registry=url) as mesh:
        # re-signed well after the renewal time: the lease is still being kept
        eventually(lambda: mesh.card.not_before >= half + 1.0, what="a card renewed past half-life")
        with zmeshlib.registry.Registry(url, bundles=lambda: ca.bundles) as other:
            seen = other.by_key(mesh.curve_public)  # verified and inside its window
            assert seen is not None and seen.spiffe_id == svid.spiffe_id

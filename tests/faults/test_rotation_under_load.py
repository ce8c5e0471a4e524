"""Rotation under load: every workload's SVID rotates at least three times, the CA's
intermediate rotates, and the trust bundle gains a new root (every workload then moves
to it) and later loses the old one, all without a restart and during steady mixed
traffic: 0 publications lost, 0 requests failed, 0 handshakes refused.

Three workloads on loopback (a replica that serves and publishes, a second replica, a
client that calls and subscribes and opens a fresh connection every half second, so
new handshakes see every generation of certificates). Their identities renew from a
shared authority, as a SPIFFE Workload API would hand them out: the authority's
issuer and bundle change on a schedule, and a bundle update is pushed to every
workload at once (``Identity.rotate``), as the Workload API streams it.

The run lasts ``ZMESHLIB_ROTATION_SECONDS`` (20 s by default; docs/security.md records
a 60 s run: ``ZMESHLIB_ROTATION_SECONDS=60 pytest -s tests/faults/test_rotation_under_load.py``).
SVIDs live a third of the run, so each renews (at half its life) about every sixth.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import zmq

import zmeshlib
from zmeshlib import DevCA
from zmeshlib.identity import Bundles, Identity, TrustBundle, X509Svid

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("ZMESHLIB_ROTATION_SECONDS", "20"))
TTL = SECONDS / 3
TRUST_DOMAIN = "example.org"
REPLICA = "spiffe://example.org/ns/shop/sa/payment"
CLIENT = "spiffe://example.org/ns/shop/sa/orders"
POLICY = {"traffic": {"payment": {"timeout": "2s"}}}


class Authority:
    """What a Workload API would serve: the current issuer and the current bundles."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ca = DevCA.create(TRUST_DOMAIN, intermediate=True)
        self.bundles: Bundles = self.ca.bundles
        self.identities: list[Identity] = []

    def identity(self, spiffe_id: str) -> Identity:
        def renew() -> tuple[X509Svid, Bundles]:
            with self._lock:
                ca, bundles = self.ca, self.bundles
            return ca.issue_svid(spiffe_id, TTL), bundles

        svid, bundles = renew()
        ident = Identity(svid, bundles, renewer=renew)
        self.identities.append(ident)
        return ident

    def issue_from(self, ca: DevCA) -> None:
        with self._lock:
            self.ca = ca

    def push_bundles(self, bundles: Bundles) -> None:
        """A bundle update, streamed to every workload at once (no restart)."""
        with self._lock:
            self.bundles = bundles
        for ident in self.identities:
            ident.rotate(ident.svid, bundles)


def test_three_rotations_an_intermediate_and_a_root_change_under_load(tmp_path):
    authority = Authority()
    first_ca = authority.ca
    url = f"dir://{tmp_path / 'registry'}"
    replica = zmeshlib.Mesh(authority.identity(REPLICA), POLICY, url)
    second = zmeshlib.Mesh(authority.identity(REPLICA), POLICY, url)
    client = zmeshlib.Mesh(authority.identity(CLIENT), POLICY, url)
    meshes = (replica, second, client)
    rotations = [0, 0, 0]
    for i, mesh in enumerate(meshes):
        mesh.identity.on_rotate(lambda _ident, i=i: rotations.__setitem__(i, rotations[i] + 1))

    stop = threading.Event()
    servers = []
    for mesh in (replica, second):
        rep = mesh.socket(zmq.REP)
        rep.bind("tcp://127.0.0.1:0", service="payment")
        servers.append(rep)
        t = threading.Thread(target=rep.serve, args=(lambda m: m.payload,), daemon=True)
        t.start()
    pub = replica.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:0", service="orders")
    sub = client.socket(zmq.SUB)
    sub.connect(service="orders")
    sub.subscribe("orders.")
    _wait_for_subscription(pub, sub)

    calls = {"ok": 0, "failed": 0, "connections": 0}
    failures: list[str] = []

    def call_loop() -> None:
        req = None
        opened = 0.0
        while not stop.is_set():
            if req is None or time.monotonic() - opened > 0.5:
                if req is not None:
                    req.close()
                req = client.socket(zmq.REQ)  # a new connection: new handshakes
                req.connect(service="payment")
                opened = time.monotonic()
                calls["connections"] += 1
            body = b"%d" % calls["ok"]
            try:
                reply = req.request(body, method="get")
                assert reply.payload == body
                calls["ok"] += 1
            except Exception as e:  # counted and shown: the test fails on any
                calls["failed"] += 1
                failures.append(repr(e))
        if req is not None:
            req.close()

    caller = threading.Thread(target=call_loop, daemon=True)
    caller.start()

    # the schedule: (fraction of the run, what happens)
    second_ca = DevCA.create(TRUST_DOMAIN, intermediate=True)
    both_roots = Bundles((TrustBundle(TRUST_DOMAIN, (first_ca.root, second_ca.root)),))
    steps = [
        (0.25, "intermediate rotated", lambda: authority.issue_from(first_ca.new_intermediate())),
        (0.45, "new root added", lambda: authority.push_bundles(both_roots)),
        (0.60, "issuing from the new root", lambda: authority.issue_from(second_ca)),
    ]
    done: list[str] = []
    seq = received = lost = 0
    expected = 0
    start = time.monotonic()
    deadline = start + SECONDS * 3 + 30
    old_root_removed = False
    while True:
        elapsed = (time.monotonic() - start) / SECONDS
        while steps and elapsed >= steps[0][0]:
            _, what, act = steps.pop(0)
            act()
            done.append(what)
        on_new_root = all(
            ident.svid.certificates[-1] == second_ca.intermediate for ident in authority.identities
        )
        if not old_root_removed and not steps and on_new_root and elapsed >= 0.8:
            authority.push_bundles(second_ca.bundles)  # the old root leaves every bundle
            old_root_removed = True
            done.append("old root removed")
        if elapsed >= 1.0 and old_root_removed and min(rotations) >= 3:
            break
        assert time.monotonic() < deadline, f"schedule stuck: {done}, rotations {rotations}"
        pub.send(b"%d" % seq, topic="orders.seq")
        seq += 1
        for msg in _drain(sub, wait=0.002):
            if msg.topic != "orders.seq":
                continue
            got = int(msg.payload)
            lost += got - expected
            expected = got + 1
            received += 1
    stop.set()
    caller.join(10)
    for msg in _drain(sub, wait=0.5):  # what was still on its way
        if msg.topic != "orders.seq":
            continue
        got = int(msg.payload)
        lost += got - expected
        expected = got + 1
        received += 1
    refused = {
        k: v for mesh in meshes for k, v in mesh.handshake_counts().items() if k != "verified"
    }
    print(
        f"\nrotation under load, {SECONDS:g} s: rotations {rotations}, steps {done}; "
        f"published {seq}, received {received}, lost {lost}; requests ok {calls['ok']}, "
        f"failed {calls['failed']}, over {calls['connections']} connections; "
        f"handshakes other than verified: {refused}"
    )
    for mesh in meshes:
        mesh.close()
    assert done == [
        "intermediate rotated",
        "new root added",
        "issuing from the new root",
        "old root removed",
    ]
    assert min(rotations) >= 3
    assert calls["failed"] == 0, failures[:5]
    assert calls["ok"] > 0 and calls["connections"] >= SECONDS
    assert lost == 0 and received == seq
    assert not refused


def _wait_for_subscription(pub, sub) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pub.send(b"ready", topic="orders.ready")
        if any(m.topic == "orders.ready" for m in _drain(sub, wait=0.05)):
            return
    pytest.fail("the subscription never reached the publisher")


def _drain(sub, *, wait: float):
    """Every message waiting on ``sub`` (the first waited for up to ``wait`` s)."""
    out = []
    timeout = wait
    while True:
        try:
            msg = sub.recv(timeout=timeout)
        except zmeshlib.Timeout:
            return out
        out.append(msg)
        timeout = 0

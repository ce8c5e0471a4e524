"""Live policy updates under traffic: revoking and granting subscriptions at the publisher.

Only the publisher's mesh gets the new policy here, so what stops the
revoked subscriber is the publisher's enforcement (XPUB rebind, every
subscription judged afresh), not the subscriber's own courtesy check.
"""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from zmeshlib import Policy, Timeout

pytestmark = pytest.mark.slow

ALICE = "spiffe://example.org/ns/shop/sa/alice"
BOB = "spiffe://example.org/ns/shop/sa/bob"


def _policy(readers: list[str]) -> Policy:
    return Policy.from_dict(
        {
            "version": 1,
            "authorization": [
                {
                    "name": "readers",
                    "selector": {"services": ["prices"]},
                    "action": "ALLOW",
                    "rules": [
                        {"from": {"principals": readers}, "to": {"subscribe": ["prices.*"]}},
                        {"to": {"publish": ["prices.*"]}},
                    ],
                }
            ],
        }
    )


class Receiver:
    """Drains a SUB socket in its own thread, stamping each message with its arrival time."""

    def __init__(self, sub) -> None:
        self.sub = sub
        self.arrivals: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.sub.recv(timeout=0.05)
            except Timeout:
                continue
            self.arrivals.append(time.monotonic())

    def since(self, t: float) -> int:
        return sum(1 for a in list(self.arrivals) if a > t)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_revoke_and_grant_under_traffic(mesh_factory, eventually):
    both = _policy(["example.org/ns/shop/sa/alice", "example.org/ns/shop/sa/bob"])
    only_bob = _policy(["example.org/ns/shop/sa/bob"])
    server = mesh_factory("spiffe://example.org/ns/shop/sa/prices", policy=both)
    pub = server.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:0", service="prices")
    receivers = {}
    for name, spiffe_id in (("alice", ALICE), ("bob", BOB)):
        sub = mesh_factory(spiffe_id, policy=both).socket(zmq.SUB)
        sub.connect(service="prices")
        sub.subscribe("prices.")
        receivers[name] = Receiver(sub)

    sending = threading.Event()
    sending.set()

    def publish() -> None:  # one message per millisecond, as in the design notes
        n = 0
        while sending.is_set():
            pub.send(b"%d" % n, topic="prices.eur")
            n += 1
            time.sleep(0.001)

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        eventually(lambda: all(r.arrivals for r in receivers.values()), 10, "both subscribed")

        revoked_at = time.monotonic()
        server.update_policy(only_bob)
        # alice's deliveries stop within one second of the update...
        eventually(
            lambda: (
                receivers["alice"].since(time.monotonic() - 0.2) == 0
                and time.monotonic() - revoked_at > 0.2
            ),
            5,
            "alice cut off",
        )
        cut = max(receivers["alice"].arrivals)
        assert cut - revoked_at < 1.0
        # ...and stay stopped while bob keeps receiving
        checkpoint = time.monotonic()
        eventually(lambda: receivers["bob"].since(checkpoint) > 200, 10, "bob still served")
        assert receivers["alice"].since(cut) == 0

        # granting again restores alice with no action by her application
        granted_at = time.monotonic()
        server.update_policy(both)
        eventually(lambda: receivers["alice"].since(granted_at) > 50, 10, "alice restored")
        assert pub.stats["restarts"] == 2
        assert server.stats["policy.updates"] == 2
    finally:
        sending.clear()
        publisher.join(5)
        for r in receivers.values():
            r.close()


def test_narrowed_subscription_widens_when_granted(mesh_factory, publish_until, eventually):
    narrow = Policy.from_dict(
        {
            "version": 1,
            "authorization": [
                {
                    "name": "eu-only",
                    "action": "ALLOW",
                    "rules": [
                        {"to": {"subscribe": ["orders.eu.*"]}},
                        {"to": {"publish": ["orders.*"]}},
                    ],
                }
            ],
        }
    )
    server = mesh_factory("spiffe://example.org/ns/shop/sa/orders", policy=narrow)
    pub = server.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:0", service="orders")
    # the subscriber's own policy lets it ask for everything; the publisher narrows it
    sub = mesh_factory(ALICE).socket(zmq.SUB)
    sub.connect(service="orders")
    sub.subscribe("orders.")
    publish_until(pub, sub, topic="orders.eu.created")
    for _ in range(30):
        pub.send(b"us", topic="orders.us.created")
    assert pub.stats["subscriptions_narrowed"] == 1
    with pytest.raises(Timeout):
        while True:  # only eu topics can still arrive; nothing from the us
            assert sub.recv(timeout=0.2).topic == "orders.eu.created"

    server.update_policy(Policy())  # no ALLOW policy at all: everything allowed
    publish_until(pub, sub, topic="orders.us.created", timeout=10)


def test_exact_topic_grant_delivers_that_topic_only(mesh_factory, publish_until):
    exact = Policy.from_dict(
        {
            "version": 1,
            "authorization": [
                {
                    "name": "created-only",
                    "action": "ALLOW",
                    "rules": [
                        {"to": {"subscribe": ["orders.created"]}},
                        {"to": {"publish": ["orders.*"]}},
                    ],
                }
            ],
        }
    )
    server = mesh_factory("spiffe://example.org/ns/shop/sa/orders", policy=exact)
    pub = server.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:0", service="orders")
    sub = mesh_factory(ALICE).socket(zmq.SUB)  # its own policy lets it ask for more
    sub.connect(service="orders")
    sub.subscribe("orders.")
    publish_until(pub, sub, topic="orders.created")
    for _ in range(30):
        pub.send(b"v2", topic="orders.created.v2")
        pub.send(b"other", topic="orders.cancelled")
    pub.send(b"last", topic="orders.created")
    got = []
    with pytest.raises(Timeout):
        while True:
            got.append(sub.recv(timeout=0.3).topic)
    assert set(got) == {"orders.created"}
    assert pub.stats["subscriptions_narrowed"] == 1

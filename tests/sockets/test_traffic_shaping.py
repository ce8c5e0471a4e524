"""Traffic shaping in one process: SUB and PUSH by subset, injected aborts as errors, metrics.

Real sockets over loopback TCP, real dev-CA identities, the real OpenTelemetry
SDK with an in-memory reader. The multi-process acceptance figures are in
tests/traffic/.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from typing import Any

import pytest
import zmq
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import zmeshlib
from zmeshlib import Delivery, MeshError, Policy

SERVER = "spiffe://example.org/ns/shop/sa/orders"
CLIENT = "spiffe://example.org/ns/shop/sa/checkout"


def shaped(traffic: dict[str, Any] | None = None, service: str = "orders") -> Policy:
    return Policy.from_dict(
        {
            "version": 1,
            "services": {
                service: {
                    "subsets": [
                        {"name": "v1", "labels": {"version": "v1"}},
                        {"name": "v2", "labels": {"version": "v2"}},
                    ]
                }
            },
            "traffic": {service: traffic or {}},
        }
    )


def until(predicate: Any, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)  # the next look


def connected(mesh: zmeshlib.Mesh, sock: Any, n: int) -> None:
    def look() -> bool:
        mesh._directory.refresh()
        sock._refresh(force=True)
        return len(sock.upstreams) >= n

    until(look, f"connected to {n}")


def test_a_subscriber_connected_to_a_subset_hears_only_its_publishers(mesh_factory):
    policy = shaped()
    pubs = {}
    for version in ("v1", "v2"):
        mesh = mesh_factory(SERVER, policy, labels={"version": version})
        pub = mesh.socket(zmq.PUB)
        pub.bind("tcp://127.0.0.1:0", service="orders")
        pubs[version] = pub
    client = mesh_factory(CLIENT, policy)
    sub = client.socket(zmq.SUB)
    sub.connect(service="orders", subset="v2")
    sub.subscribe("orders.")
    connected(client, sub, 1)
    assert sub.upstreams == pubs["v2"].endpoints

    heard: Counter[bytes] = Counter()
    deadline = time.monotonic() + 10
    while heard[b"v2"] < 20:
        assert time.monotonic() < deadline, heard
        for version, pub in pubs.items():
            pub.send(version.encode(), topic="orders.created")
        try:
            heard[sub.recv(timeout=0.05).payload] += 1
        except zmeshlib.Timeout:
            pass
    assert set(heard) == {b"v2"}


def test_connect_subset_is_checked(mesh_factory):
    mesh = mesh_factory(CLIENT, shaped())
    with pytest.raises(MeshError, match=r"subset 'v3' of service 'orders' is not defined.*v1"):
        mesh.socket(zmq.SUB).connect(service="orders", subset="v3")
    with pytest.raises(MeshError, match="REQ socket chooses subsets per request"):
        mesh.socket(zmq.REQ).connect(service="orders", subset="v1")
    with pytest.raises(MeshError, match="subset= goes with service="):
        mesh.socket(zmq.SUB).connect("tcp://127.0.0.1:5", subset="v1")


def test_push_honours_the_split_across_puller_subsets(mesh_factory):
    policy = shaped({"split": [{"subset": "v1", "weight": 70}, {"subset": "v2", "weight": 30}]})
    pulls = {}
    for version in ("v1", "v2"):
        mesh = mesh_factory(SERVER, policy, labels={"version": version})
        pull = mesh.socket(zmq.PULL)
        pull.bind("tcp://127.0.0.1:0", service="orders")
        pulls[version] = pull
    client = mesh_factory(CLIENT, policy)
    push = client.socket(zmq.PUSH)
    push.connect(service="orders")
    connected(client, push, 2)
    n = 1000
    got: Counter[str] = Counter()

    def drain(version: str) -> None:
        while True:
            try:
                pulls[version].recv(timeout=1.0)
            except zmeshlib.Timeout:
                return
            got[version] += 1

    readers = [threading.Thread(target=drain, args=(v,)) for v in pulls]
    for t in readers:
        t.start()
    for i in range(n):
        push.send(b"job %d" % i, timeout=5)
    for t in readers:
        t.join(30)
    assert sum(got.values()) == n
    assert abs(got["v1"] - 0.7 * n) <= 4 * math.sqrt(n * 0.7 * 0.3), got


def test_an_injected_abort_raises_its_status_never_sent_and_is_a_metric(mesh_factory):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    policy = shaped({"faults": {"abort": {"status": "resource-exhausted", "percentage": 100}}})
    client = mesh_factory(CLIENT, policy, meter_provider=provider)
    req = client.socket(zmq.REQ)
    req.connect(service="orders")
    for _ in range(3):
        with pytest.raises(zmeshlib.ResourceExhausted, match="fault injection") as caught:
            req.request(b"x", method="charge", timeout=1)
        assert caught.value.delivery is Delivery.NOT_SENT
    assert req.stats["faults_aborted"] == 3
    points = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                points[m.name] = list(m.data.data_points)
    (aborts,) = points["zmeshlib.faults.injected"]
    assert aborts.value == 3
    assert dict(aborts.attributes) == {"destination.service": "orders", "fault": "abort"}
    provider.shutdown()


def test_a_split_to_a_subset_with_no_server_says_which_labels_it_wants(mesh_factory):
    policy = shaped({"split": [{"subset": "v2", "weight": 100}, {"subset": "v1", "weight": 0}]})
    server = mesh_factory(SERVER, policy, labels={"version": "v1"})
    rep = server.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="orders")
    client = mesh_factory(CLIENT, policy)
    req = client.socket(zmq.REQ)
    req.connect(service="orders")
    connected(client, req, 1)
    with pytest.raises(zmeshlib.Unavailable, match=r"subset 'v2'.*labels \{'version': 'v2'\}"):
        req.request(b"x", method="charge", timeout=0.2)


def test_mirror_copies_are_marked_and_their_replies_never_reach_the_caller(mesh_factory):
    policy = shaped(
        {
            "split": [{"subset": "v1", "weight": 100}, {"subset": "v2", "weight": 0}],
            "mirror": {"subset": "v2", "percentage": 100},
        }
    )
    seen: dict[str, list[bool]] = {"v1": [], "v2": []}
    stops = []
    for version in ("v1", "v2"):
        mesh = mesh_factory(SERVER, policy, labels={"version": version})
        rep = mesh.socket(zmq.REP)
        rep.bind("tcp://127.0.0.1:0", service="orders")
        stop = threading.Event()
        stops.append(stop)

        def handle(msg: zmeshlib.Message, version: str = version) -> bytes:
            seen[version].append(msg.shadow and msg.headers["zmesh-shadow"] == "orders")
            return version.encode()

        threading.Thread(target=rep.serve, args=(handle,), kwargs={"stop": stop.is_set}).start()
    client = mesh_factory(CLIENT, policy)
    req = client.socket(zmq.REQ)
    req.connect(service="orders")
    connected(client, req, 2)
    try:
        # a copy the mirror's connection cannot take yet (its handshake) is dropped, not queued
        until(
            lambda: (
                req.request(b"x", method="charge", timeout=5).payload == b"v1"
                and req.stats.get("mirrored", 0) > 0
            ),
            "a first copy handed over",
        )
        before = dict(req.stats)
        for _ in range(20):
            assert req.request(b"x", method="charge", timeout=5).payload == b"v1"
        mirrored = req.stats["mirrored"]
        until(lambda: len(seen["v2"]) == mirrored, "every copy handed over at the mirror")
    finally:
        for stop in stops:
            stop.set()
    assert mirrored - before["mirrored"] == 20  # the connection is up: every copy goes
    assert set(seen["v2"]) == {True} and set(seen["v1"]) == {False}  # marked, and only copies
    counts = client.traffic_counts()
    assert counts[("orders", "mirror.sent")] == mirrored
    assert counts.get(("orders", "mirror.dropped"), 0) == req.stats.get("mirror_dropped", 0)

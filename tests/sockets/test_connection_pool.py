"""``pool.max_connections`` (subsetting) and ``pool.idle_timeout`` on real sockets."""

from __future__ import annotations

import threading
import time
from typing import Any

import zmq

import zmeshlib
from zmeshlib import Policy

SERVER = "spiffe://example.org/ns/shop/sa/orders"
CLIENT = "spiffe://example.org/ns/shop/sa/checkout"


def until(predicate: Any, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)  # the next look


def serve(mesh: zmeshlib.Mesh, n: int, stops: list[threading.Event]) -> list[str]:
    """``n`` REP sockets of service orders, each answering with its own address."""
    addresses = []
    for _ in range(n):
        rep = mesh.socket(zmq.REP)
        address = rep.bind("tcp://127.0.0.1:0", service="orders")
        addresses.append(address)
        stop = threading.Event()
        stops.append(stop)
        threading.Thread(
            target=rep.serve,
            args=(lambda _msg, a=address: a.encode(),),
            kwargs={"stop": stop.is_set},
            daemon=True,
        ).start()
    return addresses


def test_max_connections_caps_each_subset_and_the_service(mesh_factory):
    policy = Policy.from_dict(
        {
            "services": {
                "orders": {
                    "subsets": [
                        {"name": "v1", "labels": {"version": "v1"}},
                        {"name": "v2", "labels": {"version": "v2"}},
                    ]
                }
            },
            "traffic": {
                "orders": {
                    "split": [{"subset": "v1", "weight": 50}, {"subset": "v2", "weight": 50}],
                    "pool": {"max_connections": 1},
                }
            },
        }
    )
    stops: list[threading.Event] = []
    by_version = {
        v: set(serve(mesh_factory(SERVER, policy, labels={"version": v}), 3, stops))
        for v in ("v1", "v2")
    }
    client = mesh_factory(CLIENT, policy)
    req = client.socket(zmq.REQ)
    req.connect(service="orders")

    def all_known() -> bool:
        client._directory.refresh()
        cards = client._directory.service("orders", "REP")
        return sum(len(c.endpoints_for("orders", "REP")) for c in cards) == 6

    until(all_known, "the six endpoints in the registry")
    try:
        req._refresh(force=True)
        dialled = set(req.upstreams)
        assert 2 <= len(dialled) <= 3  # one per subset, and one for the service as a whole
        assert dialled & by_version["v1"] and dialled & by_version["v2"]
        answered = {req.request(b"", method="get", timeout=5).payload.decode() for _ in range(60)}
        assert answered <= dialled
        assert answered & by_version["v1"] and answered & by_version["v2"]  # the split holds
        other = client.socket(zmq.REQ)  # another socket draws its own choice
        other.connect(service="orders")
        other._refresh(force=True)
        assert 2 <= len(other.upstreams) <= 3
    finally:
        for stop in stops:
            stop.set()


def _established_to(port: int) -> int:
    """TCP connections in state ESTABLISHED whose remote end is 127.0.0.1:``port``."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[2] == f"0100007F:{port:04X}" and fields[3] == "01":
                n += 1
    return n


def test_idle_timeout_closes_an_unused_connection_and_the_next_request_reopens_it(
    mesh_factory,
):
    policy = Policy.from_dict({"traffic": {"orders": {"pool": {"idle_timeout": "200ms"}}}})
    stops: list[threading.Event] = []
    (address,) = serve(mesh_factory(SERVER, policy), 1, stops)
    port = int(address.rsplit(":", 1)[1])
    client = mesh_factory(CLIENT, policy)
    req = client.socket(zmq.REQ)
    req.connect(service="orders")
    try:
        assert req.request(b"", method="get", timeout=5).payload == address.encode()
        assert _established_to(port) == 1
        until(lambda: not req.poll(0.05) and req.stats.get("idle_closed") == 1, "closed as idle")
        # libzmq closes it once the socket's thread has processed the teardown: a poll does
        until(lambda: not req.poll(0.02) and _established_to(port) == 0, "the TCP connection gone")
        assert req.upstreams == [address]  # still in the endpoint set
        assert req.request(b"", method="get", timeout=5).payload == address.encode()
        assert req.stats["idle_reconnected"] == 1 and _established_to(port) == 1
    finally:
        for stop in stops:
            stop.set()


def test_no_idle_timeout_keeps_connections(mesh_factory):
    stops: list[threading.Event] = []
    (address,) = serve(mesh_factory(SERVER), 1, stops)
    client = mesh_factory(CLIENT)
    req = client.socket(zmq.REQ)
    req.connect(service="orders")
    try:
        assert req.request(b"", method="get", timeout=5).payload == address.encode()
        for _ in range(5):
            req.poll(0.1)  # housekeeping runs (every 100 ms), and closes nothing
        assert "idle_closed" not in req.stats
    finally:
        for stop in stops:
            stop.set()

"""Istio's standard metrics (``telemetry.metrics.istio_compatible``), scraped from a real
``/metrics`` endpoint over HTTP."""

from __future__ import annotations

import threading
import urllib.request

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

import zmeshlib
from zmeshlib import Policy, StatusCode
from zmeshlib.telemetry import serve_prometheus
from zmeshlib.telemetry.istio import HTTP_STATUS, topic_label

SERVER = "spiffe://example.org/ns/shop/sa/payment"
CLIENT = "spiffe://example.org/ns/shop/sa/checkout"


def _istio_policy(**metrics: object) -> Policy:
    return Policy.from_dict(
        {
            "authorization": [
                {"name": "no-refunds", "action": "DENY", "rules": [{"to": {"call": ["refund"]}}]}
            ],
            "telemetry": {"metrics": {"istio_compatible": True, **metrics}},
        }
    )


def _scrape(url: str) -> list:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_every_status_has_an_http_code():
    assert set(HTTP_STATUS) == set(StatusCode)
    assert HTTP_STATUS[StatusCode.OK] == 200 and HTTP_STATUS[StatusCode.UNAVAILABLE] == 503
    assert HTTP_STATUS[StatusCode.PERMISSION_DENIED] == 403
    assert HTTP_STATUS[StatusCode.DEADLINE_EXCEEDED] == 504


@pytest.mark.parametrize(
    ("topic", "depth", "label"),
    [
        ("orders.eu.created", 1, "orders"),
        ("orders.eu.created", 2, "orders.eu"),
        ("orders.eu.created", 8, "orders.eu.created"),
        ("orders/eu:created", 2, "orders/eu"),
        ("orders", 1, "orders"),
        ("orders.eu", 0, ""),
        ("", 1, ""),
    ],
)
def test_topic_labels_keep_the_first_segments(topic, depth, label):
    assert topic_label(topic, depth) == label


def test_istio_requests_total_scraped_over_http(mesh_factory, publish_until):
    policy = _istio_policy()
    with serve_prometheus(port=0) as endpoint:
        provider = endpoint.meter_provider
        server = mesh_factory(SERVER, policy, meter_provider=provider, labels={"version": "v2"})
        rep = server.socket(zmq.REP)
        rep.bind("tcp://127.0.0.1:0", service="payment")
        stop = threading.Event()
        t = threading.Thread(target=rep.serve, args=(lambda m: b"ok:" + m.payload,),
                             kwargs={"stop": stop.is_set})  # fmt: skip
        t.start()
        client = mesh_factory(CLIENT, policy, meter_provider=provider)
        req = client.socket(zmq.REQ)
        req.connect(service="payment")
        for _ in range(3):
            assert req.request(b"12345", method="charge", timeout=5).payload == b"ok:12345"
        with pytest.raises(zmeshlib.PermissionDenied):
            req.request(b"", method="refund", timeout=5)
        stop.set()
        t.join(5)

        pub = server.socket(zmq.PUB)
        pub.bind("tcp://127.0.0.1:0", service="payment")
        sub = client.socket(zmq.SUB)
        sub.connect(service="payment")
        sub.subscribe("payments.")
        publish_until(pub, sub, topic="payments.eu.settled", payload=b"x" * 10)

        samples = _scrape(endpoint.url)
    ends = {
        "source_principal": CLIENT,
        "destination_principal": SERVER,
        "destination_service_name": "payment",
        "request_protocol": "zeromq",
        "connection_security_policy": "mutual_tls",
    }
    total = "istio_requests_total"
    assert _value(samples, total, reporter="source", response_code="200", **ends) == 3
    assert _value(samples, total, reporter="destination", response_code="200", **ends) == 3
    for reporter in ("source", "destination"):  # the server's authorization denied it
        assert _value(samples, total, reporter=reporter, response_code="403",
                      grpc_response_status="7") == 1  # fmt: skip
    (one,) = [
        s
        for s in samples
        if s.name == total
        and s.labels["reporter"] == "destination"
        and s.labels["response_code"] == "200"
    ]
    assert one.labels["source_workload"] == "checkout"
    assert one.labels["source_workload_namespace"] == "shop"
    assert one.labels["destination_workload"] == "payment"
    assert one.labels["destination_version"] == "v2"
    assert one.labels["grpc_response_status"] == "0"
    duration = "istio_request_duration_milliseconds_count"
    assert _value(samples, duration, reporter="source", response_code="200") == 3
    assert _value(samples, "istio_request_bytes_sum", reporter="destination") == 15
    assert _value(samples, "istio_response_bytes_sum", reporter="source",
                  response_code="200") == 24  # fmt: skip
    # pub/sub: the twins, the topic cut to its first segment
    received = _value(samples, "istio_messages_total", reporter="destination",
                      messaging_operation="receive", topic="payments",
                      source_principal=SERVER, destination_principal=CLIENT)  # fmt: skip
    assert received >= 1
    assert _value(samples, "istio_messages_total", reporter="source",
                  messaging_operation="publish", topic="payments") >= received  # fmt: skip
    assert not [s for s in samples if s.labels.get("topic") == "payments.eu.settled"]


def test_without_istio_compatible_there_are_no_istio_series(mesh_factory):
    with serve_prometheus(port=0) as endpoint:
        server = mesh_factory(SERVER, meter_provider=endpoint.meter_provider)
        rep = server.socket(zmq.REP)
        rep.bind("tcp://127.0.0.1:0", service="payment")
        t = threading.Thread(target=rep.serve, args=(lambda m: b"",), kwargs={"max_requests": 1})
        t.start()
        client = mesh_factory(CLIENT, meter_provider=endpoint.meter_provider)
        req = client.socket(zmq.REQ)
        req.connect(service="payment")
        req.request(b"", method="charge", timeout=5)
        t.join(5)
        samples = _scrape(endpoint.url)
    assert not [s for s in samples if s.name.startswith("istio_")]
    assert _value(samples, "rpc_client_call_duration_seconds_count") == 1  # semconv stays


def test_a_taken_port_is_a_clear_error():
    with serve_prometheus(port=0) as endpoint, pytest.raises(zmeshlib.MeshError, match="pick"):
        serve_prometheus(port=endpoint.port)

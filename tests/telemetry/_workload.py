"""One traced workload in its own process, for the trace-across-processes test.

Usage: python _workload.py ROLE CA_DIR REGISTRY_URL

ROLE is ``server`` (REP ``payment``: answers ``charged``), ``worker`` (SUB ``orders``:
handles one publication with ``serve``, calling ``payment`` inside it), or
``publisher`` (PUB ``orders``: publishes inside one root span until its standard
input closes). Each prints ``READY`` once set up, and at its end every span it
recorded, one JSON object a line, after ``SPANS``.
"""

from __future__ import annotations

import json
import sys
import threading

import zmq
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import zmeshlib
from zmeshlib.telemetry.waterfall import span_record

IDS = {
    "server": "spiffe://example.org/ns/shop/sa/payment",
    "worker": "spiffe://example.org/ns/shop/sa/fulfilment",
    "publisher": "spiffe://example.org/ns/shop/sa/orders",
}


def main() -> int:
    role, ca_dir, registry = sys.argv[1:4]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    identity = zmeshlib.DevCA.load(ca_dir).issue(IDS[role])
    with zmeshlib.Mesh(identity=identity, registry=registry, tracer_provider=provider) as mesh:
        if role == "server":
            rep = mesh.socket(zmq.REP)
            rep.bind("tcp://127.0.0.1:0", service="payment")
            print("READY", flush=True)
            rep.serve(lambda msg: b"charged", stop=stop.is_set)
        elif role == "worker":
            req = mesh.socket(zmq.REQ)
            req.connect(service="payment")
            sub = mesh.socket(zmq.SUB)
            sub.connect(service="orders")
            sub.subscribe("orders.")
            print("READY", flush=True)
            sub.serve(lambda msg: req.request(msg.payload, method="charge", timeout=10),
                      max_messages=1)  # fmt: skip
        else:
            pub = mesh.socket(zmq.PUB)
            pub.bind("tcp://127.0.0.1:0", service="orders")
            print("READY", flush=True)
            with provider.get_tracer("shop").start_as_current_span("place order"):
                while not stop.wait(0.02):  # a subscriber hears what is sent after it joined
                    pub.send(b"order 1", topic="orders.created")
    print("SPANS", flush=True)
    for span in exporter.get_finished_spans():
        print(json.dumps(span_record(span)), flush=True)
    provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A mesh workload in its own OS process, driven by the multi-process tests.

Usage: python _worker.py ROLE CA_DIR REGISTRY_URL SPIFFE_ID SERVICE [PORT]

Prints ``READY <address>`` once bound, then one line per message; runs until
its standard input closes (the test's way of stopping it). The policy comes
from the file named by ZMESH_POLICY, when set (a rogue runs without one).
"""

from __future__ import annotations

import os
import sys
import threading

import zmq

import zmeshlib


def main() -> int:
    role, ca_dir, registry, spiffe_id, service = sys.argv[1:6]
    port = sys.argv[6] if len(sys.argv) > 6 else "0"
    ca = zmeshlib.DevCA.load(ca_dir)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    policy_file = os.environ.get("ZMESH_POLICY")
    policy = zmeshlib.Policy.load(policy_file) if policy_file else None
    with zmeshlib.Mesh(identity=ca.issue(spiffe_id), policy=policy, registry=registry) as mesh:
        if role == "rep":
            sock = mesh.socket(zmq.REP)
            print("READY", sock.bind(f"tcp://127.0.0.1:{port}", service=service), flush=True)
            sock.serve(
                lambda m: b"%s from %s" % (m.payload, str(m.peer).encode()), stop=stop.is_set
            )
        elif role == "pub":
            sock = mesh.socket(zmq.PUB)
            print("READY", sock.bind(f"tcp://127.0.0.1:{port}", service=service), flush=True)
            n = 0
            while not stop.wait(0.005):  # a publication every 5 ms until told to stop
                sock.send(b"event %d" % n, topic=f"{service}.event")
                n += 1
        elif role == "pull":
            sock = mesh.socket(zmq.PULL)
            print("READY", sock.bind(f"tcp://127.0.0.1:{port}", service=service), flush=True)
            while not stop.is_set():
                try:
                    msg = sock.recv(timeout=0.2)
                except zmeshlib.Timeout:
                    continue
                print("GOT", msg.payload.decode(), msg.peer, flush=True)
        elif role == "sub":
            sock = mesh.socket(zmq.SUB)
            sock.connect(service=service)
            sock.subscribe(f"{service}.")
            print("READY", flush=True)
            while not stop.is_set():
                try:
                    msg = sock.recv(timeout=0.2)
                except zmeshlib.Timeout:
                    continue
                print("GOT", msg.topic, msg.peer, flush=True)
        elif role == "rogue":
            rogue(mesh, stop)
        else:
            print(f"unknown role {role}", file=sys.stderr)
            return 2
    return 0


def rogue(mesh: zmeshlib.Mesh, stop: threading.Event) -> None:
    """A valid identity with no permission: it tries to read payments, forge orders, refund."""
    sub = mesh.socket(zmq.SUB)
    sub.connect(service="payments")
    sub.subscribe("")
    sub.subscribe("pay")
    forger = mesh.socket(zmq.PUB)
    forger.bind("tcp://127.0.0.1:0", service="orders")
    req = mesh.socket(zmq.REQ)
    req.connect(service="payment")
    try:
        req.request(b"all of it", method="refund", timeout=5)
        print("CALL OK", flush=True)
    except zmeshlib.PermissionDenied as e:
        print("CALL DENIED", e.policy, flush=True)
    print("READY", flush=True)
    while not stop.is_set():
        forger.send(b"free stuff", topic="orders.created")
        try:
            msg = sub.recv(timeout=0.005)
        except zmeshlib.Timeout:
            continue
        print("GOT", msg.topic, msg.peer, flush=True)


if __name__ == "__main__":
    sys.exit(main())

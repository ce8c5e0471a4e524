"""A workload of the partition test, run inside its own network namespace.

Usage: python _workload.py replica NAME ADDRESS CA_DIR REGISTRY_URL POLICY_JSON
       python _workload.py client CA_DIR REGISTRY_URL POLICY_JSON
       python _workload.py subscriber CA_DIR REGISTRY_URL POLICY_JSON
       python _workload.py writer CA_DIR REGISTRY_URL POLICY_JSON

A replica serves ``payment`` at ADDRESS, answering each request with its NAME,
publishes a number every 5 ms on ``ticks.NAME`` (service ``ticks``), and
prints ``READY`` and the address it serves at. The client connects to ``payment``, prints ``READY`` once
it has three upstreams, then sends one idempotent request after another until
its standard input closes; at its end it prints ``RESULT`` and one JSON object:
each answer as ``[wall time, replica]``, each failure as ``[wall time, error]``,
each publication heard as ``[wall time, topic, number]``,
and its threads and open file descriptors when it started and when it ended.
A subscriber listens to ``ticks``, prints ``READY`` at its first publication
and then reads until it is killed (it is there to die mid-stream).
A writer writes to the registry until it is killed (it is there to die mid-write):
it binds a REP socket of ``payment`` and closes it, over and over (each a card
write), and every tenth time publishes the policy signed as the mesh's control
workload, with the next version; it prints ``READY`` after its first round.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import zmq

import zmeshlib


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def replica(name: str, address: str, ca_dir: str, registry: str, policy: str) -> int:
    ca = zmeshlib.DevCA.load(ca_dir)
    identity = ca.issue("spiffe://example.org/ns/shop/sa/payment")
    with zmeshlib.Mesh(identity=identity, registry=registry,
                       policy=zmeshlib.Policy.from_dict(json.loads(policy))) as mesh:  # fmt: skip
        rep = mesh.socket(zmq.REP)
        serving = rep.bind(address, service="payment")
        pub = mesh.socket(zmq.PUB)
        pub.bind(address, service="ticks")
        stop = threading.Event()

        def tick() -> None:  # a numbered publication every 5 ms, until stopped
            n = 0
            while not stop.wait(0.005):
                pub.send(b"%d" % n, topic=f"ticks.{name}")
                n += 1

        ticker = threading.Thread(target=tick)
        ticker.start()
        print("READY", serving, flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        rep.serve(lambda msg: name.encode(), stop=stop.is_set)
        ticker.join()
    return 0


def client(ca_dir: str, registry: str, policy: str) -> int:
    ca = zmeshlib.DevCA.load(ca_dir)
    identity = ca.issue("spiffe://example.org/ns/shop/sa/checkout")
    done = threading.Event()
    reader = threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True)
    reader.start()

    ours: list[threading.Thread] = [reader]  # this script's threads, not the mesh's

    def threads() -> int:
        return threading.active_count() - sum(t.is_alive() for t in ours)

    answers: list[list[object]] = []
    failures: list[list[object]] = []
    with zmeshlib.Mesh(identity=identity, registry=registry,
                       policy=zmeshlib.Policy.from_dict(json.loads(policy))) as mesh:  # fmt: skip
        req = mesh.socket(zmq.REQ)
        req.connect(service="payment")
        sub = mesh.socket(zmq.SUB)
        sub.connect(service="ticks")
        sub.subscribe("ticks.")
        ticks: list[list[object]] = []

        def listen() -> None:  # every publication heard: [wall time, topic, number]
            while not done.is_set():
                try:
                    msg = sub.recv(timeout=0.1)
                except zmeshlib.Timeout:
                    continue
                ticks.append([time.time(), msg.topic, int(msg.payload)])

        listener = threading.Thread(target=listen)
        ours.append(listener)
        listener.start()
        deadline = time.monotonic() + 30
        while len(req.upstreams) < 3:
            assert time.monotonic() < deadline, f"connected to {req.upstreams} only"
            req.poll(0.05)  # housekeeping: the registry view
        for _ in range(30):  # every connection's handshake done
            req.request(b"", method="getQuote", timeout=5)
        start = {"threads": threads(), "fds": _fds()}
        print("READY", flush=True)
        while not done.is_set():
            try:
                reply = req.request(b"", method="getQuote", timeout=2)
                answers.append([time.time(), reply.payload.decode()])
            except zmeshlib.MeshError as e:
                failures.append([time.time(), f"{type(e).__name__}: {e}"])
            done.wait(0.002)  # a steady rate, not a flood
        listener.join()
        end = {"threads": threads(), "fds": _fds()}
        stats = req.stats
    print("RESULT", flush=True)
    print(json.dumps({"answers": answers, "failures": failures, "start": start, "end": end,
                      "stats": stats, "ticks": ticks}), flush=True)  # fmt: skip
    return 0


def subscriber(ca_dir: str, registry: str, policy: str) -> int:
    ca = zmeshlib.DevCA.load(ca_dir)
    identity = ca.issue("spiffe://example.org/ns/shop/sa/checkout")
    with zmeshlib.Mesh(identity=identity, registry=registry,
                       policy=zmeshlib.Policy.from_dict(json.loads(policy))) as mesh:  # fmt: skip
        sub = mesh.socket(zmq.SUB)
        sub.connect(service="ticks")
        sub.subscribe("ticks.")
        sub.recv(timeout=30)
        print("READY", flush=True)
        while True:
            sub.recv(timeout=30)


def writer(ca_dir: str, registry: str, policy: str) -> int:
    ca = zmeshlib.DevCA.load(ca_dir)
    control = ca.issue("spiffe://example.org/ns/mesh/sa/control")
    document = zmeshlib.Policy.from_dict(json.loads(policy))
    with zmeshlib.Mesh(identity=ca.issue("spiffe://example.org/ns/shop/sa/payment"),
                       registry=registry, policy=document) as mesh:  # fmt: skip
        for round in range(1_000_000):  # until killed
            rep = mesh.socket(zmq.REP)
            rep.bind("tcp://127.0.0.1:0", service="payment")
            rep.close()
            if round % 10 == 0:
                zmeshlib.publish_policy(document, identity=control, registry=mesh.registry)
            if round == 0:
                print("READY", flush=True)
    return 0


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    roles = {"replica": replica, "client": client, "subscriber": subscriber, "writer": writer}
    sys.exit(roles[role](*args))

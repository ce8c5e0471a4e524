"""Random open/close sequences of meshes and sockets, in a process of their own.

Usage: python _sequences.py CA_DIR REGISTRY_DIR SEED STEPS

Runs STEPS operations drawn with random.Random(SEED) (a draw not possible at that
point, such as closing a socket when there is none, is drawn again): make a Mesh (at most
three alive), make a socket of any kind on one, bind or connect it, send or
receive without waiting, start a thread blocked in recv() or serve() on it,
close a socket or a Mesh from this thread or from another (while one of its
sockets is blocked in another thread), and use a closed one (which must raise
Closed). At the end it closes everything and prints one JSON line: the
operations done, the threads and descriptors before and after, and the cards
left in the registry. A libzmq assertion would end the process with SIGABRT:
the test sees the signal.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
from typing import Any

import zmq

import zmeshlib

KINDS = (zmq.REQ, zmq.REP, zmq.PUB, zmq.SUB, zmq.PUSH, zmq.PULL)
SERVICE = "seq"


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _close(thing: Any, op: str) -> Any:
    """Close a socket or a Mesh here, or from another thread (``op`` ends "elsewhere")."""
    if op.endswith("elsewhere"):
        t = threading.Thread(target=thing.close)
        t.start()
        t.join(10)
    else:
        thing.close()
    return thing


def main() -> int:
    ca_dir, registry_dir, seed, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    ca = zmeshlib.DevCA.load(ca_dir)
    registry = f"dir://{registry_dir}"
    identities = [ca.issue(f"spiffe://example.org/ns/seq/sa/w{i}") for i in range(3)]
    before = {"threads": threading.active_count(), "fds": _fds()}
    meshes: list[zmeshlib.Mesh] = []
    sockets: list[Any] = []
    closed: list[Any] = []
    blocked: list[threading.Thread] = []
    done: dict[str, int] = {}

    def block(sock: Any) -> None:
        try:
            if sock.type == zmq.REP:
                sock.serve(lambda msg: b"ok")
            elif sock.type in (zmq.SUB, zmq.PULL):
                sock.recv()  # no timeout: only a close ends it
        except zmeshlib.Closed:
            pass

    for _ in range(steps * 10):  # until STEPS were possible and done (bounded)
        if sum(done.values()) >= steps:
            break
        op = rng.choice(["mesh", "socket", "socket", "wire", "io", "block", "close-socket",
                         "close-socket-elsewhere", "close-mesh", "close-mesh-elsewhere",
                         "use-closed"])  # fmt: skip
        if op == "mesh" and len(meshes) < 3:
            meshes.append(zmeshlib.Mesh(identity=rng.choice(identities), registry=registry))
        elif op == "socket" and meshes:
            try:
                sockets.append(rng.choice(meshes).socket(rng.choice(KINDS)))
            except zmeshlib.Closed:
                op = "socket-on-closed"
        elif op == "wire" and sockets:
            sock = rng.choice(sockets)
            try:
                if rng.random() < 0.5:
                    sock.bind("tcp://127.0.0.1:0", service=SERVICE)
                elif sock.type != zmq.REQ or rng.random() < 0.5:
                    sock.connect(service=SERVICE)
            except zmeshlib.MeshError:
                pass  # nothing to connect to yet, or a second service: refused, typed
        elif op == "io" and sockets:
            sock = rng.choice(sockets)
            try:
                if sock.type in (zmq.PUB, zmq.PUSH):
                    sock.send(b"x", **({"topic": "seq.t"} if sock.type == zmq.PUB else {}),
                              **({"timeout": 0} if sock.type == zmq.PUSH else {}))  # fmt: skip
                elif sock.type == zmq.REQ:
                    sock.request(b"x", method="get", timeout=0.01)
                elif sock.type == zmq.SUB:
                    sock.subscribe("seq.")
                else:
                    sock.recv(timeout=0)
            except zmeshlib.MeshError:
                pass
        elif op == "block" and sockets and len(blocked) < 8:
            sock = rng.choice(sockets)
            if sock.type in (zmq.REP, zmq.SUB, zmq.PULL):
                t = threading.Thread(target=block, args=(sock,))
                t.start()
                blocked.append(t)
        elif op.startswith("close-socket") and sockets:
            closed.append(_close(sockets.pop(rng.randrange(len(sockets))), op))
        elif op.startswith("close-mesh") and meshes:
            mesh = _close(meshes.pop(rng.randrange(len(meshes))), op)
            closed.append(mesh)
            sockets = [s for s in sockets if s._mesh is not mesh]
        elif op == "use-closed" and closed:
            thing = rng.choice(closed)
            try:
                if isinstance(thing, zmeshlib.Mesh):
                    thing.socket(zmq.PUB)
                else:
                    thing.bind("tcp://127.0.0.1:0", service=SERVICE)
                raise AssertionError(f"{thing!r} was used after close()")
            except zmeshlib.Closed:
                pass
        else:
            continue  # not possible now: not counted
        done[op] = done.get(op, 0) + 1
    for mesh in meshes:
        mesh.close()
    for t in blocked:
        t.join(10)
    stuck = sum(t.is_alive() for t in blocked)
    del meshes, sockets, closed, blocked
    import gc

    gc.collect()
    after = {"threads": threading.active_count(), "fds": _fds()}
    cards = len([p for p in os.listdir(registry_dir) if p.endswith(".card")])
    print(json.dumps({"done": done, "before": before, "after": after, "cards": cards,
                      "stuck": stuck}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

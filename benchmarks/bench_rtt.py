"""Request/reply round trip, mesh against raw, in alternating batches: the steadiest ratio.

Run: ``.venv/bin/python benchmarks/bench_rtt.py`` (``--batches N --size N``).

On a shared machine the speed drifts by tens of percent within a minute, so a
ratio of two separate runs mostly measures the drift. Here one client process
alternates batches of round trips against three servers that run side by side
(each waiting, so idle, while another is measured), and reports the median of
the per-batch ratios:

=========  ==================================================================
case       what it is
=========  ==================================================================
raw        pyzmq REQ -> REP with CURVE, blocking send/recv: the baseline
lean       the leanest loop of the pattern a non-locking client needs:
           DEALER -> ROUTER with CURVE, an envelope with a request id and a
           deadline, a blocking read under RCVTIMEO (so a lost reply costs a
           timeout, not the socket), whole messages moved as the mesh moves
           them (``zmeshlib.sockets.frames``: one call per message when
           compiled) with the User-Id read; no mesh logic on either side. The
           floor of the design.
mesh       ``REQ.request(method="echo")`` -> ``REP.serve(handler)``, STRICT
=========  ==================================================================
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from typing import Any

import zmq

import zmeshlib
from zmeshlib.sockets.frames import recv_message, send_message
from zmeshlib.wire import Kind, decode_plain, encode_minimal, encode_request

PAYLOAD = b"x" * 64
STOP = b"stop"


def _curve_server(ctx: zmq.Context, kind: int) -> tuple[zmq.Socket, str, bytes]:
    public, secret = zmq.curve_keypair()
    sock = ctx.socket(kind)
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = public, secret
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}", public


def _curve_client(ctx: zmq.Context, kind: int, address: str, server_key: bytes) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.curve_serverkey = server_key
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.connect(address)
    return sock


def raw_server(info: Any) -> None:
    ctx = zmq.Context()
    sock, address, key = _curve_server(ctx, zmq.REP)
    info.put(("raw", address, key))
    while True:
        msg = sock.recv()
        sock.send(msg)
        if msg == STOP:
            break
    ctx.destroy(linger=0)


def lean_server(info: Any) -> None:
    ctx = zmq.Context()
    sock, address, key = _curve_server(ctx, zmq.ROUTER)
    info.put(("lean", address, key))
    while True:
        frames, _user_id = recv_message(sock, 0, True)  # type: ignore[misc]
        env = decode_plain(frames[1])
        send_message(sock, [frames[0], encode_minimal(Kind.REPLY, env[1]), frames[2]])  # type: ignore[index]
        if frames[2] == STOP:
            break
    ctx.destroy(linger=0)


def mesh_server(ca_dir: str, registry: str, info: Any) -> None:
    ca = zmeshlib.DevCA.load(ca_dir)
    with zmeshlib.Mesh(
        identity=ca.issue("spiffe://example.org/ns/bench/sa/server"), registry=registry
    ) as mesh:
        rep = mesh.socket(zmq.REP)
        rep.bind("tcp://127.0.0.1:0", service="bench")
        info.put(("mesh", "", b""))
        stopped: list[bool] = []

        def echo(msg: zmeshlib.Message) -> bytes:
            if msg.payload == STOP:
                stopped.append(True)
            return msg.payload

        rep.serve(echo, stop=lambda: bool(stopped))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--size", type=int, default=300, help="round trips per batch")
    args = parser.parse_args(argv)
    mp = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="zmesh-bench-rtt-") as tmp:
        zmeshlib.DevCA.create("example.org").save(f"{tmp}/ca")
        registry = f"dir://{tmp}/registry"
        info = mp.Queue()
        servers = [
            mp.Process(target=raw_server, args=(info,)),
            mp.Process(target=lean_server, args=(info,)),
            mp.Process(target=mesh_server, args=(f"{tmp}/ca", registry, info)),
        ]
        for s in servers:
            s.start()
        found = {
            name: (address, key) for name, address, key in (info.get(timeout=30) for _ in servers)
        }
        ctx = zmq.Context()
        raw = _curve_client(ctx, zmq.REQ, *found["raw"])
        lean = _curve_client(ctx, zmq.DEALER, *found["lean"])
        lean.rcvtimeo = 5000
        ca = zmeshlib.DevCA.load(f"{tmp}/ca")
        mesh = zmeshlib.Mesh(
            identity=ca.issue("spiffe://example.org/ns/bench/sa/client"), registry=registry
        )
        req = mesh.socket(zmq.REQ)
        req.connect(service="bench")
        ids = iter(range(1, 1 << 62))

        def raw_call(payload: bytes = PAYLOAD) -> None:
            raw.send(payload)
            raw.recv()

        def lean_call(payload: bytes = PAYLOAD) -> None:
            deadline = int(time.time() * 1000) + 5000
            send_message(lean, [encode_request(next(ids), "echo", deadline), payload])
            recv_message(lean)

        def mesh_call(payload: bytes = PAYLOAD) -> None:
            req.request(payload, method="echo", timeout=5)

        calls = {"raw": raw_call, "lean": lean_call, "mesh": mesh_call}
        for call in calls.values():  # warm up: handshakes, caches
            for _ in range(args.size):
                call()
        per: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.batches):
            for name, call in calls.items():
                t0 = time.perf_counter()
                for _ in range(args.size):
                    call()
                per[name].append((time.perf_counter() - t0) / args.size * 1e6)
        for call in calls.values():
            call(STOP)
        for s in servers:
            s.join(10)
        mesh.close()
        ctx.destroy(linger=0)
    print(f"{args.batches} batches of {args.size} round trips per case, 64-byte payloads")
    for name in calls:
        print(
            f"{name:<5} mean round trip, median of batches: {statistics.median(per[name]):7.1f} us"
        )
    for name in ("lean", "mesh"):
        ratios = [x / r for x, r in zip(per[name], per["raw"], strict=True)]
        print(f"{name}/raw median ratio {statistics.median(ratios):.2f}x")
    ratio = statistics.median(m / r for m, r in zip(per["mesh"], per["raw"], strict=True))
    print(f"target mesh/raw <= 1.3x: {'met' if ratio <= 1.3 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

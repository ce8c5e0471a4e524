"""The processes of benchmarks/bench_core.py: one server side and one client side per case.

Each case exists twice, ``raw`` (plain pyzmq with CURVE) and ``mesh`` (zmeshlib
STRICT), doing the same work with the same 64-byte payload, so that the only
difference measured is what the mesh adds. Processes are started with
``spawn`` and talk to the parent through a :class:`Link`: the server announces
where it is, the client reports its numbers, and flags say when to stop.
Nothing here sleeps to wait: every wait is a poll or a flag with a deadline.

The mesh server of the round-trip case answers an exact number of requests
and then waits for ``done`` before it closes, because closing a socket drops
replies still queued in it.
"""

from __future__ import annotations

import contextlib
import cProfile
import time
from collections.abc import Iterator
from typing import Any

import attrs
import zmq

from zmeshlib.cli.demo import Stage

PAYLOAD = b"x" * 64
TOPIC = "bench.data"
SERVER_ID = "spiffe://example.org/ns/bench/sa/server"
CLIENT_ID = "spiffe://example.org/ns/bench/sa/client"
WAIT = 20.0  # seconds any one wait may take before the case fails
STOP_EVERY = 1024  # publications between two looks at the stop flag (a look costs a syscall)

POLICY: dict[str, Any] = {
    "version": 1,
    "peer_authentication": {"mode": "STRICT"},
    "trust_domains": ["example.org"],
    "services": {"bench": {"identities": ["example.org/ns/bench/sa/server"]}},
    "authorization": [
        {
            "name": "bench",
            "selector": {"services": ["bench"]},
            "action": "ALLOW",
            "rules": [
                {
                    "from": {"namespaces": ["bench"]},
                    "to": {"publish": ["bench.*"], "subscribe": ["bench.*"], "call": ["echo"]},
                }
            ],
        }
    ],
}


@attrs.frozen
class Link:
    """What the two processes of a case and the parent share (multiprocessing objects)."""

    info: Any  # Queue: the server's (address, CURVE public key), for the raw client
    results: Any  # Queue: the client's dict of numbers, or ("error", text)
    done: Any  # Event: the client has finished
    stage: Stage | None  # the mesh's CA, registry and policy (None for raw cases)
    profile: str = ""  # path prefix for cProfile stats of the mesh processes ("" = none)


@contextlib.contextmanager
def _profiled(prefix: str, role: str) -> Iterator[None]:
    if not prefix:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(f"{prefix}-{role}.prof")


def _raw_context() -> tuple[zmq.Context, bytes, bytes]:
    public, secret = zmq.curve_keypair()
    return zmq.Context(), public, secret


def _raw_client(ctx: zmq.Context, kind: int, server_key: bytes, address: str) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.linger = 0
    sock.rcvtimeo = int(WAIT * 1000)  # a blocking recv that cannot hang the run
    sock.curve_serverkey = server_key
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.connect(address)
    return sock


def _raw_server(ctx: zmq.Context, kind: int, public: bytes, secret: bytes) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.linger = 0
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.bind("tcp://127.0.0.1:0")
    return sock


def _wait_done(link: Link) -> None:
    if not link.done.wait(WAIT):
        raise TimeoutError("the client never finished")


# -- request/reply: handshakes, then round trips ----------------------------------


def rtt_server(kind: str, link: Link, requests: int) -> None:
    if kind == "raw":
        ctx, public, secret = _raw_context()
        sock = _raw_server(ctx, zmq.REP, public, secret)
        link.info.put((sock.getsockopt_string(zmq.LAST_ENDPOINT), public))
        for _ in range(requests):
            sock.send(sock.recv())
        _wait_done(link)
        sock.close()
        ctx.term()
        return
    assert link.stage is not None
    with link.stage.join(SERVER_ID) as mesh, _profiled(link.profile, "server"):
        srv = mesh.socket(zmq.REP)
        link.info.put((srv.bind("tcp://127.0.0.1:0", service="bench"), b""))
        srv.serve(lambda msg: msg.payload, max_requests=requests)
        _wait_done(link)


def rtt_client(kind: str, link: Link, handshakes: int, requests: int) -> None:
    """``handshakes`` fresh connections timed to their first reply, then round trips.

    Makes exactly ``requests`` calls in all, the number the server answers.
    """
    address, server_key = link.info.get(timeout=WAIT)
    warmup = requests // 10
    try:
        if kind == "raw":
            ctx = zmq.Context()

            def connect() -> Any:
                return _raw_client(ctx, zmq.REQ, server_key, address)

            def call(sock: Any) -> bytes:
                sock.send(PAYLOAD)
                return sock.recv()

            result = _rtt(connect, call, handshakes, warmup, requests)
            ctx.term()
        else:
            assert link.stage is not None
            with link.stage.join(CLIENT_ID) as mesh, _profiled(link.profile, "client"):

                def connect() -> Any:
                    sock = mesh.socket(zmq.REQ)
                    sock.connect(service="bench")
                    return sock

                def call(sock: Any) -> bytes:
                    return sock.request(PAYLOAD, method="echo", timeout=WAIT).payload

                result = _rtt(connect, call, handshakes, warmup, requests)
        link.results.put(result)
    finally:
        link.done.set()


def _rtt(connect: Any, call: Any, handshakes: int, warmup: int, requests: int) -> dict[str, Any]:
    firsts = []
    for _ in range(handshakes):
        t0 = time.perf_counter()
        sock = connect()
        if call(sock) != PAYLOAD:
            raise ValueError("echo mismatch")
        firsts.append(time.perf_counter() - t0)
        sock.close()
    sock = connect()
    for _ in range(warmup):
        call(sock)
    samples = []
    clock = time.perf_counter_ns
    for _ in range(requests - handshakes - warmup):
        t0 = clock()
        call(sock)
        samples.append(clock() - t0)
    sock.close()
    samples.sort()
    firsts_sorted = sorted(firsts)
    return {
        "handshake_cold_ms": firsts[0] * 1e3,
        "handshake_p50_ms": firsts_sorted[len(firsts) // 2] * 1e3,
        "rtt_p50_us": samples[len(samples) // 2] / 1e3,
        "rtt_p99_us": samples[int(len(samples) * 0.99)] / 1e3,
        "rtt_count": len(samples),
    }


# -- publish/subscribe throughput -------------------------------------------------


def publisher(kind: str, link: Link) -> None:
    """Publish as fast as possible until the subscriber is done (PUB drops at its HWM)."""
    if kind == "raw":
        ctx, public, secret = _raw_context()
        sock = _raw_server(ctx, zmq.PUB, public, secret)
        link.info.put((sock.getsockopt_string(zmq.LAST_ENDPOINT), public))
        frames = [TOPIC.encode(), PAYLOAD]
        send = sock.send_multipart
        while not link.done.is_set():
            for _ in range(STOP_EVERY):
                send(frames)
        sock.close()
        ctx.term()
        return
    assert link.stage is not None
    with link.stage.join(SERVER_ID) as mesh, _profiled(link.profile, "publisher"):
        pub = mesh.socket(zmq.PUB)
        link.info.put((pub.bind("tcp://127.0.0.1:0", service="bench"), b""))
        send = pub.send
        while not link.done.is_set():
            for _ in range(STOP_EVERY):
                send(PAYLOAD, topic=TOPIC)


def subscriber(kind: str, link: Link, seconds: float) -> None:
    """Count publications received in ``seconds`` after the first one."""
    address, server_key = link.info.get(timeout=WAIT)
    try:
        if kind == "raw":
            ctx = zmq.Context()
            sock = _raw_client(ctx, zmq.SUB, server_key, address)
            sock.subscribe(b"bench.")

            link.results.put(_count(sock.recv_multipart, seconds))
            sock.close()
            ctx.term()
        else:
            assert link.stage is not None
            with link.stage.join(CLIENT_ID) as mesh, _profiled(link.profile, "subscriber"):
                sub = mesh.socket(zmq.SUB)
                sub.connect(service="bench")
                sub.subscribe("bench.")
                link.results.put(_count(lambda: sub.recv(timeout=WAIT), seconds))
    finally:
        link.done.set()


def _count(recv: Any, seconds: float) -> dict[str, Any]:
    recv()  # the first publication: the subscription has reached the publisher
    t0 = time.perf_counter()
    end = t0 + seconds
    n = 0
    while True:
        for _ in range(256):
            recv()
        n += 256
        now = time.perf_counter()
        if now >= end:
            return {"pubsub_msgs_per_s": n / (now - t0), "pubsub_count": n}

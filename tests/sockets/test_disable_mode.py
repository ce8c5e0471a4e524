"""A plain pyzmq peer talks to a DISABLE-mode mesh socket, and cannot get a message through to a
STRICT one.

DISABLE is the migration mode: no CURVE, every peer anonymous, but the wire
format stays the mesh's, so a plain peer must speak the envelope (built here
with ``zmeshlib.wire.encode``). PERMISSIVE accepts a CURVE peer without a
card as anonymous; STRICT refuses whatever has no verified card, and counts
the refusal at the handshake.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from zmeshlib import ANONYMOUS, Mesh, Policy, ProtocolError, StatusCode, Timeout
from zmeshlib.wire import Envelope, Kind, decode, encode

SERVER = "spiffe://example.org/ns/shop/sa/payment"
DISABLE = Policy.from_dict({"version": 1, "peer_authentication": {"mode": "DISABLE"}})
PERMISSIVE = Policy.from_dict({"version": 1, "peer_authentication": {"mode": "PERMISSIVE"}})
STRICT = Policy.from_dict({"version": 1, "peer_authentication": {"mode": "STRICT"}})


def codec_reason(frame: bytes) -> str:
    """Why the envelope codec refuses ``frame`` (the drop reason a socket must count)."""
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    return info.value.reason


def raw_recv(sock: zmq.Socket, timeout: float = 5.0) -> list[bytes]:
    if not sock.poll(int(timeout * 1000)):
        pytest.fail(f"nothing arrived on the raw socket within {timeout}s")
    return sock.recv_multipart()


@pytest.fixture
def disabled(mesh_factory: Callable[..., Mesh]) -> Mesh:
    return mesh_factory(None, DISABLE)


def test_disable_policy_shape(disabled: Mesh) -> None:
    assert disabled.mode == "DISABLE"
    assert disabled.spiffe_id is None and disabled.card is None


def test_plain_push_to_disable_pull(disabled: Mesh, zctx: zmq.Context) -> None:
    pull = disabled.socket(zmq.PULL)
    address = pull.bind("tcp://127.0.0.1:0", service="jobs")
    push = zctx.socket(zmq.PUSH)
    push.connect(address)

    push.send_multipart([b"no envelope at all"])
    push.send_multipart([encode(Envelope(Kind.PUSH, 1)), b"hello"])
    msg = pull.recv(timeout=5)
    assert (msg.payload, msg.message_id) == (b"hello", 1)
    assert msg.peer == ANONYMOUS and not msg.peer.authenticated
    assert pull.stats == {f"drop.{codec_reason(b'no envelope at all')}": 1}
    assert disabled.stats["handshake.anonymous"] == 1  # the NULL handshake went through ZAP


def test_plain_dealer_to_disable_rep(disabled: Mesh, zctx: zmq.Context) -> None:
    rep = disabled.socket(zmq.REP)
    address = rep.bind("tcp://127.0.0.1:0", service="payment")
    dealer = zctx.socket(zmq.DEALER)
    dealer.connect(address)
    dealer.send_multipart([encode(Envelope(Kind.REQUEST, 7, method="echo")), b"hi"])

    msg = rep.recv(timeout=5)
    assert (msg.method, msg.payload, msg.peer) == ("echo", b"hi", ANONYMOUS)
    msg.reply(b"hi back", headers={"served-by": "disable"})
    env_b, *payload = raw_recv(dealer)
    env = decode(env_b)
    assert (env.kind, env.message_id, env.status) == (Kind.REPLY, 7, StatusCode.OK)
    assert env.headers == {"served-by": "disable"}
    assert payload == [b"hi back"]


def test_disable_req_to_plain_router(disabled: Mesh, zctx: zmq.Context) -> None:
    router = zctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    seen: list[Envelope] = []

    def answer_one() -> None:
        route, env_b, *payload = raw_recv(router)
        env = decode(env_b)
        seen.append(env)
        router.send_multipart([route, encode(Envelope(Kind.REPLY, env.message_id)), *payload])

    server = threading.Thread(target=answer_one)
    server.start()
    req = disabled.socket(zmq.REQ)
    req.connect(f"tcp://127.0.0.1:{port}")
    try:
        reply = req.request(b"ping", method="echo", timeout=5)
    finally:
        server.join(10)
    assert reply.payload == b"ping"
    assert reply.peer == ANONYMOUS  # no card, no key: nobody vouches for the server
    (env,) = seen
    assert (env.kind, env.method) == (Kind.REQUEST, "echo")
    assert env.deadline_ms > time.time() * 1000  # the mesh client still sends its deadline


def test_plain_push_cannot_reach_strict_pull(
    mesh_factory: Callable[..., Mesh], zctx: zmq.Context
) -> None:
    strict = mesh_factory(SERVER, STRICT)
    pull = strict.socket(zmq.PULL)
    address = pull.bind("tcp://127.0.0.1:0", service="jobs")
    push = zctx.socket(zmq.PUSH)
    push.connect(address)
    for i in range(5):  # queued by the plain PUSH; never delivered
        push.send_multipart([encode(Envelope(Kind.PUSH, i)), b"let me in"], zmq.NOBLOCK)

    def refusals() -> int:
        return sum(v for k, v in pull.stats.items() if k.startswith("handshake_failed."))

    # libzmq refuses a NULL peer at a CURVE listener before it asks ZAP; the socket counts it
    # (as "protocol" or "no-detail": which side notices the mechanism mismatch first is a race)
    start = time.monotonic()
    while refusals() == 0 or time.monotonic() - start < 1.0:
        assert time.monotonic() - start < 5.0, f"the refusal was never counted: {pull.stats}"
        with pytest.raises(Timeout):
            pull.recv(timeout=0.05)  # nothing arrives; waiting runs the socket's housekeeping
    assert not any(k.startswith("drop.") for k in pull.stats)  # refused before any message
    assert strict.stats.get("handshake.verified", 0) == 0
    assert strict.stats.get("handshake.anonymous", 0) == 0


def test_curve_peer_without_card_is_refused_by_strict(
    mesh_factory: Callable[..., Mesh], zctx: zmq.Context, eventually: Any
) -> None:
    strict = mesh_factory(SERVER, STRICT)
    pull = strict.socket(zmq.PULL)
    address = pull.bind("tcp://127.0.0.1:0", service="jobs")
    push = zctx.socket(zmq.PUSH)
    push.curve_serverkey = strict.curve_public
    push.curve_publickey, push.curve_secretkey = zmq.curve_keypair()
    push.connect(address)
    push.send_multipart([encode(Envelope(Kind.PUSH, 1)), b"let me in"], zmq.NOBLOCK)

    with pytest.raises(Timeout):
        pull.recv(timeout=1.0)
    stats = eventually(lambda: strict.stats if strict.stats.get("handshake.unknown-key") else None)
    assert stats["handshake.refused"] >= 1


def test_permissive_accepts_curve_peer_without_card_as_anonymous(
    mesh_factory: Callable[..., Mesh], zctx: zmq.Context
) -> None:
    permissive = mesh_factory(SERVER, PERMISSIVE)
    pull = permissive.socket(zmq.PULL)
    address = pull.bind("tcp://127.0.0.1:0", service="jobs")
    push = zctx.socket(zmq.PUSH)
    push.curve_serverkey = permissive.curve_public
    push.curve_publickey, push.curve_secretkey = zmq.curve_keypair()
    push.connect(address)
    push.send_multipart([encode(Envelope(Kind.PUSH, 5)), b"anonymous hello"])

    msg = pull.recv(timeout=5)
    assert msg.payload == b"anonymous hello"
    assert msg.peer.authenticated is False and msg.peer.spiffe_id is None
    assert permissive.stats["handshake.anonymous"] == 1
    assert permissive.stats.get("handshake.refused", 0) == 0


def test_permissive_still_names_a_peer_with_a_card(
    mesh_factory: Callable[..., Mesh], raw_peer: Any, zctx: zmq.Context
) -> None:
    permissive = mesh_factory(SERVER, PERMISSIVE)
    pull = permissive.socket(zmq.PULL)
    address = pull.bind("tcp://127.0.0.1:0", service="jobs")
    carded = raw_peer(permissive, "spiffe://example.org/ns/shop/sa/orders")
    push = carded.client(zctx.socket(zmq.PUSH), permissive.curve_public)
    push.connect(address)
    push.send_multipart([encode(Envelope(Kind.PUSH, 6)), b"named hello"])

    msg = pull.recv(timeout=5)
    assert msg.peer.authenticated
    assert str(msg.peer.spiffe_id) == "spiffe://example.org/ns/shop/sa/orders"
    assert permissive.stats["handshake.verified"] == 1

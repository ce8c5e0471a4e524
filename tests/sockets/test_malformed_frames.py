"""Random bytes and truncated or oversized envelopes from a raw pyzmq peer never crash the socket;
counters show the drops.

The raw peer is authenticated but malicious: its CURVE key has a card signed
with a real SVID of the dev CA, so it passes the STRICT handshake and talks
to the mesh socket directly, frame by frame. Each batch of garbage is
followed, on the same connection, by one valid message (the sentinel): libzmq
keeps one connection's messages in order, so when the mesh socket returns the
sentinel it has judged every frame before it. The expected drop reasons come
from the envelope codec itself (``zmeshlib.wire.decode``), which tests/wire
checks against the specification; here we check that the sockets count each
verdict under ``drop.<reason>``, answer what a REP must answer, and stay usable.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from zmeshlib import (
    Endpoint,
    Limits,
    Mesh,
    ProtocolError,
    StatusCode,
    Timeout,
    TraceContext,
)
from zmeshlib.wire import DEFAULT_LIMITS, Envelope, Kind, decode, encode

SERVER = "spiffe://example.org/ns/shop/sa/payment"
CLIENT = "spiffe://example.org/ns/shop/sa/orders"
MALLORY = "spiffe://example.org/ns/rogue/sa/mallory"

SEED = 20240611
RANDOM_FRAMES = 300

RICH = Envelope(
    Kind.REQUEST,
    0x0102030405060708,
    method="charge",
    deadline_ms=2**62,
    attempt=3,
    trace=TraceContext(bytes(range(16)), bytes(range(8)), 1, "vendor=x"),
    headers={"region": "eu", "tenant": "acme"},
    detail="why",
    policy="some-policy",
    retriable=True,
)


def envelope_verdict(frame: bytes, kind: Kind) -> tuple[str | None, bool]:
    """(the drop reason a receiver of ``kind`` gives this envelope or None, is it a codec error)."""
    try:
        env = decode(frame)
    except ProtocolError as e:
        return e.reason, True
    return (None if env.kind is kind else "kind"), False


def garbage_envelopes(kind: Kind, rng: random.Random) -> Iterator[bytes]:
    """Envelope frames no receiver of ``kind`` may accept: random, truncated, mutated, oversized."""
    rich = encode(RICH)
    fixed = encode(Envelope(kind, 1))
    candidates: list[bytes] = [
        b"",  # an empty frame
        b"\x00" * 12,  # version 0
        bytes([2]) + fixed[1:],  # an unknown version, otherwise a valid envelope
        bytes([0xFF]) + rich[1:],
        b"\x01" * (DEFAULT_LIMITS.max_envelope_bytes + 1),  # oversized
        fixed[:1] + b"\x09" + fixed[2:],  # an unknown kind
        fixed + b"\x00",  # trailing bytes after a minimal envelope
        fixed[:2] + b"\x02\x00" + fixed[4:],  # a reserved flag bit
    ]
    candidates += [rich[:n] for n in range(len(rich))]  # every truncation of a rich envelope
    for other in Kind:  # a valid envelope of every other kind
        if other is not kind:
            candidates.append(encode(Envelope(other, 2)))
    for _ in range(RANDOM_FRAMES):
        style = rng.randrange(3)
        if style == 0:  # random bytes
            frame = rng.randbytes(rng.randrange(64))
        elif style == 1:  # a plausible fixed part, random flags and body
            frame = bytes([1, int(kind)]) + rng.randbytes(rng.randrange(2, 80))
        else:  # one flipped byte in a rich envelope of the right kind
            body = bytearray(rich[:1] + bytes([int(kind)]) + rich[2:])
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
            frame = bytes(body)
        candidates.append(frame)
    for frame in candidates:
        if envelope_verdict(frame, kind)[0] is not None:  # a mutation may be valid: skip it
            yield frame


def drops(stats: dict[str, int]) -> Counter[str]:
    return Counter({k.removeprefix("drop."): v for k, v in stats.items() if k.startswith("drop.")})


def raw_recv(sock: zmq.Socket, timeout: float = 5.0) -> list[bytes]:
    """One message from a raw socket, or fail after ``timeout`` seconds."""
    if not sock.poll(int(timeout * 1000)):
        pytest.fail(f"nothing arrived on the raw {sock.type} socket within {timeout}s")
    return sock.recv_multipart()


def pump_until_answered(rep: Any, raw: zmq.Socket, timeout: float = 5.0) -> list[bytes]:
    """Let ``rep`` judge what arrives (delivering nothing) until ``raw`` has an answer."""
    deadline = time.monotonic() + timeout
    while not raw.poll(0):
        if time.monotonic() >= deadline:
            pytest.fail(f"no answer within {timeout}s")
        with pytest.raises(Timeout):
            rep.recv(timeout=0.02)
    return raw.recv_multipart()


@pytest.fixture
def server_mesh(mesh_factory: Callable[..., Mesh]) -> Mesh:
    return mesh_factory(SERVER)


# -- REQ/REP ----------------------------------------------------------------------------


def test_garbage_to_rep_is_dropped_counted_and_answered(
    server_mesh: Mesh, mesh_factory: Callable[..., Mesh], raw_peer: Any, zctx: zmq.Context
) -> None:
    rep = server_mesh.socket(zmq.REP)
    address = rep.bind("tcp://127.0.0.1:0", service="payment")
    mallory = raw_peer(server_mesh, MALLORY)
    dealer = mallory.client(zctx.socket(zmq.DEALER), server_mesh.curve_public)
    dealer.connect(address)

    rng = random.Random(SEED)
    expected: Counter[str] = Counter()
    answered = 0
    for frame in garbage_envelopes(Kind.REQUEST, rng):
        reason, codec_error = envelope_verdict(frame, Kind.REQUEST)
        expected[reason] += 1  # type: ignore[index]
        answered += codec_error  # a frame that is no envelope gets INVALID_ARGUMENT
        extra = [rng.randbytes(rng.randrange(8)) for _ in range(rng.randrange(3))]
        dealer.send_multipart([frame, *extra])
    sentinel = encode(Envelope(Kind.REQUEST, 42, method="sentinel"))
    dealer.send_multipart([sentinel, b"last"])

    msg = rep.recv(timeout=10)
    assert (msg.method, msg.payload, msg.message_id) == ("sentinel", b"last", 42)
    assert str(msg.peer.spiffe_id) == MALLORY  # the handshake's word, not the message's
    msg.reply(b"done")

    assert drops(rep.stats) == expected
    assert expected["too-large"] == 1 and expected["version"] >= 3 and expected["kind"] >= 3
    assert expected["truncated"] > 10 and expected["empty"] >= 1

    errors = []
    while True:
        reply = raw_recv(dealer)
        env = decode(reply[0])
        assert env.kind is Kind.REPLY
        if env.message_id == 42:
            assert (env.status, reply[1:]) == (StatusCode.OK, [b"done"])
            break
        errors.append(env)
    assert len(errors) == answered
    for env in errors:
        assert (env.message_id, env.status) == (0, StatusCode.INVALID_ARGUMENT)
        assert env.detail.startswith("protocol error: invalid envelope")

    # the REP still serves a well-behaved mesh client
    cli = mesh_factory(CLIENT).socket(zmq.REQ)
    cli.connect(service="payment")
    server = threading.Thread(
        target=rep.serve, args=(lambda m: b"ok " + m.payload,), kwargs={"max_requests": 1}
    )
    server.start()
    try:
        reply = cli.request(b"charge", timeout=5)
    finally:
        server.join(10)
    assert reply.payload == b"ok charge"
    assert str(reply.peer.spiffe_id) == SERVER


def test_rep_names_the_codec_reason_in_its_error_reply(
    server_mesh: Mesh, raw_peer: Any, zctx: zmq.Context
) -> None:
    rep = server_mesh.socket(zmq.REP)
    address = rep.bind("tcp://127.0.0.1:0", service="payment")
    mallory = raw_peer(server_mesh, MALLORY)
    dealer = mallory.client(zctx.socket(zmq.DEALER), server_mesh.curve_public)
    dealer.connect(address)
    oversized = bytes([1, 2]) + b"\x00" * DEFAULT_LIMITS.max_envelope_bytes
    for frame, reason in [
        (oversized, "too-large"),
        (bytes([7]) + encode(Envelope(Kind.REQUEST, 5))[1:], "version"),
        (encode(RICH)[:20], "truncated"),
    ]:
        dealer.send_multipart([frame])
        (reply,) = pump_until_answered(rep, dealer)
        env = decode(reply)
        assert env.status is StatusCode.INVALID_ARGUMENT
        assert f"[{reason}]" in env.detail
        assert rep.stats[f"drop.{reason}"] == 1


def test_reply_kind_sent_to_rep_is_dropped_without_answer(
    server_mesh: Mesh, raw_peer: Any, zctx: zmq.Context
) -> None:
    rep = server_mesh.socket(zmq.REP)
    address = rep.bind("tcp://127.0.0.1:0", service="payment")
    dealer = raw_peer(server_mesh, MALLORY).client(
        zctx.socket(zmq.DEALER), server_mesh.curve_public
    )
    dealer.connect(address)
    dealer.send_multipart([encode(Envelope(Kind.REPLY, 9, status=StatusCode.OK)), b"forged"])
    dealer.send_multipart([encode(Envelope(Kind.REQUEST, 10, method="real")), b"x"])
    msg = rep.recv(timeout=5)
    assert msg.message_id == 10
    assert rep.stats["drop.kind"] == 1
    msg.reply(b"y")
    reply = raw_recv(dealer)  # the first thing back answers the REQUEST: the REPLY got nothing
    assert decode(reply[0]).message_id == 10


# -- PUSH/PULL ----------------------------------------------------------------------------


def test_garbage_to_pull_is_dropped_and_counted(
    server_mesh: Mesh, mesh_factory: Callable[..., Mesh], raw_peer: Any, zctx: zmq.Context
) -> None:
    pull = server_mesh.socket(zmq.PULL)
    address = pull.bind("tcp://127.0.0.1:0", service="jobs")
    push = raw_peer(server_mesh, MALLORY).client(zctx.socket(zmq.PUSH), server_mesh.curve_public)
    push.connect(address)

    rng = random.Random(SEED + 1)
    expected: Counter[str] = Counter()
    for frame in garbage_envelopes(Kind.PUSH, rng):
        expected[envelope_verdict(frame, Kind.PUSH)[0]] += 1  # type: ignore[index]
        push.send_multipart([frame, rng.randbytes(rng.randrange(16))])
    push.send_multipart([encode(Envelope(Kind.PUSH, 77)), b"sentinel"])

    msg = pull.recv(timeout=10)
    assert (msg.payload, msg.message_id) == (b"sentinel", 77)
    assert str(msg.peer.spiffe_id) == MALLORY
    assert drops(pull.stats) == expected
    with pytest.raises(Timeout):  # nothing valid was left behind
        pull.recv(timeout=0.05)

    good = mesh_factory(CLIENT).socket(zmq.PUSH)
    good.connect(service="jobs")
    good.send(b"work", timeout=5)
    msg = pull.recv(timeout=5)
    assert (msg.payload, str(msg.peer.spiffe_id)) == (b"work", CLIENT)


# -- PUB/SUB ------------------------------------------------------------------------------


def publication(topic: bytes, envelope: bytes, *payload: bytes) -> list[bytes]:
    """A publication as docs/protocol.md frames it: ``[topic NUL envelope][payload...]``."""
    return [topic + b"\0" + envelope, *payload]


def publication_verdict(frames: list[bytes]) -> str | None:
    """The drop reason a SUB gives a publication (docs/protocol.md), or None if it is valid."""
    topic, nul, envelope = frames[0].partition(b"\0")
    if not nul:
        return "malformed"
    reason, codec_error = envelope_verdict(envelope, Kind.PUBLISH)
    if not codec_error:  # the envelope decodes: the topic is checked before the kind
        try:
            topic.decode("utf-8")
        except UnicodeDecodeError:
            return "utf8"
    return reason


def test_garbage_publications_are_dropped_and_a_valid_one_delivered(
    mesh_factory: Callable[..., Mesh], raw_peer: Any, zctx: zmq.Context
) -> None:
    sub_mesh = mesh_factory(CLIENT)
    keypair = zmq.curve_keypair()
    xpub = zctx.socket(zmq.XPUB)
    xpub.curve_server = True  # before bind: a listener keeps the options it was bound with
    xpub.curve_publickey, xpub.curve_secretkey = keypair
    port = xpub.bind_to_random_port("tcp://127.0.0.1")
    address = f"tcp://127.0.0.1:{port}"
    raw_peer(sub_mesh, MALLORY, endpoints=(Endpoint(address, "PUB", "news"),), keypair=keypair)

    sub = sub_mesh.socket(zmq.SUB)
    sub.connect(service="news")
    sub.subscribe("t.")
    assert raw_recv(xpub) == [b"\x01t."]  # the subscription arrived: no slow joiner below

    rng = random.Random(SEED + 2)
    expected: Counter[str] = Counter()
    batches: list[list[bytes]] = [
        [b"t.only-a-topic"],
        [b"t.no-nul", encode(Envelope(Kind.PUBLISH, 1))],  # the old two-frame layout
        publication(b"t.\xff\xfe", encode(Envelope(Kind.PUBLISH, 1))),
        publication(b"t.empty", b""),
    ]
    batches += [publication(b"t.x", frame, b"p") for frame in garbage_envelopes(Kind.PUBLISH, rng)]
    batches += [
        publication(b"t." + rng.randbytes(4), frame)
        for frame in garbage_envelopes(Kind.PUBLISH, rng)
    ]
    for frames in batches:
        reason = publication_verdict(frames)
        if reason is None:
            continue
        expected[reason] += 1
        xpub.send_multipart(frames)
    xpub.send_multipart(publication(b"t.ok", encode(Envelope(Kind.PUBLISH, 99)), b"valid"))

    msg = sub.recv(timeout=10)
    assert (msg.topic, msg.payload, msg.message_id) == ("t.ok", b"valid", 99)
    assert str(msg.peer.spiffe_id) == MALLORY  # from the card the SUB dialled
    assert drops(sub.stats) == expected
    assert expected["malformed"] == 2 and expected["utf8"] >= 1 and expected["empty"] >= 1


# -- max_message_bytes -----------------------------------------------------------------------

SMALL = Limits(max_message_bytes=1000)


def test_oversized_payload_is_refused_on_send(mesh_factory: Callable[..., Mesh]) -> None:
    server = mesh_factory(SERVER, limits=SMALL)
    client = mesh_factory(CLIENT, limits=SMALL)
    pub = server.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:0", service="news")
    pull = server.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0", service="jobs")
    rep = server.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="payment")
    push = client.socket(zmq.PUSH)
    push.connect(service="jobs")
    req = client.socket(zmq.REQ)
    req.connect(service="payment")

    big = b"x" * 1001
    split = [b"x" * 500, b"x" * 501]  # the limit is on the whole message, not one frame
    for send in (
        lambda p: pub.send(p, topic="t.x"),
        lambda p: push.send(p, timeout=1),
        lambda p: req.request(p, timeout=1),
    ):
        for payload in (big, split):
            with pytest.raises(ProtocolError) as info:
                send(payload)
            assert info.value.reason == "too-large"
    push.send(b"x" * 1000, timeout=5)  # exactly at the limit is fine
    assert len(pull.recv(timeout=5).payload) == 1000


def test_oversized_payload_is_dropped_on_receive(
    mesh_factory: Callable[..., Mesh], raw_peer: Any, zctx: zmq.Context
) -> None:
    server = mesh_factory(SERVER, limits=SMALL)
    big_sender = mesh_factory(CLIENT)  # default limits: it may send what the server refuses
    pull = server.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0", service="jobs")
    push = big_sender.socket(zmq.PUSH)
    push.connect(service="jobs")
    push.send([b"x" * 600, b"x" * 600], timeout=5)
    push.send(b"small", timeout=5)
    msg = pull.recv(timeout=5)
    assert msg.payload == b"small"
    assert pull.stats["drop.too-large"] == 1

    rep = server.socket(zmq.REP)
    address = rep.bind("tcp://127.0.0.1:0", service="payment")
    dealer = raw_peer(server, MALLORY).client(zctx.socket(zmq.DEALER), server.curve_public)
    dealer.connect(address)
    dealer.send_multipart([encode(Envelope(Kind.REQUEST, 3, method="big")), b"y" * 1001])
    dealer.send_multipart([encode(Envelope(Kind.REQUEST, 4, method="small")), b"y"])
    msg = rep.recv(timeout=5)
    assert msg.method == "small"
    assert rep.stats["drop.too-large"] == 1
    env = decode(raw_recv(dealer)[0])
    assert (env.message_id, env.status) == (3, StatusCode.RESOURCE_EXHAUSTED)


# -- a malicious server ------------------------------------------------------------------------


def test_req_ignores_garbage_replies_from_an_authenticated_server(
    mesh_factory: Callable[..., Mesh], raw_peer: Any, zctx: zmq.Context
) -> None:
    client = mesh_factory(CLIENT)
    keypair = zmq.curve_keypair()
    router = zctx.socket(zmq.ROUTER)
    router.curve_server = True
    router.curve_publickey, router.curve_secretkey = keypair
    address = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
    raw_peer(client, MALLORY, endpoints=(Endpoint(address, "REP", "payment"),), keypair=keypair)

    rng = random.Random(SEED + 3)
    garbage = list(garbage_envelopes(Kind.REPLY, rng))
    expected = Counter(envelope_verdict(frame, Kind.REPLY)[0] for frame in garbage)

    def serve_badly() -> None:
        route, env_b, *_ = raw_recv(router)
        asked = decode(env_b).message_id
        for frame in garbage:
            router.send_multipart([route, frame, b"junk"])
        router.send_multipart([route, encode(Envelope(Kind.REPLY, asked + 1)), b"not yours"])
        router.send_multipart([route, encode(Envelope(Kind.REPLY, asked)), b"real"])

    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    server = threading.Thread(target=serve_badly)
    server.start()
    try:
        reply = req.request(b"q", timeout=10)
    finally:
        server.join(10)
    assert (reply.payload, str(reply.peer.spiffe_id)) == (b"real", MALLORY)
    assert drops(req.stats) == expected
    assert req.stats["late_replies"] == 1  # a well-formed reply to no pending request


def test_malformed_request_never_raises_with_small_envelope_limit(
    mesh_factory: Callable[..., Mesh], raw_peer: Any, zctx: zmq.Context
) -> None:
    server = mesh_factory(SERVER, limits=Limits(max_envelope_bytes=64))
    rep = server.socket(zmq.REP)
    address = rep.bind("tcp://127.0.0.1:0", service="payment")
    dealer = raw_peer(server, MALLORY).client(zctx.socket(zmq.DEALER), server.curve_public)
    dealer.connect(address)
    dealer.send_multipart([b"\x07 not an envelope"])
    dealer.send_multipart([encode(Envelope(Kind.REQUEST, 8, method="ok")), b"x"])
    msg = rep.recv(timeout=5)
    assert msg.message_id == 8
    assert rep.stats["drop.version"] == 1
    env = decode(raw_recv(dealer)[0])  # the error reply still goes out, if without its detail
    assert (env.message_id, env.status) == (0, StatusCode.INVALID_ARGUMENT)

"""The frame mover: both implementations, one contract, on real sockets.

The compiled one is built from ``_frames.c`` at install time when there is a
C compiler; the pure-Python one always exists. Every test here runs against
both, so the sockets behave the same whichever is in use.
"""

from __future__ import annotations

import pytest
import zmq

from zmeshlib.sockets import frames as frames_module
from zmeshlib.sockets.frames import py_recv_message, py_send_message

IMPLEMENTATIONS = {"python": (py_recv_message, py_send_message)}
if frames_module.COMPILED:
    IMPLEMENTATIONS["compiled"] = (frames_module.recv_message, frames_module.send_message)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def mover(request):
    return IMPLEMENTATIONS[request.param]


@pytest.fixture
def pipe(zctx):
    """A connected PAIR of sockets over inproc, the receiver with a short RCVTIMEO."""
    a, b = zctx.socket(zmq.PAIR), zctx.socket(zmq.PAIR)
    a.bind("inproc://frames-test")
    b.connect("inproc://frames-test")
    b.rcvtimeo = 50
    yield a, b
    a.close(0)
    b.close(0)


def test_the_compiled_mover_is_in_use_where_it_can_be_built(c_toolchain, monkeypatch):
    monkeypatch.delenv("ZMESHLIB_PURE_PYTHON", raising=False)
    assert frames_module._compiled_pair() is not None, "a C compiler is present, but no mover"


@pytest.mark.parametrize(
    "message",
    [
        [b"one"],
        [b"a", b"", b"c"],
        [b""],
        [b"x" * 100_000, b"y"],
        [bytes(range(256))] * 7,
        *([b"%d" % i for i in range(n)] for n in (8, 9, 30)),  # around the compiled one's 8
    ],
)
def test_a_message_arrives_whole_and_in_order(mover, pipe, message):
    recv, send = mover
    a, b = pipe
    assert send(a, list(message), 0) is True
    got = recv(b, 0, False)
    assert got == (tuple(message), None) and type(got[0]) is tuple
    assert recv(b, zmq.NOBLOCK, False) is None  # nothing else was sent


def test_both_movers_speak_to_each_other(pipe):
    a, b = pipe
    for _, send in IMPLEMENTATIONS.values():
        for recv, _ in IMPLEMENTATIONS.values():
            send(a, [b"k", b"v"], 0)
            assert recv(b, 0, True) == ((b"k", b"v"), None)  # inproc: no User-Id


def test_an_empty_socket_gives_none_with_noblock_and_after_rcvtimeo(mover, pipe):
    recv, _ = mover
    _, b = pipe
    assert recv(b, zmq.NOBLOCK, False) is None
    assert recv(b, 0, True) is None  # RCVTIMEO (50 ms) ran out


def test_a_full_queue_sends_nothing_and_says_so(mover, zctx):
    _, send = mover
    sender = zctx.socket(zmq.PUSH)
    sender.sndhwm = 1
    sender.bind("inproc://frames-hwm")  # no peer: the queue never drains
    receiver = zctx.socket(zmq.PULL)
    receiver.rcvhwm = 1
    receiver.connect("inproc://frames-hwm")
    accepted = [send(sender, [b"m", b"%d" % i], zmq.NOBLOCK) for i in range(50)]
    assert accepted[0] is True
    assert accepted[-1] is False  # bounded: the high-water marks are reached
    # what was accepted arrives whole; nothing half-sent follows it
    recv, _ = mover
    got = []
    while (message := recv(receiver, zmq.NOBLOCK, False)) is not None:
        got.append(message[0])
    assert got and all(m[0] == b"m" and len(m) == 2 for m in got)
    assert len(got) == accepted.count(True)


def test_a_closed_socket_raises_zmq_error(mover, zctx):
    recv, send = mover
    sock = zctx.socket(zmq.PAIR)
    sock.close()
    with pytest.raises(zmq.ZMQError):
        recv(sock, zmq.NOBLOCK, False)
    with pytest.raises(zmq.ZMQError):
        send(sock, [b"x"], zmq.NOBLOCK)


def test_libzmq_errors_are_zmq_errors_with_their_errno(mover, zctx):
    recv, _ = mover
    pub = zctx.socket(zmq.PUB)
    with pytest.raises(zmq.ZMQError) as info:
        recv(pub, zmq.NOBLOCK, False)  # a PUB cannot receive
    assert info.value.errno == zmq.ENOTSUP
    pub.close(0)


def test_the_user_id_of_an_authenticated_connection(mover, zctx):
    """A ZAP handler sets the User-Id; the mover reads it from the first frame."""
    recv, send = mover
    zap = zctx.socket(zmq.REP)
    zap.bind("inproc://zeromq.zap.01")
    server = zctx.socket(zmq.ROUTER)
    server.zap_domain = b"test"
    server.rcvtimeo = 5000
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client = zctx.socket(zmq.DEALER)
    client.connect(f"tcp://127.0.0.1:{port}")
    send(client, [b"hello", b"world"], 0)
    request = zap.recv_multipart()  # version, id, domain, address, routing id, mechanism
    zap.send_multipart([b"1.0", request[1], b"200", b"OK", b"spiffe://example.org/a", b""])
    got = recv(server, 0, True)
    assert got is not None
    message, user_id = got
    assert message[1:] == (b"hello", b"world")  # after the routing id
    assert user_id == "spiffe://example.org/a"
    assert recv(server, zmq.NOBLOCK, True) is None
    send(client, [b"again"], 0)
    again = recv(server, 0, True)
    assert again is not None and again[1] == user_id
    if frames_module.COMPILED and recv is frames_module.recv_message:
        assert again[1] is user_id  # the same peer's User-Id: one str, not one per message
    for sock in (client, server, zap):
        sock.close(0)


@pytest.mark.skipif(not frames_module.COMPILED, reason="the compiled mover is not in use here")
def test_the_compiled_mover_takes_only_bytes_frames(pipe):
    """pyzmq's send takes any buffer; the compiled one insists on the bytes the cores make."""
    a, _ = pipe
    with pytest.raises(TypeError):
        frames_module.send_message(a, ["text"], 0)
    with pytest.raises(ValueError):
        frames_module.send_message(a, [], 0)
    with pytest.raises(AttributeError):
        frames_module.recv_message(object(), zmq.NOBLOCK)  # not a pyzmq socket

"""pyzmq's idioms on mesh sockets: pollers, REQ's send/recv, multipart, strings, JSON, unbind."""

from __future__ import annotations

import asyncio
import threading

import pytest
import zmq
import zmq.asyncio

import zmeshlib
import zmeshlib.asyncio
from zmeshlib import MeshError

SERVER = "spiffe://example.org/ns/shop/sa/payment"
CLIENT = "spiffe://example.org/ns/shop/sa/orders"


def _poll_until(poller: zmq.Poller, fd: int, tries: int = 100) -> bool:
    return any(dict(poller.poll(50)).get(fd) for _ in range(tries))


def test_a_sub_with_two_publishers_in_a_zmq_poller_wakes_for_either(mesh_factory):
    a, b, me = mesh_factory(SERVER), mesh_factory(SERVER), mesh_factory(CLIENT)
    pubs = [m.socket(zmq.PUB) for m in (a, b)]
    for pub in pubs:
        pub.bind("tcp://127.0.0.1:0", service="orders")
    sub = me.socket(zmq.SUB)
    sub.connect(service="orders")
    sub.subscribe("t")
    assert len(sub.upstreams) == 2
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    for i, pub in enumerate(pubs):
        got = None
        for _ in range(200):  # publish until it arrives (slow joiner)
            pub.send(b"%d" % i, topic="t")
            if _poll_until(poller, sub.fileno(), tries=1):
                try:
                    got = sub.recv(flags=zmq.NOBLOCK)
                except zmq.Again:
                    continue
                if got.payload == b"%d" % i:
                    break
        assert got is not None and got.payload == b"%d" % i
        while True:  # drain the copies sent while joining
            try:
                sub.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
    # quiet now: the descriptor is not readable (level-triggered, not a stale edge)
    assert not dict(poller.poll(100)).get(sub.fileno())


def test_an_asyncio_socket_in_a_zmq_asyncio_poller(mesh_factory):
    async def main() -> bytes:
        hub = mesh_factory(SERVER, mesh_class=zmeshlib.asyncio.Mesh)
        spoke = mesh_factory(CLIENT, mesh_class=zmeshlib.asyncio.Mesh)
        pull = hub.socket(zmq.PULL)
        pull.bind("tcp://127.0.0.1:0", service="jobs")
        push = spoke.socket(zmq.PUSH)
        push.connect(service="jobs")
        poller = zmq.asyncio.Poller()
        poller.register(pull, zmq.POLLIN)
        await push.send(b"job", timeout=5)
        for _ in range(100):
            if dict(await poller.poll(50)).get(pull.fileno()):
                try:
                    return (await pull.recv(flags=zmq.NOBLOCK)).payload
                except zmq.Again:
                    continue
        raise AssertionError("the poller never reported the job")

    assert asyncio.run(main()) == b"job"


def test_req_send_and_recv_alternate_as_on_zmq_req(mesh_factory, pair):
    rep, req = pair(mesh_factory(SERVER), mesh_factory(CLIENT), zmq.REP, zmq.REQ, "payment")
    with pytest.raises(MeshError, match="send"):
        req.recv()  # nothing sent
    req.send_string("ping", method="echo")
    with pytest.raises(MeshError, match="recv"):
        req.send(b"again")  # EFSM, as zmq.REQ
    msg = rep.recv(timeout=5)  # it was sent by send(), before any recv()
    assert (msg.method, msg.payload) == ("echo", b"ping")
    rep.send_string("pong")
    assert req.recv_string() == "pong"
    req.send_multipart([b"a", b"b"])
    assert rep.recv_multipart(timeout=5) == [b"a", b"b"]
    rep.send_multipart([b"c", b"d"])
    assert req.recv_multipart() == [b"c", b"d"]


def test_strings_and_json_that_do_not_decode_are_typed_errors(mesh_factory, pair):
    pull, push = pair(mesh_factory(SERVER), mesh_factory(CLIENT), zmq.PULL, zmq.PUSH, "jobs")
    push.send(b"\xff\xfe", timeout=5)
    with pytest.raises(zmeshlib.ProtocolError, match="not utf-8"):
        pull.recv_string(timeout=5)
    push.send(b"{not json", timeout=5)
    with pytest.raises(zmeshlib.ProtocolError, match="not JSON"):
        pull.recv_json(timeout=5)
    with pytest.raises(zmeshlib.InvalidArgument):
        push.send_json({"x": object()})
    with pytest.raises(zmeshlib.InvalidArgument):
        push.send_string(b"bytes")
    push.send_json({"n": 1}, timeout=5)
    assert pull.recv_json(timeout=5) == {"n": 1}


def test_unbind_and_disconnect(mesh_factory, eventually):
    server_mesh, client_mesh = mesh_factory(SERVER), mesh_factory(CLIENT)
    pull = server_mesh.socket(zmq.PULL)
    first = pull.bind("tcp://127.0.0.1:0", service="jobs")
    second = pull.bind("tcp://127.0.0.1:0")
    push = client_mesh.socket(zmq.PUSH)
    push.connect(service="jobs")
    assert sorted(push.upstreams) == sorted([first, second])
    pull.unbind(first)
    assert [e.address for e in server_mesh.card.endpoints] == [second]
    with pytest.raises(MeshError, match="not bound"):
        pull.unbind(first)
    client_mesh._directory.refresh()
    eventually(lambda: (push.send(b"x", timeout=1), push.upstreams == [second])[1])
    push.disconnect(service="jobs")
    assert push.upstreams == []
    with pytest.raises(MeshError, match="not connected"):
        push.disconnect(service="jobs")


def test_close_during_an_asyncio_request_ends_it_with_closed(mesh_factory):
    async def main() -> BaseException:
        server = mesh_factory(SERVER, mesh_class=zmeshlib.asyncio.Mesh)
        client = mesh_factory(CLIENT, mesh_class=zmeshlib.asyncio.Mesh)
        server.socket(zmq.REP).bind("tcp://127.0.0.1:0", service="payment")
        cli = client.socket(zmq.REQ)
        cli.connect(service="payment")
        pending = asyncio.ensure_future(cli.request(b"never answered", timeout=30))
        await asyncio.sleep(0.05)  # let it send and wait
        client.close()
        try:
            await asyncio.wait_for(pending, 5)
        except BaseException as e:
            return e
        raise AssertionError("the request did not end")

    assert isinstance(asyncio.run(main()), zmeshlib.Closed)


def test_a_thread_blocked_in_a_poller_on_a_closed_socket_is_not_crashed(mesh_factory):
    mesh = mesh_factory(SERVER)
    pull = mesh.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0", service="jobs")
    fd = pull.fileno()
    poller = zmq.Poller()
    poller.register(fd, zmq.POLLIN)
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(poller.poll(500)))
    thread.start()
    pull.close()
    thread.join(5)
    assert not thread.is_alive() and len(result) == 1


def test_push_hands_messages_only_to_pullers_whose_handshake_completed(
    mesh_factory, raw_peer, zctx, eventually
):
    """A puller whose card names a key it does not hold never completes a handshake: nothing is
    queued for it, so every message reaches the healthy puller."""
    hub, spoke = mesh_factory(SERVER), mesh_factory(CLIENT)
    healthy = hub.socket(zmq.PULL)
    healthy.bind("tcp://127.0.0.1:0", service="jobs")
    broken = zctx.socket(zmq.PULL)
    broken.curve_server = True
    broken.curve_publickey, broken.curve_secretkey = zmq.curve_keypair()  # not the card's key
    port = broken.bind_to_random_port("tcp://127.0.0.1")
    raw_peer(hub, SERVER, endpoints=(zmeshlib.Endpoint(f"tcp://127.0.0.1:{port}", "PULL", "jobs"),))
    push = spoke.socket(zmq.PUSH)
    push.connect(service="jobs")
    eventually(lambda: len(push.upstreams) == 2, what="both pullers known")
    for i in range(100):
        push.send(b"%d" % i, timeout=5)
    got = sorted(int(healthy.recv(timeout=5).payload) for _ in range(100))
    assert got == list(range(100))

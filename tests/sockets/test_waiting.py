"""How the sync sockets wait: a blocking read under RCVTIMEO on one socket, a poller on several.

The read happens inside libzmq, so these tests pin down what must hold around
it: a timeout shorter than one read is honoured and leaves the socket as it
was, a reply that comes later than its request's timeout is dropped as late
and never handed to the next request, ``poll()`` works whatever the number of
underlying sockets, and the asyncio flavour keeps libzmq's default.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import zmq

import zmeshlib
import zmeshlib.asyncio
from zmeshlib.sockets.drivers import REFRESH_INTERVAL, WAIT_MS

SERVER = "spiffe://example.org/ns/shop/sa/payment"
CLIENT = "spiffe://example.org/ns/shop/sa/orders"


def _pair(mesh_factory):
    server_mesh, client_mesh = mesh_factory(SERVER), mesh_factory(CLIENT)
    srv = server_mesh.socket(zmq.REP)
    srv.bind("tcp://127.0.0.1:0", service="payment")
    cli = client_mesh.socket(zmq.REQ)
    cli.connect(service="payment")
    return srv, cli


def test_a_timeout_shorter_than_one_read_is_honoured_and_restores_the_socket(mesh_factory):
    srv, cli = _pair(mesh_factory)
    timeout = REFRESH_INTERVAL / 4
    start = time.monotonic()
    with pytest.raises(zmeshlib.Timeout):
        cli.request(b"nobody answers", method="charge", timeout=timeout)
    assert time.monotonic() - start < timeout + 1.0  # the timeout plus slack, not a read's worth
    (dealer,) = cli.underlying()
    assert dealer.rcvtimeo == WAIT_MS  # the last short wait put the socket back
    # the request arrived with the time it had left, counted from when the server reads it
    assert srv.recv(timeout=5).payload == b"nobody answers"
    with pytest.raises(zmeshlib.Timeout):
        srv.recv(timeout=timeout)
    assert srv.underlying()[0].rcvtimeo == WAIT_MS


def test_a_reply_after_its_timeout_is_dropped_not_given_to_the_next_request(mesh_factory):
    srv, cli = _pair(mesh_factory)
    result: dict[str, object] = {}

    def slow_server() -> None:
        first = srv.recv(timeout=10)
        second = srv.recv(timeout=10)  # queued while the first was held back
        first.reply(b"late answer to " + first.payload)
        second.reply(b"answer to " + second.payload)
        result["served"] = True

    thread = threading.Thread(target=slow_server)
    thread.start()
    try:
        with pytest.raises(zmeshlib.Timeout):
            cli.request(b"first", method="charge", timeout=0.3)
        reply = cli.request(b"second", method="charge", timeout=10)
    finally:
        thread.join(15)
    assert result.get("served")
    assert reply.payload == b"answer to second"
    assert cli.stats["late_replies"] == 1


def test_poll_on_one_socket_and_on_several(mesh_factory, eventually):
    srv, cli = _pair(mesh_factory)
    assert srv.poll(timeout=0.01) is False
    worker = threading.Thread(target=lambda: cli.request(b"x", method="charge", timeout=10))
    worker.start()
    try:
        assert eventually(lambda: srv.poll(timeout=0.05), what="a request to poll for")
        msg = srv.recv(timeout=0)  # poll said so: no wait needed
        msg.reply(b"y")
    finally:
        worker.join(15)

    # a PULL both bound and connected reads from two underlying sockets: a poller
    hub, spoke = mesh_factory(SERVER), mesh_factory(CLIENT)
    pull = hub.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0", service="jobs")
    feeder = spoke.socket(zmq.PUSH)
    feeder.bind("tcp://127.0.0.1:0", service="feeder")
    pull.connect(feeder.endpoints[0])
    assert len(pull.underlying()) == 2
    assert pull.poll(timeout=0.01) is False
    feeder.send(b"job", timeout=5)
    assert eventually(lambda: pull.poll(timeout=0.05), what="a job to poll for")
    assert pull.recv(timeout=1).payload == b"job"


def test_asyncio_sockets_keep_libzmqs_default_receive_timeout(mesh_factory):
    async def main() -> bytes:
        server_mesh = mesh_factory(SERVER, mesh_class=zmeshlib.asyncio.Mesh)
        client_mesh = mesh_factory(CLIENT, mesh_class=zmeshlib.asyncio.Mesh)
        srv = server_mesh.socket(zmq.REP)
        srv.bind("tcp://127.0.0.1:0", service="payment")
        cli = client_mesh.socket(zmq.REQ)
        cli.connect(service="payment")
        assert [s.rcvtimeo for s in srv.underlying() + cli.underlying()] == [-1, -1]
        serving = asyncio.ensure_future(srv.serve(lambda m: b"ok", max_requests=1))
        reply = await cli.request(b"x", method="charge", timeout=5)
        await serving
        return reply.payload

    assert asyncio.run(main()) == b"ok"


def test_a_mesh_that_asked_for_no_endpoint_never_reads_the_registry_from_its_watcher(
    mesh_factory, eventually
):
    """A serving-only member of a large fleet must not rescan the store on every
    renewal of every other member's card, nor tick for nothing: its watcher thread
    waits on an event until a socket asks for a service."""
    server_mesh, client_mesh = mesh_factory(SERVER), mesh_factory(CLIENT)
    calls = {"server": 0, "client": 0}
    for name, mesh in (("server", server_mesh), ("client", client_mesh)):
        real = mesh.registry.changed_since

        def counting(token, real=real, name=name):
            calls[name] += 1
            return real(token)

        mesh.registry.changed_since = counting
    srv = server_mesh.socket(zmq.REP)
    srv.bind("tcp://127.0.0.1:0", service="payment")
    cli = client_mesh.socket(zmq.REQ)
    cli.connect(service="payment")
    # the client's watcher starts ticking with its first interest...
    eventually(lambda: calls["client"] >= 3, what="the client's watcher to refresh")
    # ...while in the same time the server's, which was asked for nothing, did not run once
    assert calls["server"] == 0
    assert not server_mesh._directory._first_interest.is_set()
    srv.close()
    cli.close()

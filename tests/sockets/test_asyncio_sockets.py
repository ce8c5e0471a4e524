"""zmeshlib.asyncio: the mesh sockets awaited, over real CURVE connections on 127.0.0.1.

Each test runs one event loop with ``asyncio.run`` (no pytest plugin). Both
ends of a conversation live in that one loop, so a socket operation that
blocked the loop instead of awaiting would deadlock the test (and fail it at
its deadline), and a ticker task checks the loop keeps turning while a
request waits. Every message's sender is checked against the SPIFFE ID the
handshake authenticated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

import zmeshlib.asyncio
from zmeshlib import (
    ApplicationError,
    InternalError,
    Message,
    Timeout,
    TraceContext,
    Unavailable,
)

SERVER = "spiffe://example.org/ns/shop/sa/payment"
CLIENT = "spiffe://example.org/ns/shop/sa/orders"

AsyncMeshes = Callable[[], tuple[zmeshlib.asyncio.Mesh, zmeshlib.asyncio.Mesh]]


@pytest.fixture
def meshes(mesh_factory: Callable[..., Any]) -> AsyncMeshes:
    """``meshes() -> (server mesh, client mesh)``, made inside the test's event loop."""

    def make() -> tuple[zmeshlib.asyncio.Mesh, zmeshlib.asyncio.Mesh]:
        return (
            mesh_factory(SERVER, mesh_class=zmeshlib.asyncio.Mesh),
            mesh_factory(CLIENT, mesh_class=zmeshlib.asyncio.Mesh),
        )

    return make


def sender(msg: Message) -> str:
    return str(msg.peer.spiffe_id)


async def publish_until(pub: Any, sub: Any, topic: str, payload: bytes, **kw: Any) -> Message:
    """Publish until the subscriber receives it (pub/sub slow joiner), within 5 s."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        await pub.send(payload, topic=topic, **kw)
        try:
            msg = await sub.recv(timeout=0.05)
        except Timeout:
            continue
        if msg.topic == topic and msg.payload == payload:
            return msg
    pytest.fail(f"{topic!r} never received")


def test_pub_sub(meshes: AsyncMeshes, pair: Any) -> None:
    trace = TraceContext(b"\x01" * 16, b"\x02" * 8)

    async def main() -> None:
        server, client = meshes()
        assert isinstance(server, zmeshlib.asyncio.Mesh)
        pub, sub = pair(server, client, zmq.PUB, zmq.SUB, "orders")
        sub.subscribe("orders.")
        first = await publish_until(pub, sub, "orders.created", b"o-1")
        assert sender(first) == SERVER
        # joined: the rest arrive in order, headers and trace context intact
        for i in range(5):
            await pub.send(b"o-%d" % i, topic="orders.updated", headers={"n": str(i)}, trace=trace)
        await pub.send(b"hidden", topic="payments.x")  # not subscribed: never delivered
        for i in range(5):
            msg = await sub.recv(timeout=5)
            while msg.topic == "orders.created":  # a late copy from the joining phase
                msg = await sub.recv(timeout=5)
            assert (msg.topic, msg.payload, dict(msg.headers)) == (
                "orders.updated",
                b"o-%d" % i,
                {"n": str(i)},
            )
            assert msg.trace == trace
            assert sender(msg) == SERVER
        with pytest.raises(Timeout):
            await sub.recv(timeout=0.1)

    asyncio.run(main())


def test_req_rep_with_handler_errors(meshes: AsyncMeshes, pair: Any) -> None:
    seen: list[tuple[str, str]] = []

    async def handler(msg: Message) -> bytes:
        seen.append((msg.method, sender(msg)))
        await asyncio.sleep(0)  # a real coroutine handler, awaited by serve()
        if msg.method == "boom":
            raise ValueError("the handler broke")
        if msg.method == "busy":
            raise ApplicationError("try again later", retriable=True)
        if msg.method == "refuse":
            raise ApplicationError("never", retriable=False)
        return b"echo " + msg.payload

    async def main() -> None:
        server, client = meshes()
        rep, req = pair(server, client, zmq.REP, zmq.REQ, "payment")
        serving = asyncio.create_task(rep.serve(handler, max_requests=5))

        reply = await req.request(b"hello", method="echo", timeout=5)
        assert (reply.payload, sender(reply)) == (b"echo hello", SERVER)

        with pytest.raises(InternalError) as internal:
            await req.request(b"", method="boom", timeout=5)
        assert "ValueError" in str(internal.value) and "the handler broke" in str(internal.value)

        with pytest.raises(ApplicationError) as busy:
            await req.request(b"", method="busy", timeout=5)
        assert busy.value.retriable is True
        assert "try again later" in str(busy.value)

        with pytest.raises(ApplicationError) as refused:
            await req.request(b"", method="refuse", timeout=5)
        assert refused.value.retriable is False

        reply = await req.request(b"again", method="echo", timeout=5)  # the socket survived
        assert (reply.payload, sender(reply)) == (b"echo again", SERVER)
        assert await asyncio.wait_for(serving, 5) == 5

    asyncio.run(main())
    assert seen == [(m, CLIENT) for m in ("echo", "boom", "busy", "refuse", "echo")]


def test_req_rep_recv_and_reply_by_hand(meshes: AsyncMeshes, pair: Any) -> None:
    async def main() -> None:
        server, client = meshes()
        rep, req = pair(server, client, zmq.REP, zmq.REQ, "payment")

        async def answer() -> None:
            msg = await rep.recv(timeout=5)
            assert (msg.method, msg.payload, sender(msg)) == ("status", b"#1", CLIENT)
            await rep.send(b"paid", headers={"receipt": "r1"})

        answering = asyncio.create_task(answer())
        reply = await req.request(b"#1", method="status", timeout=5)
        await answering
        assert (reply.payload, dict(reply.headers), sender(reply)) == (
            b"paid",
            {"receipt": "r1"},
            SERVER,
        )

    asyncio.run(main())


def test_concurrent_requests_on_one_socket_each_get_their_own_reply(
    meshes: AsyncMeshes, pair: Any
) -> None:
    async def main() -> None:
        server, client = meshes()
        rep, req = pair(server, client, zmq.REP, zmq.REQ, "payment")
        serving = asyncio.create_task(rep.serve(lambda m: m.payload.upper(), max_requests=8))
        words = [b"alpha", b"beta", b"gamma", b"delta", b"eps", b"zeta", b"eta", b"theta"]
        replies = await asyncio.gather(*(req.request(w, timeout=5) for w in words))
        assert [r.payload for r in replies] == [w.upper() for w in words]
        assert {sender(r) for r in replies} == {SERVER}
        assert await asyncio.wait_for(serving, 5) == 8

    asyncio.run(main())


def test_push_pull(meshes: AsyncMeshes, pair: Any) -> None:
    async def main() -> None:
        server, client = meshes()
        pull, push = pair(server, client, zmq.PULL, zmq.PUSH, "jobs")
        for i in range(20):
            await push.send(b"job %d" % i, headers={"i": str(i)}, timeout=5)
        for i in range(20):
            msg = await pull.recv(timeout=5)
            assert (msg.payload, msg.headers["i"], sender(msg)) == (b"job %d" % i, str(i), CLIENT)

    asyncio.run(main())


def test_request_timeout_keeps_the_loop_running(meshes: AsyncMeshes, pair: Any) -> None:
    async def main() -> tuple[int, float]:
        server, client = meshes()
        # bound, but nobody receives: no reply will come
        _rep, req = pair(server, client, zmq.REP, zmq.REQ, "payment")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        start = time.monotonic()
        try:
            with pytest.raises(Timeout) as info:
                await req.request(b"anyone?", method="charge", timeout=0.5)
        finally:
            ticking.cancel()
        assert "charge" in str(info.value)
        return ticks, time.monotonic() - start

    ticks, elapsed = asyncio.run(main())
    assert 0.5 <= elapsed < 3.0
    assert ticks >= 10  # the loop turned while the request waited (a blocking poll gives ~0)


def test_request_without_any_server_is_unavailable(meshes: AsyncMeshes) -> None:
    async def main() -> None:
        _, client = meshes()
        req = client.socket(zmq.REQ)
        req.connect(service="nobody-serves-this")
        with pytest.raises(Unavailable):
            await req.request(b"x", timeout=0.3)

    asyncio.run(main())


def test_async_context_manager_closes_the_mesh(ca: Any, registry_url: str) -> None:
    async def main() -> zmeshlib.asyncio.Mesh:
        async with zmeshlib.asyncio.Mesh(ca.issue(SERVER), registry=registry_url) as mesh:
            pull = mesh.socket(zmq.PULL)
            pull.bind("tcp://127.0.0.1:0", service="jobs")
            assert mesh.registry.by_service("jobs")
        return mesh

    mesh = asyncio.run(main())
    with pytest.raises(zmeshlib.MeshError):
        mesh.socket(zmq.PULL)

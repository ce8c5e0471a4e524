"""Deadlines travel: a handler's calls inherit what is left of its request's deadline."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest
import zmq

import zmeshlib
import zmeshlib.asyncio
from zmeshlib import Delivery
from zmeshlib.sockets import deadlines

A = "spiffe://example.org/ns/shop/sa/a"
B = "spiffe://example.org/ns/shop/sa/b"
C = "spiffe://example.org/ns/shop/sa/c"


@contextlib.contextmanager
def deadlines_handling(wall_deadline):
    token = deadlines.enter(wall_deadline)
    try:
        yield
    finally:
        deadlines.leave(token)


def test_remaining_is_the_shorter_of_the_timeout_and_the_inherited_deadline():
    assert deadlines.inherited() is None
    assert deadlines.remaining(5.0) == 5.0
    with deadlines_handling(time.time() + 1.0):
        left = deadlines.remaining(5.0)
        assert 0.9 < left <= 1.0
        assert deadlines.remaining(0.5) == 0.5
        with deadlines_handling(None):  # a request without a deadline: nothing inherited
            assert deadlines.remaining(5.0) == 5.0
    assert deadlines.inherited() is None


def test_contexts_of_threads_never_mix():
    seen: list[float | None] = []
    with deadlines_handling(time.time() + 1.0):
        thread = threading.Thread(target=lambda: seen.append(deadlines.inherited()))
        thread.start()
        thread.join()
    assert seen == [None]


def _chain(mesh_factory, b_spends: float):
    """a -> b -> c: b's handler spends ``b_spends`` seconds, then calls c."""
    c_mesh, b_mesh, a_mesh = mesh_factory(C), mesh_factory(B), mesh_factory(A)
    c_rep = c_mesh.socket(zmq.REP)
    c_rep.bind("tcp://127.0.0.1:0", service="c")
    c_seen: list[float] = []

    def c_handler(msg: zmeshlib.Message) -> bytes:
        c_seen.append(msg.deadline - time.time())
        return b"c"

    b_rep = b_mesh.socket(zmq.REP)
    b_rep.bind("tcp://127.0.0.1:0", service="b")
    b_to_c = b_mesh.socket(zmq.REQ)
    b_to_c.connect(service="c")
    b_errors: list[BaseException] = []

    def b_handler(msg: zmeshlib.Message) -> bytes:
        time.sleep(b_spends)  # the work b does before it calls c
        try:
            return b_to_c.request(b"x", timeout=10).payload  # its own timeout is longer
        except zmeshlib.MeshError as e:
            b_errors.append(e)
            raise

    threads = [
        threading.Thread(target=lambda: c_rep.serve(c_handler, max_requests=1)),
        threading.Thread(target=lambda: b_rep.serve(b_handler, max_requests=1)),
    ]
    for t in threads:
        t.start()
    a_to_b = a_mesh.socket(zmq.REQ)
    a_to_b.connect(service="b")
    return a_to_b, c_seen, b_errors, threads, c_rep


def test_the_callee_of_a_callee_sees_what_is_left(mesh_factory):
    a_to_b, c_seen, b_errors, threads, _ = _chain(mesh_factory, b_spends=0.15)
    try:
        assert a_to_b.request(b"go", timeout=0.6).payload == b"c"
    finally:
        for t in threads[1:]:
            t.join(10)
        threads[0].join(10)
    assert not b_errors
    (left,) = c_seen
    assert left <= 0.6 - 0.15  # c never gets more than a's deadline left after b's work


def test_a_call_whose_inherited_deadline_passed_is_not_sent(mesh_factory):
    a_to_b, c_seen, b_errors, threads, c_rep = _chain(mesh_factory, b_spends=0.4)
    with pytest.raises(zmeshlib.Timeout):
        a_to_b.request(b"go", timeout=0.3)
    threads[1].join(10)
    assert len(b_errors) == 1 and isinstance(b_errors[0], zmeshlib.Timeout)
    assert b_errors[0].delivery is Delivery.NOT_SENT
    c_rep.close()
    threads[0].join(10)
    assert c_seen == []  # c never ran it


def test_asyncio_handlers_inherit_the_deadline_in_their_task(mesh_factory):
    async def main() -> float | None:
        server = mesh_factory(B, mesh_class=zmeshlib.asyncio.Mesh)
        client = mesh_factory(A, mesh_class=zmeshlib.asyncio.Mesh)
        rep = server.socket(zmq.REP)
        rep.bind("tcp://127.0.0.1:0", service="b")
        cli = client.socket(zmq.REQ)
        cli.connect(service="b")
        seen: list[float | None] = []

        async def handler(msg: zmeshlib.Message) -> bytes:
            await asyncio.sleep(0)
            seen.append(deadlines.inherited())
            return b"ok"

        serving = asyncio.ensure_future(rep.serve(handler, max_requests=1))
        await cli.request(b"x", timeout=2.0)
        await serving
        return seen[0]

    deadline = asyncio.run(main())
    assert deadline is not None and deadline - time.monotonic() < 2.0

"""Fixtures for the mesh socket tests: a real dev CA, a shared registry directory, and meshes.

Every Mesh made through ``mesh_factory`` shares the test's ``dir://`` registry
(as workloads on one host would) and is closed at teardown, newest first.
Raw pyzmq peers get their own context (``zctx``) and, when they must pass a
STRICT handshake, a card signed with a real SVID (``raw_peer``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import zmq

from zmeshlib import Card, DevCA, Endpoint, Mesh, Message, Policy, Timeout


@pytest.fixture(scope="session")
def ca() -> DevCA:
    """The dev CA of trust domain example.org, shared by the session (key generation is slow)."""
    return DevCA.create("example.org")


@pytest.fixture(scope="session")
def ca_dir(ca: DevCA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session CA saved to a directory, for workloads in other processes."""
    directory = tmp_path_factory.mktemp("ca")
    ca.save(directory)
    return directory


@pytest.fixture
def registry_url(tmp_path: Path) -> str:
    """A fresh directory registry for one test."""
    directory = tmp_path / "registry"
    directory.mkdir()
    return f"dir://{directory}"


MeshFactory = Callable[..., Mesh]


@pytest.fixture
def mesh_factory(ca: DevCA, registry_url: str) -> Iterator[MeshFactory]:
    """``mesh_factory(spiffe_id_or_None, policy=None, ttl=3600, **kw) -> Mesh``.

    ``None`` makes a mesh without identity (DISABLE mode only). ``kw`` goes to
    the Mesh (``limits=``, ``labels=``, ``registry=``...); ``mesh_class=``
    picks another Mesh class, e.g. ``zmeshlib.asyncio.Mesh``.
    """
    made: list[Mesh] = []

    def make(
        spiffe_id: str | None,
        policy: Policy | None = None,
        ttl: float = 3600,
        *,
        mesh_class: type[Mesh] = Mesh,
        **kw: Any,
    ) -> Mesh:
        kw.setdefault("registry", registry_url)
        identity = ca.issue(spiffe_id, ttl=ttl) if spiffe_id is not None else None
        mesh = mesh_class(identity=identity, policy=policy, **kw)
        made.append(mesh)
        return mesh

    yield make
    for mesh in reversed(made):
        mesh.close()


PublishUntil = Callable[..., Message]


@pytest.fixture
def publish_until() -> PublishUntil:
    """``publish_until(pub, sub, topic="t.x", payload=b"ping", timeout=5.0) -> Message``.

    Publishes until the (already subscribed) subscriber receives that
    publication: the cure for pub/sub's slow joiner, with a deadline. Copies
    published while joining may still arrive after it returns: skip them.
    """

    def publish(
        pub: Any, sub: Any, topic: str = "t.x", payload: bytes = b"ping", timeout: float = 5.0
    ) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pub.send(payload, topic=topic)
            try:
                msg = sub.recv(timeout=0.05)
            except Timeout:
                continue
            if msg.topic == topic and msg.payload == payload:
                return msg
        pytest.fail(f"{topic!r} published for {timeout}s and never received")

    return publish


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    """A plain pyzmq context for raw peers (no ZAP handler in it), destroyed at teardown."""
    context = zmq.Context()
    # linger 0 for every socket: a raw socket collected with a message it can never deliver
    # (its handshake was refused) would otherwise hold up term() forever
    context.linger = 0
    yield context
    context.destroy(linger=0)


@attrs.frozen
class RawPeer:
    """A raw pyzmq workload: a CURVE keypair and the card that binds it to a SPIFFE ID."""

    public: bytes
    secret: bytes
    card: Card

    def client(self, sock: zmq.Socket, server_key: bytes) -> zmq.Socket:
        """Make ``sock`` a CURVE client of ``server_key`` with this peer's keys."""
        sock.curve_serverkey = server_key
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        return sock

    def server(self, sock: zmq.Socket) -> zmq.Socket:
        """Make ``sock`` a CURVE server with this peer's keys."""
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        return sock


@pytest.fixture
def raw_peer(ca: DevCA) -> Callable[..., RawPeer]:
    """``raw_peer(mesh, spiffe_id, endpoints=(), keypair=None) -> RawPeer``: card signed, published.

    The card goes to ``mesh.registry``, the store every mesh of the test shares.
    Pass ``keypair`` (from ``zmq.curve_keypair()``) when a socket must be a
    CURVE server before its address, which the card lists, is known.
    """

    def make(
        mesh: Mesh,
        spiffe_id: str,
        endpoints: tuple[Endpoint, ...] = (),
        keypair: tuple[bytes, bytes] | None = None,
    ) -> RawPeer:
        public, secret = keypair if keypair is not None else zmq.curve_keypair()
        card = Card.sign(ca.issue_svid(spiffe_id), public, curve_secret=secret, endpoints=endpoints)
        mesh.registry.publish(card)
        return RawPeer(public, secret, card)

    return make


def bind_and_connect(
    server: Mesh, client: Mesh, server_kind: int, client_kind: int, service: str
) -> tuple[Any, Any]:
    """A socket bound on 127.0.0.1 for ``service`` and one connected to it by service name."""
    bound = server.socket(server_kind)
    bound.bind("tcp://127.0.0.1:0", service=service)
    connected = client.socket(client_kind)
    connected.connect(service=service)
    return bound, connected


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {timeout}s: {what or predicate}")
        time.sleep(0.005)


@pytest.fixture
def pair() -> Callable[..., tuple[Any, Any]]:
    """``pair(server_mesh, client_mesh, zmq.REP, zmq.REQ, "service") -> (bound, connected)``."""
    return bind_and_connect


@pytest.fixture
def eventually() -> Callable[..., Any]:
    """``eventually(predicate, timeout=5.0, what="")``: poll with a deadline, never a bare sleep."""
    return wait_for

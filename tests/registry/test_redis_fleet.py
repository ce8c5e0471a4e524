"""A fleet on a redis:// registry: workloads in separate OS processes find each other through
a real redis-server and talk in STRICT mode; a SIGKILLed server leaves lookups within its
lease; Redis restarted empty under running workloads is recovered from without restarting
them. The server is tests/sockets/_worker.py in a child process; the client is this one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import zmeshlib
from zmeshlib import DevCA, Mesh, Policy, RegistryError

from .conftest import eventually

pytestmark = pytest.mark.slow

WORKER = Path(__file__).parents[1] / "sockets" / "_worker.py"
PAYMENT = "spiffe://example.org/ns/shop/sa/payment"
CLIENT = "spiffe://example.org/ns/shop/sa/checkout"
POLICY = {
    "peer_authentication": {"mode": "STRICT"},
    "services": {"payment": {"identities": ["example.org/ns/shop/sa/payment"]}},
}


class Server:
    """A REP workload serving ``payment`` in a child process (``_worker.py rep``)."""

    def __init__(self, ca_dir: Path, registry: str, policy_file: Path) -> None:
        env = dict(os.environ, ZMESH_POLICY=str(policy_file))
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "rep", str(ca_dir), registry, PAYMENT, "payment"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        eventually(lambda: any(line.startswith("READY") for line in self.lines), "READY", 30)

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def lookup(mesh: Mesh) -> list[str]:
    """The SPIFFE IDs ``payment`` resolves to now ([] while the registry cannot be read)."""
    try:
        return [str(c.spiffe_id) for c in mesh.registry.by_service("payment", kind="REP")]
    except RegistryError:
        return []


def readable(mesh: Mesh) -> bool:
    try:
        mesh.registry.by_service("payment")
    except RegistryError:
        return False
    return True


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Any]]:
    """``fleet("server", url)`` starts a Server, ``fleet("client", url)`` a Mesh here."""
    ca = DevCA.create("example.org")
    ca.save(tmp_path / "ca")
    policy_file = tmp_path / "mesh.json"
    policy_file.write_text(json.dumps(POLICY))
    servers: list[Server] = []
    meshes: list[Mesh] = []

    def make(role: str, url: str = redis_url) -> Any:
        if role == "server":
            servers.append(Server(tmp_path / "ca", url, policy_file))
            return servers[-1]
        mesh = Mesh(identity=ca.issue(CLIENT), policy=Policy.from_dict(POLICY), registry=url)
        meshes.append(mesh)
        return mesh

    yield make
    for mesh in meshes:
        mesh.close()
    codes = [server.stop() for server in servers]
    assert all(code in (0, -9) for code in codes), codes


def test_a_client_and_a_server_in_two_processes_meet_through_redis_in_strict_mode(fleet):
    fleet("server")
    client = fleet("client")
    assert client.mode == "STRICT"
    assert lookup(client) == [PAYMENT]
    cli = client.socket(zmq.REQ)
    cli.connect(service="payment")
    for i in range(5):
        reply = cli.request(b"charge %d" % i, method="charge", timeout=5)
        assert reply.payload == f"charge {i} from {CLIENT}".encode()  # it authenticated us
        assert str(reply.peer.spiffe_id) == PAYMENT  # and we it


def test_a_sigkilled_servers_card_leaves_lookups_within_its_lease(fleet, redis_url):
    leased = redis_url + "?lease=2s"
    server = fleet("server", leased)
    client = fleet("client", leased)
    assert lookup(client) == [PAYMENT]
    server.proc.kill()  # no goodbye: its card stays in Redis until its TTL
    server.proc.wait()
    killed = time.monotonic()
    eventually(lambda: not lookup(client), "the killed server's card gone", timeout=2 + 2)
    print(f"\nthe killed server's card left lookups {time.monotonic() - killed:.2f}s after SIGKILL")
    with pytest.raises(zmeshlib.Unavailable):
        cli = client.socket(zmq.REQ)
        cli.connect(service="payment")
        cli.request(b"late", timeout=0.5)


def test_workloads_recover_from_a_redis_restarted_empty_without_restarting(
    fleet, redis_server, redis_url
):
    server = fleet("server")
    client = fleet("client")
    cli = client.socket(zmq.REQ)
    cli.connect(service="payment")
    assert cli.request(b"before", timeout=5).payload.startswith(b"before from")
    redis_server.stop()
    eventually(lambda: not readable(client), "the client's registry sees Redis gone")
    # while Redis is away, the established connection goes on serving, and a new one to a
    # server already known is accepted (its ZAP handler knows our card already)
    assert cli.request(b"during", timeout=5).payload.startswith(b"during from")
    other = client.socket(zmq.REQ)
    other.connect(service="payment")
    assert other.request(b"new", timeout=5).payload == f"new from {CLIENT}".encode()
    redis_server.restart()  # empty, same port
    restarted = time.monotonic()
    eventually(lambda: lookup(client) == [PAYMENT], "the server's card back in Redis")
    recovered = time.monotonic() - restarted
    # a newcomer's card is published now; the server's ZAP handler finds it in the new Redis
    newcomer = fleet("client")
    fresh = newcomer.socket(zmq.REQ)
    fresh.connect(service="payment")
    assert fresh.request(b"after", timeout=5).payload == f"after from {CLIENT}".encode()
    assert cli.request(b"still", timeout=5).payload.startswith(b"still from")
    assert server.proc.poll() is None
    print(f"\nlookups found the server again {recovered:.2f}s after Redis restarted empty")

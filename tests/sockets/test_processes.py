"""Mesh sockets across OS processes, in STRICT mode, with real certificates.

The other side of each exchange is tests/sockets/_worker.py in a child
process sharing the dev CA directory and a dir:// registry.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

import zmeshlib

WORKER = Path(__file__).with_name("_worker.py")
TD = "example.org"
PAYMENT = f"spiffe://{TD}/ns/shop/sa/payment"
ORDERS = f"spiffe://{TD}/ns/shop/sa/orders"
CLIENT = f"spiffe://{TD}/ns/shop/sa/client"

pytestmark = pytest.mark.slow


class Worker:
    """A child workload; every line it prints is kept in ``seen``."""

    def __init__(
        self,
        role: str,
        ca_dir: Path,
        registry: str,
        spiffe_id: str,
        service: str,
        port: int = 0,
        policy: Path | None = None,
    ):
        env = dict(os.environ)
        if policy is not None:
            env["ZMESH_POLICY"] = str(policy)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                role,
                str(ca_dir),
                registry,
                spiffe_id,
                service,
                str(port),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.seen: list[str] = []
        self._cursor = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.expect("READY", timeout=20)

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.seen.append(line.rstrip("\n"))

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """The next line (after the last one expected) that starts with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor < len(self.seen):
                line = self.seen[self._cursor]
                self._cursor += 1
                if line.startswith(prefix):
                    return line
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"worker printed no line starting with {prefix!r} in {timeout}s"
                )
            time.sleep(0.005)

    def count(self, prefix: str) -> int:
        return sum(1 for line in list(self.seen) if line.startswith(prefix))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def crash(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def workers():
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


@pytest.fixture
def client_mesh(mesh_factory):
    return mesh_factory(CLIENT)


def test_request_reply_across_processes(ca_dir, registry_url, workers, client_mesh):
    workers.append(Worker("rep", ca_dir, registry_url, PAYMENT, "payment"))
    cli = client_mesh.socket(zmq.REQ)
    cli.connect(service="payment")
    for i in range(20):
        rep = cli.request(b"charge %d" % i, method="charge", timeout=5)
        # the server saw our SPIFFE ID; we see the server's
        assert rep.payload == f"charge {i} from {CLIENT}".encode()
        assert str(rep.peer.spiffe_id) == PAYMENT


def test_pub_sub_across_processes_both_directions(ca_dir, registry_url, workers, client_mesh):
    workers.append(Worker("pub", ca_dir, registry_url, ORDERS, "orders"))
    sub = client_mesh.socket(zmq.SUB)
    sub.connect(service="orders")
    sub.subscribe("orders.")
    for _ in range(20):
        msg = sub.recv(timeout=10)
        assert msg.topic == "orders.event"
        assert str(msg.peer.spiffe_id) == ORDERS

    # and the other way round: our PUB, the child's SUB reports our identity
    pub = client_mesh.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:0", service="audit")
    listener = Worker("sub", ca_dir, registry_url, ORDERS, "audit")
    workers.append(listener)
    deadline = time.monotonic() + 15
    while not listener.count("GOT"):
        assert time.monotonic() < deadline, "the child subscriber received nothing"
        pub.send(b"x", topic="audit.event")
        time.sleep(0.005)  # publishing pace, not a wait for an outcome
    assert listener.expect("GOT") == f"GOT audit.event {CLIENT}"


def test_push_pull_across_processes(ca_dir, registry_url, workers, client_mesh):
    puller = Worker("pull", ca_dir, registry_url, ORDERS, "jobs")
    workers.append(puller)
    push = client_mesh.socket(zmq.PUSH)
    push.connect(service="jobs")
    for i in range(5):
        push.send(b"job-%d" % i, timeout=5)
    for i in range(5):
        assert puller.expect("GOT", timeout=10) == f"GOT job-{i} {CLIENT}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_server_times_out_and_restart_recovers(ca_dir, registry_url, workers, client_mesh):
    port = _free_port()
    server = Worker("rep", ca_dir, registry_url, PAYMENT, "payment", port)
    workers.append(server)
    cli = client_mesh.socket(zmq.REQ)
    cli.connect(service="payment")
    assert cli.request(b"a", method="charge", timeout=5).payload.startswith(b"a from")

    server.crash()  # no goodbye: its card stays in the registry, still valid
    timeout = 0.5
    for _ in range(3):
        start = time.monotonic()
        # sent before the loss was noticed (no reply: Timeout), or never handed over
        with pytest.raises((zmeshlib.Timeout, zmeshlib.Unavailable)) as err:
            cli.request(b"lost", method="charge", timeout=timeout)
        assert err.value.delivery in (zmeshlib.Delivery.UNKNOWN, zmeshlib.Delivery.NOT_SENT)
        assert time.monotonic() - start < timeout + 1.0  # the timeout plus small slack, not a hang

    # a new process, a new CURVE key, the same address: the client follows the new card
    workers.append(Worker("rep", ca_dir, registry_url, PAYMENT, "payment", port))
    for i in range(1000):
        assert cli.request(b"%d" % i, method="charge", timeout=5).payload == b"%d from %s" % (
            i,
            CLIENT.encode(),
        )
    assert cli.stats.get("late_replies", 0) == 0


AUTHZ_POLICY = """
version: 1
authorization:
  - name: deny-rogue-namespace
    action: DENY
    rules:
      - from: {namespaces: [rogue]}
        to: {call: ["refund"]}
  - name: shop-reads-payments
    selector: {services: [payments]}
    action: ALLOW
    rules:
      - from: {principals: ["example.org/ns/shop/*"]}
        to: {subscribe: ["payments.*"]}
      - from: {principals: ["example.org/ns/shop/sa/payment"]}
        to: {publish: ["payments.*"]}
  - name: orders-writers
    selector: {services: [orders]}
    action: ALLOW
    rules:
      - from: {principals: ["example.org/ns/shop/sa/orders"]}
        to: {publish: ["orders.*"]}
      - from: {namespaces: [shop]}
        to: {subscribe: ["orders.*"]}
  - name: payment-callers
    selector: {services: [payment]}
    action: ALLOW
    rules:
      - from: {namespaces: [shop, rogue]}
        to: {call: ["charge", "refund"]}
"""


def test_rogue_workload_is_contained_across_processes(
    ca_dir, registry_url, workers, tmp_path, mesh_factory
):
    policy_file = tmp_path / "mesh.yaml"
    policy_file.write_text(AUTHZ_POLICY)
    policy = zmeshlib.Policy.load(policy_file)
    workers.append(Worker("pub", ca_dir, registry_url, PAYMENT, "payments", policy=policy_file))
    workers.append(Worker("rep", ca_dir, registry_url, PAYMENT, "payment", policy=policy_file))
    shop = mesh_factory(CLIENT, policy=policy)
    orders = mesh_factory(ORDERS, policy=policy)
    rogue = Worker("rogue", ca_dir, registry_url, "spiffe://example.org/ns/rogue/sa/evil", "-")
    workers.append(rogue)

    # the call: denied at the server, naming the policy (not a timeout)
    assert rogue.seen[0] == "CALL DENIED deny-rogue-namespace"
    cli = shop.socket(zmq.REQ)
    cli.connect(service="payment")
    assert cli.request(b"3", method="refund", timeout=5).payload == f"3 from {CLIENT}".encode()

    # the rogue's forged orders are dropped by subscribers; the real orders publisher's arrive
    legit_pub = orders.socket(zmq.PUB)
    legit_pub.bind("tcp://127.0.0.1:0", service="orders")
    order_sub = shop.socket(zmq.SUB)
    order_sub.connect(service="orders")
    order_sub.subscribe("orders.")
    assert len(order_sub.upstreams) == 2  # the rogue's endpoint and the real one
    deadline = time.monotonic() + 15
    while order_sub.stats.get("drop.unauthorized", 0) < 20:
        assert time.monotonic() < deadline, order_sub.stats
        legit_pub.send(b"real", topic="orders.created")
        try:
            msg = order_sub.recv(timeout=0.01)
        except zmeshlib.Timeout:
            continue
        assert str(msg.peer.spiffe_id) == ORDERS and msg.payload == b"real"

    # payments: the shop reads them while the rogue, subscribed to "" and "pay", gets nothing
    pay_sub = shop.socket(zmq.SUB)
    pay_sub.connect(service="payments")
    pay_sub.subscribe("payments.")
    for _ in range(100):
        assert pay_sub.recv(timeout=10).topic == "payments.event"
    assert rogue.count("GOT") == 0


def test_asyncio_mesh_across_processes(ca_dir, registry_url, workers, mesh_factory):
    import asyncio

    import zmeshlib.asyncio as zasync

    workers.append(Worker("rep", ca_dir, registry_url, PAYMENT, "payment"))
    workers.append(Worker("pub", ca_dir, registry_url, ORDERS, "orders"))
    puller = Worker("pull", ca_dir, registry_url, ORDERS, "jobs")
    workers.append(puller)
    mesh = mesh_factory(CLIENT, mesh_class=zasync.Mesh)

    push = mesh.socket(zmq.PUSH)  # held here: a socket dropped with a queued message closes

    async def run() -> None:
        cli = mesh.socket(zmq.REQ)
        cli.connect(service="payment")
        rep = await cli.request(b"async", method="charge", timeout=5)
        assert rep.payload == f"async from {CLIENT}".encode()
        assert str(rep.peer.spiffe_id) == PAYMENT
        sub = mesh.socket(zmq.SUB)
        sub.connect(service="orders")
        sub.subscribe("orders.")
        for _ in range(10):
            msg = await sub.recv(timeout=10)
            assert str(msg.peer.spiffe_id) == ORDERS
        push.connect(service="jobs")
        await push.send(b"async-job", timeout=5)

    asyncio.run(run())
    assert puller.expect("GOT", timeout=10) == f"GOT async-job {CLIENT}"


def test_a_sigkilled_servers_card_leaves_lookups_within_its_lease(
    ca_dir, registry_url, workers, mesh_factory, eventually
):
    leased = registry_url + "?lease=2s"
    server = Worker("rep", ca_dir, leased, PAYMENT, "payment")
    workers.append(server)
    client = mesh_factory(CLIENT, registry=leased)
    assert [str(c.spiffe_id) for c in client.registry.by_service("payment")] == [PAYMENT]
    cli = client.socket(zmq.REQ)
    cli.connect(service="payment")
    assert cli.request(b"a", timeout=5).payload.startswith(b"a from")
    (first,) = client.registry.by_service("payment")
    renewed = eventually(
        lambda: [c for c in client.registry.by_service("payment") if c.not_after > first.not_after],
        what="the live server's card renewed before its lease ends",
    )
    assert renewed[0].curve_key == first.curve_key
    server.crash()  # no goodbye: the card stays in the store
    killed = time.monotonic()
    deadline = killed + 2 + 2
    while client.registry.by_service("payment") and time.monotonic() < deadline:
        time.sleep(0.05)
    gone_after = time.monotonic() - killed
    assert not client.registry.by_service("payment"), f"still listed {gone_after:.1f}s later"
    print(f"\nthe killed server's card left lookups {gone_after:.2f}s after SIGKILL (lease 2s)")
    client._directory.refresh()
    with pytest.raises(zmeshlib.Unavailable):
        cli.request(b"b", timeout=0.5)

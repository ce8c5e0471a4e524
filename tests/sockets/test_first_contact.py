"""What a pyzmq user meets in the first hour: waiting, closing, addresses, modes, errors.

Each test pins one behaviour a new user relies on: a client started before its
server waits without burning a core; ``close()`` from another thread ends
blocked operations cleanly; STRICT refuses what it cannot authenticate; DISABLE
is plain ZeroMQ; ``trust_domains`` restricts trust; the card advertises an
address a peer can dial; and mistakes get typed errors that name the cause.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

import zmeshlib
from zmeshlib import Bundles, Closed, Delivery, DevCA, Identity, MeshError, Policy
from zmeshlib.registry.stores import MemoryStore
from zmeshlib.sockets.addresses import advertised_address, check_address

SERVER = "spiffe://example.org/ns/shop/sa/payment"
CLIENT = "spiffe://example.org/ns/shop/sa/orders"


def _cpu(skip: frozenset[int] = frozenset()) -> float:
    """CPU seconds of this process's threads but those in ``skip`` (Linux thread ids): every
    thread the mesh started counts, its native libzmq threads too, while threads an earlier
    test left winding down do not. Without /proc, the whole process."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    ticks = 0
    for task in tasks.iterdir():
        if int(task.name) in skip:
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _other_threads() -> frozenset[int]:
    """The threads alive now but the caller's, as ``_cpu`` numbers them."""
    tasks = Path("/proc/self/task")
    names = (int(t.name) for t in tasks.iterdir()) if tasks.is_dir() else iter(())
    return frozenset(names) - {threading.get_native_id()}


# -- 1. waiting costs no CPU ----------------------------------------------------------


def test_waiting_for_a_server_that_is_not_there_costs_no_cpu(mesh_factory):
    earlier = _other_threads()
    mesh = mesh_factory(CLIENT)
    cli = mesh.socket(zmq.REQ)
    cli.connect(service="payment")  # no server yet: the normal start-up order
    sub = mesh.socket(zmq.SUB)
    sub.connect(service="orders")
    sub.subscribe("orders.")
    assert cli.upstreams == [] and sub.upstreams == []

    gc.collect()  # a collection of what earlier tests left is not the mesh's cost
    gc.disable()
    try:
        before, start = _cpu(earlier), time.monotonic()
        with pytest.raises(zmeshlib.Unavailable) as err:
            cli.request(b"x", method="charge", timeout=1.0)
        assert err.value.delivery is Delivery.NOT_SENT
        with pytest.raises(zmeshlib.Timeout):
            sub.recv(timeout=0.5)
        assert sub.poll(0.5) is False
        elapsed, used = time.monotonic() - start, _cpu(earlier) - before
    finally:
        gc.enable()
    assert elapsed >= 2.0  # each waited its whole timeout
    assert used < 0.1, f"{used:.3f}s of CPU while waiting {elapsed:.1f}s"


def test_poll_waits_its_timeout_and_a_pull_with_nothing_bound_waits_quietly(mesh_factory):
    mesh = mesh_factory(CLIENT)
    pull = mesh.socket(zmq.PULL)
    pull.connect(service="jobs")
    start = time.monotonic()
    assert pull.poll(1.0) is False
    assert time.monotonic() - start >= 1.0


# -- 2. closing, from any thread ---------------------------------------------------------


def test_operations_on_a_closed_socket_or_mesh_raise_closed(mesh_factory):
    mesh = mesh_factory(SERVER)
    pub = mesh.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:0", service="orders")
    sub = mesh.socket(zmq.SUB)
    pub.close()
    with pytest.raises(Closed):
        pub.send(b"x", topic="t")
    with pytest.raises(Closed):
        pub.bind("tcp://127.0.0.1:0")
    mesh.close()
    with pytest.raises(Closed):
        sub.recv()  # no timeout: it must not block for ever
    with pytest.raises(Closed):
        sub.subscribe("t")
    with pytest.raises(Closed):
        mesh.socket(zmq.PUB)
    assert sub.closed and mesh.closed


def test_close_from_another_thread_ends_a_blocked_recv(mesh_factory):
    mesh = mesh_factory(SERVER)
    rep = mesh.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="payment")
    outcome: list[BaseException] = []

    def blocked() -> None:
        try:
            rep.recv()  # waits for ever, until closed
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=blocked)
    thread.start()
    deadline = time.monotonic() + 5
    while not rep._busy and time.monotonic() < deadline:  # inside its wait
        time.sleep(0.001)
    mesh.close()
    thread.join(5)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Closed)


def test_serve_ends_cleanly_when_the_mesh_is_closed_from_another_thread(mesh_factory):
    server_mesh, client_mesh = mesh_factory(SERVER), mesh_factory(CLIENT)
    rep = server_mesh.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="payment")
    served: list[int] = []
    thread = threading.Thread(target=lambda: served.append(rep.serve(lambda m: b"ok")))
    thread.start()
    cli = client_mesh.socket(zmq.REQ)
    cli.connect(service="payment")
    assert cli.request(b"x", timeout=5).payload == b"ok"
    server_mesh.close()
    thread.join(5)
    assert not thread.is_alive() and served == [1]


CLOSE_DURING_SERVE = """
import sys, threading, zmq, zmeshlib
ca = zmeshlib.DevCA.load(sys.argv[1])
ident = ca.issue("spiffe://example.org/ns/shop/sa/payment")
for i in range(50):
    mesh = zmeshlib.Mesh(identity=ident, registry=sys.argv[2])
    rep = mesh.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="payment")
    served = []
    t = threading.Thread(target=lambda: served.append(rep.serve(lambda m: b"")))
    t.start()
    mesh.close()
    t.join(10)
    assert not t.is_alive() and served == [0], (i, served)
print("ok", threading.active_count())
"""


def test_close_during_serve_in_another_thread_fifty_times_never_crashes(ca_dir, registry_url):
    """In a child process: a libzmq abort would kill pytest itself."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", CLOSE_DURING_SERVE, str(ca_dir), registry_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ok", "1"]  # and no thread left behind


def _fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_open_close_cycles_leave_no_thread_fd_or_card_endpoint_behind(
    mesh_factory, ca, registry_url
):
    mesh = mesh_factory(SERVER)
    threads, fds = threading.active_count(), _fds()
    for _ in range(100):
        for kind in (zmq.PUB, zmq.REP, zmq.PULL):
            sock = mesh.socket(kind)
            sock.bind("tcp://127.0.0.1:0", service="svc")
            sock.close()
    assert mesh.card is not None and mesh.card.endpoints == ()  # closed sockets' endpoints left
    listed = mesh.registry.by_key(mesh.curve_public)
    assert listed is not None and listed.endpoints == ()
    assert threading.active_count() == threads
    assert _fds() <= fds + 2  # libzmq may keep a reaper's pipe or two: never one per socket

    store = Path(registry_url.removeprefix("dir://"))
    ident = ca.issue(CLIENT)
    for _ in range(20):
        with zmeshlib.Mesh(identity=ident, registry=registry_url) as other:
            other.socket(zmq.REP).bind("tcp://127.0.0.1:0", service="svc")
    assert threading.active_count() == threads
    assert _fds() <= fds + 2
    assert len(list(store.glob("*.card"))) == 1  # only the first mesh's card remains


class _ReadOnlyStore(MemoryStore):
    """A store that refuses writes, as a read-only directory would (tests run as root, for
    whom no directory is read-only)."""

    def put(self, key_id: str, data: bytes) -> None:
        raise zmeshlib.RegistryError(f"cannot write card {key_id}: read-only file system")


def test_a_mesh_that_fails_to_start_leaves_no_thread_behind(ca):
    ident = ca.issue(SERVER)
    threads = threading.active_count()
    for _ in range(3):
        registry = zmeshlib.Registry(_ReadOnlyStore(), bundles=ident.bundles)
        with pytest.raises(zmeshlib.RegistryError, match="read-only"):
            zmeshlib.Mesh(identity=ident, registry=registry)
    assert threading.active_count() == threads


# -- 3, 4. modes ---------------------------------------------------------------------------


def test_strict_refuses_inproc_and_says_why(mesh_factory):
    mesh = mesh_factory(SERVER)
    pull = mesh.socket(zmq.PULL)
    with pytest.raises(MeshError, match="CURVE and ZAP do not run on inproc"):
        pull.bind("inproc://jobs")
    with pytest.raises(MeshError, match="inproc"):
        mesh.socket(zmq.PUSH).connect("inproc://jobs")


def test_strict_never_delivers_from_an_anonymous_peer(mesh_factory, eventually):
    """A connection accepted while the mode was PERMISSIVE keeps its anonymous peer; once the
    policy is STRICT, nothing it sends is delivered."""
    mesh = mesh_factory(
        SERVER, policy=Policy.from_dict({"peer_authentication": {"mode": "PERMISSIVE"}})
    )
    pull = mesh.socket(zmq.PULL)
    address = pull.bind("tcp://127.0.0.1:0", service="jobs")
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        push.linger = 0
        push.curve_serverkey = mesh.curve_public
        push.curve_publickey, push.curve_secretkey = zmq.curve_keypair()  # no card: anonymous
        push.connect(address)
        envelope = bytes([1, 4, 0, 0]) + (7).to_bytes(8, "big")  # a minimal PUSH envelope
        push.send_multipart([envelope, b"while permissive"])
        assert pull.recv(timeout=5).peer == zmeshlib.ANONYMOUS
        mesh.update_policy(Policy())  # STRICT
        push.send_multipart([envelope, b"now strict"])
        with pytest.raises(zmeshlib.Timeout):
            pull.recv(timeout=1.0)  # it arrives, and is dropped
        assert pull.stats["drop.unauthenticated"] == 1
    finally:
        ctx.destroy(linger=0)


def test_permissive_takes_inproc_with_anonymous_peers(mesh_factory):
    policy = Policy.from_dict({"peer_authentication": {"mode": "PERMISSIVE"}})
    mesh = mesh_factory(SERVER, policy=policy)
    mesh.socket(zmq.PULL).bind("inproc://jobs-permissive")


def test_two_disable_meshes_with_identities_talk_plain_zeromq(mesh_factory):
    disable = Policy.from_dict({"peer_authentication": {"mode": "DISABLE"}})
    server_mesh = mesh_factory(SERVER, policy=disable)
    client_mesh = mesh_factory(CLIENT, policy=disable)
    rep = server_mesh.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="payment")
    cli = client_mesh.socket(zmq.REQ)
    cli.connect(service="payment")
    worker = threading.Thread(target=lambda: rep.serve(lambda m: b"plain", max_requests=1))
    worker.start()
    try:
        assert cli.request(b"x", timeout=5).payload == b"plain"
    finally:
        worker.join(10)
    assert {s.mechanism for s in rep.underlying() + cli.underlying()} == {zmq.NULL}


# -- 5. trust_domains ------------------------------------------------------------------------


def test_trust_domains_refuse_a_peer_of_an_unlisted_domain(ca, registry_url, eventually):
    partner = DevCA.create("partner.org")
    federated = Bundles([ca.bundle, partner.bundle])
    ours = ca.issue(SERVER)
    server_ident = Identity(ours.svid, federated)
    stranger_svid = partner.issue("spiffe://partner.org/ns/ops/sa/tool")
    stranger_ident = Identity(stranger_svid.svid, federated)

    both = Policy.from_dict({"trust_domains": ["example.org", "partner.org"]})
    only_ours = Policy.from_dict({"trust_domains": ["example.org"]})
    with (
        zmeshlib.Mesh(identity=server_ident, policy=both, registry=registry_url) as server,
        zmeshlib.Mesh(identity=stranger_ident, policy=both, registry=registry_url) as client,
    ):
        rep = server.socket(zmq.REP)
        rep.bind("tcp://127.0.0.1:0", service="payment")
        cli = client.socket(zmq.REQ)
        cli.connect(service="payment")
        worker = threading.Thread(target=lambda: rep.serve(lambda m: b"ok", max_requests=1))
        worker.start()
        assert cli.request(b"x", timeout=5).payload == b"ok"  # federated: trusted
        worker.join(10)

        server.update_policy(only_ours)  # partner.org no longer trusted by the server
        assert server.registry.by_key(client.curve_public) is None
        refused_before = server.handshake_counts().get("refused", 0)
        late = client.socket(zmq.REQ)
        late.connect(service="payment")
        with pytest.raises(zmeshlib.MeshError):
            late.request(b"y", timeout=0.5)
        eventually(
            lambda: server.handshake_counts().get("refused", 0) > refused_before,
            what="the partner's handshake refused",
        )

        # and a client that no longer trusts the server's domain says why it finds no server
        client.update_policy(Policy.from_dict({"trust_domains": ["partner.org"]}))
        client._directory.refresh()
        server_side = client.socket(zmq.REQ)
        with pytest.raises(zmeshlib.Unavailable) as err:
            server_side.connect(service="payment")
            server_side.request(b"z", timeout=0.3)
        assert "do not verify" in str(err.value)


# -- 6. advertised addresses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resolved", "host", "card"),
    [
        ("tcp://0.0.0.0:5555", "10.1.2.3", "tcp://10.1.2.3:5555"),
        ("tcp://[::]:5555", "10.1.2.3", "tcp://10.1.2.3:5555"),
        ("tcp://0.0.0.0:5555", "fd00::1", "tcp://[fd00::1]:5555"),
        ("tcp://127.0.0.1:5555", "10.1.2.3", "tcp://127.0.0.1:5555"),
        ("ipc:///tmp/x.sock", "10.1.2.3", "ipc:///tmp/x.sock"),
    ],
)
def test_a_wildcard_bind_is_advertised_with_a_dialable_host(resolved, host, card):
    assert advertised_address(resolved, host) == card


def test_bind_to_every_interface_advertises_the_mesh_host_and_peers_can_dial_it(mesh_factory):
    server_mesh = mesh_factory(SERVER, advertise_host="127.0.0.1")
    rep = server_mesh.socket(zmq.REP)
    public = rep.bind("tcp://*:0", service="payment")
    assert public.startswith("tcp://127.0.0.1:") and rep.endpoints == [public]
    assert [e.address for e in server_mesh.card.endpoints] == [public]
    cli = mesh_factory(CLIENT).socket(zmq.REQ)
    cli.connect(public)  # by the advertised address: its card is found and verified
    worker = threading.Thread(target=lambda: rep.serve(lambda m: b"here", max_requests=1))
    worker.start()
    try:
        assert cli.request(b"x", timeout=5).payload == b"here"
    finally:
        worker.join(10)
    explicit = server_mesh.socket(zmq.PULL)
    assert explicit.bind("tcp://127.0.0.1:0", advertise="tcp://localhost:7777") == (
        "tcp://localhost:7777"
    )
    assert zmeshlib.sockets.addresses.default_advertise_host() not in ("0.0.0.0", "")


# -- 7. socket options -------------------------------------------------------------------------


def test_options_apply_to_every_underlying_socket_present_and_future(mesh_factory):
    server_mesh, client_mesh = mesh_factory(SERVER), mesh_factory(CLIENT)
    sub = client_mesh.socket(zmq.SUB)
    sub.rcvhwm = 7
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(service="orders")
    assert sub.rcvhwm == 7 and sub.getsockopt(zmq.LINGER) == 0
    pub = server_mesh.socket(zmq.PUB)
    pub.sndhwm = 0
    pub.bind("tcp://127.0.0.1:0", service="orders")
    pub.bind("tcp://127.0.0.1:0")
    (xpub,) = pub.underlying()
    assert xpub.sndhwm == 0
    client_mesh._directory.refresh()
    sub.poll(0.2)  # its housekeeping connects the publisher that appeared
    assert sub.underlying() and all(s.rcvhwm == 7 and s.linger == 0 for s in sub.underlying())
    assert sub.type == zmq.SUB and sub.getsockopt(zmq.TYPE) == zmq.SUB and pub.type == zmq.PUB
    assert pub.last_endpoint == pub.endpoints[-1].encode()
    pub.hwm = 5  # pyzmq's shorthand for both
    assert (xpub.sndhwm, xpub.rcvhwm) == (5, 5)


def test_options_the_mesh_owns_are_refused_with_the_reason(mesh_factory):
    sock = mesh_factory(CLIENT).socket(zmq.REQ)
    for option, why in [
        (zmq.CURVE_SERVERKEY, "CURVE"),
        (zmq.ZAP_DOMAIN, "ZAP"),
        (zmq.ROUTING_ID, "routing"),
        (zmq.MAXMSGSIZE, "limits"),
        (zmq.TYPE, "read-only"),
        (zmq.SUBSCRIBE, "SUB"),
    ]:
        with pytest.raises(MeshError, match=why):
            sock.setsockopt(option, b"x" * 32)
    with pytest.raises(zmeshlib.InvalidArgument, match="SNDHWM"):
        sock.setsockopt(zmq.SNDHWM, "not a number")
    with pytest.raises(MeshError):
        sock.xpub_manual = 1


def test_subscribe_through_setsockopt_is_authorized_as_subscribe(mesh_factory):
    sub = mesh_factory(CLIENT).socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"orders.")
    sub.setsockopt_string(zmq.SUBSCRIBE, "payments.")
    assert sub._prefixes == [b"orders.", b"payments."]
    sub.setsockopt(zmq.UNSUBSCRIBE, b"orders.")
    assert sub._prefixes == [b"payments."]


def test_rcvtimeo_is_the_default_timeout_of_recv(mesh_factory):
    pull = mesh_factory(SERVER).socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0", service="jobs")
    pull.rcvtimeo = 50
    with pytest.raises(zmq.Again):  # as pyzmq raises when RCVTIMEO expires
        pull.recv()
    with pytest.raises(zmq.Again):
        pull.recv(flags=zmq.NOBLOCK)
    with pytest.raises(zmq.Again):
        pull.recv(zmq.NOBLOCK)  # pyzmq's positional flags


# -- 8. errors that point at the cause ------------------------------------------------------------


def test_an_address_without_a_scheme_says_what_was_meant(mesh_factory):
    cli = mesh_factory(CLIENT).socket(zmq.REQ)
    with pytest.raises(MeshError, match=r"service='orders'"):
        cli.connect("orders")
    with pytest.raises(MeshError, match="not a ZeroMQ address"):
        cli.connect("127.0.0.1:5555")
    with pytest.raises(MeshError, match="exactly one"):
        cli.connect()


def test_connecting_to_an_address_without_a_card_says_so_at_once(mesh_factory, caplog):
    cli = mesh_factory(CLIENT).socket(zmq.REQ)
    with caplog.at_level(logging.WARNING, logger="zmeshlib.sockets"):
        cli.connect("tcp://127.0.0.1:1")
    assert "no card in the registry lists address 'tcp://127.0.0.1:1'" in caplog.text
    with pytest.raises(zmeshlib.Unavailable, match="no card in the registry lists address"):
        cli.request(b"x", timeout=0.3)


def test_an_expired_server_card_is_named_in_the_error(ca, mesh_factory, eventually):
    server_mesh = mesh_factory(SERVER, ttl=2)
    rep = server_mesh.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="payment")
    server_mesh._stop_keeper()  # no renewal: let the SVID (and its card) expire
    client_mesh = mesh_factory(CLIENT)
    eventually(
        lambda: client_mesh.registry.rejected(), timeout=10, what="the server's card to expire"
    )
    cli = client_mesh.socket(zmq.REQ)
    cli.connect(service="payment")
    with pytest.raises(zmeshlib.Unavailable) as err:
        cli.request(b"x", timeout=0.3)
    assert "do not verify" in str(err.value) and "expired" in str(err.value)


def test_mesh_takes_a_policy_file_path(mesh_factory, tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text("version: 1\npeer_authentication: {mode: PERMISSIVE}\n")
    mesh = mesh_factory(SERVER, policy=str(path))
    assert mesh.mode == "PERMISSIVE" and mesh.policy == Policy.load(path)
    with pytest.raises(zmeshlib.PolicyError):
        mesh_factory(SERVER, policy=42)


def test_text_where_bytes_belong_is_a_typed_error(mesh_factory):
    mesh = mesh_factory(SERVER)
    pub = mesh.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:0", service="orders")
    with pytest.raises(zmeshlib.InvalidArgument, match="send_string"):
        pub.send("text", topic="t")
    with pytest.raises(zmeshlib.InvalidArgument):
        pub.send([b"ok", 5], topic="t")
    sub = mesh.socket(zmq.SUB)
    with pytest.raises(zmeshlib.InvalidArgument, match="UTF-8"):
        sub.subscribe(b"\xff")
    with pytest.raises(zmeshlib.InvalidArgument, match="at most"):
        sub.subscribe("x" * 5000)
    with pytest.raises(zmeshlib.InvalidArgument, match="timeout"):
        sub.recv(timeout="soon")


def test_dealer_and_router_say_why_they_are_not_mesh_sockets(mesh_factory):
    with pytest.raises(MeshError, match="DEALER and ROUTER"):
        mesh_factory(SERVER).socket(zmq.ROUTER)


def test_check_address_table():
    check_address("tcp://127.0.0.1:1", "STRICT", "bind")
    check_address("ipc:///tmp/a", "STRICT", "bind")
    check_address("inproc://a", "DISABLE", "bind")
    for bad in ("", "tcp://", "udp://1.2.3.4:5", "orders"):
        with pytest.raises(MeshError):
            check_address(bad, "STRICT", "connect")


def test_a_policy_that_sets_every_section_is_applied_without_a_warning(mesh_factory, caplog):
    policy = Policy.from_dict(
        {
            "services": {"orders": {"subsets": [{"name": "v1", "labels": {"version": "1"}}]}},
            "traffic": {
                "orders": {
                    "split": [{"subset": "v1", "weight": 100}],
                    "pool": {"max_connections": 3, "idle_timeout": "1m"},
                }
            },
            "telemetry": {
                "tracing": {"sampling": 10},
                "metrics": {"istio_compatible": True, "topic_depth": 2},
                "access_log": {"enabled": True, "sampling": 50},
            },
        }
    )
    with caplog.at_level(logging.WARNING, logger="zmeshlib"):
        mesh = mesh_factory(SERVER)
        mesh.update_policy(policy)
    assert not caplog.records  # nothing validated and then ignored


def test_a_request_in_flight_to_a_server_whose_card_left_still_gets_its_reply(
    mesh_factory, eventually
):
    """A server that answers and exits withdraws its card as it goes: the client keeps the
    connection while its requests there are in flight (draining), rather than dropping
    it and failing them as gone, and sends nothing new there."""
    server = mesh_factory(SERVER)
    rep = server.socket(zmq.REP)
    address = rep.bind("tcp://127.0.0.1:0", service="payment")
    client = mesh_factory(CLIENT)
    req = client.socket(zmq.REQ)
    req.connect(service="payment")
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(req.request(b"3", method="charge", timeout=10)))
    t.start()
    msg = rep.recv(timeout=5)
    server.registry.withdraw(server.curve_public)  # as close() does, before the reply
    eventually(lambda: req._upstreams[address].draining, what="the upstream draining")
    msg.reply(b"charged")
    t.join(10)
    assert [m.payload for m in got] == [b"charged"]
    # dropped once drained, at the socket's next housekeeping (a poll runs it)
    eventually(lambda: not req.poll(0.01) and not req.upstreams, what="dropped once drained")

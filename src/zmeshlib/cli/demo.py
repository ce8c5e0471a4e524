"""``zmesh demo``: a small, real mesh of several processes, with a readable transcript.

Rules this module keeps:

* Everything is real: a dev CA and a ``dir://`` registry in a temporary
  directory (or, with ``--registry``, a key prefix of the run's own in that
  store, e.g. Redis), one policy file every workload loads, one OS process per
  workload (the same interpreter, started with ``spawn``), CURVE handshakes
  over loopback TCP. Nothing is mocked, so the demo doubles as a smoke test.
* Each workload proves what it claims: an expected refusal that does not
  happen, or a message that does not arrive, fails the run (exit status 1).
* Nothing waits by sleeping: processes coordinate through named signals
  (``multiprocessing.Event``), each wait has a deadline, and the whole run
  has one too.
* The workloads here are the code of ``examples/pubsub.py`` and
  ``examples/reqrep.py``: the examples run one scenario each, ``zmesh demo``
  runs both at once.

Theory of operation: a :class:`Scenario` is a cast of :class:`Role` s (a
SPIFFE ID and a workload function) and the names of the signals they
exchange. :func:`perform` builds a :class:`Stage`, starts one process per
role and prints what the workloads :meth:`Cue.say` as it arrives. A workload
is ``fn(cue, mesh)``: the harness has already joined the mesh with the
role's identity, and closes it when the function returns.

=====================  ==========================================================
role (SPIFFE ID)       does
=====================  ==========================================================
orders                 binds PUB ``orders``; announces until inventory listens,
                       then publishes the orders
inventory              SUB to ``orders.``; prints each order and its publisher
marketing              tries to subscribe to ``orders.``: the policy refuses
payment                binds REP ``payment``; serves ``charge`` and ``status``
checkout               REQ to ``payment``: ``charge``, ``refund`` (refused by
                       the server's policy check), ``status``
=====================  ==========================================================
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import queue
import secrets
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml
import zmq

from .._exceptions import MeshError, PermissionDenied, RegistryError, Timeout
from ..identity.devca import DevCA
from ..policy import Policy
from ..registry import open_store
from ..sockets import Mesh

TRUST_DOMAIN = "example.org"
WAIT = 10.0  # seconds any one wait of a workload may take before the run fails
RUN_TIMEOUT = 30.0  # seconds the whole run may take
REORDER = 0.1  # seconds a transcript line is held so lines from all processes sort by time

# The one policy document of the demo mesh (the same tree as a mesh.yaml file).
POLICY: dict[str, Any] = {
    "version": 1,
    "peer_authentication": {"mode": "STRICT"},
    "trust_domains": [TRUST_DOMAIN],
    "services": {
        "orders": {"identities": ["example.org/ns/shop/sa/orders"]},
        "payment": {"identities": ["example.org/ns/shop/sa/payment"]},
    },
    "authorization": [
        {
            "name": "orders-feed",
            "selector": {"services": ["orders"]},
            "action": "ALLOW",
            "rules": [
                {
                    "from": {"principals": ["example.org/ns/shop/sa/orders"]},
                    "to": {"publish": ["orders.*"]},
                },
                {
                    "from": {"principals": ["example.org/ns/shop/sa/inventory"]},
                    "to": {"subscribe": ["orders.*"]},
                },
            ],
        },
        {
            "name": "payment-callers",
            "selector": {"services": ["payment"]},
            "action": "ALLOW",
            "rules": [
                {
                    "from": {"principals": ["example.org/ns/shop/sa/checkout"]},
                    "to": {"call": ["charge", "status"]},
                }
            ],
        },
    ],
}


# -- the stage: CA, registry and policy every workload shares ---------------------


@attrs.frozen
class Stage:
    """Where a run's mesh lives: picklable paths, so it crosses into spawned processes."""

    ca_dir: str
    registry: str
    policy_file: str

    @classmethod
    def build(
        cls,
        directory: str | os.PathLike[str],
        policy: Mapping[str, Any],
        registry: str | None = None,
    ) -> Stage:
        """A fresh dev CA and the policy file under ``directory``, and an empty registry:
        a ``dir://`` one there, or, given a ``registry`` URL (``redis://...``), a key prefix
        of its own in that store, so runs never see each other's cards."""
        root = Path(directory)
        ca_dir = root / "ca"
        DevCA.create(TRUST_DOMAIN).save(ca_dir)
        policy_file = root / "mesh.yaml"
        Policy.from_dict(policy)  # a bad document fails here, once, not in every process
        policy_file.write_text(yaml.safe_dump(dict(policy), sort_keys=False))
        if registry is None:
            (root / "registry").mkdir()
            url = f"dir://{root / 'registry'}"
        elif "prefix=" in registry.partition("?")[2]:
            url = registry  # the caller chose the run's prefix
        else:
            glue = "&" if "?" in registry else "?"
            url = f"{registry}{glue}prefix=zmesh-demo-{secrets.token_hex(4)}:"
            store = open_store(url)
            try:
                store.get_policy()  # an unreachable store fails here, once, with its reason
            finally:
                store.close()
        return cls(str(ca_dir), url, str(policy_file))

    def join(self, spiffe_id: str) -> Mesh:
        """Join the mesh as ``spiffe_id``: an SVID from the dev CA, the shared policy and registry."""
        identity = DevCA.load(self.ca_dir).issue(spiffe_id, ttl=600)
        return Mesh(identity=identity, policy=Policy.load(self.policy_file), registry=self.registry)


# -- what a workload process holds ------------------------------------------------


@attrs.frozen
class Cue:
    """A workload's link to the run: its transcript line and the signals it shares with the cast."""

    role: str
    start: float  # the run's time.time() origin, so every process stamps lines alike
    lines: Any  # multiprocessing.Queue of (seconds, role, text)
    signals: Mapping[str, Any]  # name -> multiprocessing.Event

    def say(self, text: str) -> None:
        self.lines.put((time.time() - self.start, self.role, text))

    def signal(self, name: str) -> None:
        self.signals[name].set()

    def signalled(self, name: str, within: float = 0.0) -> bool:
        return self.signals[name].wait(within)

    def expect(self, name: str, within: float = WAIT) -> None:
        if not self.signals[name].wait(within):
            raise Timeout(f"{self.role}: no {name!r} signal within {within}s")


Workload = Callable[[Cue, Mesh], None]


@attrs.frozen
class Role:
    """One workload process: its name in the transcript, its SPIFFE ID, its code."""

    name: str
    spiffe_id: str
    workload: Workload


@attrs.frozen
class Scenario:
    """A cast of roles run together, and the names of the signals they exchange."""

    name: str
    roles: tuple[Role, ...]
    signals: tuple[str, ...] = ()


# -- pub/sub workloads ------------------------------------------------------------

ORDERS = (
    {"order": 1, "sku": "tea", "qty": 2},
    {"order": 2, "sku": "cups", "qty": 6},
    {"order": 3, "sku": "kettle", "qty": 1},
)


def announce_until(cue: Cue, pub: Any, signal: str, topic: str) -> None:
    """Publish empty announcements on ``topic`` until ``signal`` (a subscriber heard one): a
    subscription reaches a publisher a few ms after the subscriber connects (ZeroMQ's slow
    joiner), so what is published before is not heard."""
    deadline = time.monotonic() + WAIT
    while not cue.signalled(signal, within=0.005):
        if time.monotonic() > deadline:
            raise Timeout(f"no subscriber heard the announcements on {topic} within {WAIT:g}s")
        pub.send(b"", topic=topic)


def orders_publisher(cue: Cue, mesh: Mesh) -> None:
    pub = mesh.socket(zmq.PUB)
    address = pub.bind("tcp://127.0.0.1:0", service="orders")
    cue.say(f"publishing service 'orders' on {address}")
    announce_until(cue, pub, "inventory-listening", "orders.hello")
    for order in ORDERS:
        pub.send(json.dumps(order).encode(), topic="orders.created", headers={"region": "eu"})
        cue.say(f"published orders.created {json.dumps(order)}")
    cue.expect("inventory-done")  # closing drops what is still queued: stay until it is read


def inventory_subscriber(cue: Cue, mesh: Mesh) -> None:
    sub = mesh.socket(zmq.SUB)
    sub.connect(service="orders")
    sub.subscribe("orders.")
    first = sub.recv(timeout=WAIT)
    cue.say(f"subscribed to orders.*, publisher authenticated as {first.peer.spiffe_id}")
    cue.signal("inventory-listening")
    received = 0
    while received < len(ORDERS):
        msg = sub.recv(timeout=WAIT)
        if msg.topic == "orders.hello":
            continue
        received += 1
        cue.say(
            f"{msg.topic} from {msg.peer.spiffe_id} (region={msg.headers.get('region')}): "
            f"{msg.payload.decode()}"
        )
    cue.signal("inventory-done")


def marketing_subscriber(cue: Cue, mesh: Mesh) -> None:
    sub = mesh.socket(zmq.SUB)
    sub.connect(service="orders")
    try:
        sub.subscribe("orders.")
    except PermissionDenied as e:
        cue.say(f"subscribe('orders.') refused, as the policy says: {e}")
        return
    raise MeshError(f"{mesh.spiffe_id} could subscribe to orders.*: the policy should refuse it")


# -- request/reply workloads ------------------------------------------------------

# (method, payload, allowed by the policy for checkout)
CALLS = (
    ("charge", b"order 1: 2 x tea, 9.80 EUR", True),
    ("refund", b"order 1", False),
    ("status", b"order 1", True),
)
# payment implements refunds too: the policy, not the server code, keeps checkout from them
ANSWERS = {
    "charge": b"charged 9.80 EUR, receipt r-1001",
    "refund": b"refunded 9.80 EUR",
    "status": b"order 1 paid",
}


def payment_server(cue: Cue, mesh: Mesh) -> None:
    srv = mesh.socket(zmq.REP)
    address = srv.bind("tcp://127.0.0.1:0", service="payment")
    cue.say(f"serving service 'payment' on {address}")

    def handle(req: Any) -> bytes:
        cue.say(f"{req.method}({req.payload.decode()!r}) from {req.peer.spiffe_id}")
        return ANSWERS[req.method]

    allowed = sum(1 for _, _, ok in CALLS if ok)
    srv.serve(handle, max_requests=allowed, stop=lambda: cue.signalled("checkout-done"))
    cue.expect("checkout-done")  # replies still in flight are lost if the socket closes first
    cue.say(
        f"done: {srv.stats.get('requests', 0)} served, {srv.stats.get('calls_denied', 0)} denied"
    )


def checkout_client(cue: Cue, mesh: Mesh) -> None:
    cli = mesh.socket(zmq.REQ)
    cli.connect(service="payment")
    for method, payload, allowed in CALLS:
        try:
            rep = cli.request(payload, method=method, timeout=WAIT)
        except PermissionDenied as e:
            if allowed:
                raise
            cue.say(f"{method} refused by the server: {e}")
            continue
        if not allowed:
            raise MeshError(f"{method} was answered, but the policy should refuse it")
        cue.say(f"{method} -> {rep.payload.decode()!r} from {rep.peer.spiffe_id}")
    cue.signal("checkout-done")


PUBSUB = Scenario(
    "pubsub",
    (
        Role("orders", "spiffe://example.org/ns/shop/sa/orders", orders_publisher),
        Role("inventory", "spiffe://example.org/ns/shop/sa/inventory", inventory_subscriber),
        Role("marketing", "spiffe://example.org/ns/ads/sa/marketing", marketing_subscriber),
    ),
    ("inventory-listening", "inventory-done"),
)
REQREP = Scenario(
    "reqrep",
    (
        Role("payment", "spiffe://example.org/ns/shop/sa/payment", payment_server),
        Role("checkout", "spiffe://example.org/ns/shop/sa/checkout", checkout_client),
    ),
    ("checkout-done",),
)
SCENARIOS = {
    "all": Scenario("demo", PUBSUB.roles + REQREP.roles, PUBSUB.signals + REQREP.signals),
    "pubsub": PUBSUB,
    "reqrep": REQREP,
}


# -- the harness ------------------------------------------------------------------


def _act(role: Role, stage: Stage, cue: Cue, log_level: int) -> None:
    """A workload process: join the mesh, run the workload, report failure by exit status."""
    logging.basicConfig(level=log_level, format=f"%(levelname)s {role.name}: %(message)s")
    try:
        with stage.join(role.spiffe_id) as mesh:
            role.workload(cue, mesh)
    except Exception as e:
        cue.say(f"FAILED: {type(e).__name__}: {e}")
        traceback.print_exc()
        sys.exit(1)


def perform(
    scenario: Scenario,
    stage: Stage,
    *,
    out: Callable[[str], None] = print,
    timeout: float = RUN_TIMEOUT,
    log_level: int = logging.ERROR,
) -> int:
    """Run every role in its own process; print the transcript; 0 when every role succeeded."""
    mp = multiprocessing.get_context("spawn")  # no zmq state or threads forked into children
    lines = mp.Queue()
    cue_of = {s: mp.Event() for s in scenario.signals}
    start = time.time()
    width = max(len(r.name) for r in scenario.roles)
    procs = {
        role.name: mp.Process(
            target=_act,
            args=(role, stage, Cue(role.name, start, lines, cue_of), log_level),
            name=f"zmesh-demo-{role.name}",
        )
        for role in scenario.roles
    }
    for role in scenario.roles:
        out(f"{'':7} {role.name:<{width}}  is {role.spiffe_id}")
    for p in procs.values():
        p.start()

    # Processes stamp lines with one clock but queue them independently: hold each line
    # for REORDER seconds so the transcript comes out in time order.
    held: list[tuple[float, str, str]] = []

    def show(block: float, until: float) -> None:
        try:
            held.append(lines.get(timeout=block))
            while True:
                held.append(lines.get_nowait())
        except queue.Empty:
            pass
        held.sort()
        while held and held[0][0] <= until:
            at, who, text = held.pop(0)
            out(f"{at:6.2f}s {who:<{width}}  {text}")

    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            failed = [name for name, p in procs.items() if p.exitcode not in (None, 0)]
            if failed or not any(p.is_alive() for p in procs.values()):
                break  # one failure fails the run: stop the others now, not at the deadline
            show(0.05, time.time() - start - REORDER)
    finally:  # also on Ctrl-C: leave no workload behind
        stopped = [name for name, p in procs.items() if p.is_alive()]
        for name in stopped:
            procs[name].terminate()
        for p in procs.values():
            p.join(5)
    show(0.05, float("inf"))
    failed = [name for name, p in procs.items() if p.exitcode != 0 and name not in stopped]
    if failed:
        out(f"FAILED: {', '.join(failed)} exited with an error")
    if stopped:
        why = "after that failure" if failed else f"still running after {timeout:g}s"
        out(f"FAILED: stopped {', '.join(stopped)}: {why}")
    if failed or stopped:
        return 1
    out(f"{scenario.name}: every workload did what the policy says ({time.time() - start:.1f}s)")
    return 0


def run(
    scenario: Scenario,
    *,
    out: Callable[[str], None] = print,
    timeout: float = RUN_TIMEOUT,
    log_level: int = logging.ERROR,
    registry: str | None = None,
) -> int:
    """:func:`perform` on a fresh stage in a temporary directory, removed afterwards
    (on ``registry``, a store URL, when given: see :meth:`Stage.build`)."""
    with tempfile.TemporaryDirectory(prefix=f"zmesh-{scenario.name}-") as tmp:
        try:
            stage = Stage.build(tmp, POLICY, registry)
        except RegistryError as e:
            print(f"zmesh demo: error: {e}", file=sys.stderr)
            return 1
        out(f"{'':7} dev CA for {TRUST_DOMAIN}, registry {stage.registry}")
        return perform(scenario, stage, out=out, timeout=timeout, log_level=log_level)


# -- the command ------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="run a small mesh of several processes on this machine and narrate it"
    )
    parser.add_argument(
        "scenario",
        nargs="?",
        choices=["coffee", *sorted(SCENARIOS)],
        default="coffee",
        help="what to run: the coffee shop (the default: seven workloads, a live table and a "
        "summary), or the smaller pub/sub and request/reply meshes of examples/",
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds the run may take (coffee 60, the others 30)"
    )
    parser.add_argument(
        "--trace-out", metavar="FILE", help="coffee: write every span of the run to FILE (JSON)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="workloads log at INFO")
    parser.add_argument(
        "--registry",
        metavar="URL",
        help="run on this store (e.g. redis://127.0.0.1:6379/0) instead of a temporary "
        "dir:// registry; the run uses a key prefix of its own",
    )
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    level = logging.INFO if args.verbose else logging.ERROR
    if args.scenario == "coffee":
        from . import coffee

        return coffee.run(
            registry=args.registry,
            timeout=args.timeout or coffee.RUN_TIMEOUT,
            log_level=level,
            trace_out=args.trace_out,
        )
    return run(
        SCENARIOS[args.scenario],
        timeout=args.timeout or RUN_TIMEOUT,
        log_level=level,
        registry=args.registry,
    )

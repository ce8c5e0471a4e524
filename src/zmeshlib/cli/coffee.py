"""``zmesh demo``: the coffee shop, a mesh of seven processes that shows what the mesh does.

Rules this module keeps:

* Everything is real, as in :mod:`zmeshlib.cli.demo`, whose stage it uses: a dev
  CA and a registry of the run's own, one policy file every workload loads and
  watches, one OS process per workload, CURVE over loopback TCP, the
  OpenTelemetry SDK in every process.
* It proves what it shows: the run ends with a summary of the behaviours
  below, and exits 0 only if every one of them showed.
* Nothing waits by sleeping: processes coordinate through named signals, every
  wait has a deadline, and so has the whole run.

===========  ==========================================================================
workload     does
===========  ==========================================================================
order        for each order, inside its own trace: publishes ``orders.created``, calls
             ``payment.charge``, pushes a brew job to ``brew``
payment-a    ``payment`` v1, flaky: answers every call UNAVAILABLE
payment-b    ``payment`` v1, healthy
payment-c    ``payment`` v2, the canary, healthy
inventory    subscribes to ``orders.``; processes each order inside its trace
barista      pulls the ``brew`` work queue; brews each job inside its trace
rogue        knocks at every door (subscribe, call, push): each refused
===========  ==========================================================================

Behaviours shown, each a line of the summary: pub/sub and request/reply by
principal; the rogue refused at each door; the flaky replica retried around
(every charge succeeds) and ejected; the 90/10 canary split; the policy changed
live mid-run (the split goes 50/50); one trace followed across four services.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import queue
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
import zmq

from .._exceptions import MeshError, PermissionDenied, RegistryError, Timeout, Unavailable
from ..identity.devca import DevCA
from ..policy import Policy
from ..sockets import Mesh
from ..telemetry.waterfall import span_record, waterfall_svg
from .demo import TRUST_DOMAIN, Cue, Stage, announce_until

WAIT = 15.0  # seconds any one wait of a workload may take before the run fails
RUN_TIMEOUT = 60.0
ORDERS_PER_PHASE = 100  # charges before and after the live policy change
TERMINAL_PACE = 0.04  # seconds between orders when a person watches the live table
SHOP = "spiffe://example.org/ns/shop/sa/"
TRACE_TITLE = "one order of the coffee shop, followed across the mesh"
NEW_SPLIT = [{"subset": "v1", "weight": 50}, {"subset": "v2", "weight": 50}]

POLICY: dict[str, Any] = {
    "version": 1,
    "peer_authentication": {"mode": "STRICT"},
    "trust_domains": [TRUST_DOMAIN],
    "services": {
        "orders": {"identities": ["example.org/ns/shop/sa/order"]},
        "payment": {
            "identities": ["example.org/ns/shop/sa/payment"],
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}},
            ],
        },
        "brew": {"identities": ["example.org/ns/shop/sa/barista"]},
    },
    "authorization": [
        {
            "name": "orders-feed",
            "selector": {"services": ["orders"]},
            "rules": [
                {"from": {"principals": ["example.org/ns/shop/sa/order"]},
                 "to": {"publish": ["orders.*"]}},
                {"from": {"principals": ["example.org/ns/shop/sa/inventory"]},
                 "to": {"subscribe": ["orders.*"]}},
            ],
        },
        {
            "name": "payment-callers",
            "selector": {"services": ["payment"]},
            "rules": [{"from": {"principals": ["example.org/ns/shop/sa/order"]},
                       "to": {"call": ["charge"]}}],
        },
        {
            "name": "brew-queue",
            "selector": {"services": ["brew"]},
            "rules": [{"from": {"principals": ["example.org/ns/shop/sa/order"]},
                       "to": {"publish": ["brew"]}}],
        },
    ],
    "traffic": {
        "payment": {
            "timeout": "3s",
            "retries": {
                "attempts": 3,
                "per_try_timeout": "500ms",
                "retry_on": ["unavailable", "connect-failure"],
                "backoff": {"base_interval": "2ms", "max_interval": "10ms"},
                "budget": {"retry_ratio": 0.5, "min_retries_per_second": 50},
            },
            "outlier_detection": {
                "consecutive_errors": 2,
                "interval": "100ms",
                "base_ejection_time": "60s",
                "max_ejection_percent": 50,
            },
            "split": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}],
        }
    },
    "telemetry": {"tracing": {"sampling": 100}},
}  # fmt: skip


# -- a workload process ------------------------------------------------------------


#: A workload: its cue, its mesh, a tracer, and the seconds between orders (0: at once).
Workload = Callable[[Cue, Mesh, Any, float], None]


def _tell(cue: Cue, **event: Any) -> None:
    """A structured event for the run's table (a transcript line is ``cue.say``)."""
    cue.lines.put((time.time() - cue.start, cue.role, event))


def _until_connected(sock: Any, n: int, what: str) -> None:
    """Wait (with a deadline) until ``sock`` dials ``n`` endpoints. A socket takes in the
    registry's news while it is used, as any ZeroMQ socket is only ever used by its owner:
    ``poll`` is the use here."""
    deadline = time.monotonic() + WAIT
    while len(sock.upstreams) < n:
        if time.monotonic() > deadline:
            raise Timeout(f"not within {WAIT:g}s: {what} (connected to {sock.upstreams})")
        sock.poll(0.02)


def order(cue: Cue, mesh: Mesh, tracer: Any, pace: float) -> None:
    pub = mesh.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:0", service="orders")
    cli = mesh.socket(zmq.REQ)
    cli.connect(service="payment")
    push = mesh.socket(zmq.PUSH)
    push.connect(service="brew")
    _until_connected(cli, 3, "three payment replicas")  # a PUSH send waits for its queue
    announce_until(cue, pub, "inventory-listening", "orders.hello")
    cue.say("open: 3 payment replicas, the brew queue, inventory listening")
    n = 0
    for phase in (1, 2):
        if phase == 2:
            _tell(cue, kind="phase-done", phase=1)
            cue.expect("policy-changed")
            deadline = time.monotonic() + WAIT
            while [d.weight for d in mesh.policy.traffic_for("payment").split] != [50, 50]:
                if time.monotonic() > deadline:
                    raise Timeout("the changed policy never reached this workload")
                cue.signals["orders-done"].wait(0.01)  # the watcher reloads it: poll, bounded
            cue.say("policy reloaded: payment split v1 50 / v2 50")
        for _ in range(ORDERS_PER_PHASE):
            n += 1
            body = json.dumps({"order": n, "drink": ("latte", "flat white", "espresso")[n % 3]})
            with tracer.start_as_current_span(f"order {n}") as span:
                trace_id = format(span.get_span_context().trace_id, "032x")
                pub.send(body.encode(), topic="orders.created")
                reply = cli.request(body.encode(), method="charge", timeout=WAIT)
                push.send(body.encode(), timeout=WAIT)
            if pace:
                cue.signals["orders-done"].wait(pace)  # a pace to watch the table by
            replica, version = reply.payload.decode().split()
            _tell(cue, kind="charge", phase=phase, replica=replica, version=version,
                  peer=str(reply.peer.spiffe_id), trace=trace_id)  # fmt: skip
    stats = cli.stats
    _tell(cue, kind="client", retries=stats.get("retries", 0),
          ejected=stats.get("outlier_ejected", 0))  # fmt: skip
    cue.signal("orders-done")
    cue.expect("inventory-done")  # closing drops what is still queued: stay until read
    cue.expect("barista-done")


def payment(name: str, failing: bool) -> Workload:
    def serve(cue: Cue, mesh: Mesh, tracer: Any, pace: float) -> None:
        rep = mesh.socket(zmq.REP)
        rep.bind("tcp://127.0.0.1:0", service="payment")
        version = mesh.labels["version"]
        cue.say(f"serving payment {version}{' (flaky: every call fails)' if failing else ''}")

        def charge(req: Any) -> bytes:
            _tell(cue, kind="served", replica=name, failing=failing)
            if failing:
                raise Unavailable(f"{name} is failing")
            return f"{name} {version}".encode()

        # open until the orders are done and the rogue has knocked
        rep.serve(charge, stop=lambda: cue.signalled("orders-done") and cue.signalled("rogue-done"))

    return serve


def inventory(cue: Cue, mesh: Mesh, tracer: Any, pace: float) -> None:
    sub = mesh.socket(zmq.SUB)
    sub.connect(service="orders")
    sub.subscribe("orders.")
    sub.recv(timeout=WAIT)
    cue.signal("inventory-listening")
    seen = 0
    while seen < 2 * ORDERS_PER_PHASE:
        msg = sub.recv(timeout=WAIT)
        if msg.topic != "orders.created":
            continue
        with msg.process():
            seen += 1
            _tell(cue, kind="order-seen", peer=str(msg.peer.spiffe_id))
    cue.signal("inventory-done")


def barista(cue: Cue, mesh: Mesh, tracer: Any, pace: float) -> None:
    pull = mesh.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0", service="brew")
    cue.say("pulling the brew queue")
    for _ in range(2 * ORDERS_PER_PHASE):
        job = pull.recv(timeout=WAIT)
        with job.process():
            _tell(cue, kind="brewed", peer=str(job.peer.spiffe_id))
    cue.signal("barista-done")
    cue.expect("rogue-done")  # the queue stays open until the rogue has knocked


def _why(e: PermissionDenied) -> str:
    """The refusal in a few words: the DENY policy, or the ALLOW policies none of whose
    rules matched."""
    if e.policy:
        return f"by policy {e.policy}"
    selecting = re.search(r"select this service \(([^)]*)\)", str(e))
    return f"no rule of {selecting.group(1)} matches" if selecting else "no ALLOW rule matches"


def rogue(cue: Cue, mesh: Mesh, tracer: Any, pace: float) -> None:
    doors: list[tuple[str, Callable[[], Any]]] = []
    sub = mesh.socket(zmq.SUB)
    sub.connect(service="orders")
    doors.append(("subscribe orders.*", lambda: sub.subscribe("orders.")))
    cli = mesh.socket(zmq.REQ)
    cli.connect(service="payment")
    doors.append(("call payment.charge", lambda: cli.request(b"free coffee", method="charge",
                                                             timeout=WAIT)))  # fmt: skip
    push = mesh.socket(zmq.PUSH)
    push.connect(service="brew")
    doors.append(("push to brew", lambda: push.send(b"free coffee", timeout=WAIT)))
    _until_connected(cli, 1, "a payment replica")
    for door, knock in doors:
        try:
            knock()
        except PermissionDenied as e:
            why = _why(e)
            _tell(cue, kind="refused", door=door, policy=why)
            cue.say(f"{door}: refused, {why}")
            continue
        raise MeshError(f"the rogue got through: {door}")
    cue.signal("rogue-done")


ROLES: tuple[tuple[str, str, dict[str, str], Workload], ...] = (
    ("payment-a", "payment", {"version": "v1"}, payment("payment-a", failing=True)),
    ("payment-b", "payment", {"version": "v1"}, payment("payment-b", failing=False)),
    ("payment-c", "payment", {"version": "v2"}, payment("payment-c", failing=False)),
    ("inventory", "inventory", {}, inventory),
    ("barista", "barista", {}, barista),
    ("order", "order", {}, order),
    ("rogue", "rogue", {}, rogue),
)
SIGNALS = ("inventory-listening", "policy-changed", "orders-done", "inventory-done",
           "barista-done", "rogue-done")  # fmt: skip


def _act(index: int, stage: Stage, cue: Cue, log_level: int, pace: float) -> None:
    """A workload process: tracing to memory, the mesh, the workload; spans to a file."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    name, account, labels, workload = ROLES[index]
    logging.basicConfig(level=log_level, format=f"%(levelname)s {name}: %(message)s")
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    code = 0
    try:
        identity = DevCA.load(stage.ca_dir).issue(SHOP + account, ttl=600)
        with Mesh(identity=identity, policy=Policy.load(stage.policy_file),
                  registry=stage.registry, labels=labels,
                  tracer_provider=provider) as mesh:  # fmt: skip
            mesh.watch_policy(stage.policy_file, interval=0.1)
            workload(cue, mesh, provider.get_tracer("zmeshlib.demo"), pace)
    except Exception as e:
        cue.say(f"FAILED: {type(e).__name__}: {e}")
        traceback.print_exc()
        code = 1
    spans = [{**span_record(s), "service": name} for s in exporter.get_finished_spans()]
    Path(stage.policy_file).with_name(f"spans-{name}.json").write_text(json.dumps(spans))
    sys.exit(code)


# -- the run -------------------------------------------------------------------------


class Tally:
    """What the events say so far; ``behaviours`` is the summary."""

    def __init__(self) -> None:
        self.by_principal: Counter[tuple[str, str]] = Counter()  # (principal, what)
        self.split: dict[int, Counter[str]] = {1: Counter(), 2: Counter()}
        self.served: Counter[str] = Counter()
        self.refused: dict[str, str] = {}
        self.client: dict[str, int] = {}
        self.traces: list[str] = []
        self.seen = self.brewed = 0

    def add(self, role: str, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "charge":
            self.by_principal[(role, "calls answered")] += 1
            self.split[event["phase"]][event["version"]] += 1
            self.traces.append(event["trace"])
        elif kind == "served":
            self.served[event["replica"]] += 1
        elif kind == "order-seen":
            self.seen += 1
            self.by_principal[(event["peer"].rsplit("/", 1)[1], "orders heard by inventory")] += 1
        elif kind == "brewed":
            self.brewed += 1
            self.by_principal[(event["peer"].rsplit("/", 1)[1], "jobs brewed by barista")] += 1
        elif kind == "refused":
            self.refused[event["door"]] = event["policy"]
        elif kind == "client":
            self.client = {k: v for k, v in event.items() if k != "kind"}

    def share(self, phase: int) -> float:
        counts = self.split[phase]
        return counts["v2"] / max(1, sum(counts.values()))

    def behaviours(self, trace: tuple[str, set[str]] | None) -> list[tuple[str, bool, str]]:
        total = 2 * ORDERS_PER_PHASE
        charged = sum(sum(c.values()) for c in self.split.values())
        ejected = self.client.get("ejected", 0)
        flaky = self.served["payment-a"]
        services = sorted(trace[1]) if trace else []
        return [
            ("pub/sub by principal", self.seen == total,
             f"inventory heard {self.seen}/{total} orders, each from order"),
            ("request/reply by principal", charged == total,
             f"order charged {charged}/{total}, answered by payment"),
            ("work queue", self.brewed == total, f"barista brewed {self.brewed}/{total}"),
            ("rogue refused at each door", len(self.refused) == 3,
             "; ".join(f"{d}: {p}" for d, p in self.refused.items())),
            ("flaky replica retried and ejected", charged == total and ejected >= 1,
             f"payment-a failed {flaky} calls, each retried ({self.client.get('retries', 0)} "
             f"retries), then ejected; 0 charges lost"),
            # bounds a 90/10 and a 50/50 draw of 100 miss about once in 20,000 runs
            ("90/10 canary split", 0.01 <= self.share(1) <= 0.30,
             f"v2 took {self.share(1):.0%} of {sum(self.split[1].values())} charges"),
            ("policy changed live", self.share(2) >= 0.30,
             f"split set to 50/50 mid-run: v2 then took {self.share(2):.0%}"),
            ("one trace across four services", trace is not None and len(services) >= 4,
             f"trace {trace[0][:16]}... spans {', '.join(services)}" if trace else "none"),
        ]  # fmt: skip


def _table(tally: Tally, elapsed: float) -> Any:
    from rich.table import Table

    table = Table(title=f"zmeshlib coffee shop, {elapsed:4.1f}s", expand=False)
    table.add_column("principal")
    table.add_column("what")
    table.add_column("count", justify="right")
    for (who, what), n in sorted(tally.by_principal.items()):
        table.add_row(who, what, str(n))
    for replica, n in sorted(tally.served.items()):
        table.add_row(replica, "calls reaching it", str(n))
    for phase in (1, 2):
        counts = tally.split[phase]
        if counts:
            table.add_row("order", f"split, phase {phase}",
                          f"v1 {counts['v1']} / v2 {counts['v2']}")  # fmt: skip
    for door, policy in tally.refused.items():
        table.add_row("rogue", f"refused: {door}", policy)
    return table


def _trace(stage: Stage, tally: Tally) -> tuple[tuple[str, set[str]] | None, list[Any]]:
    spans: list[Any] = []
    for path in sorted(Path(stage.policy_file).parent.glob("spans-*.json")):
        spans += json.loads(path.read_text())
    services: dict[str, set[str]] = {}
    for span in spans:
        services.setdefault(span["trace_id"], set()).add(span["service"])
    for trace_id in tally.traces:  # an order's trace, followed through the others
        if len(services.get(trace_id, ())) >= 4:
            return (trace_id, services[trace_id]), spans
    return None, spans


def perform(stage: Stage, *, out: Any, timeout: float, log_level: int,
            trace_out: str | None, pace: float = 0.0) -> int:  # fmt: skip
    mp = multiprocessing.get_context("spawn")
    lines = mp.Queue()
    signals = {s: mp.Event() for s in SIGNALS}
    start = time.time()
    procs = [
        mp.Process(target=_act,
                   args=(i, stage, Cue(role[0], start, lines, signals), log_level, pace),
                   name=f"zmesh-demo-{role[0]}")
        for i, role in enumerate(ROLES)
    ]  # fmt: skip
    for p in procs:
        p.start()
    tally = Tally()
    live = out.live(lambda: _table(tally, time.time() - start))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and any(p.is_alive() for p in procs):
            if any(p.exitcode not in (None, 0) for p in procs):
                break
            try:
                at, role, item = lines.get(timeout=0.1)
            except queue.Empty:
                live.update()
                continue
            if isinstance(item, str):
                out.line(f"{at:6.2f}s {role:<9}  {item}")
                continue
            tally.add(role, item)
            if item["kind"] == "phase-done":
                changed = json.loads(json.dumps(POLICY))
                changed["traffic"]["payment"]["split"] = NEW_SPLIT
                Path(stage.policy_file).write_text(yaml.safe_dump(changed, sort_keys=False))
                out.line(f"{at:6.2f}s {'operator':<9}  policy edited live: payment split 50/50")
                signals["policy-changed"].set()
            live.update()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(10)
        while True:
            try:
                at, role, item = lines.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, str):
                out.line(f"{at:6.2f}s {role:<9}  {item}")
            else:
                tally.add(role, item)
        live.stop()
    failed = [r[0] for r, p in zip(ROLES, procs, strict=True) if p.exitcode != 0]
    trace, spans = _trace(stage, tally)
    if trace_out and trace_out.endswith(".svg"):
        if trace is None:  # nothing to draw: the summary says the trace did not show
            out.line(f"no trace was followed across the mesh: {trace_out} not written")
        else:
            followed = [sp for sp in spans if sp["trace_id"] == trace[0]]
            Path(trace_out).write_text(waterfall_svg(followed, TRACE_TITLE))
    elif trace_out:
        Path(trace_out).write_text(json.dumps(spans, indent=1, default=str))
    results = tally.behaviours(trace)
    out.summary(results, time.time() - start)
    if failed:
        out.line(f"FAILED: {', '.join(failed)} did not finish")
    return 0 if not failed and all(ok for _, ok, _ in results) else 1


class Screen:
    """Where the run shows: a live table on a terminal (rich), plain lines elsewhere."""

    def __init__(self, live_table: bool | None = None) -> None:
        from rich.console import Console

        self.console = Console()
        self.live_table = self.console.is_terminal if live_table is None else live_table
        self._live: Any = None

    def live(self, render: Callable[[], Any]) -> Screen:
        if self.live_table:
            from rich.live import Live

            self._render = render
            self._live = Live(render(), console=self.console, refresh_per_second=8)
            self._live.start()
        return self

    def update(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    def line(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def summary(self, results: list[tuple[str, bool, str]], elapsed: float) -> None:
        from rich.table import Table

        table = Table(title=f"what the mesh showed ({elapsed:.1f}s)")
        table.add_column("behaviour")
        table.add_column("shown")
        table.add_column("how")
        for name, ok, how in results:
            table.add_row(name, "yes" if ok else "NO", how)
        self.console.print(table)


def run(*, registry: str | None, timeout: float, log_level: int, trace_out: str | None,
        screen: Screen | None = None) -> int:  # fmt: skip
    """The coffee shop on a fresh stage in a temporary directory (or on ``registry``)."""
    try:
        import opentelemetry.sdk  # noqa: F401
        import rich  # noqa: F401
    except ImportError as e:
        print(f"zmesh demo: error: the coffee shop needs {e.name}: pip install "
              "'zmeshlib[demo]'", file=sys.stderr)  # fmt: skip
        return 1
    screen = screen or Screen()
    with tempfile.TemporaryDirectory(prefix="zmesh-coffee-") as tmp:
        try:
            stage = Stage.build(tmp, POLICY, registry)
        except RegistryError as e:
            print(f"zmesh demo: error: {e}", file=sys.stderr)
            return 1
        screen.line(f"{'':7} dev CA for {TRUST_DOMAIN}, registry {stage.registry}")
        pace = TERMINAL_PACE if screen.live_table else 0.0  # a table a person can follow
        code = perform(stage, out=screen, timeout=timeout, log_level=log_level,
                       trace_out=trace_out, pace=pace)  # fmt: skip
    screen.line("coffee shop: every behaviour showed" if code == 0 else
                "coffee shop: FAILED, see above")  # fmt: skip
    return code

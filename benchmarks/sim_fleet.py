"""A fleet against one registry: N workloads (real Mesh objects, in a few processes),
their cards, lookups, and how fast a signed policy push reaches every one of them.

Usage: python benchmarks/sim_fleet.py [--workloads 100,300,1000] [--procs 4]
                                       [--registry redis://127.0.0.1:6379/0] [--pushes 5]

Without ``--registry`` it starts a private ``redis-server`` (Debian's package) on a
free port and stops it at the end. For each fleet size it reports:

* start: seconds per Mesh, and the resident memory each workload adds to its process
  (the RSS after its Meshes started less the RSS before; the process's own is reported
  apart);
* Redis memory per workload (``used_memory`` before and after the fleet joined);
* card rates from one extra process: ``Registry.publish`` of pre-signed cards (verify
  and store), ``by_key`` (one read, cached verdict) and ``by_service`` of a service
  every tenth workload serves (an index of the whole store, rebuilt on change);
* the push: the time from ``publish_policy`` to each workload's follower applying
  it (``PolicyFollower.applied_at``), p50 / p99 / max over every workload and push;
* the CPU the fleet burns while idle (renewing its cards' leases, following).

Every workload follows the policy signed by ``spiffe://example.org/ns/mesh/sa/control``;
a tenth of them serve ``sim`` on a REP socket so lookups have something to find.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIGNER = "spiffe://example.org/ns/mesh/sa/control"


def _policy(version: int) -> dict[str, Any]:
    """A policy whose content differs per push (so every push is a new revision)."""
    return {"traffic": {"sim": {"timeout": f"{version + 1}s"}}}


# -- a worker process: its share of the fleet --------------------------------------


def _rss_mib() -> float:
    """This process's resident memory now (Linux), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(ca_dir: str, registry: str, first: int, count: int) -> int:
    import zmq

    import zmeshlib

    ca = zmeshlib.DevCA.load(ca_dir)
    base_rss = _rss_mib()  # the interpreter and the imports: not the workloads'
    t0 = time.perf_counter()
    meshes, followers = [], []
    for i in range(first, first + count):
        mesh = zmeshlib.Mesh(ca.issue(f"spiffe://example.org/ns/sim/sa/w{i}"), _policy(0),
                             registry)  # fmt: skip
        if i % 10 == 0:
            mesh.socket(zmq.REP).bind("tcp://127.0.0.1:0", service="sim")
        followers.append(mesh.follow_policy(signers=[SIGNER]))
        meshes.append(mesh)
    made = time.perf_counter() - t0
    ready = {"seconds_per_mesh": made / count, "rss_mib": _rss_mib() - base_rss,
             "base_rss_mib": base_rss}  # fmt: skip
    print("READY", json.dumps(ready), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "report":  # each follower's version and when it applied it
            print(json.dumps([[f.version, f.applied_at] for f in followers]), flush=True)
        elif command == "cpu":
            print(json.dumps(time.process_time()), flush=True)
        else:
            break
    for mesh in meshes:
        mesh.close()
    return 0


# -- the driver -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is missing: apt-get install redis-server, or pass --registry")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(directory), "--maxclients", "20000"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                sys.exit("redis-server did not answer within 10 s")
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def _used_memory(url: str) -> int:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return 0
    import redis

    return int(redis.Redis.from_url(url.partition("?")[0]).info("memory")["used_memory"])


def _ask(procs: list[subprocess.Popen[str]], command: str) -> list[Any]:
    for p in procs:
        p.stdin.write(command + "\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
    return [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]


def _rates(ca: Any, url: str, seconds: float = 2.0) -> dict[str, float]:
    """Publish, by_key and by_service rates of one Registry on the fleet's store."""
    import zmq

    from zmeshlib.identity.card import Card
    from zmeshlib.registry import Registry

    out = {}
    bundles = ca.bundles  # one object, as a Mesh's identity gives: verdicts stay cached
    with Registry(url, bundles=lambda: bundles) as registry:
        ident = ca.issue("spiffe://example.org/ns/sim/sa/rates")
        cards = []
        for _ in range(200):
            public, secret = zmq.curve_keypair()
            cards.append(Card.sign(ident.svid, public, curve_secret=secret, ttl=60))
        t = time.perf_counter()
        for card in cards:
            registry.publish(card)
        out["publish_per_s"] = len(cards) / (time.perf_counter() - t)
        for card in cards:
            registry.withdraw(card.curve_key)
        found = registry.by_service("sim")
        for name, call in (("by_key_per_s", lambda: registry.by_key(cards[0].curve_key)),
                           ("by_service_per_s", lambda: registry.by_service("sim"))):  # fmt: skip
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < seconds:
                call()
                n += 1
            out[name] = n / (time.perf_counter() - t)
        out["sim_servers_found"] = len(found)
    return out


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(size: int, procs_count: int, url: str, pushes: int, tmp: Path) -> dict[str, Any]:
    import zmeshlib

    ca_dir = tmp / f"ca{size}"
    ca = zmeshlib.DevCA.create("example.org")
    ca.save(ca_dir)
    signer = ca.issue(SIGNER)
    memory_before = _used_memory(url)
    share = [size // procs_count + (1 if i < size % procs_count else 0) for i in range(procs_count)]
    procs, first = [], 0
    t0 = time.perf_counter()
    for count in share:
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", str(ca_dir), url, str(first), str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        ))  # fmt: skip
        first += count
    ready = []
    for p in procs:
        line = p.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("READY"), line
        ready.append(json.loads(line.split(" ", 1)[1]))
    joined = time.perf_counter() - t0
    memory_after = _used_memory(url)
    rates = _rates(ca, url)
    cpu0, wall0 = sum(_ask(procs, "cpu")), time.monotonic()
    latencies: list[float] = []
    for version in range(1, pushes + 1):
        time.sleep(1.0)  # pushes a second apart, as a rollout would be
        start = time.time()
        zmeshlib.publish_policy(_policy(version), identity=signer, registry=url)
        deadline = time.monotonic() + 30
        while True:
            reports = [r for share_report in _ask(procs, "report") for r in share_report]
            if all(v is not None and v >= version for v, _ in reports):
                break
            if time.monotonic() > deadline:
                late = sum(1 for v, _ in reports if v is None or v < version)
                raise SystemExit(f"push {version}: {late} of {size} never applied it")
            time.sleep(0.05)
        latencies += [applied - start for _, applied in reports]
    idle_cpu = (sum(_ask(procs, "cpu")) - cpu0) / (time.monotonic() - wall0)
    _ask_quit(procs)
    return {
        "workloads": size,
        "processes": procs_count,
        "join_s": joined,
        "seconds_per_mesh": statistics.mean(r["seconds_per_mesh"] for r in ready),
        "rss_mib_per_workload": sum(r["rss_mib"] for r in ready) / size,
        "process_base_rss_mib": statistics.mean(r["base_rss_mib"] for r in ready),
        "redis_bytes_per_workload": (memory_after - memory_before) / size,
        **rates,
        "push_p50_ms": _percentile(latencies, 0.5) * 1e3,
        "push_p99_ms": _percentile(latencies, 0.99) * 1e3,
        "push_max_ms": max(latencies) * 1e3,
        "fleet_cpu_cores": idle_cpu,
    }


def _ask_quit(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.stdin.write("quit\n")  # type: ignore[union-attr]
        p.stdin.close()  # type: ignore[union-attr]
    for p in procs:
        p.wait(120)


def main() -> int:
    if sys.argv[1:2] == ["--worker"]:
        ca_dir, url, first, count = sys.argv[2:6]
        return worker(ca_dir, url, int(first), int(count))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default="100,300,1000")
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--registry", help="a redis:// URL (default: a private redis-server)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="zmeshlib-fleet-"))
    server = None
    try:
        if args.registry:
            base = args.registry
        else:
            server, base = _start_redis(tmp)
        results = []
        for size in (int(n) for n in args.workloads.split(",")):
            url = (
                f"{base}/sim{size}"
                if base.startswith("dir://")
                else f"{base}{'&' if '?' in base else '?'}prefix=sim{size}:"
            )
            result = run(size, args.procs, url, args.pushes, tmp)
            results.append(result)
            print(json.dumps(result), flush=True)
        print(f"\n{'workloads':>9} {'join s':>7} {'ms/mesh':>8} {'RSS MiB/w':>9} "
              f"{'Redis B/w':>9} {'publish/s':>9} {'by_key/s':>9} {'by_svc/s':>9} "
              f"{'push p50':>8} {'p99':>7} {'max ms':>7} {'idle CPU':>8}")  # fmt: skip
        for r in results:
            print(f"{r['workloads']:>9} {r['join_s']:>7.1f} {r['seconds_per_mesh'] * 1e3:>8.1f} "
                  f"{r['rss_mib_per_workload']:>9.2f} {r['redis_bytes_per_workload']:>9.0f} "
                  f"{r['publish_per_s']:>9.0f} {r['by_key_per_s']:>9.0f} "
                  f"{r['by_service_per_s']:>9.0f} {r['push_p50_ms']:>8.0f} "
                  f"{r['push_p99_ms']:>7.0f} {r['push_max_ms']:>7.0f} "
                  f"{r['fleet_cpu_cores']:>8.2f}")  # fmt: skip
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""Traffic shaping across real processes: subsets, splits, header routes, faults, mirroring.

Three replicas of ``payment``, each its own OS process (``_replica.py``), with the
card labels ``version: v1``, ``v2`` and ``shadow``; the client is this process.
Shares are held to within 4 standard deviations of the binomial they follow.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import zmq

import zmeshlib
from zmeshlib import DevCA, Policy

pytestmark = pytest.mark.slow

REPLICA = Path(__file__).with_name("_replica.py")
SERVER_ID = "spiffe://example.org/ns/shop/sa/payment"
CLIENT_ID = "spiffe://example.org/ns/shop/sa/checkout"
VERSIONS = ("v1", "v2", "shadow")


class Replica:
    def __init__(self, ca_dir: Path, registry: str, version: str, delay_ms: int = 0):
        self.version = version
        self.proc = subprocess.Popen(
            [sys.executable, str(REPLICA), str(ca_dir), registry, SERVER_ID, "payment", version,
             str(delay_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ),
        )  # fmt: skip
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("READY"), line
        self.address = line.split()[1]

    def stop(self) -> tuple[int, int]:
        """Stop it; (requests it saw, how many were mirror copies)."""
        self.proc.stdin.close()  # type: ignore[union-attr]
        out = self.proc.stdout.read()  # type: ignore[union-attr]
        self.proc.wait(20)
        served = [line for line in out.splitlines() if line.startswith("SERVED")]
        assert served, out
        return int(served[0].split()[1]), int(served[0].split()[2])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(20)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    DevCA.create("example.org").save(tmp_path / "ca")
    return tmp_path / "ca"


@pytest.fixture
def replicas(tmp_path: Path, ca_dir: Path):
    registry = f"dir://{tmp_path}/registry"
    made: dict[str, Replica] = {}

    def start(**delays_ms: int) -> tuple[str, dict[str, Replica]]:
        for version in VERSIONS:
            made[version] = Replica(ca_dir, registry, version, delays_ms.get(version, 0))
        return registry, made

    yield start
    for r in made.values():
        if r.proc.poll() is None:
            r.kill()


def policy(traffic: dict[str, Any]) -> Policy:
    return Policy.from_dict(
        {
            "version": 1,
            "services": {
                "payment": {"subsets": [{"name": v, "labels": {"version": v}} for v in VERSIONS]}
            },
            "traffic": {"payment": traffic},
        }
    )


def connected(mesh: zmeshlib.Mesh, cli: Any, n: int = 3) -> None:
    """Wait (with a deadline) until the client knows all ``n`` replicas."""
    deadline = time.monotonic() + 10
    while len(cli.upstreams) < n:
        assert time.monotonic() < deadline, f"only {cli.upstreams} of {n} replicas"
        mesh._directory.refresh()
        cli._refresh(force=True)
        time.sleep(0.01)  # the registry view's next look


def client(ca_dir: Path, registry: str, p: Policy) -> tuple[zmeshlib.Mesh, Any]:
    mesh = zmeshlib.Mesh(identity=DevCA.load(ca_dir).issue(CLIENT_ID), policy=p, registry=registry)
    cli = mesh.socket(zmq.REQ)
    cli.connect(service="payment")
    connected(mesh, cli)
    return mesh, cli


def within_4_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p))


SPLIT_70_30 = {
    "split": [{"subset": "v1", "weight": 70}, {"subset": "v2", "weight": 30}],
    "routes": [
        {
            "name": "testers",
            "match": [{"headers": {"x-canary": "1"}}],
            "split": [{"subset": "v2", "weight": 100}],
        }
    ],
}


def test_a_70_30_split_and_a_header_route_to_the_canary(ca_dir, replicas):
    registry, servers = replicas()
    mesh, cli = client(ca_dir, registry, policy(SPLIT_70_30))
    with mesh:
        answers = Counter(
            cli.request(b"x", method="charge", timeout=5).payload for _ in range(2000)
        )
        canary = Counter(
            cli.request(b"x", method="charge", headers={"x-canary": "1"}, timeout=5).payload
            for _ in range(200)
        )
    seen = {v: r.stop() for v, r in servers.items()}
    print(f"split over 2000: {dict(answers)}; x-canary over 200: {dict(canary)}; seen {seen}")
    assert set(answers) <= {b"v1", b"v2"}
    assert within_4_sigma(answers[b"v1"], 2000, 0.7), answers
    assert canary == Counter({b"v2": 200})
    assert seen["shadow"] == (0, 0)  # a subset the split does not list gets nothing
    assert seen["v1"][0] == answers[b"v1"] and seen["v2"][0] == answers[b"v2"] + 200


def test_injected_aborts_are_raised_as_their_status_and_never_reach_a_server(ca_dir, replicas):
    registry, servers = replicas()
    traffic = {"faults": {"abort": {"status": "unavailable", "percentage": 30}}}
    mesh, cli = client(ca_dir, registry, policy(traffic))
    aborted = 0
    with mesh:
        for _ in range(2000):
            try:
                cli.request(b"x", method="charge", timeout=5)
            except zmeshlib.Unavailable as e:
                assert "fault injection" in str(e) and e.delivery is zmeshlib.Delivery.NOT_SENT
                aborted += 1
        stats = cli.stats
        counts = mesh.traffic_counts()
    served = sum(r.stop()[0] for r in servers.values())
    print(f"aborted {aborted} of 2000 (30% expected); servers saw {served}")
    assert within_4_sigma(aborted, 2000, 0.3), aborted
    assert served == 2000 - aborted  # the aborted ones never left the client
    assert stats["faults_aborted"] == aborted and counts[("payment", "fault.abort")] == aborted


def test_an_injected_delay_adds_at_least_its_time(ca_dir, replicas):
    registry, _ = replicas()
    mesh, cli = client(ca_dir, registry, policy({}))
    delayed = policy({"faults": {"delay": {"fixed_delay": "50ms", "percentage": 100}}})
    with mesh:
        cli.request(b"x", method="charge", timeout=5)  # connections warm

        def times(n: int) -> list[float]:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                cli.request(b"x", method="charge", timeout=5)
                out.append(time.perf_counter() - t0)
            return out

        plain = times(20)
        mesh.update_policy(delayed)
        slow = times(20)
    print(f"median {statistics.median(plain) * 1000:.2f} ms plain, "
          f"{statistics.median(slow) * 1000:.2f} ms with a 50 ms delay")  # fmt: skip
    assert min(slow) >= 0.050
    assert cli.stats["faults_delayed"] == 20


MIRROR = {
    "split": [{"subset": "v1", "weight": 50}, {"subset": "v2", "weight": 50}],
    "mirror": {"subset": "shadow", "percentage": 100},
}


def test_mirroring_to_a_slow_subset_costs_the_caller_nothing(ca_dir, replicas):
    registry, servers = replicas(shadow=20)
    mesh, cli = client(ca_dir, registry, policy({"split": MIRROR["split"]}))
    mirrored = policy(MIRROR)

    def times(n: int) -> tuple[list[float], Counter[bytes]]:
        out, answers = [], Counter()
        for _ in range(n):
            t0 = time.perf_counter()
            answers[cli.request(b"x", method="charge", timeout=5).payload] += 1
            out.append(time.perf_counter() - t0)
        return out, answers

    with mesh:
        times(20)  # connections warm
        plain, _ = times(200)
        mesh.update_policy(mirrored)
        copied, answers = times(200)
        stats = cli.stats
    shadow = servers["shadow"].stop()
    print(
        f"median {statistics.median(plain) * 1e6:.0f} us without a mirror, "
        f"{statistics.median(copied) * 1e6:.0f} us mirroring to a 20 ms-slow subset; "
        f"the mirror saw {shadow[1]} copies of 200; client stats "
        f"mirrored={stats.get('mirrored')} dropped={stats.get('mirror_dropped')} "
        f"replies={stats.get('mirror_replies')}"
    )
    assert b"shadow" not in answers  # replies never come from the mirror
    assert shadow[0] == shadow[1] >= 180  # every request it saw was a marked copy
    assert statistics.median(copied) < statistics.median(plain) + 0.003
    assert stats["mirrored"] == 200 and stats["mirror_replies"] > 0  # read, counted, dropped


def test_a_dead_mirror_never_fails_the_caller(ca_dir, replicas):
    registry, servers = replicas()
    mesh, cli = client(ca_dir, registry, policy(MIRROR))
    with mesh:
        servers["shadow"].kill()
        for _ in range(200):
            assert cli.request(b"x", method="charge", timeout=5).payload in (b"v1", b"v2")
        stats = cli.stats
    print(f"dead mirror: {stats.get('mirrored', 0)} handed over, {stats['mirror_dropped']} dropped")
    assert stats.get("mirrored", 0) + stats["mirror_dropped"] == 200
    assert stats["mirror_dropped"] > 0

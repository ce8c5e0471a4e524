"""Acceptance: a policy the signer publishes reaches 40 workloads in two processes within 1 s;
one a non-signer publishes, or an older version, is ignored by all of them.

40 Meshes, 20 in each of two OS processes (``_fleet_worker.py``), all follow one registry.
The registry URL is a parameter, so every shared store the mesh supports runs the same test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import zmeshlib
from zmeshlib import DevCA, Identity, Policy, publish_policy
from zmeshlib.registry import open_store

from .conftest import SIGNERS

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_fleet_worker.py")
SRC = Path(zmeshlib.__file__).resolve().parents[1]
PROCESSES, PER_PROCESS = 2, 20
DEADLINE = 1.0  # seconds from publish to the last of the 40 workloads applying it


def fleet_policy(name: str) -> Policy:
    return Policy.from_dict(
        {"trust_domains": ["example.org"], "authorization": [{"name": name, "rules": []}]}
    )


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"the worker ended: {err[-3000:]}")
        return json.loads(line)

    def ask(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()


def ask_all(workers: list[Worker], **command: Any) -> list[dict[str, Any]]:
    for w in workers:
        w.ask(**command)
    return [w.answer() for w in workers]


def column(answers: list[dict[str, Any]], key: str) -> list[Any]:
    return [value for a in answers for value in a[key]]


@pytest.fixture(params=["dir", "redis"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The shared registry the fleet follows (one parameter per shared store kind; redis://
    is a real redis-server of the test's own)."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"dir://{tmp_path / 'registry'}"


@pytest.fixture
def fleet(registry_url: str, ca: DevCA, tmp_path: Path) -> Iterator[list[Worker]]:
    ca.save(tmp_path / "ca")
    config = {"registry": registry_url, "ca": str(tmp_path / "ca"), "signers": SIGNERS}
    workers = [Worker({**config, "count": PER_PROCESS, "index": i}) for i in range(PROCESSES)]
    try:
        yield workers
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.communicate(timeout=30)


def test_a_signed_policy_reaches_40_workloads_in_two_processes_within_a_second(
    fleet: list[Worker],
    registry_url: str,
    control: Identity,
    rogue: Identity,
    record_property: Any,
) -> None:
    ready = [w.answer() for w in fleet]
    assert column(ready, "versions") == [None] * PROCESSES * PER_PROCESS

    first, second, rogues, last = (fleet_policy(n) for n in ("first", "second", "rogue", "last"))
    published = time.time()
    version = publish_policy(first, identity=control, registry=registry_url)
    done = ask_all(fleet, wait=version, timeout=10.0)
    assert column(done, "versions") == [version] * 40
    assert column(done, "revisions") == [first.revision] * 40
    latency = max(column(done, "applied_at")) - published
    record_property("publish_to_40_workloads_s", round(latency, 3))
    print(f"\npublish to the last of 40 workloads in 2 processes: {latency * 1000:.0f} ms")
    assert latency < DEADLINE

    store = open_store(registry_url)
    old = store.get_policy()
    store.close()
    assert isinstance(old, bytes)
    assert publish_policy(second, identity=control, registry=registry_url) == 2
    assert column(ask_all(fleet, wait=2, timeout=10.0), "revisions") == [second.revision] * 40

    store = open_store(registry_url)
    store.put_policy(old)  # version 1 again, genuinely signed: a replay
    store.close()
    refused = ask_all(fleet, refused="older", count=1, timeout=10.0)
    assert [c.get("older") for c in column(refused, "counts")] == [1] * 40
    assert column(refused, "versions") == [2] * 40
    assert column(refused, "revisions") == [second.revision] * 40

    assert publish_policy(rogues, identity=rogue, registry=registry_url, version=3) == 3
    refused = ask_all(fleet, refused="not-a-signer", count=1, timeout=10.0)
    assert [c.get("not-a-signer") for c in column(refused, "counts")] == [1] * 40
    assert column(refused, "versions") == [2] * 40
    assert column(refused, "revisions") == [second.revision] * 40

    assert publish_policy(last, identity=control, registry=registry_url) == 4
    done = ask_all(fleet, wait=4, timeout=10.0)
    assert column(done, "revisions") == [last.revision] * 40

    assert [a["threads"] for a in ask_all(fleet, quit=True)] == [[]] * PROCESSES
    for w in fleet:
        assert w.proc.wait(timeout=30) == 0

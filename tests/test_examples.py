"""The examples and ``zmesh demo``, run as CI runs them: real processes, real CA, real registry.

The workloads check themselves (an expected refusal that does not happen fails
the run), so the negative tests below change the policy under them and expect
the run to fail, which proves the checks can fail.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zmeshlib.cli import demo
from zmeshlib.cli.main import main

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ORDERS = "spiffe://example.org/ns/shop/sa/orders"
PAYMENT = "spiffe://example.org/ns/shop/sa/payment"
CHECKOUT = "spiffe://example.org/ns/shop/sa/checkout"


def run_example(name: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXAMPLES.parent,
        env={**os.environ, **env},
    )


def lines_of(out: str, role: str) -> list[str]:
    """The transcript lines a role said, without the time stamp and role columns."""
    found = []
    for line in out.splitlines():
        m = re.match(rf"\s*\d+\.\d\ds {re.escape(role)}\s+(.*)$", line)
        if m:
            found.append(m.group(1))
    return found


def assert_pubsub(out: str) -> None:
    got = lines_of(out, "inventory")
    assert got[0] == f"subscribed to orders.*, publisher authenticated as {ORDERS}"
    orders = [line for line in got if line.startswith("orders.created")]
    assert [re.search(r'"order": (\d)', line).group(1) for line in orders] == ["1", "2", "3"]
    assert all(line.startswith(f"orders.created from {ORDERS} (region=eu):") for line in orders)
    assert len(lines_of(out, "orders")) == 4  # bound, then three publications
    [refusal] = lines_of(out, "marketing")
    assert refusal.startswith("subscribe('orders.') refused")
    assert "spiffe://example.org/ns/ads/sa/marketing" in refusal
    assert "orders-feed" in refusal


def assert_reqrep(out: str) -> None:
    served = lines_of(out, "payment")
    assert served[1:] == [
        f"charge('order 1: 2 x tea, 9.80 EUR') from {CHECKOUT}",
        f"status('order 1') from {CHECKOUT}",
        "done: 2 served, 1 denied",
    ]
    calls = lines_of(out, "checkout")
    assert calls[0] == f"charge -> 'charged 9.80 EUR, receipt r-1001' from {PAYMENT}"
    assert calls[1].startswith("refund refused by the server:")
    assert "PERMISSION_DENIED" in calls[1] and "payment-callers" in calls[1]
    assert calls[2] == f"status -> 'order 1 paid' from {PAYMENT}"


def test_pubsub_example() -> None:
    done = run_example("pubsub.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_pubsub(done.stdout)
    assert "pubsub: every workload did what the policy says" in done.stdout
    assert "FAILED" not in done.stdout


def test_reqrep_example() -> None:
    done = run_example("reqrep.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_reqrep(done.stdout)
    assert "reqrep: every workload did what the policy says" in done.stdout


@pytest.mark.parametrize("name", ["pubsub.py", "reqrep.py"])
def test_examples_on_the_pure_python_frame_mover(name: str) -> None:
    """What a machine without a C compiler runs: the same meshes, pyzmq's calls per frame
    and the envelope's Python codec."""
    done = run_example(name, ZMESHLIB_PURE_PYTHON="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every workload did what the policy says" in done.stdout
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "from zmeshlib.sockets import frames; from zmeshlib.wire import envelope;"
            "print(frames.COMPILED, envelope.COMPILED)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ZMESHLIB_PURE_PYTHON": "1"},
    )
    assert check.stdout.strip() == "False False", check.stderr


def test_zmesh_demo_all_runs_both_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "all"]) == 0
    out = capsys.readouterr().out
    assert_pubsub(out)
    assert_reqrep(out)
    for role in ("orders", "inventory", "marketing", "payment", "checkout"):
        assert re.search(rf"^\s+{role}\s+is spiffe://example\.org/", out, re.M)
    stamps = [float(m) for m in re.findall(r"^\s*(\d+\.\d\d)s ", out, re.M)]
    assert stamps == sorted(stamps)  # one transcript, in time order across processes


def test_zmesh_demo_runs_on_redis(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    import redis

    assert main(["demo", "all", "--registry", redis_url]) == 0
    out = capsys.readouterr().out
    assert_pubsub(out)
    assert_reqrep(out)
    url = re.search(r"registry (redis://\S+)", out).group(1)  # type: ignore[union-attr]
    prefix = url.split("prefix=")[1]
    # the workloads found each other in Redis, under a prefix of the run's own (so only
    # there), and every one withdrew its card when it closed
    assert prefix.startswith("zmesh-demo-")
    assert redis.Redis.from_url(redis_url).keys(f"{prefix}card:*") == []


BEHAVIOURS = (
    "pub/sub by principal",
    "request/reply by principal",
    "work queue",
    "rogue refused at each door",
    "flaky replica retried and ejected",
    "90/10 canary split",
    "policy changed live",
    "one trace across four services",
)


def test_zmesh_demo_is_the_coffee_shop_and_shows_every_behaviour(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The default demo: seven processes; it exits 0 only with every behaviour shown, and
    writes the run's spans, in which one order's trace crosses four services."""
    spans_file = tmp_path / "spans.json"
    assert main(["demo", "--trace-out", str(spans_file)]) == 0
    out = capsys.readouterr().out
    for behaviour in BEHAVIOURS:
        assert re.search(rf"^│ {re.escape(behaviour)}\s+│ yes ", out, re.M), behaviour
    assert "coffee shop: every behaviour showed" in out
    for door in ("subscribe orders.*", "call payment.charge", "push to brew"):
        assert f"rogue      {door}: refused" in out
    spans = json.loads(spans_file.read_text())
    services: dict[str, set[str]] = {}
    for span in spans:
        services.setdefault(span["trace_id"], set()).add(span["service"])
    assert any({"order", "inventory", "barista"} <= found and any(
        s.startswith("payment-") for s in found) for found in services.values())  # fmt: skip


def test_the_coffee_shop_draws_its_followed_trace(tmp_path: Path) -> None:
    from zmeshlib.cli import coffee

    picture = tmp_path / "trace.svg"
    screen = coffee.Screen(live_table=False)
    assert coffee.run(registry=None, timeout=60, log_level=40, trace_out=str(picture),
                      screen=screen) == 0  # fmt: skip
    svg = picture.read_text()
    assert svg.startswith("<svg") and "order " in svg and "process brew" in svg


def test_the_coffee_shop_runs_on_redis(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    import redis

    assert main(["demo", "--registry", redis_url]) == 0
    out = capsys.readouterr().out
    assert "coffee shop: every behaviour showed" in out
    prefix = re.search(r"registry redis://\S+prefix=(\S+)", out).group(1)  # type: ignore[union-attr]
    assert redis.Redis.from_url(redis_url).keys(f"{prefix}card:*") == []


def test_a_behaviour_that_did_not_show_is_reported_and_fails_the_run() -> None:
    from zmeshlib.cli import coffee

    results = coffee.Tally().behaviours(None)  # nothing happened
    assert [name for name, _, _ in results] == list(BEHAVIOURS)
    assert not any(ok for _, ok, _ in results)


def test_zmesh_demo_on_an_unreachable_registry_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--registry", "redis://127.0.0.1:1/0"]) == 1
    assert "cannot reach Redis" in capsys.readouterr().err


def test_demo_rejects_unknown_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "chaos"])
    assert exc.value.code == 2
    assert "invalid choice: 'chaos'" in capsys.readouterr().err


def perform_with(policy: dict[str, Any], scenario: demo.Scenario, tmp_path: Path, **kw: Any):
    out: list[str] = []
    stage = demo.Stage.build(tmp_path, policy)
    return demo.perform(scenario, stage, out=out.append, **kw), "\n".join(out)


def rules_of(policy: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return next(p for p in policy["authorization"] if p["name"] == name)["rules"]


def test_run_fails_when_a_refusal_does_not_happen(tmp_path: Path) -> None:
    policy = copy.deepcopy(demo.POLICY)
    rules_of(policy, "payment-callers")[0]["to"]["call"].append("refund")
    rc, out = perform_with(policy, demo.REQREP, tmp_path, timeout=20)
    assert rc == 1
    assert "checkout  FAILED: MeshError: refund was answered" in out
    assert "FAILED: checkout exited with an error" in out
    assert "FAILED: stopped payment: after that failure" in out


def test_run_fails_when_an_allowed_subscription_is_refused(tmp_path: Path) -> None:
    policy = copy.deepcopy(demo.POLICY)
    rules_of(policy, "orders-feed")[1]["from"]["principals"] = ["example.org/ns/shop/sa/nobody"]
    rc, out = perform_with(policy, demo.PUBSUB, tmp_path, timeout=20)
    assert rc == 1
    assert "inventory  FAILED: PermissionDenied:" in out and "subscribe 'orders.'" in out
    assert "FAILED: inventory exited with an error" in out
    # the publisher would announce for 10 s more: a failure stops the run at once
    assert re.search(r"^FAILED: stopped orders(, marketing)?: after that failure$", out, re.M)


def test_run_fails_at_its_deadline_when_a_subscription_is_narrowed(tmp_path: Path) -> None:
    policy = copy.deepcopy(demo.POLICY)
    rules_of(policy, "orders-feed")[1]["to"]["subscribe"] = ["orders.created*"]
    rc, out = perform_with(policy, demo.PUBSUB, tmp_path, timeout=2)
    assert rc == 1
    # the publisher grants only orders.created, so inventory never hears the orders.hello
    # announcements that would make the publisher start: both wait until the run's deadline
    assert lines_of(out, "inventory") == []
    assert lines_of(out, "orders")[0].startswith("publishing service 'orders' on tcp://127.0.0.1:")
    assert "FAILED: stopped orders, inventory: still running after 2s" in out
    assert "exited with an error" not in out


def test_the_pyzmq_idioms_example_runs_as_a_pyzmq_user_would_expect():
    done = run_example("pyzmq_idioms.py")
    assert done.returncode == 0, done.stderr
    assert "every pyzmq idiom behaved as pyzmq's" in done.stdout

"""Cost of one authorization decision with 1,000 rules: compile, cold and warm.

    .venv/bin/python benchmarks/bench_authz.py [--rules 1000] [--keys 5000] [--quick]

What is measured (all on one thread, time.perf_counter_ns):

* compile: ``Policy.authorizer()`` on a fresh policy (once per policy version).
* cold: the first decision for a (principal, action, service, resource) key,
  each call timed alone; "new principal" also misses the per-principal cache.
* warm: repeated decisions for known keys, timed in batches of 1,000 calls
  (the median batch divided by 1,000), with the same SpiffeId object (what a
  socket holding its peer's identity passes) and with an equal but distinct
  object (a SpiffeId parsed again per message).
* conditional: a key whose outcome depends on headers (a ``when`` rule):
  the cached plan is re-evaluated against each message's headers.
* subscribe: ``allowed_subscription`` (called once per subscription, not per message).

The target is a warm median of at most 2 us; the script exits 1 when it is missed.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from zmeshlib.identity.spiffe_id import SpiffeId
from zmeshlib.policy import Policy

TARGET_NS = 2000
NAMESPACES = [f"ns{i}" for i in range(20)]


def build_document(n_rules: int, rng: random.Random) -> dict[str, Any]:
    """About ``n_rules`` rules across per-service ALLOW policies and a few mesh-wide DENY ones."""
    policies: list[dict[str, Any]] = []
    denies = max(1, n_rules // 20)
    policies.append(
        {
            "name": "deny-misc",
            "action": "DENY",
            "rules": [
                {
                    "from": {"principals": [f"example.org/ns/{rng.choice(NAMESPACES)}/sa/bad{i}*"]},
                    "to": {"publish": [f"secret.{i}.*"]},
                }
                for i in range(denies)
            ],
        }
    )
    remaining, service = n_rules - denies, 0
    while remaining > 0:
        count = min(remaining, 10)
        rules = []
        for j in range(count):
            ns = rng.choice(NAMESPACES)
            kind = j % 4
            if kind == 0:
                source = {"principals": [f"example.org/ns/{ns}/sa/svc{rng.randrange(50)}"]}
            elif kind == 1:
                source = {"principals": [f"example.org/ns/{ns}/*"]}
            elif kind == 2:
                source = {"namespaces": [ns], "not_principals": ["*/sa/intern"]}
            else:
                source = {"principals": [f"*/sa/svc{rng.randrange(50)}"]}
            to = {
                "publish": [f"s{service}.t{j}.*", f"s{service}.exact{j}"],
                "subscribe": [f"s{service}.t{j}.*"],
                "call": [f"m{j}", f"get{j}*"],
            }
            rule: dict[str, Any] = {"from": source, "to": to}
            if j == 9:
                rule["from"] = {"namespaces": [NAMESPACES[0]]}
                rule["when"] = [{"key": "header:region", "values": ["eu*"]}]
            rules.append(rule)
        policies.append(
            {"name": f"allow-s{service}", "selector": {"services": [f"s{service}"]}, "rules": rules}
        )
        remaining -= count
        service += 1
    return {"authorization": policies}


def random_key(rng: random.Random, services: int) -> tuple[SpiffeId, str, str, str]:
    principal = SpiffeId.parse(
        f"spiffe://example.org/ns/{rng.choice(NAMESPACES)}/sa/svc{rng.randrange(50)}"
    )
    s = rng.randrange(services)
    action = rng.choice(("publish", "subscribe", "call"))
    resource = (
        f"s{s}.t{rng.randrange(10)}.x{rng.randrange(100)}"
        if action != "call"
        else f"get{rng.randrange(10)}x"
    )
    return principal, action, f"s{s}", resource


def batches(fn: Callable[[], None], n_batches: int, per_batch: int) -> float:
    """Median ns per call over ``n_batches`` batches of ``per_batch`` calls of ``fn``."""
    samples = []
    for _ in range(n_batches):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / per_batch)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a few hundred keys, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.keys = min(args.keys, 300)
    rng = random.Random(args.seed)
    doc = build_document(args.rules, rng)
    n_rules = sum(len(p["rules"]) for p in doc["authorization"])
    services = len(doc["authorization"]) - 1

    t0 = time.perf_counter_ns()
    policy = Policy.from_dict(doc)
    t1 = time.perf_counter_ns()
    authorizer = policy.authorizer()
    t2 = time.perf_counter_ns()

    keys = [random_key(rng, services) for _ in range(args.keys)]
    keys = list(dict.fromkeys(keys))
    gc.disable()
    try:
        # cold: first decision per key; principals repeat, so most hit the per-principal cache
        cold = []
        allowed = 0
        for key in keys:
            s = time.perf_counter_ns()
            decision = authorizer.check(*key)
            cold.append(time.perf_counter_ns() - s)
            allowed += decision.allowed
        # cold with a principal never seen before: also computes its `from` mask
        fresh = []
        for i in range(min(len(keys), 2000)):
            _, action, service, resource = keys[i]
            principal = SpiffeId.parse(f"spiffe://example.org/ns/fresh{i}/sa/x{i}")
            s = time.perf_counter_ns()
            authorizer.check(principal, action, service, resource)
            fresh.append(time.perf_counter_ns() - s)

        hot = keys[:1000]
        check = authorizer.check

        def warm_same() -> None:
            for p, a, sv, r in hot:
                check(p, a, sv, r)

        copies = [(SpiffeId(p.trust_domain, p.path), a, sv, r) for p, a, sv, r in hot]

        def warm_copy() -> None:
            for p, a, sv, r in copies:
                check(p, a, sv, r)

        cond_principal = SpiffeId.parse("spiffe://example.org/ns/ns0/sa/x")
        cond_key = (cond_principal, "call", "s0", "m9")
        eu, us = {"region": "eu-west"}, {"region": "us"}
        assert check(*cond_key, eu).allowed != check(*cond_key, us).allowed

        def conditional() -> None:
            for _ in range(500):
                check(*cond_key, eu)
                check(*cond_key, us)

        rounds = 15 if args.quick else 60
        warm_same_ns = batches(warm_same, rounds, len(hot))
        warm_copy_ns = batches(warm_copy, rounds, len(copies))
        cond_ns = batches(conditional, rounds, 1000)

        sub = []
        for p, _, sv, _ in keys[:1000]:
            s = time.perf_counter_ns()
            authorizer.allowed_subscription(p, sv, sv + ".")
            sub.append(time.perf_counter_ns() - s)
    finally:
        gc.enable()

    def us(ns: float) -> str:
        return f"{ns / 1000:8.2f} us"

    def q(samples: list[int], pct: float) -> float:
        return statistics.quantiles(samples, n=100)[int(pct) - 1]

    print(f"policy: {n_rules} rules in {len(doc['authorization'])} policies, {len(keys)} distinct keys, "
          f"{allowed} allowed")  # fmt: skip
    print(f"validate (from_dict)            {us(t1 - t0)}")
    print(f"compile (authorizer)            {us(t2 - t1)}")
    print(f"cold, known principal   median {us(statistics.median(cold))}   p99 {us(q(cold, 99))}")
    print(f"cold, new principal     median {us(statistics.median(fresh))}   p99 {us(q(fresh, 99))}")
    print(f"warm, same SpiffeId     median {us(warm_same_ns)}")
    print(f"warm, equal SpiffeId    median {us(warm_copy_ns)}")
    print(f"warm, header-dependent  median {us(cond_ns)}")
    print(f"allowed_subscription    median {us(statistics.median(sub))}")
    ok = warm_same_ns <= TARGET_NS and warm_copy_ns <= TARGET_NS
    print(f"target: warm median <= {TARGET_NS / 1000:.0f} us: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

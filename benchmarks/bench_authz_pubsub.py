"""What authorization costs pub/sub: the same mesh with 1,000 ALLOW rules against none.

Run: ``.venv/bin/python benchmarks/bench_authz_pubsub.py`` (``--rounds N``).

Both cases are the mesh's STRICT pub/sub of benchmarks/bench_core.py (two OS
processes, 64-byte payloads, one publisher sending as fast as it can). The
"open" policy has no authorization section; the "1,000 rules" policy has 999
rules for other principals and topics plus the one that admits the bench, so
every publish check (at the publisher and at the subscriber) and the
subscriber's own subscribe check go through the compiled matcher. Rounds
alternate; the best of each is compared. Target: within 10%.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_procs as procs
from bench_core import run_case

from zmeshlib.cli.demo import Stage


def policies() -> dict[str, dict[str, Any]]:
    open_policy = {k: v for k, v in procs.POLICY.items() if k != "authorization"}
    many = copy.deepcopy(procs.POLICY)
    rules = [
        {
            "from": {"principals": [f"example.org/ns/team{i}/sa/svc{i}"]},
            "to": {"publish": [f"team{i}.*"], "subscribe": [f"team{i}.events.*"]},
        }
        for i in range(999)
    ]
    many["authorization"][0]["rules"] = rules + many["authorization"][0]["rules"]
    return {"open": open_policy, "1,000 rules": many}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    mp = multiprocessing.get_context("spawn")
    found: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="zmesh-bench-authz-") as tmp:
        for rnd in range(args.rounds):
            for name, policy in policies().items():
                stage = Stage.build(Path(tmp) / f"{rnd}-{len(found)}-{name[:4]}", policy)
                result = run_case(
                    mp,
                    "mesh",
                    (procs.publisher,),
                    (procs.subscriber, args.seconds),
                    {"stage": stage},
                )
                rate = result["pubsub_msgs_per_s"]
                found.setdefault(name, []).append(rate)
                print(f"round {rnd + 1}/{args.rounds} {name:<12} {rate:>10,.0f} msgs/s", flush=True)
    open_rate, many_rate = max(found["open"]), max(found["1,000 rules"])
    ratio = many_rate / open_rate
    verdict = "met" if ratio >= 0.9 else "MISSED"
    print(f"\nbest: open {open_rate:,.0f} msgs/s, 1,000 rules {many_rate:,.0f} msgs/s")
    print(f"with authorization / without: {ratio:.2f}x (target >= 0.90x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What the other subscribers of a publisher observe while one subscriber is revoked.

Run: ``.venv/bin/python benchmarks/bench_revocation.py`` (``--trials N``).

XPUB cannot take back one peer's subscription, so on a policy change that
alters a granted subscription the mesh publisher closes its XPUB and binds a
new one on the same endpoint: every subscriber reconnects and re-sends its
subscriptions, and each is judged afresh (see docs/authorization.md). This
measures the price: a publisher sends one numbered message per millisecond
to three subscribers in their own processes; then the policy revokes one of
them. Reported per trial: how long the revoked subscriber kept receiving
after the update, and how many messages the two others missed (gaps in the
sequence) and for how long.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

import zmeshlib

TD = "example.org"
READERS = ["alice", "bob", "carol"]


def policy(readers: list[str]) -> zmeshlib.Policy:
    return zmeshlib.Policy.from_dict(
        {
            "version": 1,
            "authorization": [
                {
                    "name": "readers",
                    "action": "ALLOW",
                    "rules": [
                        {
                            "from": {"principals": [f"{TD}/ns/bench/sa/{r}" for r in readers]},
                            "to": {"subscribe": ["ticks.*"]},
                        },
                        {"to": {"publish": ["ticks.*"]}},
                    ],
                }
            ],
        }
    )


def subscriber(name: str, ca_dir: str, registry: str, ready: Any, stop: Any, out: Any) -> None:
    ca = zmeshlib.DevCA.load(ca_dir)
    with zmeshlib.Mesh(
        identity=ca.issue(f"spiffe://{TD}/ns/bench/sa/{name}"), registry=registry
    ) as mesh:
        sub = mesh.socket(zmq.SUB)
        sub.connect(service="ticks")
        sub.subscribe("ticks.")
        got: list[tuple[int, float]] = []
        while not stop.is_set():
            try:
                msg = sub.recv(timeout=0.05)
            except zmeshlib.Timeout:
                continue
            got.append((int(msg.payload), time.time()))
            if len(got) == 1:
                ready.put(name)
        out.put((name, got))


def trial(tmp: Path, mp: Any) -> dict[str, float]:
    ca = zmeshlib.DevCA.create(TD)
    ca.save(tmp / "ca")
    registry = f"dir://{tmp / 'registry'}"
    with zmeshlib.Mesh(
        identity=ca.issue(f"spiffe://{TD}/ns/bench/sa/ticker"),
        policy=policy(READERS),
        registry=registry,
    ) as mesh:
        pub = mesh.socket(zmq.PUB)
        pub.bind("tcp://127.0.0.1:0", service="ticks")
        ready, stop, out = mp.Queue(), mp.Event(), mp.Queue()
        kids = [
            mp.Process(target=subscriber, args=(n, str(tmp / "ca"), registry, ready, stop, out))
            for n in READERS
        ]
        for k in kids:
            k.start()
        seq, waiting, revoked_at, steady_until = 0, set(READERS), None, None
        start = time.monotonic()
        while True:
            pub.send(b"%d" % seq, topic="ticks.now")
            seq += 1
            while waiting and not ready.empty():
                waiting.discard(ready.get())
            if not waiting and steady_until is None:
                steady_until = time.monotonic() + 0.5  # steady traffic before the change
            if revoked_at is None and steady_until is not None and time.monotonic() > steady_until:
                revoked_at = time.time()
                revoked_seq = seq
                mesh.update_policy(policy(["bob", "carol"]))
            if revoked_at is not None and time.time() - revoked_at > 1.5:
                break
            if time.monotonic() - start > 60:
                raise SystemExit("subscribers never became ready")
            time.sleep(0.001)  # one message per millisecond
        stop.set()
        results = dict(out.get(timeout=30) for _ in READERS)
        for k in kids:
            k.join(10)
    alice_after = [t for s, t in results["alice"] if s >= revoked_seq]
    missed = []
    outage = []
    for name in ("bob", "carol"):
        seqs = [s for s, _ in results[name] if s >= revoked_seq - 100]
        times = {s: t for s, t in results[name]}
        gaps = [(a, b) for a, b in itertools.pairwise(seqs) if b - a > 1]
        missed.append(sum(b - a - 1 for a, b in gaps))
        outage.append(max((times[b] - times[a] for a, b in gaps), default=0.0))
    return {
        "revoked_kept_receiving_ms": (max(alice_after) - revoked_at) * 1000 if alice_after else 0.0,
        "others_missed_msgs": max(missed),
        "others_outage_ms": max(outage) * 1000,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args(argv)
    mp = multiprocessing.get_context("spawn")
    rows = []
    for i in range(args.trials):
        with tempfile.TemporaryDirectory(prefix="zmesh-bench-revoke-") as tmp:
            row = trial(Path(tmp), mp)
        rows.append(row)
        print(f"trial {i + 1}: " + ", ".join(f"{k}={v:.1f}" for k, v in row.items()), flush=True)
    for key in rows[0]:
        values = sorted(r[key] for r in rows)
        print(f"{key:<28} median {values[len(values) // 2]:8.1f}  worst {values[-1]:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

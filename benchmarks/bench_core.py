"""What the mesh costs on the hot path: raw pyzmq with CURVE against zmeshlib STRICT, one run.

Run: ``.venv/bin/python benchmarks/bench_core.py`` (``make bench``); ``--quick``
for a short run, ``--profile DIR`` to write cProfile stats of the mesh processes.

Method. Every case runs as two OS processes on loopback TCP with 64-byte
payloads, once with plain pyzmq sockets (CURVE, no ZAP handler) and once with
mesh sockets (STRICT: CURVE, ZAP handshake against a ``dir://`` registry of
signed cards, an ALLOW policy checked on every operation). Raw and mesh cases
alternate over several rounds, and the best round of each is reported, so
that drift on a noisy machine hits both sides alike; compare the ratios of one
run, not numbers across runs.

======================  ==============================================================
case                    measures
======================  ==============================================================
req/rep round trip      p50 and p99 of one request and its reply (raw REQ/REP;
                        mesh ``REQ.request`` to ``REP.serve``), after a warm-up
pub/sub throughput      publications received per second by one subscriber while
                        one publisher sends as fast as it can (raw: two frames;
                        mesh: ``PUB.send`` -> ``SUB.recv``)
handshake to 1st reply  a fresh client socket: connect (mesh: registry lookup and
                        card verification; both: CURVE handshake, mesh: ZAP) until
                        the first reply is in; the cold one and the median of the rest
======================  ==============================================================
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_procs as procs

from zmeshlib.cli.demo import Stage

CASE_TIMEOUT = 60.0  # seconds one case may take before the run fails

# metric -> (label, better: "low"/"high", target ratio mesh/raw or None)
METRICS: dict[str, tuple[str, str, float | None]] = {
    "rtt_p50_us": ("req/rep round trip p50 (us)", "low", 1.3),
    "rtt_p99_us": ("req/rep round trip p99 (us)", "low", None),
    "pubsub_msgs_per_s": ("pub/sub msgs/s", "high", 0.7),
    "handshake_cold_ms": ("handshake to 1st reply, cold (ms)", "low", None),
    "handshake_p50_ms": ("handshake to 1st reply, p50 (ms)", "low", None),
}


def run_case(
    mp: Any,
    kind: str,
    server: tuple[Any, ...],
    client: tuple[Any, ...],
    link_args: dict[str, Any],
) -> dict[str, Any]:
    """Start the server and client processes of one case: ``(function, *extra args)`` each."""
    link = procs.Link(info=mp.Queue(), results=mp.Queue(), done=mp.Event(), **link_args)
    kids = [mp.Process(target=fn, args=(kind, link, *extra)) for fn, *extra in (server, client)]
    for k in kids:
        k.start()
    try:
        result = link.results.get(timeout=CASE_TIMEOUT)
    except queue.Empty:
        result = None
    finally:
        for k in kids:
            k.join(10)
            if k.is_alive():
                k.terminate()
                k.join()
    if result is None or any(k.exitcode != 0 for k in kids):
        raise SystemExit(f"{kind} case {server[0].__name__}/{client[0].__name__} failed")
    return result


def measure(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """kind -> metric -> one value per round."""
    mp = multiprocessing.get_context("spawn")
    found: dict[str, dict[str, list[float]]] = {"raw": {}, "mesh": {}}
    with tempfile.TemporaryDirectory(prefix="zmesh-bench-") as tmp:
        for rnd in range(args.rounds):
            for kind in ("raw", "mesh"):
                stage = Stage.build(Path(tmp) / f"{rnd}-{kind}", procs.POLICY)
                link_args = {"stage": stage if kind == "mesh" else None}

                def profile(name: str, kind: str = kind, rnd: int = rnd) -> dict[str, Any]:
                    if kind != "mesh" or not args.profile:
                        return {}
                    return {"profile": os.path.join(args.profile, f"{name}-{rnd}")}

                t0 = time.perf_counter()
                rtt = run_case(
                    mp,
                    kind,
                    (procs.rtt_server, args.requests),
                    (procs.rtt_client, args.handshakes, args.requests),
                    {**link_args, **profile("rtt")},
                )
                del rtt["rtt_count"]
                pubsub = run_case(
                    mp,
                    kind,
                    (procs.publisher,),
                    (procs.subscriber, args.seconds),
                    {**link_args, **profile("pubsub")},
                )
                del pubsub["pubsub_count"]
                for metric, value in {**rtt, **pubsub}.items():
                    found[kind].setdefault(metric, []).append(value)
                print(
                    f"round {rnd + 1}/{args.rounds} {kind:<4}: "
                    + ", ".join(f"{k}={v:,.1f}" for k, v in {**rtt, **pubsub}.items())
                    + f" ({time.perf_counter() - t0:.1f}s)",
                    flush=True,
                )
    return found


def best(values: list[float], better: str) -> float:
    return min(values) if better == "low" else max(values)


def report(found: dict[str, dict[str, list[float]]]) -> bool:
    """Print the table; True when every target is met."""
    ok = True
    print()
    print(f"{'metric':<36} {'raw':>10} {'mesh':>10} {'mesh/raw':>9}  target")
    for metric, (label, better, target) in METRICS.items():
        raw = best(found["raw"][metric], better)
        mesh = best(found["mesh"][metric], better)
        ratio = mesh / raw
        verdict = ""
        if target is not None:
            met = ratio <= target if better == "low" else ratio >= target
            ok = ok and met
            sign = "<=" if better == "low" else ">="
            verdict = f"{sign} {target:.1f}x  {'met' if met else 'MISSED'}"
        print(f"{label:<36} {raw:>10,.1f} {mesh:>10,.1f} {ratio:>8.2f}x  {verdict}")
    return ok


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=5000, help="calls per req/rep case")
    parser.add_argument("--handshakes", type=int, default=20, help="fresh connections timed")
    parser.add_argument("--seconds", type=float, default=2.0, help="pub/sub window")
    parser.add_argument("--profile", metavar="DIR", help="write cProfile stats of mesh processes")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.handshakes, args.seconds = 1, 1000, 5, 0.5
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    print(
        f"{os.cpu_count()} CPUs, {args.rounds} rounds; round trips: {args.requests} calls, "
        f"{args.handshakes} handshakes; pub/sub: {args.seconds:g}s window; 64-byte payloads"
    )
    t0 = time.perf_counter()
    report(measure(args))
    print(f"\ntotal {time.perf_counter() - t0:.0f}s; best of {args.rounds} rounds per cell")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

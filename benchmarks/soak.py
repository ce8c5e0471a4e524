"""Soak: mixed traffic at a steady rate for minutes, watching memory, descriptors and p99.

Run: ``.venv/bin/python benchmarks/soak.py`` (``--minutes 10``, ``--window 30``).

Four OS processes on loopback, STRICT, the bench policy of _bench_procs.py
with retries and outlier detection added: two REP replicas of ``bench``, a
publisher (a 64-byte publication every 5 ms) and a client that calls ``echo``
every 2 ms while a thread of it receives the publications. Every window the
run prints each process's RSS and open descriptors and the client's round
trip p50/p99, its failures and the publications heard. Verdict, after a
one-minute warm-up: RSS and descriptors of every process within 5% of their
first post-warm-up sample, no failed request, and the last window's p99
within twice the first's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_procs as procs
import zmq

import zmeshlib
from zmeshlib.cli.demo import Stage

POLICY: dict[str, Any] = {
    **procs.POLICY,
    "traffic": {
        "bench": {
            "timeout": "2s",
            "retries": {"attempts": 2, "idempotent_methods": ["echo"]},
            "outlier_detection": {"consecutive_errors": 5},
        }
    },
}


def replica(stage: Stage, stop: Any) -> None:
    with stage.join(procs.SERVER_ID) as mesh:
        rep = mesh.socket(zmq.REP)
        rep.bind("tcp://127.0.0.1:0", service="bench")
        rep.serve(lambda msg: msg.payload, stop=stop.is_set)


def publisher(stage: Stage, stop: Any) -> None:
    with stage.join(procs.SERVER_ID) as mesh:
        pub = mesh.socket(zmq.PUB)
        pub.bind("tcp://127.0.0.1:0", service="bench")
        while not stop.wait(0.005):
            pub.send(b"p" * 64, topic="bench.tick")


def client(stage: Stage, stop: Any, windows: Any, window: float) -> None:
    with stage.join(procs.CLIENT_ID) as mesh:
        req = mesh.socket(zmq.REQ)
        req.connect(service="bench")
        sub = mesh.socket(zmq.SUB)
        sub.connect(service="bench")
        sub.subscribe("bench.")
        heard = [0]

        def listen() -> None:
            while not stop.is_set():
                try:
                    sub.recv(timeout=0.2)
                    heard[0] += 1
                except zmeshlib.Timeout:
                    pass

        listener = threading.Thread(target=listen)
        listener.start()
        end = time.monotonic() + window
        latencies: list[float] = []
        failures = 0
        while not stop.is_set():
            start = time.perf_counter()
            try:
                req.request(b"x" * 64, method="echo", timeout=2)
                latencies.append(time.perf_counter() - start)
            except zmeshlib.MeshError:
                failures += 1
            stop.wait(0.002)  # the steady rate
            if time.monotonic() >= end:
                qs = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0] * 99
                windows.put((len(latencies), qs[49], qs[98], failures, heard[0]))
                latencies, failures, heard[0] = [], 0, 0
                end += window
        listener.join()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args(argv)
    mp = multiprocessing.get_context("spawn")
    stop, windows = mp.Event(), mp.Queue()
    with tempfile.TemporaryDirectory(prefix="zmesh-soak-") as tmp:
        stage = Stage.build(tmp, POLICY)
        kids = {
            "replica-1": mp.Process(target=replica, args=(stage, stop)),
            "replica-2": mp.Process(target=replica, args=(stage, stop)),
            "publisher": mp.Process(target=publisher, args=(stage, stop)),
        }
        for k in kids.values():
            k.start()
        time.sleep(2.0)  # the servers' cards published before the client looks (a run, not a test)
        kids["client"] = mp.Process(target=client, args=(stage, stop, windows, args.window))
        kids["client"].start()
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + args.minutes * 60
        try:
            while time.monotonic() < deadline:
                calls, p50, p99, failures, heard = windows.get(timeout=args.window * 3)
                row = {"t": len(rows) * args.window + args.window, "calls": calls,
                       "p50_us": p50 * 1e6, "p99_us": p99 * 1e6, "failures": failures,
                       "heard": heard}  # fmt: skip
                for name, k in kids.items():
                    assert k.pid is not None
                    row[f"{name} rss"] = _rss_kib(k.pid)
                    row[f"{name} fds"] = _fds(k.pid)
                rows.append(row)
                print(f"{row['t']:>6.0f}s calls {calls:>6} p50 {row['p50_us']:7.0f} us "
                      f"p99 {row['p99_us']:7.0f} us failures {failures} heard {heard:>6} | "
                      + " ".join(f"{n} {row[f'{n} rss'] // 1024} MiB/{row[f'{n} fds']} fds"
                                 for n in kids), flush=True)  # fmt: skip
        finally:
            stop.set()
            for k in kids.values():
                k.join(15)
                if k.is_alive():
                    k.terminate()
    warm = [r for r in rows if r["t"] > 60] or rows
    first, last = warm[0], warm[-1]
    ok = True
    for name in kids:
        for what in ("rss", "fds"):
            a, b = first[f"{name} {what}"], last[f"{name} {what}"]
            growth = (b - a) / a if a else 0.0
            verdict = "flat" if growth < 0.05 else "GREW"
            ok &= growth < 0.05
            print(f"{name:<10} {what:<3} {a:>8} -> {b:>8} ({growth:+.1%}): {verdict}")
    failures = sum(r["failures"] for r in rows)
    p99_ratio = last["p99_us"] / first["p99_us"] if first["p99_us"] else 1.0
    ok &= failures == 0 and p99_ratio <= 2.0
    print(f"failed requests {failures}; p99 {first['p99_us']:.0f} -> {last['p99_us']:.0f} us "
          f"({p99_ratio:.2f}x); {'PASSED' if ok else 'FAILED'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

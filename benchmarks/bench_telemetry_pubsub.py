"""What telemetry costs pub/sub: no SDK, an SDK with sampling 0, and every message traced.

Run: ``.venv/bin/python benchmarks/bench_telemetry_pubsub.py`` (``--rounds N``).

The mesh's STRICT pub/sub of benchmarks/bench_core.py (two OS processes,
64-byte payloads, one publisher sending as fast as it can), three ways:

==========  ==================================================================
case        both processes
==========  ==================================================================
off         no OpenTelemetry SDK: the API's no-op providers
unsampled   SDK tracer and meter providers set globally (spans kept by no
            processor, metrics by a reader nobody collects), the policy's
            ``telemetry.tracing.sampling: 0``: messages counted, none traced
traced      the same with ``sampling: 100``: a PRODUCER span per message and
            the trace context in every envelope
==========  ==================================================================

Rounds alternate; the best of each is compared as time per message against
"off". Targets: unsampled within 5%, traced within 25%.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_procs as procs
from bench_core import run_case

from zmeshlib.cli.demo import Stage

CASES = {"off": None, "unsampled": 0, "traced": 100}
TARGETS = {"unsampled": 1.05, "traced": 1.25}


def _install_sdk() -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SpanProcessor())  # the base class: keeps nothing
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def publisher(kind: str, link: Any, sdk: bool) -> None:
    if sdk:
        _install_sdk()
    procs.publisher(kind, link)


def subscriber(kind: str, link: Any, seconds: float, sdk: bool) -> None:
    if sdk:
        _install_sdk()
    procs.subscriber(kind, link, seconds)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    mp = multiprocessing.get_context("spawn")
    found: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="zmesh-bench-telemetry-") as tmp:
        for rnd in range(args.rounds):
            for name, sampling in CASES.items():
                policy = dict(procs.POLICY)
                if sampling is not None:
                    policy["telemetry"] = {"tracing": {"sampling": sampling}}
                stage = Stage.build(Path(tmp) / f"{rnd}-{name}", policy)
                sdk = sampling is not None
                result = run_case(
                    mp, "mesh", (publisher, sdk), (subscriber, args.seconds, sdk),
                    {"stage": stage},
                )  # fmt: skip
                rate = result["pubsub_msgs_per_s"]
                found.setdefault(name, []).append(rate)
                print(f"round {rnd + 1}/{args.rounds} {name:<10} {rate:>10,.0f} msgs/s", flush=True)
    best = {name: max(rates) for name, rates in found.items()}
    print()
    for name, target in TARGETS.items():
        ratio = best["off"] / best[name]  # time per message against off
        verdict = "met" if ratio <= target else "MISSED"
        print(f"{name:<10} {best[name]:>10,.0f} msgs/s, {ratio:.3f}x the time per message of "
              f"off ({best['off']:,.0f} msgs/s; target <= {target:.2f}x: {verdict})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

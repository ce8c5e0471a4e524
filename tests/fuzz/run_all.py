"""``make fuzz``: every atheris target for a while, coverage-guided, and a table of what ran.

Usage: python tests/fuzz/run_all.py [--seconds N] [TARGET ...]

Each target runs in its own process (libFuzzer's), on a scratch corpus seeded
from the kept one (``corpus/<target>``, read-only), for ``--seconds``. The
table gives the executions, the edges covered, the corpus it grew and what it
found; an input that made a target fail is left as ``crash-*`` in the current
directory (keep it in ``corpus/<target>/`` once fixed). Exits 1 on a finding.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
TARGETS = ("spiffe_id", "svid_parse", "bundle_pem", "verify_chain", "card",
           "envelope", "policy", "trace_context", "signed_policy")  # fmt: skip


def run(target: str, seconds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix=f"zmesh-fuzz-{target}-") as scratch:
        proc = subprocess.run(
            [sys.executable, str(HERE / f"atheris_{target}.py"), f"-max_total_time={seconds}",
             "-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048", scratch,
             str(HERE / "corpus" / target)],
            capture_output=True, text=True, timeout=seconds + 120,
        )  # fmt: skip
        grown = sum(1 for _ in Path(scratch).iterdir())
    log = proc.stderr
    executions = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    coverage = re.findall(r"cov: (\d+)", log)
    return {
        "target": target,
        "executions": int(executions[-1]) if executions else 0,
        "edges": int(coverage[-1]) if coverage else 0,
        "new inputs": grown,
        "found": "nothing" if proc.returncode == 0 else _finding(log),
    }


def _finding(log: str) -> str:
    lines = [line for line in log.splitlines() if "Error" in line or "==" in line]
    return (lines[0] if lines else "a failure (see its log)")[:100]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("targets", nargs="*", default=list(TARGETS))
    args = parser.parse_args(argv)
    rows = []
    for target in args.targets:
        row = run(target, args.seconds)
        rows.append(row)
        print(f"{row['target']:<14} {row['executions']:>10,} executions  {row['edges']:>6,} "
              f"edges  {row['new inputs']:>5} new inputs  found: {row['found']}", flush=True)  # fmt: skip
    total = sum(int(r["executions"]) for r in rows)  # type: ignore[call-overload]
    print(f"\n{len(rows)} targets, {args.seconds} s each, {total:,} executions")
    return 0 if all(r["found"] == "nothing" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

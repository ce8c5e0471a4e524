"""benchmarks/sim_fleet.py keeps working: a fleet of 12 in 2 processes on its own
redis-server, one push (its figures are read by people, in docs/performance.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SIM = Path(__file__).resolve().parents[2] / "benchmarks" / "sim_fleet.py"

pytestmark = pytest.mark.slow


def test_a_small_fleet_runs_and_reports_every_figure() -> None:
    run = subprocess.run(
        [sys.executable, str(SIM), "--workloads", "12", "--procs", "2", "--pushes", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.splitlines()[0])
    assert result["workloads"] == 12 and result["sim_servers_found"] == 2
    for figure in (
        "join_s",
        "push_p99_ms",
        "publish_per_s",
        "by_service_per_s",
        "redis_bytes_per_workload",
        "rss_mib_per_workload",
        "fleet_cpu_cores",
    ):
        assert result[figure] > 0, figure  # fmt: skip
    assert "push p50" in run.stdout

"""benchmarks/bench_authz.py keeps working (its numbers are read by people, not asserted here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_authz.py"


def test_bench_authz_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_authz", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    code = bench.main(["--quick", "--rules", "200"])
    out = capsys.readouterr().out
    assert out.startswith("policy: 200 rules")
    for label in ("compile", "cold, known principal", "warm, same SpiffeId", "header-dependent"):
        assert label in out
    assert code in (0, 1)
    assert out.rstrip().endswith("PASS" if code == 0 else "FAIL")

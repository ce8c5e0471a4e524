"""1,000 random open/close sequences of meshes and sockets, closes from other threads among
them, per seed: no abort, no thread, descriptor or card left (``_sequences.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zmeshlib import DevCA

pytestmark = pytest.mark.slow

SEQUENCES = Path(__file__).with_name("_sequences.py")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_thousand_mixed_open_and_close_steps(tmp_path, seed):
    DevCA.create("example.org").save(tmp_path / "ca")
    (tmp_path / "registry").mkdir()
    proc = subprocess.run(
        [sys.executable, str(SEQUENCES), str(tmp_path / "ca"), str(tmp_path / "registry"),
         str(seed), "1000"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode} (negative: a signal)\n{proc.stderr}"
    result = json.loads(proc.stdout.splitlines()[-1])
    print(f"\nseed {seed}: {result}")
    assert result["after"] == result["before"]  # threads and descriptors
    assert result["cards"] == 0 and result["stuck"] == 0
    done = result["done"]
    for op in ("mesh", "socket", "block", "close-socket-elsewhere", "close-mesh-elsewhere",
               "use-closed"):  # fmt: skip
        assert done.get(op, 0) >= 10, (op, done)
    assert sum(done.values()) == 1000

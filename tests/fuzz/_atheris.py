"""What every atheris entry point does: instrument zmeshlib, then fuzz one target.

Run by hand (atheris is not a dependency: ``pip install atheris``), with a
scratch directory first, since libFuzzer writes what it finds into the first
corpus directory, and the kept corpus after it, read-only::

    python tests/fuzz/atheris_svid_parse.py /tmp/svid-work tests/fuzz/corpus/svid_parse

An input that fails is written as ``crash-<sha1>`` to the current directory;
keep it as ``tests/fuzz/corpus/<target>/crash-<what>`` once fixed, so the
replay test holds it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).parent))

with atheris.instrument_imports(include=["zmeshlib", "opentelemetry"]):
    import _targets
    import _wire_targets


def _text(target: Callable[[str], None]) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        target(atheris.FuzzedDataProvider(data).ConsumeUnicode(len(data)))

    return run


def run(name: str) -> None:
    targets = {**_targets.TARGETS, **_wire_targets.TARGETS}
    target = _text(_targets.spiffe_id) if name == "spiffe_id" else targets[name]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()

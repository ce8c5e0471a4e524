"""The network's and the policy files' fuzz targets (_wire_targets.py), in make test: every
kept corpus input replayed, then a short hypothesis run of mutated seeds. The long,
coverage-guided runs are ``make fuzz``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def _load_targets() -> dict:
    spec = importlib.util.spec_from_file_location(
        "zmeshlib_wire_fuzz_targets", Path(__file__).with_name("_wire_targets.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.TARGETS


TARGETS = _load_targets()

CORPUS = Path(__file__).with_name("corpus")
CASES = sorted(
    (target, path)
    for target in TARGETS
    for path in (CORPUS / target).iterdir()
    if path.is_file() and path.suffix != ".md"
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_target_has_a_corpus():
    assert {target for target, _ in CASES} == set(TARGETS)


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_corpus_inputs_are_refused_or_accepted_never_raised(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target", sorted(TARGETS))
@FUZZ
@given(data=st.data())
def test_mutated_seeds(target: str, data: st.DataObject) -> None:
    seeds = [p.read_bytes() for t, p in CASES if t == target]
    seed = bytearray(data.draw(st.sampled_from(seeds)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, max(len(seed) - 1, 0)))
        how = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "flip" and seed:
            seed[at] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "cut":
            del seed[at : at + data.draw(st.integers(1, 16))]
        else:
            seed[at:at] = data.draw(st.binary(max_size=16))
    TARGETS[target](bytes(seed))

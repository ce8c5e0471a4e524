"""docs/security.md backs each claim with a test: every test it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"`(tests/[\w/.-]+)?(?:::(\w+))?`")


def test_every_test_the_threat_model_names_exists():
    text = (ROOT / "docs" / "security.md").read_text()
    last_file: Path | None = None
    named = 0
    for path, name in REFERENCE.findall(text):
        if path:
            target = ROOT / path
            assert target.exists(), f"docs/security.md names {path}, which does not exist"
            last_file = target if target.is_file() else None
        if name:
            assert last_file is not None, f"::{name} follows no test file"
            source = last_file.read_text()
            assert re.search(rf"^(async )?def {name}\(", source, re.M), (
                f"docs/security.md names {last_file.relative_to(ROOT)}::{name}, "
                "which is not defined there"
            )
            named += 1
    assert named >= 20

"""Every ``$ zmesh ...`` command shown in a console block of docs/*.md is run here, and what
the page shows it printing must be what it prints.

Each console block runs in a fresh temporary directory, its commands in order, through
``python -m zmeshlib.cli.main`` (so the checkout's code). A block may be preceded by
``<!-- docs-console: setup`` ... ``-->``: Python run there first (in a subprocess, in that
directory) to make what the sample takes as given (a CA, a policy file, cards).

Conventions of the pages, which the runner follows:

* ``[--option value]`` on a command line is a synopsis of options the sample leaves out:
  dropped before running.
* ``dir:///an/absolute/path`` stands for a registry anywhere: it runs under the block's
  directory.
* Shown output is compared line by line (in any order), after normalising what changes from run
  to run: times, hex strings of 8 digits or more (key ids, revisions, fingerprints), ports
  and runs of spaces. A line ending in ``...`` matches any line it starts; ``# ...`` at the
  end of a line is a comment. A command whose shown output says ``error:`` or starts with
  ``DENIED`` or reports problems must exit 1, any other 0.
* Commands of other tools (``pip``, ``export``) are not run: they set up a machine.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import zmeshlib

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(zmeshlib.__file__).resolve().parents[1]
FENCE = re.compile(r"^\s*```\s*([\w+-]*)\s*$")


@dataclass
class Sample:
    page: str
    line: int
    setup: str = ""
    commands: list[tuple[str, list[str]]] = field(default_factory=list)  # (command, shown)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def samples() -> list[Sample]:
    found = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        lines = path.read_text().splitlines()
        setup, i = "", 0
        while i < len(lines):
            if lines[i].strip() == "<!-- docs-console: setup":
                end = lines.index("-->", i)
                setup, i = "\n".join(lines[i + 1 : end]), end + 1
                continue
            fence = FENCE.match(lines[i])
            if not fence:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if FENCE.match(lines[j]))
            body = lines[i + 1 : end]
            sample = Sample(f"docs/{path.name}", i + 1, setup)
            setup = ""
            for text in body:
                if text.startswith("$ "):
                    sample.commands.append((text[2:], []))
                elif sample.commands:
                    sample.commands[-1][1].append(text)
            sample.commands = [c for c in sample.commands if c[0].startswith("zmesh ")]
            if sample.commands:
                found.append(sample)
            i = end + 1
    return found


def normal(line: str) -> str:
    line = re.sub(r"\s+#\s.*$", "", line)  # a comment of the page's
    line = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "TIME", line)
    line = re.sub(r"(?:[0-9a-f]{2}:){3,}[0-9a-f:.]*|[0-9a-f]{8,}", "HEX", line)
    line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", line)
    return " ".join(line.split())


def matches(shown: list[str], printed: list[str]) -> str:
    """ "" when every shown line matches a printed one (each printed line matching one shown
    line at most; in any order, as a table's rows follow key ids); else the first missing."""
    left = [normal(p) for p in printed]
    for want in (normal(s) for s in shown if s.strip()):
        prefix = want[:-3].rstrip() if want.endswith("...") else None
        hit = next((i for i, got in enumerate(left)
                    if got == want or (prefix is not None and got.startswith(prefix))), None)  # fmt: skip
        if hit is None:
            return f"not printed: {want!r}"
        del left[hit]
    return ""


@pytest.mark.parametrize("sample", samples(), ids=lambda s: s.where)
def test_the_console_sample_runs_as_shown(sample: Sample, tmp_path: Path) -> None:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    if sample.setup:
        done = subprocess.run([sys.executable, "-c", sample.setup], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, f"{sample.where} set-up failed:\n{done.stderr}"
    for command, shown in sample.commands:
        line = re.sub(r"\s*\[[^\]]*\]", "", command)  # a synopsis' optional parts
        line = line.replace("dir:///", f"dir://{tmp_path}/")
        argv = [sys.executable, "-m", "zmeshlib.cli.main", *shlex.split(line)[1:]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        printed = (done.stdout + done.stderr).splitlines()
        failing = any("error:" in s for s in shown) or bool(
            shown and re.match(r"DENIED|\S+: \d+ problems?$", shown[0])
        )
        assert done.returncode == (1 if failing else 0), (
            f"{sample.where}: `{command}` exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
        missing = matches(shown, printed)
        assert not missing, f"{sample.where}: `{command}`: {missing}; it printed:\n" + "\n".join(
            printed
        )


def test_the_pages_console_samples_are_all_found():
    """A parser that found nothing would pass every sample by running none."""
    pages = {s.page for s in samples()}
    assert {"docs/identity.md", "docs/policy.md", "docs/registry.md"} <= pages
    assert sum(len(s.commands) for s in samples()) >= 8

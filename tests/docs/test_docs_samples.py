"""Every ```python and ```yaml block of every docs/*.md page is run or validated here.

A page's python blocks run in order, in one namespace, in a subprocess whose working
directory is a fresh temporary directory (``_run_page.py``); a failure names the page
and the markdown line. Yaml blocks are policy documents: ``Policy.from_dict`` must
accept them.

A page steers this with HTML comments, which the rendered docs do not show:

``<!-- docs-test: setup`` ... ``-->`` (or ``check``, after a block)
    Python run at that place of the page, in the blocks' namespace: names a sample
    takes as given (``ident``, ``mesh``), files it reads, or a check of what it did.
``<!-- docs-test: skip (reason) -->``, right before a block
    the block is not run; the reason is required. Keep these rare.
``<!-- docs-test: context YAML -->``, right before a yaml block
    a fragment: the block is merged over this document (the block's values win),
    the smallest one that makes it whole.
``<!-- docs-test: invalid (text of the error) -->``, right before a yaml block
    an example of a mistake: ``Policy.from_dict`` must refuse it, saying that text.

``PENDING`` lists blocks of pages whose proposed fix is not applied yet.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from zmeshlib import Policy, PolicyError
from zmeshlib.cli import demo

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("_run_page.py")
TIMEOUT = 60  # seconds one page's python may take

# (page, line of the opening fence) -> why the block is left out until its page is edited
PENDING: dict[tuple[str, int], str] = {}

FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*([\w-]+)(.*)$")
REASON = re.compile(r"^\s*\((.+)\)\s*$")
CHECKED = ("python", "yaml")
HIDDEN = ("setup", "check")  # python a page runs without showing it
KIND = {"python": "block", "setup": "set-up", "check": "check"}
ALIASES = {"py": "python", "python3": "python", "pycon": "python", "yml": "yaml"}


@dataclass
class Block:
    page: str  # "docs/sockets.md"
    line: int  # the line of the opening fence (of the marker, for hidden set-up)
    language: str  # "python", "yaml", or "setup" / "check" for hidden python
    code: str
    first: int  # the markdown line of the code's first line
    skip: str = ""
    context: str = ""
    invalid: str = ""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def parse(page: str, text: str) -> list[Block]:
    """The fenced blocks and hidden set-up of a page, in order; ValueError for a bad marker."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: dict[str, str] = {}  # block markers waiting for their block
    pending_at = 0
    i = 0
    while i < len(lines):
        n, line = i + 1, lines[i]
        fence, marker = FENCE.match(line), MARKER.match(line)
        if fence:
            indent, language = fence.groups()
            if language in ALIASES:
                raise ValueError(f"{page}:{n}: write ```{ALIASES[language]}, not ```{language}")
            j = i + 1
            while j < len(lines) and not re.match(rf"^{indent}```\s*$", lines[j]):
                j += 1
            if pending and language not in CHECKED:
                raise ValueError(f"{page}:{pending_at}: a marker before a ```{language} block")
            if language in CHECKED:
                code = textwrap.dedent("\n".join(lines[i + 1 : j]))
                blocks.append(Block(page, n, language, code + "\n", n + 1, **pending))
                if language == "python" and (pending.get("context") or pending.get("invalid")):
                    raise ValueError(f"{page}:{pending_at}: context and invalid are for yaml")
            pending = {}
            i = j + 1
            continue
        if marker:
            word, rest = marker.groups()
            body = [rest]
            while "-->" not in body[-1]:
                i += 1
                if i == len(lines):
                    raise ValueError(f"{page}:{n}: unclosed docs-test marker")
                body.append(lines[i])
            body[-1] = body[-1][: body[-1].index("-->")]
            if word in HIDDEN:
                first = n if body[0].strip() else n + 1
                code = body if body[0].strip() else body[1:]
                blocks.append(Block(page, n, word, textwrap.dedent("\n".join(code)), first))
            elif word in ("skip", "invalid"):
                reason = REASON.match(" ".join(part.strip() for part in body))
                if not reason:
                    raise ValueError(f"{page}:{n}: write <!-- docs-test: {word} (reason) -->")
                pending[word], pending_at = reason.group(1).strip(), n
            elif word == "context":
                pending["context"], pending_at = "\n".join(body), n
            else:
                raise ValueError(f"{page}:{n}: unknown docs-test marker {word!r}")
        elif pending and line.strip():
            raise ValueError(
                f"{page}:{pending_at}: a docs-test marker must be right before a block"
            )
        i += 1
    if pending:
        raise ValueError(f"{page}:{pending_at}: a docs-test marker with no block after it")
    return blocks


def all_blocks() -> list[Block]:
    found = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        found += parse(str(path.relative_to(ROOT)), path.read_text())
    return found


BLOCKS = all_blocks()
PAGES = sorted({b.page for b in BLOCKS if b.language == "python"})


def left_out(block: Block) -> str:
    """Why a block is not run ("" when it is)."""
    return block.skip or PENDING.get((block.page, block.line), "")


def merged(under: Any, over: Any) -> Any:
    """``over`` laid on ``under``: mappings merge key by key, anything else is replaced."""
    if isinstance(under, dict) and isinstance(over, dict):
        return {**under, **{k: merged(under.get(k), v) for k, v in over.items()}}
    return over


# -- python --------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_the_python_of_a_page_runs(page: str, tmp_path: Path) -> None:
    chunks = [
        {"line": b.first, "code": b.code, "what": f"{KIND[b.language]} at {b.where}"}
        for b in BLOCKS
        if b.page == page and b.language in ("python", *HIDDEN) and not left_out(b)
    ]
    if not any(c["what"].startswith("block") for c in chunks):
        pytest.skip(f"every python block of {page} is left out")
    spec = json.dumps({"page": str(ROOT / page), "chunks": chunks})
    try:
        done = subprocess.run(
            [sys.executable, str(RUNNER)],
            input=spec,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        last = out.strip().splitlines()[-1:] or ["before its first block"]
        pytest.fail(f"{page} did not finish in {TIMEOUT} s; last: {last[0]}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"{page}:\n{done.stderr[-6000:]}", pytrace=False)


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.language == "python" and left_out(b)], ids=lambda b: b.where
)
def test_left_out_blocks(block: Block) -> None:
    pytest.skip(f"{block.where} is not run: {left_out(block)}")


# -- yaml ----------------------------------------------------------------------

YAML = [b for b in BLOCKS if b.language == "yaml"]


@pytest.mark.parametrize("block", YAML, ids=lambda b: b.where)
def test_a_yaml_block_is_a_policy_document(block: Block) -> None:
    if left_out(block):
        pytest.skip(f"{block.where} is not run: {left_out(block)}")
    document = yaml.safe_load(block.code)
    if block.context:
        document = merged(yaml.safe_load(block.context), document)
    if block.invalid:
        with pytest.raises(PolicyError) as refused:
            Policy.from_dict(document)
        assert block.invalid in str(refused.value), str(refused.value)
    else:
        Policy.from_dict(document)


def test_the_demo_policy_on_the_examples_page_is_the_demo_s():
    """docs/examples.md: "One document for the whole demo mesh (`POLICY` in demo.py)"."""
    [block] = [b for b in YAML if b.page == "docs/examples.md"]
    assert yaml.safe_load(block.code) == demo.POLICY


# -- the bookkeeping -----------------------------------------------------------


def test_every_page_and_block_is_found():
    pages = {b.page for b in BLOCKS}
    assert {"docs/index.md", "docs/sockets.md", "docs/policy.md"} <= pages
    assert sum(b.language == "python" for b in BLOCKS) >= 14
    assert sum(b.language == "yaml" for b in BLOCKS) >= 4


def test_pending_names_blocks_that_exist():
    fences = {(b.page, b.line) for b in BLOCKS if b.language in CHECKED}
    assert set(PENDING) <= fences, "a PENDING entry names no block (were lines moved?)"
    assert all(PENDING.values())


@pytest.mark.parametrize(
    "text, problem",
    [
        ("<!-- docs-test: skip -->\n```python\nx\n```\n", "(reason)"),
        ("<!-- docs-test: skip (why) -->\ntext\n```python\nx\n```\n", "right before"),
        ("<!-- docs-test: skip (why) -->\n```text\nx\n```\n", "before a ```text"),
        ("<!-- docs-test: invalid (why) -->\n```python\nx\n```\n", "for yaml"),
        ("<!-- docs-test: skipp (why) -->\n```python\nx\n```\n", "unknown"),
        ("```py\nx\n```\n", "write ```python"),
        ("<!-- docs-test: setup\nx = 1\n", "unclosed"),
    ],
)
def test_a_bad_marker_is_an_error(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse("page.md", text)


def test_markers_are_read():
    text = (
        "<!-- docs-test: setup\nx = 1\n-->\n\n```python\nprint(x)\n```\n"
        "<!-- docs-test: skip (needs a SPIRE agent) -->\n\n```python\ny\n```\n"
        "<!-- docs-test: context {services: {}} -->\n"
        "<!-- docs-test: invalid (bad) -->\n```yaml\na: 1\n```\n"
    )
    setup, shown, skipped, document = parse("page.md", text)
    assert (setup.language, setup.code.strip(), setup.first) == ("setup", "x = 1", 2)
    assert (shown.line, shown.first, shown.skip) == (5, 6, "")
    assert skipped.skip == "needs a SPIRE agent"
    assert (document.context.strip(), document.invalid) == ("{services: {}}", "bad")

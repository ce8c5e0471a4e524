"""The README's code runs as written: its commands, and its scripts as separate processes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

pytestmark = pytest.mark.slow

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BIN = Path(sys.executable).parent


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def scripts() -> dict[str, str]:
    """The python blocks that name their file on the first line (``# server.py``)."""
    found = {}
    for block in blocks("python"):
        first = block.splitlines()[0]
        if re.fullmatch(r"# \w+\.py", first):
            found[first[2:]] = block
    return found


def commands(block_index: int) -> list[str]:
    lines = blocks("sh")[block_index].splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory where the README's set-up commands have run."""
    for line in commands(2):  # zmesh ca init, zmesh ca issue x2
        assert line.startswith("zmesh ")
        done = subprocess.run(
            [str(BIN / "zmesh"), *line.split()[1:]], cwd=tmp_path, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    for name, code in scripts().items():
        (tmp_path / name).write_text(code)
    return tmp_path


def _start(workdir: Path, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, name],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_every_code_block_of_the_readme_is_run_here():
    assert sorted(scripts()) == ["client.py", "publisher.py", "server.py", "subscriber.py"]
    assert len(blocks("python")) == 4 and len(blocks("sh")) == 4


def test_the_two_process_quickstart_runs_as_written(workdir: Path):
    run_line = commands(3)[0]  # python client.py & python server.py; wait
    assert run_line == "python client.py & python server.py; wait"
    expected = next(line for line in blocks("sh")[3].splitlines() if line.startswith("# "))[2:]
    client = _start(workdir, "client.py")  # first: it waits for the server's card
    server = _start(workdir, "server.py")
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert server.wait(timeout=30) == 0, server.stderr.read() if server.stderr else ""
    assert out.strip() == expected


def test_the_pub_sub_scripts_run_as_written(workdir: Path):
    publisher = _start(workdir, "publisher.py")
    try:
        subscriber = _start(workdir, "subscriber.py")
        out, err = subscriber.communicate(timeout=60)
        assert subscriber.returncode == 0, err
        assert re.fullmatch(
            r"orders\.created b'order \d+' from spiffe://example\.org/ns/shop/sa/orders\n", out
        )
    finally:
        publisher.terminate()
        publisher.wait(timeout=30)


def test_the_install_and_make_commands_are_the_ones_the_repository_has():
    root = Path(__file__).resolve().parents[1]
    makefile = (root / "Makefile").read_text()
    assert all(
        re.search(rf"^{target}:", makefile, re.M) for target in ("demo", "test", "bench", "docs")
    )
    installs = commands(1)
    assert installs[:2] == ["pip install .", "pip install '.[spiffe]'"]
    extras = [re.search(r"\[(\w+)\]", c).group(1) for c in installs[1:]]  # type: ignore[union-attr]
    assert extras == ["spiffe", "redis", "prometheus", "demo", "dev"]
    with open(root / "pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["optional-dependencies"]
    assert sorted(declared) == sorted(extras)  # every extra is documented, and only those

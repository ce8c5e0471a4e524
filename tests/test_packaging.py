"""Packaging: an sdist and a wheel build; the wheel, built where there is no C compiler,
installs into a fresh virtualenv and works on the pure-Python fallback, saying so once;
the metadata names the license, the classifiers and every extra; types ship (py.typed).

Builds with ``python -m build`` (its isolated build environment comes from the package
index, as pip's does) with ``CC=/bin/false``, so the optional C extensions fail to build
as on a machine without a compiler."""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import zmeshlib

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, CC="/bin/false")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    return out


def test_the_wheel_holds_the_package_its_types_and_license_and_no_compiled_code(dist):
    (wheel,) = dist.glob("zmeshlib-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(archive.read(metadata).decode())
    assert "zmeshlib/py.typed" in names and "zmeshlib/__init__.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.endswith(".so")]  # no compiler: nothing compiled
    assert meta["Version"] == zmeshlib.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert set(meta.get_all("Provides-Extra")) >= {"spiffe", "redis", "prometheus", "demo", "dev"}
    assert "Typing :: Typed" in meta.get_all("Classifier")


def test_the_sdist_holds_what_a_build_needs(dist):
    (sdist,) = dist.glob("zmeshlib-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("LICENSE", "README.md", "pyproject.toml", "setup.py", "src/zmeshlib/py.typed",
                   "src/zmeshlib/_message.c", "src/zmeshlib/wire/_plain.c",
                   "src/zmeshlib/sockets/_frames.c"):  # fmt: skip
        assert needed in names, needed


def test_the_wheel_installs_in_a_fresh_virtualenv_and_runs_pure_python(dist, tmp_path):
    (wheel,) = dist.glob("zmeshlib-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    script = (
        "import logging; logging.basicConfig()\n"
        "import zmeshlib\n"
        "ca = zmeshlib.DevCA.create('example.org')\n"
        "ident = ca.issue('spiffe://example.org/ns/a/sa/b')\n"
        "with zmeshlib.Mesh(identity=ident, registry='memory://') as mesh:\n"
        "    print(zmeshlib.__version__, mesh.mode)\n"
    )
    run = subprocess.run([str(python), "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [zmeshlib.__version__, "STRICT"]
    assert run.stderr.count("optional C extensions are not built") == 1  # once, not per use
    version = subprocess.run([str(venv / "bin" / "zmesh"), "--version"], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert version.returncode == 0 and zmeshlib.__version__ in version.stdout

"""Fixtures every test directory may use."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pytest


@pytest.fixture
def c_toolchain() -> None:
    """Skip where the C extensions could not have been built: no C compiler or no Python headers."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if shutil.which(compiler) is None or not headers.exists():
        pytest.skip("no C compiler or Python headers here: the pure-Python code is in use")

"""Fixtures every test directory may use."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


def _load_redis_server() -> ModuleType:
    """tests/redis_server.py as a module (test directories are not packages)."""
    spec = importlib.util.spec_from_file_location(
        "redis_server", Path(__file__).with_name("redis_server.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["redis_server"] = module  # so tests may `from redis_server import ...`
    spec.loader.exec_module(module)
    return module


redis_server_module = _load_redis_server()
RedisServer = redis_server_module.RedisServer


@pytest.fixture
def c_toolchain() -> None:
    """Skip where the C extensions could not have been built: no C compiler or no Python headers."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if shutil.which(compiler) is None or not headers.exists():
        pytest.skip("no C compiler or Python headers here: the pure-Python code is in use")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server of this test's own on a free 127.0.0.1 port (stopped at teardown)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of this test's own redis-server."""
    return str(redis_server.url)

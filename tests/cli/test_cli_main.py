"""The ``zmesh`` entry point: its version, its help, its sub-commands."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import zmeshlib
from zmeshlib.cli.main import build_parser, main

SRC = Path(zmeshlib.__file__).resolve().parents[1]
COMMANDS = ("ca", "policy", "registry", "demo")


def zmesh(*args: str) -> subprocess.CompletedProcess[str]:
    """``zmesh ARGS`` in a fresh interpreter, as a shell would run it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "zmeshlib.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_version_prints_the_library_version():
    done = zmesh("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"zmesh {zmeshlib.__version__}\n", "")


def test_zmesh_alone_prints_the_help_and_succeeds():
    done = zmesh()
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: zmesh")
    for command in COMMANDS:
        assert f"\n    {command} " in done.stdout, command
    assert "--version" in done.stdout


def test_an_unknown_command_is_a_usage_error():
    done = zmesh("nonsense")
    assert done.returncode == 2
    assert "invalid choice: 'nonsense'" in done.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: zmesh {command}")


def test_main_without_arguments_returns_zero_in_process(capsys):
    assert main([]) == 0
    assert capsys.readouterr().out == build_parser().format_help()


def test_the_console_script_is_zmesh_main():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    (entry,) = [e for e in scripts if e.name == "zmesh"]
    assert entry.value == "zmeshlib.cli.main:main"
    assert entry.load() is main

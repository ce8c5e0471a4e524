"""``zmesh policy check`` and ``zmesh policy decide``, through register() and as a real process."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import zmeshlib.cli.policy as policy_cli

SRC = Path(__file__).resolve().parents[2] / "src"
GOOD = textwrap.dedent(
    """\
    authorization:
      - name: deny-rogue
        action: DENY
        rules: [{from: {namespaces: [rogue]}}]
      - name: payment
        selector: {services: [payment]}
        rules:
          - from: {principals: ["example.org/ns/shop/*"]}
            to: {call: [charge]}
          - to: {call: [status]}
            when: [{key: "header:region", values: [eu]}]
      - name: audit-charges
        action: AUDIT
        rules: [{to: {call: [charge]}}]
    """
)
BAD = textwrap.dedent(
    """\
    authorization:
      - name: a
        action: ALOW
        rules: [{to: {publish: ["orders.*.x"]}}]
    traffic:
      payment: {timeout: 2}
    """
)
BAD_PROBLEMS = [
    "authorization[0].action: 'ALOW' is not one of: ALLOW, DENY, AUDIT, CUSTOM; did you mean 'ALLOW'?",
    "authorization[0].rules[0].to.publish[0]: 'orders.*.x': a ZeroMQ publisher filters topics by prefix",
    "traffic.payment.timeout: a duration needs a unit",
]


def run_in_process(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zmesh")
    policy_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(BAD)
    return good, bad


def test_check_ok(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from zmeshlib.policy import Policy

    assert run_in_process(["policy", "check", str(files[0])]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK {files[0]}: revision {Policy.load(files[0]).revision}")
    assert "3 authorization policies" in out


def test_check_lists_every_problem(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_in_process(["policy", "check", str(files[1])]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{files[1]}: 3 problems"
    assert len(lines) == 4
    for line, expected in zip(lines[1:], BAD_PROBLEMS, strict=True):
        assert line.strip().startswith(expected)


def test_check_the_many_mistakes_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "doc_tests", Path(__file__).with_name("test_document.py")
    )
    assert spec is not None and spec.loader is not None
    doc_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(doc_tests)
    path = tmp_path / "mistakes.yaml"
    path.write_text(doc_tests.MISTAKES)
    assert run_in_process(["policy", "check", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    doc_tests.assert_every_mistake([line.strip() for line in lines[1:]])


def test_check_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_in_process(["policy", "check", str(tmp_path / "nope.yaml")]) == 1
    assert "No such file or directory" in capsys.readouterr().out
    assert run_in_process(["policy", "check", str(tmp_path / "nope.txt")]) == 1
    assert "name the file .yaml, .yml, .toml or .json" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "code", "first_line"),
    [
        (
            ["example.org/ns/shop/sa/web", "call", "payment", "charge"],
            0,
            "ALLOWED (ALLOW: payment)",
        ),
        (
            ["example.org/ns/rogue/sa/web", "call", "payment", "charge"],
            1,
            "DENIED (DENY: deny-rogue)",
        ),
        (
            ["anonymous", "call", "payment", "status", "--header", "region=eu"],
            0,
            "ALLOWED (ALLOW: payment)",
        ),
        (["anonymous", "call", "payment", "status"], 1, "DENIED (ALLOW)"),
        (["spiffe://example.org/x", "publish", "orders", "orders.x"], 0, "ALLOWED (default)"),
    ],
)
def test_decide(
    files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    first_line: str,
) -> None:
    assert run_in_process(["policy", "decide", str(files[0]), *argv]) == code
    out = capsys.readouterr().out.splitlines()
    assert out[0] == first_line
    assert argv[3] in out[1]
    if argv[3] == "charge":
        assert out[2] == "  audited by: audit-charges"


def test_decide_rejects_a_bad_principal(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_in_process(["policy", "decide", str(files[0]), "Bad/ID", "call", "s", "m"]) == 2
    assert "trust-domain-charset" in capsys.readouterr().err


def _main_importable() -> str:
    try:
        import zmeshlib.cli.main  # noqa: F401
    except ImportError as exc:
        return f"zmeshlib.cli.main cannot be imported yet ({exc}): the other sub-command modules are missing"
    return ""


@pytest.mark.skipif(bool(_main_importable()), reason=_main_importable() or "importable")
def test_zmesh_policy_check_as_a_process(files: tuple[Path, Path]) -> None:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    )
    cmd = [sys.executable, "-m", "zmeshlib.cli.main", "policy", "check"]
    ok = subprocess.run([*cmd, str(files[0])], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"OK {files[0]}: revision ")
    bad = subprocess.run([*cmd, str(files[1])], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1, bad.stderr
    assert [line.strip()[:40] for line in bad.stdout.splitlines()[1:]] == [
        p[:40] for p in BAD_PROBLEMS
    ]


UNREACHABLE = textwrap.dedent(
    """\
    traffic:
      orders:
        timeout: 2s
        routes:
          - name: canary
            match: [{headers: {x-canary: "true"}}]
          - match: [{method: "*"}]
            timeout: 5s
          - name: beta
            match: [{method: "beta*"}]
    """
)


def test_check_warns_of_an_unreachable_route_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(UNREACHABLE)
    assert run_in_process(["policy", "check", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"OK {path}: revision ")
    assert lines[1:] == [
        'warning: traffic.orders.routes[2] ("beta") is unreachable: traffic.orders.routes[1] '
        "matches every request"
    ]


def test_check_prints_no_warning_for_reachable_routes(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_in_process(["policy", "check", str(files[0])]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1

"""``zmesh policy push``, run as a shell runs it: a dev CA's fresh SVID or identity files sign,
the registry holds what followers verify, and every error is one line with exit status 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import zmeshlib
from zmeshlib import DevCA, Policy
from zmeshlib.cli.main import build_parser, main
from zmeshlib.policy import SignedPolicy
from zmeshlib.registry import open_store

SRC = Path(zmeshlib.__file__).resolve().parents[1]
CONTROL = "spiffe://example.org/ns/mesh/sa/control"
POLICY = "trust_domains: [example.org]\nauthorization: [{name: pushed, rules: []}]\n"


def zmesh(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "zmeshlib.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    DevCA.create("example.org").save(tmp_path / "ca")  # what zmesh ca init writes
    (tmp_path / "mesh.yaml").write_text(POLICY)
    return tmp_path


def stored(workdir: Path) -> SignedPolicy:
    data = open_store(f"dir://{workdir / 'registry'}").get_policy()
    assert isinstance(data, bytes)
    return SignedPolicy.from_bytes(data)


def test_push_signed_by_a_fresh_dev_ca_svid(workdir: Path) -> None:
    args = ("policy", "push", "mesh.yaml", "--registry", "dir://registry")
    done = zmesh(workdir, *args, "--dir", "ca", "--spiffe-id", CONTROL)
    revision = Policy.load(workdir / "mesh.yaml").revision
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        f"published mesh.yaml as version 1 (revision {revision}), signed by {CONTROL}\n"
    )
    doc = stored(workdir)
    verified = doc.verify(DevCA.load(workdir / "ca").bundles, [CONTROL])
    assert (verified.version, str(verified.signer), doc.revision) == (1, CONTROL, revision)
    # the SVID lives 5 minutes and its key is written nowhere
    leaf = doc.certificates[0]
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() <= 310
    assert sorted(p.name for p in workdir.iterdir()) == ["ca", "mesh.yaml", "registry"]
    again = zmesh(workdir, *args, "--dir", "ca", "--spiffe-id", CONTROL, "--ttl", "30s")
    assert again.returncode == 0 and "as version 2 " in again.stdout


def test_push_signed_by_identity_files(workdir: Path) -> None:
    issued = zmesh(workdir, "ca", "issue", CONTROL, "--dir", "ca", "--out-dir", "control")
    assert issued.returncode == 0, issued.stderr
    done = zmesh(
        workdir, "policy", "push", "mesh.yaml", "--registry", "dir://registry",
        "--identity-dir", "control", "--version", "41",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "as version 41 " in done.stdout and stored(workdir).version == 41


def push(workdir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``zmesh policy push`` in this process, from ``workdir`` (the same parser and code)."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        code = main(["policy", "push", *args])
    finally:
        os.chdir(cwd)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--dir", "ca", "--spiffe-id", CONTROL, "--version", "1"], "is not newer than version 1"),
        (["--dir", "ca"], "--dir needs --spiffe-id"),
        (["--identity-dir", "ca", "--spiffe-id", CONTROL], "--spiffe-id goes with --dir"),
        (["--identity-dir", "nowhere"], "nowhere"),
        (["--dir", "nowhere", "--spiffe-id", CONTROL], "nowhere"),
        (["--dir", "ca", "--spiffe-id", "spiffe://partner.org/ns/x"], "partner.org"),
    ],
)
def test_errors_are_one_line_and_exit_1(
    workdir: Path, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    registry = ("mesh.yaml", "--registry", "dir://registry")
    assert push(workdir, capsys, *registry, "--dir", "ca", "--spiffe-id", CONTROL)[0] == 0
    code, out, err = push(workdir, capsys, *registry, *extra)
    assert (code, out) == (1, "")
    assert err.startswith("zmesh policy: error: ") and err.count("\n") == 1
    assert says in err
    assert stored(workdir).version == 1


@pytest.mark.parametrize(
    ("policy", "says"),
    [
        ("trust_domains: [partner.org]\n", "leave out example.org"),
        ("nope: 1\n", "unknown key"),
    ],
)
def test_a_policy_that_cannot_be_pushed(
    workdir: Path, capsys: pytest.CaptureFixture[str], policy: str, says: str
) -> None:
    (workdir / "bad.yaml").write_text(policy)
    code, _, err = push(
        workdir, capsys, "bad.yaml", "--registry", "dir://registry", "--dir", "ca",
        "--spiffe-id", CONTROL,
    )  # fmt: skip
    assert code == 1 and err.count("\n") == 1 and says in err
    assert open_store(f"dir://{workdir / 'registry'}").get_policy() is None


def test_usage_errors(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["policy", "push", "mesh.yaml", "--registry", "memory://"])
    assert info.value.code == 2
    assert "one of the arguments --dir --identity-dir is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["policy", "push", "mesh.yaml", "--registry", "memory://", "--dir", "ca",
              "--version", "0"])  # fmt: skip
    assert info.value.code == 2 and "a version is an integer" in capsys.readouterr().err


def test_every_option_has_help() -> None:
    parser = build_parser()
    policy = next(a for a in parser._subparsers._group_actions if a.choices)  # type: ignore[union-attr]
    push_parser = policy.choices["policy"]._subparsers._group_actions[0].choices["push"]
    actions = [a for a in push_parser._actions if a.dest != "help"]
    assert {a.dest for a in actions} >= {
        "file", "registry", "dir", "identity_dir", "spiffe_id", "ttl", "key", "version",
    }  # fmt: skip
    for action in actions:
        assert action.help, f"{action.dest} has no help"

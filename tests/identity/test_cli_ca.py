"""`zmesh ca init` and `zmesh ca issue`, end to end, through the zmesh entry point."""

from __future__ import annotations

import argparse
import json
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from zmeshlib.cli import ca as ca_cli
from zmeshlib.identity import DevCA, Identity, SpiffeId, X509Svid

ORDERS = "spiffe://example.org/ns/shop/sa/orders"


def zmesh(argv: Sequence[str]) -> int:
    """Run `zmesh ARGV`; through cli.main when all its sub-command modules exist."""
    try:
        from zmeshlib.cli.main import main
    except ImportError:  # another sub-command module is not in the tree yet
        parser = argparse.ArgumentParser(prog="zmesh")
        ca_cli.register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(list(argv))
        return int(args.func(args) or 0)
    return main(list(argv))


@pytest.mark.parametrize("intermediate", [False, True])
def test_init_then_issue_then_load(tmp_path, capsys, intermediate):
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    extra = ["--intermediate"] if intermediate else []
    assert zmesh(["ca", "init", "--trust-domain", "example.org", "--dir", str(ca_dir), *extra]) == 0
    assert "root.pem" in capsys.readouterr().out
    assert (DevCA.load(ca_dir).intermediate is not None) == intermediate

    rc = zmesh(["ca", "issue", ORDERS, "--dir", str(ca_dir), "--ttl", "1h", "--out-dir", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out.splitlines()
    paths = [out / "svid.pem", out / "svid_key.pem", out / "bundle.pem"]
    assert [Path(line) for line in printed[1:]] == paths
    assert stat.S_IMODE((out / "svid_key.pem").stat().st_mode) == 0o600

    ident = Identity.from_pem(*paths)
    assert ident.spiffe_id == SpiffeId.parse(ORDERS)
    assert ident.svid.not_after - ident.svid.not_before == pytest.approx(3600, abs=11)
    assert len(ident.svid.certificates) == (2 if intermediate else 1)

    # issuing again into the same directory rotates a running workload
    assert zmesh(["ca", "issue", ORDERS, "--dir", str(ca_dir), "--out-dir", str(out)]) == 0
    first = ident.svid
    assert ident.renew() is True and ident.svid != first


def test_issue_ttl_units_and_key_choice(tmp_path, monkeypatch):
    ca_dir = tmp_path / "ca"
    assert zmesh(["ca", "init", "--trust-domain", "example.org", "--dir", str(ca_dir)]) == 0
    monkeypatch.chdir(tmp_path)  # --out-dir defaults to the current directory
    assert (
        zmesh(["ca", "issue", ORDERS, "--dir", str(ca_dir), "--ttl", "90s", "--key", "ed25519"])
        == 0
    )
    ident = Identity.from_pem("svid.pem", "svid_key.pem", "bundle.pem")
    assert ident.svid.not_after - ident.svid.not_before == pytest.approx(90, abs=10)
    assert type(ident.svid.private_key).__name__ == "Ed25519PrivateKey"


def test_errors_are_one_line_and_exit_1(tmp_path, capsys):
    ca_dir = tmp_path / "ca"
    assert zmesh(["ca", "issue", ORDERS, "--dir", str(ca_dir)]) == 1
    assert "zmesh ca init" in capsys.readouterr().err
    assert zmesh(["ca", "init", "--trust-domain", "example.org", "--dir", str(ca_dir)]) == 0
    assert zmesh(["ca", "init", "--trust-domain", "example.org", "--dir", str(ca_dir)]) == 1
    assert "--force" in capsys.readouterr().err
    assert zmesh(["ca", "issue", "spiffe://other.org/x", "--dir", str(ca_dir)]) == 1
    assert "other.org" in capsys.readouterr().err
    assert zmesh(["ca", "init", "--trust-domain", "Bad_TD!", "--dir", str(tmp_path / "b")]) == 1
    assert "trust-domain-charset" in capsys.readouterr().err


def test_bad_duration_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        zmesh(["ca", "issue", ORDERS, "--dir", str(tmp_path), "--ttl", "5"])
    assert exc.value.code == 2
    assert "duration" in capsys.readouterr().err


def test_force_replaces_the_ca(tmp_path):
    ca_dir = tmp_path / "ca"
    assert zmesh(["ca", "init", "--trust-domain", "example.org", "--dir", str(ca_dir)]) == 0
    old = DevCA.load(ca_dir).root
    argv = ["ca", "init", "--trust-domain", "example.org", "--dir", str(ca_dir), "--force"]
    assert zmesh(argv) == 0
    assert DevCA.load(ca_dir).root != old


# -- issuing into a directory that already holds identity files -----------------------

PAYMENT = "spiffe://example.org/ns/shop/sa/payment"


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    assert zmesh(["ca", "init", "--trust-domain", "example.org", "--dir", str(directory)]) == 0
    return directory


def issue(ca_dir: Path, out: Path, spiffe_id: str, *extra: str) -> int:
    return zmesh(["ca", "issue", spiffe_id, "--dir", str(ca_dir), "--out-dir", str(out), *extra])


def held(out: Path) -> str:
    return str(X509Svid.parse((out / "svid.pem").read_bytes()).spiffe_id)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zmesh ca: error: "), err
    return err


def test_issue_refuses_to_overwrite_another_identity(ca_dir, tmp_path, capsys):
    out = tmp_path / "orders"
    assert issue(ca_dir, out, ORDERS) == 0
    before = {name: (out / name).read_bytes() for name in ("svid.pem", "svid_key.pem")}
    capsys.readouterr()
    assert issue(ca_dir, out, PAYMENT) == 1
    err = one_error_line(capsys)
    assert f"{out} holds the identity files of {ORDERS}" in err
    assert "pass --force to overwrite, or choose another --out-dir" in err
    assert {name: (out / name).read_bytes() for name in before} == before  # untouched
    # re-issuing the same ID is rotation, and stays allowed
    assert issue(ca_dir, out, ORDERS) == 0 and held(out) == ORDERS
    # --force replaces the other identity's files
    assert issue(ca_dir, out, PAYMENT, "--force") == 0 and held(out) == PAYMENT


def test_issue_refuses_a_garbled_svid_file_without_force(ca_dir, tmp_path, capsys):
    out = tmp_path / "orders"
    out.mkdir()
    (out / "svid.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    assert issue(ca_dir, out, ORDERS) == 1
    err = one_error_line(capsys)
    assert "svid.pem is not a readable SVID" in err and "malformed-pem" in err
    assert "--force" in err
    assert issue(ca_dir, out, ORDERS, "--force") == 0 and held(out) == ORDERS


def test_issue_refuses_an_unreadable_svid_file_and_a_lone_key(ca_dir, tmp_path, capsys):
    out = tmp_path / "orders"
    (out / "svid.pem").mkdir(parents=True)  # unreadable as a file, whatever the user
    assert issue(ca_dir, out, ORDERS) == 1
    assert "not a readable SVID" in one_error_line(capsys)
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "svid_key.pem").write_bytes(b"someone's key")
    assert issue(ca_dir, lone, ORDERS) == 1
    assert "svid_key.pem exists without svid.pem" in one_error_line(capsys)
    assert issue(ca_dir, lone, ORDERS, "--force") == 0 and held(lone) == ORDERS


def test_issue_refusal_through_the_installed_entry_point(ca_dir, tmp_path):
    out = tmp_path / "orders"
    assert issue(ca_dir, out, ORDERS) == 0
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "zmeshlib.cli.main",
            "ca",
            "issue",
            PAYMENT,
            "--dir",
            str(ca_dir),
            "--out-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and ORDERS in done.stderr and "--force" in done.stderr
    assert held(out) == ORDERS


@pytest.mark.parametrize("intermediate", [False, True])
def test_show_names_the_domain_and_each_certificate(tmp_path, capsys, intermediate):
    ca_dir = tmp_path / "ca"
    assert zmesh(["ca", "init", "--trust-domain", "example.org", "--dir", str(ca_dir)]
                 + (["--intermediate"] if intermediate else [])) == 0  # fmt: skip
    capsys.readouterr()
    assert zmesh(["ca", "show", "--dir", str(ca_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ca = DevCA.load(ca_dir)
    roles = ["root", "intermediate"] if intermediate else ["root"]
    assert doc["trust_domain"] == "example.org"
    assert [c["role"] for c in doc["certificates"]] == roles
    assert doc["certificates"][0]["sha256"] == ca.root.fingerprint(hashes.SHA256()).hex(":")
    assert doc["signs_svids_with"] == roles[-1]
    assert zmesh(["ca", "show", "--dir", str(ca_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"dev CA for trust domain example.org in {ca_dir}"
    assert lines[1].startswith("root: CN=root example.org")
    assert f"  sha256 {doc['certificates'][0]['sha256']}" in lines


def test_show_of_a_directory_without_a_ca_is_one_error_line(tmp_path, capsys):
    assert zmesh(["ca", "show", "--dir", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("zmesh ca: error: ") and err.count("\n") == 1

"""`zmesh ca init` and `zmesh ca issue`, end to end, through the zmesh entry point."""

from __future__ import annotations

import argparse
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from zmeshlib.cli import ca as ca_cli
from zmeshlib.identity import DevCA, Identity, SpiffeId

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

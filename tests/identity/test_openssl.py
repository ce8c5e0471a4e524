"""Certificates made by the openssl command line (not by zmeshlib) are judged by the same rules.

And the reverse: what the dev CA issues, `openssl verify` accepts.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from zmeshlib._exceptions import IdentityError
from zmeshlib.identity import DevCA, SpiffeId, TrustBundle, X509Svid, verify_chain

OPENSSL = "/usr/bin/openssl"
pytestmark = pytest.mark.skipif(not Path(OPENSSL).exists(), reason="needs /usr/bin/openssl")

ORDERS = "spiffe://example.org/ns/shop/sa/orders"

CONFIG = f"""\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectAltName = URI:spiffe://example.org
subjectKeyIdentifier = hash
[intermediate]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectAltName = URI:spiffe://example.org
authorityKeyIdentifier = keyid
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:{ORDERS}
[leaf_is_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature
subjectAltName = URI:{ORDERS}
[leaf_two_uris]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectAltName = URI:{ORDERS}, URI:spiffe://example.org/ns/shop/sa/admin
[leaf_cert_sign]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyCertSign
subjectAltName = URI:{ORDERS}
"""


class OpenSSL:
    """Runs /usr/bin/openssl in one directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        (directory / "openssl.cnf").write_text(CONFIG)
        self.serial = 1

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [OPENSSL, *args], cwd=self.dir, capture_output=True, text=True, check=check, timeout=60
        )

    def root(self, name: str) -> str:
        self(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1",
            "-subj", f"/CN={name}", "-config", "openssl.cnf", "-extensions", "root",
        )  # fmt: skip
        return name

    def issue(self, name: str, issuer: str, section: str, newkey: str = "ec") -> str:
        keyopts = ["-pkeyopt", "ec_paramgen_curve:P-256"] if newkey == "ec" else []
        self(
            "req", "-new", "-newkey", newkey, *keyopts, "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", "-config", "openssl.cnf",
        )  # fmt: skip
        self.serial += 1
        self(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key",
            "-set_serial", str(self.serial), "-days", "1", "-out", f"{name}.pem",
            "-extfile", "openssl.cnf", "-extensions", section,
        )  # fmt: skip
        return name

    def read(self, *names: str, suffix: str = ".pem") -> bytes:
        return b"".join((self.dir / f"{n}{suffix}").read_bytes() for n in names)


@pytest.fixture(scope="module")
def ossl(tmp_path_factory) -> OpenSSL:
    tool = OpenSSL(tmp_path_factory.mktemp("openssl"))
    tool.root("root")
    tool.root("rogue")
    tool.issue("intermediate", "root", "intermediate")
    for section in ("leaf", "leaf_is_ca", "leaf_two_uris", "leaf_cert_sign"):
        tool.issue(section, "root", section)
    tool.issue("leaf_via_intermediate", "intermediate", "leaf")
    tool.issue("leaf_rsa", "root", "leaf", newkey="rsa:2048")
    tool.issue("leaf_rsa_1024", "root", "leaf", newkey="rsa:1024")
    tool.issue("leaf_of_rogue", "rogue", "leaf")
    return tool


@pytest.fixture(scope="module")
def bundle(ossl) -> TrustBundle:
    return TrustBundle.from_pem("example.org", ossl.read("root"))


@pytest.mark.parametrize(
    "chain",
    [("leaf",), ("leaf_rsa",), ("leaf_via_intermediate", "intermediate")],
    ids=["leaf", "rsa-leaf", "via-intermediate"],
)
def test_valid_openssl_svids_are_accepted(ossl, bundle, chain):
    svid = X509Svid.parse(ossl.read(*chain), ossl.read(chain[0], suffix=".key"))
    assert svid.verify(bundle) == SpiffeId.parse(ORDERS)
    # openssl agrees the chain is trusted
    untrusted = ["-untrusted", f"{chain[1]}.pem"] if len(chain) > 1 else []
    assert ossl("verify", "-CAfile", "root.pem", *untrusted, f"{chain[0]}.pem").returncode == 0


@pytest.mark.parametrize(
    ("leaf", "rule"),
    [
        ("leaf_is_ca", "leaf-is-ca"),
        ("leaf_two_uris", "multiple-uri-sans"),
        ("leaf_cert_sign", "leaf-has-key-cert-sign"),
        ("leaf_rsa_1024", "weak-key"),
    ],
)
def test_openssl_svids_breaking_a_rule(ossl, bundle, leaf, rule):
    with pytest.raises(IdentityError) as parsed:
        X509Svid.parse(ossl.read(leaf), ossl.read(leaf, suffix=".key"))
    assert parsed.value.rule == rule
    with pytest.raises(IdentityError) as verified:
        verify_chain(x509.load_pem_x509_certificates(ossl.read(leaf)), bundle)
    assert verified.value.rule == rule


def test_openssl_svid_signed_by_an_untrusted_ca(ossl, bundle):
    svid = X509Svid.parse(ossl.read("leaf_of_rogue"), ossl.read("leaf_of_rogue", suffix=".key"))
    with pytest.raises(IdentityError) as exc:
        svid.verify(bundle)
    assert exc.value.rule == "untrusted"
    assert ossl("verify", "-CAfile", "root.pem", "leaf_of_rogue.pem", check=False).returncode != 0


def test_openssl_traditional_ec_key_with_parameters_block(ossl, bundle):
    ossl("ecparam", "-name", "prime256v1", "-genkey", "-out", "trad.key")
    assert ossl.read("trad", suffix=".key").startswith(b"-----BEGIN EC PARAMETERS-----")
    ossl("req", "-new", "-key", "trad.key", "-out", "trad.csr", "-subj", "/CN=trad")
    ossl(
        "x509", "-req", "-in", "trad.csr", "-CA", "root.pem", "-CAkey", "root.key",
        "-set_serial", "99", "-days", "1", "-out", "trad.pem",
        "-extfile", "openssl.cnf", "-extensions", "leaf",
    )  # fmt: skip
    svid = X509Svid.parse(ossl.read("trad"), ossl.read("trad", suffix=".key"))
    assert svid.verify(bundle) == SpiffeId.parse(ORDERS)


@pytest.mark.parametrize("intermediate", [False, True])
def test_openssl_accepts_what_the_dev_ca_issues(ossl, intermediate):
    ca = DevCA.create("example.org", intermediate=intermediate)
    svid = ca.issue_svid(ORDERS)
    (ossl.dir / "dev_root.pem").write_bytes(ca.bundle.to_pem())
    (ossl.dir / "dev_leaf.pem").write_bytes(X509Svid.from_certificates([svid.leaf]).certs_pem())
    args = ["-CAfile", "dev_root.pem", "-purpose", "sslclient"]
    if intermediate:
        (ossl.dir / "dev_chain.pem").write_bytes(
            TrustBundle("example.org", [ca.intermediate]).to_pem()
        )
        args += ["-untrusted", "dev_chain.pem"]
    result = ossl("verify", *args, "dev_leaf.pem")
    assert result.stdout.strip().endswith("OK")

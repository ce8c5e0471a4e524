"""``zmesh ca``: a development CA on disk.

``zmesh ca show --dir P [--json]`` prints its trust domain and each certificate's
subject, validity and SHA-256 fingerprint.
``zmesh ca init --trust-domain D --dir P [--intermediate] [--ttl 8760h]`` creates the CA
(layout in :mod:`zmeshlib.identity.devca`); ``zmesh ca issue ID --dir P [--ttl 1h]
[--out-dir Q] [--key ec-p256]`` writes ``svid.pem`` (leaf first, then any
intermediate), ``svid_key.pem`` (mode 0600) and ``bundle.pem`` (the trust bundle),
which ``Identity.from_pem(svid.pem, svid_key.pem, bundle.pem)`` loads. Files are
replaced atomically, so re-issuing into the same directory rotates a running
workload's identity. Errors print one line and exit with status 1.

What ``issue`` does with the output directory (``--force`` writes in every case):

===============================================  ==========================================
the directory holds                              issue
===============================================  ==========================================
no ``svid.pem`` and no ``svid_key.pem``          writes the files
an SVID of the same SPIFFE ID                    replaces it (rotation)
an SVID of another SPIFFE ID                     refuses, naming that ID
an unreadable or damaged ``svid.pem``, or a      refuses: whose identity it is cannot be
``svid_key.pem`` without ``svid.pem``            told
===============================================  ==========================================

A running workload's identity never changes its SPIFFE ID (``Identity.renew``
refuses), so overwriting another ID's files would only break that workload.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .._exceptions import IdentityError, PolicyError
from ..identity.devca import KEY_TYPES, DevCA, write_file
from ..identity.spiffe_id import SpiffeId
from ..identity.svid import X509Svid

SVID_FILE = "svid.pem"
SVID_KEY_FILE = "svid_key.pem"
BUNDLE_FILE = "bundle.pem"


def _duration(text: str) -> float:
    """argparse type for ``30s``, ``1h``, ``1h30m``: the policy document's duration syntax."""
    from ..policy._reader import Reader

    problems: list[str] = []
    seconds = Reader(problems).duration(text)
    if seconds is None:
        raise argparse.ArgumentTypeError("; ".join(problems) or f"invalid duration {text!r}")
    return seconds


def register(subparsers: Any) -> None:
    ca = subparsers.add_parser(
        "ca", help="a development certificate authority (SPIFFE X.509-SVIDs)"
    )
    commands = ca.add_subparsers(dest="ca_command", required=True)

    init = commands.add_parser("init", help="create a dev CA for one trust domain")
    init.add_argument("--trust-domain", required=True, help="e.g. example.org")
    init.add_argument("--dir", required=True, type=Path, help="directory to write the CA into")
    init.add_argument(
        "--intermediate", action="store_true", help="sign SVIDs with an intermediate CA"
    )
    init.add_argument("--ttl", type=_duration, default=365 * 86400.0, help="CA lifetime (8760h)")
    init.add_argument("--force", action="store_true", help="replace an existing CA in --dir")
    init.set_defaults(func=_init)

    issue = commands.add_parser("issue", help="issue an X.509-SVID for a SPIFFE ID")
    issue.add_argument("spiffe_id", metavar="ID", help="spiffe://example.org/ns/shop/sa/orders")
    issue.add_argument("--dir", required=True, type=Path, help="the CA directory (zmesh ca init)")
    issue.add_argument("--ttl", type=_duration, default=3600.0, help="SVID lifetime, e.g. 30s, 1h")
    issue.add_argument("--out-dir", type=Path, help="where to write the SVID (default: current)")
    issue.add_argument("--key", choices=KEY_TYPES, default="ec-p256", help="leaf key algorithm")
    issue.add_argument(
        "--force",
        action="store_true",
        help="replace identity files of another SPIFFE ID (or unreadable ones) in --out-dir",
    )
    issue.set_defaults(func=_issue)

    show = commands.add_parser(
        "show",
        help="show a dev CA: its trust domain and each certificate's subject, validity "
        "and fingerprint",
    )
    show.add_argument("--dir", required=True, type=Path, help="the CA directory (zmesh ca init)")
    show.add_argument("--json", action="store_true", help="print JSON instead of lines")
    show.set_defaults(func=_show)


def _error(message: str) -> int:
    print(f"zmesh ca: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def _init(args: argparse.Namespace) -> int:
    if (args.dir / "root_key.pem").exists() and not args.force:
        return _error(f"a CA already exists in {args.dir}; pass --force to replace it")
    try:
        ca = DevCA.create(args.trust_domain, intermediate=args.intermediate, ttl=args.ttl)
        ca.save(args.dir)
    except (IdentityError, PolicyError, OSError) as exc:
        return _error(str(exc))
    print(f"created dev CA for trust domain {ca.trust_domain} in {args.dir}")
    print(f"trust bundle: {args.dir / 'root.pem'}")
    return 0


def _occupant(out: Path, wanted: SpiffeId) -> str | None:
    """Why ``out`` may not receive an SVID of ``wanted`` without --force, or None."""
    svid_path, key_path = out / SVID_FILE, out / SVID_KEY_FILE
    if not svid_path.exists():
        if key_path.exists():
            return f"{key_path} exists without {SVID_FILE}, so whose key it is cannot be told"
        return None
    try:
        held = X509Svid.parse(svid_path.read_bytes()).spiffe_id
    except (IdentityError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc
        return f"{svid_path} is not a readable SVID ({reason}), so whose it is cannot be told"
    if held != wanted:
        return f"{out} holds the identity files of {held}"
    return None


def _issue(args: argparse.Namespace) -> int:
    out = args.out_dir or Path.cwd()
    try:
        ca = DevCA.load(args.dir)
        wanted = SpiffeId.coerce(args.spiffe_id)
        occupied = None if args.force else _occupant(out, wanted)
        if occupied is not None:
            return _error(f"{occupied}; pass --force to overwrite, or choose another --out-dir")
        svid = ca.issue_svid(wanted, args.ttl, key=args.key)
        out.mkdir(parents=True, exist_ok=True)
        paths = (
            write_file(out / SVID_FILE, svid.certs_pem()),
            write_file(out / SVID_KEY_FILE, svid.key_pem(), private=True),
            write_file(out / BUNDLE_FILE, ca.bundle.to_pem()),
        )
    except (IdentityError, OSError) as exc:
        return _error(str(exc))
    print(f"issued {svid.spiffe_id} valid for {args.ttl:g}s")
    for path in paths:
        print(path)
    return 0


def _certificate(role: str, cert: x509.Certificate) -> dict[str, Any]:
    return {
        "role": role,
        "subject": cert.subject.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat().replace("+00:00", "Z"),
        "not_after": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
    }


def _show(args: argparse.Namespace) -> int:
    try:
        ca = DevCA.load(args.dir)
    except (IdentityError, OSError) as exc:
        return _error(str(exc))
    certificates = [_certificate("root", ca.root)]
    if ca.intermediate is not None:
        certificates.append(_certificate("intermediate", ca.intermediate))
    document = {"trust_domain": ca.trust_domain, "dir": str(args.dir), "certificates": certificates,
                "signs_svids_with": "intermediate" if ca.intermediate is not None else "root"}  # fmt: skip
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    print(f"dev CA for trust domain {ca.trust_domain} in {args.dir}")
    for cert in certificates:
        print(f"{cert['role']}: {cert['subject']}")
        print(f"  valid {cert['not_before']} .. {cert['not_after']}")
        print(f"  sha256 {cert['sha256']}")
    print(f"SVIDs are signed by the {document['signs_svids_with']}; trust bundle: "
          f"{args.dir / 'root.pem'}")  # fmt: skip
    return 0

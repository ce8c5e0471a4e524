"""``zmesh policy``: check a policy file, ask it for one decision, or push it signed.

``zmesh policy check FILE`` prints ``OK`` with the revision and a ``warning:``
line for each finding of :func:`~zmeshlib.policy.analyze` (exit status 0), or
every problem with its path (exit status 1), so it fits in CI before a rollout.
``zmesh policy decide FILE PRINCIPAL ACTION SERVICE RESOURCE`` prints the
decision and the sentence that explains it (exit status 1 when denied).
``zmesh policy explain`` (same arguments) adds every authorization policy's part
in the decision and, for a call, the route and the settings the request gets.

``zmesh policy push FILE --registry URL`` signs FILE and puts it in the
registry, where every ``Mesh.follow_policy`` that lists the signer applies it
(:func:`~zmeshlib.publish_policy`). The signer is one of:

==========================================  ==========================================
options                                     the signer
==========================================  ==========================================
``--dir CA_DIR --spiffe-id ID [--ttl 5m]``  a fresh SVID for ID from the dev CA, valid
                                            for ``--ttl``; its key lives in memory only
``--identity-dir DIR``                      the files ``zmesh ca issue --out-dir DIR``
                                            wrote (``svid.pem``, ``svid_key.pem``,
                                            ``bundle.pem``)
==========================================  ==========================================

``--version N`` sets the version (default: the stored one plus one). It prints
the version published; an error is one line, ``zmesh policy: error: ...``, and
exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._exceptions import IdentityError, MeshError, PolicyError
from ..identity.devca import KEY_TYPES, DevCA
from ..identity.source import Identity
from ..identity.spiffe_id import SpiffeId
from ..policy import ACTIONS, Policy, analyze, publish_policy
from ..policy.distribution import MAX_VERSION
from ..policy.explain import Explanation, decision_lines, explain
from .ca import BUNDLE_FILE, SVID_FILE, SVID_KEY_FILE, _duration

#: How long the SVID ``push --dir`` issues for the signer lives (it signs once).
PUSH_SVID_TTL = 300.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("policy", help="check and query mesh policy files")
    sub = parser.add_subparsers(dest="policy_command", required=True)

    check = sub.add_parser("check", help="validate a policy file, listing every problem")
    check.add_argument("file", help="policy file (.yaml, .yml, .toml or .json)")
    check.set_defaults(func=check_command)

    decide = sub.add_parser("decide", help="show the authorization decision for one operation")
    _question(decide)
    decide.set_defaults(func=decide_command)

    explain = sub.add_parser(
        "explain",
        help="explain one decision: every authorization policy's part, and for a call the "
        "route, split, retries and timeouts it would get",
    )
    _question(explain)
    explain.set_defaults(func=explain_command)

    push = sub.add_parser(
        "push", help="sign a policy file and publish it to the registry (follow_policy)"
    )
    push.add_argument("file", help="policy file (.yaml, .yml, .toml or .json)")
    push.add_argument(
        "--registry", required=True, metavar="URL", help="registry URL, e.g. dir:///var/mesh"
    )
    signer = push.add_mutually_exclusive_group(required=True)
    signer.add_argument(
        "--dir",
        type=Path,
        metavar="CA_DIR",
        help="sign with a fresh SVID from this dev CA (zmesh ca init); needs --spiffe-id",
    )
    signer.add_argument(
        "--identity-dir",
        type=Path,
        metavar="DIR",
        help=f"sign with the identity files in DIR ({SVID_FILE}, {SVID_KEY_FILE}, "
        f"{BUNDLE_FILE}, as zmesh ca issue --out-dir writes them)",
    )
    push.add_argument(
        "--spiffe-id",
        metavar="ID",
        help="with --dir: the signer's SPIFFE ID, e.g. spiffe://example.org/ns/mesh/sa/control",
    )
    push.add_argument(
        "--ttl",
        type=_duration,
        default=PUSH_SVID_TTL,
        help="with --dir: lifetime of the signer's SVID (default 5m; the document outlives it)",
    )
    push.add_argument(
        "--key", choices=KEY_TYPES, default="ec-p256", help="with --dir: the SVID's key algorithm"
    )
    push.add_argument(
        "--version",
        type=_version,
        metavar="N",
        help="the document's version, newer than the stored one (default: the stored one + 1)",
    )
    push.set_defaults(func=push_command)


def _question(parser: Any) -> None:
    """The arguments of one operation to decide (``decide`` and ``explain``)."""
    parser.add_argument("file", help="policy file (.yaml, .yml, .toml or .json)")
    parser.add_argument("principal", help="SPIFFE ID of the peer, or 'anonymous'")
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("service", help="service whose socket the operation goes through")
    parser.add_argument("resource", help="topic (publish, subscribe) or method (call)")
    parser.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")


def _version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_VERSION:
        raise argparse.ArgumentTypeError(f"a version is an integer from 1 to {MAX_VERSION}")
    return value


def check_command(args: argparse.Namespace) -> int:
    try:
        policy = Policy.load(args.file)
    except PolicyError as exc:
        n = len(exc.problems)
        print(f"{args.file}: {n} problem{'s' if n != 1 else ''}", file=sys.stdout)
        for problem in exc.problems or (str(exc),):
            print(f"  {problem}")
        return 1
    print(
        f"OK {args.file}: revision {policy.revision}, {len(policy.authorization)} authorization "
        f"policies, {len(policy.services)} services, {len(policy.traffic)} traffic entries"
    )
    for finding in analyze(policy):
        print(f"warning: {finding}")
    return 0


def _explained(args: argparse.Namespace) -> Explanation | None:
    """The explanation ``decide`` and ``explain`` print; None (said on stderr) for a bad
    file or principal."""
    try:
        policy = Policy.load(args.file)
        principal = None if args.principal == "anonymous" else SpiffeId.coerce(args.principal)
    except (PolicyError, IdentityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    headers = dict(h.partition("=")[::2] for h in args.header)
    return explain(policy, principal, args.action, args.service, args.resource, headers)


def decide_command(args: argparse.Namespace) -> int:
    found = _explained(args)
    if found is None:
        return 2
    for line in decision_lines(found.decision):
        print(line)
    return 0 if found.decision.allowed else 1


def explain_command(args: argparse.Namespace) -> int:
    found = _explained(args)
    if found is None:
        return 2
    for line in found.lines():
        print(line)
    return 0 if found.decision.allowed else 1


def _push_error(message: str) -> int:
    print(f"zmesh policy: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def _signer(args: argparse.Namespace) -> Identity:
    if args.identity_dir is not None:
        if args.spiffe_id is not None:
            raise MeshError(
                "--spiffe-id goes with --dir; --identity-dir signs as the SVID in its files"
            )
        d = args.identity_dir
        return Identity.from_pem(d / SVID_FILE, d / SVID_KEY_FILE, d / BUNDLE_FILE)
    if args.spiffe_id is None:
        raise MeshError(
            "--dir needs --spiffe-id: the SPIFFE ID to sign as (one the followers list as a signer)"
        )
    ca = DevCA.load(args.dir)
    return Identity(ca.issue_svid(args.spiffe_id, args.ttl, key=args.key), ca.bundles)


def push_command(args: argparse.Namespace) -> int:
    try:
        policy = Policy.load(args.file)
        identity = _signer(args)
        try:
            version = publish_policy(
                policy, identity=identity, registry=args.registry, version=args.version
            )
        finally:
            identity.close()
    except (MeshError, OSError) as exc:
        return _push_error(str(exc))
    print(
        f"published {args.file} as version {version} (revision {policy.revision}), "
        f"signed by {identity.spiffe_id}"
    )
    return 0

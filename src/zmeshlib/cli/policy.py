"""``zmesh policy``: check a policy file, or ask it for one authorization decision.

``zmesh policy check FILE`` prints ``OK`` with the revision and a ``warning:``
line for each finding of :func:`~zmeshlib.policy.analyze` (exit status 0), or
every problem with its path (exit status 1), so it fits in CI before a rollout.
``zmesh policy decide FILE PRINCIPAL ACTION SERVICE RESOURCE`` prints the
decision and the sentence that explains it (exit status 1 when denied).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._exceptions import IdentityError, PolicyError
from ..identity.spiffe_id import SpiffeId
from ..policy import ACTIONS, Policy, analyze


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("policy", help="check and query mesh policy files")
    sub = parser.add_subparsers(dest="policy_command", required=True)

    check = sub.add_parser("check", help="validate a policy file, listing every problem")
    check.add_argument("file", help="policy file (.yaml, .yml, .toml or .json)")
    check.set_defaults(func=check_command)

    decide = sub.add_parser("decide", help="show the authorization decision for one operation")
    decide.add_argument("file", help="policy file (.yaml, .yml, .toml or .json)")
    decide.add_argument("principal", help="SPIFFE ID of the peer, or 'anonymous'")
    decide.add_argument("action", choices=ACTIONS)
    decide.add_argument("service", help="service whose socket the operation goes through")
    decide.add_argument("resource", help="topic (publish, subscribe) or method (call)")
    decide.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")
    decide.set_defaults(func=decide_command)


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


def decide_command(args: argparse.Namespace) -> int:
    try:
        policy = Policy.load(args.file)
        principal = None if args.principal == "anonymous" else SpiffeId.coerce(args.principal)
    except (PolicyError, IdentityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    headers = dict(h.partition("=")[::2] for h in args.header)
    decision = policy.authorizer().check(
        principal, args.action, args.service, args.resource, headers
    )
    verdict = "ALLOWED" if decision.allowed else "DENIED"
    print(f"{verdict} ({decision.action}{': ' + decision.policy if decision.policy else ''})")
    print(f"  {decision.reason}")
    if decision.audited:
        print(f"  audited by: {', '.join(decision.audited)}")
    return 0 if decision.allowed else 1

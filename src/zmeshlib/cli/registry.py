"""``zmesh registry list|show``: what a card registry holds, and what of it is believed.

``zmesh registry show ID_OR_KEY --registry URL [...]`` prints the entries of one
workload (a SPIFFE ID) or one key id (or its start), every field in full, with
the options of ``list``.

``zmesh registry list --registry URL [--trust-bundle PEM ...] [--trust-domain TD] [--json]``
prints every card of the registry (SPIFFE ID, key id, services, endpoints with
their socket kinds, labels, validity window, state) and every entry no lookup
would return, with the rule that rejects it: the first thing to run when a
service cannot be found.

Rules this module keeps:

* It never claims what it did not check. With ``--trust-bundle`` every card is
  verified exactly as a workload's registry verifies it (:class:`Registry`);
  without one nothing can be verified, so decoded cards are listed with the
  state ``unverified`` and a warning line says why. Secure naming is not
  applied: that needs the policy, and it depends on the service asked for.
* It only reads. A ``dir://`` URL must name an existing directory (opening a
  registry would otherwise create it); ``memory://`` lives inside one process,
  so another process can never list it.
* Input from the store or the bundle files never makes it crash: a bad entry
  is a line of the listing, a bad file a one-line error (exit status 1).

Each entry lands in one of two lists:

==================================  ========================  ========================
the entry                           with ``--trust-bundle``   without
==================================  ========================  ========================
verifies, inside its window         card, ``valid``           card, ``unverified``
verifies, past its ``not_after``    card, ``expired``         card, ``unverified``
verifies, before its ``not_before`` card, ``not yet valid``   card, ``unverified``
fails verification                  rejected, its rule        card, ``unverified``
decodes, under another key's id     rejected,                 rejected,
                                    ``card-wrong-key``        ``card-wrong-key``
does not decode, or cannot be read  rejected, its rule        rejected, its rule
==================================  ========================  ========================

Theory of operation: a table lists one card per line in aligned columns
(times in UTC, key ids cut to 16 hex digits, the whole id in ``--json``); the
JSON form holds the same lists with every field in full, epoch seconds and
ISO 8601 times, and ``verified`` saying whether any of it was checked.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from .._exceptions import IdentityError, MeshError
from ..identity.card import Card
from ..identity.spiffe_id import SpiffeId
from ..identity.svid import Bundles, TrustBundle
from ..registry import UNVERIFIABLE, Registry, Unreadable, open_store

STATES = {"": "valid", "card-expired": "expired", "card-not-yet-valid": "not yet valid"}
UNVERIFIED = "unverified"
WARNING = (
    "warning: no --trust-bundle given, so no card below was verified (signature, chain, "
    "window): their state is 'unverified'. Pass the trust bundle (e.g. the CA's root.pem) "
    "to see what a workload would accept."
)
_KEY_WIDTH = 16


class CliError(Exception):
    """A problem with the command's arguments or files, printed as one line."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("registry", help="inspect a card registry")
    sub = parser.add_subparsers(dest="registry_command", required=True)
    listing = sub.add_parser(
        "list", help="list every card and every rejected entry of a registry, with the reason"
    )
    _registry_options(listing)
    listing.set_defaults(func=list_command)

    show = sub.add_parser(
        "show", help="show every entry of one workload (a SPIFFE ID) or one key id, in full"
    )
    show.add_argument("who", metavar="ID_OR_KEY", help="a SPIFFE ID, or a key id (or its start)")
    _registry_options(show)
    show.set_defaults(func=show_command)


def _registry_options(parser: Any) -> None:
    """The options ``list`` and ``show`` share: where the cards are, what to verify them with."""
    parser.add_argument(
        "--registry", required=True, metavar="URL", help="the registry URL, e.g. dir:///var/zmesh"
    )
    parser.add_argument(
        "--trust-bundle",
        action="append",
        default=[],
        metavar="PEM",
        help="CA certificates to verify cards with (repeatable); without one nothing is verified",
    )
    parser.add_argument(
        "--trust-domain",
        metavar="TD",
        help="the trust domain of the bundles (default: read from each CA's spiffe:// URI SAN)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


# -- inputs --------------------------------------------------------------------------------


def _check_url(url: str) -> None:
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "memory":
        raise CliError(
            f"{url} lives inside one process; another process cannot list it. Use a dir:// "
            "registry to share cards between processes"
        )
    if sep and scheme == "dir" and rest and not Path(rest).is_dir():
        raise CliError(f"{url}: no such registry directory ({rest} is not a directory)")


def _trust_domain_of(path: str, certificates: Sequence[x509.Certificate]) -> str:
    for cert in certificates:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        except Exception:  # no SAN, or one the parser refuses: look at the next certificate
            continue
        for uri in uris:
            if uri.startswith("spiffe://"):
                try:
                    return SpiffeId.parse(uri).trust_domain
                except IdentityError:
                    continue
    raise CliError(
        f"{path}: no CA certificate names its trust domain (a spiffe:// URI SAN); "
        "pass --trust-domain TD"
    )


def load_bundles(paths: Sequence[str], trust_domain: str | None) -> Bundles:
    """The bundles the files hold, one per trust domain (files of one domain are merged)."""
    by_domain: dict[str, list[x509.Certificate]] = {}
    for path in paths:
        try:
            pem = Path(path).read_bytes()
        except OSError as e:
            raise CliError(f"cannot read trust bundle {path}: {e.strerror}") from e
        try:
            certificates = x509.load_pem_x509_certificates(pem)
        except Exception as e:
            raise CliError(f"{path} holds no PEM certificate ({e})") from e
        domain = trust_domain or _trust_domain_of(path, certificates)
        by_domain.setdefault(domain, []).extend(certificates)
    try:
        return Bundles(TrustBundle(domain, tuple(certs)) for domain, certs in by_domain.items())
    except IdentityError as e:
        raise CliError(f"unusable trust bundle: {e}") from e
    except Exception as e:  # a certificate the X.509 code cannot judge
        raise CliError(f"unusable trust bundle: {type(e).__name__}: {e}") from e


# -- the listing ---------------------------------------------------------------------------


def _time(epoch: float) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"{epoch:.3f}"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _card_record(key_id: str, card: Card, state: str) -> dict[str, Any]:
    return {
        "key_id": key_id,
        "spiffe_id": str(card.spiffe_id),
        "state": state,
        "services": sorted(card.services),
        "endpoints": [
            {"address": ep.address, "kind": ep.kind, "service": ep.service} for ep in card.endpoints
        ],
        "labels": dict(card.labels),
        "not_before": card.not_before,
        "not_after": card.not_after,
        "not_before_utc": _time(card.not_before),
        "not_after_utc": _time(card.not_after),
    }


def _rejected_record(key_id: str, rule: str, card: Card | None) -> dict[str, Any]:
    return {
        "key_id": key_id,
        "rule": rule,
        "claims": None if card is None else str(card.spiffe_id),
    }


def verified_listing(
    url: str, bundles: Bundles
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Cards and rejected entries as the workloads' registry judges them now."""
    cards, rejected = [], []
    with Registry(url, bundles=bundles) as registry:
        for key_id, card, rule in registry.entries():
            if card is not None and rule in STATES:
                cards.append(_card_record(key_id, card, STATES[rule]))
            else:
                rejected.append(_rejected_record(key_id, rule, card))
    return cards, rejected


def unverified_listing(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Cards as decoded, unchecked; entries that do not even decode are rejected."""
    cards, rejected = [], []
    store = open_store(url)
    try:
        for key_id, data in store.scan():
            if isinstance(data, Unreadable):
                rejected.append(_rejected_record(key_id, data.rule, None))
                continue
            try:
                card = Card.from_bytes(data)
            except IdentityError as e:
                rejected.append(_rejected_record(key_id, e.rule, None))
                continue
            except Exception:
                rejected.append(_rejected_record(key_id, UNVERIFIABLE, None))
                continue
            if card.key_id != key_id:
                rejected.append(_rejected_record(key_id, "card-wrong-key", card))
            else:
                cards.append(_card_record(key_id, card, UNVERIFIED))
    finally:
        store.close()
    return cards, rejected


def _short(key_id: str) -> str:
    """A card's key id cut as git cuts a hash (the whole id is in --json)."""
    return key_id[:_KEY_WIDTH]


def _endpoint(endpoint: dict[str, str], labels: dict[str, str]) -> str:
    """``address (KIND service)``: the service it serves (its own, else the card's label)."""
    service = endpoint["service"] or labels.get("service", "")
    return f"{endpoint['address']} ({endpoint['kind']}{' ' + service if service else ''})"


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Plain-text aligned columns (the last one unpadded)."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        cells.append(row[-1])
        lines.append("  ".join(cells).rstrip())
    return lines


def format_table(cards: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> list[str]:
    lines = [f"{len(cards)} card{'s' if len(cards) != 1 else ''}"]
    if cards:
        rows = [
            [
                c["state"],
                c["spiffe_id"],
                _short(c["key_id"]),
                ", ".join(c["services"]) or "-",
                ", ".join(_endpoint(e, c["labels"]) for e in c["endpoints"]) or "-",
                ", ".join(f"{k}={v}" for k, v in sorted(c["labels"].items())) or "-",
                c["not_before_utc"],
                c["not_after_utc"],
            ]
            for c in cards
        ]
        header = [
            "STATE", "SPIFFE ID", "KEY", "SERVICES", "ENDPOINTS", "LABELS", "NOT BEFORE",
            "NOT AFTER",
        ]  # fmt: skip
        lines += _columns(header, rows)
    lines.append(f"{len(rejected)} rejected entr{'ies' if len(rejected) != 1 else 'y'}")
    if rejected:
        rows = [[_short(r["key_id"]), r["rule"], r["claims"] or "-"] for r in rejected]
        lines += _columns(["KEY", "REASON", "CLAIMS"], rows)
    return lines


def _listing(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """The cards and rejected entries the options ask for (verified with --trust-bundle);
    None, said on stderr in one line, when the URL or a bundle file is unusable."""
    try:
        _check_url(args.registry)
        if args.trust_bundle:
            bundles = load_bundles(args.trust_bundle, args.trust_domain)
            return verified_listing(args.registry, bundles)
        if args.trust_domain:
            raise CliError("--trust-domain names the domain of --trust-bundle files; give one")
        return unverified_listing(args.registry)
    except (CliError, MeshError) as e:
        print(f"zmesh registry: error: {e}", file=sys.stderr)
        return None


def list_command(args: argparse.Namespace) -> int:
    listed = _listing(args)
    if listed is None:
        return 1
    cards, rejected = listed
    verified = bool(args.trust_bundle)
    if not verified:
        print(WARNING, file=sys.stderr)
    if args.json:
        document: dict[str, Any] = {
            "registry": args.registry,
            "verified": verified,
            "cards": cards,
            "rejected": rejected,
        }
        if not verified:
            document["warning"] = WARNING
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print("\n".join(format_table(cards, rejected)))
    return 0


def _matches(who: str, key_id: str, spiffe_id: str | None) -> bool:
    if who.startswith("spiffe://") or "/" in who:
        try:
            return spiffe_id is not None and SpiffeId.coerce(who) == SpiffeId.coerce(spiffe_id)
        except IdentityError:
            return False
    return key_id.startswith(who.lower())


def show_command(args: argparse.Namespace) -> int:
    listed = _listing(args)
    if listed is None:
        return 1
    cards, rejected = listed
    cards = [c for c in cards if _matches(args.who, c["key_id"], c["spiffe_id"])]
    rejected = [r for r in rejected if _matches(args.who, r["key_id"], r["claims"])]
    if not args.trust_bundle:
        print(WARNING, file=sys.stderr)
    if not cards and not rejected:
        print(f"zmesh registry: no entry of {args.registry} is {args.who}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"cards": cards, "rejected": rejected}, indent=2, ensure_ascii=False))
        return 0
    for card in cards:
        print(f"card {card['key_id']}")
        print(f"  spiffe_id  {card['spiffe_id']}")
        print(f"  state      {card['state']}")
        print(f"  window     {card['not_before_utc']} .. {card['not_after_utc']}")
        print(f"  services   {', '.join(card['services']) or '-'}")
        for ep in card["endpoints"]:
            print(f"  endpoint   {ep['address']} {ep['kind']} {ep['service']}")
        for name, value in sorted(card["labels"].items()):
            print(f"  label      {name}={value}")
    for entry in rejected:
        print(f"rejected {entry['key_id']}")
        print(f"  rule       {entry['rule']}")
        if entry["claims"]:
            print(f"  claims     {entry['claims']}")
    return 0

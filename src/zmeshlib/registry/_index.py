"""The registry's verdicts on store entries and its index of a whole store (pure: no I/O,
no registry state). The rules they keep are the registry's: see
:mod:`zmeshlib.registry.registry`, "How long a verdict holds"."""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
from typing import TYPE_CHECKING

from .._exceptions import IdentityError
from ..identity.card import Card
from .stores import Unreadable

if TYPE_CHECKING:
    from ..identity.svid import Bundles

log = logging.getLogger("zmeshlib.registry")

#: The rule of an entry whose decoding or verification raised something unexpected.
UNVERIFIABLE = "card-unverifiable"
# What a cached verdict is charged: a decoded card takes about twice its encoded size
# plus 2 KiB of objects (measured: a 1.3 KB EC P-256 card takes 4.1 KB of the process's
# memory once decoded, the X.509 objects keeping their DER besides the Python ones).
_ENTRY_COST = 2048
_CARD_COST_FACTOR = 2
_BARE_COST = 512  # a verdict without a card (junk, unreadable): the entry and its digest


class _Entry:
    """The verdict on one entry's bytes under one bundles object."""

    __slots__ = ("bundles", "card", "cost", "digest", "noted", "problem", "rule", "trusted_until")

    def __init__(
        self,
        digest: bytes,
        bundles: object,
        card: Card | None,
        problem: str,
        rule: str,
        *,
        cost: int = _BARE_COST,
        trusted_until: float = math.inf,
    ) -> None:
        self.digest = digest  # SHA-256 of the card bytes (33 bytes for an Unreadable)
        self.bundles = bundles
        self.card = card  # decoded card (None when corrupt or unreadable)
        self.problem = problem  # "" (verified), "corrupt" or "invalid"
        self.rule = rule  # the rule that rejects the entry when problem is set
        self.cost = cost  # bytes charged to the cache
        self.trusted_until = trusted_until  # the bundle authorities vouch until then
        self.noted: set[str] = set()  # counter events already counted for this entry

    def lapsed(self, now: float) -> bool:
        """Whether this verified card must be verified again: its authorities may have expired."""
        card = self.card
        return (
            not self.problem
            and card is not None
            and self.trusted_until < now < card.not_after
            and now >= card.not_before
        )


class _Index:
    """Every entry of the store with its verdict, as of one store token and bundles generation."""

    __slots__ = (
        "authority_bounds",
        "by_digest",
        "card_bounds",
        "content",
        "entries",
        "gen",
        "next_lapse",
        "token",
        "verified",
    )

    def __init__(self, entries: list[tuple[str, _Entry]], token: object, gen: int) -> None:
        self.entries = entries
        self.token = token
        self.gen = gen
        self.by_digest = {entry.digest: entry for _, entry in entries}
        # what name lookups look through: a store full of junk costs them nothing
        self.verified = [(key_id, entry) for key_id, entry in entries if not entry.problem]
        content = hashlib.sha256()
        card_bounds: list[float] = []
        authority_bounds: list[float] = []
        for key_id, entry in entries:
            content.update(
                b"%s\x00%s\x00%s\x00" % (key_id.encode(), entry.digest, entry.rule.encode())
            )
            if not entry.problem and entry.card is not None:
                card_bounds += (entry.card.not_before, entry.card.not_after)
                if entry.trusted_until < entry.card.not_after:
                    authority_bounds.append(entry.trusted_until)
        self.content = content.digest()
        self.card_bounds = sorted(card_bounds)
        self.authority_bounds = sorted(authority_bounds)
        self.next_lapse = self.authority_bounds[0] if authority_bounds else math.inf

    def epoch(self, now: float) -> int:
        """How many boundaries have passed: a card bound at ``now``, an authority's after it."""
        return bisect.bisect_right(self.card_bounds, now) + bisect.bisect_left(
            self.authority_bounds, now
        )


_EMPTY = _Index([], None, -1)


def _authority_bound(card: Card, bundles: Bundles, at: float) -> float:
    """The earliest ``not_after`` of the card's trust domain's authorities still valid at ``at``."""
    bundle = bundles.get(card.spiffe_id.trust_domain)
    if bundle is None:  # verification passed, so there is one; be safe all the same
        return at
    ends = (a.not_valid_after_utc.timestamp() for a in bundle.authorities)
    return min((end for end in ends if end >= at), default=at)


def _judge(digest: bytes, data: bytes | Unreadable, bundles: Bundles, now: float) -> _Entry:
    """The verdict on one entry (pure: no registry state). Raises nothing but BaseException."""
    if isinstance(data, Unreadable):
        return _Entry(digest, bundles, None, "corrupt", data.rule)
    try:
        card = Card.from_bytes(data)
    except IdentityError as e:
        return _Entry(digest, bundles, None, "corrupt", e.rule)
    except Exception as e:
        log.warning("a stored card could not be decoded (%s: %s); ignoring it", type(e).__name__, e)
        return _Entry(digest, bundles, None, "invalid", UNVERIFIABLE)
    return _verify(digest, card, _ENTRY_COST + _CARD_COST_FACTOR * len(data), bundles, now)


def _verify(digest: bytes, card: Card, cost: int, bundles: Bundles, now: float) -> _Entry:
    """The verdict on a decoded card, reached at ``now`` if inside its window, else at its start."""
    at = now if card.not_before <= now < card.not_after else card.not_before
    try:
        card.verify(bundles, now=at)
        until = _authority_bound(card, bundles, at)
    except IdentityError as e:
        return _Entry(digest, bundles, card, "invalid", e.rule, cost=cost)
    except Exception as e:
        log.warning(
            "the stored card of %s could not be verified (%s: %s); ignoring it",
            card.spiffe_id,
            type(e).__name__,
            e,
        )
        return _Entry(digest, bundles, card, "invalid", UNVERIFIABLE, cost=cost)
    return _Entry(digest, bundles, card, "", "", cost=cost, trusted_until=until)


def _rule(key_id: str, entry: _Entry, now: float) -> str:
    """Why no lookup returns ``entry`` filed under ``key_id`` at ``now``; "" when one does."""
    if entry.problem:
        return entry.rule
    if entry.card is None:  # pragma: no cover - a verdict without a problem has a card
        return UNVERIFIABLE
    if entry.card.key_id != key_id:
        return "card-wrong-key"
    try:
        entry.card.check_window(now)
    except IdentityError as e:
        return e.rule
    return ""


def _digest(data: bytes | Unreadable, key_id: str) -> bytes:
    """The cache key of an entry: its bytes' SHA-256, or (33 bytes, never equal) its failure."""
    if isinstance(data, Unreadable):
        return b"!" + hashlib.sha256(f"{key_id}\x00{data.rule}".encode()).digest()
    return hashlib.sha256(data).digest()

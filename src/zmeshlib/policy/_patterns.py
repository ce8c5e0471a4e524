"""String patterns of the policy document, and their compiled form.

Rules this module keeps:

* A pattern is one of four forms, as in Istio:

  ==============  =====================================  ==========================
  written         matches                                kind
  ==============  =====================================  ==========================
  ``*``           any present value (never an absent     ``any``
                  one: an anonymous peer has no
                  principal)
  ``prefix*``     values starting with ``prefix``        ``prefix``
                  (``prefix`` itself included)
  ``*suffix``     values ending with ``suffix``          ``suffix``
  ``text``        exactly ``text``                       ``exact``
  ==============  =====================================  ==========================

  A ``*`` anywhere else is an error. Topic patterns allow no ``suffix``
  form: a ZeroMQ publisher filters by prefix, so only the end of a topic
  pattern may be a wildcard.
* Parsing never raises: it returns the pattern or the reason it is invalid,
  so the loader can collect every problem of a document at once.
* :class:`PatternIndex` is the compiled form of many patterns, each tagged
  with a bit mask. ``lookup(value)`` returns the OR of the masks of every
  pattern that matches, in a number of dictionary probes bounded by the
  number of *distinct* prefix and suffix lengths, not by the number of
  patterns. It is a prefix trie flattened into one hash table per length,
  which is what is fast in Python.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

ANY = "any"
EXACT = "exact"
PREFIX = "prefix"
SUFFIX = "suffix"


@attrs.frozen
class Pattern:
    """One parsed pattern: its kind and the literal part (without ``*``)."""

    kind: str
    literal: str

    def matches(self, value: str) -> bool:
        if self.kind == ANY:
            return True
        if self.kind == EXACT:
            return value == self.literal
        if self.kind == PREFIX:
            return value.startswith(self.literal)
        return value.endswith(self.literal)


def parse_pattern(text: str, *, suffix_allowed: bool = True) -> Pattern | str:
    """Parse ``text``; return the :class:`Pattern` or the reason it is invalid."""
    if text == "":
        return "an empty pattern matches nothing; write '*' to match any value"
    if text == "*":
        return Pattern(ANY, "")
    stars = text.count("*")
    if stars == 1 and text.endswith("*"):
        return Pattern(PREFIX, text[:-1])
    if stars == 1 and text.startswith("*"):
        if suffix_allowed:
            return Pattern(SUFFIX, text[1:])
        return (
            f"{text!r}: a ZeroMQ publisher filters topics by prefix, so '*' may only end "
            "a topic pattern (write 'prefix*', an exact topic, or '*')"
        )
    if stars == 0:
        return Pattern(EXACT, text)
    if not suffix_allowed:
        return (
            f"{text!r}: a ZeroMQ publisher filters topics by prefix, so '*' may only end "
            "a topic pattern (write 'prefix*', an exact topic, or '*')"
        )
    return f"{text!r}: '*' may appear once, at the start or at the end of a pattern"


class PatternIndex:
    """Many patterns compiled for one question: which of them match this value?

    Each pattern carries a bit mask (the rules it belongs to); :meth:`lookup`
    ORs the masks of the matching patterns.
    """

    __slots__ = ("_any", "_exact", "_prefixes", "_suffixes")

    def __init__(self, entries: Iterable[tuple[Pattern, int]] = ()) -> None:
        self._any = 0
        self._exact: dict[str, int] = {}
        prefixes: dict[int, dict[str, int]] = {}
        suffixes: dict[int, dict[str, int]] = {}
        for pattern, mask in entries:
            if pattern.kind == ANY:
                self._any |= mask
            elif pattern.kind == EXACT:
                self._exact[pattern.literal] = self._exact.get(pattern.literal, 0) | mask
            else:
                by_len = prefixes if pattern.kind == PREFIX else suffixes
                table = by_len.setdefault(len(pattern.literal), {})
                table[pattern.literal] = table.get(pattern.literal, 0) | mask
        self._prefixes = tuple(sorted(prefixes.items()))
        self._suffixes = tuple(sorted(suffixes.items()))

    def lookup(self, value: str) -> int:
        mask = self._any | self._exact.get(value, 0)
        size = len(value)
        for length, table in self._prefixes:
            if length > size:
                break
            mask |= table.get(value[:length], 0)
        for length, table in self._suffixes:
            if length > size:
                break
            # value[size - length:] and not value[-length:], which is wrong for length 0
            mask |= table.get(value[size - length :], 0)
        return mask

    def __bool__(self) -> bool:
        return bool(self._any or self._exact or self._prefixes or self._suffixes)

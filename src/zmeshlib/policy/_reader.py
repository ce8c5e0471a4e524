"""Reading a policy document while collecting every problem, the way ``istioctl analyze`` does.

Rules this module keeps:

* A reader never raises on bad input, whatever the input is (any mix of
  mappings, lists, strings, bytes, numbers of any size, NaN, lone
  surrogates, shared or cyclic references): it records
  ``"<path>: <message>"`` and returns ``None``, so one pass over a document
  finds every problem. The caller raises one :class:`~zmeshlib.PolicyError`
  at the end.
* Paths read like the document: ``authorization[2].rules[0].to.publish[1]``;
  a mapping key that is not a plain name is quoted as JSON quotes it
  (``services["a b"]``), so a path is always one line of ASCII.
* Unknown keys are problems, with the nearest known key suggested.
* Every bound is a problem, never an exception or a hang:

  ======================  ==============================================  ==================
  what                    bound                                           why
  ======================  ==============================================  ==================
  work per document       :data:`MAX_ENTRIES` list items and mapping      a YAML alias (or a
                          entries, each use of a shared value counted     shared Python
                                                                          object) is walked
                                                                          each time it is used
  problems kept           :data:`MAX_PROBLEMS`, the rest counted          a broken large
                                                                          document stays a
                                                                          readable error
  strings and keys        :data:`MAX_STRING` characters, valid Unicode    no name or pattern
                          (no lone surrogates)                            is longer; messages
                                                                          must encode
  durations               finite, at most :data:`MAX_DURATION` (10        ``400 digits`` + ``s``
                          years) unless a field says less                 is not "infinity"
  numbers                 finite, inside the range the field documents    NaN compares false
                                                                          with every bound
  ======================  ==============================================  ==================

* Durations are strings with units (``"250ms"``, ``"2s"``, ``"1m30s"``),
  read as float seconds; a bare number is a problem (is 5 seconds or ms?).

Theory of operation: a reader is a position (its parent and one key or
index) plus a context shared by the whole pass: the problem list and the
work budget. The path string is built only when a problem is recorded, so
reading a valid document builds none. Containers are charged to the budget
when they are entered (their length plus one); once it is spent, every
further container is refused with one problem, so the total work of a pass
is bounded by the budget whatever the document's shape. A reader descends
only where the schema says a value lives, so a deep or cyclic value is never
walked: it is reported as the wrong type where the schema expected a scalar.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

#: List items plus mapping entries one pass may visit (each use of a shared value counts).
MAX_ENTRIES = 500_000
#: Problems kept in full; the rest are counted in one closing line.
MAX_PROBLEMS = 200
#: Longest string value or mapping key, in characters.
MAX_STRING = 4096
#: Longest duration, in seconds (ten years of 365 days).
MAX_DURATION = 10 * 365 * 86400.0
#: Largest count (pool sizes, error thresholds): what a 32-bit signed field holds.
MAX_COUNT = 2**31 - 1

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(us|ms|s|m|h)")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_MAX_DURATION_TEXT = 100
_SHOWN = 60  # characters of a value quoted in a message

# Stand in the problem list (so that its length still says "something went wrong here")
# for a problem beyond MAX_PROBLEMS, counted but not kept, and for a container refused
# once the budget is spent, which the first refusal has reported already.
_DROPPED = "\x00dropped"
_REFUSED = "\x00refused"


def reported(problems: list[str]) -> tuple[int, tuple[str, ...]]:
    """How many problems a pass found, and the lines to show: the kept ones, plus one
    line counting those beyond MAX_PROBLEMS."""
    kept = [p for p in problems if p is not _DROPPED and p is not _REFUSED]
    dropped = sum(1 for p in problems if p is _DROPPED)
    if dropped:
        kept.append(f"<document>: {dropped:,} more problems not listed (fix these first)")
    return len(kept) - (1 if dropped else 0) + dropped, tuple(kept)


class _Context:
    """What one pass over a document shares: the problems and the remaining work budget."""

    __slots__ = ("budget", "exhausted", "problems")

    def __init__(self, problems: list[str], budget: int) -> None:
        self.problems = problems
        self.budget = budget
        self.exhausted = False


class Reader:
    """A position in the document plus the pass's shared problems and budget."""

    __slots__ = ("_ctx", "_parent", "_segment", "problems")

    def __init__(
        self, problems: list[str], path: str = "", *, max_entries: int = MAX_ENTRIES
    ) -> None:
        self.problems = problems
        self._ctx = _Context(problems, max_entries)
        self._parent: Reader | None = None
        self._segment: str | int = path

    def _child(self, segment: str | int) -> Reader:
        child = Reader.__new__(Reader)
        child.problems = self.problems
        child._ctx = self._ctx
        child._parent = self
        child._segment = segment
        return child

    # -- navigation ---------------------------------------------------------

    def key(self, name: str) -> Reader:
        return self._child(name)

    def index(self, i: int) -> Reader:
        return self._child(i)

    @property
    def path(self) -> str:
        """``traffic.payment.retries.attempts``; ``""`` at the root."""
        segments: list[str | int] = []
        node: Reader | None = self
        while node is not None and node._parent is not None:
            segments.append(node._segment)
            node = node._parent
        out = str(node._segment) if node is not None else ""
        for segment in reversed(segments):
            if isinstance(segment, int):
                out += f"[{segment}]"
            elif _PLAIN_KEY.fullmatch(segment):
                out += f".{segment}" if out else segment
            else:
                out += f"[{json.dumps(_clip(segment))}]"
        return out

    def problem(self, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            # a value quoted in full (a message from elsewhere, an ID) is clipped here too
            message = _LONG_QUOTE.sub(lambda m: repr(_clip(m.group(1))), message)
            self.problems.append(f"{self.path or '<document>'}: {message}")
        else:
            self.problems.append(_DROPPED)

    def _charge(self, size: int) -> bool:
        """Spend ``size + 1`` of the budget; False (and a problem) once it is spent."""
        ctx = self._ctx
        ctx.budget -= size + 1
        if ctx.budget >= 0:
            return True
        if not ctx.exhausted:
            ctx.exhausted = True
            self.problem(
                f"the document is too large to check: more than {MAX_ENTRIES:,} list items "
                "and mapping entries, counting each use of a YAML alias (a mesh policy "
                "needs far fewer)"
            )
        else:
            self.problems.append(_REFUSED)
        return False

    # -- containers ---------------------------------------------------------

    def mapping(
        self,
        value: Any,
        allowed: Collection[str] | None = None,
        required: Collection[str] = (),
    ) -> dict[str, Any] | None:
        """Check ``value`` is a mapping with string keys, only ``allowed`` ones (None = any)."""
        if not isinstance(value, Mapping):
            self.problem(f"expected a mapping, got {_kind(value)}")
            return None
        if not self._charge(len(value)):
            return None
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                self.problem(f"keys must be strings, got {_kind(k)}")
                continue
            if allowed is not None and k not in allowed:
                shown = _clip(k)
                hint = difflib.get_close_matches(shown, list(allowed), n=1)
                did = f"; did you mean {hint[0]!r}?" if hint else ""
                self.key(shown).problem(
                    f"unknown key (expected one of: {', '.join(sorted(allowed))}){did}"
                )
                continue
            if allowed is None and not self._text_ok(k, "a key"):
                continue
            out[k] = v
        for k in required:
            if k not in out:
                self.problem(f"missing required key {k!r}")
        return out

    def items(self, value: Any, *, allow_empty: bool = False) -> Iterator[tuple[Reader, Any]]:
        """Yield (reader, item) for each element of a list; a problem when not a list."""
        if not isinstance(value, list | tuple):
            self.problem(f"expected a list, got {_kind(value)}")
            return
        if not value and not allow_empty:
            self.problem(
                "an empty list matches nothing and is likely a mistake; omit the key instead"
            )
            return
        if not self._charge(len(value)):
            return
        for i, item in enumerate(value):
            yield self._child(i), item

    def list_of(
        self, value: Any, read: Callable[[Reader, Any], T | None], *, allow_empty: bool = False
    ) -> tuple[T, ...] | None:
        """Read every element with ``read``; None when the list or any element is bad."""
        before = len(self.problems)
        out = [read(r, item) for r, item in self.items(value, allow_empty=allow_empty)]
        if len(self.problems) != before:
            return None
        return tuple(x for x in out if x is not None)

    # -- scalars ------------------------------------------------------------

    def string(self, value: Any, *, non_empty: bool = True) -> str | None:
        if not isinstance(value, str):
            self.problem(f"expected a string, got {_kind(value)}")
            return None
        if non_empty and not value:
            self.problem("must not be empty")
            return None
        return value if self._text_ok(value, "a string") else None

    def _text_ok(self, text: str, what: str) -> bool:
        """Bounded and encodable: every message and log line quoting it must encode."""
        if len(text) > MAX_STRING:
            self.problem(f"{what} of {len(text):,} characters is too long (at most {MAX_STRING:,})")
            return False
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                self.problem(f"{_show(text)} is not valid Unicode text (a lone surrogate)")
                return False
        return True

    def boolean(self, value: Any) -> bool | None:
        if not isinstance(value, bool):
            self.problem(f"expected true or false, got {_kind(value)}")
            return None
        return value

    def integer(
        self, value: Any, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(f"expected an integer, got {_kind(value)}")
            return None
        return int(value) if self._in_range(value, minimum, maximum) else None

    def number(
        self, value: Any, *, minimum: float | None = None, maximum: float | None = None
    ) -> float | None:
        """A finite int or float, as float. Ints are compared before any conversion."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(f"expected a number, got {_kind(value)}")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(f"expected a finite number, got {value}")
            return None
        if not self._in_range(value, minimum, maximum):
            return None
        try:
            return float(value)
        except OverflowError:  # an int beyond every float, with no maximum to stop it
            self.problem(f"{_number(value)} is too large")
            return None

    def percentage(self, value: Any) -> float | None:
        """A percentage, 0 to 100 inclusive (``10`` means one in ten)."""
        return self.number(value, minimum=0, maximum=100)

    def choice(self, value: Any, choices: Collection[str]) -> str | None:
        text = self.string(value)
        if text is None:
            return None
        if text not in choices:
            shown = _clip(text)
            same_case = [c for c in choices if c.casefold() == shown.casefold()]
            hint = same_case or difflib.get_close_matches(shown, list(choices), n=1)
            did = f"; did you mean {hint[0]!r}?" if hint else ""
            self.problem(f"{_show(text)} is not one of: {', '.join(choices)}{did}")
            return None
        return text

    def duration(
        self, value: Any, *, allow_zero: bool = False, maximum: float = MAX_DURATION
    ) -> float | None:
        """A duration string (``"250ms"``, ``"2s"``, ``"1m30s"``) as float seconds."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown = _number(value) if isinstance(value, int) else repr(value)
            self.problem(
                f"a duration needs a unit: write '{shown}s' or '{shown}ms', not a bare number"
            )
            return None
        if not isinstance(value, str):
            self.problem(f"expected a duration such as '250ms' or '2s', got {_kind(value)}")
            return None
        text = value.strip()
        pos, total = 0, 0.0
        if len(text) <= _MAX_DURATION_TEXT:
            for m in _DURATION.finditer(text):
                if m.start() != pos:
                    break
                total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
                pos = m.end()
        if not text or pos != len(text):
            self.problem(
                f"{_show(value)} is not a duration: write a number with a unit "
                "(us, ms, s, m, h), e.g. '250ms', '2s', '1m30s'"
            )
            return None
        if total == 0 and not allow_zero:
            self.problem("must be greater than zero")
            return None
        if not total <= maximum:  # also catches inf: '1' * 400 + 's' parses to inf
            self.problem(f"{_show(value)} is too long: at most {_seconds(maximum)}")
            return None
        return total

    def _in_range(self, value: float, minimum: float | None, maximum: float | None) -> bool:
        if minimum is not None and value < minimum:
            self.problem(f"{_number(value)} is below the minimum {minimum}")
            return False
        if maximum is not None and value > maximum:
            self.problem(f"{_number(value)} is above the maximum {maximum}")
            return False
        return True


_LONG_QUOTE = re.compile(r"'([^']{400,})'")  # longer than any explanation between two quotes


def _clip(text: str) -> str:
    """At most _SHOWN characters of ``text``, marked when cut."""
    if len(text) <= _SHOWN:
        return text
    return f"{text[:_SHOWN]}... ({len(text):,} characters)"


def _show(text: str) -> str:
    """``text`` quoted for a message: repr (which escapes what would not print), clipped."""
    return repr(_clip(text))


def _number(value: float) -> str:
    """A number for a message; an int too long to print is described by its size."""
    if isinstance(value, int) and not -(10**30) < value < 10**30:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"{'a negative' if value < 0 else 'an'} integer of about {digits:,} digits"
    return str(value)


def _seconds(seconds: float) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g} days"
    return f"{seconds:g}s"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    if isinstance(value, int | float):
        return f"a number ({_number(value)})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bytes | bytearray):
        return "bytes (write text)"
    return type(value).__name__

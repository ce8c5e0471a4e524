"""Reading a policy document while collecting every problem, the way ``istioctl analyze`` does.

Rules this module keeps:

* A reader never raises on bad input: it records ``"<path>: <message>"`` and
  returns ``None``, so one pass over a document finds every problem.
  The caller raises one :class:`~zmeshlib.PolicyError` at the end.
* Paths read like the document: ``authorization[2].rules[0].to.publish[1]``;
  a mapping key that is not a plain name is quoted (``services["a b"]``).
* Unknown keys are problems, with the nearest known key suggested.
* Durations are strings with units (``"250ms"``, ``"2s"``, ``"1m30s"``),
  read as float seconds; a bare number is a problem (is 5 seconds or ms?).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Reader:
    """A position in the document (``path``) plus the shared list of problems."""

    __slots__ = ("path", "problems")

    def __init__(self, problems: list[str], path: str = "") -> None:
        self.problems = problems
        self.path = path

    # -- navigation ---------------------------------------------------------

    def key(self, name: str) -> Reader:
        shown = name if _PLAIN_KEY.fullmatch(name) else f'["{name}"]'
        if not self.path:
            return Reader(self.problems, shown)
        sep = "" if shown.startswith("[") else "."
        return Reader(self.problems, f"{self.path}{sep}{shown}")

    def index(self, i: int) -> Reader:
        return Reader(self.problems, f"{self.path}[{i}]")

    def problem(self, message: str) -> None:
        self.problems.append(f"{self.path or '<document>'}: {message}")

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
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                self.problem(f"keys must be strings, got {k!r}")
                continue
            if allowed is not None and k not in allowed:
                hint = difflib.get_close_matches(k, list(allowed), n=1)
                did = f"; did you mean {hint[0]!r}?" if hint else ""
                self.key(k).problem(
                    f"unknown key (expected one of: {', '.join(sorted(allowed))}){did}"
                )
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
        for i, item in enumerate(value):
            yield self.index(i), item

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
        return value

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
        return value if self._in_range(value, minimum, maximum) else None

    def number(
        self, value: Any, *, minimum: float | None = None, maximum: float | None = None
    ) -> float | None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.problem(f"expected a number, got {_kind(value)}")
            return None
        return float(value) if self._in_range(value, minimum, maximum) else None

    def percentage(self, value: Any) -> float | None:
        """A percentage, 0 to 100 inclusive (``10`` means one in ten)."""
        return self.number(value, minimum=0, maximum=100)

    def choice(self, value: Any, choices: Collection[str]) -> str | None:
        text = self.string(value)
        if text is None:
            return None
        if text not in choices:
            same_case = [c for c in choices if c.casefold() == text.casefold()]
            hint = same_case or difflib.get_close_matches(text, list(choices), n=1)
            did = f"; did you mean {hint[0]!r}?" if hint else ""
            self.problem(f"{text!r} is not one of: {', '.join(choices)}{did}")
            return None
        return text

    def duration(self, value: Any, *, allow_zero: bool = False) -> float | None:
        """A duration string (``"250ms"``, ``"2s"``, ``"1m30s"``) as float seconds."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            self.problem(
                f"a duration needs a unit: write '{value}s' or '{value}ms', not a bare number"
            )
            return None
        if not isinstance(value, str):
            self.problem(f"expected a duration such as '250ms' or '2s', got {_kind(value)}")
            return None
        text = value.strip()
        pos, total = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if not text or pos != len(text):
            self.problem(
                f"{value!r} is not a duration: write a number with a unit "
                "(us, ms, s, m, h), e.g. '250ms', '2s', '1m30s'"
            )
            return None
        if total == 0 and not allow_zero:
            self.problem("must be greater than zero")
            return None
        return total

    def _in_range(self, value: float, minimum: float | None, maximum: float | None) -> bool:
        if minimum is not None and value < minimum:
            self.problem(f"{value} is below the minimum {minimum}")
            return False
        if maximum is not None and value > maximum:
            self.problem(f"{value} is above the maximum {maximum}")
            return False
        return True


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__

"""The :class:`Policy` again, from its canonical bytes (what :attr:`Policy.revision` hashes).

Rules this module keeps:

* Exact inverse: for every policy ``p``,
  ``policy_from_canonical(canonical_bytes(p)) == p``, and the rebuilt policy's
  ``revision`` is ``p.revision``. So a signed policy document carries the
  policy as those bytes, and what a follower applies is, field for field and
  hash for hash, what the signer signed.
* Canonical form only: the bytes are accepted only if rebuilding and encoding
  again gives them back (key order, spacing, number spelling, duplicate keys),
  so one policy has one encoding.
* Strict, by the model's own type hints: every field of every value is
  present, no other key is, each value has its field's type (an ``int`` where a
  ``float`` is declared is kept as written: the revision hashes it so), enum
  members are named, and nesting is bounded (:data:`MAX_DEPTH`). Any failure,
  whatever the input, is one :class:`~zmeshlib.PolicyError` naming the path.
* The document's semantic checks (patterns, cross-references) are not made
  again: the bytes come from a :class:`Policy` a signer built and signed, and a
  :class:`Policy` is taken as given wherever it comes from. What a value's own
  constructor checks (a header regex compiles) still holds.

Theory of operation: the bytes are decoded as strict UTF-8 JSON, then walked
from :class:`Policy` down, each attrs class's fields resolved once with
``typing.get_type_hints``; tuples, frozensets, mappings, enums, unions with
``None`` and the scalars are rebuilt by their hint. The result is encoded with
:func:`~zmeshlib.policy.model.canonical_bytes` and compared with the input.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs

from .._exceptions import PolicyError
from .model import Policy, canonical_bytes

#: Deepest nesting of values a policy has (a route's traffic is two levels below its service's).
MAX_DEPTH = 24

_HINTS: dict[type, dict[str, Any]] = {}


class _Bad(Exception):
    """Why the bytes are not a policy, at a path (turned into one PolicyError)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path or '<policy>'}: {why}")


def policy_from_canonical(data: bytes) -> Policy:
    """Rebuild the policy whose :func:`canonical_bytes` are ``data``; PolicyError if none is."""
    try:
        text = bytes(data).decode("utf-8")
        tree = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _error(f"not canonical policy JSON: {type(exc).__name__}: {exc}") from None
    try:
        policy = _build(Policy, tree, "", 0)
    except _Bad as exc:
        raise _error(str(exc)) from None
    except RecursionError:
        raise _error("nested too deeply") from None
    if canonical_bytes(policy) != data:
        raise _error(
            "the policy JSON is not in canonical form (sorted keys, no spaces, numbers as "
            "Python writes them, no duplicate keys)"
        )
    return policy


def _error(why: str) -> PolicyError:
    return PolicyError(
        "the signed policy does not rebuild into a policy this zmeshlib reads",
        problems=(why,),
    )


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _build(hint: Any, value: Any, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise _Bad(path, f"nested deeper than {MAX_DEPTH} levels")
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        arms = typing.get_args(hint)
        if value is None and type(None) in arms:
            return None
        (arm,) = (a for a in arms if a is not type(None))
        return _build(arm, value, path, depth)
    if origin is tuple:
        item, *_ = typing.get_args(hint)
        return tuple(_build(item, v, f"{path}[{i}]", depth + 1) for i, v in _items(value, path))
    if origin is frozenset:
        (item,) = typing.get_args(hint)
        return frozenset(_build(item, v, f"{path}[{i}]", depth + 1) for i, v in _items(value, path))
    if origin is Mapping:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise _Bad(path, f"expected a mapping, got {_kind(value)}")
        return {k: _build(item, v, f"{path}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(hint, type) and attrs.has(hint):
        return _instance(hint, value, path, depth)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if not isinstance(value, str) or value not in hint.__members__:
            raise _Bad(path, f"{value!r} is not a {hint.__name__} name")
        return hint[value]
    return _scalar(hint, value, path)


def _instance(cls: type, value: Any, path: str, depth: int) -> Any:
    if not isinstance(value, dict):
        raise _Bad(path, f"expected a mapping for {cls.__name__}, got {_kind(value)}")
    hints = _hints(cls)
    fields = [f for f in attrs.fields(cls) if f.init and not f.name.startswith("_")]
    names = {f.name for f in fields}
    unknown = sorted(set(value) - names)
    if unknown:
        raise _Bad(path, f"{cls.__name__} has no field {unknown[0]!r}")
    missing = sorted(names - set(value))
    if missing:
        raise _Bad(path, f"{cls.__name__} lacks its field {missing[0]!r}")
    kwargs = {
        f.alias: _build(
            hints[f.name], value[f.name], f"{path}.{f.name}" if path else f.name, depth + 1
        )
        for f in fields
    }
    try:
        return cls(**kwargs)
    except Exception as exc:  # a value's own check (a regex that does not compile)
        raise _Bad(path, f"{cls.__name__} refused it: {type(exc).__name__}: {exc}") from None


def _items(value: Any, path: str) -> Any:
    if not isinstance(value, list):
        raise _Bad(path, f"expected a list, got {_kind(value)}")
    return enumerate(value)


def _scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    else:
        raise _Bad(path, f"a field of type {hint!r} cannot be rebuilt")
    if not ok:
        raise _Bad(path, f"expected {hint.__name__}, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__

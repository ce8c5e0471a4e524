"""Reading a policy file and parsing its text, refusing what could hang or blow up.

Rules this module keeps:

* A file is refused before it is parsed when reading or parsing it could
  hang or cost more than its size suggests:

  ========================  =============================================
  refused                   because
  ========================  =============================================
  not a regular file        a FIFO or device would block the read: the file
  (directory, FIFO,         is opened non-blocking and checked with
  device)                   ``fstat`` on the open descriptor
  over MAX_FILE_BYTES       no policy is that large (4 MiB)
  not UTF-8                 the three formats are UTF-8 text (a leading
                            byte-order mark is skipped)
  a TOML dotted key of      ``tomllib`` is quadratic in a key's parts
  more than 33 parts
  a YAML number of more     a sexagesimal integer (``1:2:3``) is quadratic
  than 100 characters       to convert
  YAML merge keys (``<<``)  never supported; refused by name
  duplicate keys            YAML and JSON keep the last one silently
  a list or mapping as a    keys are names
  YAML key
  ========================  =============================================

  YAML aliases are kept (an alias is its anchor's object, so the loaded
  value is no larger than the text); walking them is bounded by the reader's
  budget (:data:`~zmeshlib.policy._reader.MAX_ENTRIES`). Whatever else a
  parser raises (its recursion limit on deep nesting, a date that does not
  exist) means the text is not valid in that format.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import sys
from itertools import repeat
from os import PathLike
from pathlib import Path
from typing import Any

from .._exceptions import PolicyError
from ._reader import _clip

#: Largest policy file read, in bytes: a policy of thousands of rules is far smaller.
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Most dots in one TOML dotted key or table header (its parts minus one).
MAX_TOML_KEY_DOTS = 32
#: Longest YAML number scalar, in characters (no policy number needs more).
_MAX_YAML_NUMBER = 100
_YAML_MERGE = "tag:yaml.org,2002:merge"


def read_policy_file(path: str | PathLike[str]) -> bytes:
    """The bytes of a policy file: a regular file of at most :data:`MAX_FILE_BYTES`.

    Opened without blocking and checked with ``fstat`` on the open descriptor, so a
    FIFO or a device given as the path is refused at once instead of waiting for a
    writer, and a file swapped between a check and the open cannot slip through.
    """
    path = Path(path)
    flags = os.O_RDONLY
    for name in ("O_NONBLOCK", "O_NOCTTY", "O_CLOEXEC", "O_BINARY"):
        flags |= getattr(os, name, 0)
    try:
        fd = os.open(path, flags)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise _unreadable(path, exc) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = (
                "a directory"
                if stat.S_ISDIR(st.st_mode)
                else "not a regular file (a FIFO, socket or device)"
            )
            raise PolicyError(
                f"cannot read policy {str(path)!r}: it is {what}",
                problems=(f"{path}: is {what}; give the path of a policy file",),
            )
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    finally:
        os.close(fd)
    data = b"".join(chunks)
    _check_size(path, data)
    return data


def _unreadable(path: Path, exc: Exception) -> PolicyError:
    return PolicyError(f"cannot read policy {str(path)!r}", problems=(f"{path}: {exc}",))


def _check_size(path: Path, data: bytes) -> None:
    if len(data) > MAX_FILE_BYTES:
        raise PolicyError(
            f"cannot read policy {str(path)!r}: it is larger than {MAX_FILE_BYTES:,} bytes",
            problems=(
                f"{path}: larger than {MAX_FILE_BYTES:,} bytes (4 MiB); a mesh policy is "
                "far smaller: is this the right file?",
            ),
        )


def _not_valid(source: str, fmt: str, reason: str) -> PolicyError:
    return PolicyError(
        f"policy {source!r} is not valid {fmt.upper()}", problems=(f"{source}: {reason}",)
    )


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _parse(text: str, fmt: str) -> Any:
    if fmt == "json":
        return json.loads(text, object_pairs_hook=_json_object)
    if fmt == "toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        _check_toml_keys(text)
        return tomllib.loads(text)
    import yaml

    return yaml.load(text, Loader=_strict_loader())  # a (C)SafeLoader subclass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that refuses duplicate keys (``json`` keeps the last one, silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_clip(key)!r}")
        out[key] = value
    return out


# Outside strings and comments, what ends a TOML key or value (no dotted key spans one),
# and what starts a string or a comment.
_TOML_STOP = re.compile(r"""[.=,{}\[\]\n"'#]""")
_TOML_STRING_REST = {
    '"': re.compile(r'(?:[^"\\\n]|\\.)*"'),
    "'": re.compile(r"[^'\n]*'"),
    '"""': re.compile(r'(?:[^"\\]|\\[\s\S]|"(?!""))*"""(?:""?)?'),
    "'''": re.compile(r"(?:[^']|'(?!''))*'''(?:''?)?"),
}


def _check_toml_keys(text: str) -> None:
    """Refuse a dotted key of more than MAX_TOML_KEY_DOTS dots before ``tomllib`` sees it.

    ``tomllib`` spends time and memory quadratic in the parts of one dotted key (a
    40 kB key ``a.a.a...`` takes gigabytes); a policy's keys have a few parts. Dots are
    counted between the characters that end a key or a value, outside strings and
    comments, so a value (a float, a date) adds at most one. A text with no line of
    many dots needs no scan at all.
    """
    if max(map(str.count, text.split("\n"), repeat("."))) <= MAX_TOML_KEY_DOTS:
        return
    pos = dots = 0
    while (m := _TOML_STOP.search(text, pos)) is not None:
        c, pos = m.group(), m.end()
        if c == ".":
            dots += 1
            if dots > MAX_TOML_KEY_DOTS:
                line = text.count("\n", 0, pos) + 1
                raise ValueError(
                    f"line {line}: a dotted key of more than {MAX_TOML_KEY_DOTS + 1} parts "
                    "(a mesh policy nests a few levels)"
                )
        elif c == "#":
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 2, pos) else c
            rest = _TOML_STRING_REST[quote].match(text, pos + len(quote) - 1)
            if rest is None:
                return  # an unterminated string: tomllib stops there too
            pos = rest.end()
        else:
            dots = 0


@functools.cache
def _strict_loader() -> type:
    import yaml

    # libyaml's parser when PyYAML was built with it: several times faster, and it refuses
    # nesting that the pure-Python parser would recurse into
    return _yaml_loader(getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader)


def _yaml_loader(base: type) -> type:
    """A safe loader that also refuses duplicate keys, keys that are lists or mappings,
    numbers too long to convert quickly, and merge keys (``<<``).

    Aliases are kept (each is the same object as its anchor, so the loaded value is no
    larger than the text); the reader's budget bounds the work of walking them.
    """
    import yaml
    from yaml.nodes import ScalarNode

    error = yaml.constructor.ConstructorError

    class StrictLoader(base):
        _merged = 0

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _YAML_MERGE:
                    raise error(
                        None,
                        None,
                        "merge keys ('<<') are not supported: write the keys out "
                        "(an alias such as *name repeats a whole value)",
                        key_node.start_mark,
                    )
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable: a list or a mapping
                    raise error(
                        None,
                        None,
                        f"a {type(key).__name__} cannot be a key (keys are names)",
                        key_node.start_mark,
                    ) from None
                if duplicate:
                    raise error(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

        def _short_number(self, node: Any) -> None:
            # a sexagesimal integer (YAML 1.1's 1:2:3) costs time quadratic in its length
            if isinstance(node, ScalarNode) and len(node.value) > _MAX_YAML_NUMBER:
                raise error(
                    None,
                    None,
                    f"a number of {len(node.value):,} characters is too long "
                    f"(at most {_MAX_YAML_NUMBER})",
                    node.start_mark,
                )

        def construct_yaml_int(self, node: Any) -> Any:
            self._short_number(node)
            return super().construct_yaml_int(node)

        def construct_yaml_float(self, node: Any) -> Any:
            self._short_number(node)
            return super().construct_yaml_float(node)

    StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
    StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)
    return StrictLoader

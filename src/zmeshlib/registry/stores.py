"""Card stores: untrusted places that keep card bytes under their key id.

Rules every store keeps:

* A store holds opaque bytes. It never parses or trusts them; the
  :class:`~zmeshlib.registry.Registry` verifies every card it reads.
* Keys are file-safe names (:func:`check_key_id`), so no key can name a path
  outside the store.
* ``put`` replaces atomically: a reader sees the old bytes or the new, never
  a mix. ``delete`` of a missing key is not an error.
* ``version()`` is a cheap change token: it differs from an earlier token
  whenever the content may have changed since (a spurious change is allowed,
  a missed one is not).
* Beside the cards, a store keeps one more opaque value: the signed policy
  document (``put_policy`` / ``get_policy``, :mod:`zmeshlib.policy.distribution`
  verifies it). Writing it moves ``version()`` like a card does, and
  ``policy_version()``, a change token of the policy alone (the same rules as
  ``version()``), which card writes leave alone; it is never listed by
  ``scan``.
* One bad entry never fails a read of the others: an entry that exists but
  cannot be read as bytes is returned as an :class:`Unreadable` naming why
  (``get`` and ``scan``), and the registry lists it as rejected. Only a store
  that cannot be reached at all raises :class:`~zmeshlib.RegistryError`.

==================  ===========================================================
URL                 store
==================  ===========================================================
``memory://``       the process-wide in-memory store (``memory://NAME``: a
                    named one); every opener in the process shares it
``dir:///abs/path`` a directory of ``<key_id>.card`` files, shared by every
``dir://rel/path``  process that can reach it (created when missing)
``redis://h:p/db``  a Redis database (:mod:`~zmeshlib.registry.redis_store`),
``rediss://h:p/db`` shared by every process that reaches the server; rediss
``unix:///path``    is TLS, unix a local socket (``?db=N``); ``?prefix=NAME``
                    sets the key prefix (default ``zmeshlib:``); needs
                    ``pip install 'zmeshlib[redis]'``
==================  ===========================================================

Every URL takes ``?lease=DURATION`` (default 15 s, between 1 s and 24 h): how
long a workload's card is valid unless its Mesh renews it (:func:`split_url`).
The lease lives in the card itself, so it needs nothing of the store: a
workload killed without a goodbye leaves every lookup within one lease.

Theory of operation of :class:`DirStore`: a write goes to a hidden temporary
file in the same directory and is renamed over ``<key_id>.card``
(``os.replace``, atomic on POSIX), so concurrent writers and readers in any
number of processes never see a torn file. Every put and delete changes the
directory's mtime; a token taken while that mtime is too recent to tell two
changes apart (the file system clock ticks coarsely) is a fresh object, so a
poller rescans until the directory has been quiet for ``racy_window``
seconds. This is git's "racy timestamp" rule.

A card file is therefore always a regular file made by a rename, and a reader
opens nothing else: whoever can write the directory could otherwise park a
lookup forever (a FIFO blocks ``open``, a socket or device answers
unpredictably) or point it anywhere on the host (a symlink). Each read is:

=====================================  ========================================
the name ``<key_id>.card`` is          the read gives
=====================================  ========================================
missing (also: removed since listing)  nothing (``None``; ``scan`` skips it)
a symlink (to anything, or a loop)     ``Unreadable("not-a-file")``: opened
                                       with ``O_NOFOLLOW``, never followed
a FIFO, socket, device or directory    ``Unreadable("not-a-file")``: opened
                                       with ``O_NONBLOCK``, so a FIFO does not
                                       wait for a writer; ``fstat`` refuses it
a regular file it may not read         ``Unreadable("unreadable")``
a regular file                         its first ``max_file_size + 1`` bytes
=====================================  ========================================
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from .._exceptions import RegistryError

_KEY_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_SUFFIX = ".card"
#: Where a :class:`DirStore` keeps the signed policy document (not a card: ``scan`` skips it).
POLICY_FILE = "policy.signed"
_TMP_PREFIX = ".tmp-"
_OPEN_FLAGS = (
    os.O_RDONLY
    | os.O_NONBLOCK
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
# what open(O_NOFOLLOW | O_NONBLOCK) answers for a name that is no regular file
_NOT_A_FILE_ERRNOS = frozenset(
    {errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EOPNOTSUPP, errno.EMLINK}
)


class Unreadable:
    """A store entry that exists but cannot be read as card bytes, and why.

    ``rule`` is a stable name (``"not-a-file"``, ``"unreadable"``); ``reason``
    is the sentence for a person. Stores return it from ``get`` and ``scan``
    instead of raising, so one bad entry cannot fail a lookup of the others.
    """

    __slots__ = ("reason", "rule")

    def __init__(self, rule: str, reason: str) -> None:
        self.rule = rule
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unreadable) and (self.rule, self.reason) == (
            other.rule,
            other.reason,
        )

    def __hash__(self) -> int:
        return hash((self.rule, self.reason))

    def __repr__(self) -> str:
        return f"Unreadable({self.rule!r}, {self.reason!r})"


def check_key_id(key_id: str) -> str:
    """Return ``key_id`` if it is a safe store key (letters, digits, ``_ - .``; no leading dot)."""
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise RegistryError(
            f"invalid card key id {key_id!r}: use 1-128 letters, digits, '_', '-' or '.', "
            "not starting with '.' (Card.key_id is always valid)"
        )
    return key_id


@runtime_checkable
class CardStore(Protocol):
    """Where card bytes live. Implementations must be safe to call from several threads."""

    def put(self, key_id: str, data: bytes) -> None: ...

    def delete(self, key_id: str) -> None: ...

    def get(self, key_id: str) -> bytes | Unreadable | None: ...

    def scan(self) -> Iterator[tuple[str, bytes | Unreadable]]: ...

    def put_policy(self, data: bytes) -> None: ...

    def get_policy(self) -> bytes | Unreadable | None: ...

    def policy_version(self) -> object: ...

    def version(self) -> object: ...

    def close(self) -> None: ...


class MemoryStore:
    """A dict under a lock, for one process (tests, single-process meshes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cards: dict[str, bytes] = {}
        self._policy: bytes | None = None
        self._version = 0
        self._policy_version = 0

    def put(self, key_id: str, data: bytes) -> None:
        check_key_id(key_id)
        with self._lock:
            self._cards[key_id] = bytes(data)
            self._version += 1

    def delete(self, key_id: str) -> None:
        check_key_id(key_id)
        with self._lock:
            if self._cards.pop(key_id, None) is not None:
                self._version += 1

    def get(self, key_id: str) -> bytes | None:
        check_key_id(key_id)
        with self._lock:
            return self._cards.get(key_id)

    def scan(self) -> Iterator[tuple[str, bytes | Unreadable]]:
        with self._lock:
            snapshot = sorted(self._cards.items())
        return iter(snapshot)

    def put_policy(self, data: bytes) -> None:
        with self._lock:
            self._policy = bytes(data)
            self._version += 1
            self._policy_version += 1

    def policy_version(self) -> object:
        with self._lock:
            return self._policy_version

    def get_policy(self) -> bytes | None:
        with self._lock:
            return self._policy

    def version(self) -> object:
        with self._lock:
            return self._version

    def close(self) -> None:
        """Nothing to release: the content lives as long as the process (shared by URL)."""

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._cards)} cards)"


class DirStore:
    """A directory of ``<key_id>.card`` files, shared by processes on one file system."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_file_size: int = 1 << 20,
        racy_window: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.max_file_size = max_file_size
        self.racy_window_ns = int(racy_window * 1e9)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            pass  # a file is in the way: reported just below
        except OSError as e:
            raise RegistryError(
                f"cannot create the card directory {str(self.path)!r}: {e.strerror}; "
                "choose a writable path in the registry URL (dir:///path)"
            ) from e
        if not self.path.is_dir():
            raise RegistryError(f"{str(self.path)!r} is not a directory; fix the registry URL")

    def _file(self, key_id: str) -> Path:
        return self.path / (check_key_id(key_id) + _SUFFIX)

    def put(self, key_id: str, data: bytes) -> None:
        self._write(self._file(key_id), f"card {key_id}", data)

    def put_policy(self, data: bytes) -> None:
        self._write(self.path / POLICY_FILE, "the signed policy", data)

    def get_policy(self) -> bytes | Unreadable | None:
        return self._read(self.path / POLICY_FILE)

    def policy_version(self) -> object:
        """The policy file's identity: every write renames a new file over it (a new inode)."""
        try:
            st = os.stat(self.path / POLICY_FILE, follow_symlinks=False)
        except FileNotFoundError:
            self.version()  # no policy yet, or no directory: that one raises RegistryError
            return None
        except OSError:
            return object()  # cannot tell: "changed", and the read says why
        return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)

    def _write(self, target: Path, what: str, data: bytes) -> None:
        tmp = self.path / f"{_TMP_PREFIX}{target.stem}-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as e:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise RegistryError(
                f"cannot write {what} to {str(self.path)!r}: {e.strerror}; "
                "check the directory's permissions and free space"
            ) from e

    def delete(self, key_id: str) -> None:
        try:
            self._file(key_id).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise RegistryError(
                f"cannot delete card {key_id} from {str(self.path)!r}: {e.strerror}"
            ) from e

    def _read(self, path: Path) -> bytes | Unreadable | None:
        """The file's bytes (at most ``max_file_size + 1``: an oversized card stays rejectable).

        The module docstring's table says what anything but a regular file gives.
        """
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno in _NOT_A_FILE_ERRNOS:
                return Unreadable("not-a-file", f"{path.name} is not a regular file ({e.strerror})")
            return Unreadable("unreadable", f"{path.name} cannot be opened: {e.strerror}")
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                return Unreadable("not-a-file", f"{path.name} is a {_file_kind(mode)}, not a file")
            chunks = []
            left = self.max_file_size + 1
            while left > 0:
                chunk = os.read(fd, left)
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        except OSError as e:
            return Unreadable("unreadable", f"{path.name} cannot be read: {e.strerror}")
        finally:
            os.close(fd)

    def get(self, key_id: str) -> bytes | Unreadable | None:
        return self._read(self._file(key_id))

    def scan(self) -> Iterator[tuple[str, bytes | Unreadable]]:
        try:
            names = sorted(os.listdir(self.path))
        except OSError as e:
            raise RegistryError(
                f"cannot list the card directory {str(self.path)!r}: {e.strerror}"
            ) from e
        for name in names:
            if not name.endswith(_SUFFIX) or name.startswith("."):
                continue
            key_id = name[: -len(_SUFFIX)]
            if not _KEY_ID.fullmatch(key_id):
                continue
            data = self._read(self.path / name)
            if data is not None:  # removed since listing
                yield key_id, data

    def version(self) -> object:
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise RegistryError(
                f"cannot stat the card directory {str(self.path)!r}: {e.strerror}"
            ) from e
        if time.time_ns() - st.st_mtime_ns < self.racy_window_ns:
            return object()  # too recent to tell two changes apart: always "changed"
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""

    def __repr__(self) -> str:
        return f"DirStore({str(self.path)!r})"


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return kind
    return "special file"


_MEMORY: dict[str, MemoryStore] = {}
_MEMORY_LOCK = threading.Lock()


DEFAULT_LEASE = 15.0  # seconds a workload's card stays valid unless its Mesh renews it
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


_REDIS_SCHEMES = ("redis", "rediss", "unix")
# the parameters each scheme takes (any other takes lease= alone)
_PARAMETERS = {
    "redis": ("lease", "prefix"),
    "rediss": ("lease", "prefix"),
    "unix": ("lease", "prefix", "db"),
}


def split_url(url: str) -> tuple[str, float]:
    """A registry URL's store part and its lease (``dir:///p?lease=15s``: module docstring).

    The lease is how long a workload's card is valid unless its Mesh renews it (it re-signs
    it every third of the lease), so a workload that dies without closing leaves lookups
    within one lease, whatever the store.
    """
    base, lease, _ = _parse_url(url)
    return base, lease


def _parse_url(url: str) -> tuple[str, float, dict[str, str]]:
    """The store part, the lease and the store's other parameters of a registry URL."""
    if not isinstance(url, str):
        raise RegistryError(f"a registry URL is a str, not {type(url).__name__}")
    base, _, query = url.partition("?")
    allowed = _PARAMETERS.get(base.partition("://")[0], ("lease",))
    params: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        name, eq, value = part.partition("=")
        if name not in allowed or not eq or name in params:
            hint = (
                "the one parameter is lease=DURATION (e.g. ?lease=15s)"
                if allowed == ("lease",)
                else "the parameters are " + ", ".join(_HINTS[p] for p in allowed) + ", once each"
            )
            raise RegistryError(f"unknown registry URL parameter {part!r} in {url!r}: {hint}")
        params[name] = value
    lease = DEFAULT_LEASE
    if "lease" in params:
        value = params.pop("lease")
        m = _DURATION.fullmatch(value)
        if m is None:
            raise RegistryError(
                f"lease={value!r} in {url!r} is not a duration: write e.g. 500ms, 15s or 2m"
            )
        lease = float(m.group(1)) * _UNITS[m.group(2)]
        if not 1.0 <= lease <= 86400.0:
            raise RegistryError(
                f"lease={value} in {url!r} is out of range: between 1s and 24h (renewal runs "
                "every third of it)"
            )
    return base, lease, params


_HINTS = {
    "lease": "lease=DURATION (e.g. 15s)",
    "prefix": "prefix=NAME (the key prefix, default zmeshlib:)",
    "db": "db=N (the database)",
}


def open_store(url: str) -> CardStore:
    """Open the store a registry URL names (see the module docstring's table)."""
    url, lease, params = _parse_url(url)
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "memory":
        with _MEMORY_LOCK:
            return _MEMORY.setdefault(rest, MemoryStore())
    if sep and scheme == "dir":
        if not rest:
            raise RegistryError(
                f"registry URL {url!r} names no directory: write dir:///absolute/path "
                "or dir://relative/path"
            )
        return DirStore(rest)
    if sep and scheme in _REDIS_SCHEMES:
        from .redis_store import DEFAULT_PREFIX, RedisStore

        db = params.get("db")
        if db is not None and not db.isdigit():
            raise RegistryError(f"db={db!r} in {url!r} is not a database number: write e.g. db=0")
        if scheme == "unix" and not rest.startswith("/"):
            raise RegistryError(
                f"registry URL {url!r} names no socket path: write unix:///path/to/redis.sock"
            )
        return RedisStore.shared(
            url,
            prefix=params.get("prefix", DEFAULT_PREFIX),
            lease=lease,
            db=None if db is None else int(db),
        )
    raise RegistryError(
        f"unsupported registry URL {url!r}: use 'dir:///absolute/path' (a directory shared "
        "by the processes of one host), 'dir://relative/path', 'memory://' (one process), or "
        "'redis://host:port/db' ('rediss://' with TLS, 'unix:///path/to/redis.sock?db=N')"
    )

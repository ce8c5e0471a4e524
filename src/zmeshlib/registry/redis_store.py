"""A card store in Redis, shared by every process that can reach the server.

Rules this store keeps, beside the :class:`~zmeshlib.registry.CardStore` ones:

* Keys: ``<prefix>card:<key_id>`` for each card (a string, set with a TTL of
  one lease: garbage collection for workloads that died without a goodbye;
  the card's own window stays the source of truth), ``<prefix>policy`` for
  the signed policy (no TTL). Nothing else under the prefix is written, and a
  key under ``<prefix>card:`` that is no key id is never listed.
* Every write is one ``MULTI``: the ``SET`` or ``DEL`` and a ``PUBLISH`` on
  ``<prefix>changes``, so no change reaches Redis without its notification.
* ``version()`` does no I/O: it reads a counter that a listener thread bumps
  for every message on ``<prefix>changes`` and every keyspace event under the
  prefix, and that this store's own writes bump at once. While the listener is
  not subscribed (starting, or Redis away) it returns a fresh object at each
  call, so a reader rescans rather than trusting a token nobody keeps.
  ``policy_version()`` is the same for the policy key alone (our ``policy``
  note, its keyspace events, and every resubscription and resync), so a
  fleet's card renewals never make its policy followers read.
* Reads are bounded: a value is fetched with ``GETRANGE 0 max_value_size``
  (at most one byte past the limit, so the registry still rejects it as too
  large), never whole. A key holding a hash, a list, ... is an
  ``Unreadable("not-a-file")`` (``MGET`` would answer nil for it as for a
  missing key, and send any value whole: hence ``GETRANGE``).
* Only an unreachable or refusing server raises :class:`~zmeshlib.RegistryError`,
  naming the URL (password hidden), the cause and the fix. After a failure to
  connect, calls fail at once, without I/O, until the listener is subscribed
  again or a second has passed: a Redis that is away costs a handshake
  (the ZAP handler asks the registry for each) one failed connect, not one
  per call.

Theory of operation. Commands go through one redis-py client (a thread-safe
connection pool) with a bounded ``Retry`` (two retries, exponential backoff
of 25-100 ms), so a restarted server is reconnected to within the call that
finds it gone. The listener thread owns a second, single connection: it
``SUBSCRIBE``s to ``<prefix>changes`` and ``PSUBSCRIBE``s to
``__keyspace@<db>__:<prefix>*`` (those events fire only when the server has
``notify-keyspace-events`` enabled; they add writes made outside zmeshlib and
TTL expiries). It waits in ``select`` on that connection and on a wake-up
pipe that :meth:`RedisStore.close` writes, so waiting costs no CPU and close
is prompt. Every ``resync`` seconds (10 s) it bumps the counter anyway (a
safety net for writes made outside zmeshlib with keyspace events off) and
pings the server. On any error it drops the connection and tries again after
a capped exponential backoff (50 ms to 1 s). Each subscription it is
confirmed bumps the counter: whatever changed while it was away is then
found by a rescan. On a re-subscription it also writes back, with ``SET NX``
and their remaining TTL, the cards this store put and has not deleted, so a
Redis restarted empty holds the live workloads' cards again within about a
second (the Mesh would re-publish within its card check otherwise).
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .._exceptions import RegistryError
from ._changes import NO_CARD, UNKNOWN, ChangeLog
from ._redis_errors import redis_module as _redis
from ._redis_errors import shown_url, translate
from .stores import DEFAULT_LEASE, Unreadable, check_key_id

if TYPE_CHECKING:
    import redis

log = logging.getLogger("zmeshlib.registry")

DEFAULT_PREFIX = "zmeshlib:"
DEFAULT_RESYNC = 10.0  # seconds between safety-net bumps of version()
MAX_VALUE_SIZE = 1 << 20  # as DirStore's max_file_size
SCAN_COUNT = 1000  # keys per SCAN step (a hint to the server)
FETCH_BATCH = 256  # values per pipelined round trip of scan()
UNSUBSCRIBED_WAIT = 0.1  # seconds wait_policy waits while the change feed is down
MAX_CONNECTIONS = 32  # per store (and so per process and URL: RedisStore.shared)
FAIL_FAST = 1.0  # seconds a failed connect answers later calls without I/O
_PREFIX = re.compile(r"[A-Za-z0-9_.:{}/-]{1,64}")
_KEY_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 1.0
_T = TypeVar("_T")
_SHARED: dict[object, RedisStore] = {}  # RedisStore.shared: one store per URL and settings
_SHARED_LOCK = threading.Lock()


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe key prefix (no glob characters: it is a pattern too)."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise RegistryError(
            f"invalid Redis key prefix {prefix!r}: use 1-64 letters, digits or '_ . : {{ }} / -' "
            f"(the default is {DEFAULT_PREFIX!r})"
        )
    return prefix


class RedisStore:
    """Cards in one Redis database, under a key prefix (module docstring). Thread-safe.

    ``url`` is a redis-py URL without zmeshlib's parameters (``redis://host:port/db``,
    ``rediss://...``, ``unix:///path``); ``db`` selects the database of a ``unix://``
    URL. ``options`` go to ``redis.Redis.from_url`` (``ssl_ca_certs=``, ``password=``...).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease: float = DEFAULT_LEASE,
        db: int | None = None,
        resync: float = DEFAULT_RESYNC,
        max_value_size: int = MAX_VALUE_SIZE,
        connect_timeout: float = 1.0,
        timeout: float = 2.0,
        **options: Any,
    ) -> None:
        r = _redis()
        from redis.backoff import ExponentialBackoff, NoBackoff
        from redis.retry import Retry

        self.url = url
        self.prefix = check_prefix(prefix)
        self.lease = lease
        self.resync = resync
        self.max_value_size = max_value_size
        self._shown = shown_url(url)
        if db is not None:
            options["db"] = db
        common = {"socket_connect_timeout": connect_timeout, "socket_timeout": timeout, **options}
        try:
            # many threads (each Mesh's keeper and follower) share one store: they wait
            # for a free connection rather than open one each ("Too many connections")
            pool = r.BlockingConnectionPool.from_url(
                url,
                max_connections=MAX_CONNECTIONS,
                timeout=timeout,
                retry=Retry(ExponentialBackoff(cap=0.1, base=0.025), 2),
                **common,
            )
            self._client: redis.Redis = r.Redis(connection_pool=pool)
            # the listener's own connection: it backs off by itself, so no retries here
            self._listen_client: redis.Redis = r.Redis.from_url(
                url, retry=Retry(NoBackoff(), 0), **common
            )
        except (ValueError, TypeError) as e:
            raise RegistryError(
                f"registry URL {self._shown!r} is not a Redis URL redis-py accepts ({e}); write "
                "redis://host:port/db, rediss://host:port/db or unix:///path/to/redis.sock"
            ) from e
        self.db = int(self._client.connection_pool.connection_kwargs.get("db") or 0)
        self._cards = f"{prefix}card:"
        self._policy = f"{prefix}policy"
        self._channel = f"{prefix}changes"
        self._pattern = f"__keyspace@{self.db}__:{prefix}*"
        self._policy_event = f"__keyspace@{self.db}__:{self._policy}".encode()
        self._card_event = f"__keyspace@{self.db}__:{self._cards}".encode()
        self._lock = threading.Lock()
        self._policy_moved = threading.Condition(self._lock)  # wait_policy's waiters
        self._changes = ChangeLog()  # every change, and which card it touched
        self._policy_changes = 0  # the same count, for the policy key alone
        self._policy_read: tuple[int, bytes | None] | None = None  # at which policy count
        self._policy_read_lock = threading.Lock()
        self._subscribed = False
        self._down: tuple[float, str] | None = None  # (monotonic time, message) of a failure
        self._own: dict[str, tuple[bytes, float]] = {}  # cards put here: bytes, expiry
        self._closed = False
        self._users = 1  # uses of a shared store (RedisStore.shared)
        self._shared_key: object = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._listener = threading.Thread(
            target=self._listen, name="zmeshlib-redis-listener", daemon=True
        )
        self._listener.start()

    # -- the CardStore protocol ----------------------------------------------------

    def put(self, key_id: str, data: bytes) -> None:
        key = self._cards + check_key_id(key_id)
        ttl_ms = max(1, round(self.lease * 1000))
        data = bytes(data)

        def write() -> None:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.set(key, data, px=ttl_ms)
                pipe.publish(self._channel, f"put {key_id}")
                pipe.execute()

        self._call(f"write card {key_id}", write)
        with self._lock:
            self._own[key_id] = (data, time.monotonic() + self.lease)
            self._changes.moved(key_id)

    def delete(self, key_id: str) -> None:
        key = self._cards + check_key_id(key_id)

        def remove() -> int:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.publish(self._channel, f"delete {key_id}")
                return int(pipe.execute()[0])

        removed = self._call(f"delete card {key_id}", remove)
        with self._lock:
            self._own.pop(key_id, None)
            if removed:
                self._changes.moved(key_id)

    def get(self, key_id: str) -> bytes | Unreadable | None:
        key = self._cards + check_key_id(key_id)
        return self._call(f"read card {key_id}", lambda: self._fetch([key])[0])

    def scan(self) -> Iterator[tuple[str, bytes | Unreadable]]:
        def read_all() -> list[tuple[str, bytes | Unreadable]]:
            names: dict[str, bytes] = {}
            for raw in self._client.scan_iter(match=self._cards + "*", count=SCAN_COUNT):
                key_id = _key_id(raw, len(self._cards))
                if key_id is not None:
                    names[key_id] = raw  # SCAN may return a key twice
            order = sorted(names)
            values = self._fetch_batched([names[k] for k in order])
            return [(k, v) for k, v in zip(order, values, strict=True) if v is not None]

        return iter(self._call("list the cards", read_all))

    def get_many(self, key_ids: list[str]) -> list[bytes | Unreadable | None]:
        """The values of ``key_ids``, in order, in pipelined batches (as ``scan`` reads)."""
        keys: list[bytes | str] = [self._cards + check_key_id(k) for k in key_ids]
        return self._call("read cards", lambda: self._fetch_batched(keys))

    def changed_keys(self, token: object) -> frozenset[str] | None:
        """The card key ids written or deleted after ``token`` (what :meth:`version`
        returned), or None when that cannot be told (the feed was down, a resync,
        cards written back after a restart, changes older than the store keeps)."""
        with self._lock:
            return self._changes.since(token) if self._subscribed else None

    def put_policy(self, data: bytes) -> None:
        def write() -> None:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._policy, bytes(data))
                pipe.publish(self._channel, "policy")
                pipe.execute()

        self._call("write the signed policy", write)
        with self._lock:
            self._changes.moved(NO_CARD)
            self._policy_changes += 1
            self._policy_moved.notify_all()

    def get_policy(self) -> bytes | Unreadable | None:
        return self._call("read the signed policy", lambda: self._fetch([self._policy])[0])

    def policy_at(self, token: object) -> bytes | Unreadable | None:
        """The stored document as of ``token`` (what :meth:`policy_version` returned) or
        later: read from Redis once per move of the policy count while the change feed
        runs, however many policy followers ask at once (the Meshes of a process sharing
        this store read a push once between them, not once each); else
        :meth:`get_policy`. A writer reads with :meth:`get_policy`, never from memory."""
        with self._policy_read_lock:  # one read at a time: the others then find it
            with self._lock:
                current = self._policy_changes if self._subscribed else None
                cached = self._policy_read
            if current is None or not isinstance(token, int) or token > current:
                return self.get_policy()
            if cached is not None and cached[0] == current:
                return cached[1]
            value = self.get_policy()  # read after ``current`` was counted: a later
            if not isinstance(value, Unreadable):  # write moves the count again
                with self._lock:
                    self._policy_read = (current, value)
            return value

    def version(self) -> object:
        with self._lock:
            if not self._subscribed:
                return object()  # nobody is listening: always "changed"
            return self._changes.count

    def policy_version(self) -> object:
        """As :meth:`version`, moving only for the policy key: the many card renewals of
        a fleet do not make every follower read the policy again."""
        with self._lock:
            if not self._subscribed:
                return object()
            return self._policy_changes

    @classmethod
    def shared(cls, url: str, **kwargs: Any) -> SharedRedisStore:
        """A use of the process's one store for ``url`` and these settings.

        Every Mesh of a process on one Redis URL shares it, and so one connection pool
        and one change feed: a feed per Mesh would have each process decode every card
        change once per Mesh (a fleet of N renews N/5 cards a second at the default
        lease). The store closes when the last use is closed.
        """
        key = (url, tuple(sorted(kwargs.items())))
        with _SHARED_LOCK:
            store = _SHARED.get(key)
            if store is None:
                store = _SHARED[key] = cls(url, **kwargs)
                store._shared_key = key
            else:
                store._users += 1
            return SharedRedisStore(store)

    def _release(self) -> None:
        """A use of a shared store ended: the last one closes it."""
        with _SHARED_LOCK:
            self._users -= 1
            if self._users > 0:
                return
            if _SHARED.get(self._shared_key) is self:
                del _SHARED[self._shared_key]
        self.close()

    def close(self) -> None:
        """Stop the listener (joined) and drop the connections. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._policy_moved.notify_all()
        self._stop.set()
        os.write(self._wake_w, b"x")
        if threading.current_thread() is not self._listener:
            self._listener.join(5)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._client.close()
        self._client.connection_pool.disconnect()  # a pool given to Redis() is ours to close
        self._listen_client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self._shown!r}, prefix={self.prefix!r})"

    def wait_policy(self, token: object, timeout: float, stop: Callable[[], bool]) -> None:
        """Return once :meth:`policy_version` may have moved from ``token``, ``stop()``
        holds (after :meth:`wake_policy_waiters`), or ``timeout`` seconds passed.

        A policy follower waits here instead of polling: a fleet's followers then cost
        nothing between pushes and see one at once. While the feed is down (``token``
        is then no count) it waits at most ``UNSUBSCRIBED_WAIT``: the follower polls.
        """
        with self._policy_moved:
            if not self._subscribed or not isinstance(token, int):
                self._policy_moved.wait_for(
                    lambda: stop() or self._closed, min(timeout, UNSUBSCRIBED_WAIT)
                )
                return
            self._policy_moved.wait_for(
                lambda: (
                    stop() or self._closed or not self._subscribed or self._policy_changes != token
                ),
                timeout,
            )

    def wake_policy_waiters(self) -> None:
        """Wake every :meth:`wait_policy` so that each checks its ``stop`` (a follower closing)."""
        with self._policy_moved:
            self._policy_moved.notify_all()

    # -- reading values, bounded -----------------------------------------------------

    def _fetch_batched(self, keys: list[bytes | str]) -> list[bytes | Unreadable | None]:
        """:meth:`_fetch` of ``keys`` in pipelined batches of ``FETCH_BATCH``."""
        found: list[bytes | Unreadable | None] = []
        for start in range(0, len(keys), FETCH_BATCH):
            found += self._fetch(keys[start : start + FETCH_BATCH])
        return found

    def _fetch(self, keys: list[bytes | str]) -> list[bytes | Unreadable | None]:
        """Each key's value (at most ``max_value_size + 1`` bytes), Unreadable, or None.

        The value and the key's type are read in one transaction: read apart, a key
        written between the two (a first policy, a card) would pass for an empty string.
        """
        r = _redis()
        with self._client.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.getrange(key, 0, self.max_value_size)
                pipe.type(key)
            answers: list[Any] = pipe.execute(raise_on_error=False)
        values: list[Any] = answers[0::2]
        for v in answers:
            if isinstance(v, r.ResponseError) and not str(v).startswith("WRONGTYPE"):
                raise v
        for i, kind in enumerate(answers[1::2]):
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind == "none":
                values[i] = None
            elif kind != "string":  # GETRANGE said WRONGTYPE: a hash, a list...
                key = keys[i]
                name = key if isinstance(key, str) else key.decode(errors="replace")
                values[i] = Unreadable(
                    "not-a-file", f"Redis key {name} holds a {kind}, not a string"
                )
        return values

    # -- errors ---------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        """``fn()``, with every Redis failure turned into a RegistryError that says what to do."""
        r = _redis()
        with self._lock:
            if self._closed:
                raise RegistryError(f"this Redis store ({self._shown}) is closed; open a new one")
            down = self._down
            if down is not None and (
                not self._subscribed or time.monotonic() - down[0] < FAIL_FAST
            ):
                raise RegistryError(down[1])
        try:
            return fn()
        except r.RedisError as e:
            error, unreachable = translate(r, e, what, self._shown)
            if unreachable:
                with self._lock:
                    self._down = (time.monotonic(), str(error))
            raise error from e

    # -- the listener ------------------------------------------------------------------

    def _listen(self) -> None:
        backoff = _BACKOFF_MIN
        failing = False
        subscriptions = 0  # confirmed (re)subscriptions so far
        while not self._stop.is_set():
            pubsub = self._listen_client.pubsub()
            try:
                pubsub.subscribe(self._channel)
                pubsub.psubscribe(self._pattern)
                for confirmed in self._serve(pubsub):
                    subscriptions += 1
                    if failing:
                        log.info("Redis at %s is reachable again", self._shown)
                    failing, backoff = False, _BACKOFF_MIN
                    if subscriptions > 1 and confirmed:
                        self._restore()  # a re-subscription: Redis may have restarted
            except Exception as e:  # any failure: drop the connection, back off, try again
                # a feed never had is not "lost": the calls that need Redis say it is away
                if not failing and subscriptions and not self._stop.is_set():
                    log.warning(
                        "lost the change feed of Redis at %s (%s); reconnecting", self._shown, e
                    )
                failing = True
            finally:
                with self._lock:
                    self._subscribed = False
                    self._policy_moved.notify_all()  # waiters go back to polling meanwhile
                try:
                    pubsub.close()
                except Exception:
                    pass
            self._stop.wait(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _serve(self, pubsub: Any) -> Iterator[bool]:
        """Read messages until close; yields at each confirmed subscription (True: both)."""
        want = {b"subscribe", b"psubscribe"}
        confirmed: set[bytes] = set()
        next_tick = time.monotonic() + self.resync
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=0)
            if message is not None:
                kind = message["type"]
                kind = kind if isinstance(kind, bytes) else str(kind).encode()
                if kind in want:
                    confirmed.add(kind)
                    with self._lock:
                        self._changes.moved(UNKNOWN)  # what changed while away is unknown
                        self._policy_changes += 1
                        self._policy_moved.notify_all()
                        if confirmed == want:
                            self._subscribed = True
                            self._down = None
                    if confirmed == want:
                        yield True
                        confirmed = set()  # a reconnect inside redis-py confirms again
                elif kind in (b"message", b"pmessage"):
                    policy = self._about_policy(kind, message)
                    touched = NO_CARD if policy else self._touched(kind, message)
                    with self._lock:
                        self._changes.moved(touched)
                        self._policy_changes += policy
                        if policy:
                            self._policy_moved.notify_all()
                continue
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.resync
                with self._lock:
                    self._changes.moved(UNKNOWN)  # a write outside zmeshlib may be anywhere
                    self._policy_changes += 1
                    self._policy_moved.notify_all()
                pubsub.ping()  # a dead connection shows itself on write
                continue
            sock = getattr(pubsub.connection, "_sock", None)
            if sock is None:
                raise _redis().ConnectionError("the change feed's connection is closed")
            readable, _, _ = select.select([sock, self._wake_r], [], [], next_tick - now)
            if self._wake_r in readable:
                return

    def _about_policy(self, kind: bytes, message: dict[str, Any]) -> bool:
        """Whether a change message may concern the policy key: our own ``policy`` note, or
        a keyspace event on the policy key."""
        if kind == b"message":
            return bool(message.get("data") == b"policy")
        return bool(message.get("channel") == self._policy_event)

    def _touched(self, kind: bytes, message: dict[str, Any]) -> str | None:
        """The key id a card change message names (``put ID``, ``delete ID``, a keyspace
        event on a card key), or UNKNOWN (``restored``, anything else)."""
        if kind == b"message":
            verb, _, key_id = bytes(message.get("data") or b"").partition(b" ")
            if verb in (b"put", b"delete"):
                return _key_id(key_id, 0) or UNKNOWN
            return UNKNOWN
        channel = message.get("channel")
        if isinstance(channel, bytes) and channel.startswith(self._card_event):
            return _key_id(channel, len(self._card_event)) or UNKNOWN
        return UNKNOWN

    def _restore(self) -> None:
        """Write back the cards this store put, where Redis lost them (a restart)."""
        now = time.monotonic()
        with self._lock:
            self._own = {k: v for k, v in self._own.items() if v[1] > now}
            own = dict(self._own)
        if not own:
            return
        try:
            with self._listen_client.pipeline(transaction=True) as pipe:
                for key_id, (data, until) in own.items():
                    ttl_ms = max(1, round((until - now) * 1000))
                    pipe.set(self._cards + key_id, data, px=ttl_ms, nx=True)
                pipe.publish(self._channel, "restored")
                restored = sum(bool(ok) for ok in pipe.execute()[:-1])
        except Exception as e:  # the Mesh's card check publishes them again in any case
            log.warning("could not write back this store's cards to %s: %s", self._shown, e)
            return
        if restored:
            log.info("wrote back %d card(s) Redis at %s had lost", restored, self._shown)


class SharedRedisStore:
    """One use of a :meth:`RedisStore.shared` store: everything but ``close`` is the
    store's; closing a use twice gives back one use, so no user closes another's."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.store._release()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.store, name)

    def __repr__(self) -> str:
        return f"<a use of {self.store!r}>"


def _key_id(raw: bytes, skip: int) -> str | None:
    """The key id of a Redis card key name (bytes), or None when it names no valid key id."""
    try:
        key_id = raw[skip:].decode("ascii")
    except UnicodeDecodeError:
        return None
    return key_id if _KEY_ID.fullmatch(key_id) else None

"""The Redis card store on real redis-server processes: URLs, key layout and TTLs, junk
written straight into Redis, the change feed (pub/sub, keyspace events, the resync timer),
an unreachable server, a restarted one, and what keeps working while it is away."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from redis_server import RedisServer, free_port
from zmeshlib import Mesh
from zmeshlib._exceptions import RegistryError
from zmeshlib.identity.svid import Bundles
from zmeshlib.registry import Registry, Unreadable, open_store
from zmeshlib.registry.redis_store import RedisStore

LISTENER = "zmeshlib-redis-listener"


def eventually(check: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    """Poll ``check`` until it returns something truthy (every 5 ms, with a deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.005)  # polling another thread's or process's work, bounded
    pytest.fail(f"not within {timeout}s: {what}")


def unless_failing(call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` answering None while the store raises RegistryError (for :func:`eventually`)."""

    def attempt() -> Any:
        try:
            return call()
        except RegistryError:
            return None

    return attempt


def subscribed(store: Any) -> bool:
    """Whether the store's listener is subscribed (its token is stable only then)."""
    return bool(store.version() == store.version())


@pytest.fixture
def stores() -> Iterator[Callable[..., RedisStore]]:
    """``stores(url, **RedisStore kwargs)`` or ``stores(url)`` through open_store; all closed."""
    made: list[Any] = []

    def make(url: str, **kw: Any) -> Any:
        store = RedisStore(url, **kw) if kw else open_store(url)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


# -- URLs ------------------------------------------------------------------------------


def test_the_three_url_forms_open_a_store_with_its_prefix_db_and_lease(tmp_path, stores):
    tcp = RedisServer(tmp_path / "tcp").start()
    unix = RedisServer(tmp_path / "unix", unix=True).start()
    try:
        plain = stores(f"redis://127.0.0.1:{tcp.port}/0")
        assert (plain.prefix, plain.db, plain.lease) == ("zmeshlib:", 0, 15.0)
        other = stores(f"redis://127.0.0.1:{tcp.port}/3?prefix=shop:&lease=2m")
        assert (other.prefix, other.db, other.lease) == ("shop:", 3, 120.0)
        local = stores(f"unix://{unix.socket_path}?db=5&prefix={{mesh}}:")
        assert (local.prefix, local.db) == ("{mesh}:", 5)
        for store in (plain, other, local):
            store.put("aa", b"card")
        raw = tcp.client()
        assert raw.get("zmeshlib:card:aa") == b"card"
        raw.select(3)
        assert raw.get("shop:card:aa") == b"card"
        raw_unix = unix.client()
        raw_unix.select(5)
        assert raw_unix.get("{mesh}:card:aa") == b"card"
        raw.close()
        raw_unix.close()
    finally:
        tcp.stop()
        unix.stop()


def test_rediss_speaks_tls_and_checks_the_servers_certificate(tmp_path, stores):
    server = RedisServer(tmp_path / "tls", tls=True).start()
    try:
        store = stores(server.url, ssl_ca_certs=str(server.ca_file))
        store.put("aa", b"over tls")
        assert store.get("aa") == b"over tls"
        untrusting = stores(server.url)  # the system's CAs do not know this server
        with pytest.raises(RegistryError, match=r"cannot reach Redis at rediss://.*certificate"):
            untrusting.get("aa")
    finally:
        server.stop()


@pytest.mark.parametrize(
    "url, problem",
    [
        ("redis://127.0.0.1:1/0?colour=blue", r"unknown registry URL parameter.*prefix=NAME"),
        ("redis://127.0.0.1:1/0?db=1", r"unknown registry URL parameter 'db=1'"),
        ("redis://127.0.0.1:1/0?prefix=a&prefix=b", r"once each"),
        ("redis://127.0.0.1:1/0?prefix", r"unknown registry URL parameter 'prefix'"),
        ("redis://127.0.0.1:1/0?prefix=cards*", r"invalid Redis key prefix 'cards\*'"),
        ("redis://127.0.0.1:1/0?prefix=", r"invalid Redis key prefix ''"),
        ("redis://127.0.0.1:1/0?lease=0.5s", r"out of range"),
        ("redis://127.0.0.1:1/0?lease=soon", r"not a duration"),
        ("unix:///tmp/r.sock?db=two", r"db='two'.*not a database number"),
        ("unix://relative.sock", r"names no socket path: write unix:///"),
        ("redis://127.0.0.1:port/0", r"not a Redis URL redis-py accepts"),
        ("dir:///tmp/x?prefix=a", r"the one parameter is lease=DURATION"),
    ],
)
def test_bad_redis_urls_are_refused_with_a_hint(url, problem):
    with pytest.raises(RegistryError, match=problem):
        open_store(url)


def test_without_redis_py_a_redis_url_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # what `import redis` does when absent
    with pytest.raises(RegistryError, match=r"pip install 'zmeshlib\[redis\]'"):
        open_store("redis://127.0.0.1:6379/0")


# -- key layout ----------------------------------------------------------------------


def test_a_card_lives_one_lease_in_redis_and_the_policy_for_ever(redis_server, stores):
    store = stores(redis_server.url.replace("/0", "/0?lease=5s"))
    store.put("aa", b"card")
    store.put_policy(b"signed policy")
    raw = redis_server.client()
    assert 4000 < raw.pttl("zmeshlib:card:aa") <= 5000
    assert raw.pttl("zmeshlib:policy") == -1  # no TTL
    assert sorted(raw.keys("*")) == [b"zmeshlib:card:aa", b"zmeshlib:policy"]
    store.put("aa", b"renewed")  # a renewal sets the TTL afresh
    assert raw.pttl("zmeshlib:card:aa") > 4000
    raw.close()
    # a Registry over the store object signs cards for the store's lease, so TTL = window
    assert Registry(store, bundles=Bundles()).lease == 5.0


def test_junk_written_into_redis_is_skipped_and_counted_while_cards_resolve(
    redis_server, stores, ca, make_card
):
    card = make_card(labels={"service": "orders"})
    store = stores(redis_server.url)
    registry = Registry(store, bundles=ca.bundles)
    registry.publish(card)
    raw = redis_server.client()
    raw.set("zmeshlib:card:" + "0" * 64, os.urandom(300))
    raw.hset("zmeshlib:card:hashed", mapping={"a": "1"})
    raw.rpush("zmeshlib:card:listed", "x")
    raw.set("zmeshlib:card:big", b"x" * (3 << 20))
    raw.set("zmeshlib:card:bad name", b"x")  # not a key id: never listed
    raw.set("zmeshlib:card:.hidden", b"x")
    raw.set(b"zmeshlib:card:\xff\xfe", b"x")
    raw.set("zmeshlib:other", b"x")  # not a card key
    raw.set("elsewhere:card:aa", b"x")
    raw.close()
    assert registry.by_service("orders") == [card]
    assert registry.by_key(card.curve_key) == card
    assert registry.rejected() == {
        "0" * 64: "card-malformed",
        "big": "card-too-large",
        "hashed": "not-a-file",
        "listed": "not-a-file",
    }
    assert registry.stats["corrupt"] == 4 and registry.stats["invalid"] == 0
    big = store.get("big")
    assert isinstance(big, bytes) and len(big) == (1 << 20) + 1  # bounded read
    hashed = store.get("hashed")
    assert isinstance(hashed, Unreadable) and hashed.rule == "not-a-file"
    assert "zmeshlib:card:hashed holds a hash" in hashed.reason
    assert store.get("nothing") is None
    registry.close()


def test_an_empty_value_is_an_entry_and_a_missing_key_is_none(redis_server, stores):
    store = stores(redis_server.url)
    raw = redis_server.client()
    raw.set("zmeshlib:card:empty", b"")
    raw.close()
    assert store.get("empty") == b"" and store.get("missing") is None
    assert list(store.scan()) == [("empty", b"")]


# -- the change feed -----------------------------------------------------------------


def test_a_write_by_another_store_moves_the_version_through_pub_sub(redis_server, stores):
    writer, reader = stores(redis_server.url), stores(redis_server.url)
    eventually(lambda: subscribed(reader), "the reader's listener subscribed")
    lags = []
    for change in (
        lambda: writer.put("aa", b"1"),
        lambda: writer.put("aa", b"2"),
        lambda: writer.delete("aa"),
        lambda: writer.put_policy(b"p"),
    ):
        before = reader.version()
        assert reader.version() == before  # quiet: stable
        start = time.perf_counter()
        change()
        eventually(lambda before=before: reader.version() != before, "the change reached it")
        lags.append(time.perf_counter() - start)
    print(f"\na change reached another store in {max(lags) * 1000:.1f} ms at most")


def test_a_keyspace_event_moves_the_version_for_writes_made_outside_zmeshlib(redis_server, stores):
    raw = redis_server.client()
    raw.config_set("notify-keyspace-events", "KA")
    store = stores(redis_server.url, resync=3600)
    eventually(lambda: subscribed(store), "subscribed")
    for outside in (
        lambda: raw.set("zmeshlib:card:aa", b"x"),
        lambda: raw.hset("zmeshlib:card:bb", "f", "v"),
        lambda: raw.delete("zmeshlib:card:bb"),
        lambda: raw.set("zmeshlib:card:cc", b"x", px=100),
    ):
        before = store.version()
        outside()
        eventually(lambda before=before: store.version() != before, "the keyspace event")
    before = store.version()  # nothing but cc's expiry can move it now
    eventually(lambda: raw.exists("zmeshlib:card:cc") == 0, "cc expired")
    eventually(lambda: store.version() != before, "the expiry's keyspace event")
    raw.close()


def test_without_keyspace_events_the_resync_timer_catches_outside_writes(redis_server, stores):
    store = stores(redis_server.url, resync=0.2)
    eventually(lambda: subscribed(store), "subscribed")
    raw = redis_server.client()
    assert raw.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""
    before = store.version()
    raw.set("zmeshlib:card:aa", b"x")  # no notification at all
    eventually(lambda: store.version() != before, "the resync tick", timeout=2)
    raw.close()


# -- an unreachable or restarted server -----------------------------------------------


def test_an_unreachable_redis_raises_registry_error_naming_the_url(stores):
    port = free_port()  # nobody listens there
    store = stores(f"redis://:s3cret@127.0.0.1:{port}/0")
    expected = (
        rf"cannot reach Redis at redis://:\*\*\*@127.0.0.1:{port}/0: Connection refused; "
        r"is redis-server running\?"
    )
    for call in (lambda: store.get("aa"), lambda: store.put("aa", b"x"), store.get_policy):
        with pytest.raises(RegistryError, match=expected) as raised:
            call()
        assert "s3cret" not in str(raised.value)
    with pytest.raises(RegistryError, match=expected):
        list(store.scan())
    assert store.version() != store.version()  # nobody listens: always "changed", no error
    start = time.perf_counter()
    with pytest.raises(RegistryError):
        store.get("aa")
    assert time.perf_counter() - start < 0.05  # fails fast, without a connect per call


def test_a_replica_refuses_writes_with_a_hint(tmp_path, stores):
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(tmp_path / "replica").start()
    try:
        raw = replica.client()
        raw.replicaof("127.0.0.1", primary.port)
        raw.close()
        with pytest.raises(
            RegistryError,
            match=r"write card aa: You can.t write against a read only replica.; the URL names a replica: point it at the primary$",
        ):
            stores(replica.url).put("aa", b"x")
    finally:
        replica.stop()
        primary.stop()


def test_a_restarted_redis_is_reconnected_resubscribed_and_given_back_its_cards(
    redis_server, stores
):
    writer, reader = stores(redis_server.url), stores(redis_server.url)
    writer.put("aa", b"live card")
    writer.put("gone", b"withdrawn card")
    writer.delete("gone")
    eventually(lambda: subscribed(reader) and subscribed(writer), "both subscribed")
    redis_server.stop()
    eventually(lambda: not subscribed(reader), "the reader saw the server go")
    with pytest.raises(RegistryError, match="cannot reach Redis"):
        reader.get("aa")
    redis_server.restart()  # empty, same port
    restarted = time.perf_counter()
    # the writer's listener writes its live card back; the reader reads it, same objects
    eventually(unless_failing(lambda: reader.get("aa") == b"live card"), "the card written back")
    back = time.perf_counter() - restarted
    assert reader.get("gone") is None  # a deleted card stays deleted
    eventually(lambda: subscribed(reader), "the reader resubscribed")
    before = reader.version()
    writer.put("bb", b"new")
    eventually(lambda: reader.version() != before, "a change after the restart")
    assert [k for k, _ in reader.scan()] == ["aa", "bb"]
    print(f"\nthe card was back in Redis {back * 1000:.0f} ms after the restart")


def test_by_key_answers_from_verified_cards_while_redis_is_down(
    redis_server, stores, ca, make_card, clock
):
    card = make_card(labels={"service": "orders"}, ttl=60)
    registry = Registry(stores(redis_server.url), bundles=ca.bundles, clock=clock)
    registry.publish(card)
    assert registry.by_key(card.curve_key) == card
    stranger = make_card()
    redis_server.stop()
    assert registry.by_key(card.curve_key) == card  # what was verified keeps working
    with pytest.raises(RegistryError, match="cannot reach Redis"):
        registry.by_key(stranger.curve_key)  # never seen: nothing to answer with
    with pytest.raises(RegistryError, match="cannot reach Redis"):
        registry.by_service("orders")
    clock.now = card.not_after  # out of its window: no longer
    with pytest.raises(RegistryError, match="cannot reach Redis"):
        registry.by_key(card.curve_key)
    registry.close()


def test_close_stops_the_listener_promptly_and_leaves_no_fds(redis_server):
    def listeners() -> int:
        return sum(t.name == LISTENER for t in threading.enumerate())

    fds, before = len(os.listdir("/proc/self/fd")), listeners()
    up = [RedisStore(redis_server.url) for _ in range(3)]
    for store in up:
        store.put("aa", b"x")
        eventually(lambda store=store: subscribed(store), "subscribed")
    down = RedisStore(f"redis://127.0.0.1:{free_port()}/0")  # its listener backs off
    assert listeners() == before + 4
    start = time.perf_counter()
    for store in [*up, down]:
        store.close()
        store.close()  # idempotent
    took = time.perf_counter() - start
    assert listeners() == before
    assert len(os.listdir("/proc/self/fd")) == fds
    assert took < 0.5, f"closing four stores took {took:.2f}s"
    with pytest.raises(RegistryError, match="closed"):
        up[0].get("aa")


def _listeners() -> int:
    return sum(t.name == LISTENER for t in threading.enumerate())


def test_the_meshes_of_a_process_share_one_store_per_url(redis_url):
    """One connection pool and one change feed per process and URL, whatever the number
    of registries on it; a use closed twice gives back one use; the last closes it."""
    before = _listeners()
    first, second = open_store(redis_url), open_store(redis_url)
    assert first.store is second.store and _listeners() == before + 1
    other = open_store(redis_url + "?prefix=other:")  # other settings: a store of its own
    assert other.store is not first.store and _listeners() == before + 2
    other.close()
    first.close()
    first.close()  # closing a use again changes nothing for the other users
    second.put("aa", b"still open")
    assert second.get("aa") == b"still open"
    second.close()
    eventually(lambda: _listeners() == before, "the last use to stop the listener")
    with pytest.raises(RegistryError, match="closed"):
        second.get("aa")
    third = open_store(redis_url)  # a new store once the last use closed
    assert third.store is not second.store and third.get("aa") == b"still open"
    third.close()


def test_the_policy_token_ignores_card_renewals_but_not_a_policy_written_elsewhere(
    stores, redis_url
):
    reader, writer = RedisStore(redis_url), RedisStore(redis_url)  # as two processes
    try:
        eventually(lambda: subscribed(reader), "the reader's feed")
        token, cards = reader.policy_version(), reader.version()
        writer.put("aa", b"renewed card")
        eventually(lambda: reader.version() != cards, "the card change to reach the reader")
        assert reader.policy_version() == token
        writer.put_policy(b"signed v2")
        eventually(lambda: reader.policy_version() != token, "the policy change to arrive")
    finally:
        reader.close()
        writer.close()


def test_a_mesh_cannot_start_on_an_unreachable_redis_and_leaves_nothing(ca):
    url = f"redis://127.0.0.1:{free_port()}/0"
    before = _listeners()
    with pytest.raises(RegistryError, match=f"cannot reach Redis at {url}: Connection refused"):
        Mesh(identity=ca.issue("spiffe://example.org/ns/shop/sa/orders"), registry=url)
    eventually(lambda: _listeners() == before, "the failed Mesh's store closed")


def test_a_follower_on_redis_is_woken_by_a_push_instead_of_polling(redis_url):
    """With an interval of a minute the follower would poll once a minute: it applies a
    push at once because the store's change feed wakes it, and closes at once."""
    from zmeshlib import DevCA, Policy, publish_policy
    from zmeshlib.policy.follower import PolicyFollower

    ca = DevCA.create("example.org")
    control = ca.issue("spiffe://example.org/ns/mesh/sa/control")
    store = open_store(redis_url)
    eventually(lambda: subscribed(store), "the store's feed")
    applied: list[Policy] = []
    follower = PolicyFollower(store, ["example.org/ns/mesh/sa/control"],
                              bundles=lambda: ca.bundles, apply=applied.append,
                              interval=60.0).start()  # fmt: skip
    try:
        pushed = time.monotonic()
        publish_policy({"traffic": {"sim": {"timeout": "2s"}}}, identity=control,
                       registry=redis_url)  # fmt: skip
        assert follower.wait(1, timeout=5.0)
        took = time.monotonic() - pushed
        assert took < 1.0 and len(applied) == 1, took
    finally:
        start = time.monotonic()
        follower.close()
        assert time.monotonic() - start < 1.0  # woken, not waiting out its recheck
        store.close()

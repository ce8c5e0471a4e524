"""What a fleet on one Redis costs, counted on a real redis-server: a push is read from Redis
once per process and verified once per process, however many Meshes follow it; a workload
whose store is away neither calls its card lost nor hammers the store."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from zmeshlib import DevCA, Mesh, Policy, publish_policy
from zmeshlib.policy import distribution
from zmeshlib.policy._verdicts import VERDICTS
from zmeshlib.policy.follower import PolicyFollower
from zmeshlib.registry import open_store

SIGNER = "spiffe://example.org/ns/mesh/sa/control"
FOLLOWERS = 20


def eventually(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.005)  # polling other threads' work, bounded
    pytest.fail(f"not within {timeout}s: {what}")


def getrange_calls(redis_server: Any) -> int:
    """GETRANGE commands the server ran so far (the store reads every value with it)."""
    stats = redis_server.client().info("commandstats")
    return int(stats.get("cmdstat_getrange", {}).get("calls", 0))


def test_a_push_is_read_once_and_verified_once_per_process(redis_server, monkeypatch):
    ca = DevCA.create("example.org")
    control = ca.issue(SIGNER)
    chains: list[object] = []
    real_verify_chain = distribution.verify_chain

    def counted_verify_chain(*args: Any, **kwargs: Any) -> Any:  # the real check, counted
        chains.append(args[0])
        return real_verify_chain(*args, **kwargs)

    monkeypatch.setattr(distribution, "verify_chain", counted_verify_chain)
    VERDICTS.clear()
    stores = [open_store(redis_server.url) for _ in range(FOLLOWERS)]  # one shared store
    assert len({id(s.store) for s in stores}) == 1
    eventually(lambda: stores[0].policy_version() == stores[0].policy_version(), "the feed")
    applied: list[Policy] = []
    followers = [
        PolicyFollower(s, [SIGNER], bundles=lambda: ca.bundles, apply=applied.append).start()
        for s in stores
    ]
    try:
        for version in (1, 2):
            before, verified = getrange_calls(redis_server), len(chains)
            publish_policy({"traffic": {"a": {"timeout": f"{version}s"}}}, identity=control,
                           registry=redis_server.url)  # fmt: skip
            for f in followers:
                assert f.wait(version, timeout=10.0)
            reads = getrange_calls(redis_server) - before
            # publish_policy reads the stored version once, fresh; the 20 followers once
            # per move of the policy count: its own write moves it, then the change feed
            assert reads <= 3, reads
            # publish_policy verifies what it signed as a follower would; the followers
            # find that verdict (equal bundles, the same bytes) and check nothing again
            assert len(chains) - verified == 1, len(chains) - verified
        assert len(applied) == 2 * FOLLOWERS and len({id(p) for p in applied}) == 2
    finally:
        for f in followers:
            f.close()
        for s in stores:
            s.close()


def test_a_store_that_is_away_is_not_a_lost_card_and_is_retried_calmly(redis_server, caplog):
    """With Redis stopped, the keeper's card checks and lease renewals fail: it says so at a
    bounded rate and tries again every couple of seconds, never logging the card "lost"
    (which would re-publish it); with Redis back, the card is back."""
    ca = DevCA.create("example.org")
    mesh = Mesh(identity=ca.issue("spiffe://example.org/ns/shop/sa/orders"),
                registry=redis_server.url + "?lease=3s")  # fmt: skip
    try:
        card = mesh.card
        assert card is not None and mesh.registry.holds(card)
        caplog.set_level(logging.WARNING, logger="zmeshlib")
        redis_server.stop()
        eventually(lambda: "could not renew this workload's card" in caplog.text,
                   "a failed lease renewal reported")  # fmt: skip
        failed_at = time.monotonic()
        eventually(lambda: time.monotonic() - failed_at > 2.5, "two more keeper rounds")
        renewals = caplog.text.count("could not renew this workload's card")
        assert renewals <= 3, caplog.text  # at most one line a second, none per attempt
        assert "lost this workload's card" not in caplog.text
        redis_server.restart()  # empty, same port
        eventually(lambda: _holds(mesh), "the card back in Redis")
    finally:
        mesh.close()


def _holds(mesh: Mesh) -> bool:
    try:
        return mesh.card is not None and mesh.registry.holds(mesh.card)
    except Exception:
        return False


def calls(redis_server: Any, command: str) -> int:
    stats = redis_server.client().info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_an_index_is_patched_with_the_cards_that_changed_not_read_again(
    redis_server, ca, svids, sign_card
):
    """A fleet renews its cards all the time: after a renewal and a withdrawal elsewhere,
    a service lookup reads those two cards, not all 100; a change the feed cannot name
    (cards written back after a restart) makes it read everything again."""
    from zmeshlib.registry import Registry
    from zmeshlib.registry.redis_store import RedisStore

    from .conftest import ORDERS, PAYMENT

    writer = RedisStore(redis_server.url)  # another process's store, as far as Redis knows
    pairs = [zmq.curve_keypair() for _ in range(100)]

    def card(i: int) -> Any:
        labels = {"service": "orders"} if i % 10 == 0 else {}
        return sign_card(svids[ORDERS if i % 10 == 0 else PAYMENT], *pairs[i], labels=labels,
                         ttl=60)  # fmt: skip

    cards = [card(i) for i in range(100)]
    for c in cards:
        writer.put(c.key_id, c.to_bytes())
    reader_store = RedisStore(redis_server.url)
    registry = Registry(reader_store, bundles=ca.bundles)
    try:
        eventually(lambda: reader_store.changed_keys(reader_store.version()) == frozenset(),
                   "the reader's feed")  # fmt: skip
        assert len(registry.by_service("orders")) == 10  # the first read: every card

        renewed = card(10)
        token = reader_store.version()
        reads, scans = calls(redis_server, "getrange"), calls(redis_server, "scan")
        writer.put(renewed.key_id, renewed.to_bytes())
        writer.delete(cards[20].key_id)
        eventually(lambda: reader_store.changed_keys(token) == {renewed.key_id,
                   cards[20].key_id}, "both changes named by the feed")  # fmt: skip
        found = registry.by_service("orders")
        assert renewed in found and cards[10] not in found and cards[20] not in found
        assert len(found) == 9
        assert calls(redis_server, "getrange") - reads == 2  # the two cards, nothing else
        assert calls(redis_server, "scan") == scans

        token = reader_store.version()
        redis_server.client().publish("zmeshlib:changes", "restored")  # names no card
        eventually(lambda: reader_store.version() != token, "the note to arrive")
        assert reader_store.changed_keys(token) is None
        assert len(registry.by_service("orders")) == 9
        assert calls(redis_server, "scan") > scans  # read again, whole
    finally:
        registry.close()
        reader_store.close()  # a store given to a Registry stays its giver's to close
        writer.close()

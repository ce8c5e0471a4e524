"""What a fleet on one Redis costs, counted on a real redis-server: a push is read from Redis
once per process and verified once per process, however many Meshes follow it; a workload
whose store is away neither calls its card lost nor hammers the store."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import zmq

from zmeshlib import DevCA, Mesh, Policy, publish_policy
from zmeshlib.policy import distribution
from zmeshlib.policy._verdicts import VERDICTS
from zmeshlib.policy.follower import PolicyFollower
from zmeshlib.registry import open_store

from .conftest import ORDERS, PAYMENT, eventually

SIGNER = "spiffe://example.org/ns/mesh/sa/control"
FOLLOWERS = 20


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


def test_a_process_holds_at_most_33_connections_however_many_meshes_are_busy(redis_server):
    """40 Meshes of one process on one URL, each publishing, renewing and looking up from
    its own thread at once: one pool of 32 and one change feed, so at most 33 clients."""
    ca = DevCA.create("example.org")
    meshes = [Mesh(identity=ca.issue(f"spiffe://example.org/ns/shop/sa/w{i}"),
                   registry=redis_server.url) for i in range(40)]  # fmt: skip
    peak = 0
    try:
        stop = threading.Event()

        def busy(mesh: Mesh) -> None:
            while not stop.is_set():
                mesh.registry.by_service("nothing")
                mesh.registry.publish(mesh.card)  # type: ignore[arg-type]

        threads = [threading.Thread(target=busy, args=(m,)) for m in meshes]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # sampling the server's client list, bounded
            ours = [c for c in redis_server.client().client_list() if c["cmd"] != "client|list"]
            peak = max(peak, len(ours))
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        for m in meshes:
            m.close()
    print(f"\n40 busy Meshes in one process: at most {peak} connections to Redis")
    assert 2 <= peak <= 33


def test_a_fleet_sends_only_the_commands_the_operations_page_lists(redis_server):
    """The ACL row of docs/operations.md: what an ACL user of the store must be allowed.
    A fleet's whole life (publish, renew, look up, follow and push a policy, withdraw) on a
    server whose command statistics were reset."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    row = next(line for line in page.splitlines() if "the store uses" in line)
    listed = {c.lower() for c in re.findall(r"`([A-Z]+)`", row.split("the store uses")[1])}
    raw = redis_server.client()
    raw.config_resetstat()
    ca = DevCA.create("example.org")
    control = ca.issue(SIGNER)
    client = Mesh(identity=ca.issue("spiffe://example.org/ns/shop/sa/a"), registry=redis_server.url)
    server = Mesh(identity=ca.issue("spiffe://example.org/ns/shop/sa/b"), registry=redis_server.url)
    try:
        follower = client.follow_policy(signers=[SIGNER])
        server.socket(zmq.REP).bind("tcp://127.0.0.1:0", service="svc")
        eventually(lambda: client.registry.by_service("svc"), "the server's card")
        publish_policy({"traffic": {}}, identity=control, registry=redis_server.url)
        assert follower.wait(1, timeout=10.0)
    finally:
        server.close()
        client.close()
    sent = {name.removeprefix("cmdstat_") for name in raw.info("commandstats")}
    sent -= {"config|resetstat", "info"}  # this test's own
    assert sent and sent <= listed, sorted(sent - listed)

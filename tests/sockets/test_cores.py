"""The sans-I/O cores of the sockets, driven directly: no sockets, exact outcomes."""

from __future__ import annotations

import time

import pytest

import zmeshlib
from zmeshlib import NotFound, PermissionDenied, Policy, ProtocolError, StatusCode
from zmeshlib._models import Peer
from zmeshlib.policy import register_provider, unregister_provider
from zmeshlib.sockets.core import Drops, PeerBook, PolicyInForce
from zmeshlib.sockets.core_pubsub import PublisherCore, SubscriberCore
from zmeshlib.sockets.core_reqrep import ClientCore, Pending, ServerCore
from zmeshlib.wire import DEFAULT_LIMITS, Envelope, Kind, decode, encode, encode_request

ME = zmeshlib.SpiffeId.parse("spiffe://example.org/ns/shop/sa/me")


def NO_REPLY(*args: object, **kwargs: object) -> None:
    """A replier for requests the test never answers."""


ORDERS = Peer(zmeshlib.SpiffeId.parse("spiffe://example.org/ns/shop/sa/orders"))
ROGUE = Peer(zmeshlib.SpiffeId.parse("spiffe://example.org/ns/rogue/sa/evil"))


def _policy(*policies: dict) -> Policy:
    return Policy.from_dict({"version": 1, "authorization": list(policies)})


ORDERS_ONLY = _policy(
    {
        "name": "orders-publish",
        "action": "ALLOW",
        "rules": [
            {
                "from": {"principals": ["example.org/ns/shop/sa/orders"]},
                "to": {"publish": ["orders.*"]},
            },
            {"to": {"subscribe": ["orders.*"]}},
        ],
    }
)


def _publication(topic: str, payload: bytes = b"p", mid: int = 1) -> list[bytes]:
    return [topic.encode() + b"\0" + encode(Envelope(Kind.PUBLISH, mid)), payload]


def test_publisher_frames_and_own_permission():
    holder = PolicyInForce(ORDERS_ONLY)
    core = PublisherCore(holder, "orders", lambda: ORDERS.spiffe_id, DEFAULT_LIMITS, Drops())
    head, payload = core.publication("orders.created", b"x", None, None)
    topic, env = head.split(b"\0", 1)
    assert topic == b"orders.created" and payload == b"x"
    assert decode(env).kind is Kind.PUBLISH
    with pytest.raises(PermissionDenied) as denied:
        core.publication("payments.x", b"x", None, None)
    assert "orders-publish" in str(denied.value)  # no ALLOW rule matched: the reason names them
    with pytest.raises(ProtocolError) as bad:
        core.publication("orders.\0x", b"x", None, None)
    assert bad.value.reason == "topic"
    # a new policy takes effect at the next publication, cached verdicts included
    holder.policy = Policy()
    assert core.publication("payments.x", b"x", None, None)


def test_publisher_judges_subscriptions_and_notices_policy_changes():
    holder = PolicyInForce(ORDERS_ONLY)
    core = PublisherCore(holder, "orders", lambda: ME, DEFAULT_LIMITS, Drops())
    change = core.on_subscription(b"\x01", str(ROGUE.spiffe_id), ROGUE)
    assert change is not None and change.prefixes == (b"orders.",)  # "" narrowed
    assert core.on_subscription(b"\x01pay", str(ROGUE.spiffe_id), ROGUE) is None  # denied
    assert core.counts["subscriptions_denied"] == 1
    assert core.on_subscription(b"\x07junk", "x", ROGUE) is None
    assert core.drops.counts["subscription-malformed"] == 1
    unsub = core.on_subscription(b"\x00", str(ROGUE.spiffe_id), ROGUE)
    assert unsub is not None and unsub.action == "unsubscribe" and unsub.prefixes == (b"orders.",)
    assert not core.needs_restart
    core.on_subscription(b"\x01orders.", str(ROGUE.spiffe_id), ROGUE)
    holder.policy = _policy(
        {"name": "nobody", "action": "ALLOW", "rules": [{"from": {"namespaces": ["none"]}}]}
    )
    core._authorizer()
    assert core.needs_restart  # a remembered grant is now different: the shell must rebind
    core.forget_all()
    assert not core.needs_restart and not core.requests


def test_subscriber_drops_what_the_sender_may_not_publish():
    holder = PolicyInForce(ORDERS_ONLY)
    drops = Drops()
    core = SubscriberCore(holder, "orders", lambda: ME, DEFAULT_LIMITS, drops)
    msg = core.message(_publication("orders.created", b"hi", 7), ORDERS)
    assert msg is not None and (msg.topic, msg.payload, msg.message_id, msg.peer) == (
        "orders.created",
        b"hi",
        7,
        ORDERS,
    )
    assert core.message(_publication("orders.created"), ROGUE) is None
    assert drops.counts["unauthorized"] == 1
    assert core.message([b"no separator"], ORDERS) is None
    assert core.message([b"t\0" + b"\x09" + bytes(11)], ORDERS) is None
    assert core.message([b"t\0" + encode(Envelope(Kind.PUSH, 1))], ORDERS) is None
    assert core.message([b"\xff\0" + encode(Envelope(Kind.PUBLISH, 1))], ORDERS) is None
    assert (drops.counts["malformed"], drops.counts["version"], drops.counts["kind"]) == (1, 1, 1)
    assert drops.counts["utf8"] == 1
    # the verdict cache lives as long as the policy object
    holder.policy = Policy()
    assert core.message(_publication("orders.created"), ROGUE) is not None
    # and this workload's own subscribe permission applies at once
    holder.policy = _policy(
        {
            "name": "eu",
            "action": "ALLOW",
            "rules": [{"to": {"subscribe": ["orders.eu.*"], "publish": ["orders.*"]}}],
        }
    )
    assert core.message(_publication("orders.us.x"), ORDERS) is None
    assert drops.counts["not-subscribable"] == 1


def test_custom_provider_decisions_are_never_frozen():
    answers = iter([True, False, True])
    register_provider("flaky", lambda req: req.action == "subscribe" or next(answers))
    try:
        holder = PolicyInForce(
            _policy({"name": "ext", "action": "CUSTOM", "provider": "flaky", "rules": [{}]})
        )
        core = SubscriberCore(holder, "s", lambda: ME, DEFAULT_LIMITS, Drops())
        outcomes = [core.message(_publication("t.x"), ORDERS) is not None for _ in range(3)]
        assert outcomes == [True, False, True]
    finally:
        unregister_provider("flaky")


def test_client_matches_replies_and_drops_late_ones():
    drops = Drops()
    core = ClientCore("payment", DEFAULT_LIMITS, drops)
    now, wall = time.monotonic(), time.time()
    pending, frames = core.request(
        b"x", method="charge", timeout=2, now=now, wall=wall, endpoint="e"
    )
    env = decode(frames[0])
    assert (env.kind, env.method, env.message_id) == (Kind.REQUEST, "charge", pending.message_id)
    assert abs(env.deadline_ms - (wall + 2) * 1000) < 2
    reply = [encode(Envelope(Kind.REPLY, pending.message_id)), b"ok"]
    got = core.reply(reply, ORDERS)
    assert got is not None and got[1].payload == b"ok" and got[1].peer == ORDERS
    assert core.reply(reply, ORDERS) is None  # duplicate
    assert core.counts["late_replies"] == 1
    p2, _ = core.request(b"x", method="charge", timeout=2, now=now, wall=wall, endpoint="e")
    denied = Envelope(
        Kind.REPLY,
        p2.message_id,
        status=StatusCode.PERMISSION_DENIED,
        detail="no",
        policy="deny-all",
    )
    _, err = core.reply([encode(denied)], ORDERS)  # type: ignore[misc]
    assert isinstance(err, PermissionDenied) and err.policy == "deny-all" and "charge" in str(err)
    assert core.reply([b"\x01\x09"], ORDERS) is None and drops.counts["truncated"] == 1


def test_client_take_matches_any_pending_request_by_id_and_drops_late_copies():
    drops = Drops()
    core = ClientCore("payment", DEFAULT_LIMITS, drops)
    now, wall = time.monotonic(), time.time()

    def call() -> Pending:
        pending, _ = core.request(b"x", method="m", timeout=2, now=now, wall=wall, endpoint="e")
        return pending

    first, second = call(), call()
    ok = [encode(Envelope(Kind.REPLY, second.message_id)), b"a", b"b"]
    mid, msg = core.take(ok, ORDERS)  # the usual reply, read without an Envelope
    assert mid == second.message_id and isinstance(msg, zmeshlib.Message)
    assert msg.frames == (b"a", b"b") and msg.peer == ORDERS
    assert core.take(ok, ORDERS) is None and core.counts["late_replies"] == 1  # a duplicate
    late = [encode(Envelope(Kind.REPLY, first.message_id)), b"late"]
    assert core.take(late, ORDERS)[0] == first.message_id and core.pending == {}
    with_headers = call()
    reply = Envelope(Kind.REPLY, with_headers.message_id, headers={"k": "v"})
    _, msg = core.take([encode(reply), b"h"], ORDERS)
    assert msg.headers == {"k": "v"} and msg.payload == b"h"
    failing = call()
    error = Envelope(Kind.REPLY, failing.message_id, status=StatusCode.NOT_FOUND, detail="gone")
    _, err = core.take([encode(error)], ORDERS)
    assert isinstance(err, NotFound) and "gone" in str(err)
    assert core.take([], ORDERS) is None and drops.counts["malformed"] == 1
    assert core.take([b"junk"], ORDERS) is None


def test_server_authorizes_calls_and_skips_expired_requests():
    holder = PolicyInForce(
        _policy(
            {
                "name": "callers",
                "action": "ALLOW",
                "rules": [{"from": {"namespaces": ["shop"]}, "to": {"call": ["charge"]}}],
            }
        )
    )
    core = ServerCore(holder, "payment", DEFAULT_LIMITS, Drops())
    wall = time.time()
    req = encode(Envelope(Kind.REQUEST, 5, method="charge", deadline_ms=int((wall + 5) * 1000)))
    replies: list[tuple[object, bytes]] = []
    msg, immediate = core.request(
        [b"route", req, b"3"],
        ORDERS,
        wall,
        lambda m, payload, *a, **kw: replies.append((m, payload)),
    )
    assert immediate is None and msg is not None and msg.method == "charge" and msg.payload == b"3"
    msg.reply(b"ok")  # the replier gets the request, the route travels with it
    assert replies == [(msg, b"ok")] and msg._route == b"route"
    msg, immediate = core.request([b"route", req], ROGUE, wall, NO_REPLY)
    assert msg is None and immediate is not None
    reply = decode(immediate[1])
    assert (reply.status, reply.message_id) == (StatusCode.PERMISSION_DENIED, 5)
    assert "'callers'" in reply.detail and "charge" in reply.detail
    old = encode(Envelope(Kind.REQUEST, 6, method="charge", deadline_ms=int((wall - 1) * 1000)))
    assert core.request([b"route", old], ORDERS, wall, NO_REPLY) == (None, None)
    assert core.counts["expired"] == 1
    msg, immediate = core.request([b"route", b"garbage"], ORDERS, wall, NO_REPLY)
    assert decode(immediate[1]).status is StatusCode.INVALID_ARGUMENT  # type: ignore[index]


def test_server_decisions_follow_policy_changes_and_audits_log_every_call(caplog):
    allow = {
        "name": "callers",
        "action": "ALLOW",
        "rules": [{"from": {"namespaces": ["shop"]}, "to": {"call": ["charge"]}}],
    }
    holder = PolicyInForce(_policy(allow))
    core = ServerCore(holder, "payment", DEFAULT_LIMITS, Drops())
    wall = time.time()

    def call(peer: Peer, mid: int = 5) -> bool:
        req = encode_request(mid, "charge", int((wall + 5) * 1000))
        msg, _ = core.request([b"route", req, b"x"], peer, wall, NO_REPLY)
        return msg is not None

    assert [call(ORDERS) for _ in range(3)] == [True] * 3  # decided once, remembered
    assert not call(ROGUE)
    holder.policy = _policy({**allow, "action": "DENY"})  # the next call sees the new policy
    assert [call(ORDERS), call(ROGUE)] == [False, True]  # no ALLOW policy left: only shop denied
    holder.policy = _policy(allow, {**allow, "name": "watch", "action": "AUDIT"})
    with caplog.at_level("INFO", logger="zmeshlib"):
        assert [call(ORDERS) for _ in range(3)] == [True] * 3
    assert sum("watch" in r.getMessage() for r in caplog.records) == 3  # one log line per call
    assert core.counts["requests"] == 7 and core.counts["calls_denied"] == 2


def test_peer_book_parses_once_and_maps_junk_to_anonymous():
    book = PeerBook()
    a = book["spiffe://example.org/ns/a/sa/b"]
    assert a is book["spiffe://example.org/ns/a/sa/b"]
    assert a.spiffe_id == zmeshlib.SpiffeId.parse("spiffe://example.org/ns/a/sa/b")
    assert book[""] is zmeshlib.ANONYMOUS
    assert book["not a spiffe id"] is zmeshlib.ANONYMOUS


def test_peer_book_stays_bounded():
    book = PeerBook()
    book.limit = 3
    ids = [f"spiffe://example.org/ns/a/sa/{n}" for n in range(10)]
    for user_id in ids:
        assert str(book[user_id].spiffe_id) == user_id
        assert len(book) <= book.limit + 1
    assert book[""] is zmeshlib.ANONYMOUS


@pytest.mark.parametrize("skew", [-30.0, 0.0, 30.0])
def test_a_server_with_a_skewed_clock_judges_by_the_time_left(skew):
    """The client sends its absolute deadline and the time left; the server, whatever its
    clock, gives the handler the time left on its own clock and never drops it as expired."""
    core = ServerCore(PolicyInForce(Policy()), "payment", DEFAULT_LIMITS, Drops())
    client_wall = time.time()
    frames, _mid = ClientCore("payment", DEFAULT_LIMITS, Drops()).request_frames(
        b"x", "charge", int((client_wall + 0.5) * 1000), 500
    )
    server_wall = client_wall + skew
    msg, immediate = core.request([b"route", *frames], ORDERS, server_wall, NO_REPLY)
    assert immediate is None and msg is not None
    assert msg.deadline == pytest.approx(server_wall + 0.5)
    assert core.counts["expired"] == 0


def test_a_peer_that_sends_only_the_absolute_deadline_is_judged_by_it():
    core = ServerCore(PolicyInForce(Policy()), "payment", DEFAULT_LIMITS, Drops())
    wall = time.time()
    fresh = encode_request(7, "charge", int((wall + 2) * 1000))
    msg, _ = core.request([b"route", fresh], ORDERS, wall, NO_REPLY)
    assert msg is not None and msg.deadline == pytest.approx(wall + 2, abs=0.001)

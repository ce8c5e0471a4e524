"""Value types and the error table: the contracts other modules lean on."""

from __future__ import annotations

import attrs
import pytest

import zmeshlib
from zmeshlib import ANONYMOUS, Message, StatusCode
from zmeshlib._exceptions import _BY_STATUS


def test_fast_message_constructor_equals_init():
    peer = zmeshlib.Peer(zmeshlib.SpiffeId.parse("spiffe://example.org/a"))
    fast = Message._received((b"a", b"b"), peer, "t.x", {"k": "v"}, 7, None)
    slow = Message(frames=(b"a", b"b"), peer=peer, topic="t.x", headers={"k": "v"}, message_id=7)
    assert fast == slow
    assert fast.payload == b"ab"
    request = Message._received(
        (b"a",), peer, None, {}, 8, None, method="m", attempt=2, deadline=5.0
    )
    assert request == Message(
        frames=(b"a",), peer=peer, message_id=8, method="m", attempt=2, deadline=5.0
    )
    names = {f.name for f in attrs.fields(Message)}
    assert set(vars(request)) == names  # no field missing, none invented
    # the fast path skips __init__: that is only right while no field validates or converts
    for field in attrs.fields(Message):
        assert field.validator is None and field.converter is None, field.name


def test_reply_on_a_message_that_is_not_a_request():
    msg = Message(frames=(b"x",), peer=ANONYMOUS)
    with pytest.raises(zmeshlib.MeshError, match="not a request"):
        msg.reply(b"y")
    with pytest.raises(zmeshlib.MeshError, match="not a request"):
        msg.reply_error(StatusCode.NOT_FOUND)


@pytest.mark.parametrize("status", [s for s in StatusCode if s is not StatusCode.OK])
def test_every_error_status_maps_to_one_class_and_back(status):
    err = zmeshlib.error_for_status(status, "why", policy="p", retriable=True, what="charge")
    assert isinstance(err, zmeshlib.RemoteError)
    assert err.status is status
    assert err.detail == "why" and err.policy == "p"
    assert "charge" in str(err) and "why" in str(err) and "'p'" in str(err)
    assert _BY_STATUS[status.name] is type(err)
    if status is StatusCode.APPLICATION:
        assert err.retriable is True


def test_socket_kind_counterparts():
    pairs = {(k.name, k.counterpart.name) for k in zmeshlib.SocketKind}
    assert pairs == {
        ("PUB", "SUB"),
        ("SUB", "PUB"),
        ("REQ", "REP"),
        ("REP", "REQ"),
        ("PUSH", "PULL"),
        ("PULL", "PUSH"),
    }

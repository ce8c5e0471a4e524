"""Value types and the error table: the contracts other modules lean on."""

from __future__ import annotations

import attrs
import pytest

import zmeshlib
from zmeshlib import ANONYMOUS, Message, StatusCode, _models
from zmeshlib._exceptions import _BY_STATUS


def test_fast_message_constructor_equals_init():
    """Message._received, compiled where it could be built; py_received is the Python one."""
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


try:  # the compiled constructor, wherever it was built (ZMESHLIB_PURE_PYTHON only stops its use)
    from zmeshlib import _message as compiled_message  # type: ignore[attr-defined]
except ImportError:
    compiled_message = None
else:
    compiled_message.setup(Message, StatusCode.OK)

needs_compiled = pytest.mark.skipif(
    compiled_message is None, reason="the compiled constructor is not built"
)


@needs_compiled
@pytest.mark.parametrize(
    "args",
    [
        ((b"a", b"b"), ANONYMOUS, "t.x", {"k": "v"}, 7, None),
        ((b"a",), ANONYMOUS, None, {}, 8, None, "m"),
        ((b"a",), ANONYMOUS, None, {}, 8, None, "m", 5.0),
        ((), ANONYMOUS, None, {}, 2**64 - 1, None, "m", None, 3),
        ((b"",), ANONYMOUS, None, {}, 0, None, "", 1.5, 0, print),
        ((b"",), ANONYMOUS, None, {}, 0, None, "", 1.5, 0, print, b"route"),
    ],
)
def test_both_received_constructors_build_the_same_message(args):
    compiled, python = compiled_message.received(*args), _models.py_received(*args)
    assert type(compiled) is type(python) is Message
    assert vars(compiled) == vars(python) and list(vars(compiled)) == list(vars(python))
    assert compiled == python and repr(compiled) == repr(python)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        compiled.topic = "changed"  # type: ignore[misc]
    assert attrs.evolve(compiled, topic="t") == attrs.evolve(python, topic="t")


@needs_compiled
def test_both_received_constructors_take_the_optional_arguments_by_keyword():
    base = ((b"a",), ANONYMOUS, None, {}, 3, None)
    keywords = {
        "method": "m",
        "deadline": 2.0,
        "attempt": 1,
        "replier": print,
        "route": b"r",
        "receiver": len,
    }
    compiled = compiled_message.received(*base, **keywords)
    python = _models.py_received(*base, **keywords)
    assert vars(compiled) == vars(python)
    assert (compiled._replier, compiled._route, compiled._receiver) == (print, b"r", len)


def test_the_received_constructor_checks_its_arguments():
    for args in [
        (),
        ((b"a",), ANONYMOUS, None, {}, 1),
        ((b"a",), ANONYMOUS, None, {}, 1, None) * 2 + (None,),  # one too many
    ]:
        with pytest.raises(TypeError):
            Message._received(*args)


def test_the_compiled_constructor_is_in_use_where_it_can_be_built(c_toolchain, monkeypatch):
    from zmeshlib import _compiled

    monkeypatch.delenv("ZMESHLIB_PURE_PYTHON", raising=False)
    assert _compiled.load("_message") is not None, (
        "a C compiler is present, but no _message.c build"
    )


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


def test_a_missing_c_extension_is_logged_once_and_switching_them_off_is_not(caplog, monkeypatch):
    from zmeshlib import _compiled

    monkeypatch.setattr(_compiled, "_warned", False)
    with caplog.at_level("WARNING", logger="zmeshlib"):
        assert _compiled.load("_not_built") is None
        assert _compiled.load("_not_built_either") is None
    assert [r.getMessage().count("C extensions are not built") for r in caplog.records] == [1]
    caplog.clear()
    monkeypatch.setattr(_compiled, "_warned", False)
    monkeypatch.setenv("ZMESHLIB_PURE_PYTHON", "1")
    with caplog.at_level("WARNING", logger="zmeshlib"):
        assert _compiled.load("_message") is None
    assert not caplog.records

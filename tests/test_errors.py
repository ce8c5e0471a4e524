"""The error classes' contract beyond the status table (tests/test_models.py has that)."""

from __future__ import annotations

import errno
import pickle

import pytest
import zmq

import zmeshlib
from zmeshlib import Delivery, StatusCode


def test_a_timeout_is_a_zmq_again_as_pyzmq_raises_for_rcvtimeo_and_noblock():
    err = zmeshlib.Timeout("nothing within 1s")
    assert isinstance(err, zmq.Again) and isinstance(err, zmeshlib.MeshError)
    assert err.errno == errno.EAGAIN
    assert str(err) == "nothing within 1s"
    with pytest.raises(zmq.Again):
        raise err
    assert str(pickle.loads(pickle.dumps(err))) == "nothing within 1s"


def test_an_error_from_a_status_was_answered_and_a_local_one_says_what_is_known():
    answered = zmeshlib.error_for_status(StatusCode.UNAVAILABLE, "draining")
    assert answered.delivery is Delivery.ANSWERED
    local = zmeshlib.Unavailable("no endpoint", delivery=Delivery.NOT_SENT)
    assert local.delivery is Delivery.NOT_SENT
    lost = zmeshlib.Timeout("no reply", delivery=Delivery.UNKNOWN)
    assert lost.delivery is Delivery.UNKNOWN
    app = zmeshlib.ApplicationError("x", retriable=True, delivery=Delivery.ANSWERED)
    assert app.retriable and app.delivery is Delivery.ANSWERED


def test_closed_is_a_mesh_error_with_the_cancelled_status():
    assert issubclass(zmeshlib.Closed, zmeshlib.MeshError)
    assert zmeshlib.Closed("this SUB socket is closed").status is StatusCode.CANCELLED

"""Registry test fixtures: one real dev CA, real SVIDs, fresh CURVE keys per card."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from zmeshlib.identity.card import Card
from zmeshlib.identity.devca import DevCA

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
PAYMENT = "spiffe://example.org/ns/shop/sa/payment"
ROGUE = "spiffe://example.org/ns/rogue/sa/mallory"


class Clock:
    """A settable clock for Registry(clock=...)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _sign_card(
    svid: Any, public: bytes | None = None, secret: bytes | None = None, **kw: Any
) -> Card:
    """``Card.sign`` with a CURVE key pair (a fresh one unless given).

    The secret is passed when ``Card.sign`` asks for it (cards that prove possession of
    their CURVE key), so these tests sign cards the way the card module in use does.
    """
    if public is None:
        public, secret = zmq.curve_keypair()
    if "curve_secret" in inspect.signature(Card.sign).parameters:
        kw["curve_secret"] = secret
    return Card.sign(svid, public, **kw)


@pytest.fixture(scope="session")
def sign_card() -> Callable[..., Card]:
    """``sign_card(svid, public=None, secret=None, **Card.sign kwargs)``: see :func:`_sign_card`."""
    return _sign_card


@pytest.fixture(scope="session")
def ca() -> DevCA:
    return DevCA.create("example.org")


@pytest.fixture(scope="session")
def svids(ca: DevCA) -> dict[str, Any]:
    return {sid: ca.issue_svid(sid, key="ed25519") for sid in (ORDERS, PAYMENT, ROGUE)}


@pytest.fixture
def clock() -> Clock:
    return Clock(time.time())


@pytest.fixture
def make_card(svids: dict[str, Any], clock: Clock) -> Callable[..., Card]:
    """``make_card(spiffe_id=ORDERS, **Card.sign kwargs)``: a fresh CURVE key, signed at ``clock``."""

    def make(spiffe_id: str = ORDERS, **kw: Any) -> Card:
        kw.setdefault("now", clock.now)
        return _sign_card(svids[spiffe_id], **kw)

    return make


def eventually(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll ``check`` (every 10 ms, with a deadline) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)  # polling another thread's or process's work, bounded by the deadline
    pytest.fail(f"not within {timeout}s: {what}")

"""Registry test fixtures: one real dev CA, real SVIDs, fresh CURVE keys per card."""

from __future__ import annotations

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
        public, _ = zmq.curve_keypair()
        kw.setdefault("now", clock.now)
        return Card.sign(svids[spiffe_id], public, **kw)

    return make

"""A dir:// store whose directory holds FIFOs, sockets, symlinks and directories named like cards.

Whoever can write the directory can make them; none may hang, follow or break a lookup.
Each lookup runs in a thread bounded by a deadline: before the store opened card files
with O_NONBLOCK | O_NOFOLLOW, the FIFO's open never returned.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from zmeshlib._models import Endpoint
from zmeshlib.registry import Registry

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
DEADLINE = 10.0  # seconds a lookup may take before the test calls it hung


def within_deadline(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a thread; fails the test if it has not returned by the deadline."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive(), f"{fn} did not return within {DEADLINE} s"
    if errors:
        raise errors[0]
    return result[0]


@contextlib.contextmanager
def unblocking(fifos: list[Path]) -> Iterator[None]:
    """Release a reader stuck opening one of ``fifos`` (so a failing run does not leak it)."""
    try:
        yield
    finally:
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


class Directory:
    """A card directory holding one of each kind of non-file under a card name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.attacker = zmq.utils.z85.decode(zmq.curve_keypair()[0]).hex()
        self.kinds = {
            self.attacker: "a FIFO named after a key a client will connect with",
            "fifo": "a FIFO",
            "loop-a": "a symlink loop",
            "loop-b": "a symlink loop",
            "link": "a symlink to a regular file",
            "sock": "a UNIX socket",
            "dir": "a directory",
        }
        self.fifos = [path / f"{self.attacker}.card", path / "fifo.card"]
        for fifo in self.fifos:
            os.mkfifo(fifo)
        os.symlink("loop-b.card", path / "loop-a.card")
        os.symlink("loop-a.card", path / "loop-b.card")
        (path / "elsewhere").write_bytes(b"x")
        os.symlink(path / "elsewhere", path / "link.card")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path / "sock.card"))
        self.server.listen(1)  # a listening socket: connecting would work, opening must not
        (path / "dir.card").mkdir()


@pytest.fixture
def cards_dir(tmp_path: Path) -> Iterator[Directory]:
    (tmp_path / "cards").mkdir()
    directory = Directory(tmp_path / "cards")
    with unblocking(directory.fifos):
        yield directory
    directory.server.close()


def test_lookups_return_promptly_and_rejected_names_each_special_file(cards_dir, ca, make_card):
    directory, attacker = cards_dir.path, cards_dir.attacker
    card = make_card(
        ORDERS, labels={"service": "orders"}, endpoints=[Endpoint("tcp://127.0.0.1:5555", "REP")]
    )
    with Registry(f"dir://{directory}", bundles=ca.bundles) as registry:
        registry.publish(card)
        assert within_deadline(lambda: registry.by_key(bytes.fromhex(attacker))) is None
        assert within_deadline(lambda: registry.by_key(card.curve_key)) == card
        assert within_deadline(lambda: registry.by_service("orders")) == [card]
        assert within_deadline(lambda: registry.by_endpoint("tcp://127.0.0.1:5555")) == card
        assert within_deadline(lambda: registry.changed_since(None))[0]
        rejected = within_deadline(registry.rejected)
        assert rejected == dict.fromkeys(cards_dir.kinds, "not-a-file")
        assert registry.stats["corrupt"] == len(cards_dir.kinds)
        # the symlink's target is untouched and was never read as a card
        assert (directory / "elsewhere").read_bytes() == b"x"


def test_the_zap_lookup_of_a_fifo_key_does_not_stall_other_clients(cards_dir, ca, make_card):
    directory, attacker = cards_dir.path, bytes.fromhex(cards_dir.attacker)
    good = make_card(ORDERS)
    with Registry(f"dir://{directory}", bundles=ca.bundles) as registry:
        registry.publish(good)
        # the ZAP thread's call for the attacker, then a new client's, as handshakes arrive
        assert within_deadline(lambda: registry.by_key(attacker)) is None
        assert within_deadline(lambda: registry.by_key(good.curve_key)) == good
        assert (
            within_deadline(lambda: [registry.by_key(attacker) for _ in range(20)]) == [None] * 20
        )
        assert registry.stats["corrupt"] == 1  # one entry, however often it is asked for

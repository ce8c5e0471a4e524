"""A dir:// registry shared by real OS processes: publish in one, find and verify in another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

import zmeshlib.identity.card as card_module
from zmeshlib.registry import Registry

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
SCRIPT = Path(__file__).with_name("_publisher.py")
SRC = Path(card_module.__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture
def files(tmp_path, ca, svids) -> dict[str, str]:
    """The SVID and the trust bundle as PEM files, as a workload would be given them."""
    svid = svids[ORDERS]
    paths = {
        "root": tmp_path / "root.pem",
        "certs": tmp_path / "svid.pem",
        "key_pem": tmp_path / "key.pem",
    }
    paths["root"].write_bytes(ca.bundle.to_pem())
    paths["certs"].write_bytes(svid.certs_pem())
    paths["key_pem"].write_bytes(svid.key_pem())
    return {k: str(v) for k, v in paths.items()} | {
        "trust_domain": "example.org",
        "registry": f"dir://{tmp_path / 'cards'}",
        "service": "orders",
    }


def spawn(config: dict) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


def test_a_card_published_in_one_process_is_found_and_verified_in_another(files, ca, tmp_path):
    key_id = finish(spawn(files | {"mode": "publish"})).split()[0]
    junk = tmp_path / "cards" / ("0" * 64 + ".card")
    junk.write_bytes(b"\x00garbage that is no card")
    with Registry(files["registry"], bundles=ca.bundles) as registry:
        card = registry.by_key(bytes.fromhex(key_id))
        assert card is not None and str(card.spiffe_id) == ORDERS
        assert registry.by_service("orders") == [card]
        assert registry.by_service("orders", kind="REP") == [card]
        assert registry.by_key(bytes(32)) is None
        assert registry.stats["corrupt"] == 1
        assert registry.rejected() == {"0" * 64: "card-malformed"}


def test_a_process_polling_the_registry_finds_a_card_published_later(files, ca, make_card, clock):
    clock.now = time.time()
    card = make_card(ORDERS, labels={"service": "orders"})
    finder = spawn(files | {"mode": "find", "key": card.key_id, "deadline": 30})
    with Registry(files["registry"], bundles=ca.bundles) as registry:
        registry.publish(card)
    assert finish(finder).strip() == ORDERS


def test_concurrent_publishers_do_not_corrupt_each_others_files(files, ca, tmp_path):
    shared, shared_secret = (k.decode() for k in zmq.curve_keypair())
    writers = [
        spawn(
            files
            | {
                "mode": "publish",
                "count": 20,
                "rewrites": 20,
                "shared_key": shared,
                "shared_secret": shared_secret,
                "name": f"w{n}",
            }
        )
        for n in range(4)
    ]
    seen_corrupt = []
    with Registry(files["registry"], bundles=ca.bundles) as registry:
        while any(w.poll() is None for w in writers):  # read while they write
            registry.by_service("orders")
            seen_corrupt.append(registry.stats["corrupt"] + registry.stats["invalid"])
        keys = {line for w in writers for line in finish(w).split()}
        assert len(keys) == 80
        found = registry.by_service("orders")
        assert {c.key_id for c in found} == keys
        last = registry.by_key(shared)
        assert last is not None and last.labels["writer"].endswith("-19")
        assert registry.rejected() == {}
        assert registry.stats["corrupt"] == registry.stats["invalid"] == 0
    assert set(seen_corrupt) <= {0}
    names = os.listdir(tmp_path / "cards")
    assert len(names) == 81 and all(n.endswith(".card") for n in names)

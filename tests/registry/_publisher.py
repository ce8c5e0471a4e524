"""A separate workload process for the dir:// registry tests (run with the venv's python).

Usage: ``python _publisher.py '<json config>'``; the config names the registry URL, the
SVID PEM files, the root PEM (trust bundle) and what to do:

* ``publish``: sign and publish ``count`` cards for service ``service``, then
  ``rewrites`` cards for the shared CURVE key pair ``shared_key`` / ``shared_secret``
  (Z85); print each key id.
* ``find``: poll the registry until the card of ``key`` (hex) verifies by key and by
  service ``service``, then print its SPIFFE ID (exit 1 at ``deadline`` seconds).
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from typing import Any

import zmq

from zmeshlib._models import Endpoint
from zmeshlib.identity.card import Card
from zmeshlib.identity.svid import Bundles, TrustBundle, X509Svid
from zmeshlib.registry import Registry


def sign(svid: X509Svid, public: bytes, secret: bytes, **kw: Any) -> Card:
    """``Card.sign``, passing the CURVE secret when the card module asks for a key proof."""
    if "curve_secret" in inspect.signature(Card.sign).parameters:
        kw["curve_secret"] = secret
    return Card.sign(svid, public, **kw)


def main(config: dict) -> int:
    with open(config["root"], "rb") as f:
        bundles = Bundles([TrustBundle.from_pem(config["trust_domain"], f.read())])
    registry = Registry(config["registry"], bundles=bundles)
    if config["mode"] == "publish":
        with open(config["certs"], "rb") as c, open(config["key_pem"], "rb") as k:
            svid = X509Svid.parse(c.read(), k.read())
        for i in range(config.get("count", 1)):
            public, secret = zmq.curve_keypair()
            endpoint = Endpoint(f"tcp://127.0.0.1:{20000 + i}", "REP")
            card = sign(
                svid, public, secret, labels={"service": config["service"]}, endpoints=[endpoint]
            )
            registry.publish(card)
            print(card.key_id, flush=True)
        for i in range(config.get("rewrites", 0)):
            shared = config["shared_key"].encode()
            secret = config["shared_secret"].encode()
            labels = {"writer": f"{config['name']}-{i}"}
            registry.publish(sign(svid, shared, secret, labels=labels))
        return 0
    deadline = time.monotonic() + config.get("deadline", 20.0)
    key = bytes.fromhex(config["key"])
    while time.monotonic() < deadline:
        card = registry.by_key(key)
        if card is not None and card in registry.by_service(config["service"]):
            print(card.spiffe_id, flush=True)
            return 0
        time.sleep(0.01)  # polling another process's writes, bounded by the deadline
    return 1


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))

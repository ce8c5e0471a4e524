"""A separate workload process for the dir:// registry tests (run with the venv's python).

Usage: ``python _publisher.py '<json config>'``; the config names the registry URL, the
SVID PEM files, the root PEM (trust bundle) and what to do:

* ``publish``: sign and publish ``count`` cards for service ``service``, then
  ``rewrites`` cards for the shared CURVE key ``shared_key`` (hex); print each key id.
* ``find``: poll the registry until the card of ``key`` (hex) verifies by key and by
  service ``service``, then print its SPIFFE ID (exit 1 at ``deadline`` seconds).
"""

from __future__ import annotations

import json
import sys
import time

import zmq

from zmeshlib._models import Endpoint
from zmeshlib.identity.card import Card
from zmeshlib.identity.svid import Bundles, TrustBundle, X509Svid
from zmeshlib.registry import Registry


def main(config: dict) -> int:
    with open(config["root"], "rb") as f:
        bundles = Bundles([TrustBundle.from_pem(config["trust_domain"], f.read())])
    registry = Registry(config["registry"], bundles=bundles)
    if config["mode"] == "publish":
        with open(config["certs"], "rb") as c, open(config["key_pem"], "rb") as k:
            svid = X509Svid.parse(c.read(), k.read())
        for i in range(config.get("count", 1)):
            public, _ = zmq.curve_keypair()
            endpoint = Endpoint(f"tcp://127.0.0.1:{20000 + i}", "REP")
            card = Card.sign(
                svid, public, labels={"service": config["service"]}, endpoints=[endpoint]
            )
            registry.publish(card)
            print(card.key_id, flush=True)
        for i in range(config.get("rewrites", 0)):
            shared = bytes.fromhex(config["shared_key"])
            registry.publish(Card.sign(svid, shared, labels={"writer": f"{config['name']}-{i}"}))
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

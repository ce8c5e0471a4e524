"""A labelled REP replica in its own process, for the traffic-shaping tests.

Usage: python _replica.py CA_DIR REGISTRY_URL SPIFFE_ID SERVICE VERSION DELAY_MS

Its card carries the label ``version=VERSION``. It answers every request with its
version after DELAY_MS milliseconds. Prints ``READY <address>`` once bound; serves
until its standard input closes, then prints ``SERVED <requests> <shadows>``: the
requests it saw, and how many of them were mirror copies (``msg.shadow``). It serves
what was queued before it stops: it stops once no request came for 0.3 s.
"""

from __future__ import annotations

import sys
import threading
import time

import zmq

import zmeshlib


def main() -> int:
    ca_dir, registry, spiffe_id, service, version, delay_ms = sys.argv[1:7]
    delay = int(delay_ms) / 1000
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    identity = zmeshlib.DevCA.load(ca_dir).issue(spiffe_id)
    seen = [0, 0]
    last = [time.monotonic()]
    with zmeshlib.Mesh(identity=identity, registry=registry, labels={"version": version}) as mesh:

        def handle(msg: zmeshlib.Message) -> bytes:
            seen[0] += 1
            last[0] = time.monotonic()
            seen[1] += msg.shadow
            if delay:
                time.sleep(delay)  # the handler's work
            return version.encode()

        rep = mesh.socket(zmq.REP)
        print("READY", rep.bind("tcp://127.0.0.1:0", service=service), flush=True)
        rep.serve(handle, stop=lambda: stop.is_set() and time.monotonic() - last[0] > 0.3)
    print("SERVED", *seen, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A REP server in its own process, behaving as a resilience test asks.

Usage: python _server.py BEHAVIOUR CA_DIR REGISTRY_URL SPIFFE_ID SERVICE [POLICY_FILE]

BEHAVIOUR is ``ok`` (echo), ``unavailable`` (answer UNAVAILABLE), ``slow:MS`` (echo after
MS milliseconds), ``deadline`` (answer with the seconds left of the request's deadline),
or ``relay:MS:SERVICE`` (spend MS milliseconds, then call SERVICE, inheriting the
deadline, and answer with its reply). Prints ``READY <address>`` once bound; serves until
its standard input closes, then prints ``SERVED <n> <attempts>``: the requests it saw and
how many of them were retries (``msg.attempt > 0``).
"""

from __future__ import annotations

import sys
import threading
import time

import zmq

import zmeshlib


def main() -> int:
    behaviour, ca_dir, registry, spiffe_id, service = sys.argv[1:6]
    policy = zmeshlib.Policy.load(sys.argv[6]) if len(sys.argv) > 6 else None
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    identity = zmeshlib.DevCA.load(ca_dir).issue(spiffe_id)
    seen = [0, 0]
    with zmeshlib.Mesh(identity=identity, policy=policy, registry=registry) as mesh:
        downstream = None
        if behaviour.startswith("relay:"):
            downstream = mesh.socket(zmq.REQ)
            downstream.connect(service=behaviour.split(":")[2])

        def handle(msg: zmeshlib.Message) -> bytes:
            seen[0] += 1
            seen[1] += msg.attempt > 0
            if behaviour == "unavailable":
                raise zmeshlib.Unavailable("this replica is failing")
            if behaviour.startswith("slow:"):
                time.sleep(int(behaviour.split(":")[1]) / 1000)  # the handler's work
            if behaviour == "deadline":
                return b"%.3f" % (msg.deadline - time.time())
            if downstream is not None:
                time.sleep(int(behaviour.split(":")[1]) / 1000)  # the work before the call
                return downstream.request(msg.payload, method=msg.method).payload
            return msg.payload

        rep = mesh.socket(zmq.REP)
        print("READY", rep.bind("tcp://127.0.0.1:0", service=service), flush=True)
        rep.serve(handle, stop=stop.is_set)
    print("SERVED", *seen, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pyzmq idioms on mesh sockets: a poller, options, multipart, JSON, NOBLOCK, REQ's send/recv.

Run it from a checkout: ``python examples/pyzmq_idioms.py`` (exit status 0 when
every step behaved as pyzmq's would). One process, two workloads with their
own SPIFFE identities from a throw-away dev CA, one ``dir://`` registry: the
code a pyzmq user already writes, on authenticated, authorized sockets.
"""

import sys
import tempfile

import zmq

import zmeshlib


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        ca = zmeshlib.DevCA.create("example.org")
        registry = f"dir://{tmp}/registry"
        shop = zmeshlib.Mesh(
            identity=ca.issue("spiffe://example.org/ns/shop/sa/orders"), registry=registry
        )
        desk = zmeshlib.Mesh(
            identity=ca.issue("spiffe://example.org/ns/shop/sa/desk"), registry=registry
        )
        with shop, desk:
            # options, as on a zmq.Socket: on every underlying socket, present and future
            pub = shop.socket(zmq.PUB)
            pub.sndhwm = 1000
            pub.bind("tcp://127.0.0.1:0", service="orders")
            rep = shop.socket(zmq.REP)
            rep.setsockopt(zmq.LINGER, 0)
            rep.bind("tcp://127.0.0.1:0", service="stock")

            sub = desk.socket(zmq.SUB)
            sub.connect(service="orders")
            sub.setsockopt(zmq.SUBSCRIBE, b"orders.")  # authorized like subscribe()
            req = desk.socket(zmq.REQ)
            req.connect(service="stock")
            assert (sub.type, req.type) == (zmq.SUB, zmq.REQ)

            # NOBLOCK: nothing there yet, so zmq.Again, as pyzmq raises
            try:
                sub.recv(zmq.NOBLOCK)
                return fail("a NOBLOCK recv with nothing queued did not raise zmq.Again")
            except zmq.Again:
                pass

            # REQ's send/recv idiom, with JSON
            req.send_json({"item": "beans", "count": 2})
            poller = zmq.Poller()  # mesh sockets beside a plain zmq socket
            poller.register(rep, zmq.POLLIN)
            plain_a, plain_b = zmq.Context.instance().socket(zmq.PAIR), None
            plain_a.bind("inproc://plain")
            plain_b = zmq.Context.instance().socket(zmq.PAIR)
            plain_b.connect("inproc://plain")
            poller.register(plain_a, zmq.POLLIN)
            plain_b.send(b"hello from plain zmq")
            seen: set[str] = set()
            for _ in range(100):
                if seen == {"rep", "plain"}:
                    break
                # as for any object with fileno(), zmq.Poller reports the descriptor
                for sock, _event in poller.poll(100):
                    if sock == rep.fileno():
                        try:
                            order = rep.recv_json(flags=zmq.NOBLOCK)
                        except zmq.Again:  # woken, but nothing deliverable yet
                            continue
                        rep.send_json({"reserved": order["count"]})
                        seen.add("rep")
                    elif sock is plain_a:
                        assert plain_a.recv() == b"hello from plain zmq"
                        seen.add("plain")
            else:
                return fail(f"the poller saw only {sorted(seen)}")
            answer = req.recv_json()
            if answer["reserved"] != 2:
                return fail(f"unexpected answer {answer}")
            print("REQ/REP with JSON through a zmq.Poller:", answer)

            # multipart, pyzmq's way: the first frame of a publication is its topic
            for _ in range(200):  # publish until the subscriber has joined (slow joiner)
                pub.send_multipart([b"orders.created", b"order", b"42"])
                try:
                    topic, *frames = sub.recv_multipart(flags=0, timeout=0.05)
                except zmq.Again:
                    continue
                print("SUB got", topic, frames)
                if topic != b"orders.created" or frames != [b"order", b"42"]:
                    return fail("the multipart publication came back changed")
                break
            else:
                return fail("no publication arrived")
            plain_a.close(linger=0)
            plain_b.close(linger=0)
    print("every pyzmq idiom behaved as pyzmq's")
    return 0


def fail(why: str) -> int:
    print("FAILED:", why, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

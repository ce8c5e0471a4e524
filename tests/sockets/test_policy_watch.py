"""A policy file edited on disk reaches the mesh's sockets without a restart or reconnect."""

from __future__ import annotations

import threading

import zmq

from zmeshlib import PermissionDenied

ALLOW_CHARGE = """
version: 1
authorization:
  - name: callers
    action: ALLOW
    rules:
      - to: {call: ["charge"%s]}
"""


def test_edited_policy_file_applies_to_the_next_call(mesh_factory, tmp_path, eventually):
    path = tmp_path / "mesh.yaml"
    path.write_text(ALLOW_CHARGE % "")
    server = mesh_factory("spiffe://example.org/ns/shop/sa/payment")
    server.watch_policy(str(path), interval=0.05)
    eventually(lambda: server.stats["policy.updates"] == 1, what="the file loaded")
    rep = server.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:0", service="payment")
    client = mesh_factory("spiffe://example.org/ns/shop/sa/client")
    req = client.socket(zmq.REQ)
    req.connect(service="payment")

    stop = threading.Event()
    serving = threading.Thread(
        target=rep.serve, args=(lambda m: b"done",), kwargs={"stop": stop.is_set}
    )
    serving.start()
    try:
        assert req.request(b"", method="charge", timeout=5).payload == b"done"
        try:
            req.request(b"", method="refund", timeout=5)
            raise AssertionError("refund should be denied")
        except PermissionDenied as e:
            assert "refund" in str(e)
        version = server.policy_version

        path.write_text(ALLOW_CHARGE % ', "refund"')
        eventually(lambda: server.policy_version != version, what="the edit picked up")
        assert req.request(b"", method="refund", timeout=5).payload == b"done"

        path.write_text("version: 1\nauthorization: [{name: broken, action: MAYBE}]\n")
        eventually(lambda: server.stats["policy.rejected"] == 1, what="the broken edit rejected")
        assert server.stats["policy.updates"] == 2
        assert req.request(b"", method="refund", timeout=5).payload == b"done"
        assert req.upstreams  # the same connection all along
    finally:
        stop.set()
        serving.join(5)

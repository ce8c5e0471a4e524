"""One process of the policy fleet test: N Meshes following one registry's signed policy.

Usage: python _fleet_worker.py '{"registry": URL, "ca": DIR, "count": N, "signers": [...]}'

It starts N Meshes (each with its own identity from the dev CA in DIR), each following
the registry, prints one JSON line ``{"ready": ..., "versions": [...]}``, then answers
one JSON command per stdin line with one JSON line:

==========================================  ==========================================
command                                     answer
==========================================  ==========================================
``{"wait": V, "timeout": T}``               every follower waited for version V:
                                            ``applied_at``, ``versions``, ``revisions``
``{"refused": R, "count": C, "timeout": T}``  polled (with a deadline) until every follower
                                            counted C refusals of reason R: ``counts``,
                                            ``versions``, ``revisions``
``{"quit": true}``                          every Mesh closed: ``threads``, the follower
                                            threads still alive (none, unless one leaked)
==========================================  ==========================================
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from zmeshlib import DevCA, Mesh, PolicyFollower


def state(meshes: list[Mesh], followers: list[PolicyFollower]) -> dict[str, Any]:
    return {
        "versions": [f.version for f in followers],
        "revisions": [m.policy_version for m in meshes],
        "counts": [f.counts for f in followers],
        "applied_at": [f.applied_at for f in followers],
    }


def main() -> None:
    config = json.loads(sys.argv[1])
    ca = DevCA.load(config["ca"])
    meshes = [
        Mesh(
            identity=ca.issue(f"spiffe://example.org/ns/fleet/sa/w{config['index']}-{i}"),
            registry=config["registry"],
        )
        for i in range(config["count"])
    ]
    followers = [m.follow_policy(signers=config["signers"]) for m in meshes]
    print(json.dumps({"ready": True, **state(meshes, followers)}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if "wait" in command:
            deadline = time.monotonic() + command["timeout"]
            for f in followers:
                f.wait(command["wait"], timeout=max(0.0, deadline - time.monotonic()))
        elif "refused" in command:
            reason, count = command["refused"], command["count"]
            deadline = time.monotonic() + command["timeout"]
            while time.monotonic() < deadline and not all(
                f.counts.get(reason, 0) >= count for f in followers
            ):
                time.sleep(0.01)
        elif command.get("quit"):
            for m in meshes:
                m.close()
            alive = [t.name for t in threading.enumerate() if t.name == "zmeshlib-policy-follow"]
            print(json.dumps({"threads": alive}), flush=True)
            return
        print(json.dumps(state(meshes, followers)), flush=True)


if __name__ == "__main__":
    main()

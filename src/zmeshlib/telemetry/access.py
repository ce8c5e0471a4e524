"""Access logs: one JSON line per request or message, on the ``zmeshlib.access`` logger.

Rules this module keeps:

* Off by default; ``telemetry.access_log.enabled`` turns them on, and
  ``sampling`` (a percentage) keeps that share of entries, each drawn
  independently from the Mesh's random source.
* Nothing is built unless an entry will be written: the logger must also be
  enabled for INFO.
* An entry names who: the workload's SPIFFE ID and the peer's as the
  handshake authenticated it (``null`` when unknown or anonymous), never a
  name from the payload. A topic or method is cut to 256 characters.
* Each entry is also attached to its log record as ``record.access`` (a
  dict), for handlers that ship structured fields rather than the message.

Fields: ``time`` (UTC, ISO 8601 with milliseconds), ``workload``, ``peer``,
``side`` (``client``, ``server``, ``publisher``, ``pusher``, ``subscriber``,
``puller``), ``operation`` (``call``, ``publish``, ``push``, ``receive``),
``service``, ``method`` or ``topic``, ``status`` (calls), ``duration_ms``
(calls), ``bytes``, ``trace_id`` (hex, when the request or message carried
trace context).
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any

from .._models import Peer, StatusCode, TraceContext


def trace_id_of(trace: TraceContext | None) -> str | None:
    return trace.trace_id.hex() if trace is not None else None


log = logging.getLogger("zmeshlib.access")

MAX_NAME = 256


def _iso(now: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    return f"{seconds}.{int(now * 1000) % 1000:03d}Z"


class AccessLog:
    """The access log of one Mesh (module docstring)."""

    def __init__(self, in_force: Any, workload: str, rng: random.Random | None = None) -> None:
        self._in_force = in_force
        self._workload = workload or None
        self._rng = rng or random.Random()
        self._policy: object = None  # the policy _sampling was read from
        self._sampling = 0.0  # the percentage of entries kept (0: off)

    def enabled(self) -> bool:
        """Whether an entry may be written now: the hot paths' one check, a couple of
        attribute reads while the policy stays the same object."""
        policy = self._in_force.policy
        if policy is not self._policy:
            spec = policy.telemetry.access_log
            self._policy, self._sampling = policy, (spec.sampling if spec.enabled else 0.0)
        return self._sampling > 0.0 and log.isEnabledFor(logging.INFO)

    def _drawn(self) -> bool:
        if not self.enabled():
            return False
        sampling = self._sampling
        return sampling >= 100.0 or self._rng.random() * 100.0 < sampling

    def call(
        self,
        side: str,
        peer: Peer | None,
        service: str,
        method: str,
        status: StatusCode,
        seconds: float,
        size: int,
        trace_id: str | None,
    ) -> None:
        if self._drawn():
            self._write(
                side, "call", peer, service, trace_id,
                {"method": method[:MAX_NAME], "status": status.name,
                 "duration_ms": round(seconds * 1000.0, 3), "bytes": size},
            )  # fmt: skip

    def message(
        self,
        side: str,
        operation: str,
        peer: Peer | None,
        service: str,
        topic: str | None,
        size: int,
        trace_id: str | None,
    ) -> None:
        if self._drawn():
            fields: dict[str, Any] = {"bytes": size}
            if topic is not None:
                fields["topic"] = topic[:MAX_NAME]
            self._write(side, operation, peer, service, trace_id, fields)

    def _write(
        self,
        side: str,
        operation: str,
        peer: Peer | None,
        service: str,
        trace_id: str | None,
        fields: dict[str, Any],
    ) -> None:
        entry: dict[str, Any] = {
            "time": _iso(time.time()),
            "workload": self._workload,
            "peer": str(peer.spiffe_id) if peer is not None and peer.spiffe_id else None,
            "side": side,
            "operation": operation,
            "service": service,
            **fields,
            "trace_id": trace_id,
        }
        log.info(json.dumps(entry, separators=(",", ":")), extra={"access": entry})

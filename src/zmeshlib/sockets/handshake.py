"""Handshake authentication: the ZAP handler that turns a CURVE key into a SPIFFE ID.

Rules this module keeps:

* Identity is decided once per connection, here, and never per message:
  libzmq attaches the User-Id we return to every message of the connection,
  so sockets read the peer from the first frame of a message.
* The registry is untrusted: a key is accepted only when its card verifies
  against the current trust bundles (the registry does that).
* A refusal is logged and counted, and the refused peer's socket never
  completes the handshake: the application sees nothing of it.
* Anonymous peers get an empty User-Id; nothing else does.

Theory of operation: libzmq asks the handler of its context (the socket
bound at ``inproc://zeromq.zap.01``) about every new connection to a server
socket with a ``zap_domain``. :func:`decide` is the pure decision;
:class:`ZapHandler` is the thread that speaks the ZAP protocol (RFC 27)
around it. The decision table:

===========  ==========  ============  ==================================
mode         mechanism   card          outcome
===========  ==========  ============  ==================================
STRICT       CURVE       valid         accept, User-Id = SPIFFE ID
STRICT       CURVE       missing/bad   refuse
PERMISSIVE   CURVE       valid         accept, User-Id = SPIFFE ID
PERMISSIVE   CURVE       missing/bad   accept as anonymous
DISABLE      NULL        (none)        accept as anonymous
any other combination                  refuse (mechanism not allowed)
===========  ==========  ============  ==================================

A valid card whose SPIFFE ID is banned from the socket's ZAP domain is refused
(``banned``): a socket bans a peer that abused it (a publisher, a peer that
asked for more subscriptions than it remembers), for a while, so that its
connection can be shed and does not come straight back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import attrs
import zmq

from .._exceptions import IdentityError, MeshError
from ..identity.card import Card
from ..telemetry.logs import LimitedLog

log = logging.getLogger("zmeshlib.handshake")
limited = LimitedLog(log)  # a peer can cause these lines: at a bounded rate

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"zmeshlib"


@attrs.frozen
class HandshakeDecision:
    accepted: bool
    user_id: str  # the SPIFFE ID, "" for anonymous
    reason: str  # one word for counters: "verified", "anonymous", "unknown-key", ...
    detail: str = ""


def decide(
    mode: str,
    mechanism: str,
    curve_key: bytes | None,
    lookup: Callable[[bytes], Card | None],
    banned: Callable[[str], bool] = lambda spiffe_id: False,
) -> HandshakeDecision:
    """The decision table of the module docstring. ``lookup`` returns a verified card or None;
    ``banned(spiffe_id)`` says whether that identity is banned from this domain now."""
    if mode == "DISABLE":
        if mechanism == "NULL":
            return HandshakeDecision(True, "", "anonymous")
        return HandshakeDecision(False, "", "mechanism", f"{mechanism} handshake in DISABLE mode")
    if mechanism != "CURVE" or curve_key is None:
        return HandshakeDecision(
            False, "", "mechanism", f"{mode} mode requires CURVE, got {mechanism}"
        )
    try:
        card = lookup(curve_key)
        detail = "" if card else "no valid card for this CURVE key in the registry"
    except MeshError as e:  # a registry that cannot verify or be read: a refusal, not a crash
        card, detail = None, str(e)
    if card is not None:
        if banned(str(card.spiffe_id)):
            return HandshakeDecision(
                False, "", "banned", f"{card.spiffe_id} is banned from this socket for a while"
            )
        return HandshakeDecision(True, str(card.spiffe_id), "verified")
    if mode == "PERMISSIVE":
        return HandshakeDecision(True, "", "anonymous", detail)
    return HandshakeDecision(False, "", "unknown-key", detail)


class ZapHandler:
    """The ZAP thread of one zmq.Context. At most one per context (libzmq's rule)."""

    def __init__(
        self,
        context: zmq.Context,
        mode: Callable[[], str],
        lookup: Callable[[bytes], Card | None],
    ) -> None:
        self._context = context
        self._mode = mode
        self._lookup = lookup
        self.counters: Counter[str] = Counter()
        self._bans: dict[tuple[bytes, str], float] = {}  # (domain, SPIFFE ID) -> until (monotonic)
        self._bans_lock = threading.Lock()
        self._sock = context.socket(zmq.ROUTER)
        self._sock.linger = 0
        try:
            self._sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            self._sock.close()
            raise IdentityError(
                "this zmq.Context already has a ZAP handler (another Mesh or zmq.auth "
                "authenticator uses it): give each Mesh its own context",
                rule="zap-in-use",
            ) from e
        self._stop_r, self._stop_w = _pipe_pair(context)
        self._thread = threading.Thread(target=self._run, name="zmeshlib-zap", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._stop_r, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self._stop_r in events:
                    return
                if self._sock in events:
                    self._handle(self._sock.recv_multipart())
        finally:
            self._sock.close(linger=0)
            self._stop_r.close(linger=0)

    def _handle(self, msg: list[bytes]) -> None:
        # [envelope..., b"", version, request_id, domain, address, identity, mechanism, *credentials]
        try:
            split = msg.index(b"")
            route, body = msg[: split + 1], msg[split + 1 :]
            version, request_id, domain, address, _routing, mechanism, *creds = body
        except ValueError:
            self.counters["malformed"] += 1
            limited.warning(
                "zap-malformed", "dropped a malformed ZAP request (%d frames)", len(msg)
            )
            return
        if version != b"1.0":
            self._sock.send_multipart(
                [*route, b"1.0", request_id, b"400", b"bad version", b"", b""]
            )
            return
        key = creds[0] if mechanism == b"CURVE" and creds else None
        try:
            d = decide(
                self._mode(),
                mechanism.decode("ascii", "replace"),
                key,
                self._lookup,
                lambda spiffe_id: self.banned(domain, spiffe_id),
            )
        except Exception:  # never let a bug kill the handler: refuse and say why
            log.exception("handshake decision failed; refusing the connection")
            d = HandshakeDecision(False, "", "error")
        self.counters[d.reason] += 1
        peer = address.decode("ascii", "replace")
        if d.accepted:
            log.debug("handshake from %s accepted: %s", peer, d.user_id or "anonymous")
            status, text = b"200", b"OK"
        else:
            limited.warning(
                f"refused-{d.reason}", "handshake from %s refused: %s %s", peer, d.reason, d.detail
            )
            self.counters["refused"] += 1
            status, text = b"400", d.reason.encode()
        self._sock.send_multipart(
            [*route, b"1.0", request_id, status, text, d.user_id.encode(), b""]
        )

    def ban(self, domain: bytes, spiffe_id: str, seconds: float) -> None:
        """Refuse handshakes of ``spiffe_id`` on sockets of ``domain`` for ``seconds``."""
        with self._bans_lock:
            now = time.monotonic()
            self._bans = {k: t for k, t in self._bans.items() if t > now}  # forget the ended
            self._bans[(domain, spiffe_id)] = now + seconds

    def banned(self, domain: bytes, spiffe_id: str) -> bool:
        with self._bans_lock:
            until = self._bans.get((domain, spiffe_id))
        return until is not None and until > time.monotonic()

    def close(self) -> None:
        if self._thread.is_alive():
            self._stop_w.send(b"")
            self._thread.join(5)
        self._stop_w.close(linger=0)


def _pipe_pair(context: zmq.Context) -> tuple[zmq.Socket, zmq.Socket]:
    """An inproc PAIR pair used to wake and stop a thread blocked in poll."""
    a = context.socket(zmq.PAIR)
    b = context.socket(zmq.PAIR)
    a.linger = b.linger = 0
    address = f"inproc://zmeshlib-stop-{id(a):x}"
    a.bind(address)
    b.connect(address)
    return a, b

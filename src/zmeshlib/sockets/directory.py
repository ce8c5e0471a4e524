"""The Mesh's view of the registry: one watcher, one snapshot, and sockets that only read it.

Rules this module keeps:

* No socket touches the store. One watcher thread per Mesh asks the registry
  every ``interval`` seconds whether a lookup's answer may have moved
  (``Registry.changed_since``: a ``stat`` for ``dir://``) and, when it did or
  the policy changed (secure naming is the policy's), recomputes every answer
  a socket asked for. A socket reads :attr:`Directory.generation` (an int)
  on its housekeeping tick and re-resolves only when it moved, from answers
  already computed: dictionary lookups, never I/O, so the asyncio flavour
  never blocks its loop on the store.
* A Mesh that has asked for nothing reads nothing and wakes for nothing:
  until a socket registers its first interest, the watcher thread waits on
  an event, not a timer (a member of a large fleet that only serves must not
  rescan every card that every other member renews, nor tick ten times a
  second for nothing).
* An interest (a service and the endpoint kind that can talk to the asking
  socket, or one address) is answered the first time in the caller's thread:
  ``connect()`` is set-up, not the message path, and it must know at once
  whether anything usable exists.
* What is not usable is explained, not hidden: :meth:`Directory.why_none`
  names the cards secure naming refused and the registry's rejected entries
  (with their rule), so a socket that finds nothing says why.
* A failing store is logged once per failure streak and the last good
  answers are kept: what was verified keeps working while the store is away.

Theory of operation: interests are keys ``("service", name, kind)`` or
``("address", address)``; :meth:`Directory.service` and
:meth:`Directory.address` return the current answer, computing and
remembering it on first use. The watcher loop is :meth:`Directory.refresh`
on a timer; a bump of :attr:`generation` wakes every registered waiter (the
sync sockets that have nothing to poll and wait on an event instead).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._exceptions import MeshError

if TYPE_CHECKING:
    from ..identity.card import Card
    from ..registry import Registry
    from .core import PolicyInForce

log = logging.getLogger("zmeshlib.sockets")

Interest = tuple[str, ...]


class Directory:
    """Verified endpoints by service or address, kept fresh by one thread. Thread-safe."""

    def __init__(
        self, registry: Registry, in_force: PolicyInForce, *, interval: float = 0.1
    ) -> None:
        self._registry = registry
        self._in_force = in_force
        self._interval = interval
        self._lock = threading.Lock()
        self._answers: dict[Interest, Any] = {}
        self._token: object = None
        self._policy_seen: object = in_force.policy
        self._failing = False
        self._waiters: list[Callable[[], None]] = []
        #: Moves whenever an answer may have changed; sockets compare it with what they saw.
        self.generation = 0
        self._stop = threading.Event()
        self._first_interest = threading.Event()  # set by the first interest, and by close()
        self._thread = threading.Thread(target=self._run, name="zmeshlib-directory", daemon=True)
        self._thread.start()

    # -- reading -------------------------------------------------------------------

    def service(self, name: str, kind: str) -> tuple[Card, ...]:
        """Verified cards serving ``name`` with an endpoint of socket ``kind``."""
        return self._answer(("service", name, kind))

    def address(self, address: str) -> Card | None:
        """The verified card that lists ``address``, or None."""
        return self._answer(("address", address))

    def _answer(self, interest: Interest) -> Any:
        with self._lock:
            if interest in self._answers:
                return self._answers[interest]
            answer = self._compute(interest)
            self._answers[interest] = answer
            self._first_interest.set()
            return answer

    def _compute(self, interest: Interest) -> Any:
        registry = self._registry
        if interest[0] == "service":
            return tuple(registry.by_service(interest[1], kind=interest[2]))
        return registry.by_endpoint(interest[1])

    def why_none(self, how: str, name: str, kind: str = "") -> str:
        """Why a service (``how="service"``) or an address has no usable card: the cards
        secure naming refused and the rejected entries of the registry, or that there is none."""
        registry = self._registry
        parts = []
        try:
            if how == "service":
                misnamed = registry.misnamed(name, kind=kind or None)
                if misnamed:
                    who = ", ".join(sorted({str(c.spiffe_id) for c in misnamed}))
                    parts.append(
                        f"its only cards are signed for {who}, which the policy does not allow "
                        f"to serve {name!r} (secure naming: add the identity to "
                        f"services.{name}.identities if it is legitimate)"
                    )
            rejected = registry.rejected()
        except MeshError as e:
            return f"the registry cannot be read: {e}"
        if rejected:
            shown = ", ".join(f"{key[:12]}: {rule}" for key, rule in sorted(rejected.items())[:5])
            more = f" and {len(rejected) - 5} more" if len(rejected) > 5 else ""
            parts.append(
                f"the registry holds {len(rejected)} card(s) that do not verify ({shown}{more}); "
                "`zmesh registry list` shows each with its reason"
            )
        if not parts:
            what = f"service {name!r}" if how == "service" else f"address {name!r}"
            parts.append(
                f"no card in the registry lists {what}"
                + (f" with a {kind} endpoint" if kind else "")
                + ": check that the server is up, bound with that service, and shares this "
                "registry"
            )
        return "; ".join(parts)

    # -- keeping fresh -------------------------------------------------------------

    def add_waiter(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` whenever the generation moves (until :meth:`remove_waiter`); it
        must be quick and thread-safe (an event's ``set``, a pipe's write)."""
        with self._lock:
            self._waiters.append(wake)

    def remove_waiter(self, wake: Callable[[], None]) -> None:
        with self._lock:
            if wake in self._waiters:
                self._waiters.remove(wake)

    def refresh(self) -> bool:
        """Recompute every answer if the registry or the policy changed; True when it did."""
        policy = self._in_force.policy
        try:
            changed, self._token = self._registry.changed_since(self._token)
        except MeshError as e:
            if not self._failing:
                log.error("registry unreadable, keeping the endpoints known so far: %s", e)
            self._failing = True
            return False
        if not changed and policy is self._policy_seen:
            return False
        with self._lock:
            fresh = {}
            try:
                for interest in self._answers:
                    fresh[interest] = self._compute(interest)
            except MeshError as e:
                if not self._failing:
                    log.error("registry unreadable, keeping the endpoints known so far: %s", e)
                self._failing = True
                self._token = None  # try again next time
                return False
            if self._failing:
                log.info("registry readable again")
            self._failing = False
            self._policy_seen = policy
            moved = fresh != self._answers
            self._answers = fresh
            if moved:
                self.generation += 1
                for wake in self._waiters:
                    wake()
            return moved

    def _run(self) -> None:
        self._first_interest.wait()  # until then there is nothing to keep fresh, and no timer
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except Exception:  # never let a bug end the thread that keeps endpoints fresh
                log.exception("refreshing the registry view failed")

    def close(self) -> None:
        self._stop.set()
        self._first_interest.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
        with self._lock:
            for wake in self._waiters:
                wake()
            self._waiters.clear()


WakeUp = Callable[[], None]

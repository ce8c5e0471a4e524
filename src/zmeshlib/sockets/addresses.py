"""Addresses a mesh socket binds, connects and advertises.

Rules this module keeps:

* An address names its transport: ``tcp://``, ``ipc://`` or ``inproc://``.
  Anything else (``"orders"``, a bare ``host:port``) is refused at once with
  what was probably meant (``service="orders"``).
* ``inproc://`` is refused in STRICT mode: CURVE and ZAP do not run on
  inproc, so a peer there could never be authenticated, and STRICT never
  delivers what it could not authenticate. (PERMISSIVE and DISABLE accept
  it; its peers are anonymous.)
* The card lists an address peers can dial. A wildcard bind
  (``tcp://*:5555``, ``tcp://0.0.0.0:0``, ``tcp://[::]:0``) is advertised with
  the Mesh's ``advertise_host``; by default the address of this host's
  default-route interface (found without sending a packet), or 127.0.0.1
  when there is none.
"""

from __future__ import annotations

import socket

from .._exceptions import MeshError

_SCHEMES = ("tcp", "ipc", "inproc")
_WILDCARDS = ("*", "0.0.0.0", "[::]", "::", "[*]")


def check_address(address: str, mode: str, what: str) -> None:
    """Refuse an address this socket cannot use (module docstring)."""
    if not isinstance(address, str):
        raise MeshError(f"{what}() takes an address string such as 'tcp://127.0.0.1:5555'")
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in _SCHEMES:
        hint = (
            f"; to {what} by service name write {what}(service={address!r})"
            if what == "connect" and "://" not in address and ":" not in address
            else ""
        )
        raise MeshError(
            f"{address!r} is not a ZeroMQ address: write tcp://HOST:PORT, ipc:///path or "
            f"inproc://name{hint}"
        )
    if not rest:
        raise MeshError(f"{address!r} names no endpoint after {scheme}://")
    if scheme == "inproc" and mode == "STRICT":
        raise MeshError(
            f"cannot {what} {address!r} in STRICT mode: CURVE and ZAP do not run on inproc://, "
            "so its peers could not be authenticated; use ipc:// (a local socket file) or "
            "tcp://127.0.0.1 within one host, or PERMISSIVE/DISABLE mode if anonymous peers "
            "are acceptable"
        )


def default_advertise_host() -> str:
    """This host's address on its default route (a UDP connect sends nothing), or loopback."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routed like the internet, never sent to
        host = str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()
    return host if host and host != "0.0.0.0" else "127.0.0.1"


def advertised_address(resolved: str, advertise_host: str) -> str:
    """What the card lists for a socket bound at ``resolved`` (libzmq's LAST_ENDPOINT)."""
    scheme, _, rest = resolved.partition("://")
    if scheme != "tcp":
        return resolved
    host, sep, port = rest.rpartition(":")
    if not sep or host not in _WILDCARDS:
        return resolved
    if ":" in advertise_host and not advertise_host.startswith("["):
        advertise_host = f"[{advertise_host}]"  # an IPv6 literal in a tcp:// address
    return f"tcp://{advertise_host}:{port}"

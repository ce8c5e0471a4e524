"""pyzmq's socket options on a mesh socket: which apply, which the mesh owns, and how.

Rules this module keeps:

* An option a pyzmq user may set applies to every underlying socket of the
  mesh socket, the present ones at once and every later one at creation
  (an upstream that appears, a publisher that rebinds). ``getsockopt``
  returns what was set, else what libzmq has.
* An option the mesh must own is refused with the reason and what to use
  instead, never silently ignored. Read-only ones report the mesh socket's
  view (``TYPE`` is the pattern it plays, ``LAST_ENDPOINT`` what its card lists).
* Every option is also an attribute, as on a ``zmq.Socket``: ``sock.sndhwm = 0``.

===============================  ===========================================================
option                           on a mesh socket
===============================  ===========================================================
``RCVTIMEO``                     the default timeout of ``recv()`` (and of ``request()``
                                 on REQ), in ms; -1 = wait for ever (REQ: 5 s)
``SNDTIMEO``                     the default timeout of ``send()`` on PUSH, in ms
``SUBSCRIBE``, ``UNSUBSCRIBE``   SUB: ``subscribe()`` / ``unsubscribe()`` (authorized);
                                 refused elsewhere
``LINGER``                       applied, and the default of ``close()``
``HWM``                          pyzmq's shorthand: ``SNDHWM`` and ``RCVHWM``
owned (table ``OWNED``)          refused with the reason
read-only                        ``TYPE``, ``LAST_ENDPOINT``, ``EVENTS``, ``FD``,
                                 ``RCVMORE``; refused when set
any other libzmq option          applied to every underlying socket
===============================  ===========================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import zmq

from .._exceptions import InvalidArgument, MeshError

if TYPE_CHECKING:
    from .base import MeshSocket

_Opt = zmq.SocketOption


def _options(*names: str) -> list[int]:
    return [int(getattr(_Opt, n)) for n in names if hasattr(_Opt, n)]


_CURVE = "the mesh sets CURVE keys from this workload's identity card (Mesh(identity=...))"
_AUTH = "peers authenticate with CURVE and identity cards; the mesh runs its own ZAP handler"
_XPUB = "the publisher authorizes every subscription itself (XPUB_MANUAL)"
_ROUTING = "request ids and routing are the mesh's (a reply always finds its request)"

#: Options the mesh owns: option -> why it is refused.
OWNED: dict[int, str] = {
    **dict.fromkeys(
        _options("CURVE_SERVER", "CURVE_PUBLICKEY", "CURVE_SECRETKEY", "CURVE_SERVERKEY"), _CURVE
    ),
    **dict.fromkeys(
        _options(
            "ZAP_DOMAIN",
            "ZAP_ENFORCE_DOMAIN",
            "PLAIN_SERVER",
            "PLAIN_USERNAME",
            "PLAIN_PASSWORD",
            "GSSAPI_SERVER",
            "GSSAPI_PRINCIPAL",
            "GSSAPI_SERVICE_PRINCIPAL",
            "GSSAPI_PLAINTEXT",
            "METADATA",
        ),
        _AUTH,
    ),
    **dict.fromkeys(
        _options(
            "XPUB_MANUAL",
            "XPUB_VERBOSE",
            "XPUB_VERBOSER",
            "XPUB_WELCOME_MSG",
            "XPUB_MANUAL_LAST_VALUE",
            "INVERT_MATCHING",
        ),
        _XPUB,
    ),
    **dict.fromkeys(
        _options(
            "ROUTING_ID",
            "IDENTITY",
            "CONNECT_ROUTING_ID",
            "CONNECT_RID",
            "PROBE_ROUTER",
            "ROUTER_MANDATORY",
            "ROUTER_HANDOVER",
            "ROUTER_RAW",
            "ROUTER_NOTIFY",
            "REQ_CORRELATE",
            "REQ_RELAXED",
        ),
        _ROUTING,
    ),
    **dict.fromkeys(
        _options("CONFLATE"),
        "CONFLATE keeps one frame of a message; every mesh message has several",
    ),
    **dict.fromkeys(
        _options("MAXMSGSIZE"),
        "the mesh sets it from its limits: Mesh(limits=Limits(max_message_bytes=...))",
    ),
    **dict.fromkeys(_options("USE_FD"), "the mesh makes its own connections"),
}
READ_ONLY = frozenset(
    _options("TYPE", "LAST_ENDPOINT", "EVENTS", "FD", "RCVMORE", "MECHANISM", "THREAD_SAFE")
)
_RCVTIMEO, _SNDTIMEO = int(_Opt.RCVTIMEO), int(_Opt.SNDTIMEO)
_SUBSCRIBE, _UNSUBSCRIBE = int(_Opt.SUBSCRIBE), int(_Opt.UNSUBSCRIBE)
_HWM = int(_Opt.HWM)
_DEFAULTS: dict[tuple[int, int], Any] = {}  # (socket type, option) -> libzmq's default


def _name(option: int) -> str:
    try:
        return _Opt(option).name
    except ValueError:
        return str(option)


def set_option(sock: MeshSocket, option: int, value: Any) -> None:
    option = int(option)
    name = _name(option)
    if option in (_SUBSCRIBE, _UNSUBSCRIBE):
        if sock.kind.name != "SUB":
            raise MeshError(f"{name} is a SUB socket's option: this is a {sock.kind.name} socket")
        (sock.subscribe if option == _SUBSCRIBE else sock.unsubscribe)(value)  # type: ignore[attr-defined]
        return
    if option == _HWM:  # pyzmq's shorthand for both
        set_option(sock, int(_Opt.SNDHWM), value)
        set_option(sock, int(_Opt.RCVHWM), value)
        return
    if option in OWNED:
        raise MeshError(f"the mesh owns {name}: {OWNED[option]}")
    if option in READ_ONLY:
        raise MeshError(f"{name} is read-only")
    if option in (_RCVTIMEO, _SNDTIMEO):
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise InvalidArgument(f"{name} is milliseconds >= 0, or -1 for ever; not {value!r}")
        if option == _RCVTIMEO:
            sock._rcvtimeo = value
        else:
            sock._sndtimeo = value
        return
    socks = sock.underlying()
    try:
        for s in socks:
            s.setsockopt(option, value)
        if not socks:  # check the value now, not at the first connection
            probe = _probe(sock)
            try:
                probe.setsockopt(option, value)
            finally:
                probe.close(linger=0)
    except (zmq.ZMQError, TypeError, ValueError) as e:
        raise InvalidArgument(f"setsockopt({name}, {value!r}) refused by libzmq: {e}") from e
    sock._options[option] = value


def get_option(sock: MeshSocket, option: int) -> Any:
    option = int(option)
    if option == _RCVTIMEO:
        return sock._rcvtimeo
    if option == _SNDTIMEO:
        return sock._sndtimeo
    if option == _HWM:
        return get_option(sock, int(_Opt.SNDHWM))
    if option == int(_Opt.TYPE):
        return sock.type
    if option == int(_Opt.LAST_ENDPOINT):
        return (sock.endpoints[-1] if sock.endpoints else "").encode()
    if option == int(_Opt.RCVMORE):
        return 0
    if option == int(_Opt.FD):
        return sock.fileno()
    if option == int(_Opt.EVENTS):
        return zmq.POLLIN if sock._ready else 0
    if option in sock._options:
        return sock._options[option]
    socks = sock.underlying()
    try:
        if socks:
            return socks[0].getsockopt(option)
        key = (_socket_type(sock), option)
        if key not in _DEFAULTS:
            probe = _probe(sock)
            try:
                _DEFAULTS[key] = probe.getsockopt(option)
            finally:
                probe.close(linger=0)
        return _DEFAULTS[key]
    except zmq.ZMQError as e:
        raise InvalidArgument(f"getsockopt({_name(option)}) refused by libzmq: {e}") from e


def _socket_type(sock: MeshSocket) -> int:
    from .base import UNDERLYING

    bound, connected = UNDERLYING[sock.kind]
    return int(bound if bound is not None else connected)  # type: ignore[arg-type]


def _probe(sock: MeshSocket) -> zmq.Socket:
    """A throw-away socket of the kind's underlying type, to check or read an option."""
    return sock._mesh._zmq_context.socket(_socket_type(sock))


class OptionProperties:
    """Every libzmq option as an attribute (``sock.sndhwm``), as ``zmq.Socket`` has them.

    Generated once per option name below; names a mesh socket defines itself
    (``type``, ``subscribe``...) are left to it.
    """


def _install() -> None:
    for member in _Opt:
        attr = member.name.lower()
        if hasattr(OptionProperties, attr):
            continue
        option = int(member)

        def getter(self: Any, _o: int = option) -> Any:
            return self.getsockopt(_o)

        def setter(self: Any, value: Any, _o: int = option) -> None:
            self.setsockopt(_o, value)

        setattr(OptionProperties, attr, property(getter, setter, doc=f"zmq.{member.name}"))


_install()

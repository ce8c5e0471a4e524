"""Moving whole messages between the mesh sockets and libzmq.

Rules this module keeps:

* Two functions, one contract: :func:`recv_message` reads one whole
  multipart message, :func:`send_message` writes one. Nothing else in the
  package calls ``send`` or ``recv`` on an underlying socket's hot path.
* Two implementations with the same behaviour, chosen once at import:
  the compiled one (``_frames.c``, built when the package is installed with
  a C compiler) makes one call per message; the pure-Python one makes one
  pyzmq call per frame. The tests run both.
* The compiled one links against nothing: it is handed the functions of the
  libzmq that pyzmq itself loaded (found in the process's memory map, and
  checked to report pyzmq's libzmq version), so both share one libzmq.
  Anything unexpected (another OS, two libzmq copies, a version mismatch)
  means the pure-Python one, never a guess.

Why it exists: on a loaded two-core machine each pyzmq call costs 3-8 us on
the real path. A ROUTER reads three frames and writes three where a REP
makes one call each way, which made the DEALER/ROUTER pattern under the mesh
REQ and REP cost 1.5x raw REQ/REP before any mesh work
(docs/performance.md). One call per message takes that to 1.1x - 1.2x.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

import zmq

from .. import _compiled

log = logging.getLogger("zmeshlib.sockets")

#: One received message: its frames, and the User-Id its connection's handshake set
#: (None when asked not to read it, or when there is none).
Received = tuple[tuple[bytes, ...], "str | None"]

_LIBZMQ_FUNCTIONS = (
    "zmq_msg_init",
    "zmq_msg_recv",
    "zmq_msg_data",
    "zmq_msg_size",
    "zmq_msg_more",
    "zmq_msg_gets",
    "zmq_msg_close",
    "zmq_send",
    "zmq_errno",
)


def py_recv_message(sock: zmq.Socket, flags: int = 0, user_id: bool = False) -> Received | None:
    """One whole message from ``sock``, or None when ``flags`` (or RCVTIMEO) finds none."""
    try:
        first = sock.recv(flags, copy=False)
    except zmq.Again:
        return None
    uid = None
    if user_id:
        try:
            uid = first.get("User-Id")
        except zmq.ZMQError:
            pass
    frames = [first.bytes]
    frame = first
    while frame.more:  # Frame.more: cheaper than a getsockopt(RCVMORE) per frame
        frame = sock.recv(copy=False)
        frames.append(frame.bytes)
    return tuple(frames), uid  # type: ignore[return-value]


def py_send_message(sock: zmq.Socket, frames: list[bytes], flags: int = 0) -> bool:
    """Send ``frames`` as one message; False when NOBLOCK finds the queue full (nothing sent)."""
    more = flags | zmq.SNDMORE
    last = len(frames) - 1
    try:
        sock.send(frames[0], more if last else flags)
    except zmq.Again:
        return False
    if last:
        for frame in frames[1:last]:
            sock.send(frame, more)  # after the first frame, libzmq takes the whole message
        sock.send(frames[last], flags)
    return True


def _libzmq_path() -> str | None:
    """The file of the one libzmq mapped into this process (pyzmq's), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libzmq" in line}
    except OSError:  # not Linux
        return None
    return paths.pop() if len(paths) == 1 else None


def _compiled_pair() -> tuple[Callable[..., Received | None], Callable[..., bool]] | None:
    """The compiled pair, bound to pyzmq's libzmq; None when that cannot be done safely."""
    _frames = _compiled.load("sockets._frames")
    if _frames is None:
        return None
    path = _libzmq_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        major, minor, patch = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        lib.zmq_version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(patch))
        if (major.value, minor.value, patch.value) != zmq.zmq_version_info():
            return None
        addresses = tuple(
            ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in _LIBZMQ_FUNCTIONS
        )
        _frames.bind(addresses, zmq.ZMQError, zmq.Again)
    except (OSError, AttributeError, ValueError, TypeError) as e:
        log.info("compiled frame mover unavailable (%s): using pyzmq's calls", e)
        return None
    return _frames.recv, _frames.send  # the same signatures as py_recv_message / py_send_message


_pair = _compiled_pair()
#: True when the compiled implementation is in use.
COMPILED = _pair is not None
recv_message, send_message = _pair if _pair is not None else (py_recv_message, py_send_message)

__all__ = [
    "COMPILED",
    "Received",
    "py_recv_message",
    "py_send_message",
    "recv_message",
    "send_message",
]

"""pyzmq's convenience calls, written once for both flavours.

``send_multipart``/``recv_multipart``, ``send_string``/``recv_string`` and
``send_json``/``recv_json`` are the kind's own ``send``/``recv`` with a
conversion on one side. The result goes through the socket's driver
(``then``), so in the asyncio flavour they return awaitables, as
``zmq.asyncio`` sockets do; nothing is written twice.

What a frame list means follows pyzmq's patterns: on PUB the first frame of
``send_multipart`` is the topic (unless ``topic=`` is given), and SUB's
``recv_multipart`` gives ``[topic, *payload frames]``; elsewhere the frames
are the payload. Bad input is a typed error: a ``str`` where bytes belong
(``InvalidArgument``: use ``send_string``), a payload that is not UTF-8 or
not JSON (``ProtocolError``).
"""

from __future__ import annotations

import json
from typing import Any

from zmq import POLLIN

from .._exceptions import InvalidArgument, ProtocolError
from .._models import Delivery, Message


class SendIdioms:
    """pyzmq's send conveniences, over ``self.send``."""

    _driver: Any
    send: Any  # the kind's own

    def send_multipart(self, msg_parts: Any, flags: int = 0, **kw: Any) -> Any:
        """Send the frames as one message (pyzmq's ``send_multipart``)."""
        parts = self._frames(msg_parts)
        return self._send_parts(parts, flags, **kw)

    def _send_parts(self, parts: list[bytes], flags: int, **kw: Any) -> Any:
        return self.send(parts, flags=flags, **kw)

    def send_string(self, u: str, flags: int = 0, encoding: str = "utf-8", **kw: Any) -> Any:
        if not isinstance(u, str):
            raise InvalidArgument(
                f"send_string takes a str, not {type(u).__name__}", delivery=Delivery.NOT_SENT
            )
        return self.send(u.encode(encoding), flags=flags, **kw)

    def send_json(self, obj: Any, flags: int = 0, **kw: Any) -> Any:
        try:
            data = json.dumps(obj, separators=(",", ":")).encode()
        except (TypeError, ValueError) as e:
            raise InvalidArgument(
                f"send_json cannot encode the object: {e}", delivery=Delivery.NOT_SENT
            ) from e
        return self.send(data, flags=flags, **kw)

    @staticmethod
    def _frames(msg_parts: Any) -> list[bytes]:
        if isinstance(msg_parts, (bytes, str)):
            raise InvalidArgument(
                "send_multipart takes a list of frames: [b'frame', ...]",
                delivery=Delivery.NOT_SENT,
            )
        return list(msg_parts)


class RecvIdioms:
    """pyzmq's receive conveniences, over ``self.recv``."""

    _driver: Any
    recv: Any  # the kind's own

    def poll(self, timeout: float | None = None, flags: int = POLLIN) -> Any:
        """True as soon as a message may be received without waiting; False after ``timeout``
        seconds (None: wait for ever; pyzmq's ``poll`` takes milliseconds, this one seconds).
        A message found may still be dropped as invalid when read."""
        return self._driver.run(self, self._poll_op(timeout))  # type: ignore[attr-defined]

    def recv_multipart(self, flags: int = 0, **kw: Any) -> Any:
        """The next message's frames (pyzmq's ``recv_multipart``)."""
        return self._driver.then(self.recv(flags=flags, **kw), self._parts_of)

    def _parts_of(self, msg: Message) -> list[bytes]:
        return list(msg.frames)

    def recv_string(self, flags: int = 0, encoding: str = "utf-8", **kw: Any) -> Any:
        def decode(msg: Message) -> str:
            try:
                return msg.payload.decode(encoding)
            except UnicodeDecodeError as e:
                raise ProtocolError(
                    f"the payload from {msg.peer} is not {encoding} text: {e}", reason="utf8"
                ) from e

        return self._driver.then(self.recv(flags=flags, **kw), decode)

    def recv_json(self, flags: int = 0, **kw: Any) -> Any:
        def load(msg: Message) -> Any:
            try:
                return json.loads(msg.payload)
            except ValueError as e:
                raise ProtocolError(
                    f"the payload from {msg.peer} is not JSON: {e}", reason="json"
                ) from e

        return self._driver.then(self.recv(flags=flags, **kw), load)

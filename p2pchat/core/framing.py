"""Length-prefixed frames on a reliable byte stream.

A QUIC stream delivers bytes, not messages, so every frame is a 4-byte
big-endian length followed by that many payload bytes.  The length is checked
against ``max_frame`` the moment its header is complete, before any of the body
is kept, so a peer announcing a 4 GiB frame costs us four bytes of memory, not
four gigabytes.  Zero-length frames carry nothing any protocol above needs and
are refused, which also makes a stream of zero bytes an error instead of an
endless loop of empty messages.
"""

from __future__ import annotations

import struct

from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError

MAX_FRAME = 65536
"""Largest payload (excluding the 4-byte header) either side may send."""

HEADER_SIZE = 4

_HEADER = struct.Struct(">I")


def encode_frame(payload: bytes, *, max_frame: int = MAX_FRAME) -> bytes:
    """Prefix ``payload`` with its length.

    Refusing oversized or empty payloads here rather than letting the peer
    reject them keeps the blame on the side that made the mistake.
    """
    size = len(payload)
    if size == 0:
        raise LocalProtocolError("cannot send an empty frame")
    if size > max_frame:
        raise LocalProtocolError(f"frame of {size} bytes exceeds the {max_frame}-byte limit")
    return _HEADER.pack(size) + payload


class FrameDecoder:
    """Reassembles frames from arbitrarily split stream data.

    Once the peer has violated framing there is no way to find the next frame
    boundary again, so the decoder stays failed and every later ``feed`` raises.
    """

    __slots__ = ("_buffer", "_error", "_max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None

    @property
    def max_frame(self) -> int:
        return self._max_frame

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame; never more than ``max_frame + 3``."""
        return len(self._buffer)

    @property
    def failed(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes) -> list[bytes]:
        """Add stream bytes and return every payload they complete, in order.

        Frames are cut out by offset and the consumed prefix is removed once per
        call, so feeding one byte at a time or a thousand frames at once both
        stay linear in the amount of data.
        """
        if self._error is not None:
            raise RemoteProtocolError(f"frame decoder already failed: {self._error}")
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        try:
            while end - pos >= HEADER_SIZE:
                (size,) = _HEADER.unpack_from(buf, pos)
                if size == 0:
                    raise RemoteProtocolError("zero-length frame")
                if size > self._max_frame:
                    raise RemoteProtocolError(
                        f"frame of {size} bytes exceeds the {self._max_frame}-byte limit"
                    )
                body_start = pos + HEADER_SIZE
                if end - body_start < size:
                    break
                frames.append(bytes(buf[body_start : body_start + size]))
                pos = body_start + size
        except RemoteProtocolError as exc:
            self._error = exc
            buf.clear()
            raise
        if pos:
            del buf[:pos]
        return frames

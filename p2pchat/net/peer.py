"""A QUIC connection carrying one authenticated NaCl session and its chat frames.

Stream 0 (the client's first bidirectional stream) is the control stream: the
session handshake, then sealed chat frames.  The node above sees only
``session_established`` / ``frame_received`` / ``connection_closed``.
"""

from __future__ import annotations

import logging
from typing import Protocol

from p2pchat.core import chat
from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError
from p2pchat.core.session import (
    FrameRejected,
    HandshakeComplete,
    PayloadReceived,
    PeerKeyMismatch,
    SecureSession,
    SessionFailed,
)
from p2pchat.identity import Identity, format_address, peer_id_from_key
from p2pchat.net.endpoint import QuicLink

log = logging.getLogger(__name__)

CONTROL_STREAM = 0
HANDSHAKE_TIMEOUT = 10.0
# An authenticated peer must introduce itself (Hello) promptly, or it would hold a
# connection slot for free: keepalives stop QUIC's idle timeout from firing.
HELLO_TIMEOUT = 10.0
# A peer that keeps sending frames we cannot parse is closed after this many.
MAX_BAD_FRAMES = 16
# Frames written in one loop turn are sealed together in bundles of about this size:
# large enough that sealing, framing and opening cost next to nothing per message,
# small enough that the receiver starts on a burst before all of it arrived.
BUNDLE_BYTES = 16 * 1024


class PeerOwner(Protocol):
    def session_established(self, conn: PeerConnection) -> None: ...

    def frame_received(self, conn: PeerConnection, frame: chat.ChatFrame) -> None: ...

    def connection_closed(self, conn: PeerConnection, reason: str) -> None: ...

    def key_mismatch(self, conn: PeerConnection, seen_key: bytes) -> None: ...

    def stream_received(
        self, conn: PeerConnection, stream_id: int, data: bytes, end: bool
    ) -> None: ...


class PeerConnection:
    """Glue between one ``QuicLink`` and one sans-IO ``SecureSession``."""

    def __init__(
        self,
        link: QuicLink,
        identity: Identity,
        owner: PeerOwner,
        *,
        expected_peer: bytes | None = None,
    ) -> None:
        self.link = link
        self.owner = owner
        self.expected_peer = expected_peer
        self.session = SecureSession(
            initiator=link.is_client,
            our_key=identity.public_key,
            sign=identity.sign,
            expected_peer=expected_peer,
        )
        self.created_at = link.endpoint.now()
        self.established_at: float | None = None
        self.peer_key: bytes | None = None
        self.peer_id: str | None = None
        self.hello: chat.Hello | None = None
        self.held_as_request = False
        """The peer told us we are not its contact yet: hold our messages back."""
        self.closed = False
        self.bad_frames = 0
        self.path: str | None = None
        """"punched" when a hole punch opened the path; None: judge by the address."""
        self._pending: list[bytes] = []
        """Encoded frames of this loop turn, sealed when the link transmits."""
        self._pending_bytes = 0
        link.handler = self
        link.before_transmit = self._seal_pending
        self._deadline = link.endpoint.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    @property
    def initiator(self) -> bool:
        return self.link.is_client

    @property
    def established(self) -> bool:
        """The peer proved its key (the session handshake completed)."""
        return self.peer_key is not None

    @property
    def address(self) -> str:
        host, port = self.link.address[0], self.link.address[1]
        return format_address(str(host), int(port))

    # -- LinkHandler -------------------------------------------------------
    def link_handshake_done(self, link: QuicLink) -> None:
        if not link.is_client:
            return
        if self.expected_peer is not None and link.peer_cert_key != self.expected_peer:
            seen = link.peer_cert_key or b""
            self.owner.key_mismatch(self, seen)
            self.close("peer key mismatch")
            return
        self.session.initiate()
        self._flush()

    def link_stream_data(self, link: QuicLink, stream_id: int, data: bytes, end: bool) -> None:
        if stream_id != CONTROL_STREAM:
            # Data streams only after the session proved who is on the other end,
            # and only unidirectional ones the peer opened (file transfers).
            peer_initiated = (stream_id & 1) == (0 if not link.is_client else 1)
            if self.session.established and stream_id & 2 and peer_initiated:
                self.owner.stream_received(self, stream_id, data, end)
            return
        self.session.receive_data(data)
        self._drain()
        if end and not self.closed:
            self.close("peer closed the control stream")

    def link_terminated(self, link: QuicLink, reason: str) -> None:
        self._finish(reason)

    # -- session -----------------------------------------------------------
    def _drain(self) -> None:
        while not self.closed:
            event = self.session.next_event()
            if event is None:
                break
            if isinstance(event, HandshakeComplete):
                self._deadline.cancel()
                self._deadline = self.link.endpoint.loop.call_later(
                    HELLO_TIMEOUT, self._hello_timeout
                )
                self.peer_key = event.peer_key
                self.peer_id = peer_id_from_key(event.peer_key)
                self.link.authenticated()
                self.established_at = self.link.endpoint.now()
                self.owner.session_established(self)
            elif isinstance(event, PayloadReceived):
                self._payload(event.payload)
            elif isinstance(event, FrameRejected):
                log.warning("dropped a sealed frame from %s: %s", self.address, event.reason)
            elif isinstance(event, SessionFailed):
                if isinstance(event.error, PeerKeyMismatch):
                    self.owner.key_mismatch(self, event.error.seen)
                self.close(f"session failed: {event.error}")
        self._flush()

    def _payload(self, payload: bytes) -> None:
        for frame in chat.decode_frames(payload):
            if self.closed:
                return
            if not isinstance(frame, RemoteProtocolError):
                self._frame(frame)
            elif not isinstance(frame, chat.UnknownFrame):  # a newer peer's: ignored
                self.bad_frames += 1
                log.warning("bad chat frame from %s: %s", self.address, frame)
                if self.bad_frames >= MAX_BAD_FRAMES:
                    self.close("too many invalid frames")

    def _frame(self, frame: chat.ChatFrame) -> None:
        if isinstance(frame, chat.Hello):
            if self.hello is None:
                self._deadline.cancel()
            self.hello = frame
        elif self.hello is None:
            return  # nothing counts before the peer introduced itself
        if isinstance(frame, chat.RequestPending):
            self.held_as_request = True
        self.owner.frame_received(self, frame)

    def send(self, frame: chat.ChatFrame) -> bool:
        """Send one frame; False if the session cannot carry it now.

        To a peer that accepts bundles (its Hello), the frames written in one loop
        turn are sealed together, in bundles of up to ``BUNDLE_BYTES``, just before
        the link transmits at the end of the turn; otherwise each is sealed now."""
        if self.closed or not self.session.established:
            return False
        try:
            payload = chat.encode(frame)
        except LocalProtocolError:
            return False
        if len(payload) > self.session.max_plaintext:
            return False
        if self.hello is None or self.hello.version < chat.BUNDLE_VERSION:
            return self._seal([payload])
        if self._pending and (
            self._pending_bytes + len(payload) > BUNDLE_BYTES
            or len(self._pending) >= chat.MAX_BUNDLE_FRAMES
        ):
            self._seal_pending()
        self._pending.append(payload)
        self._pending_bytes += len(payload)
        self.link.request_transmit()
        return True

    def _seal_pending(self) -> None:
        if self._pending:
            pending, self._pending, self._pending_bytes = self._pending, [], 0
            self._seal(pending)

    def _seal(self, payloads: list[bytes]) -> bool:
        try:
            self.session.send(payloads[0] if len(payloads) == 1 else chat.bundle(payloads))
        except LocalProtocolError as exc:  # the session failed or its counter ran out
            log.warning("cannot seal for %s: %s", self.address, exc)
            return False
        self._flush()
        return True

    def open_uni_stream(self) -> int:
        return int(self.link.conn.get_next_available_stream_id(is_unidirectional=True))

    def send_stream(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self.link.send_stream(stream_id, data, end)

    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data:
            self.link.send_stream(CONTROL_STREAM, data)

    # -- lifetime ----------------------------------------------------------
    def _hello_timeout(self) -> None:
        if self.hello is None:
            self.close("no hello")

    def _handshake_timeout(self) -> None:
        if not self.session.established:
            self.close("session handshake timed out")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.link.close(reason)
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._deadline.cancel()
        self.owner.connection_closed(self, reason)

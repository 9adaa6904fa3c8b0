"""One UDP socket per node, carrying QUIC now and DHT / punch packets later.

Hole punching only works if QUIC uses the very NAT mapping that discovery
learned, so every protocol shares this socket and the endpoint demultiplexes:

1. A datagram whose destination connection ID belongs to a live QUIC
   connection goes to it (looked up first: ``d``, 0x64, the first byte of every
   KRPC packet, is also a valid QUIC short-header first byte).
2. An unknown CID on a long-header Initial of full size may open a server
   connection: ``admission.py`` decides (Retry under load, the Initial must
   decrypt, a small pool for handshakes not yet authenticated).
3. First byte ``d`` that is no known connection goes to the KRPC handler.
4. First byte 0x00-0x3F (neither QUIC v1, whose fixed bit is 0x40, nor KRPC)
   goes to the punch handler (0x30-0x3F to the relay handler), as RFC 9443 does
   for STUN.
5. Anything else is dropped.

aioquic's ``QuicConnection`` is sans-IO; this module is its asyncio shell in
place of ``aioquic.asyncio.connect``, which would open a socket of its own.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
from collections.abc import Callable
from typing import Any, Protocol, cast

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import QuicHeader, QuicPacketType, pull_quic_header

from p2pchat.identity import Identity
from p2pchat.net.admission import Accept, InitialGate, Reply
from p2pchat.net.quic import (
    ACCEPTER_KEEPALIVE,
    KEEPALIVE_CYCLE,
    KEEPALIVE_EARLY,
    KEEPALIVE_GRID,
    KEEPALIVE_INTERVAL,
    KEEPALIVE_RETRY,
    LIVENESS_TIMEOUT,
    configuration,
    peer_certificate_key,
    wall_offset,
)
from p2pchat.net.sendable import nothing_to_send
from p2pchat.net.sockopts import raise_buffers

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 512
# Datagrams read per readable event of the main socket (asyncio's reader takes one).
DRAIN_DATAGRAMS = 63
MAX_DATAGRAM_READ = 65535
CID_LENGTH = 8
#: The peer answers but acknowledges none of our control stream's data for this long:
#: something on the path (a relay) passes small datagrams and drops the rest.
STALL_TIMEOUT = 10.0
STALLED = "no progress"
#: A timer due this much or more before the liveness deadline that fires after it
#: was held up by our own loop (timers are normally a few ms late): the silence past
#: the deadline is ours.  A timer armed for the deadline itself never qualifies, so
#: a vanished peer is still given up on on time.
LATE_TOLERANCE = 0.1
#: Float slack when comparing a timer with the earliest a keepalive can be due.
_CLEARLY = 1e-3
#: How long the ACK of a lone packet may wait for data of ours to ride on.
ACK_DELAY = 0.02
#: ACK-only packets of ours aioquic keeps for a delivery report that may never come
#: (``QuicLink._forget_old_acks``).
KEEP_ACK_ONLY = 8

PacketHandler = Callable[[bytes, tuple[str, int]], None]
PunchHandler = Callable[[bytes, tuple[str, int], "AuxSocket | None"], None]


class EndpointError(Exception):
    """The endpoint could not start (for example: port in use)."""


class LinkHandler(Protocol):
    """What the owner of a QUIC connection hears from it."""

    def link_handshake_done(self, link: QuicLink) -> None: ...

    def link_stream_data(self, link: QuicLink, stream_id: int, data: bytes, end: bool) -> None: ...

    def link_terminated(self, link: QuicLink, reason: str) -> None: ...


class QuicLink:
    """One aioquic connection driven by the shared endpoint: timers, transmit, events."""

    def __init__(
        self,
        endpoint: Endpoint,
        conn: QuicConnection,
        address: NetworkAddress,
        *,
        is_client: bool,
        via: AuxSocket | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.conn = conn
        self.address = address
        self.is_client = is_client
        self.via = via
        """The extra socket this connection runs over (a birthday-punched path), or
        None for the node's main socket."""
        self.handler: LinkHandler | None = None
        self.peer_cert_key: bytes | None = None
        self.handshake_done = False
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        """aioquic's own timer (loss recovery, delayed ACK, ...), when it comes first."""
        self._timer_at: float | None = None
        self._handle_at = 0.0
        """When ``_timer`` fires: at or before ``_timer_at`` (see ``_arm_timer``)."""
        self._on_tick = False
        """The timer is a keepalive or liveness one, shared on ``endpoint.ticks``."""
        self._last_ping = endpoint.now()
        self._last_heard = endpoint.now()
        self._keepalive = KEEPALIVE_INTERVAL if is_client else ACCEPTER_KEEPALIVE
        self._grace_until = 0.0
        self._ping_uid = 0
        self._pending_stream: list[tuple[int, bytes, bool]] = []
        self._acked_offset = 0
        self._progress_at = endpoint.now()
        self.close_reason: str | None = None
        self._transmit_scheduled = False
        self._data_written = False
        """Stream data was written since the last transmit (see ``_ack_now``)."""
        self.before_transmit: Callable[[], None] | None = None
        """Called before each transmit: writes what its owner held back this turn."""
        self._in_before_transmit = False
        self._space: Any = None
        """aioquic's 1-RTT packet number space, once the handshake is done."""
        self._unacked = 0
        """Datagrams read since our last ACK left, while one is due (``_ack_policy``)."""
        self._pending_slot: str | None = None
        """The source IP whose admission slot this server link holds until its peer
        authenticates or it closes."""

    def authenticated(self) -> None:
        """The peer proved its key: leave the pool of unauthenticated handshakes."""
        self._release_slot()

    def _release_slot(self) -> None:
        if self._pending_slot is not None:
            self.endpoint.gate.released(self._pending_slot)
            self._pending_slot = None

    # -- input -------------------------------------------------------------
    def datagram_received(self, data: bytes, address: NetworkAddress) -> None:
        """What the datagram asks for leaves at the end of this loop turn (see
        ``_schedule_transmit``), together with what its frames made the node write:
        the ack of a group commit, which runs earlier in that same turn, and the
        answers to the other datagrams read in this wake-up.

        A datagram that asks for nothing now runs no transmit: the peer's message
        whose ACK waits for our reply (``_ack_policy``), the reply that carried the
        ACK of ours, the ACK of a keepalive.  A transmit would build a packet, find
        it empty and drop it (``sendable.py``); only the timer moves (to a delayed
        ACK, a loss timer, the next keepalive)."""
        now = self.endpoint.now()
        quiet = now - self._last_heard >= KEEPALIVE_RETRY
        self._last_heard = now
        self.conn.receive_datagram(data, address, now=now)
        self._ack_policy(now, after_silence=quiet)
        self._handle_events()
        if self._transmit_scheduled:
            return  # (it arms the timer)
        if self._data_written or not nothing_to_send(self.conn, now):
            self._schedule_transmit()
        else:
            self._arm_timer()

    def _on_timer(self) -> None:
        now = self.endpoint.now()
        late = now - self._timer_at if self._timer_at is not None else 0.0
        self._timer = None
        self._timer_at = None
        if self.handshake_done:
            deadline = self._last_heard + LIVENESS_TIMEOUT
            due = now - late
            if late > self._keepalive or due < deadline - LATE_TOLERANCE <= now:
                # Our own loop stalled (the timer fired a keepalive interval late, or
                # was due before the liveness deadline and fired past it): the
                # silence may be ours.  Ping, and give the answer a keepalive
                # interval before judging the peer.
                self._grace_until = now + self._keepalive
            # Liveness (docs/protocol.md): the side that heard nothing for a while
            # pings, and the answer (an ACK) is heard by the other side too.  The
            # dialling side pings after 1.5 s of silence (again a second later while
            # unanswered; aioquic also repeats a lost PING), the accepting side only
            # after 2.5 s (a backstop, should the dialler be an older version), so an
            # idle pair exchanges one ping and one ACK every 2 s (0.5 s grid), and a peer
            # that vanished (SIGKILL, cable) is given up on within LIVENESS_TIMEOUT
            # instead of QUIC's 20 s idle timeout.
            if now - self._last_heard >= LIVENESS_TIMEOUT and now >= self._grace_until:
                self.close(f"no answer for {LIVENESS_TIMEOUT:g} s")
                return
            if self._stalled(now):
                self.close(f"{STALLED} for {STALL_TIMEOUT:g} s")
                return
            if now >= self._keepalive_at():
                self._last_ping = now
                self._ping_uid += 1
                self.conn.send_ping(self._ping_uid)
        quic_timer = self.conn.get_timer()
        if quic_timer is not None and quic_timer <= now:
            self.conn.handle_timer(now)
        self._process()

    def ping_at(self) -> float:
        """When the next keepalive PING is due: after ``_keepalive`` of silence, and
        ``KEEPALIVE_RETRY`` after the last one (which then went unanswered)."""
        return max(self._last_heard + self._keepalive, self._last_ping + KEEPALIVE_RETRY)

    def _keepalive_at(self) -> float:
        """When the next keepalive PING leaves: ``ping_at`` rounded up to the shared
        ``KEEPALIVE_GRID``, or, for a ping after silence, up to ``KEEPALIVE_EARLY``
        sooner on a multiple of ``KEEPALIVE_CYCLE``, or failing that on the earliest
        grid point allowed.  So a connection that falls idle pings a little early
        for at most three cycles and from then on every ``KEEPALIVE_CYCLE``, in the
        same loop wake-up as the node's other idle connections: after a sleep, the
        first packet of a wake-up costs aioquic several times what the next ones do
        (docs/performance.md, "Idle cost").  The repeat of an unanswered ping is
        never early, and no ping is later than before, so the loss it survives
        before ``LIVENESS_TIMEOUT`` is the same.  Only the dialling side's pings: the
        accepting side's are a backstop (for a peer that does not ping), at their own
        interval."""
        # Grid and cycle count in wall-clock time (``Endpoint.wall_offset``), so that
        # the keepalives of nodes whose clocks are set right are in step with each
        # other too: their PINGs and ACKs then reach a node close together.
        offset = self.endpoint.wall_offset()
        due = self.ping_at() + offset
        at = math.ceil(due / KEEPALIVE_GRID) * KEEPALIVE_GRID
        if not self.is_client or self._last_ping > self._last_heard:
            return at - offset  # a backstop, or the repeat of an unanswered ping
        earliest = due - KEEPALIVE_EARLY
        cycle = math.ceil(earliest / KEEPALIVE_CYCLE) * KEEPALIVE_CYCLE
        if cycle <= at:
            return cycle - offset
        return math.ceil(earliest / KEEPALIVE_GRID) * KEEPALIVE_GRID - offset

    def _stalled(self, now: float) -> bool:
        """Data on the control stream (chat frames) has waited for an acknowledgement
        for ``STALL_TIMEOUT`` without any of it getting through, while the peer still
        answers pings: QUIC would retransmit for ever.  aioquic has no public view of
        a stream's acknowledged offset, hence the private attributes."""
        stream = self.conn._streams.get(0)
        sender = getattr(stream, "sender", None)
        acked = getattr(sender, "_buffer_start", None)
        stop = getattr(sender, "_buffer_stop", None)
        if not isinstance(acked, int) or not isinstance(stop, int):
            return False
        if stop <= acked or acked != self._acked_offset or now < self._grace_until:
            self._acked_offset = acked
            self._progress_at = now
            return False
        return now - self._progress_at >= STALL_TIMEOUT

    def _process(self) -> None:
        self._handle_events()
        self.transmit()

    def _handle_events(self) -> None:
        event = self.conn.next_event()
        while event is not None:
            self._handle_event(event)
            event = self.conn.next_event()

    def _handle_event(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.ConnectionIdIssued):
            self.endpoint._register_cid(event.connection_id, self)
        elif isinstance(event, events.ConnectionIdRetired):
            self.endpoint._unregister_cid(event.connection_id, self)
        elif isinstance(event, events.HandshakeCompleted):
            self.handshake_done = True
            self.peer_cert_key = peer_certificate_key(self.conn)
            if self.handler is not None:
                self.handler.link_handshake_done(self)
            for stream_id, data, end in self._pending_stream:
                self.send_stream(stream_id, data, end)
            self._pending_stream.clear()
        elif isinstance(event, events.StreamDataReceived):
            if self.handler is not None:
                self.handler.link_stream_data(self, event.stream_id, event.data, event.end_stream)
        elif isinstance(event, events.ConnectionTerminated):
            reason = event.reason_phrase or f"error {event.error_code}"
            self._terminate(reason)

    def _terminate(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._release_slot()
        self._disarm()
        self.endpoint._forget(self)
        if self.via is not None and self.via.link is self:
            self.via.close()
        if self.handler is not None:
            self.handler.link_terminated(self, reason)

    # -- output ------------------------------------------------------------
    def transmit(self) -> None:
        if self.closed:
            return
        # Whatever was scheduled for the end of the turn leaves now (a timer of ours
        # can fire in the same turn, before the scheduled transmit runs).
        self._transmit_scheduled = False
        if self.before_transmit is not None:
            self._in_before_transmit = True
            try:
                self.before_transmit()
            finally:
                self._in_before_transmit = False
        now = self.endpoint.now()
        if self._data_written:
            self._data_written = False
            self._ack_now(now)
        for data, addr in self.conn.datagrams_to_send(now=now):
            self.endpoint.sendto(data, addr, via=self.via)
        if self._unacked:
            space = self._ack_space()
            if space is None or space.ack_at is None:
                self._unacked = 0  # our ACK left
        self._forget_old_acks()
        self._arm_timer()

    def _arm_timer(self) -> None:
        """Arm the one timer of this link for the first of aioquic's timer (a delayed
        ACK, loss detection, ...) and the next keepalive or liveness deadline.

        Runs after every transmit and every datagram read, so it is kept cheap: the
        keepalive's grid is only worked out when aioquic's timer is not clearly
        sooner (a keepalive is never due before ``ping_at() - KEEPALIVE_EARLY``), and
        an asyncio timer armed sooner than the new time is left to fire and re-arm
        (``_on_handle``) instead of being cancelled and made again each time the
        loss timer moves on (every packet sent or acknowledged)."""
        if self.closed:
            return
        timer_at = self.conn.get_timer()
        on_tick = False
        if self.handshake_done:
            # On a shared grid and cycle: an idle node's connections ping in the
            # same loop wake-up, served by one asyncio timer (``Ticks``), instead
            # of one wake-up, timer and re-arm each.
            deadline = max(self._last_heard + LIVENESS_TIMEOUT, self._grace_until)
            earliest = min(self.ping_at() - KEEPALIVE_EARLY, deadline) - _CLEARLY
            if timer_at is None or timer_at >= earliest:
                ping_at = min(self._keepalive_at(), deadline)
                if timer_at is None or ping_at <= timer_at:
                    timer_at, on_tick = ping_at, True
        if timer_at == self._timer_at and on_tick == self._on_tick:
            return
        if (
            not on_tick
            and timer_at is not None
            and self._timer is not None
            and self._handle_at <= timer_at
        ):
            self._timer_at = timer_at  # the handle fires first and re-arms for it
            return
        self._disarm()
        self._timer_at = timer_at
        if on_tick:
            assert timer_at is not None
            self._on_tick = True
            self.endpoint.ticks.add(timer_at, self)
        elif timer_at is not None:
            self._timer = self.endpoint.loop.call_at(timer_at, self._on_handle)
            self._handle_at = timer_at
        # aioquic reports termination of a closing connection only through events
        # produced by handle_timer; nothing to do here.

    def _on_handle(self) -> None:
        """The asyncio timer fired: at ``_timer_at``, or sooner if that has moved later
        since it was armed (then it waits on)."""
        self._timer = None
        timer_at = self._timer_at
        if timer_at is not None and self._handle_at < timer_at and self.endpoint.now() < timer_at:
            self._timer = self.endpoint.loop.call_at(timer_at, self._on_handle)
            self._handle_at = timer_at
            return
        self._on_timer()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._on_tick:
            self._on_tick = False
            if self._timer_at is not None:
                self.endpoint.ticks.remove(self._timer_at, self)
        self._timer_at = None

    def _tick(self) -> None:
        """Called by ``Ticks`` at ``_timer_at`` (which ``_on_timer`` reads)."""
        self._on_tick = False
        self._on_timer()

    def send_stream(self, stream_id: int, data: bytes, end: bool = False) -> None:
        if self.closed:
            return
        if not self.handshake_done:
            self._pending_stream.append((stream_id, data, end))
            return
        self.conn.send_stream_data(stream_id, data, end)
        self._data_written = True
        if not self._in_before_transmit:  # (else the transmit under way sends it)
            self._schedule_transmit()

    def request_transmit(self) -> None:
        """The owner holds data back for this turn: transmit (and ask for it,
        ``before_transmit``) at the end of the turn."""
        self._schedule_transmit()

    # -- acknowledgements ---------------------------------------------------
    # aioquic sends the ACK of every packet 1 ms after it arrived, in a datagram of
    # its own when nothing else left meanwhile; in a conversation that is one
    # ACK-only datagram (and a timer wake-up on each side) per message and per
    # chat-level ack.  Here, as RFC 9000 section 13.2 describes: an ACK rides on the
    # next packet that carries our data, a lone packet is acknowledged within
    # ``ACK_DELAY`` (below the ``max_ack_delay`` aioquic announces, 25 ms, so the
    # peer never times out waiting for it), and a second ack-eliciting packet, or a
    # packet after a gap, is acknowledged at the end of the loop turn, so a bulk
    # sender (a file transfer) is clocked as before.  aioquic has no public API for
    # this, hence the private attributes; without them (another aioquic version)
    # ACKs keep aioquic's own timing.

    def _ack_space(self) -> Any:
        """aioquic's 1-RTT packet number space; the same object from the handshake's
        end on, so it is looked up once then (this runs several times a datagram)."""
        space = self._space
        if space is not None:
            return space
        spaces = getattr(self.conn, "_spaces", None)
        space = spaces.get(tls.Epoch.ONE_RTT) if isinstance(spaces, dict) else None
        if not hasattr(space, "ack_at"):
            return None
        if self.handshake_done:
            self._space = space
        return space

    def _ack_policy(self, now: float, *, after_silence: bool = False) -> None:
        """After a datagram was read: decide when its ACK is due.

        A packet that ends a silence (``KEEPALIVE_RETRY`` or more) is acknowledged at
        the end of this turn: on an idle connection it is the peer's keepalive PING,
        and no data of ours is coming for its ACK to ride on, so waiting would only
        cost a timer wake-up per keepalive; a chat frame after a silence is answered
        in this turn anyway (the ack of its group commit), and its ACK leaves with
        that."""
        space = self._ack_space()
        if space is None or space.ack_at is None:
            self._unacked = 0
            return
        self._unacked += 1
        if after_silence or self._unacked >= 2 or len(space.ack_queue) > 1:
            space.ack_at = now
        elif self._unacked == 1:
            space.ack_at = now + ACK_DELAY

    def _ack_now(self, now: float) -> None:
        """Data is about to leave: a pending ACK goes in its packet."""
        space = self._ack_space()
        if space is not None and space.ack_at is not None:
            space.ack_at = now

    def _forget_old_acks(self) -> None:
        """Bound what aioquic keeps of our ACK-only packets.

        aioquic keeps every packet it sent until the peer acknowledges it or it is
        declared lost, and both need a later packet of ours to be acknowledged.  A
        side that only answers (the accepting side of an idle connection answers each
        keepalive PING with an ACK-only packet, which the peer never acknowledges,
        RFC 9000 section 13.2.1) therefore kept one more packet, about 0.5 KiB, per
        keepalive for as long as the connection lasted: some 20 MiB a day per idle
        contact, or at whatever rate a peer pings us.  An ACK-only packet needs no
        delivery report (neither loss nor retransmission applies to it), so beyond
        the newest ``KEEP_ACK_ONLY`` the oldest are dropped, which is what declaring
        them lost would do.  Amortised constant: only a run of ACK-only packets at
        the front is looked at."""
        space = self._ack_space()
        sent = getattr(space, "sent_packets", None)
        if not isinstance(sent, dict) or len(sent) <= KEEP_ACK_ONLY:
            return
        while len(sent) > KEEP_ACK_ONLY:
            number, packet = next(iter(sent.items()))
            if packet.in_flight or packet.is_ack_eliciting:
                return
            del sent[number]

    def _schedule_transmit(self) -> None:
        """At the end of this loop turn, not now: frames written in one turn (a burst
        of messages, the acks of a batch) then share full-size packets instead of
        leaving one datagram each, and the datagrams read in one wake-up are
        answered together."""
        if not self._transmit_scheduled:
            self._transmit_scheduled = True
            self.endpoint.loop.call_soon(self._scheduled_transmit)

    def _scheduled_transmit(self) -> None:
        if self._transmit_scheduled:  # (else a transmit since then sent it)
            self.transmit()

    def close(self, reason: str = "", error_code: int = 0) -> None:
        if self.closed:
            return
        if self._transmit_scheduled:
            self.transmit()  # what was written this turn leaves before the close
        self.conn.close(error_code=error_code, reason_phrase=reason)
        self.transmit()
        # Our side is done with it now; aioquic keeps the draining state on its own.
        self._terminate(reason or "closed")


class Endpoint(asyncio.DatagramProtocol):
    """The node's single UDP socket and its connection table."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.loop = asyncio.get_running_loop()
        self._server_config: QuicConfiguration = configuration(identity, is_client=False)
        self._client_config: QuicConfiguration = configuration(identity, is_client=True)
        self._cids: dict[bytes, QuicLink] = {}
        self._links: set[QuicLink] = set()
        self._transport: asyncio.DatagramTransport | None = None
        self.on_incoming: Callable[[QuicLink], None] | None = None
        self.krpc_handler: PacketHandler | None = None
        self.punch_handler: PunchHandler | None = None
        self.relay_handler: PunchHandler | None = None
        self._aux: set[AuxSocket] = set()
        self.local_address: tuple[str, int] | None = None
        self.dropped_datagrams = 0
        self.gate = InitialGate()
        self.known_source: Callable[[str], bool] | None = None
        """Whether an IP belongs to a known contact (it may use the gate's reserve)."""
        self.after_datagrams: Callable[[], None] | None = None
        """Called once the datagrams queued on the socket were read this turn: what
        they brought can be applied now, in this turn, rather than in the next."""
        self.socket_buffers: tuple[int, int] | None = None
        self._drain: socket.socket | None = None
        self._released = asyncio.Event()
        self.ticks = Ticks(self.loop)

    def now(self) -> float:
        return self.loop.time()

    def wall_offset(self) -> float:
        """Wall-clock time minus loop time (``quic.wall_offset``): keepalives fall
        due on whole multiples of the grid in wall-clock time
        (``QuicLink._keepalive_at``).  Read each time, so a clock that is set or
        slewed moves the schedule with it."""
        return wall_offset(self.loop.time())

    async def start(self, host: str, port: int) -> tuple[str, int]:
        try:
            transport, _ = await self.loop.create_datagram_endpoint(
                lambda: self, local_addr=(host, port)
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EndpointError(f"UDP port {host}:{port} is already in use") from exc
            raise EndpointError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        self._transport = transport
        sockname = self._transport.get_extra_info("sockname")
        self.local_address = (str(sockname[0]), int(sockname[1]))
        main = self._transport.get_extra_info("socket")
        self.socket_buffers = raise_buffers(main)
        self._drain = main.dup()  # the same socket: see ``datagram_received``
        self._drain.setblocking(False)
        return self.local_address

    def close(self) -> None:
        for link in list(self._links):
            link.close("node stopping")
        for aux in list(self._aux):
            aux.close()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._drain is not None:
            self._drain.close()  # a second descriptor only: the socket stays open
            self._drain = None

    @property
    def links(self) -> frozenset[QuicLink]:
        return frozenset(self._links)

    async def wait_closed(self) -> None:
        """Until the socket is really closed: ``close`` only schedules that (after any
        queued datagrams), and a node restarted at once would find its port taken."""
        await self._released.wait()

    # -- DatagramProtocol --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._released.set()

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable on an unconnected UDP socket: nothing to do, QUIC's
        # loss recovery and idle timeout take care of the affected connection.
        log.debug("UDP error: %s", exc)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        """asyncio reads one datagram per loop turn; whatever else is already queued
        on the socket is read now too (up to ``DRAIN_DATAGRAMS``), so the chat frames
        of a burst are applied in one group commit and answered with one ack
        (``delivery.py``), instead of one commit and one ack per datagram; then
        ``after_datagrams`` applies them, still in this turn."""
        self._receive(data, addr, None)
        for _ in range(DRAIN_DATAGRAMS):
            if self._drain is None:
                break  # closed by what the datagram did
            try:
                data, addr = self._drain.recvfrom(MAX_DATAGRAM_READ)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # as asyncio's own reader does
                self.error_received(exc)
                break
            self._receive(data, addr, None)
        if self.after_datagrams is not None:
            try:
                self.after_datagrams()
            except Exception:  # as for a datagram: never take the node down
                log.exception("applying what the datagrams brought failed")

    def _receive(self, data: bytes, addr: tuple[str | int, ...], via: AuxSocket | None) -> None:
        address = (str(addr[0]), int(addr[1]))
        try:
            self._dispatch(data, address, via)
        except Exception:  # a hostile datagram must never take the node down
            self.dropped_datagrams += 1
            log.exception("dropped a datagram from %s", address)

    def _dispatch(self, data: bytes, address: tuple[str, int], via: AuxSocket | None) -> None:
        if not data:
            return
        first = data[0]
        if first < 0x40:
            handler = self.relay_handler if first >= 0x30 else self.punch_handler
            if handler is not None:
                handler(data, address, via)
            return
        if not first & 0x80:
            # A short header (most datagrams of a live connection): its destination
            # connection ID is the next CID_LENGTH bytes, no need to parse it whole.
            link = self._cids.get(data[1 : 1 + CID_LENGTH])
            if link is not None:
                self._to_link(link, data, address, via)
                return
        buf = Buffer(data=data)
        try:
            header = pull_quic_header(buf, host_cid_length=CID_LENGTH)
        except ValueError:
            header = None
        if header is not None:
            link = self._cids.get(header.destination_cid)
            if link is not None:
                self._to_link(link, data, address, via)
                return
            if (
                header.packet_type == QuicPacketType.INITIAL
                and len(data) >= SMALLEST_MAX_DATAGRAM_SIZE
                and header.version in self._server_config.supported_versions
            ):
                if via is not None and via.link is not None:
                    self.dropped_datagrams += 1  # that socket already carries its connection
                    return
                self._admit(header, buf.tell(), data, address, via)
                return
        if first == 0x64 and via is None and self.krpc_handler is not None:
            self.krpc_handler(data, address)
            return
        self.dropped_datagrams += 1

    def _to_link(
        self, link: QuicLink, data: bytes, address: tuple[str, int], via: AuxSocket | None
    ) -> None:
        if link.via is via:
            link.datagram_received(data, address)
        else:
            self.dropped_datagrams += 1  # a connection lives on one socket

    def _admit(
        self,
        header: QuicHeader,
        encrypted_offset: int,
        data: bytes,
        address: tuple[str, int],
        via: AuxSocket | None,
    ) -> None:
        if len(self._links) >= MAX_CONNECTIONS or self.on_incoming is None:
            self.dropped_datagrams += 1
            return
        known = self.known_source is not None and self.known_source(address[0])
        decision = self.gate.decide(
            data, header, encrypted_offset, address, self.now(), known_source=known
        )
        if isinstance(decision, Reply):
            self.sendto(decision.packet, address, via=via)
            return
        if not isinstance(decision, Accept):
            self.dropped_datagrams += 1
            return
        conn = QuicConnection(
            configuration=self._server_config,
            original_destination_connection_id=decision.original_destination_cid,
            retry_source_connection_id=decision.retry_source_cid,
        )
        link = QuicLink(self, conn, address, is_client=False, via=via)
        if via is not None:
            via.link = link
        self.gate.opened(address[0])
        link._pending_slot = address[0]
        self._links.add(link)
        self._register_cid(header.destination_cid, link)
        self._register_cid(conn.host_cid, link)
        self.on_incoming(link)
        link.datagram_received(data, address)

    def connect(self, address: tuple[str, int], *, via: AuxSocket | None = None) -> QuicLink:
        """Dial ``address`` from the shared socket (or from ``via``, an extra socket a
        punch found a path on); the handshake runs in the background."""
        conn = QuicConnection(configuration=self._client_config)
        link = QuicLink(self, conn, address, is_client=True, via=via)
        if via is not None:
            via.link = link
        self._links.add(link)
        self._register_cid(conn.host_cid, link)
        conn.connect(address, now=self.now())
        link.transmit()
        return link

    def sendto(self, data: bytes, address: NetworkAddress, *, via: AuxSocket | None = None) -> None:
        if via is not None:
            via.sendto(data, address)
        elif self._transport is not None:
            self._transport.sendto(data, address)

    # -- extra sockets (birthday punching) --------------------------------
    async def open_aux_sockets(self, count: int) -> list[AuxSocket]:
        """``count`` extra UDP sockets on the main socket's address with fresh ports.

        Only hole punching through an endpoint-dependent NAT needs them: each socket
        gets its own mapping, so the peer's probes to random ports can meet one
        (``core/punch.py``).  The socket a path is found on carries that one QUIC
        connection and closes with it; the others are closed by their owner.
        """
        assert self.local_address is not None
        host = self.local_address[0]
        out: list[AuxSocket] = []
        try:
            for _ in range(count):
                aux = AuxSocket(self)
                await self.loop.create_datagram_endpoint(lambda a=aux: a, local_addr=(host, 0))  # type: ignore[misc]
                self._aux.add(aux)
                out.append(aux)
        except OSError as exc:  # out of descriptors or ports: punch with what we have
            log.info("opened %d of %d extra sockets: %s", len(out), count, exc)
        return out

    @property
    def aux_sockets(self) -> int:
        return len(self._aux)

    # -- connection table --------------------------------------------------
    def _register_cid(self, cid: bytes, link: QuicLink) -> None:
        self._cids[cid] = link

    def _unregister_cid(self, cid: bytes, link: QuicLink) -> None:
        if self._cids.get(cid) is link:
            del self._cids[cid]

    def _forget(self, link: QuicLink) -> None:
        self._links.discard(link)
        for cid in [cid for cid, owner in self._cids.items() if owner is link]:
            del self._cids[cid]


class Ticks:
    """Timers of links due at the same loop time share one asyncio timer.

    Keepalives are due on a grid (``KEEPALIVE_GRID``), so an idle node's connections
    fall due together; each connection re-arms its timer on every packet it sends or
    hears.  One asyncio ``TimerHandle`` per connection meant a handle allocated and
    one cancelled, and a push onto asyncio's timer heap (ordered by a Python
    ``__lt__``), per keepalive on each side; here a re-arm moves the link between
    two dictionaries, and asyncio sees one timer per distinct time.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._due: dict[float, dict[QuicLink, None]] = {}
        self._handles: dict[float, asyncio.TimerHandle] = {}

    def add(self, at: float, link: QuicLink) -> None:
        links = self._due.get(at)
        if links is None:
            links = self._due[at] = {}
            self._handles[at] = self.loop.call_at(at, self._fire, at)
        links[link] = None

    def remove(self, at: float, link: QuicLink) -> None:
        links = self._due.get(at)
        if links is None:
            return
        links.pop(link, None)
        if not links:
            del self._due[at]
            self._handles.pop(at).cancel()

    def __len__(self) -> int:
        """Distinct times armed (asyncio timers in use)."""
        return len(self._handles)

    def _fire(self, at: float) -> None:
        self._handles.pop(at, None)
        for link in self._due.pop(at, {}):
            try:
                link._tick()
            except Exception:  # as asyncio does for a timer of its own: log, go on
                log.exception("timer of the connection to %s failed", link.address)


class AuxSocket(asyncio.DatagramProtocol):
    """An extra UDP socket of the endpoint: demultiplexed like the main one, except
    that KRPC stays on the main socket and at most one QUIC connection runs here."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.DatagramTransport | None = None
        self.link: QuicLink | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not self.closed:
            self.endpoint._receive(data, addr, self)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error on an extra socket: %s", exc)

    def sendto(self, data: bytes, address: NetworkAddress) -> None:
        if self.transport is not None and not self.closed:
            self.transport.sendto(data, address)

    @property
    def port(self) -> int | None:
        if self.transport is None:
            return None
        return int(self.transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        """Closed by its punch when unused, or with the connection it carries."""
        if self.closed:
            return
        self.closed = True
        self.endpoint._aux.discard(self)
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self.link is not None and not self.link.closed:
            self.link.close("socket closed")

"""Whether aioquic has anything to send now, without building a packet to find out.

The endpoint runs a transmit after every datagram it reads (``QuicLink``).  In a
conversation most of those find nothing: the datagram was the peer's message, whose
ACK waits for our reply to ride on (docs/protocol.md, "Delayed acks"), or the reply
that carried the ACK of ours.  aioquic finds that out by starting a packet, running
through every kind of frame it could write, and dropping the empty packet: some
40 µs, a tenth of a round trip (docs/performance.md).  ``nothing_to_send`` answers
the same question by reading the state those frame writers read, in a few µs.

It must never say "nothing" when aioquic would send something (an ACK that is due,
a retransmission, a flow-control credit, a close), or the peer would wait for it
until our next timer.  So it reads the conditions of ``datagrams_to_send`` in the
aioquic versions listed in ``VERIFIED``, answers False (transmit, as before) for any
state it does not know, and is off altogether for other versions: a new aioquic may
write a frame this module does not know of.  tests/test_transmit.py checks it against
``datagrams_to_send`` itself on chat, bulk, lossy and closing connections.  aioquic
has no public API for this, hence the private attributes.
"""

from __future__ import annotations

from typing import Any

import aioquic
from aioquic import tls
from aioquic.quic.connection import QuicConnection, QuicConnectionState

#: aioquic versions whose ``datagrams_to_send`` (``_write_application``,
#: ``_write_connection_limits``, ``_write_stream_limits``) this module was checked
#: against, line by line.
VERIFIED = frozenset({"1.7.2"})
ENABLED = aioquic.__version__ in VERIFIED


def nothing_to_send(conn: QuicConnection, now: float) -> bool:
    """True only if ``conn.datagrams_to_send(now)`` would return no datagram: the
    handshake is confirmed, no ACK is due by ``now`` (a delayed one is the timer's:
    ``get_timer``), and no frame of any kind waits.  False when unsure."""
    if not ENABLED:
        return False
    try:
        return _nothing_to_send(conn, now)
    except (AttributeError, KeyError, TypeError):  # not the aioquic this was written for
        return False


def _nothing_to_send(conn: Any, now: float) -> bool:
    if (
        conn._state is not QuicConnectionState.CONNECTED
        or not conn._handshake_confirmed
        or conn._close_pending
        or conn._probe_pending
        or conn._ping_pending
        or conn._handshake_done_pending
        or conn._retire_connection_ids
        or conn._streams_blocked_pending
        or conn._datagrams_pending
        or (conn._is_client and conn._remote_preferred_address is not None)
    ):
        return False
    for space in conn._loss.spaces:
        if space.ack_at is not None and space.ack_at <= now:
            return False  # an ACK is due
    paths = conn._network_paths
    if len(paths) != 1 or not paths[0].is_validated or paths[0].remote_challenges:
        return False  # path validation (a challenge to send or to answer), probing
    for cid in conn._host_cids:
        if not cid.was_sent:
            return False  # NEW_CONNECTION_ID
    # MAX_DATA, raised once half of it is used; MAX_STREAMS, batched as aioquic does.
    max_data = conn._local_max_data
    if max_data.used * 2 > max_data.value or max_data.value != max_data.sent:
        return False
    for limit in (conn._local_max_streams_bidi, conn._local_max_streams_uni):
        if limit.value != limit.sent and limit.sent - limit.used < limit.value - limit.sent:
            return False
    for stream in conn._streams.values():  # MAX_STREAM_DATA, raised at half
        local = stream.max_stream_data_local
        if local and (
            stream.receiver.highest_offset * 2 > local or stream.max_stream_data_local_sent != local
        ):
            return False
    if not conn._crypto_streams[tls.Epoch.ONE_RTT].sender.buffer_is_empty:
        return False  # a session ticket
    for stream in conn._streams_queue:
        if (
            stream.is_finished  # to discard, which may raise MAX_STREAMS
            or stream.receiver.stop_pending
            or stream.sender.reset_pending
            or not (stream.is_blocked or stream.sender.buffer_is_empty)  # data, or lost data
        ):
            return False
    return True

"""Keepalives: what keeps an idle connection up, and what it costs.

Two endpoints over real QUIC on 127.0.0.1.  The dialling side pings after
``KEEPALIVE_INTERVAL`` of silence and repeats an unanswered ping after
``KEEPALIVE_RETRY``; the accepting side pings only after ``ACCEPTER_KEEPALIVE`` (a
backstop); either side gives up after ``LIVENESS_TIMEOUT`` of silence, which alone
sets the presence bound (docs/protocol.md, "Liveness").
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from p2pchat.identity import Identity
from p2pchat.net.endpoint import KEEP_ACK_ONLY, Endpoint, QuicLink
from p2pchat.net.quic import (
    ACCEPTER_KEEPALIVE,
    KEEPALIVE_CYCLE,
    KEEPALIVE_EARLY,
    KEEPALIVE_GRID,
    KEEPALIVE_INTERVAL,
    KEEPALIVE_RETRY,
    LIVENESS_TIMEOUT,
    TICK,
    next_tick,
    wall_offset,
)

from .conftest import wait_until


async def _pair() -> tuple[Endpoint, Endpoint, QuicLink, QuicLink]:
    dialler, accepter = Endpoint(Identity.generate()), Endpoint(Identity.generate())
    await dialler.start("127.0.0.1", 0)
    address = await accepter.start("127.0.0.1", 0)
    accepted: list[QuicLink] = []
    accepter.on_incoming = accepted.append
    link = dialler.connect(address)
    await wait_until(lambda: link.handshake_done and bool(accepted), timeout=20)
    await wait_until(lambda: accepted[0].handshake_done, timeout=20)
    return dialler, accepter, link, accepted[0]


async def test_the_ping_schedule_of_each_side() -> None:
    dialler, accepter, link, server = await _pair()
    try:
        link._last_heard = link._last_ping = 100.0
        assert link.ping_at() == 100.0 + KEEPALIVE_INTERVAL
        link._last_ping = link.ping_at()  # pinged; no answer yet
        assert link.ping_at() == 100.0 + KEEPALIVE_INTERVAL + KEEPALIVE_RETRY
        link._last_heard = link._last_ping + 0.02  # the ACK came
        assert link.ping_at() == link._last_heard + KEEPALIVE_INTERVAL
        server._last_heard = server._last_ping = 100.0
        assert server.ping_at() == 100.0 + ACCEPTER_KEEPALIVE
        # A dialler's unanswered ping is repeated before liveness gives up.
        assert KEEPALIVE_INTERVAL + KEEPALIVE_RETRY < LIVENESS_TIMEOUT
        assert ACCEPTER_KEEPALIVE < LIVENESS_TIMEOUT
    finally:
        dialler.close()
        accepter.close()


async def test_idle_connections_fall_into_step() -> None:
    """Whatever its phase, an idle connection's keepalives move onto the shared cycle
    (whole multiples of ``KEEPALIVE_CYCLE`` of wall-clock time, so nodes whose clocks
    are right ping in step too) within three pings, none of them later than the ping
    schedule and none more than ``KEEPALIVE_EARLY`` sooner, and then stay on it; the
    repeat of an unanswered ping is never early, nor is the accepting side's
    backstop."""
    dialler, accepter, link, server = await _pair()

    def on_grid(due: float, offset: float) -> float:
        return math.ceil((due + offset) / KEEPALIVE_GRID) * KEEPALIVE_GRID - offset

    def on_cycle(at: float, offset: float) -> bool:
        turns = (at + offset) / KEEPALIVE_CYCLE
        return abs(turns - round(turns)) < 1e-9

    try:
        for offset in (0.0, 0.37, 1234.01):  # wall-clock time minus loop time
            dialler.wall_offset = accepter.wall_offset = lambda o=offset: o  # type: ignore[method-assign]
            for phase in (0.0, 0.5, 1.0, 1.5, 0.25, 1.75):
                sent = 100.0 + phase
                for _ in range(3):
                    link._last_ping, link._last_heard = sent, sent + 0.003  # the ACK
                    due = link.ping_at()
                    sent = link._keepalive_at()
                    assert due - KEEPALIVE_EARLY - 1e-9 <= sent <= on_grid(due, offset) + 1e-9
                assert on_cycle(sent, offset), (offset, phase)
                link._last_ping, link._last_heard = sent, sent + 0.003
                assert math.isclose(link._keepalive_at(), sent + KEEPALIVE_CYCLE)  # in step
            link._last_heard, link._last_ping = 100.0, 101.6  # pinged, unanswered
            assert link._keepalive_at() == on_grid(link.ping_at(), offset)
            server._last_ping, server._last_heard = 100.0, 100.003
            assert server._keepalive_at() == on_grid(server.ping_at(), offset)
    finally:
        dialler.close()
        accepter.close()


async def test_an_idle_connection_stays_up_on_the_dialler_pings() -> None:
    """Past the liveness timeout with nothing to say, both sides are still connected:
    the dialler's pings (and their ACKs) were the traffic, one ping per interval."""
    dialler, accepter, link, server = await _pair()
    try:
        idle = LIVENESS_TIMEOUT + 0.5
        await asyncio.sleep(idle)
        assert not link.closed and not server.closed, (link.close_reason, server.close_reason)
        assert 1 <= link._ping_uid <= int(idle / KEEPALIVE_INTERVAL) + 1
    finally:
        dialler.close()
        accepter.close()


async def test_an_idle_connection_builds_no_empty_packets() -> None:
    """A keepalive exchange is one PING and one ACK, and neither side runs a transmit
    that finds nothing to send (the dialler reading the ACK of its PING used to);
    the next keepalive waits on the endpoint's shared timers.  Data written after
    the idle stretch still leaves at once."""
    dialler, accepter, link, server = await _pair()
    empty = {"dialler": 0, "accepter": 0}
    for name, each in (("dialler", link), ("accepter", server)):
        original = each.conn.datagrams_to_send

        def counting(now: float, name: str = name, original: Any = original) -> Any:
            out = original(now=now)
            empty[name] += not out
            return out

        each.conn.datagrams_to_send = counting  # type: ignore[method-assign]
    received: list[bytes] = []

    class Sink:
        def link_handshake_done(self, link: QuicLink) -> None:
            pass

        def link_stream_data(self, link: QuicLink, stream_id: int, data: bytes, end: bool) -> None:
            received.append(data)

        def link_terminated(self, link: QuicLink, reason: str) -> None:
            pass

    server.handler = Sink()
    try:
        await wait_until(lambda: link._ping_uid >= 1, timeout=10)
        await asyncio.sleep(0.2)  # its ACK came back
        empty.update(dialler=0, accepter=0)
        first = link._ping_uid
        await wait_until(lambda: link._ping_uid >= first + 2, timeout=10)
        await asyncio.sleep(0.2)
        assert empty == {"dialler": 0, "accepter": 0}
        assert not link.closed and not server.closed
        assert link._on_tick and server._on_tick
        assert len(dialler.ticks) == 1 and len(accepter.ticks) == 1
        link.send_stream(0, b"after the silence")
        await wait_until(lambda: b"".join(received) == b"after the silence", timeout=5)
    finally:
        dialler.close()
        accepter.close()


async def test_the_answers_to_pings_are_not_kept_for_ever() -> None:
    """The accepting side answers each PING with an ACK-only packet, which the peer
    never acknowledges; aioquic kept every one of them (about 0.5 KiB each) for the
    life of the connection, at the rate the peer pinged.  Now at most
    ``KEEP_ACK_ONLY`` are kept, and the connection carries data as before."""
    dialler, accepter, link, server = await _pair()
    try:
        space = server._ack_space()
        for uid in range(1000, 1000 + 3 * KEEP_ACK_ONLY):
            link.conn.send_ping(uid)
            link.transmit()
            heard = server._last_heard
            await wait_until(lambda heard=heard: server._last_heard > heard, timeout=5)
            await asyncio.sleep(0.005)
        assert server._ping_uid == 0  # the accepter only answered
        assert len(space.sent_packets) <= KEEP_ACK_ONLY + 1
        assert not link.closed and not server.closed
    finally:
        dialler.close()
        accepter.close()


def test_periodic_work_falls_on_whole_seconds_of_wall_clock_time() -> None:
    """The dial loop and the punch and relay upkeep wake on whole seconds of wall-clock
    time (so in the same wake-up as the keepalives, every other second), within a
    second of now."""
    for now in (0.0, 12.3, 1000.999, 86400.5):
        tick = next_tick(now)
        assert now < tick <= now + TICK
        turns = (tick + wall_offset(now)) / TICK
        # (the offset is read again, to 10 ms: it may have crossed a rounding step)
        assert abs(turns - round(turns)) <= 0.011

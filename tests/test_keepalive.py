"""Keepalives: what keeps an idle connection up, and what it costs.

Two endpoints over real QUIC on 127.0.0.1.  The dialling side pings after
``KEEPALIVE_INTERVAL`` of silence and repeats an unanswered ping after
``KEEPALIVE_RETRY``; the accepting side pings only after ``ACCEPTER_KEEPALIVE`` (a
backstop); either side gives up after ``LIVENESS_TIMEOUT`` of silence, which alone
sets the presence bound (docs/protocol.md, "Liveness").
"""

from __future__ import annotations

import asyncio

from p2pchat.identity import Identity
from p2pchat.net.endpoint import Endpoint, QuicLink
from p2pchat.net.quic import (
    ACCEPTER_KEEPALIVE,
    KEEPALIVE_INTERVAL,
    KEEPALIVE_RETRY,
    LIVENESS_TIMEOUT,
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

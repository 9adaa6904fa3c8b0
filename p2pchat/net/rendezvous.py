"""Finding rendezvous nodes through the DHT.

A node behind a NAT registers with one or two reachable p2pchat nodes
(``net/punch.py``).  It tries, best first: the nodes the user configured
(``--rendezvous``), the DHT bootstrap nodes the user named, contacts it reached at a
public address, and, when those are not enough, public relays found on the DHT.

Relays (``--relay``) with a public address announce themselves under
:data:`RENDEZVOUS_INFO_HASH` (BEP 5 ``announce_peer``); a node short of rendezvous
nodes asks for that info-hash (``get_peers``).  What comes back are addresses only:
the first challenge pins the node's key (``core/rendezvous.py``), and a node that is
not a p2pchat relay simply never answers a registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Final

from p2pchat.core.punch import NAT_NONE
from p2pchat.net.dht import DhtError, DhtService
from p2pchat.net.punch import MAX_REGISTRATIONS, PunchService, RendezvousNode

__all__ = ["RENDEZVOUS_INFO_HASH", "RendezvousFinder"]

log = logging.getLogger(__name__)

RENDEZVOUS_INFO_HASH: Final = hashlib.sha1(b"p2pchat/1 rendezvous").digest()
#: Announced peers expire after 30 minutes on most DHT nodes.
ANNOUNCE_INTERVAL: Final = 25 * 60.0
LOOKUP_INTERVAL: Final = 300.0
CHECK_INTERVAL: Final = 30.0
MAX_FOUND: Final = 8


class RendezvousFinder:
    """Announces a public relay; finds relays for a node that has too few rendezvous."""

    def __init__(self, dht: DhtService, punch: PunchService, *, relay: bool) -> None:
        self.dht = dht
        self.punch = punch
        self.relay = relay
        self.found: list[RendezvousNode] = []
        self.wanted = False
        """Set by the node when its other candidates are fewer than two."""
        self.announced_at: float | None = None
        self._next_announce = 0.0
        self._next_lookup = 0.0
        self._loop = asyncio.get_running_loop()

    async def run(self) -> None:
        await self.dht.wait_ready(60.0)
        while True:
            now = self._loop.time()
            try:
                if self.relay and self.punch.nat_kind() == NAT_NONE and now >= self._next_announce:
                    done = await self.dht.announce(RENDEZVOUS_INFO_HASH)
                    self._next_announce = now + (ANNOUNCE_INTERVAL if done.stored else 60.0)
                    if done.stored:
                        self.announced_at = now
                short = len(self.punch.registrations()) < MAX_REGISTRATIONS
                if self.wanted and short and now >= self._next_lookup:
                    self._next_lookup = now + LOOKUP_INTERVAL
                    peers = await self.dht.get_peers(RENDEZVOUS_INFO_HASH)
                    self.found = [RendezvousNode(addr, None, "dht") for addr in peers[:MAX_FOUND]]
                    log.info("found %d public relays on the DHT", len(self.found))
            except DhtError as exc:
                log.info("rendezvous discovery: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.sleep(CHECK_INTERVAL)

"""How the node reaches a contact: every known way at once, the first session wins.

For a contact without a session the :class:`Dialer` runs *attempts*.  One attempt
races every candidate it has, the way magic-wormhole's transit races its hints:

* direct QUIC dials to each known address (addresses on one of our own subnets first,
  then the rest, 100 ms apart: a reachable address answers within one round trip and
  the others cost one Initial each);
* a hole punch through the contact's rendezvous nodes (``net/punch.py``), started at
  once when the contact sits behind a NAT (or we do not know), after a second when its
  record says it has a public address (a direct dial will most likely win);
* every path a punch finds starts one more QUIC dial, on that path.

* a channel through one of the contact's rendezvous nodes, as a relay
  (``net/relay.py``), after :data:`RELAY_DELAY` (as magic-wormhole's transit delays
  its relay hints), at once when both sides sit behind endpoint-dependent NATs or the
  punch failed early.

The first connection whose session is established wins: the node tells us
(:meth:`Dialer.established`), the punch is cancelled and the other dials of the attempt
are closed.  An attempt that ends without a session is followed by another after a
back-off (1 s doubling to 30 s, with jitter).  A relayed session is a win that keeps
trying: the punch and the direct dials of its attempt go on, and while the session
stays relayed the node asks for an *upgrade* attempt (direct and punched candidates
only) every :data:`UPGRADE_EVERY` seconds; a direct session that comes up replaces
the relayed one (``Node._prefer``), and the outbox and the receive window make the
move lose and duplicate nothing.

The node stays the owner of every connection (``PeerConnection`` reports to it); the
dialer only decides where and when to dial, and keeps the bookkeeping of attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from p2pchat.core.punch import NAT_ED, NAT_NONE, Addr
from p2pchat.identity import format_address, key_from_peer_id
from p2pchat.net.endpoint import AuxSocket
from p2pchat.net.punch import PunchFailed, PunchService
from p2pchat.net.relay import RelayFailed, RelayService

__all__ = ["Dialer", "Route"]

log = logging.getLogger(__name__)

STAGGER: Final = 0.1
MAX_DIRECT: Final = 8
MAX_PUNCHED: Final = 3
#: An attempt that produced no session by then is over (the punch plan lasts ~12 s).
ATTEMPT_TIMEOUT: Final = 16.0
MAX_BACKOFF: Final = 30.0
#: With a public address in the record, give the direct dials this head start.
PUNCH_AFTER_PUBLIC: Final = 1.0
#: Relayed candidates join the race this long after the others (magic-wormhole's
#: transit waits as long before its relay hints): a direct or punched path usually
#: wins within a second or two, and costs nobody's bandwidth.
RELAY_DELAY: Final = 2.0
RELAY_DELAY_BIRTHDAY: Final = 4.0
#: While a contact's session is relayed, try to get a direct one this often.
UPGRADE_EVERY: Final = 10.0


class Connection(Protocol):
    """What the dialer needs of a connection (``net/peer.PeerConnection``)."""

    closed: bool
    path: str | None

    @property
    def established(self) -> bool: ...

    def close(self, reason: str) -> None: ...


Opener = Callable[[str, Addr, AuxSocket | None, str], Connection]
"""``open(peer_id, address, via, path)``: dial now, return the connection."""


@dataclass(frozen=True, slots=True)
class Route:
    """What we know about reaching one contact right now."""

    addresses: tuple[Addr, ...] = ()
    rendezvous: tuple[Addr, ...] = ()
    nat: str = "unknown"


@dataclass(eq=False, slots=True)
class _Attempt:
    started: float
    conns: list[Connection] = field(default_factory=list)
    handles: list[asyncio.TimerHandle] = field(default_factory=list)
    punch: asyncio.Task[None] | None = None
    punched: int = 0
    relay: asyncio.Task[None] | None = None
    upgrade: bool = False
    """Only direct and punched candidates: the contact's session is relayed."""


@dataclass(slots=True)
class _Peer:
    failures: int = 0
    next_at: float = 0.0
    attempt: _Attempt | None = None


class Dialer:
    """Attempts per contact: see the module docstring."""

    def __init__(
        self,
        open_connection: Opener,
        *,
        punch: PunchService | None,
        local_networks: Callable[[], Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]],
        relay: RelayService | None = None,
    ) -> None:
        self.open_connection = open_connection
        self.punch = punch
        self.relay = relay
        self.local_networks = local_networks
        self.loop = asyncio.get_running_loop()
        self._peers: dict[str, _Peer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats: dict[str, int] = {}

    # ------------------------------------------------------------------ queries
    def failures(self, peer_id: str) -> int:
        """Attempts in a row that ended without a session."""
        peer = self._peers.get(peer_id)
        return peer.failures if peer is not None else 0

    def busy(self, peer_id: str) -> bool:
        """An attempt to reach this contact is running."""
        peer = self._peers.get(peer_id)
        return peer is not None and peer.attempt is not None

    # ------------------------------------------------------------------ scheduling
    def retry_after(self, peer_id: str, delay: float, *, reset: bool = False) -> None:
        """Next attempt no earlier than ``delay`` from now (0: at the next tick)."""
        peer = self._peers.setdefault(peer_id, _Peer())
        if reset:
            peer.failures = 0
        peer.next_at = self.loop.time() + delay

    def refresh(self, peer_id: str) -> None:
        """New ways to reach the contact are known: end the running attempt (it did
        not know them) without counting it as a failure, and start over now."""
        peer = self._peers.setdefault(peer_id, _Peer())
        if peer.attempt is not None:
            self._finish(peer_id, peer, success=False, counted=False)
        peer.next_at = 0.0

    def want(self, peer_id: str, route: Route, now: float) -> None:
        """The contact has no session: start an attempt if one is due."""
        peer = self._peers.setdefault(peer_id, _Peer())
        attempt = peer.attempt
        if attempt is not None and attempt.upgrade:
            # The relayed session it was upgrading is gone: race every way again, as
            # soon as the node's retry delay allows (``Node.connection_closed``).
            self._finish(peer_id, peer, success=False, counted=False)
            attempt = None
        if attempt is not None:
            if self._attempt_over(attempt, now):
                self._finish(peer_id, peer, success=False)
            else:
                return
        if now < peer.next_at:
            return
        rendezvous = route.rendezvous if self.punch is not None or self.relay else ()
        if not route.addresses and not rendezvous:
            return
        self._start(peer_id, peer, route, now)

    def upgrade(self, peer_id: str, route: Route, now: float) -> None:
        """The contact's session is relayed: now and then, try for a direct one."""
        peer = self._peers.setdefault(peer_id, _Peer())
        attempt = peer.attempt
        if attempt is not None:
            if self._attempt_over(attempt, now):
                self._finish(peer_id, peer, success=False, counted=False)
                peer.next_at = now + UPGRADE_EVERY * random.uniform(0.8, 1.2)
            return
        if now < peer.next_at:
            return
        rendezvous = route.rendezvous if self.punch is not None else ()
        if not route.addresses and not rendezvous:
            return
        self.stats["upgrade_attempts"] = self.stats.get("upgrade_attempts", 0) + 1
        self._start(peer_id, peer, route, now, upgrade=True)

    def _start(
        self, peer_id: str, peer: _Peer, route: Route, now: float, *, upgrade: bool = False
    ) -> None:
        attempt = _Attempt(started=now, upgrade=upgrade)
        peer.attempt = attempt
        if not upgrade:
            self.stats["attempts"] = self.stats.get("attempts", 0) + 1
        direct = self._order(route.addresses)[:MAX_DIRECT]
        for index, addr in enumerate(direct):
            if index == 0:
                self._dial(peer_id, attempt, addr, None, "direct")
            else:
                attempt.handles.append(
                    self.loop.call_later(
                        index * STAGGER, self._dial, peer_id, attempt, addr, None, "direct"
                    )
                )
        if route.rendezvous and self.punch is not None:
            delay = PUNCH_AFTER_PUBLIC if route.nat == NAT_NONE and direct else 0.0
            attempt.punch = self._track(self._punch(peer_id, attempt, route.rendezvous, delay))
        if route.rendezvous and self.relay is not None and not upgrade:
            delay = self._relay_delay(route)
            attempt.relay = self._track(self._relay(peer_id, attempt, route.rendezvous, delay))

    def _relay_delay(self, route: Route) -> float:
        """How long the relay waits: not at all when no punch can work (both sides
        behind endpoint-dependent NATs, or no punching here), longer when the punch
        needs birthday probing (its spray lasts 2.5 s)."""
        if self.punch is None:
            return 0.0
        kinds = {route.nat, self.punch.nat_kind()}
        if kinds == {NAT_ED}:
            return 0.0
        return RELAY_DELAY_BIRTHDAY if NAT_ED in kinds else RELAY_DELAY

    def _track(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("punch attempt failed", exc_info=task.exception())

    def _order(self, addresses: Sequence[Addr]) -> list[Addr]:
        networks = self.local_networks()

        def rank(addr: Addr) -> int:
            try:
                ip = ipaddress.ip_address(addr[0].split("%")[0])
            except ValueError:
                return 2
            return 0 if any(ip in net for net in networks) else 1

        return sorted(dict.fromkeys(addresses), key=rank)

    def _dial(
        self, peer_id: str, attempt: _Attempt, addr: Addr, via: AuxSocket | None, path: str
    ) -> None:
        peer = self._peers.get(peer_id)
        if peer is None or peer.attempt is not attempt:
            return  # the attempt is over
        try:
            conn = self.open_connection(peer_id, addr, via, path)
        except (OSError, ValueError) as exc:
            log.info("cannot dial %s at %s: %s", peer_id, format_address(*addr), exc)
            return
        attempt.conns.append(conn)

    async def _punch(
        self, peer_id: str, attempt: _Attempt, rendezvous: Sequence[Addr], delay: float
    ) -> None:
        assert self.punch is not None
        if delay:
            await asyncio.sleep(delay)

        def on_path(addr: Addr, via: AuxSocket | None) -> None:
            if attempt.punched < MAX_PUNCHED:
                attempt.punched += 1
                self._dial(peer_id, attempt, addr, via, "punched")

        try:
            await self.punch.dial(key_from_peer_id(peer_id), rendezvous, on_path)
        except PunchFailed as exc:
            self.stats["punch_failed"] = self.stats.get("punch_failed", 0) + 1
            log.info("punch to %s: %s", peer_id[:12], exc)

    async def _relay(
        self, peer_id: str, attempt: _Attempt, relays: Sequence[Addr], delay: float
    ) -> None:
        """After ``delay`` (or as soon as the punch gave up), a channel through a relay
        and a QUIC dial over it."""
        assert self.relay is not None
        if delay:
            if attempt.punch is not None:
                await asyncio.wait({attempt.punch}, timeout=delay)
            else:
                await asyncio.sleep(delay)
        peer = self._peers.get(peer_id)
        if peer is None or peer.attempt is not attempt:
            return
        try:
            channel = await self.relay.dial(key_from_peer_id(peer_id), relays)
        except RelayFailed as exc:
            self.stats["relay_failed"] = self.stats.get("relay_failed", 0) + 1
            log.info("relay to %s: %s", peer_id[:12], exc)
            return
        if peer.attempt is not attempt:
            channel.close()  # the race ended while the relay answered
            return
        self._dial(peer_id, attempt, channel.relay_addr, channel, "relayed")
        if channel.link is None:
            channel.close()

    def _attempt_over(self, attempt: _Attempt, now: float) -> bool:
        if now - attempt.started > ATTEMPT_TIMEOUT:
            return True
        if any(h for h in attempt.handles if not h.cancelled() and h.when() > now):
            return False
        if attempt.punch is not None and not attempt.punch.done():
            return False
        if attempt.relay is not None and not attempt.relay.done():
            return False
        return all(c.closed for c in attempt.conns)

    # ------------------------------------------------------------------ outcomes
    def established(self, peer_id: str, conn: Connection) -> None:
        """A session with the contact is up (ours or theirs): the race is over, unless
        the session is relayed (then the attempt's punch and direct dials go on)."""
        peer = self._peers.setdefault(peer_id, _Peer())
        if conn.path == "relayed":
            peer.failures = 0
            peer.next_at = self.loop.time() + UPGRADE_EVERY
            attempt = peer.attempt
            if attempt is not None:
                attempt.upgrade = True
                # A second relayed session would only replace this one.
                if attempt.relay is not None and not attempt.relay.done():
                    attempt.relay.cancel()
            return
        if self.punch is not None:
            self.punch.connected(key_from_peer_id(peer_id))
        attempt = peer.attempt
        if attempt is not None:
            for other in attempt.conns:
                if other is not conn and not other.closed and not other.established:
                    other.close("another path won")
        self._finish(peer_id, peer, success=True)

    def _finish(self, peer_id: str, peer: _Peer, *, success: bool, counted: bool = True) -> None:
        attempt = peer.attempt
        peer.attempt = None
        if attempt is not None:
            for handle in attempt.handles:
                handle.cancel()
            for task in (attempt.punch, attempt.relay):
                if task is not None and not task.done():
                    task.cancel()
            if not success:
                for conn in attempt.conns:
                    if not conn.closed and not conn.established:
                        conn.close("dial attempt over")
        if success:
            peer.failures = 0
        elif counted:
            peer.failures += 1
            delay = min(MAX_BACKOFF, 0.5 * 2 ** min(peer.failures, 8))
            peer.next_at = self.loop.time() + delay * random.uniform(0.8, 1.2)

    def forget(self, peer_id: str) -> None:
        """Stop reaching for this peer (removed or blocked): its attempt ends now."""
        peer = self._peers.pop(peer_id, None)
        if peer is not None and peer.attempt is not None:
            self._finish(peer_id, peer, success=False, counted=False)

    async def stop(self) -> None:
        for peer in self._peers.values():
            if peer.attempt is not None:
                for handle in peer.attempt.handles:
                    handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._peers.clear()

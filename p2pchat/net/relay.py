"""Relayed paths: QUIC through a rendezvous node both sides are registered with.

``core/relay.py`` has the packets and the relay's channel table with its budgets;
this module is their asyncio shell, the endpoint's handler for the 0x30-0x3F packets:

* **As a relay** (every node; for anyone with ``--relay``, else for its contacts,
  since only they can register): forwards ``RelayData`` between the two registered
  ends of a channel, unchanged, within the budgets of :class:`RelayLimits`.
* **As a dialer** (:meth:`RelayService.dial`): makes sure it is registered with the
  relay (holding an extra registration through ``PunchService.hold`` when the relay
  is the target's rendezvous but not ours), asks for a channel, and returns a
  :class:`RelayChannel` once the target accepted.  The dialer then runs QUIC over it,
  as the client, exactly as over any socket.
* **As a target**: answers offers from its own rendezvous nodes (contacts always,
  strangers within a small budget: contact requests need a path too).

A :class:`RelayChannel` is an extra "socket" of the endpoint (an ``AuxSocket`` with
no socket of its own): what QUIC sends through it is wrapped in ``RelayData`` and
sent to the relay from the node's main socket (the registration's NAT mapping); what
arrives for the channel is unwrapped and demultiplexed like any datagram, except
that only QUIC may come through and at most one connection runs on it.  So QUIC, TLS
and the NaCl session run end to end: the relay sees ciphertext, sizes and timing.
Closing the connection closes the channel, and the relay is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aioquic.quic.events import ConnectionTerminated

from p2pchat.core import relay as wire
from p2pchat.core.budget import TokenBucket
from p2pchat.core.punch import MAGIC, Addr, PunchError, new_request_id
from p2pchat.core.relay import RelayLimits, RelayServer, RelayStatus
from p2pchat.core.rendezvous import RegistrationClient
from p2pchat.identity import Identity, format_address, peer_id_from_key
from p2pchat.net.endpoint import STALLED, AuxSocket, Endpoint, QuicLink
from p2pchat.net.punch import PunchService, RendezvousNode
from p2pchat.net.quic import next_tick

__all__ = ["RelayChannel", "RelayFailed", "RelayLimits", "RelayService"]

log = logging.getLogger(__name__)

#: Registering with a relay that is not yet our rendezvous may take this long.
REGISTER_TIMEOUT: Final = 4.0
#: ``RelayOpen`` retransmissions, and how long the dialer waits for ``RelayReady``
#: (the relay gives the target 5 s, but a live target answers within a round trip).
OPEN_TRIES: Final = (0.0, 0.5, 1.0, 2.0)
OPEN_TIMEOUT: Final = 3.0
#: An extra registration stays held this long after its last channel closed.
HOLD_AFTER: Final = 120.0
#: A relay that refused to register us is asked again after this long.
RETRY_REFUSED: Final = 10.0
#: Relays to try, per dial, in order.
MAX_RELAYS: Final = 4
#: Channels we are an end of, at once (as dialer or target).
MAX_CHANNELS: Final = 64
#: A relay whose channel failed (a dial that got no channel, or a channel that went
#: silent) is tried last for this long.
SUSPECT_FOR: Final = 120.0
#: A channel that closes after this long without a datagram died silently (and one
#: whose connection made no progress, ``endpoint.STALLED``, was starved).
SILENT: Final = 3.0
#: Strangers may open this many channels to us (contact requests need a path too).
STRANGER_RATE: Final = 4 / 60.0
STRANGER_BURST: Final = 4.0
SEEN_MEMORY: Final = 1024


class RelayFailed(Exception):
    """No relay gave us a channel to the target (each relay's reason joined)."""


class RelayChannel(AuxSocket):
    """One peer, through one relay: a virtual extra socket of the endpoint."""

    def __init__(
        self,
        service: RelayService,
        relay_addr: Addr,
        relay_key: bytes | None,
        channel: bytes,
        peer_key: bytes,
        *,
        dialer: bool,
    ) -> None:
        super().__init__(service.endpoint)
        self.service = service
        self.relay_addr = relay_addr
        self.relay_key = relay_key
        self.channel = channel
        self.peer_key = peer_key
        self.dialer = dialer
        self.opened_at = service.loop.time()
        self.last_received = self.opened_at
        self.received = 0
        self.sent = 0

    @property
    def relay_peer_id(self) -> str | None:
        return peer_id_from_key(self.relay_key) if self.relay_key else None

    def sendto(self, data: bytes, address: Any) -> None:
        if self.closed or len(data) > wire.MAX_PAYLOAD:
            return
        self.sent += len(data)
        self.endpoint.sendto(wire.data_packet(self.channel, data), self.relay_addr)

    def deliver(self, payload: bytes) -> None:
        """A datagram the relay brought: only QUIC (the fixed bit) goes further."""
        self.last_received = self.service.loop.time()
        self.received += len(payload)
        if payload[0] & 0x40:
            self.datagram_received(payload, self.relay_addr)

    @property
    def port(self) -> int | None:
        return None

    def close(self) -> None:
        self.shut(tell_relay=True)

    def shut(self, *, tell_relay: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.service._channel_closed(self, tell_relay=tell_relay)
        if self.link is not None and not self.link.closed:
            self.link.close(_peer_close_reason(self.link) or "relay channel closed")


def _peer_close_reason(link: QuicLink) -> str | None:
    """The reason of a close the peer sent just before its end of the channel went.

    aioquic reports a received CONNECTION_CLOSE only when the draining period is over,
    but the peer's relay close comes right behind it: without this the node would
    learn ``relay channel closed`` instead of, say, ``duplicate connection``, which it
    treats differently (``Node.connection_closed``).  aioquic has no public view of a
    received close, hence the private attribute."""
    event = getattr(link.conn, "_close_event", None)
    if isinstance(event, ConnectionTerminated) and event.reason_phrase:
        return event.reason_phrase
    return None


@dataclass(eq=False, slots=True)
class _Opening:
    relay: Addr
    target: bytes
    ready: asyncio.Future[wire.RelayReady]


class RelayService:
    """The endpoint's relay handler: see the module docstring."""

    def __init__(
        self,
        endpoint: Endpoint,
        identity: Identity,
        punch: PunchService,
        *,
        limits: RelayLimits | None = None,
        is_contact: Callable[[bytes], bool] = lambda key: False,
    ) -> None:
        self.endpoint = endpoint
        self.identity = identity
        self.punch = punch
        self.is_contact = is_contact
        self.loop = asyncio.get_running_loop()
        self.server = RelayServer(
            registration=punch.server.registration,
            limits=limits or RelayLimits(),
            now=self.loop.time(),
        )
        self._channels: dict[tuple[Addr, bytes], RelayChannel] = {}
        self._opening: dict[bytes, _Opening] = {}
        self._seen: OrderedDict[tuple[Addr, bytes], None] = OrderedDict()
        self._suspect: dict[Addr, float] = {}
        self._refused: dict[Addr, float] = {}
        self._strangers = TokenBucket(STRANGER_RATE, STRANGER_BURST, self.loop.time())
        self._task: asyncio.Task[None] | None = None
        self.stats: dict[str, int] = {}

    # ------------------------------------------------------------------ life
    async def start(self) -> None:
        self.endpoint.relay_handler = self.datagram_received
        self._task = asyncio.ensure_future(self._maintain())

    async def stop(self) -> None:
        if self.endpoint.relay_handler == self.datagram_received:
            self.endpoint.relay_handler = None
        for channel in list(self._channels.values()):
            if channel.link is not None and not channel.link.closed:
                channel.link.close("node stopping")  # closes the channel, tells the relay
            channel.close()
        for opening in self._opening.values():
            opening.ready.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    async def _maintain(self) -> None:
        """Expire the relay's table; keep the registrations our channels run through."""
        while True:
            now = self.loop.time()
            self.server.expire(now)
            self._flush()
            for channel in list(self._channels.values()):
                self.punch.hold(
                    RendezvousNode(channel.relay_addr, channel.relay_key, "relay"),
                    now + HOLD_AFTER,
                )
            for addr, at in list(self._suspect.items()):
                if now - at > SUSPECT_FOR:
                    del self._suspect[addr]
            for addr, at in list(self._refused.items()):
                if now - at > SUSPECT_FOR:
                    del self._refused[addr]
            await asyncio.sleep(next_tick(self.loop.time()) - self.loop.time())

    def _flush(self) -> None:
        for data, dest in self.server.datagrams_to_send():
            self.endpoint.sendto(data, dest)

    # ------------------------------------------------------------------ input
    def datagram_received(self, data: bytes, addr: Addr, via: AuxSocket | None) -> None:
        """Every datagram whose first byte is 0x30-0x3F, from the main socket."""
        if via is not None:
            self._count("junk")
            return  # relay traffic runs on the main socket only
        now = self.loop.time()
        if data[0] == wire.Type.DATA:
            if (
                len(data) <= wire.DATA_HEADER
                or len(data) > wire.DATA_HEADER + wire.MAX_PAYLOAD
                or data[1 : wire.HEADER] != MAGIC
            ):
                self._count("junk")
                return
            channel = self._channels.get((addr, data[wire.HEADER : wire.DATA_HEADER]))
            if channel is not None:
                channel.deliver(data[wire.DATA_HEADER :])
                return
            dest = self.server.forward(data, addr, now)
            if dest is not None:
                self.endpoint.sendto(data, dest)
            return
        try:
            packet = wire.decode(data)
        except PunchError:
            self._count("junk")
            return
        if isinstance(packet, wire.RelayOffer):
            self._offer(packet, addr, now)
        elif isinstance(packet, wire.RelayReady):
            self._ready(packet, addr)
        elif isinstance(packet, wire.RelayClosed):
            self._closed(packet, addr)
        elif not isinstance(packet, wire.RelayData):
            self.server.receive(packet, addr, now)
            self._flush()

    def _registration(self, addr: Addr) -> RegistrationClient | None:
        reg = self.punch.registration(addr)
        return reg if reg is not None and reg.registered and reg.keepalive_key else None

    # ------------------------------------------------------------------ dialer
    async def dial(self, target_key: bytes, relays: Sequence[Addr]) -> RelayChannel:
        """A channel to ``target_key`` through the first of ``relays`` that gives one
        (relays we are registered with first, ones that failed us lately last)."""
        if len(self._channels) + len(self._opening) >= MAX_CHANNELS:
            raise RelayFailed("too many relay channels")
        reasons = []
        for addr in self._order(relays)[:MAX_RELAYS]:
            try:
                return await self._dial_through(target_key, addr)
            except RelayFailed as exc:
                self._suspect[addr] = self.loop.time()
                reasons.append(f"{format_address(*addr)}: {exc}")
        raise RelayFailed("; ".join(reasons) or "no relay known")

    def _order(self, relays: Sequence[Addr]) -> list[Addr]:
        own = {self.endpoint.local_address, *self.punch.local_candidates()}
        candidates = [a for a in dict.fromkeys(relays) if a not in own]

        def rank(addr: Addr) -> tuple[int, float]:
            if addr in self._suspect:
                return (2, self._suspect[addr])
            return (0 if self._registration(addr) is not None else 1, 0.0)

        return sorted(candidates, key=rank)

    async def _registered_at(self, addr: Addr) -> RegistrationClient:
        self.punch.hold(RendezvousNode(addr, None, "relay"), self.loop.time() + HOLD_AFTER)
        deadline = self.loop.time() + REGISTER_TIMEOUT
        while True:
            reg = self._registration(addr)
            if reg is not None:
                return reg
            current = self.punch.registration(addr)
            if current is not None and current.state == "refused":
                now = self.loop.time()
                refused_at = self._refused.setdefault(addr, now)
                if now - refused_at < RETRY_REFUSED:
                    raise RelayFailed(f"registration refused: {current.refused}")
                del self._refused[addr]
                self.punch.retry_held(addr)
            if self.loop.time() >= deadline:
                raise RelayFailed("could not register")
            await asyncio.sleep(0.05)

    async def _dial_through(self, target_key: bytes, addr: Addr) -> RelayChannel:
        reg = await self._registered_at(addr)
        channel_id = new_request_id()
        opening = _Opening(addr, target_key, self.loop.create_future())
        self._opening[channel_id] = opening
        me = self.identity.public_key
        try:
            start = self.loop.time()
            for offset in OPEN_TRIES:
                delay = start + offset - self.loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await asyncio.shield(opening.ready)
                if opening.ready.done():
                    break
                reg = self._registration(addr) or reg
                tag = wire.open_mac(reg.keepalive_key, me, target_key, channel_id)
                packet = wire.RelayOpen(me, target_key, channel_id, tag)
                self.endpoint.sendto(wire.encode(packet), addr)
                self._count("opens_sent")
            try:
                async with asyncio.timeout(max(0.0, start + OPEN_TIMEOUT - self.loop.time())):
                    ready = await asyncio.shield(opening.ready)
            except TimeoutError:
                raise RelayFailed("the relay did not answer") from None
        finally:
            self._opening.pop(channel_id, None)
        if ready.status != RelayStatus.OK:
            try:
                name = RelayStatus(ready.status).name.lower().replace("_", " ")
            except ValueError:
                name = f"status {ready.status}"
            self._count("refused")
            raise RelayFailed(f"relay: {name}")
        channel = RelayChannel(self, addr, reg.rendezvous_key, channel_id, target_key, dialer=True)
        self._channels[(addr, channel_id)] = channel
        self._count("channels_opened")
        log.info(
            "relay channel to %s through %s",
            peer_id_from_key(target_key)[:12],
            format_address(*addr),
        )
        return channel

    def _ready(self, packet: wire.RelayReady, addr: Addr) -> None:
        opening = self._opening.get(packet.channel)
        reg = self._registration(addr)
        if (
            opening is None
            or opening.relay != addr
            or opening.target != packet.target_key
            or opening.ready.done()
            or reg is None
        ):
            self._count("unsolicited")
            return
        tag = wire.ready_mac(reg.keepalive_key, packet.target_key, packet.channel, packet.status)
        if not _same(tag, packet.mac):
            self._count("bad_mac")
            return
        opening.ready.set_result(packet)

    # ------------------------------------------------------------------ target
    def _offer(self, packet: wire.RelayOffer, addr: Addr, now: float) -> None:
        reg = self._registration(addr)
        if reg is None:
            self._count("offer_from_stranger")
            return  # only a rendezvous we are registered with may offer channels
        if not _same(
            wire.offer_mac(reg.keepalive_key, packet.dialer_key, packet.channel), packet.mac
        ):
            self._count("bad_mac")
            return
        key = (addr, packet.channel)
        if key in self._channels:
            self._answer(reg, addr, packet.channel, RelayStatus.OK)  # our answer was lost
            return
        if key in self._seen:
            self._count("replayed_offer")
            return
        self._seen[key] = None
        while len(self._seen) > SEEN_MEMORY:
            self._seen.popitem(last=False)
        accept = packet.dialer_key != self.identity.public_key and (
            self.is_contact(packet.dialer_key) or self._strangers.take(now)
        )
        if accept and len(self._channels) + len(self._opening) >= MAX_CHANNELS:
            accept = False
        if not accept:
            self._count("declined")
            self._answer(reg, addr, packet.channel, RelayStatus.DECLINED)
            return
        channel = RelayChannel(
            self, addr, reg.rendezvous_key, packet.channel, packet.dialer_key, dialer=False
        )
        self._channels[key] = channel
        self._count("accepted")
        self._answer(reg, addr, packet.channel, RelayStatus.OK)

    def _answer(
        self, reg: RegistrationClient, addr: Addr, channel: bytes, status: RelayStatus
    ) -> None:
        me = self.identity.public_key
        tag = wire.answer_mac(reg.keepalive_key, me, channel, status)
        self.endpoint.sendto(wire.encode(wire.RelayAnswer(me, channel, status, tag)), addr)

    # ------------------------------------------------------------------ closing
    def _closed(self, packet: wire.RelayClosed, addr: Addr) -> None:
        channel = self._channels.get((addr, packet.channel))
        reg = self._registration(addr)
        if channel is None or reg is None:
            self._count("unsolicited")
            return
        if not _same(wire.closed_mac(reg.keepalive_key, packet.channel), packet.mac):
            self._count("bad_mac")
            return
        self._count("closed_by_relay")
        channel.shut(tell_relay=False)

    def _channel_closed(self, channel: RelayChannel, *, tell_relay: bool) -> None:
        self._channels.pop((channel.relay_addr, channel.channel), None)
        now = self.loop.time()
        reason = channel.link.close_reason if channel.link is not None else None
        if now - channel.last_received >= SILENT:
            self._suspect[channel.relay_addr] = now  # it went quiet under us
            self._count("channels_went_silent")
        elif reason is not None and reason.startswith(STALLED):
            self._suspect[channel.relay_addr] = now  # it passed pings, not data
            self._count("channels_stalled")
        if not tell_relay:
            return
        reg = self._registration(channel.relay_addr)
        if reg is not None:
            me = self.identity.public_key
            tag = wire.close_mac(reg.keepalive_key, me, channel.channel)
            packet = wire.RelayClose(me, channel.channel, tag)
            self.endpoint.sendto(wire.encode(packet), channel.relay_addr)

    # ------------------------------------------------------------------ diagnostics
    def status(self) -> dict[str, Any]:
        """What we relay for others (``serving``) and the channels we are an end of."""
        return {
            "serving": self.server.status(),
            "channels": [
                {
                    "relay": c.relay_peer_id,
                    "address": format_address(*c.relay_addr),
                    "peer_id": peer_id_from_key(c.peer_key),
                    "role": "dialer" if c.dialer else "target",
                    "sent": c.sent,
                    "received": c.received,
                }
                for c in list(self._channels.values())[:16]
            ],
            "using": dict(self.stats),
            "suspect": [format_address(*a) for a in self._suspect],
        }


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)

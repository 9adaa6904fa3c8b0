"""Relaying datagrams between two registered nodes, and what it may cost (sans-IO).

When no direct or punched path exists (both sides behind endpoint-dependent NATs, or
UDP filtered one way), a rendezvous node both can reach carries their QUIC
datagrams.  The relay forwards opaque bytes: QUIC and the NaCl session stay end to
end, so it sees ciphertext, sizes, timing and the two peer IDs, and cannot forge,
alter or replay anything either side accepts (``docs/threat-model.md``).

Both ends of a *channel* must hold a registration at the relay
(``core/rendezvous.py``): a registration is signed by the node's identity key, its
address was proven by a cookie round trip, and its MACed keepalives move it when the
node's NAT mapping moves.  So the relay sends a node's traffic only to the address
that node's key registered, and nobody can get traffic for someone else relayed to
them.  Every control packet of a channel is MACed with the keepalive key of the
registration it speaks for:

* ``RelayOpen`` (dialer D -> relay V): D's key, the target T's key, a channel ID D
  chose, MACed with D's keepalive key (only D, from D's registered address);
* ``RelayOffer`` (V -> T): D's key and the channel ID, MACed with T's keepalive key
  (T knows its own rendezvous is asking);
* ``RelayAnswer`` (T -> V): T accepts or declines, MACed with T's key: T consents
  to every channel that carries traffic to it;
* ``RelayReady`` (V -> D): the outcome, MACed with D's key;
* ``RelayData`` (either end <-> V): ``channel ID || datagram``; V forwards it
  unchanged to the other end's registered address, and only if it came from one of
  the two registered addresses;
* ``RelayClose`` (an end -> V) and ``RelayClosed`` (V -> the other end).

Every datagram is ``type || "p2" || body`` in the 0x30-0x3F part of the punch space
(``core/punch.py`` uses 0x10-0x2F), with fixed layouts: a parser never guesses.

:class:`RelayServer` is the relay's side: the channel table and every budget (per
node, per source IP and in total, for bytes per second and bytes per day; channels
per node and in total), with counters for ``p2pchat net``.  It holds no buffers: a
datagram is forwarded or dropped as it arrives, so its memory is the channel table.
"""

from __future__ import annotations

import enum
import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from p2pchat.core import punch
from p2pchat.core.budget import RateBudget, TokenBucket
from p2pchat.core.errors import LocalProtocolError
from p2pchat.core.punch import MAGIC, Addr, PunchError

__all__ = [
    "CHANNEL_ID",
    "RelayAnswer",
    "RelayClose",
    "RelayClosed",
    "RelayData",
    "RelayLimits",
    "RelayOffer",
    "RelayOpen",
    "RelayReady",
    "RelayServer",
    "RelayStatus",
    "decode",
    "encode",
]

CHANNEL_ID: Final = 8
HEADER: Final = 3
DATA_HEADER: Final = HEADER + CHANNEL_ID
#: A relayed datagram: a QUIC datagram (aioquic sends at most 1,200 bytes, RFC 9000's
#: smallest maximum) with our 11-byte header fits well inside a 1,500-byte MTU.
MAX_PAYLOAD: Final = 1452 - DATA_HEADER
#: Every datagram costs at least this many bytes of budget, so a flood of tiny
#: datagrams is bounded in packets per second too (per-packet work is the relay's
#: real cost in Python).
MIN_COST: Final = 256
#: An offer the target did not answer within this is forgotten.
OFFER_TTL: Final = 5.0
#: A channel nothing crossed for this long is closed (QUIC pings a live connection
#: every second or two, so only a dead one goes quiet).
IDLE_TTL: Final = 30.0
DAY: Final = 86400.0

_OPEN: Final = b"p2pchat/1 relay open"
_OFFER: Final = b"p2pchat/1 relay offer"
_ANSWER: Final = b"p2pchat/1 relay answer"
_READY: Final = b"p2pchat/1 relay ready"
_CLOSE: Final = b"p2pchat/1 relay close"
_CLOSED: Final = b"p2pchat/1 relay closed"


class Type(enum.IntEnum):
    DATA = 0x30
    OPEN = 0x31
    OFFER = 0x32
    ANSWER = 0x33
    READY = 0x34
    CLOSE = 0x35
    CLOSED = 0x36


class RelayStatus(enum.IntEnum):
    """The outcome in ``RelayAnswer`` and ``RelayReady``."""

    OK = 0
    DECLINED = 1  # the target said no (a stranger over its budget, too many channels)
    FULL = 2  # a relay budget: channels per node or in total, opens per second
    UNKNOWN_TARGET = 3  # the target holds no registration here
    NO_ANSWER = 4  # the target did not answer in time
    BAD_REQUEST = 5  # the channel ID is taken


# --------------------------------------------------------------------- packets
@dataclass(frozen=True, slots=True)
class RelayData:
    channel: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class RelayOpen:
    dialer_key: bytes
    target_key: bytes
    channel: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class RelayOffer:
    dialer_key: bytes
    channel: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class RelayAnswer:
    target_key: bytes
    channel: bytes
    status: int
    mac: bytes


@dataclass(frozen=True, slots=True)
class RelayReady:
    target_key: bytes
    channel: bytes
    status: int
    mac: bytes


@dataclass(frozen=True, slots=True)
class RelayClose:
    """An end is done with the channel (its QUIC connection closed)."""

    key: bytes
    channel: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class RelayClosed:
    """The relay tells an end that the channel is gone (the other end closed it, or
    it went idle)."""

    channel: bytes
    mac: bytes


Packet = RelayData | RelayOpen | RelayOffer | RelayAnswer | RelayReady | RelayClose | RelayClosed


def _head(kind: Type) -> bytes:
    return bytes((kind,)) + MAGIC


def _fixed(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise LocalProtocolError(f"{what} must be {size} bytes")
    return value


def encode(packet: Packet) -> bytes:
    """The datagram for ``packet`` (``LocalProtocolError`` on bad fields)."""
    if isinstance(packet, RelayData):
        if len(packet.payload) > MAX_PAYLOAD:
            raise LocalProtocolError("relayed datagram too large")
        return data_packet(packet.channel, packet.payload)
    if isinstance(packet, RelayOpen):
        return (
            _head(Type.OPEN)
            + _fixed(packet.dialer_key, punch.KEY, "key")
            + _fixed(packet.target_key, punch.KEY, "key")
            + _fixed(packet.channel, CHANNEL_ID, "channel")
            + _fixed(packet.mac, punch.MAC, "mac")
        )
    if isinstance(packet, RelayOffer):
        return (
            _head(Type.OFFER)
            + _fixed(packet.dialer_key, punch.KEY, "key")
            + _fixed(packet.channel, CHANNEL_ID, "channel")
            + _fixed(packet.mac, punch.MAC, "mac")
        )
    if isinstance(packet, RelayAnswer | RelayReady):
        kind = Type.ANSWER if isinstance(packet, RelayAnswer) else Type.READY
        return (
            _head(kind)
            + _fixed(packet.target_key, punch.KEY, "key")
            + _fixed(packet.channel, CHANNEL_ID, "channel")
            + bytes((packet.status,))
            + _fixed(packet.mac, punch.MAC, "mac")
        )
    if isinstance(packet, RelayClose):
        return (
            _head(Type.CLOSE)
            + _fixed(packet.key, punch.KEY, "key")
            + _fixed(packet.channel, CHANNEL_ID, "channel")
            + _fixed(packet.mac, punch.MAC, "mac")
        )
    if isinstance(packet, RelayClosed):
        return (
            _head(Type.CLOSED)
            + _fixed(packet.channel, CHANNEL_ID, "channel")
            + _fixed(packet.mac, punch.MAC, "mac")
        )
    raise LocalProtocolError(f"cannot encode {packet!r}")


def data_packet(channel: bytes, payload: bytes) -> bytes:
    """``RelayData`` without building the dataclass: the per-datagram path."""
    return b"\x30" + MAGIC + channel + payload


_SIZES: Final = {
    Type.OPEN: 2 * punch.KEY + CHANNEL_ID + punch.MAC,
    Type.OFFER: punch.KEY + CHANNEL_ID + punch.MAC,
    Type.ANSWER: punch.KEY + CHANNEL_ID + 1 + punch.MAC,
    Type.READY: punch.KEY + CHANNEL_ID + 1 + punch.MAC,
    Type.CLOSE: punch.KEY + CHANNEL_ID + punch.MAC,
    Type.CLOSED: CHANNEL_ID + punch.MAC,
}


def decode(data: bytes) -> Packet:
    """Parse one datagram of the relay space; ``PunchError`` if it is not valid."""
    if len(data) < HEADER or data[1:HEADER] != MAGIC:
        raise PunchError("not a p2pchat relay packet")
    try:
        kind = Type(data[0])
    except ValueError:
        raise PunchError(f"unknown relay packet type 0x{data[0]:02x}") from None
    body = data[HEADER:]
    if kind is Type.DATA:
        if len(body) <= CHANNEL_ID:
            raise PunchError("relayed datagram without payload")
        if len(body) > CHANNEL_ID + MAX_PAYLOAD:
            raise PunchError("relayed datagram too large")
        return RelayData(body[:CHANNEL_ID], body[CHANNEL_ID:])
    if len(body) != _SIZES[kind]:
        raise PunchError(f"relay packet 0x{kind:02x} has the wrong size")
    k, c, m = punch.KEY, CHANNEL_ID, punch.MAC
    if kind is Type.OPEN:
        return RelayOpen(body[:k], body[k : 2 * k], body[2 * k : 2 * k + c], body[-m:])
    if kind is Type.OFFER:
        return RelayOffer(body[:k], body[k : k + c], body[-m:])
    if kind in (Type.ANSWER, Type.READY):
        cls = RelayAnswer if kind is Type.ANSWER else RelayReady
        return cls(body[:k], body[k : k + c], body[k + c], body[-m:])
    if kind is Type.CLOSE:
        return RelayClose(body[:k], body[k : k + c], body[-m:])
    return RelayClosed(body[:c], body[-m:])


# --------------------------------------------------------------------- MACs
# Each names its packet kind and every field it vouches for, so a MAC from one
# packet is worthless in another.
def open_mac(key: bytes, dialer: bytes, target: bytes, channel: bytes) -> bytes:
    return punch.mac(key, _OPEN, dialer, target, channel)


def offer_mac(key: bytes, dialer: bytes, channel: bytes) -> bytes:
    return punch.mac(key, _OFFER, dialer, channel)


def answer_mac(key: bytes, target: bytes, channel: bytes, status: int) -> bytes:
    return punch.mac(key, _ANSWER, target, channel, bytes((status,)))


def ready_mac(key: bytes, target: bytes, channel: bytes, status: int) -> bytes:
    return punch.mac(key, _READY, target, channel, bytes((status,)))


def close_mac(key: bytes, sender: bytes, channel: bytes) -> bytes:
    return punch.mac(key, _CLOSE, sender, channel)


def closed_mac(key: bytes, channel: bytes) -> bytes:
    return punch.mac(key, _CLOSED, channel)


# --------------------------------------------------------------------- the relay
@dataclass(frozen=True, slots=True)
class RelayLimits:
    """What a relay gives away.  Rates are bytes per second; ``*_per_day`` are byte
    quotas over any day (a bucket that refills the quota in 24 h; 0: none)."""

    peer_rate: float = 2 * 1024 * 1024
    peer_burst: float = 4 * 1024 * 1024
    peer_per_day: float = 4 * 1024**3
    ip_rate: float = 4 * 1024 * 1024
    ip_burst: float = 8 * 1024 * 1024
    total_rate: float = 16 * 1024 * 1024
    total_burst: float = 32 * 1024 * 1024
    total_per_day: float = 0.0
    channels_per_peer: int = 8
    max_channels: int = 1024
    #: channel opens per second (and burst) per dialer
    open_rate: float = 1.0
    open_burst: float = 8.0
    max_keys: int = 4096

    def __post_init__(self) -> None:
        for name in ("peer_rate", "ip_rate", "total_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"relay {name} must be positive")


@dataclass(slots=True)
class _Channel:
    dialer: bytes
    target: bytes
    created: float
    last: float
    open: bool = False
    up: int = 0
    """Bytes forwarded from the dialer to the target."""
    down: int = 0


class RegisteredEnd(Protocol):
    """What the relay needs of a registration (``RendezvousServer.registration``):
    where its owner is now, and the key its owner MACs with."""

    @property
    def addr(self) -> Addr: ...

    @property
    def keepalive_key(self) -> bytes: ...


Registrations = Callable[[bytes], RegisteredEnd | None]


@dataclass(slots=True)
class RelayServer:
    """The channel table of one relay, with every budget (see the module docstring).

    ``registration(key)`` looks up a live registration (``RendezvousServer``);
    ``enabled`` False refuses every open (a node that takes registrations but
    carries no data).  Drive it with :meth:`receive` for control packets and
    :meth:`forward` for data; collect control packets with
    :meth:`datagrams_to_send`; call :meth:`expire` every second or so.
    """

    registration: Registrations
    limits: RelayLimits = field(default_factory=RelayLimits)
    enabled: bool = True
    now: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)
    _channels: OrderedDict[bytes, _Channel] = field(default_factory=OrderedDict)
    _per_peer: dict[bytes, int] = field(default_factory=dict)
    _out: list[tuple[bytes, Addr]] = field(default_factory=list)
    _peer_rate: RateBudget = field(init=False)
    _peer_day: RateBudget | None = field(init=False)
    _ip_rate: RateBudget = field(init=False)
    _opens: RateBudget = field(init=False)
    _total: TokenBucket = field(init=False)
    _total_day: TokenBucket | None = field(init=False)

    def __post_init__(self) -> None:
        lim = self.limits
        self._peer_rate = RateBudget(lim.peer_rate, lim.peer_burst, lim.max_keys)
        self._peer_day = (
            RateBudget(lim.peer_per_day / DAY, lim.peer_per_day, lim.max_keys)
            if lim.peer_per_day > 0
            else None
        )
        self._ip_rate = RateBudget(lim.ip_rate, lim.ip_burst, lim.max_keys)
        self._opens = RateBudget(lim.open_rate, lim.open_burst, lim.max_keys)
        self._total = TokenBucket(lim.total_rate, lim.total_burst, self.now)
        self._total_day = (
            TokenBucket(lim.total_per_day / DAY, lim.total_per_day, self.now)
            if lim.total_per_day > 0
            else None
        )
        for name in (
            "forwarded_packets",
            "forwarded_bytes",
            "dropped_peer_rate",
            "dropped_peer_quota",
            "dropped_ip_rate",
            "dropped_total_rate",
            "dropped_total_quota",
            "dropped_unknown_channel",
            "dropped_wrong_source",
            "dropped_unregistered",
            "channels_opened",
            "channels_closed",
            "channels_expired",
            "refused_full",
            "refused_unknown_target",
            "refused_declined",
            "refused_no_answer",
            "refused_disabled",
            "bad_mac",
        ):
            self.stats.setdefault(name, 0)

    # ------------------------------------------------------------------ driving
    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def _count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    def _send(self, packet: Packet, addr: Addr) -> None:
        self._out.append((encode(packet), addr))

    @property
    def channels(self) -> int:
        return len(self._channels)

    def status(self) -> dict[str, int | float]:
        out: dict[str, int | float] = dict(self.stats)
        out["channels"] = sum(c.open for c in self._channels.values())
        out["pending"] = sum(not c.open for c in self._channels.values())
        lim = self.limits
        out["limit_peer_rate"] = lim.peer_rate
        out["limit_peer_per_day"] = lim.peer_per_day
        out["limit_total_rate"] = lim.total_rate
        out["limit_total_per_day"] = lim.total_per_day
        return out

    def peer_bytes(self, key: bytes) -> int:
        """Bytes ``key`` sent through its channels that are still open."""
        total = 0
        for c in self._channels.values():
            if c.dialer == key:
                total += c.up
            if c.target == key:
                total += c.down
        return total

    # ------------------------------------------------------------------ data
    def forward(self, data: bytes, addr: Addr, now: float) -> Addr | None:
        """Where ``data`` (a whole ``RelayData`` datagram from ``addr``) goes, unchanged,
        or None to drop it.  Every budget is checked before any is charged."""
        channel = self._channels.get(data[HEADER:DATA_HEADER])
        if channel is None or not channel.open:
            self._count("dropped_unknown_channel")
            return None
        dialer = self.registration(channel.dialer)
        target = self.registration(channel.target)
        if dialer is None or target is None:
            self._count("dropped_unregistered")
            return None
        if addr == dialer.addr:
            sender, dest = channel.dialer, target.addr
        elif addr == target.addr:
            sender, dest = channel.target, dialer.addr
        else:
            self._count("dropped_wrong_source")
            return None
        cost = float(max(len(data), MIN_COST))
        if self._peer_rate.available(sender, now) < cost:
            self._count("dropped_peer_rate")
            return None
        if self._peer_day is not None and self._peer_day.available(sender, now) < cost:
            self._count("dropped_peer_quota")
            return None
        if self._ip_rate.available(addr[0], now) < cost:
            self._count("dropped_ip_rate")
            return None
        if self._total.refill(now) < cost:
            self._count("dropped_total_rate")
            return None
        if self._total_day is not None and self._total_day.refill(now) < cost:
            self._count("dropped_total_quota")
            return None
        self._peer_rate.spend(sender, cost, now)
        if self._peer_day is not None:
            self._peer_day.spend(sender, cost, now)
        self._ip_rate.spend(addr[0], cost, now)
        self._total.tokens -= cost
        if self._total_day is not None:
            self._total_day.tokens -= cost
        channel.last = now
        if sender == channel.dialer:
            channel.up += len(data)
        else:
            channel.down += len(data)
        self._count("forwarded_packets")
        self._count("forwarded_bytes", len(data))
        return dest

    # ------------------------------------------------------------------ control
    def receive(self, packet: Packet, addr: Addr, now: float) -> None:
        """A control packet from ``addr``; never raises for remote input."""
        if isinstance(packet, RelayOpen):
            self._open(packet, addr, now)
        elif isinstance(packet, RelayAnswer):
            self._answer(packet, addr, now)
        elif isinstance(packet, RelayClose):
            self._close(packet, addr)

    def _registered_from(self, key: bytes, addr: Addr) -> RegisteredEnd | None:
        reg = self.registration(key)
        if reg is None or reg.addr != addr:
            return None
        return reg

    def _open(self, packet: RelayOpen, addr: Addr, now: float) -> None:
        dialer = self._registered_from(packet.dialer_key, addr)
        if dialer is None:
            self._count("dropped_unregistered")
            return  # nothing proves the source address: no answer
        tag = open_mac(dialer.keepalive_key, packet.dialer_key, packet.target_key, packet.channel)
        if not hmac.compare_digest(tag, packet.mac):
            self._count("bad_mac")
            return

        def refuse(status: RelayStatus, counter: str) -> None:
            self._count(counter)
            self._ready(dialer, packet.target_key, packet.channel, status, addr)

        existing = self._channels.get(packet.channel)
        if existing is not None:
            if existing.dialer == packet.dialer_key and existing.target == packet.target_key:
                # A retransmission: our Ready, or our Offer, may have been lost.
                if existing.open:
                    self._ready(dialer, packet.target_key, packet.channel, RelayStatus.OK, addr)
                else:
                    self._offer(existing, packet.channel)
                return
            refuse(RelayStatus.BAD_REQUEST, "refused_full")
            return
        if not self.enabled:
            refuse(RelayStatus.FULL, "refused_disabled")
            return
        target = self.registration(packet.target_key)
        if target is None or packet.target_key == packet.dialer_key:
            refuse(RelayStatus.UNKNOWN_TARGET, "refused_unknown_target")
            return
        lim = self.limits
        if (
            not self._opens.allow(packet.dialer_key, now)
            or self._per_peer.get(packet.dialer_key, 0) >= lim.channels_per_peer
            or self._per_peer.get(packet.target_key, 0) >= lim.channels_per_peer
        ):
            refuse(RelayStatus.FULL, "refused_full")
            return
        if len(self._channels) >= lim.max_channels:
            self.expire(now)
            if len(self._channels) >= lim.max_channels:
                refuse(RelayStatus.FULL, "refused_full")
                return
        channel = self._channels[packet.channel] = _Channel(
            packet.dialer_key, packet.target_key, now, now
        )
        for key in (packet.dialer_key, packet.target_key):
            self._per_peer[key] = self._per_peer.get(key, 0) + 1
        self._offer(channel, packet.channel)

    def _offer(self, channel: _Channel, channel_id: bytes) -> None:
        target = self.registration(channel.target)
        if target is not None:
            tag = offer_mac(target.keepalive_key, channel.dialer, channel_id)
            self._send(RelayOffer(channel.dialer, channel_id, tag), target.addr)

    def _ready(
        self, dialer: RegisteredEnd, target: bytes, channel: bytes, status: RelayStatus, to: Addr
    ) -> None:
        tag = ready_mac(dialer.keepalive_key, target, channel, status)
        self._send(RelayReady(target, channel, status, tag), to)

    def _answer(self, packet: RelayAnswer, addr: Addr, now: float) -> None:
        channel = self._channels.get(packet.channel)
        if channel is None or channel.target != packet.target_key or channel.open:
            self._count("dropped_unknown_channel")
            return
        target = self._registered_from(packet.target_key, addr)
        if target is None:
            self._count("dropped_unregistered")
            return
        tag = answer_mac(target.keepalive_key, packet.target_key, packet.channel, packet.status)
        if not hmac.compare_digest(tag, packet.mac):
            self._count("bad_mac")
            return
        dialer = self.registration(channel.dialer)
        ok = packet.status == RelayStatus.OK
        if ok:
            channel.open = True
            channel.last = now
            self._count("channels_opened")
        else:
            self._remove(packet.channel)
            self._count("refused_declined")
        if dialer is not None:
            status = RelayStatus.OK if ok else RelayStatus.DECLINED
            self._ready(dialer, packet.target_key, packet.channel, status, dialer.addr)

    def _close(self, packet: RelayClose, addr: Addr) -> None:
        channel = self._channels.get(packet.channel)
        if channel is None or packet.key not in (channel.dialer, channel.target):
            self._count("dropped_unknown_channel")
            return
        sender = self._registered_from(packet.key, addr)
        if sender is None:
            self._count("dropped_unregistered")
            return
        if not hmac.compare_digest(
            close_mac(sender.keepalive_key, packet.key, packet.channel), packet.mac
        ):
            self._count("bad_mac")
            return
        other = channel.target if packet.key == channel.dialer else channel.dialer
        self._remove(packet.channel)
        self._count("channels_closed")
        self._tell_closed(other, packet.channel)

    def _tell_closed(self, key: bytes, channel: bytes) -> None:
        reg = self.registration(key)
        if reg is not None:
            self._send(RelayClosed(channel, closed_mac(reg.keepalive_key, channel)), reg.addr)

    def _remove(self, channel_id: bytes) -> None:
        channel = self._channels.pop(channel_id, None)
        if channel is None:
            return
        for key in (channel.dialer, channel.target):
            left = self._per_peer.get(key, 0) - 1
            if left > 0:
                self._per_peer[key] = left
            else:
                self._per_peer.pop(key, None)

    def expire(self, now: float) -> None:
        """Offers nobody answered, channels nothing crossed, channels whose ends are no
        longer registered."""
        for channel_id, channel in list(self._channels.items()):
            if not channel.open:
                if now - channel.created > OFFER_TTL:
                    self._remove(channel_id)
                    self._count("refused_no_answer")
                    dialer = self.registration(channel.dialer)
                    if dialer is not None:
                        self._ready(
                            dialer, channel.target, channel_id, RelayStatus.NO_ANSWER, dialer.addr
                        )
                continue
            gone = self.registration(channel.dialer) is None or (
                self.registration(channel.target) is None
            )
            if gone or now - channel.last > IDLE_TTL:
                self._remove(channel_id)
                self._count("channels_expired")
                for key in (channel.dialer, channel.target):
                    self._tell_closed(key, channel_id)

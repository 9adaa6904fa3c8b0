"""Rendezvous: registrations and connect forwarding, both sides (sans-IO).

A node behind a NAT cannot be reached unasked, but it can keep a mapping open to a
node that can: its *rendezvous*.  :class:`RendezvousServer` is what every reachable
node runs: it takes registrations (for its contacts by default, for anyone when it is a
public relay) and forwards connect requests to the registered node.
:class:`RegistrationClient` is one registration seen from the registrant: it registers,
keeps the mapping open with MACed keepalives, notices when the address the rendezvous
sees changes, and re-registers when the rendezvous stops answering.

Both are driven like the other cores: packets (already decoded by ``core/punch.py``),
the sender's address and ``now`` in; datagrams to send out (``datagrams_to_send``);
the client also reports events.  Crypto callables (sign, verify, the identity seed for
unsealing) are injected, so tests can drive both with real keys and no sockets.

Budgets (all per rendezvous node, see ``docs/threat-model.md``): registrations in
total and per source IP, a token bucket per source IP for every request, one per
target and one global for forwarded connects, and a bounded table of pending connects.
Everything refused is answered with a status only when the requester's address is
proven (a cookie or a registration), otherwise dropped silently.
"""

from __future__ import annotations

import hmac
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import nacl.encoding
import nacl.hash
import nacl.utils

from p2pchat.core import punch
from p2pchat.core.budget import RateBudget, TokenBucket
from p2pchat.core.punch import (
    Addr,
    Connect,
    ConnectAck,
    ConnectFwd,
    ConnectReply,
    Keepalive,
    KeepaliveAck,
    Packet,
    RegChallenge,
    RegHello,
    Register,
    Registered,
    Status,
    Sync,
)

__all__ = [
    "RegistrationClient",
    "RegistrationEvent",
    "RendezvousLimits",
    "RendezvousServer",
]

#: Keepalive period the rendezvous asks for: short enough that a registrant whose
#: public address changed is reachable again within seconds, cheap enough (two
#: ~60-byte datagrams and two MACs per period) for thousands of registrants.
KEEPALIVE_INTERVAL: Final = 5
#: A registration with no valid keepalive for this long is dropped.
REGISTRATION_TTL: Final = 30.0
#: A registrant re-registers from scratch (new cookie, new keepalive key) this often.
REREGISTER_AFTER: Final = 600.0
COOKIE_EPOCH: Final = 60.0
PENDING_TTL: Final = 15.0

Sign = Callable[[bytes], bytes]
Verify = Callable[[bytes, bytes, bytes], bool]


@dataclass(frozen=True, slots=True)
class RendezvousLimits:
    max_registrations: int = 1024
    per_ip_registrations: int = 16
    #: requests per second and burst, per source IP (hello, register, connect, sync)
    ip_rate: float = 20.0
    ip_burst: float = 40.0
    #: connect requests forwarded to one target per second, and burst
    target_rate: float = 5.0
    target_burst: float = 10.0
    #: connect requests forwarded in total per second, and burst
    global_rate: float = 500.0
    global_burst: float = 1000.0
    max_pending: int = 512
    max_rate_entries: int = 4096


@dataclass(slots=True)
class _Registration:
    key: bytes
    addr: Addr
    keepalive_key: bytes
    counter: int
    seen: float


@dataclass(slots=True)
class _Pending:
    dialer_addr: Addr
    target_key: bytes
    target_addr: Addr
    expires: float
    answered: bool = False


class RendezvousServer:
    """Registrations and connect forwarding for one reachable node."""

    def __init__(
        self,
        *,
        key: bytes,
        sign: Sign,
        verify: Verify,
        may_register: Callable[[bytes], bool],
        limits: RendezvousLimits | None = None,
    ) -> None:
        self.key = key
        self._sign = sign
        self._verify = verify
        self.may_register = may_register
        self.limits = limits or RendezvousLimits()
        self._secret = nacl.utils.random(32)
        self._registrations: dict[bytes, _Registration] = {}
        self._per_ip: dict[str, int] = {}
        limits = self.limits
        self._rates = RateBudget(limits.ip_rate, limits.ip_burst, limits.max_rate_entries)
        self._target_rates = RateBudget(
            limits.target_rate, limits.target_burst, limits.max_registrations
        )
        self._global = TokenBucket(limits.global_rate, limits.global_burst, 0.0)
        self._pending: OrderedDict[bytes, _Pending] = OrderedDict()
        self._out: list[tuple[bytes, Addr]] = []
        self.stats: dict[str, int] = {}

    # ------------------------------------------------------------------ driving
    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def _send(self, packet: Packet, addr: Addr) -> None:
        self._out.append((punch.encode(packet), addr))

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    @property
    def registrations(self) -> int:
        return len(self._registrations)

    def registered_keys(self) -> list[bytes]:
        return list(self._registrations)

    def registration(self, key: bytes) -> _Registration | None:
        """The live registration of ``key``: where it is, and its keepalive key (the
        relay, ``core/relay.py``, MACs a channel's control packets with it)."""
        return self._registrations.get(key)

    def receive(self, packet: Packet, addr: Addr, now: float) -> None:
        """Handle one decoded packet from ``addr``; never raises for remote input."""
        if isinstance(packet, KeepaliveAck | RegChallenge | Registered | ConnectFwd):
            return  # client-side packets: not for a rendezvous
        if isinstance(packet, Keepalive):
            self._keepalive(packet, addr, now)
            return
        if isinstance(packet, ConnectAck):
            self._connect_ack(packet, addr, now)
            return
        if not self._rate_ok(addr[0], now):
            self._count("rate_limited")
            return
        if isinstance(packet, RegHello):
            self._send(
                RegChallenge(self.key, self._cookie(addr, packet.registrant_key, now), addr), addr
            )
        elif isinstance(packet, Register):
            self._register(packet, addr, now)
        elif isinstance(packet, Connect):
            self._connect(packet, addr, now)
        elif isinstance(packet, Sync):
            self._sync(packet, addr, now)

    def expire(self, now: float) -> None:
        """Drop silent registrations and stale pending connects (call every second)."""
        for key, reg in list(self._registrations.items()):
            if now - reg.seen > REGISTRATION_TTL:
                self._drop(key)
                self._count("expired")
        while self._pending:
            request_id, pending = next(iter(self._pending.items()))
            if pending.expires > now:
                break
            del self._pending[request_id]

    def status(self) -> dict[str, int]:
        out = dict(self.stats)
        out["registrations"] = len(self._registrations)
        out["pending_connects"] = len(self._pending)
        return out

    # ------------------------------------------------------------------ rates
    def _rate_ok(self, ip: str, now: float) -> bool:
        return self._rates.allow(ip, now)

    # ------------------------------------------------------------------ registration
    def _cookie(
        self, addr: Addr, registrant: bytes, now: float, *, epoch: int | None = None
    ) -> bytes:
        if epoch is None:
            epoch = int(now // COOKIE_EPOCH)
        return nacl.hash.blake2b(
            struct.pack("!q", epoch) + punch.pack_addr(addr) + registrant,
            digest_size=punch.COOKIE,
            key=self._secret,
            encoder=nacl.encoding.RawEncoder,
        )

    def _cookie_ok(self, addr: Addr, registrant: bytes, cookie: bytes, now: float) -> bool:
        epoch = int(now // COOKIE_EPOCH)
        return any(
            hmac.compare_digest(self._cookie(addr, registrant, now, epoch=e), cookie)
            for e in (epoch, epoch - 1)
        )

    def _register(self, packet: Register, addr: Addr, now: float) -> None:
        key = packet.registrant_key
        if not self._cookie_ok(addr, key, packet.cookie, now):
            self._count("bad_cookie")
            return  # no proof the address is real: no answer
        signed = Register.signed_part(self.key, key, packet.cookie)
        if not self._verify(key, signed, packet.signature):
            self._count("bad_signature")
            return
        if not self.may_register(key):
            self._count("refused_policy")
            self._answer(key, packet.cookie, addr, Status.REFUSED, "not a contact; no relay", b"")
            return
        existing = self._registrations.get(key)
        if existing is None:
            if len(self._registrations) >= self.limits.max_registrations:
                self._count("refused_full")
                self._answer(key, packet.cookie, addr, Status.FULL, "registrations full", b"")
                return
            if self._per_ip.get(addr[0], 0) >= self.limits.per_ip_registrations:
                self._count("refused_ip_full")
                self._answer(key, packet.cookie, addr, Status.FULL, "too many from your IP", b"")
                return
        else:
            self._drop(key)
        keepalive_key = nacl.utils.random(32)
        self._registrations[key] = _Registration(key, addr, keepalive_key, 0, now)
        self._per_ip[addr[0]] = self._per_ip.get(addr[0], 0) + 1
        self._count("registered")
        try:
            sealed = punch.seal(key, keepalive_key)
        except punch.PunchError:
            self._drop(key)
            return
        self._answer(key, packet.cookie, addr, Status.OK, "", sealed)

    def _answer(
        self, key: bytes, cookie: bytes, addr: Addr, status: Status, reason: str, sealed: bytes
    ) -> None:
        unsigned = Registered(
            self.key, status, KEEPALIVE_INTERVAL, addr, sealed, reason, bytes(punch.SIG)
        )
        signature = self._sign(unsigned.signed_part(key, cookie))
        self._send(
            Registered(self.key, status, KEEPALIVE_INTERVAL, addr, sealed, reason, signature),
            addr,
        )

    def _drop(self, key: bytes) -> None:
        reg = self._registrations.pop(key, None)
        if reg is None:
            return
        left = self._per_ip.get(reg.addr[0], 0) - 1
        if left > 0:
            self._per_ip[reg.addr[0]] = left
        else:
            self._per_ip.pop(reg.addr[0], None)

    def _keepalive(self, packet: Keepalive, addr: Addr, now: float) -> None:
        reg = self._registrations.get(packet.registrant_key)
        if reg is None:
            self._count("keepalive_unknown")
            return
        if packet.counter <= reg.counter or not punch.mac_ok(
            reg.keepalive_key,
            packet.mac,
            b"ka",
            packet.registrant_key,
            struct.pack("!Q", packet.counter),
        ):
            self._count("keepalive_bad")
            return
        reg.counter = packet.counter
        reg.seen = now
        if reg.addr != addr:
            # The registrant's NAT mapping (or network) changed: follow it.
            self._count("moved")
            old = reg.addr[0]
            left = self._per_ip.get(old, 0) - 1
            if left > 0:
                self._per_ip[old] = left
            else:
                self._per_ip.pop(old, None)
            self._per_ip[addr[0]] = self._per_ip.get(addr[0], 0) + 1
            reg.addr = addr
        counter = struct.pack("!Q", packet.counter)
        ack_mac = punch.mac(reg.keepalive_key, b"kack", counter, punch.pack_addr(addr))
        self._send(KeepaliveAck(packet.counter, addr, ack_mac), addr)

    # ------------------------------------------------------------------ connects
    def _connect(self, packet: Connect, addr: Addr, now: float) -> None:
        reg = self._registrations.get(packet.target_key)
        if reg is None:
            self._count("connect_unknown_target")
            self._send(
                ConnectReply(
                    packet.target_key, packet.request_id, Status.UNKNOWN_TARGET, None, b""
                ),
                addr,
            )
            return
        if len(packet.blob) < punch.SEALED_OVERHEAD + punch.SIG:
            self._count("connect_bad")
            return
        limits = self.limits
        if not self._target_rates.allow(packet.target_key, now) or not self._global.take(now):
            self._count("connect_rate_limited")
            self._send(
                ConnectReply(packet.target_key, packet.request_id, Status.FULL, None, b""), addr
            )
            return
        if packet.request_id in self._pending:
            return  # a retransmission: the first copy is on its way
        if len(self._pending) >= limits.max_pending:
            self.expire(now)
            if len(self._pending) >= limits.max_pending:
                self._count("connect_pending_full")
                self._send(
                    ConnectReply(packet.target_key, packet.request_id, Status.FULL, None, b""),
                    addr,
                )
                return
        self._pending[packet.request_id] = _Pending(
            addr, packet.target_key, reg.addr, now + PENDING_TTL
        )
        self._count("connect_forwarded")
        self._send(ConnectFwd(packet.dialer_key, packet.request_id, addr, packet.blob), reg.addr)

    def _connect_ack(self, packet: ConnectAck, addr: Addr, now: float) -> None:
        pending = self._pending.get(packet.request_id)
        if pending is None or pending.expires <= now or pending.answered:
            self._count("ack_unexpected")
            return
        reg = self._registrations.get(pending.target_key)
        if reg is None or reg.addr != addr:
            self._count("ack_unexpected")
            return  # only the registered target may answer its requests
        pending.answered = True
        pending.target_addr = addr
        self._send(
            ConnectReply(pending.target_key, packet.request_id, Status.OK, addr, packet.blob),
            pending.dialer_addr,
        )

    def _sync(self, packet: Sync, addr: Addr, now: float) -> None:
        pending = self._pending.get(packet.request_id)
        if (
            pending is None
            or pending.expires <= now
            or pending.dialer_addr != addr
            or pending.target_key != packet.target_key
        ):
            self._count("sync_unexpected")
            return
        self._send(packet, pending.target_addr)


# ---------------------------------------------------------------------- the registrant
@dataclass(frozen=True, slots=True)
class RegistrationEvent:
    """What a registration reports: ``kind`` is ``registered`` (with the address the
    rendezvous sees), ``moved`` (that address changed), ``refused`` (with a reason)
    or ``lost`` (the rendezvous stopped answering; registering again)."""

    kind: str
    observed: Addr | None = None
    reason: str = ""


@dataclass(slots=True)
class RegistrationClient:
    """One registration with one rendezvous node, from the registrant's side.

    ``rendezvous_key`` is None when only the address is known (a bootstrap node): the
    key in its first challenge is taken on trust and pinned for this registration.
    """

    our_key: bytes
    seed: bytes
    sign: Sign
    verify: Verify
    addr: Addr
    rendezvous_key: bytes | None = None
    state: str = "idle"
    observed: Addr | None = None
    interval: float = KEEPALIVE_INTERVAL
    refused: str = ""
    registered_at: float | None = None
    _pinned: bytes | None = None
    _cookie: bytes = b""
    _keepalive_key: bytes = b""
    _counter: int = 0
    _next_at: float = 0.0
    _last_heard: float = 0.0
    _attempts: int = 0
    _out: list[tuple[bytes, Addr]] = field(default_factory=list)
    _events: list[RegistrationEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pinned = self.rendezvous_key

    # ------------------------------------------------------------------ driving
    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> RegistrationEvent | None:
        return self._events.pop(0) if self._events else None

    def next_deadline(self) -> float:
        return self._next_at

    def start(self, now: float) -> None:
        self._hello(now)

    def _hello(self, now: float) -> None:
        self.state = "hello"
        self._attempts += 1
        self._out.append((punch.encode(RegHello(self.our_key)), self.addr))
        # Retry soon at first, then back off to a minute (a rendezvous that is down).
        self._next_at = now + min(60.0, 0.5 * 2 ** min(self._attempts, 7))

    def on_timer(self, now: float) -> None:
        if now < self._next_at:
            return
        if self.state in ("hello", "registering", "refused", "idle"):
            self._hello(now)
            return
        # registered: keepalive, unless the rendezvous went silent or it is time to renew
        if now - self._last_heard > 3 * self.interval + 1:
            self.state = "lost"
            self._events.append(RegistrationEvent("lost", self.observed))
            self._attempts = 0
            self._hello(now)
            return
        if self.registered_at is not None and now - self.registered_at > REREGISTER_AFTER:
            self._attempts = 0
            self._hello(now)
            self.state = "registered-renewing"
            return
        self._counter += 1
        counter = struct.pack("!Q", self._counter)
        packet = Keepalive(
            self.our_key,
            self._counter,
            punch.mac(self._keepalive_key, b"ka", self.our_key, counter),
        )
        self._out.append((punch.encode(packet), self.addr))
        self._next_at = now + self.interval

    def receive(self, packet: Packet, addr: Addr, now: float) -> bool:
        """A packet from ``addr``; True if it was for this registration."""
        if addr != self.addr:
            return False
        if isinstance(packet, RegChallenge):
            return self._challenge(packet, now)
        if isinstance(packet, Registered):
            return self._registered(packet, now)
        if isinstance(packet, KeepaliveAck):
            return self._keepalive_ack(packet, now)
        return False

    def _challenge(self, packet: RegChallenge, now: float) -> bool:
        if not self.state.startswith("hello") and self.state != "registered-renewing":
            return False
        if self._pinned is not None and packet.rendezvous_key != self._pinned:
            return False  # someone else answering in the rendezvous's name
        self.rendezvous_key = packet.rendezvous_key
        self._cookie = packet.cookie
        signature = self.sign(
            Register.signed_part(packet.rendezvous_key, self.our_key, packet.cookie)
        )
        self._out.append(
            (punch.encode(Register(self.our_key, packet.cookie, signature)), self.addr)
        )
        if self.state != "registered-renewing":
            self.state = "registering"
        return True

    def _registered(self, packet: Registered, now: float) -> bool:
        if self.rendezvous_key is None or packet.rendezvous_key != self.rendezvous_key:
            return False
        if not self.verify(
            packet.rendezvous_key, packet.signed_part(self.our_key, self._cookie), packet.signature
        ):
            return False
        if packet.status != Status.OK:
            self.state = "refused"
            self.refused = packet.reason or Status(packet.status).name.lower()
            self._events.append(RegistrationEvent("refused", packet.observed, self.refused))
            self._next_at = now + 300.0
            return True
        try:
            keepalive_key = punch.unseal(self.seed, packet.sealed_key)
        except punch.PunchError:
            return False
        if len(keepalive_key) != 32:
            return False
        self._pinned = packet.rendezvous_key
        self._keepalive_key = keepalive_key
        self._counter = 0
        self.interval = float(max(1, min(60, packet.interval)))
        self.state = "registered"
        self.registered_at = now
        self._last_heard = now
        self._attempts = 0
        self._next_at = now + self.interval
        self._note_observed(packet.observed, "registered")
        return True

    def _keepalive_ack(self, packet: KeepaliveAck, now: float) -> bool:
        if not self._keepalive_key or packet.counter > self._counter:
            return False
        counter = struct.pack("!Q", packet.counter)
        if not punch.mac_ok(
            self._keepalive_key, packet.mac, b"kack", counter, punch.pack_addr(packet.observed)
        ):
            return False
        self._last_heard = now
        self._note_observed(packet.observed, "moved")
        return True

    def _note_observed(self, observed: Addr, kind: str) -> None:
        """``registered`` is always reported; a keepalive only reports a change."""
        changed = self.observed is not None and observed != self.observed
        self.observed = observed
        if kind == "registered" or changed:
            self._events.append(RegistrationEvent("moved" if changed else kind, observed))

    @property
    def registered(self) -> bool:
        return self.state in ("registered", "registered-renewing")

    @property
    def keepalive_key(self) -> bytes:
        """The key this registration's packets are MACed with (empty until registered):
        relay channels through this rendezvous are requested under it too."""
        return self._keepalive_key

    @property
    def last_heard(self) -> float:
        """When the rendezvous last answered (``now`` of that packet)."""
        return self._last_heard

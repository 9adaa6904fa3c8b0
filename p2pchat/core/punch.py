"""Rendezvous and hole-punching packets, connect requests, and the probe plan (sans-IO).

These packets share the node's one UDP socket with QUIC and KRPC.  QUIC v1 sets the
fixed bit (0x40) in every first byte and KRPC starts with ``d`` (0x64), so the space
0x00-0x3F is free (RFC 9443 gives it to STUN; we keep 0x00-0x0F clear of our types
for that reason).  Every packet is::

    type (1 byte, 0x10-0x3F) || b"p2" || body

and every body has a fixed layout with explicit lengths: a parser never guesses, and
anything short, long or unknown raises :class:`PunchError` (a
``RemoteProtocolError``: drop the datagram, never crash).

Who may send what, and what each proves, is in ``docs/nat.md``; in short:

* **Registration** (registrant R, rendezvous V): ``RegHello`` (padded, so no reply is
  larger than its request) -> ``RegChallenge`` (a stateless cookie bound to R's
  source address, V's key, R's observed address) -> ``Register`` (R's Ed25519
  signature over V's key, R's key and the cookie: only the key's owner can register
  in its name, only from the address that got the cookie, only with this V) ->
  ``Registered`` (signed by V; carries a keepalive key sealed to R).  Keepalives are
  MACed with that key, so V can follow R to a new address and R can trust the
  observed address V reports back.
* **Connect** (dialer D, target T, through T's rendezvous V): D's
  :class:`ConnectBlob` is signed by D and sealed to T (V learns the two keys and
  nothing else); V forwards it with the address it saw D at; T answers with its own
  blob sealed to D; V adds the address it sees T at.  The two blobs' secrets give
  both sides a punch key that authenticates ``Sync`` and the probes.
* **Probes**: small MACed packets both sides send to each other's candidates; the
  first one that arrives (or its echo) names a working path, and D starts QUIC on it.

:class:`PunchPlan` decides who sends which probes when, including the birthday
probing that gets through an endpoint-dependent (random-port) NAT when the other
side's mapping is endpoint-independent.
"""

from __future__ import annotations

import enum
import functools
import hmac
import ipaddress
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.public
import nacl.utils

from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAGIC",
    "NAT_ED",
    "NAT_EI",
    "NAT_NONE",
    "NAT_UNKNOWN",
    "Addr",
    "ConnectBlob",
    "PunchError",
    "PunchPlan",
    "decode",
]

Addr = tuple[str, int]

MAGIC: Final = b"p2"
HEADER: Final = 3
KEY: Final = 32
SIG: Final = 64
COOKIE: Final = 16
MAC: Final = 16
REQUEST_ID: Final = 8
SECRET: Final = 32
#: Requests that a stranger can send unanswered-for are padded to this size, so that
#: the reply (challenge) is never larger: no amplification through a rendezvous.
MIN_REQUEST: Final = 128
MAX_PACKET: Final = 1200
MAX_CANDIDATES: Final = 12
MAX_REASON: Final = 48
SEALED_OVERHEAD: Final = 48  # crypto_box_seal: ephemeral key + MAC

NAT_UNKNOWN: Final = "unknown"
NAT_NONE: Final = "none"
NAT_EI: Final = "endpoint-independent"
NAT_ED: Final = "endpoint-dependent"
_NAT_CODES: Final = {NAT_UNKNOWN: 0, NAT_NONE: 1, NAT_EI: 2, NAT_ED: 3}
_NAT_NAMES: Final = {v: k for k, v in _NAT_CODES.items()}

_REGISTER_CONTEXT: Final = b"p2pchat/1 register\x00"
_REGISTERED_CONTEXT: Final = b"p2pchat/1 registered\x00"
_BLOB_CONTEXT: Final = b"p2pchat/1 connect\x00"


class PunchError(RemoteProtocolError):
    """A punch/rendezvous packet or blob is malformed, forged or out of place."""


class Type(enum.IntEnum):
    REG_HELLO = 0x10
    REG_CHALLENGE = 0x11
    REGISTER = 0x12
    REGISTERED = 0x13
    KEEPALIVE = 0x14
    KEEPALIVE_ACK = 0x15
    CONNECT = 0x18
    CONNECT_FWD = 0x19
    CONNECT_ACK = 0x1A
    CONNECT_REPLY = 0x1B
    SYNC = 0x1C
    PROBE = 0x20
    PROBE_ACK = 0x21


class Status(enum.IntEnum):
    """Why a rendezvous refused, in ``Registered`` and ``ConnectReply``."""

    OK = 0
    REFUSED = 1  # policy: not a contact of the rendezvous and it is no public relay
    FULL = 2  # a table or rate budget is exhausted: try later or elsewhere
    UNKNOWN_TARGET = 3  # nobody with that key is registered here
    BAD_REQUEST = 4


# --------------------------------------------------------------------- addresses
def pack_addr(addr: Addr) -> bytes:
    """``family (4 or 6) || ip || port``: 7 or 19 bytes."""
    try:
        ip = ipaddress.ip_address(addr[0].split("%")[0])
    except ValueError as exc:
        raise LocalProtocolError(f"not an IP address: {addr[0]!r}") from exc
    if not 0 <= addr[1] <= 0xFFFF:
        raise LocalProtocolError(f"bad port {addr[1]}")
    return bytes((ip.version,)) + ip.packed + struct.pack("!H", addr[1])


def unpack_addr(data: bytes, offset: int) -> tuple[Addr, int]:
    if offset >= len(data):
        raise PunchError("address missing")
    family = data[offset]
    size = {4: 4, 6: 16}.get(family)
    if size is None:
        raise PunchError("bad address family")
    end = offset + 1 + size + 2
    if end > len(data):
        raise PunchError("address truncated")
    ip = ipaddress.ip_address(data[offset + 1 : offset + 1 + size])
    (port,) = struct.unpack("!H", data[end - 2 : end])
    if ip.is_unspecified or ip.is_multicast or port == 0:
        raise PunchError("unusable address")
    return (str(ip), port), end


def nat_code(kind: str) -> int:
    return _NAT_CODES.get(kind, 0)


def nat_name(code: int) -> str:
    return _NAT_NAMES.get(code, NAT_UNKNOWN)


# --------------------------------------------------------------------- packets
@dataclass(frozen=True, slots=True)
class RegHello:
    registrant_key: bytes


@dataclass(frozen=True, slots=True)
class RegChallenge:
    rendezvous_key: bytes
    cookie: bytes
    observed: Addr


@dataclass(frozen=True, slots=True)
class Register:
    registrant_key: bytes
    cookie: bytes
    signature: bytes

    @staticmethod
    def signed_part(rendezvous_key: bytes, registrant_key: bytes, cookie: bytes) -> bytes:
        return _REGISTER_CONTEXT + rendezvous_key + registrant_key + cookie


@dataclass(frozen=True, slots=True)
class Registered:
    """V's answer to ``Register``; ``sealed_key`` (the keepalive key, sealed to R) is
    empty unless ``status`` is OK.  Signed by V over everything, bound to R's cookie."""

    rendezvous_key: bytes
    status: int
    interval: int
    observed: Addr
    sealed_key: bytes
    reason: str
    signature: bytes

    def signed_part(self, registrant_key: bytes, cookie: bytes) -> bytes:
        return (
            _REGISTERED_CONTEXT
            + self.rendezvous_key
            + registrant_key
            + cookie
            + _registered_body(self)
        )


@dataclass(frozen=True, slots=True)
class Keepalive:
    registrant_key: bytes
    counter: int
    mac: bytes


@dataclass(frozen=True, slots=True)
class KeepaliveAck:
    counter: int
    observed: Addr
    mac: bytes


@dataclass(frozen=True, slots=True)
class Connect:
    target_key: bytes
    dialer_key: bytes
    request_id: bytes
    blob: bytes


@dataclass(frozen=True, slots=True)
class ConnectFwd:
    dialer_key: bytes
    request_id: bytes
    observed: Addr
    blob: bytes


@dataclass(frozen=True, slots=True)
class ConnectAck:
    dialer_key: bytes
    request_id: bytes
    blob: bytes


@dataclass(frozen=True, slots=True)
class ConnectReply:
    target_key: bytes
    request_id: bytes
    status: int
    observed: Addr | None
    blob: bytes


@dataclass(frozen=True, slots=True)
class Sync:
    target_key: bytes
    request_id: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class Probe:
    request_id: bytes
    from_dialer: bool
    seq: int
    mac: bytes
    ack: bool = False


Packet = (
    RegHello
    | RegChallenge
    | Register
    | Registered
    | Keepalive
    | KeepaliveAck
    | Connect
    | ConnectFwd
    | ConnectAck
    | ConnectReply
    | Sync
    | Probe
)


def _head(kind: Type) -> bytes:
    return bytes((kind,)) + MAGIC


def _pad(data: bytes) -> bytes:
    return data + bytes(max(0, MIN_REQUEST - len(data)))


def _check_len(value: bytes, size: int, what: str) -> None:
    if len(value) != size:
        raise LocalProtocolError(f"{what} must be {size} bytes")


def _registered_body(p: Registered) -> bytes:
    reason = p.reason.encode("ascii", "replace")[:MAX_REASON]
    return (
        struct.pack("!BH", p.status, p.interval)
        + pack_addr(p.observed)
        + struct.pack("!B", len(p.sealed_key))
        + p.sealed_key
        + struct.pack("!B", len(reason))
        + reason
    )


def encode(packet: Packet) -> bytes:
    """The datagram for ``packet`` (raises ``LocalProtocolError`` on bad fields)."""
    if isinstance(packet, RegHello):
        _check_len(packet.registrant_key, KEY, "key")
        return _pad(_head(Type.REG_HELLO) + packet.registrant_key)
    if isinstance(packet, RegChallenge):
        _check_len(packet.cookie, COOKIE, "cookie")
        return (
            _head(Type.REG_CHALLENGE)
            + packet.rendezvous_key
            + packet.cookie
            + pack_addr(packet.observed)
        )
    if isinstance(packet, Register):
        _check_len(packet.signature, SIG, "signature")
        return _pad(_head(Type.REGISTER) + packet.registrant_key + packet.cookie + packet.signature)
    if isinstance(packet, Registered):
        _check_len(packet.signature, SIG, "signature")
        return (
            _head(Type.REGISTERED)
            + packet.rendezvous_key
            + _registered_body(packet)
            + packet.signature
        )
    if isinstance(packet, Keepalive):
        return (
            _head(Type.KEEPALIVE)
            + packet.registrant_key
            + struct.pack("!Q", packet.counter)
            + packet.mac
        )
    if isinstance(packet, KeepaliveAck):
        return (
            _head(Type.KEEPALIVE_ACK)
            + struct.pack("!Q", packet.counter)
            + pack_addr(packet.observed)
            + packet.mac
        )
    if isinstance(packet, Connect):
        return _bounded(
            _head(Type.CONNECT)
            + packet.target_key
            + packet.dialer_key
            + packet.request_id
            + packet.blob
        )
    if isinstance(packet, ConnectFwd):
        return _bounded(
            _head(Type.CONNECT_FWD)
            + packet.dialer_key
            + packet.request_id
            + pack_addr(packet.observed)
            + packet.blob
        )
    if isinstance(packet, ConnectAck):
        return _bounded(
            _head(Type.CONNECT_ACK) + packet.dialer_key + packet.request_id + packet.blob
        )
    if isinstance(packet, ConnectReply):
        observed = pack_addr(packet.observed) if packet.observed is not None else b"\x00"
        return _bounded(
            _head(Type.CONNECT_REPLY)
            + packet.target_key
            + packet.request_id
            + bytes((packet.status,))
            + observed
            + packet.blob
        )
    if isinstance(packet, Sync):
        return _head(Type.SYNC) + packet.target_key + packet.request_id + packet.mac
    if isinstance(packet, Probe):
        kind = Type.PROBE_ACK if packet.ack else Type.PROBE
        return (
            _head(kind)
            + packet.request_id
            + struct.pack("!BH", 1 if packet.from_dialer else 0, packet.seq)
            + packet.mac
        )
    raise LocalProtocolError(f"cannot encode {packet!r}")


def _bounded(data: bytes) -> bytes:
    if len(data) > MAX_PACKET:
        raise LocalProtocolError("punch packet too large")
    return data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = HEADER

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise PunchError("packet truncated")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def uint(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        (value,) = struct.unpack(fmt, self.take(size))
        return int(value)

    def addr(self) -> Addr:
        addr, self.pos = unpack_addr(self.data, self.pos)
        return addr

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def end(self, *, padded: bool = False) -> None:
        rest = self.data[self.pos :]
        if rest and not (padded and not any(rest)):
            raise PunchError("trailing bytes")


def decode(data: bytes) -> Packet:
    """Parse one datagram of the punch space; ``PunchError`` if it is not valid."""
    if len(data) < HEADER or data[1:HEADER] != MAGIC:
        raise PunchError("not a p2pchat punch packet")
    if len(data) > MAX_PACKET:
        raise PunchError("punch packet too large")
    try:
        kind = Type(data[0])
    except ValueError:
        raise PunchError(f"unknown punch packet type 0x{data[0]:02x}") from None
    r = _Reader(data)
    packet: Packet
    if kind is Type.REG_HELLO:
        if len(data) < MIN_REQUEST:
            raise PunchError("registration hello not padded")
        packet = RegHello(r.take(KEY))
        r.end(padded=True)
    elif kind is Type.REG_CHALLENGE:
        packet = RegChallenge(r.take(KEY), r.take(COOKIE), r.addr())
        r.end()
    elif kind is Type.REGISTER:
        if len(data) < MIN_REQUEST:
            raise PunchError("registration not padded")
        packet = Register(r.take(KEY), r.take(COOKIE), r.take(SIG))
        r.end(padded=True)
    elif kind is Type.REGISTERED:
        key = r.take(KEY)
        status, interval = r.uint("!B"), r.uint("!H")
        observed = r.addr()
        sealed = r.take(r.uint("!B"))
        reason_raw = r.take(r.uint("!B"))
        if len(reason_raw) > MAX_REASON or not reason_raw.isascii():
            raise PunchError("bad reason")
        packet = Registered(
            key, status, interval, observed, sealed, reason_raw.decode("ascii"), r.take(SIG)
        )
        r.end()
    elif kind is Type.KEEPALIVE:
        packet = Keepalive(r.take(KEY), r.uint("!Q"), r.take(MAC))
        r.end()
    elif kind is Type.KEEPALIVE_ACK:
        packet = KeepaliveAck(r.uint("!Q"), r.addr(), r.take(MAC))
        r.end()
    elif kind is Type.CONNECT:
        packet = Connect(r.take(KEY), r.take(KEY), r.take(REQUEST_ID), r.rest())
    elif kind is Type.CONNECT_FWD:
        packet = ConnectFwd(r.take(KEY), r.take(REQUEST_ID), r.addr(), r.rest())
    elif kind is Type.CONNECT_ACK:
        packet = ConnectAck(r.take(KEY), r.take(REQUEST_ID), r.rest())
    elif kind is Type.CONNECT_REPLY:
        target, request_id, status = r.take(KEY), r.take(REQUEST_ID), r.uint("!B")
        seen: Addr | None = None
        if r.pos < len(data) and data[r.pos] == 0:
            r.take(1)
        else:
            seen = r.addr()
        packet = ConnectReply(target, request_id, status, seen, r.rest())
    elif kind is Type.SYNC:
        packet = Sync(r.take(KEY), r.take(REQUEST_ID), r.take(MAC))
        r.end()
    else:  # PROBE, PROBE_ACK
        request_id = r.take(REQUEST_ID)
        role, seq = r.uint("!B"), r.uint("!H")
        if role > 1:
            raise PunchError("bad probe role")
        packet = Probe(request_id, role == 1, seq, r.take(MAC), ack=kind is Type.PROBE_ACK)
        r.end()
    return packet


# --------------------------------------------------------------------- crypto helpers
def curve_public(ed25519_key: bytes) -> nacl.public.PublicKey:
    """The X25519 key of an Ed25519 identity key (libsodium's birational map)."""
    try:
        return nacl.public.PublicKey(
            nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_key)
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise PunchError("not a usable identity key") from exc


def curve_private(seed: bytes) -> nacl.public.PrivateKey:
    sk = nacl.bindings.crypto_sign_seed_keypair(seed)[1]
    return nacl.public.PrivateKey(nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(sk))


def seal(recipient_ed25519: bytes, plaintext: bytes) -> bytes:
    return bytes(nacl.public.SealedBox(curve_public(recipient_ed25519)).encrypt(plaintext))


def unseal(seed: bytes, sealed: bytes) -> bytes:
    try:
        return bytes(nacl.public.SealedBox(curve_private(seed)).decrypt(sealed))
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise PunchError("sealed box does not open") from exc


def mac(key: bytes, *parts: bytes) -> bytes:
    return nacl.hash.blake2b(
        b"".join(parts), digest_size=MAC, key=key, encoder=nacl.encoding.RawEncoder
    )


def mac_ok(key: bytes, expected: bytes, *parts: bytes) -> bool:
    return hmac.compare_digest(mac(key, *parts), expected)


def punch_key(request_id: bytes, dialer_secret: bytes, target_secret: bytes) -> bytes:
    """The key both sides derive once they have opened each other's blob."""
    return nacl.hash.blake2b(
        dialer_secret + target_secret + request_id,
        digest_size=32,
        person=b"p2pchat-punch",
        encoder=nacl.encoding.RawEncoder,
    )


# --------------------------------------------------------------------- connect blobs
class BlobKind(enum.IntEnum):
    REQUEST = 0
    ACCEPT = 1
    DECLINE = 2


@dataclass(frozen=True, slots=True)
class ConnectBlob:
    """What D tells T (``REQUEST``) and T answers (``ACCEPT``/``DECLINE``), signed by
    the sender and sealed to the recipient.  ``timestamp`` (Unix ms) and the
    ``request_id`` let the recipient refuse stale or replayed requests."""

    kind: BlobKind
    dialer_key: bytes
    target_key: bytes
    request_id: bytes
    timestamp: int
    secret: bytes
    nat: str
    candidates: tuple[Addr, ...]

    def body(self) -> bytes:
        if len(self.candidates) > MAX_CANDIDATES:
            raise LocalProtocolError("too many candidates")
        for value, size in ((self.dialer_key, KEY), (self.target_key, KEY)):
            _check_len(value, size, "key")
        _check_len(self.request_id, REQUEST_ID, "request id")
        _check_len(self.secret, SECRET, "secret")
        return (
            struct.pack("!BB", 1, self.kind)
            + self.dialer_key
            + self.target_key
            + self.request_id
            + struct.pack("!Q", self.timestamp)
            + self.secret
            + struct.pack("!BB", nat_code(self.nat), len(self.candidates))
            + b"".join(pack_addr(a) for a in self.candidates)
        )

    def seal(self, sign: Callable[[bytes], bytes], recipient: bytes) -> bytes:
        body = self.body()
        return seal(recipient, body + sign(_BLOB_CONTEXT + body))

    @property
    def sender(self) -> bytes:
        return self.dialer_key if self.kind is BlobKind.REQUEST else self.target_key

    @classmethod
    def open(
        cls,
        sealed: bytes,
        seed: bytes,
        verify: Callable[[bytes, bytes, bytes], bool],
    ) -> ConnectBlob:
        """Unseal with our identity seed and check the sender's signature."""
        data = unseal(seed, sealed)
        if len(data) < 2 + 2 * KEY + REQUEST_ID + 8 + SECRET + 2 + SIG:
            raise PunchError("connect blob too short")
        body, signature = data[:-SIG], data[-SIG:]
        version, kind_code = body[0], body[1]
        if version != 1:
            raise PunchError("unknown connect blob version")
        try:
            kind = BlobKind(kind_code)
        except ValueError:
            raise PunchError("unknown connect blob kind") from None
        pos = 2
        dialer, target = body[pos : pos + KEY], body[pos + KEY : pos + 2 * KEY]
        pos += 2 * KEY
        request_id = body[pos : pos + REQUEST_ID]
        pos += REQUEST_ID
        (timestamp,) = struct.unpack("!Q", body[pos : pos + 8])
        pos += 8
        secret = body[pos : pos + SECRET]
        pos += SECRET
        nat, count = body[pos], body[pos + 1]
        pos += 2
        if count > MAX_CANDIDATES:
            raise PunchError("too many candidates")
        candidates = []
        for _ in range(count):
            addr, pos = unpack_addr(body, pos)
            candidates.append(addr)
        if pos != len(body):
            raise PunchError("trailing bytes in connect blob")
        blob = cls(
            kind, dialer, target, request_id, timestamp, secret, nat_name(nat), tuple(candidates)
        )
        if not verify(blob.sender, _BLOB_CONTEXT + body, signature):
            raise PunchError("connect blob signature does not verify")
        return blob


def new_request_id() -> bytes:
    return nacl.utils.random(REQUEST_ID)


def new_secret() -> bytes:
    return nacl.utils.random(SECRET)


# --------------------------------------------------------------------- the probe plan
class Mode(enum.Enum):
    """How one side probes, given both NAT kinds (see ``choose_modes``)."""

    DIRECT = "direct"
    """Probe the peer's candidates from the main socket, in rounds."""
    SPRAY = "spray"
    """DIRECT, plus probes to many random ports of the peer's public IPs: the peer
    sits behind an endpoint-dependent NAT and listens on many sockets."""
    LISTEN = "listen"
    """We sit behind an endpoint-dependent NAT: open many extra sockets, each probing
    the peer's public addresses, so one of their mappings meets the peer's spray."""


def choose_modes(dialer_nat: str, target_nat: str) -> tuple[Mode, Mode]:
    """(dialer's mode, target's mode).  Both sides compute this from the two kinds in
    the blobs, so they agree without another round trip.  Random x random is left to
    relays; here both just probe directly (it works if either guess was wrong)."""
    hard = {dialer_nat == NAT_ED, target_nat == NAT_ED}
    if hard == {True}:
        return Mode.DIRECT, Mode.DIRECT
    if dialer_nat == NAT_ED and target_nat in (NAT_EI, NAT_UNKNOWN):
        return Mode.LISTEN, Mode.SPRAY
    if target_nat == NAT_ED and dialer_nat in (NAT_EI, NAT_UNKNOWN):
        return Mode.SPRAY, Mode.LISTEN
    return Mode.DIRECT, Mode.DIRECT


#: When DIRECT rounds go out, relative to the punch start: dense first (most paths
#: open within a round trip), then sparse, up to 10 s.
ROUNDS: Final = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0)
#: Birthday probing (RFC 4787 NATs with random ports): the listening side opens
#: LISTEN_SOCKETS mappings, the spraying side sends SPRAY_BUDGET probes to random
#: ports at SPRAY_RATE per second.  With n mappings among P ports and m probes the
#: chance of a hit is 1 - (1 - n/P)^m: 256 and 2,500 over 64,512 ports give 99.995 %.
LISTEN_SOCKETS: Final = 256
SPRAY_RATE: Final = 1000.0
SPRAY_BUDGET: Final = 2500
SPRAY_PORTS: Final = (1024, 65535)
#: A listening socket re-sends its probe this often, so its mapping stays open while
#: the spray runs (UDP mappings last at least 30 s on the NATs we know of).
LISTEN_REFRESH: Final = 2.0
DURATION: Final = 12.0


@dataclass(frozen=True, slots=True)
class Send:
    """Send one probe to ``addr`` from ``socket`` (None: the main socket, else the
    index of an extra listening socket)."""

    addr: Addr
    socket: int | None = None


@dataclass(slots=True)
class PunchPlan:
    """When to send which probes, for one side of one punch (sans-IO).

    ``peers`` are the other side's candidates (its reflexive addresses first, then
    its LAN addresses).  ``observed`` is where the rendezvous saw the other side:
    birthday probing (thousands of probes) goes only there, never to an address a
    peer merely claims, so nobody can aim our probes at a third party.  Drive it with
    ``due(now)`` until ``next_deadline()`` returns ``None``, or stop once a path is found.
    """

    mode: Mode
    peers: tuple[Addr, ...]
    start: float
    rng: random.Random
    observed: Addr | None = None
    listen_sockets: int = 0
    _round: int = 0
    _sprayed: int = 0
    _spray_ports: list[int] = field(default_factory=list)
    _listen_round: int = 0

    def __post_init__(self) -> None:
        self.peers = tuple(dict.fromkeys(self.peers))[:MAX_CANDIDATES]
        if self.mode is not Mode.DIRECT and self.observed is None:
            self.mode = Mode.DIRECT  # nothing we may aim birthday probes at
        if self.mode is Mode.SPRAY:
            low, high = SPRAY_PORTS
            known = {p for _, p in self.peers}
            ports = self.rng.sample(range(low, high + 1), SPRAY_BUDGET)
            self._spray_ports = [p for p in ports if p not in known]
        if self.mode is Mode.LISTEN and self.listen_sockets <= 0:
            self.listen_sockets = LISTEN_SOCKETS

    @property
    def end(self) -> float:
        return self.start + DURATION

    def next_deadline(self) -> float | None:
        times = []
        if self._round < len(ROUNDS):
            times.append(self.start + ROUNDS[self._round])
        if self.mode is Mode.SPRAY and self._sprayed < len(self._spray_ports):
            times.append(self.start + self._sprayed / SPRAY_RATE)
        if self.mode is Mode.LISTEN:
            at = self.start + self._listen_round * LISTEN_REFRESH
            if at < self.end:
                times.append(at)
        return min(times) if times else None

    def due(self, now: float) -> list[Send]:
        """Every probe whose time has come."""
        out: list[Send] = []
        while self._round < len(ROUNDS) and self.start + ROUNDS[self._round] <= now:
            self._round += 1
            out.extend(Send(addr) for addr in self.peers)
        if self.mode is Mode.SPRAY and self.observed is not None:
            due = min(len(self._spray_ports), int((now - self.start) * SPRAY_RATE + 1e-6) + 1)
            while self._sprayed < due:
                out.append(Send((self.observed[0], self._spray_ports[self._sprayed])))
                self._sprayed += 1
        if self.mode is Mode.LISTEN and self.observed is not None:
            while (
                self.start + self._listen_round * LISTEN_REFRESH <= now
                and self.start + self._listen_round * LISTEN_REFRESH < self.end
            ):
                self._listen_round += 1
                out.extend(Send(self.observed, index) for index in range(self.listen_sockets))
        return out

    @property
    def probes_planned(self) -> int:
        listen = 0
        if self.mode is Mode.LISTEN:
            listen = self.listen_sockets * int(DURATION // LISTEN_REFRESH)
        return len(ROUNDS) * len(self.peers) + len(self._spray_ports) + listen


@functools.lru_cache(maxsize=1024)
def is_public_ip(ip: str) -> bool:
    """Worth birthday probing: a global address.  In tests and labs, TEST-NET
    ranges count too (they stand for the Internet there).

    Remembered (a bounded cache): the node's dial loop asks for every contact's
    address each second, and ``ipaddress``'s range checks are slow."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified:
        return False
    return addr.is_global or not addr.is_private or _is_documentation(addr)


_DOC_NETS: Final = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)


def _is_documentation(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(addr in net for net in _DOC_NETS)


def order_candidates(candidates: Sequence[Addr]) -> tuple[Addr, ...]:
    """Public addresses first, then the rest, without repeats."""
    unique = list(dict.fromkeys(candidates))
    return tuple(sorted(unique, key=lambda a: 0 if is_public_ip(a[0]) else 1))[:MAX_CANDIDATES]

"""p2pchat peer records: where to reach a user, published as a BEP 44 mutable item.

The item is keyed by the user's Ed25519 identity key (the same key as the peer ID), so
anyone who knows a peer ID can find the record and nobody else can forge it. The salt
namespaces it to p2pchat, and ``seq`` is the publication time in Unix seconds, so a newer
record always wins and storage nodes refuse to roll it back (BEP 44 error 302).

A record is public: anyone who knows (or guesses) a peer ID can read the addresses,
rendezvous nodes, relays and NAT kind in it. ``docs/dht.md`` spells out what that
reveals and documents the format.

Decoding is strict because the bytes come from arbitrary DHT nodes: a record that is too
large, has the wrong types or too many entries is rejected whole.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ..core.errors import RemoteProtocolError
from .bencode import BencodeError, bdecode, bencode
from .krpc import Addr, compact_addr, parse_compact_addr
from .reflexive import NAT_ED, NAT_EI, NAT_KINDS, NAT_UNKNOWN
from .storage import MAX_VALUE_SIZE, Item, mutable_target

__all__ = [
    "DISCOVERY_INFO_HASH",
    "MAX_ADDRESSES",
    "MAX_LOCAL",
    "MAX_RELAYS",
    "MAX_RENDEZVOUS",
    "NAT_KINDS",
    "PEER_RECORD_SALT",
    "PeerRecord",
    "RecordError",
    "Signer",
    "make_record_item",
    "read_record_item",
    "record_target",
]

PEER_RECORD_SALT: Final = b"p2pchat/1 peer"
#: The info-hash p2pchat nodes announce under so they can find one another.
DISCOVERY_INFO_HASH: Final = hashlib.sha1(b"p2pchat/1 discovery").digest()
#: 2 added ``l`` (LAN addresses) and ``z`` (rendezvous nodes); version 1 records parse.
RECORD_VERSION: Final = 2
MAX_ADDRESSES: Final = 8
MAX_LOCAL: Final = 8
MAX_RELAYS: Final = 4
MAX_RENDEZVOUS: Final = 4
KEY_LENGTH: Final = 32
#: NAT kinds as version 1 records spelled them.
_LEGACY_NAT: Final = {"consistent": NAT_EI, "random": NAT_ED}


class RecordError(RemoteProtocolError):
    """A peer record (or the item carrying it) is invalid."""


class Signer(Protocol):
    """What publishing needs from an identity (``p2pchat.identity.Identity`` fits)."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """Contact hints for one identity.

    ``addresses``: reflexive (public) addresses, the best first; ``local``: the host's
    own interface addresses, for peers on the same LAN; ``rendezvous``: (Ed25519 key,
    address) of nodes that forward connect requests to us; ``nat``: one of
    :data:`~p2pchat.dht.reflexive.NAT_KINDS`.
    """

    addresses: tuple[Addr, ...]
    relays: tuple[Addr, ...] = ()
    nat: str = NAT_UNKNOWN
    local: tuple[Addr, ...] = ()
    rendezvous: tuple[tuple[bytes, Addr], ...] = ()
    version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        if (
            len(self.addresses) > MAX_ADDRESSES
            or len(self.local) > MAX_LOCAL
            or len(self.relays) > MAX_RELAYS
            or len(self.rendezvous) > MAX_RENDEZVOUS
        ):
            raise ValueError("too many addresses in a peer record")
        if self.nat not in NAT_KINDS:
            raise ValueError(f"unknown NAT kind {self.nat!r}")
        if any(len(key) != KEY_LENGTH for key, _ in self.rendezvous):
            raise ValueError("a rendezvous key is 32 bytes")

    def dial_addresses(self) -> tuple[Addr, ...]:
        """Everything worth dialling, public addresses first, without repeats."""
        return tuple(dict.fromkeys((*self.addresses, *self.local)))

    def encode(self) -> bytes:
        """The bencoded ``v`` of the BEP 44 item."""
        doc: dict[bytes, Any] = {
            b"a": [compact_addr(a) for a in self.addresses],
            b"n": self.nat.encode(),
            b"ver": self.version,
        }
        if self.local:
            doc[b"l"] = [compact_addr(a) for a in self.local]
        if self.relays:
            doc[b"r"] = [compact_addr(a) for a in self.relays]
        if self.rendezvous:
            doc[b"z"] = [key + compact_addr(a) for key, a in self.rendezvous]
        value = bencode(doc)
        if len(value) > MAX_VALUE_SIZE:
            raise ValueError("peer record does not fit in a BEP 44 item")
        return value

    @classmethod
    def decode(cls, value: bytes) -> PeerRecord:
        if len(value) > MAX_VALUE_SIZE:
            raise RecordError("peer record too large")
        try:
            doc = bdecode(value)
        except BencodeError as exc:
            raise RecordError(f"peer record is not bencode: {exc}") from None
        if not isinstance(doc, dict):
            raise RecordError("peer record is not a dictionary")
        version = doc.get(b"ver")
        if not isinstance(version, int) or version < 1:
            raise RecordError("peer record has no valid version")
        nat_raw = doc.get(b"n", NAT_UNKNOWN.encode())
        if not isinstance(nat_raw, bytes):
            raise RecordError("NAT kind is not a string")
        nat = nat_raw.decode("ascii", "replace")
        nat = _LEGACY_NAT.get(nat, nat)
        return cls(
            addresses=_addr_list(doc.get(b"a", []), MAX_ADDRESSES),
            relays=_addr_list(doc.get(b"r", []), MAX_RELAYS),
            # Kinds added by later versions read as "unknown" rather than failing.
            nat=nat if nat in NAT_KINDS else NAT_UNKNOWN,
            local=_addr_list(doc.get(b"l", []), MAX_LOCAL),
            rendezvous=_rendezvous_list(doc.get(b"z", [])),
            version=version,
        )


def _addr_list(raw: Any, limit: int) -> tuple[Addr, ...]:
    if not isinstance(raw, list) or len(raw) > limit:
        raise RecordError("address list missing, malformed or too long")
    out: list[Addr] = []
    for entry in raw:
        addr = parse_compact_addr(entry) if isinstance(entry, bytes) else None
        if addr is None:
            raise RecordError("bad compact address in peer record")
        out.append(addr)
    return tuple(out)


def _rendezvous_list(raw: Any) -> tuple[tuple[bytes, Addr], ...]:
    if not isinstance(raw, list) or len(raw) > MAX_RENDEZVOUS:
        raise RecordError("rendezvous list malformed or too long")
    out: list[tuple[bytes, Addr]] = []
    for entry in raw:
        addr = None
        if isinstance(entry, bytes) and len(entry) > KEY_LENGTH:
            addr = parse_compact_addr(entry[KEY_LENGTH:])
        if addr is None:
            raise RecordError("bad rendezvous entry in peer record")
        out.append((entry[:KEY_LENGTH], addr))
    return tuple(out)


def record_target(public_key: bytes) -> bytes:
    """Where the record of ``public_key`` lives in the DHT."""
    return mutable_target(public_key, PEER_RECORD_SALT)


def make_record_item(
    signer: Signer, record: PeerRecord, now: float, *, previous_seq: int | None = None
) -> Item:
    """Sign ``record`` with ``seq`` = Unix time, kept above ``previous_seq`` so a clock
    that went backwards cannot produce a record the DHT refuses as stale."""
    seq = int(now)
    if previous_seq is not None and seq <= previous_seq:
        seq = previous_seq + 1
    return Item.sign(signer.sign, signer.public_key, record.encode(), seq, PEER_RECORD_SALT)


def read_record_item(item: Item, public_key: bytes) -> PeerRecord:
    """Check that ``item`` is ``public_key``'s signed p2pchat record and decode it."""
    if item.key != public_key or item.salt != PEER_RECORD_SALT:
        raise RecordError("item is not this identity's peer record")
    if not item.verify():
        raise RecordError("peer record signature does not verify")
    return PeerRecord.decode(item.value)

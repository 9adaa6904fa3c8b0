"""What remote nodes can make us store: peers (BEP 5), items (BEP 44), and the tokens that
gate both.

Every structure here is bounded twice: per key or per source (so one requester cannot
crowd out everyone else) and in total (so the sum of all requesters cannot exhaust
memory). Entries expire on their own; the core calls :meth:`expire` from its timer.

Tokens follow BEP 5: a write is only accepted with a token we handed to the *same IP*
recently, which stops a node from announcing somebody else's address. The token is a
keyed hash of the requester's IP under a secret that rotates every five minutes; the
previous secret stays valid, so a token lives 5-10 minutes. The secret comes from
``os.urandom``: a predictable secret would let anyone forge tokens.

BEP 44 items are verified here, not in the parser, because each rule has its own error
code the requester should get back (205, 206, 207, 301, 302).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import nacl.exceptions
import nacl.signing

from ..core.errors import RemoteProtocolError
from .krpc import (
    ERROR_CAS_MISMATCH,
    ERROR_INVALID_SIGNATURE,
    ERROR_SALT_TOO_BIG,
    ERROR_SEQ_TOO_OLD,
    ERROR_VALUE_TOO_BIG,
    Addr,
    compact_addr,
)

__all__ = [
    "ITEM_LIFETIME",
    "MAX_SALT_SIZE",
    "MAX_VALUE_SIZE",
    "PEER_LIFETIME",
    "TOKEN_ROTATION",
    "Item",
    "ItemStore",
    "PeerStore",
    "PutRejected",
    "TokenManager",
    "immutable_target",
    "mutable_target",
    "signature_buffer",
    "verify_signature",
]

MAX_VALUE_SIZE: Final = 1000
MAX_SALT_SIZE: Final = 64
ITEM_LIFETIME: Final = 2 * 3600.0
PEER_LIFETIME: Final = 30 * 60.0
TOKEN_ROTATION: Final = 5 * 60.0
TOKEN_LENGTH: Final = 8


# --------------------------------------------------------------------------- BEP 44 items


def signature_buffer(salt: bytes, seq: int, value: bytes) -> bytes:
    """The exact bytes a BEP 44 mutable item's signature covers (``value`` is bencoded)."""
    prefix = b"4:salt%d:%s" % (len(salt), salt) if salt else b""
    return prefix + b"3:seqi%de1:v" % seq + value


def mutable_target(key: bytes, salt: bytes = b"") -> bytes:
    return hashlib.sha1(key + salt).digest()


def immutable_target(value: bytes) -> bytes:
    return hashlib.sha1(value).digest()


def verify_signature(key: bytes, salt: bytes, seq: int, value: bytes, signature: bytes) -> bool:
    if len(key) != 32 or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(key).verify(signature_buffer(salt, seq, value), signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Item:
    """A BEP 44 item; ``value`` is the bencoded ``v``. Mutable items carry key/seq/sig."""

    value: bytes
    key: bytes | None = None
    signature: bytes | None = None
    seq: int | None = None
    salt: bytes = b""

    @property
    def mutable(self) -> bool:
        return self.key is not None

    @property
    def target(self) -> bytes:
        if self.key is not None:
            return mutable_target(self.key, self.salt)
        return immutable_target(self.value)

    def verify(self) -> bool:
        """Whether the signature (mutable) holds; immutable items are self-certifying."""
        if self.key is None:
            return True
        if self.signature is None or self.seq is None:
            return False
        return verify_signature(self.key, self.salt, self.seq, self.value, self.signature)

    @classmethod
    def sign(
        cls,
        sign: Callable[[bytes], bytes],
        public_key: bytes,
        value: bytes,
        seq: int,
        salt: bytes = b"",
    ) -> Item:
        """Build a mutable item with ``sign`` (e.g. ``Identity.sign``)."""
        return cls(
            value=value,
            key=public_key,
            signature=sign(signature_buffer(salt, seq, value)),
            seq=seq,
            salt=salt,
        )


class PutRejected(RemoteProtocolError):
    """A put broke a BEP 44 rule; ``code`` is the KRPC error to answer with."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def check_item(item: Item) -> None:
    """Apply BEP 44's size and signature rules, raising :class:`PutRejected`."""
    if len(item.value) > MAX_VALUE_SIZE:
        raise PutRejected(ERROR_VALUE_TOO_BIG, "message (v field) too big")
    if len(item.salt) > MAX_SALT_SIZE:
        raise PutRejected(ERROR_SALT_TOO_BIG, "salt (salt field) too big")
    if not item.verify():
        raise PutRejected(ERROR_INVALID_SIGNATURE, "invalid signature")


@dataclass(slots=True)
class _StoredItem:
    item: Item
    expires: float
    source: str


class ItemStore:
    """Bounded BEP 44 storage, in total and per source IP."""

    def __init__(
        self,
        *,
        max_items: int = 1000,
        max_per_source: int = 16,
        lifetime: float = ITEM_LIFETIME,
    ) -> None:
        self.max_items = max_items
        self.max_per_source = max_per_source
        self.lifetime = lifetime
        self._items: dict[bytes, _StoredItem] = {}
        self._per_source: dict[str, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, target: bytes, now: float) -> Item | None:
        stored = self._items.get(target)
        if stored is None or stored.expires <= now:
            return None
        return stored.item

    def put(self, item: Item, *, source: str, now: float, cas: int | None = None) -> bool:
        """Store or refresh ``item``. Raises :class:`PutRejected` for BEP 44 violations;
        returns ``False`` when a storage limit (not a protocol rule) kept it out."""
        check_item(item)
        target = item.target
        current = self._items.get(target)
        if current is not None and current.expires <= now:
            self._drop(target)
            current = None
        if current is not None and item.mutable:
            old = current.item
            assert old.seq is not None and item.seq is not None
            if cas is not None and cas != old.seq:
                raise PutRejected(ERROR_CAS_MISMATCH, "CAS mismatch")
            if item.seq < old.seq or (item.seq == old.seq and item.value != old.value):
                raise PutRejected(ERROR_SEQ_TOO_OLD, "sequence number less than current")
        if current is None:
            owned = self._per_source.get(source, set())
            if len(owned) >= self.max_per_source:
                return False
            if len(self._items) >= self.max_items:
                self.expire(now)
            if len(self._items) >= self.max_items:
                oldest = min(self._items, key=lambda t: self._items[t].expires)
                self._drop(oldest)
        else:
            self._drop(target)
        self._items[target] = _StoredItem(item, now + self.lifetime, source)
        self._per_source.setdefault(source, set()).add(target)
        return True

    def expire(self, now: float) -> None:
        for target in [t for t, s in self._items.items() if s.expires <= now]:
            self._drop(target)

    def _drop(self, target: bytes) -> None:
        stored = self._items.pop(target, None)
        if stored is None:
            return
        owned = self._per_source.get(stored.source)
        if owned is not None:
            owned.discard(target)
            if not owned:
                del self._per_source[stored.source]


# --------------------------------------------------------------------------- peers


@dataclass(slots=True)
class _Swarm:
    peers: dict[Addr, float] = field(default_factory=dict)


class PeerStore:
    """``announce_peer`` storage: bounded per info-hash, per source IP and in total."""

    def __init__(
        self,
        *,
        max_per_hash: int = 100,
        max_hashes: int = 500,
        max_per_ip: int = 4,
        lifetime: float = PEER_LIFETIME,
    ) -> None:
        self.max_per_hash = max_per_hash
        self.max_hashes = max_hashes
        self.max_per_ip = max_per_ip
        self.lifetime = lifetime
        self._swarms: dict[bytes, _Swarm] = {}

    def __len__(self) -> int:
        return sum(len(s.peers) for s in self._swarms.values())

    def swarm_count(self) -> int:
        return len(self._swarms)

    def announce(self, info_hash: bytes, addr: Addr, now: float) -> bool:
        """Remember ``addr`` for ``info_hash``; ``False`` if a limit kept it out."""
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            if len(self._swarms) >= self.max_hashes:
                self.expire(now)
            if len(self._swarms) >= self.max_hashes:
                return False
            swarm = self._swarms[info_hash] = _Swarm()
        if addr not in swarm.peers:
            same_ip = [a for a in swarm.peers if a[0] == addr[0]]
            if len(same_ip) >= self.max_per_ip:
                del swarm.peers[min(same_ip, key=lambda a: swarm.peers[a])]
            elif len(swarm.peers) >= self.max_per_hash:
                del swarm.peers[min(swarm.peers, key=lambda a: swarm.peers[a])]
        swarm.peers[addr] = now + self.lifetime
        return True

    def peers(
        self, info_hash: bytes, now: float, limit: int, rng: random.Random, *, family: int = 0
    ) -> list[Addr]:
        """Up to ``limit`` live peers, a random sample when there are more.

        ``family`` 4 or 6 restricts to one address family (0: both).
        """
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            return []
        live = [
            addr
            for addr, expires in swarm.peers.items()
            if expires > now and (family == 0 or (":" in addr[0]) == (family == 6))
        ]
        if len(live) > limit:
            live = rng.sample(live, limit)
        return live

    def expire(self, now: float) -> None:
        for info_hash in list(self._swarms):
            swarm = self._swarms[info_hash]
            swarm.peers = {a: e for a, e in swarm.peers.items() if e > now}
            if not swarm.peers:
                del self._swarms[info_hash]


# --------------------------------------------------------------------------- tokens


class TokenManager:
    """Write tokens bound to the requester's IP, valid for one to two rotation periods."""

    def __init__(
        self,
        *,
        now: float,
        rotation: float = TOKEN_ROTATION,
        secret_source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.rotation = rotation
        self._secret_source = secret_source
        self._current = secret_source(16)
        self._previous = secret_source(16)
        self.next_rotation = now + rotation

    def _mac(self, secret: bytes, ip: str) -> bytes:
        packed = compact_addr((ip, 0))[:-2]
        return hashlib.sha1(secret + packed).digest()[:TOKEN_LENGTH]

    def rotate_if_due(self, now: float) -> None:
        if now < self.next_rotation:
            return
        periods = int((now - self.next_rotation) // self.rotation) + 1
        if periods >= 2:
            # Asleep for longer than a token's lifetime: every old token is void.
            self._previous = self._secret_source(16)
        else:
            self._previous = self._current
        self._current = self._secret_source(16)
        self.next_rotation += periods * self.rotation

    def token_for(self, ip: str, now: float) -> bytes:
        self.rotate_if_due(now)
        return self._mac(self._current, ip)

    def is_valid(self, token: bytes, ip: str, now: float) -> bool:
        self.rotate_if_due(now)
        return any(
            hmac.compare_digest(token, self._mac(secret, ip))
            for secret in (self._current, self._previous)
        )

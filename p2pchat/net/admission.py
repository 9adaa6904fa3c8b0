"""Which unknown QUIC Initials may open a server connection.

A QUIC server that builds a connection for every Initial it hears can be
flooded: each fake Initial costs a TLS context and a connection-table slot until
its idle timeout, and a few hundred per second lock everybody else out.  This
gate decides, before anything is allocated:

1. **Address validation under load (RFC 9000 §8.1.2).**  While many new
   Initials arrive (more than ``retry_rate`` per second) or the pool of pending
   handshakes is half full, an Initial without a token is answered with a
   stateless Retry carrying a token bound to the sender's address.  A real
   client comes back at once with the token; a flood from spoofed or deaf
   sources never does, and costs us one small packet each (no amplification:
   the Retry is ~100 bytes for a 1,200-byte Initial).  aioquic's
   ``QuicRetryTokenHandler`` makes and checks the tokens; its own asyncio
   server does the same, but only always-on.
2. **The Initial must decrypt.**  Initial keys derive from the destination
   connection ID, so anybody can check an Initial's AEAD tag; random payload
   fails it and is dropped without a connection ever existing.
3. **A small pool for unauthenticated handshakes.**  Server connections whose
   peer has not yet proved a key (the NaCl session in ``peer.py``) count
   against ``max_pending`` globally and ``per_source`` per IP.  A source IP that
   belongs to a known contact may also use ``reserve`` extra slots, so a flood
   of real handshakes from elsewhere cannot starve contacts.  Authenticated
   connections and our own dials never count.

The gate keeps no per-packet state for what it refuses; its memory is the pool
(bounded) and the per-IP pending counts (bounded by the pool).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Final

from aioquic.quic.crypto import CryptoError, CryptoPair  # type: ignore[attr-defined]
from aioquic.quic.packet import QuicHeader, encode_quic_retry
from aioquic.quic.retry import QuicRetryTokenHandler

__all__ = ["Accept", "Drop", "InitialGate", "Reply"]

MAX_PENDING: Final = 64
PER_SOURCE: Final = 16
RESERVE: Final = 16
#: New token-less Initials per second above which every new client must validate its
#: address first.  Normal use opens a handful of connections per minute.
RETRY_RATE: Final = 32.0


@dataclass(frozen=True, slots=True)
class Accept:
    """Open a server connection with these aioquic parameters."""

    original_destination_cid: bytes
    retry_source_cid: bytes | None


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``packet`` back (a Retry) and keep nothing."""

    packet: bytes


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


Decision = Accept | Reply | Drop


class InitialGate:
    """Admission control for new inbound QUIC connections: see the module docstring."""

    def __init__(
        self,
        *,
        max_pending: int = MAX_PENDING,
        per_source: int = PER_SOURCE,
        reserve: int = RESERVE,
        retry_rate: float = RETRY_RATE,
    ) -> None:
        self.max_pending = max_pending
        self.per_source = per_source
        self.reserve = reserve
        self.retry_rate = retry_rate
        self._tokens = QuicRetryTokenHandler()
        self._pending: Counter[str] = Counter()
        self._pending_total = 0
        self._window_start = 0.0
        self._window_count = 0
        self._previous_count = 0
        self.stats: Counter[str] = Counter()

    # ------------------------------------------------------------------ load
    @property
    def pending(self) -> int:
        return self._pending_total

    def _count_new(self, now: float) -> float:
        """Count one token-less Initial; the estimated rate over the last second."""
        elapsed = now - self._window_start
        if elapsed >= 1.0:
            self._previous_count = self._window_count if elapsed < 2.0 else 0
            self._window_start = now
            self._window_count = 0
            elapsed = 0.0
        self._window_count += 1
        return self._window_count + self._previous_count * (1.0 - elapsed)

    def under_load(self, now: float) -> bool:
        elapsed = now - self._window_start
        previous = self._previous_count * max(0.0, 1.0 - elapsed) if elapsed < 2.0 else 0.0
        current = self._window_count if elapsed < 1.0 else 0
        return current + previous > self.retry_rate or self._pending_total * 2 >= self.max_pending

    # ------------------------------------------------------------------ decide
    def decide(
        self,
        data: bytes,
        header: QuicHeader,
        encrypted_offset: int,
        address: tuple[str, int],
        now: float,
        *,
        known_source: bool = False,
    ) -> Decision:
        """What to do with ``data``, a full-size Initial to an unknown connection ID."""
        assert header.version is not None
        retry_scid: bytes | None = None
        original = header.destination_cid
        if header.token:
            try:
                original = self._tokens.validate_token(
                    address=address,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=now,
                )
            except ValueError:
                # A token from another address, expired, or forged.  RFC 9000 lets us
                # answer INVALID_TOKEN; silence costs less and tells a forger nothing.
                self.stats["retry_token_invalid"] += 1
                return Drop("invalid retry token")
            retry_scid = header.destination_cid
            self.stats["retry_token_valid"] += 1
        else:
            rate = self._count_new(now)
            if rate > self.retry_rate or self._pending_total * 2 >= self.max_pending:
                return self._retry(header, address, now)
        ip = address[0]
        limit = self.max_pending + (self.reserve if known_source else 0)
        if self._pending_total >= limit:
            self.stats["refused_pool_full"] += 1
            return Drop("too many handshakes in progress")
        if self._pending[ip] >= self.per_source + (self.reserve if known_source else 0):
            self.stats["refused_source_cap"] += 1
            return Drop("too many handshakes from this address")
        if not _decrypts(data, header, encrypted_offset):
            self.stats["initial_undecryptable"] += 1
            return Drop("Initial does not decrypt")
        self.stats["accepted"] += 1
        return Accept(original, retry_scid)

    def _retry(self, header: QuicHeader, address: tuple[str, int], now: float) -> Reply:
        assert header.version is not None
        source_cid = os.urandom(8)
        token = self._tokens.create_token(
            address=address,
            original_destination_connection_id=header.destination_cid,
            retry_source_connection_id=source_cid,
            now=now,
        )
        self.stats["retry_sent"] += 1
        return Reply(
            encode_quic_retry(
                version=header.version,
                source_cid=source_cid,
                destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=token,
            )
        )

    # ------------------------------------------------------------------ pool
    def opened(self, ip: str) -> None:
        """A server connection from ``ip`` now holds a pending slot."""
        self._pending[ip] += 1
        self._pending_total += 1

    def released(self, ip: str) -> None:
        """Its peer authenticated, or it closed: the slot is free again."""
        if self._pending[ip] <= 0:
            return
        self._pending[ip] -= 1
        if self._pending[ip] == 0:
            del self._pending[ip]
        self._pending_total -= 1

    def status(self, now: float) -> dict[str, int | bool]:
        out: dict[str, int | bool] = dict(self.stats)
        out["pending"] = self._pending_total
        out["under_load"] = self.under_load(now)
        return out


def _decrypts(data: bytes, header: QuicHeader, encrypted_offset: int) -> bool:
    """Whether the Initial's AEAD tag checks under the keys its DCID implies."""
    assert header.version is not None
    crypto = CryptoPair()
    crypto.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
    try:
        crypto.decrypt_packet(data[: header.packet_length], encrypted_offset, 0)
    except (CryptoError, ValueError):
        return False
    return True

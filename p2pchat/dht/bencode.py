"""Bencode at the DHT boundary: one strict decoder, one exception type.

Everything the DHT reads from the network passes through :func:`bdecode`, so every way a
datagram can be malformed (bad syntax, trailing bytes, non-canonical integers, unsorted or
duplicate keys, absurd nesting, integers too long for Python to parse) has to surface as
the same :class:`BencodeError`; callers then need exactly one ``except``.

Strict canonical decoding matters beyond hygiene: BEP 44 signs and hashes the bencoded
form of ``v``. Because only canonical input is accepted, ``bencode(bdecode(x)) == x`` for
every accepted ``x``, so a value can be re-encoded for hashing or forwarding without
keeping the original bytes around.
"""

from __future__ import annotations

from typing import Any, Final

import bencode2

from ..core.errors import RemoteProtocolError

__all__ = ["MAX_DEPTH", "BencodeError", "bdecode", "bencode"]

#: Deeper structures never occur in KRPC; rejecting them bounds the work spent on a value.
MAX_DEPTH: Final = 32


class BencodeError(RemoteProtocolError):
    """Bytes from the network are not canonical bencode (or not bencode at all)."""


def bdecode(data: bytes) -> Any:
    """Decode one canonical bencoded value that spans all of ``data``."""
    try:
        value = bencode2.bdecode(data)
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise BencodeError(str(exc)[:120]) from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise BencodeError("nested too deeply")
    return value


def bencode(value: Any) -> bytes:
    """Encode a value built by this package; a failure here is our bug, not the peer's."""
    return bencode2.bencode(value)


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in item)
    return False

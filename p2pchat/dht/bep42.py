"""BEP 42: node IDs tied to IP addresses.

The ID rule makes it expensive to place many Sybil nodes next to a chosen target: the
first 21 bits of a node ID must be a CRC32C of the node's (masked) IP address. Private,
loopback and link-local addresses are exempt because nothing can be verified about them.

Learning our own external address from the ``ip`` field of replies lives in
:mod:`.reflexive`, with the other sources of that knowledge.

CRC32C is computed with a 256-entry table in pure Python: BEP 42 hashes 4 or 8 bytes, so
a compiled ``crc32c`` dependency would buy nothing measurable.
"""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = [
    "crc32c",
    "is_bep42_exempt",
    "is_valid_node_id",
    "node_id_for_ip",
]

_V4_MASK: Final = bytes((0x03, 0x0F, 0x3F, 0xFF))
_V6_MASK: Final = bytes((0x01, 0x03, 0x07, 0x0F, 0x1F, 0x3F, 0x7F, 0xFF))


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE: Final = _make_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum BEP 42 specifies."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_EXEMPT_V4: Final = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8")
)


def is_bep42_exempt(ip: str) -> bool:
    """Addresses BEP 42 does not constrain: local networks, where IDs cannot be checked."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return True
    if isinstance(addr, ipaddress.IPv4Address):
        return any(addr in net for net in _EXEMPT_V4)
    if addr.ipv4_mapped is not None:
        return is_bep42_exempt(str(addr.ipv4_mapped))
    return addr.is_loopback or addr.is_link_local or addr.is_private


def _prefix_crc(ip: str, rand: int) -> int:
    addr = ipaddress.ip_address(ip)
    packed = addr.packed
    if isinstance(addr, ipaddress.IPv4Address):
        masked = bytearray(b & m for b, m in zip(packed, _V4_MASK, strict=True))
    else:
        masked = bytearray(b & m for b, m in zip(packed[:8], _V6_MASK, strict=True))
    masked[0] |= (rand & 0x07) << 5
    return crc32c(bytes(masked))


def node_id_for_ip(ip: str, random_id: bytes) -> bytes:
    """Conform a random 20-byte ID to BEP 42 for ``ip``.

    The last byte stays as it is (its low 3 bits select the CRC input, as the BEP says);
    the first 21 bits are overwritten by the CRC; all other bits stay random.
    """
    if len(random_id) != 20:
        raise ValueError("node_id_for_ip needs a 20-byte random ID")
    crc = _prefix_crc(ip, random_id[19])
    head = bytes(
        ((crc >> 24) & 0xFF, (crc >> 16) & 0xFF, ((crc >> 8) & 0xF8) | (random_id[2] & 0x07))
    )
    return head + random_id[3:]


def is_valid_node_id(node_id: bytes, ip: str) -> bool:
    """Whether ``node_id`` satisfies BEP 42 for ``ip`` (exempt addresses always do)."""
    if len(node_id) != 20:
        return False
    if is_bep42_exempt(ip):
        return True
    crc = _prefix_crc(ip, node_id[19])
    return (
        node_id[0] == (crc >> 24) & 0xFF
        and node_id[1] == (crc >> 16) & 0xFF
        and (node_id[2] & 0xF8) == ((crc >> 8) & 0xF8)
    )

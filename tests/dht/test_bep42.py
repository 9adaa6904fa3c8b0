"""BEP 42: the BEP's own node ID vectors, exemptions, and external address voting."""

from __future__ import annotations

import pytest

from p2pchat.dht.bep42 import (
    crc32c,
    is_bep42_exempt,
    is_valid_node_id,
    node_id_for_ip,
)

# From BEP 42's "test vectors" table: IP, rand, a node ID that is valid for that IP.
VECTORS = [
    ("124.31.75.21", 1, "5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401"),
    ("21.75.31.124", 86, "5a3ce9c14e7a08645677bbd1cfe7d8f956d53256"),
    ("65.23.51.170", 22, "a5d43220bc8f112a3d426c84764f8c2a1150e616"),
    ("84.124.73.14", 65, "1b0321dd1bb1fe518101ceef99462b947a01ff41"),
    ("43.213.53.83", 90, "e56f6cbf5b7c4be0237986d5243b87aa6d51305a"),
]


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


@pytest.mark.parametrize(("ip", "rand", "expected"), VECTORS)
def test_bep42_vectors(ip: str, rand: int, expected: str) -> None:
    node_id = bytes.fromhex(expected)
    assert node_id[19] == rand
    assert is_valid_node_id(node_id, ip)
    generated = node_id_for_ip(ip, node_id[:19] + bytes((rand,)))
    # The first 21 bits are the CRC; the rest of the ID is the random input.
    assert generated == node_id
    made = node_id_for_ip(ip, bytes(19) + bytes((rand,)))
    assert made[:2] == node_id[:2] and made[2] & 0xF8 == node_id[2] & 0xF8
    assert is_valid_node_id(made, ip)


@pytest.mark.parametrize(("ip", "rand", "expected"), VECTORS)
def test_flipping_a_prefix_bit_invalidates(ip: str, rand: int, expected: str) -> None:
    node_id = bytearray(bytes.fromhex(expected))
    node_id[2] ^= 0x08  # the 21st bit
    assert not is_valid_node_id(bytes(node_id), ip)
    node_id[2] ^= 0x08 | 0x04  # the 22nd bit is free
    assert is_valid_node_id(bytes(node_id), ip)


def test_ipv6_ids() -> None:
    ip = "2001:db8:1234:5678::1"
    node_id = node_id_for_ip(ip, bytes(range(20)))
    assert is_valid_node_id(node_id, ip)
    # Only the first 64 bits of an IPv6 address count.
    assert is_valid_node_id(node_id, "2001:db8:1234:5678:ffff::9")


@pytest.mark.parametrize(
    "ip", ["10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.3.4", "127.0.0.1", "::1", "fe80::1"]
)
def test_local_networks_are_exempt(ip: str) -> None:
    assert is_bep42_exempt(ip)
    assert is_valid_node_id(b"\x00" * 20, ip)


def test_public_addresses_are_not_exempt() -> None:
    assert not is_bep42_exempt("124.31.75.21")
    assert not is_valid_node_id(b"\x00" * 20, "124.31.75.21")

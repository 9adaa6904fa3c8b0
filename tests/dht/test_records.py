"""p2pchat peer records on top of BEP 44."""

from __future__ import annotations

import pytest

from p2pchat.dht.bencode import bencode
from p2pchat.dht.records import (
    DISCOVERY_INFO_HASH,
    MAX_ADDRESSES,
    MAX_LOCAL,
    MAX_RELAYS,
    MAX_RENDEZVOUS,
    PEER_RECORD_SALT,
    PeerRecord,
    RecordError,
    make_record_item,
    read_record_item,
    record_target,
)
from p2pchat.dht.reflexive import NAT_ED, NAT_EI, NAT_UNKNOWN
from p2pchat.dht.storage import MAX_VALUE_SIZE, Item, mutable_target
from p2pchat.identity import Identity

RECORD = PeerRecord(
    addresses=(("203.0.113.5", 4433), ("2001:db8::5", 4433)),
    relays=(("198.51.100.9", 4433),),
    nat=NAT_EI,
    local=(("192.168.1.5", 4433),),
    rendezvous=((bytes(range(32)), ("198.51.100.7", 4001)),),
)


def test_round_trip_and_signature() -> None:
    me = Identity(bytes(range(32)))
    item = make_record_item(me, RECORD, 1_700_000_000.7)
    assert item.seq == 1_700_000_000 and item.salt == PEER_RECORD_SALT
    assert (
        item.target
        == record_target(me.public_key)
        == mutable_target(me.public_key, PEER_RECORD_SALT)
    )
    assert read_record_item(item, me.public_key) == RECORD


def test_seq_never_goes_backwards() -> None:
    me = Identity(bytes(32))
    item = make_record_item(me, RECORD, 1000, previous_seq=5000)
    assert item.seq == 5001


def test_worst_case_record_fits_in_a_bep44_item() -> None:
    big = PeerRecord(
        addresses=tuple((f"2001:db8::{i}", 65535) for i in range(MAX_ADDRESSES)),
        relays=tuple((f"2001:db8:1::{i}", 65535) for i in range(MAX_RELAYS)),
        nat=NAT_EI,
        local=tuple((f"fd00::{i}", 65535) for i in range(MAX_LOCAL)),
        rendezvous=tuple(
            (bytes([i]) * 32, (f"2001:db8:2::{i}", 65535)) for i in range(MAX_RENDEZVOUS)
        ),
    )
    assert len(big.encode()) <= MAX_VALUE_SIZE


def test_someone_elses_or_forged_record_is_rejected() -> None:
    me, other = Identity(bytes(32)), Identity(bytes([1]) * 32)
    item = make_record_item(me, RECORD, 1)
    with pytest.raises(RecordError):
        read_record_item(item, other.public_key)
    forged = Item(item.value, key=item.key, signature=bytes(64), seq=item.seq, salt=item.salt)
    with pytest.raises(RecordError):
        read_record_item(forged, me.public_key)


@pytest.mark.parametrize(
    "value",
    [
        bencode([]),
        bencode({b"a": []}),
        bencode({b"ver": 1, b"a": [b"short"]}),
        bencode({b"ver": 1, b"a": [b"\x01\x02\x03\x04\x00\x01"] * (MAX_ADDRESSES + 1)}),
        bencode({b"ver": 1, b"a": b"notalist"}),
        bencode({b"ver": 1, b"a": [], b"n": 5}),
        bencode({b"ver": 2, b"a": [], b"l": [b"short"]}),
        bencode({b"ver": 2, b"a": [], b"z": [b"\x01" * 32]}),
        bencode({b"ver": 2, b"a": [], b"z": [b"\x01" * 31 + b"\x01\x02\x03\x04\x00\x01"]}),
        bencode({b"ver": 2, b"a": [], b"z": b"notalist"}),
        bencode({b"ver": 2, b"a": [], b"z": [b"\x01" * 38] * (MAX_RENDEZVOUS + 1)}),
        b"garbage",
        bencode(b"x" * 1200),
    ],
)
def test_malformed_records(value: bytes) -> None:
    with pytest.raises(RecordError):
        PeerRecord.decode(value)


def test_unknown_fields_and_kinds_are_tolerated() -> None:
    value = bencode({b"ver": 2, b"a": [], b"n": b"quantum", b"zz": b"future"})
    record = PeerRecord.decode(value)
    assert record.nat == "unknown" and record.version == 2


def test_version_1_records_still_parse() -> None:
    """Before LAN addresses, rendezvous nodes and the RFC 4787 NAT names."""
    old = bencode({b"a": [b"\xcb\x00\x71\x05\x11\x51"], b"n": b"consistent", b"ver": 1})
    record = PeerRecord.decode(old)
    assert record.addresses == (("203.0.113.5", 4433),) and record.nat == NAT_EI
    assert record.local == () and record.rendezvous == () and record.version == 1
    assert PeerRecord.decode(bencode({b"a": [], b"n": b"random", b"ver": 1})).nat == NAT_ED
    assert PeerRecord.decode(bencode({b"ver": 1})).nat == NAT_UNKNOWN


def test_dial_addresses_public_first_without_repeats() -> None:
    record = PeerRecord(
        addresses=(("203.0.113.5", 1), ("10.0.0.2", 1)), local=(("10.0.0.2", 1), ("10.1.0.2", 1))
    )
    assert record.dial_addresses() == (("203.0.113.5", 1), ("10.0.0.2", 1), ("10.1.0.2", 1))


def test_discovery_info_hash_is_fixed() -> None:
    assert DISCOVERY_INFO_HASH.hex() == "c4e50d598226f03b3e124188a08b54ae322a358b"

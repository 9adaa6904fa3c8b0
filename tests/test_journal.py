"""The outbox journal's records: framing, sealing, and telling a torn tail from damage."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.store import DatabaseBusy, StoreError
from p2pchat.store.journal import (
    HEADER_SIZE,
    Entry,
    Journal,
    JournalCorrupt,
    encode,
    journal_key,
    parse,
)

KEY = journal_key(bytes(range(32)))
ENTRIES = [
    Entry("b2" * 16, "aa" * 16, 1, "hello", 1.5),
    Entry("b2" * 16, "bb" * 16, 2, "second, a reply", 2.0, reply_to="aa" * 16),
    Entry("c3" * 16, "cc" * 16, 7, "élan ✓", 3.25),
]


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "sealed"])
def test_records_round_trip(key: bytes | None) -> None:
    data = encode(ENTRIES, key)
    parsed = parse(data, key)
    assert parsed.entries == ENTRIES
    assert parsed.torn == 0


def test_sealed_records_hold_no_text_and_need_the_key() -> None:
    data = encode(ENTRIES, KEY)
    for e in ENTRIES:
        assert e.body.encode() not in data
        assert e.peer_id.encode() not in data
    with pytest.raises(JournalCorrupt, match="does not open"):
        parse(data, journal_key(bytes(32)))
    with pytest.raises(JournalCorrupt):
        parse(data, None)  # sealed bytes are not msgpack records


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "sealed"])
def test_every_cut_of_the_last_record_is_a_torn_tail(key: bytes | None) -> None:
    whole = encode(ENTRIES[:2], key)
    last = encode(ENTRIES[2:], key)
    for cut in range(1, len(last)):
        parsed = parse(whole + last[:cut], key)
        assert parsed.entries == ENTRIES[:2]
        assert parsed.torn == cut


def test_a_wrong_checksum_is_torn_at_the_end_and_damage_in_the_middle() -> None:
    data = bytearray(encode(ENTRIES))
    data[-1] ^= 0x01  # the last record's payload
    parsed = parse(bytes(data))
    assert parsed.entries == ENTRIES[:2]
    assert parsed.why == "a last record with a wrong checksum"
    data = bytearray(encode(ENTRIES))
    data[HEADER_SIZE + 3] ^= 0x01  # the first record's payload
    with pytest.raises(JournalCorrupt, match="at byte 0: wrong checksum"):
        parse(bytes(data))


def test_zeros_at_the_end_are_a_torn_tail_but_not_in_the_middle() -> None:
    data = encode(ENTRIES[:1])
    assert parse(data + bytes(4096)).entries == ENTRIES[:1]
    with pytest.raises(JournalCorrupt, match="a record of 0 bytes"):
        parse(data + bytes(64) + encode(ENTRIES[1:]))


def test_a_tampered_sealed_record_is_damage_even_at_the_end() -> None:
    import struct
    import zlib

    data = bytearray(encode(ENTRIES[:1], KEY))
    data[-1] ^= 0x01
    payload = bytes(data[HEADER_SIZE:])
    data[:HEADER_SIZE] = struct.pack(">II", len(payload), zlib.crc32(payload))
    with pytest.raises(JournalCorrupt, match="does not open"):
        parse(bytes(data), KEY)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([None, KEY]))
def test_fuzz_arbitrary_bytes_parse_or_raise_journal_corrupt(
    data: bytes, key: bytes | None
) -> None:
    try:
        parsed = parse(data, key)
    except JournalCorrupt:
        return
    assert parsed.torn <= len(data)
    assert all(isinstance(e, Entry) and e.seq >= 1 for e in parsed.entries)


@settings(max_examples=120, deadline=None)
@given(
    st.lists(
        st.builds(
            Entry,
            st.text(min_size=1, max_size=40),
            st.text(min_size=1, max_size=40),
            st.integers(min_value=1, max_value=2**63 - 1),
            st.text(max_size=300),
            st.floats(allow_nan=False),
            st.none() | st.text(max_size=40),
        ),
        max_size=5,
    ),
    st.sampled_from([None, KEY]),
    st.data(),
)
def test_fuzz_flipped_or_cut_journals_never_return_a_changed_record(
    entries: list[Entry], key: bytes | None, data: st.DataObject
) -> None:
    raw = bytearray(encode(entries, key))
    if raw:
        if data.draw(st.booleans()):
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] ^= data.draw(st.integers(1, 255))
        else:
            del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    try:
        parsed = parse(bytes(raw), key)
    except JournalCorrupt:
        return
    # Whatever is returned is a prefix of what was written: a damaged record never
    # comes back as a different message.
    assert parsed.entries == entries[: len(parsed.entries)]


def test_journal_file_is_private_appends_and_clears(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", KEY)
    assert journal.try_own()
    assert stat.S_IMODE(os.stat(journal.path).st_mode) == 0o600
    journal.append(ENTRIES[:2])
    journal.append(ENTRIES[2:])
    assert journal.read().entries == ENTRIES
    journal.clear()
    assert journal.path.stat().st_size == 0
    journal.append(ENTRIES[:1])
    assert journal.read().entries == ENTRIES[:1]
    journal.release()


def test_one_owner_at_a_time(tmp_path: Path) -> None:
    one, two = Journal(tmp_path / "j"), Journal(tmp_path / "j")
    assert one.try_own()
    assert not two.try_own()
    with pytest.raises(DatabaseBusy, match="send through it"):
        two.own(timeout=0.05)
    with pytest.raises(StoreError, match="not held"):
        two.append(ENTRIES)
    one.release()
    two.own(timeout=1.0)
    assert two.owned
    two.release()


def test_a_failed_write_is_undone(tmp_path: Path) -> None:
    """On a full disk the append raises the store's disk-full error and leaves the
    file as it was (no half record for the next append to follow)."""
    journal = Journal(tmp_path / "j")
    assert journal.try_own()
    journal.append(ENTRIES[:1])
    size = journal.path.stat().st_size
    fd = journal._fd
    assert fd is not None
    journal._fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(StoreError, match="disk is full"):
            journal.append(ENTRIES[1:])
    finally:
        os.close(journal._fd)
        journal._fd = fd
    assert journal.path.stat().st_size == size
    assert journal.read().entries == ENTRIES[:1]
    journal.release()

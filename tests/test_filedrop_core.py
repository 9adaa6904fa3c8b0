"""Sans-IO file drop pieces: offered names and the sealed data channel."""

from __future__ import annotations

import os
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.core import chat
from p2pchat.core.chat import FileEntry
from p2pchat.core.errors import RemoteProtocolError
from p2pchat.core.filedrop import (
    CHUNK_SIZE,
    VERSION_HASH_AT_END,
    Opener,
    Sealer,
    UnsafePath,
    check_offer,
    pack_hashes,
    parse_preamble,
    safe_parts,
)

HASH = bytes(32)


@pytest.mark.parametrize(
    "path",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "a/../../b",
        "a//b",
        "./a",
        "C:/Windows/x",
        "c:evil",
        "a\\..\\b",
        "nul\x00byte",
        "bell\x07",
        "line\nbreak",
        "rtl\u202eexe.txt",
        "",
        "x" * 300,
        "/".join(["d"] * 40),
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePath):
        safe_parts(path)


def test_device_names_and_trailing_dots_are_defused() -> None:
    assert safe_parts("CON") == ("_CON",)
    assert safe_parts("dir/lpt1.txt") == ("dir", "_lpt1.txt")
    assert safe_parts("name.") == ("_name.",)
    assert safe_parts("photos/2024/a b.jpg") == ("photos", "2024", "a b.jpg")


def test_dotfiles_are_renamed_visibly() -> None:
    assert safe_parts(".bashrc") == ("_.bashrc",)
    assert safe_parts("project/.git/config") == ("project", "_.git", "config")
    assert safe_parts("..hidden") == ("_..hidden",)


def test_names_are_nfc_and_normalisation_twins_collide() -> None:
    composed, decomposed = "caf\u00e9.txt", "cafe\u0301.txt"
    assert safe_parts(decomposed) == (composed,)
    with pytest.raises(UnsafePath):
        check_offer((FileEntry(composed, 1, HASH), FileEntry(decomposed, 1, HASH)))
    with pytest.raises(UnsafePath):
        check_offer((FileEntry(".a", 1, HASH), FileEntry("_.a", 1, HASH)))


def test_offer_cannot_name_a_file_twice_or_as_folder() -> None:
    with pytest.raises(UnsafePath):
        check_offer((FileEntry("a.txt", 1, HASH), FileEntry("A.TXT", 1, HASH)))
    with pytest.raises(UnsafePath):
        check_offer((FileEntry("a", 1, HASH), FileEntry("a/b", 1, HASH)))


@given(st.text(max_size=300))
@settings(max_examples=400)
def test_safe_parts_never_escapes(path: str) -> None:
    try:
        parts = safe_parts(path)
    except UnsafePath:
        return
    assert parts and all(p not in ("", ".", "..") and "/" not in p for p in parts)
    assert not any(ch in p for p in parts for ch in "\x00\\\n\r")
    assert not any(p.startswith(".") for p in parts)
    assert all(unicodedata.is_normalized("NFC", p) for p in parts)


def channel(
    sizes: list[int], *, offsets: list[int] | None = None, version: int = 1
) -> tuple[Sealer, Opener]:
    key, tid, attempt = os.urandom(32), os.urandom(16), os.urandom(16)
    sealer = Sealer(key, tid, attempt, version)
    pre = parse_preamble(sealer.preamble)
    assert pre.transfer_id == tid and pre.attempt == attempt and pre.version == version
    offsets = offsets or [0] * len(sizes)
    plan = [(i, offsets[i], size) for i, size in enumerate(sizes)]
    return sealer, Opener(key, pre.header, plan, pre.version)


def test_round_trip_and_final() -> None:
    data = os.urandom(CHUNK_SIZE + 100)
    sealer, opener = channel([len(data), 0, 5])
    blob = (
        sealer.seal(0, 0, data[:CHUNK_SIZE])
        + sealer.seal(0, CHUNK_SIZE, data[CHUNK_SIZE:])
        + sealer.seal(2, 0, b"hello")
        + sealer.seal(0, 0, b"", final=True)
    )
    records = []
    for i in range(0, len(blob), 7777):
        records += opener.feed(blob[i : i + 7777])
    assert b"".join(bytes(r.data) for r in records if r.index == 0) == data
    assert opener.finished and records[-1].final


@pytest.mark.parametrize("version", [1, VERSION_HASH_AT_END])
def test_tampered_record_is_detected(version: int) -> None:
    sealer, opener = channel([100], version=version)
    record = bytearray(sealer.seal(0, 0, b"x" * 100))
    record[20] ^= 1
    with pytest.raises(RemoteProtocolError, match="authentication"):
        opener.feed(bytes(record))


def test_wrong_position_gap_and_extension_refused() -> None:
    sealer, opener = channel([10])
    with pytest.raises(RemoteProtocolError, match="expected"):
        opener.feed(sealer.seal(0, 5, b"abcde"))
    sealer, opener = channel([10])
    with pytest.raises(RemoteProtocolError, match="beyond"):
        opener.feed(sealer.seal(0, 0, b"x" * 11))
    sealer, opener = channel([10])
    opener.feed(sealer.seal(0, 0, b"x" * 10))
    with pytest.raises(RemoteProtocolError):
        opener.feed(sealer.seal(0, 10, b"more"))


@pytest.mark.parametrize("version", [1, VERSION_HASH_AT_END])
def test_early_final_and_replayed_records_refused(version: int) -> None:
    sealer, opener = channel([10], version=version)
    with pytest.raises(RemoteProtocolError, match="before all data"):
        opener.feed(sealer.seal(0, 0, b"x" * 5, final=True))
    sealer, opener = channel([10], version=version)
    first = sealer.seal(0, 0, b"x" * 5)
    opener.feed(first)
    with pytest.raises(RemoteProtocolError):
        opener.feed(first)


def test_resume_offsets_are_enforced() -> None:
    sealer, opener = channel([100], offsets=[60])
    with pytest.raises(RemoteProtocolError):
        opener.feed(sealer.seal(0, 0, b"y" * 40))
    sealer, opener = channel([100], offsets=[60])
    assert [r.offset for r in opener.feed(sealer.seal(0, 60, b"y" * 40))] == [60]


def test_oversized_record_refused_before_buffering() -> None:
    _sealer, opener = channel([10])
    with pytest.raises(RemoteProtocolError, match="refused"):
        opener.feed(b"\xff\xff\xff\xff")


@given(st.binary(max_size=2000), st.sampled_from([1, VERSION_HASH_AT_END]))
@settings(max_examples=300)
def test_opener_fuzz(data: bytes, version: int) -> None:
    _sealer, opener = channel([1000], version=version)
    try:
        opener.feed(data)
    except RemoteProtocolError:
        pass


def test_version_2_final_record_carries_every_planned_hash() -> None:
    """File drop 2: the FINAL record is not data but one hash per file of the plan,
    files complete before this attempt (offset == size) included, in plan order."""
    sealer, opener = channel([10, 5, 0], offsets=[0, 5, 0], version=VERSION_HASH_AT_END)
    hashes = [(0, b"a" * 32), (1, b"b" * 32), (2, b"c" * 32)]
    records = opener.feed(sealer.seal(0, 0, b"x" * 10))
    records += opener.feed(sealer.seal(0, 0, pack_hashes(hashes), final=True))
    assert records[-1].final and records[-1].hashes == dict(hashes)
    assert [bytes(r.data) for r in records] == [b"x" * 10, b""]


@pytest.mark.parametrize(
    "hashes",
    [
        [],  # no final hash at all
        [(0, b"a" * 32)],  # one missing
        [(1, b"b" * 32), (0, b"a" * 32)],  # out of order
        [(0, b"a" * 32), (1, b"b" * 32), (2, b"c" * 32)],  # one too many
        [(0, b"a" * 32), (5, b"b" * 32)],  # a file that was not asked for
    ],
)
def test_version_2_final_record_without_the_right_hashes_is_refused(
    hashes: list[tuple[int, bytes]],
) -> None:
    sealer, opener = channel([10, 5], version=VERSION_HASH_AT_END)
    opener.feed(sealer.seal(0, 0, b"x" * 10) + sealer.seal(1, 0, b"y" * 5))
    with pytest.raises(RemoteProtocolError, match="final record"):
        opener.feed(sealer.seal(0, 0, pack_hashes(hashes), final=True))


def test_version_2_data_beyond_the_offered_size_is_refused() -> None:
    sealer, opener = channel([10], version=VERSION_HASH_AT_END)
    with pytest.raises(RemoteProtocolError, match="beyond"):
        opener.feed(sealer.seal(0, 0, b"x" * 11))
    sealer, opener = channel([10], version=VERSION_HASH_AT_END)
    opener.feed(sealer.seal(0, 0, b"x" * 10))
    with pytest.raises(RemoteProtocolError):
        opener.feed(sealer.seal(0, 10, b"more"))


def test_offers_list_every_hash_or_none() -> None:
    """A file drop 2 offer leaves the hashes out; an offer may not mix the forms."""
    bare = chat.FileOffer("ab" * 16, (FileEntry("a", 1, None), FileEntry("b", 2, None)))
    assert chat.decode(chat.encode(bare)) == bare
    full = chat.FileOffer("ab" * 16, (FileEntry("a", 1, HASH),))
    assert chat.decode(chat.encode(full)) == full
    with pytest.raises(Exception, match="file entry"):
        chat.encode(chat.FileOffer("ab" * 16, (FileEntry("a", 1, HASH), FileEntry("b", 2, None))))
    hello = chat.Hello(name="x", files=chat.FILE_DROP_VERSION)
    assert chat.decode(chat.encode(hello)).files == chat.FILE_DROP_VERSION  # type: ignore[union-attr]
    assert chat.decode(chat.encode(chat.Hello(name="x"))).files == 1  # type: ignore[union-attr]


def test_version_2_records_are_bound_to_their_channel_and_order() -> None:
    """A record of another channel (a fallback of the same attempt has its own
    seed, so its own key) or out of order fails authentication."""
    key, tid, attempt = os.urandom(32), os.urandom(16), os.urandom(16)
    one = Sealer(key, tid, attempt, VERSION_HASH_AT_END)
    two = Sealer(key, tid, attempt, VERSION_HASH_AT_END)
    assert one.preamble != two.preamble
    opener = Opener(key, parse_preamble(one.preamble).header, [(0, 0, 20)], 2)
    with pytest.raises(RemoteProtocolError, match="authentication"):
        opener.feed(two.seal(0, 0, b"x" * 10))
    opener = Opener(key, parse_preamble(one.preamble).header, [(0, 0, 20)], 2)
    one.seal(0, 0, b"x" * 10)  # the first record, never delivered
    second = one.seal(0, 10, b"y" * 10)
    with pytest.raises(RemoteProtocolError, match="authentication"):
        opener.feed(second)

"""File drop between real nodes over real QUIC (and direct TCP) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest

from p2pchat.core.events import TransferOffered, TransferProgress
from p2pchat.core.filedrop import (
    CHUNK_SIZE,
    VERSION_HASH_AT_END,
    Opener,
    Sealer,
    new_hasher,
    parse_preamble,
)
from p2pchat.net import transfers
from p2pchat.net.transfer_files import hash_part_prefixes, hash_prefixes_of, sealed_records
from p2pchat.net.transfers import TERMINAL
from p2pchat.node import Node
from p2pchat.store import Store, TransferFile

from .conftest import EventLog, StartNode, free_udp_port, make_home, wait_until
from .daemons import Daemon

MiB = 1 << 20


def digest(path: Path) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as fh:
        while block := fh.read(4 * MiB):
            h.update(block)
    return h.digest()


def random_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 4 * MiB)
            fh.write(os.urandom(n))
            left -= n
    return path


async def pair(start_node: StartNode, tmp: Path, *, auto: bool = True) -> tuple[Node, Node, Path]:
    a = await start_node("alice")
    b = await start_node("bob")
    downloads = tmp / "downloads"
    b.transfers.policy.downloads = downloads
    if auto:
        b.transfers.policy.accept_from = frozenset({"contacts"})
    a.add_contact(b.peer_id, name="bob", addresses=b.addresses)
    b.add_contact(a.peer_id, name="alice", addresses=a.addresses)
    await wait_until(lambda: a.is_online(b.peer_id) and b.is_online(a.peer_id))
    return a, b, downloads


async def test_50mb_file_arrives_identical(start_node: StartNode, tmp_path: Path) -> None:
    a, b, downloads = await pair(start_node, tmp_path)
    log_a = EventLog(a)
    src = random_file(tmp_path / "src" / "big.bin", 50 * MiB)
    t = await a.offer_files("bob", [src])
    assert await a.wait_transfer(t.id, 120) == "done"
    assert digest(downloads / "big.bin") == digest(src)
    assert b.store.get_transfer(t.id).state == "done"  # type: ignore[union-attr]
    assert log_a.of(TransferProgress), "the sender reports progress"
    # Nothing is left behind in the staging area.
    assert sorted(p.name for p in downloads.iterdir()) == ["big.bin"]
    await log_a.close()


async def test_quic_stream_path_and_name_clash(start_node: StartNode, tmp_path: Path) -> None:
    a, b, downloads = await pair(start_node, tmp_path)
    b.transfers.tcp_port = 0  # no direct TCP: data rides a QUIC stream of the session
    src = random_file(tmp_path / "src" / "notes.txt", 3 * MiB)
    random_file(downloads / "notes.txt", 10)  # already there: must not be overwritten
    before = digest(downloads / "notes.txt")
    t = await a.offer_files("bob", [src])
    assert await a.wait_transfer(t.id, 120) == "done"
    assert digest(downloads / "notes.txt") == before
    assert digest(downloads / "notes (1).txt") == digest(src)


async def test_folder_keeps_its_structure(start_node: StartNode, tmp_path: Path) -> None:
    a, _b, downloads = await pair(start_node, tmp_path)
    root = tmp_path / "src" / "album"
    files = {
        "cover.jpg": 200_000,
        "disc 1/01 intro.flac": 1_500_000,
        "disc 1/02 song.flac": 700_000,
        "disc 2/deep/er/notes.txt": 1_000,
        "empty.txt": 0,
    }
    for rel, size in files.items():
        random_file(root / rel, size)
    t = await a.offer_files("bob", [root])
    assert await a.wait_transfer(t.id, 120) == "done"
    for rel in files:
        assert digest(downloads / "album" / rel) == digest(root / rel), rel


async def test_offer_needs_consent_and_decline_is_reported(
    start_node: StartNode, tmp_path: Path
) -> None:
    a, b, downloads = await pair(start_node, tmp_path, auto=False)
    log_b = EventLog(b)
    src = random_file(tmp_path / "src" / "a.bin", 1000)
    t = await a.offer_files("bob", [src])
    await wait_until(lambda: bool(log_b.of(TransferOffered)))
    assert not downloads.exists() or not any(downloads.iterdir())
    b.decline_transfer(t.id, "no thanks")
    assert await a.wait_transfer(t.id, 20) == "declined"
    assert a.store.get_transfer(t.id).error == "no thanks"  # type: ignore[union-attr]
    # A second offer, accepted by hand.
    t2 = await a.offer_files("bob", [src])
    await wait_until(lambda: len(log_b.of(TransferOffered)) == 2)
    b.accept_transfer(t2.id)
    assert await a.wait_transfer(t2.id, 20) == "done"
    await log_b.close()


async def test_offer_timeout_is_reported(start_node: StartNode, tmp_path: Path) -> None:
    a, b, _ = await pair(start_node, tmp_path, auto=False)
    b.transfers.policy.offer_timeout = 0.5
    t = await a.offer_files("bob", [random_file(tmp_path / "src" / "x", 10)])
    assert await a.wait_transfer(t.id, 20) == "declined"
    assert "timeout" in (a.store.get_transfer(t.id).error or "")  # type: ignore[union-attr]


async def test_changed_source_is_detected_and_not_published(
    start_node: StartNode, tmp_path: Path
) -> None:
    """Same size, different content after the offer left: the sender's hash would
    cover the new bytes, so the sender compares the file with its size and
    modification time at the offer and refuses to send a different file."""
    a, b, downloads = await pair(start_node, tmp_path, auto=False)
    src = random_file(tmp_path / "src" / "doc.bin", 2 * MiB)
    t = await a.offer_files("bob", [src])
    await wait_until(lambda: b.store.get_transfer(t.id) is not None)
    with open(src, "r+b") as fh:
        fh.seek(MiB)
        fh.write(b"\x00" * 16)
    b.accept_transfer(t.id)
    assert await a.wait_transfer(t.id, 30) == "failed"
    assert "changed since it was offered" in (a.store.get_transfer(t.id).error or "")  # type: ignore[union-attr]
    await wait_until(lambda: b.store.get_transfer(t.id).state == "cancelled")  # type: ignore[union-attr]
    assert "changed" in (b.store.get_transfer(t.id).error or "")  # type: ignore[union-attr]
    assert not (downloads / "doc.bin").exists()
    assert not list(downloads.rglob("*.part"))


async def test_source_gone_before_sending_fails_clearly(
    start_node: StartNode, tmp_path: Path
) -> None:
    a, b, downloads = await pair(start_node, tmp_path, auto=False)
    src = random_file(tmp_path / "src" / "gone.bin", 1000)
    t = await a.offer_files("bob", [src])
    await wait_until(lambda: b.store.get_transfer(t.id) is not None)
    src.unlink()
    b.accept_transfer(t.id)
    assert await a.wait_transfer(t.id, 30) == "failed"
    assert "cannot read it any more" in (a.store.get_transfer(t.id).error or "")  # type: ignore[union-attr]
    await wait_until(lambda: b.store.get_transfer(t.id).state == "cancelled")  # type: ignore[union-attr]
    assert not list(downloads.rglob("*.part"))


async def test_source_changed_while_sending_is_not_published(
    start_node: StartNode, tmp_path: Path
) -> None:
    """A write to the file while its bytes leave (the QUIC path, slow enough to catch
    it mid-way) fails the transfer: nothing is published under a hash of a mix."""
    a, b, downloads = await pair(start_node, tmp_path)
    b.transfers.tcp_port = 0
    src = random_file(tmp_path / "src" / "live.bin", 24 * MiB)
    t = await a.offer_files("bob", [src])
    await wait_until(lambda: (p := b.transfers.progress(t.id)) is not None and p[0] > MiB)
    with open(src, "r+b") as fh:
        fh.seek(20 * MiB)
        fh.write(b"\x00" * 16)
    assert await a.wait_transfer(t.id, 60) == "failed"
    assert "changed" in (a.store.get_transfer(t.id).error or "")  # type: ignore[union-attr]
    await wait_until(lambda: b.store.get_transfer(t.id).state in TERMINAL)  # type: ignore[union-attr]
    assert not (downloads / "live.bin").exists()
    assert not list(downloads.rglob("*.part"))


@pytest.mark.parametrize("ahead", [False, True])
@pytest.mark.parametrize("offset", [0, 3 * CHUNK_SIZE + 17, 5 * CHUNK_SIZE])
async def test_sender_hashes_what_the_receiver_already_holds(
    tmp_path: Path, offset: int, ahead: bool
) -> None:
    """Resume in file drop 2: the sender's FINAL hash covers the whole file, the
    prefix it does not send included (and a file the receiver holds whole), whether
    the prefix is hashed on the channel's thread or ahead, before the channel opens
    (what the node does)."""
    size = 5 * CHUNK_SIZE
    src = random_file(tmp_path / "f.bin", size)
    entry = TransferFile(0, "f.bin", size, b"", str(src), None, None, True, False)
    key, tid, attempt = os.urandom(32), os.urandom(16), os.urandom(16)
    sealer = Sealer(key, tid, attempt, VERSION_HASH_AT_END)
    opener = Opener(key, parse_preamble(sealer.preamble).header, [(0, offset, size)], 2)
    sent = 0
    records = []
    prefixed = hash_prefixes_of({0: entry}, ((0, offset),)) if ahead else None
    async for record, length in sealed_records(
        sealer, {0: entry}, ((0, offset),), None, prefixed
    ):
        sent += length
        records += opener.feed(record)
    assert sent == size - offset
    whole = new_hasher()
    whole.update(src.read_bytes())
    assert records[-1].final and records[-1].hashes == {0: whole.digest()}


def test_part_prefixes_are_hashed_whole_or_not_at_all(tmp_path: Path) -> None:
    """The receiver's early pass over its .part files (while the sender prepares):
    a part shorter than asked for, or gone, is left for the pass at the claim."""
    part = tmp_path / "0.part"
    part.write_bytes(b"x" * 1000)
    got = hash_part_prefixes(
        [(0, str(part), 600), (1, str(part), 2000), (2, str(tmp_path / "gone.part"), 5)]
    )
    expected = new_hasher()
    expected.update(b"x" * 600)
    assert set(got) == {0} and got[0].digest() == expected.digest()


@pytest.mark.parametrize("online", [True, False])
async def test_a_file_drop_1_peer_gets_the_hashes_in_the_offer(
    start_node: StartNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, online: bool
) -> None:
    """A peer whose Hello announces no file drop 2 would refuse an offer without
    hashes: it gets the hashes first (at once, or when it comes online) and a
    version 1 data channel."""
    monkeypatch.setattr(transfers, "hashes_at_end", lambda conn: False)
    src = random_file(tmp_path / "src" / "old.bin", 3 * MiB)
    if online:
        a, b, downloads = await pair(start_node, tmp_path)
        t = await a.offer_files("bob", [src])
    else:
        a = await start_node("alice")
        b = await start_node("bob")
        downloads = tmp_path / "downloads"
        b.transfers.policy.downloads = downloads
        b.transfers.policy.accept_from = frozenset({"contacts"})
        a.add_contact(b.peer_id, name="bob")
        t = await a.offer_files("bob", [src])
        assert not any(f.hash for f in t.files)  # offline: nothing hashed yet
        b.add_contact(a.peer_id, name="alice", addresses=a.addresses)
    assert await a.wait_transfer(t.id, 60) == "done"
    whole = new_hasher()
    whole.update(src.read_bytes())
    offered = b.store.get_transfer(t.id)
    assert offered is not None and offered.files[0].hash == whole.digest()
    assert digest(downloads / "old.bin") == digest(src)


async def test_file_drop_2_offer_leaves_unhashed_and_the_hash_is_kept(
    start_node: StartNode, tmp_path: Path
) -> None:
    a, b, downloads = await pair(start_node, tmp_path)
    src = random_file(tmp_path / "src" / "new.bin", 3 * MiB)
    t = await a.offer_files("bob", [src])
    assert not any(f.hash for f in t.files)
    assert await a.wait_transfer(t.id, 60) == "done"
    whole = new_hasher()
    whole.update(src.read_bytes())
    received = b.store.get_transfer(t.id)
    assert received is not None and received.files[0].hash == whole.digest()
    sent = a.store.get_transfer(t.id)
    assert sent is not None and sent.files[0].hash == whole.digest()
    assert digest(downloads / "new.bin") == digest(src)


async def test_cancel_from_receiver(start_node: StartNode, tmp_path: Path) -> None:
    a, b, downloads = await pair(start_node, tmp_path)
    b.transfers.tcp_port = 0  # the QUIC path is slow enough to cancel mid-way
    src = random_file(tmp_path / "src" / "slow.bin", 40 * MiB)
    t = await a.offer_files("bob", [src])
    await wait_until(lambda: (p := b.transfers.progress(t.id)) is not None and p[0] > MiB)
    b.cancel_transfer(t.id)
    assert await a.wait_transfer(t.id, 20) == "cancelled"
    assert not (downloads / "slow.bin").exists()
    assert not list(downloads.rglob("*.part"))


async def test_sigkill_receiver_halfway_resumes(tmp_path: Path) -> None:
    size = 100 * MiB
    pa, pb = make_home(tmp_path, "alice"), make_home(tmp_path, "bob")
    downloads = tmp_path / "downloads"
    a = Daemon(pa.home, f"127.0.0.1:{free_udp_port()}")
    b = Daemon(
        pb.home,
        f"127.0.0.1:{free_udp_port()}",
        extra=["--downloads", str(downloads), "--accept-files-from", "contacts"],
    )
    await a.start()
    await b.start()
    src = random_file(tmp_path / "src" / "movie.bin", size)
    try:
        ida = (await a.call("info"))["peer_id"]
        idb = (await b.call("info"))["peer_id"]
        await a.call("add", ref=idb, name="bob", addresses=[b.listen])
        await b.call("add", ref=ida, name="alice", addresses=[a.listen])
        t = await a.call("send_files", contact="bob", paths=[str(src)])

        def part_size() -> int:
            return sum(p.stat().st_size for p in downloads.rglob("*.part"))

        await wait_until(lambda: part_size() >= 0.45 * size, timeout=60, interval=0.005)
        assert b.proc is not None
        b.proc.send_signal(signal.SIGKILL)
        await b.kill()
        kept = part_size()
        assert 0 < kept < size

        def first_attempt() -> int:
            with Store(pa.database) as store:
                return store.get_transfer(t["id"]).bytes_moved  # type: ignore[union-attr]

        await wait_until(lambda: first_attempt() > 0, timeout=30)
        sent_before = first_attempt()
        await b.start()
        state = await a.call("wait_transfer", id=t["id"], timeout=120)
        assert state == "done"
        assert digest(downloads / "movie.bin") == digest(src)
        sent_again = first_attempt() - sent_before
        assert sent_again < 0.6 * size, f"resent {sent_again / size:.0%} of the file"
        assert sent_again <= size - kept + 4 * MiB
    finally:
        await a.stop()
        await b.stop()


async def test_size_limits_from_settings(start_node: StartNode, tmp_path: Path) -> None:
    a, b, downloads = await pair(start_node, tmp_path)
    b.update_settings(max_incoming_bytes_per_contact={a.peer_id: 1000})
    from p2pchat.node import _transfer_policy

    b.transfers.policy.per_contact_max = _transfer_policy(b.settings, b.paths).per_contact_max
    t = await a.offer_files("bob", [random_file(tmp_path / "src" / "big", 5000)])
    assert await a.wait_transfer(t.id, 20) == "declined"
    assert "too large" in (a.store.get_transfer(t.id).error or "")  # type: ignore[union-attr]
    assert not downloads.exists() or not any(downloads.iterdir())

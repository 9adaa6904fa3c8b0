"""Attacks on file drop against real nodes (real QUIC, real TCP, real SQLite).

Each test reproduces a hole found by attacking running nodes (issue 9), then checks
that the node holds: a stranger cannot switch off the TCP data path, a contact cannot
flood offers, and a received file is never left half published.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path

from p2pchat.core import chat
from p2pchat.core.filedrop import KEY_LABEL, PREAMBLE_SIZE, Sealer
from p2pchat.core.session import SecureSession
from p2pchat.identity import Identity, parse_address
from p2pchat.net import transfers
from p2pchat.net.endpoint import Endpoint
from p2pchat.node import Node

from ..conftest import StartNode, wait_until
from ..daemons import Daemon, make_home, rss_kib
from ..test_filedrop import digest, pair, random_file
from ..test_filedrop_hostile import HostileContact
from ..test_hostile import RawPeer, raw_endpoint

MiB = 1 << 20
TRANSFER_BOUND = 60.0  # liveness bound for a 5 MiB transfer on loopback


def tcp_counters(node: Node) -> dict[str, int]:
    counters: dict[str, int] = node.network_status()["file_drop"]
    return counters


async def send_and_check(a: Node, tmp_path: Path, downloads: Path, name: str) -> None:
    """A real 5 MiB transfer from ``a`` to bob completes, identical."""
    src = random_file(tmp_path / "src" / name, 5 * MiB)
    t = await a.offer_files("bob", [src])
    assert await a.wait_transfer(t.id, TRANSFER_BOUND) == "done"
    assert digest(downloads / name) == digest(src)


async def test_refused_connections_release_their_slot(
    start_node: StartNode, tmp_path: Path
) -> None:
    """40 connections at once: each one turned away used to leak an unclaimed slot,
    after which every data channel was closed at once and transfers hung."""
    a, b, downloads = await pair(start_node, tmp_path)
    port = b.transfers.tcp_port
    assert port
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
    # Wait until the node has turned away what is beyond its caps.
    await wait_until(lambda: sum(r.at_eof() for r, _ in conns) >= 24, timeout=20)
    for _r, w in conns:
        w.close()
    tcp_before = tcp_counters(b)["tcp_channels"]
    await send_and_check(a, tmp_path, downloads, "after-leak.bin")
    # Every slot came back: the data still took the direct TCP path.
    assert tcp_counters(b)["tcp_channels"] == tcp_before + 1
    assert tcp_counters(b)["tcp_unclaimed"] == 0


async def test_idle_connections_held_open_do_not_stall_transfers(
    start_node: StartNode, tmp_path: Path
) -> None:
    """A stranger keeps 24 idle connections open (reopening each one the node closes):
    transfers still complete, over QUIC if the direct path is refused."""
    a, b, downloads = await pair(start_node, tmp_path)
    port = b.transfers.tcp_port
    stop = asyncio.Event()

    async def hold_one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            try:
                read = asyncio.ensure_future(reader.read())
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
                read.cancel()
                stopped.cancel()
            finally:
                writer.close()

    holders = [asyncio.ensure_future(hold_one()) for _ in range(24)]
    try:
        await asyncio.sleep(0.5)  # the node is now full of idle connections
        await send_and_check(a, tmp_path, downloads, "while-held.bin")
        assert tcp_counters(b)["tcp_unclaimed"] <= 16
        assert tcp_counters(b)["tcp_refused"] > 0
    finally:
        stop.set()
        await asyncio.gather(*holders, return_exceptions=True)


async def test_garbage_preambles(start_node: StartNode, tmp_path: Path) -> None:
    """200 connections at once, each sending a garbage preamble: all are closed, none
    keeps a slot, and the next transfer takes the direct TCP path."""
    a, b, downloads = await pair(start_node, tmp_path)
    port = b.transfers.tcp_port

    async def garbage() -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        try:
            writer.write(os.urandom(PREAMBLE_SIZE))
            await writer.drain()
            await asyncio.wait_for(reader.read(), 20)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    await asyncio.gather(*(garbage() for _ in range(200)))
    await wait_until(lambda: tcp_counters(b)["tcp_unclaimed"] == 0, timeout=20)
    tcp_before = tcp_counters(b)["tcp_channels"]
    await send_and_check(a, tmp_path, downloads, "after-garbage.bin")
    assert tcp_counters(b)["tcp_channels"] == tcp_before + 1


async def hostile_session(
    endpoint: Endpoint, identity: Identity, address: str
) -> tuple[HostileContact, SecureSession]:
    """A contact built from the package's own classes that sends whatever it likes."""
    peer = RawPeer(endpoint, address)
    await asyncio.wait_for(peer.handshake.wait(), 10)
    session = SecureSession(initiator=True, our_key=identity.public_key, sign=identity.sign)
    session.initiate()
    peer.link.send_stream(0, session.data_to_send())
    hostile = HostileContact(peer, session)
    await wait_until(hostile.pump, timeout=10)
    hostile.send(chat.Hello(name="mallory"))
    return hostile, session


async def hostile_contact(b: Node) -> tuple[HostileContact, SecureSession, Endpoint]:
    endpoint, identity = await raw_endpoint()
    b.add_contact(identity.peer_id, name="mallory")
    hostile, session = await hostile_session(endpoint, identity, b.addresses[0])
    await wait_until(lambda: b.is_online(identity.peer_id))
    return hostile, session, endpoint


async def test_claimed_channel_that_goes_silent_is_dropped_and_retried(
    start_node: StartNode, tmp_path: Path
) -> None:
    """A contact sends a valid preamble and then nothing: the receiver gives up on the
    channel after its read deadline and asks for the data again on a fresh attempt."""
    b = await start_node("bob")
    b.transfers.policy.downloads = tmp_path / "downloads"
    b.transfers.policy.accept_from = frozenset({"contacts"})
    b.transfers.policy.data_idle_timeout = 1.0
    hostile, session, endpoint = await hostile_contact(b)
    try:
        tid = os.urandom(16).hex()
        hostile.send(chat.FileOffer(tid, (chat.FileEntry("f.bin", 1000, bytes(32)),)))
        await wait_until(lambda: bool(hostile.of(chat.FileAccept)))
        accept = hostile.of(chat.FileAccept)[0]
        assert isinstance(accept, chat.FileAccept) and accept.tcp_port
        key = session.export_key(KEY_LABEL, bytes.fromhex(tid) + accept.attempt)
        sealer = Sealer(key, bytes.fromhex(tid), accept.attempt)
        host, _ = parse_address(b.addresses[0])
        reader, writer = await asyncio.open_connection(host, accept.tcp_port)
        writer.write(sealer.preamble)
        await writer.drain()
        # The node closes the silent channel and asks again with a new attempt.
        assert await asyncio.wait_for(reader.read(), 20) == b"\x01"  # claimed, then closed
        await wait_until(lambda: len(hostile.of(chat.FileAccept)) >= 2, timeout=20)
        writer.close()
        again = hostile.of(chat.FileAccept)[1]
        assert isinstance(again, chat.FileAccept) and again.attempt != accept.attempt
    finally:
        endpoint.close()


def stored_rows(database: Path) -> tuple[int, int]:
    """(transfers, file rows) in a running daemon's database, read-only."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        transfers_count = db.execute("SELECT COUNT(*) FROM transfers").fetchone()[0]
        files = db.execute("SELECT COUNT(*) FROM transfer_files").fetchone()[0]
    return int(transfers_count), int(files)


FLOOD_OFFERS = 400
FILES_PER_FLOOD_OFFER = 1000


async def test_offer_and_cancel_flood_stays_bounded(start_node: StartNode, tmp_path: Path) -> None:
    """A contact offers 1,000 files and cancels at once, 400 times as fast as QUIC takes
    it.  Once each offer was stored and listing them froze the node.  Now: rows and RSS
    stay bounded, ``transfers`` answers within a second, chat still gets through."""
    paths = make_home(tmp_path, "victim")
    victim = Daemon(paths.home, json.loads(paths.settings.read_text())["listen"])
    await victim.start()
    endpoint, identity = await raw_endpoint()
    try:
        assert victim.proc is not None
        alice = await start_node("alice")
        victim_id = (await victim.call("info"))["peer_id"]
        await victim.call("add", ref=alice.peer_id, name="alice", addresses=list(alice.addresses))
        alice.add_contact(victim_id, name="victim", addresses=[victim.listen])
        await victim.call("add", ref=identity.peer_id, name="mallory")
        hostile, _session = await hostile_session(endpoint, identity, victim.listen)

        async def online() -> bool:
            contacts = await victim.call("contacts")
            return all(c["online"] for c in contacts)

        deadline = time.monotonic() + 20
        while not await online():
            assert time.monotonic() < deadline, "contacts never came online"
            await asyncio.sleep(0.1)
        rss_before = rss_kib(victim.proc.pid)

        files = tuple(
            chat.FileEntry(f"f{i:04d}", 1, bytes(32)) for i in range(FILES_PER_FLOOD_OFFER)
        )
        marker = os.urandom(16).hex()

        async def flood() -> None:
            for n in range(FLOOD_OFFERS):
                tid = os.urandom(16).hex()
                hostile.send(chat.FileOffer(tid, files))
                hostile.send(chat.FileCancel(tid, "never mind"))
                if n % 8 == 0:
                    await asyncio.sleep(0.01)  # let the endpoint put it on the wire
            # Frames are handled in order: the answer to this one means all were.
            hostile.send(chat.FileOffer(marker, (chat.FileEntry("../x", 1, bytes(32)),)))

        flooding = asyncio.ensure_future(flood())
        try:
            await asyncio.sleep(1.0)  # the victim is busy with the flood now
            # Chat still gets through, and listing answers, while the flood runs.
            sent = alice.send_message("victim", "still there?")
            assert await alice.wait_for_delivery(sent.id, 10) == "delivered"
            started = time.monotonic()
            page = await victim.call("transfers")
            assert time.monotonic() - started < 1.0
            assert len(page) <= transfers.PAGE_SIZE
            await flooding
        finally:
            flooding.cancel()

        def declines() -> list[chat.FileDecline]:
            return [f for f in hostile.of(chat.FileDecline) if isinstance(f, chat.FileDecline)]

        def answered() -> bool:
            return any(f.id == marker for f in declines())

        await wait_until(answered, timeout=120, interval=0.1)
        count, rows = stored_rows(paths.database)
        assert count <= transfers.MAX_STORED_PER_CONTACT
        assert rows <= transfers.MAX_STORED_FILES_PER_CONTACT
        assert rss_kib(victim.proc.pid) - rss_before < 64 * 1024
        started = time.monotonic()
        page = await victim.call("transfers", limit=transfers.MAX_PAGE_SIZE)
        assert time.monotonic() - started < 1.0
        assert sum(len(t["files"]) for t in page) <= transfers.PAGE_FILES
        status = await victim.call("network_status")
        assert status["file_drop"]["offers_refused"] > 0
        # The refusal told the contact why.
        reasons = {f.reason for f in declines()}
        assert any(r.startswith("too many offers") for r in reasons), reasons
        # Paging walks the rest: newest first, no overlap.
        first = await victim.call("transfers", limit=3)
        second = await victim.call("transfers", limit=3, before=first[-1]["id"])
        assert [t["created_at"] for t in first + second] == sorted(
            (t["created_at"] for t in first + second), reverse=True
        )
        assert not {t["id"] for t in first} & {t["id"] for t in second}
    finally:
        endpoint.close()
        await victim.stop()

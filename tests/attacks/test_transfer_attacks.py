"""Attacks on file drop against real nodes (real QUIC, real TCP, real SQLite).

Each test reproduces a hole found by attacking running nodes (issue 9), then checks
that the node holds: a stranger cannot switch off the TCP data path, a contact cannot
flood offers, and a received file is never left half published.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from p2pchat.core import chat
from p2pchat.core.filedrop import KEY_LABEL, PREAMBLE_SIZE, Sealer
from p2pchat.core.session import SecureSession
from p2pchat.identity import parse_address
from p2pchat.node import Node

from ..conftest import StartNode, wait_until
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


async def hostile_contact(b: Node) -> tuple[HostileContact, SecureSession, object]:
    endpoint, identity = await raw_endpoint()
    b.add_contact(identity.peer_id, name="mallory")
    peer = RawPeer(endpoint, b.addresses[0])
    await asyncio.wait_for(peer.handshake.wait(), 10)
    session = SecureSession(initiator=True, our_key=identity.public_key, sign=identity.sign)
    session.initiate()
    peer.link.send_stream(0, session.data_to_send())
    hostile = HostileContact(peer, session)
    await wait_until(hostile.pump, timeout=10)
    hostile.send(chat.Hello(name="mallory"))
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
        endpoint.close()  # type: ignore[attr-defined]

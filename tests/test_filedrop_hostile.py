"""A hostile contact's file offers over real QUIC and TCP: refused or contained."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from p2pchat.core import chat
from p2pchat.core.errors import RemoteProtocolError
from p2pchat.core.filedrop import KEY_LABEL, Sealer
from p2pchat.core.session import PayloadReceived, SecureSession
from p2pchat.identity import parse_address

from .conftest import StartNode, wait_until
from .test_hostile import RawPeer, raw_endpoint


class HostileContact:
    """Speaks the session and chat protocol by hand, so it can send anything."""

    def __init__(self, peer: RawPeer, session: SecureSession) -> None:
        self.peer = peer
        self.session = session
        self.frames: list[chat.ChatFrame] = []

    def pump(self) -> bool:
        if self.peer.received:
            self.session.receive_data(bytes(self.peer.received))
            self.peer.received.clear()
        while (event := self.session.next_event()) is not None:
            if isinstance(event, PayloadReceived):
                for frame in chat.decode_frames(event.payload):  # (a bundle: several)
                    if not isinstance(frame, RemoteProtocolError):
                        self.frames.append(frame)
        out = self.session.data_to_send()
        if out:
            self.peer.link.send_stream(0, out)
        return self.session.established

    def send(self, frame: chat.ChatFrame) -> None:
        self.session.send(chat.encode(frame))
        self.pump()

    def of(self, kind: type) -> list[chat.ChatFrame]:
        self.pump()
        return [f for f in self.frames if isinstance(f, kind)]


async def test_malicious_offers(start_node: StartNode, tmp_path: Path) -> None:
    b = await start_node("bob")
    downloads = tmp_path / "box" / "downloads"
    b.transfers.policy.downloads = downloads
    b.transfers.policy.accept_from = frozenset({"contacts"})
    endpoint, identity = await raw_endpoint()
    b.add_contact(identity.peer_id, name="mallory")
    try:
        peer = RawPeer(endpoint, b.addresses[0])
        await asyncio.wait_for(peer.handshake.wait(), 10)
        session = SecureSession(initiator=True, our_key=identity.public_key, sign=identity.sign)
        session.initiate()
        peer.link.send_stream(0, session.data_to_send())
        hostile = HostileContact(peer, session)
        await wait_until(hostile.pump, timeout=10)
        hostile.send(chat.Hello(name="mallory"))
        await wait_until(lambda: b.is_online(identity.peer_id))

        evil_names = [
            "../../etc/passwd",
            "/etc/passwd",
            "ok/../../../escape",
            "nul\x00name",
            "esc\x1b[2Jape",
            "C:/Windows/evil.dll",
            "a\\..\\b",
        ]
        for name in evil_names:
            hostile.send(
                chat.FileOffer(os.urandom(16).hex(), (chat.FileEntry(name, 5, bytes(32)),))
            )
        await wait_until(lambda: len(hostile.of(chat.FileDecline)) == len(evil_names))
        assert not hostile.of(chat.FileAccept)

        # A size lie / endless stream: offered 1,000 bytes, sends more.
        tid = os.urandom(16).hex()
        hostile.send(chat.FileOffer(tid, (chat.FileEntry("small.txt", 1000, bytes(32)),)))
        await wait_until(lambda: bool(hostile.of(chat.FileAccept)))
        accept = hostile.of(chat.FileAccept)[0]
        assert isinstance(accept, chat.FileAccept) and accept.tcp_port
        key = session.export_key(KEY_LABEL, bytes.fromhex(tid) + accept.attempt)
        sealer = Sealer(key, bytes.fromhex(tid), accept.attempt)
        host, _ = parse_address(b.addresses[0])
        _reader, writer = await asyncio.open_connection(host, accept.tcp_port)
        writer.write(sealer.preamble)
        offset = 0
        try:
            for _ in range(200):  # 200 * 1000 bytes: far more than offered
                writer.write(sealer.seal(0, offset, b"A" * 1000))
                offset += 1000
                await writer.drain()
                await asyncio.sleep(0)
        except ConnectionError:
            pass
        writer.close()
        await asyncio.sleep(0.5)
        t = b.store.get_transfer(tid)
        assert t is not None and t.state != "done"
        parts = list(downloads.rglob("*.part"))
        assert all(p.stat().st_size <= 1000 for p in parts)
        assert not (downloads / "small.txt").exists()
        # Nothing was written anywhere but the download folder.
        written = {p for p in (tmp_path / "box").rglob("*") if p.is_file()}
        assert all(downloads in p.parents for p in written)
        assert not Path("/etc/passwd.part").exists()
    finally:
        endpoint.close()

"""Hostile input from the network over real UDP/QUIC: contained, never fatal."""

from __future__ import annotations

import asyncio
import os
import socket

from p2pchat.core import chat
from p2pchat.core.session import SecureSession
from p2pchat.identity import Identity, parse_address
from p2pchat.net.endpoint import Endpoint, QuicLink
from p2pchat.node import Node

from .conftest import StartNode, wait_until


class RawPeer:
    """A hand-driven QUIC client that can put any bytes on the control stream."""

    def __init__(self, endpoint: Endpoint, target: str) -> None:
        self.received = bytearray()
        self.terminated: str | None = None
        self.handshake = asyncio.Event()
        self.link: QuicLink = endpoint.connect(parse_address(target))
        self.link.handler = self

    def link_handshake_done(self, link: QuicLink) -> None:
        self.handshake.set()

    def link_stream_data(self, link: QuicLink, stream_id: int, data: bytes, end: bool) -> None:
        self.received += data

    def link_terminated(self, link: QuicLink, reason: str) -> None:
        self.terminated = reason


async def raw_endpoint() -> tuple[Endpoint, Identity]:
    identity = Identity.generate()
    endpoint = Endpoint(identity)
    await endpoint.start("127.0.0.1", 0)
    return endpoint, identity


async def still_works(a: Node, b: Node) -> None:
    if b.peer_id not in {c.peer_id for c in a.contacts()}:
        a.add_contact(b.peer_id, name="b", addresses=b.addresses)
        b.add_contact(a.peer_id, name="a", addresses=a.addresses)
    sent = a.send_message("b", "still alive?")
    assert await a.wait_for_delivery(sent.id, 20) == "delivered"


async def test_oversized_frame_closes_only_that_connection(start_node: StartNode) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    endpoint, _ = await raw_endpoint()
    try:
        peer = RawPeer(endpoint, b.addresses[0])
        await asyncio.wait_for(peer.handshake.wait(), 10)
        # Claims a 4 GiB frame, then keeps sending: the node must not buffer it.
        peer.link.send_stream(0, b"\xff\xff\xff\xff" + os.urandom(60_000))
        await wait_until(lambda: peer.terminated is not None, timeout=10)
        await still_works(a, b)
    finally:
        endpoint.close()


async def test_garbage_on_the_control_stream_and_bad_frames(start_node: StartNode) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    endpoint, identity = await raw_endpoint()
    try:
        # 1. random bytes in place of the handshake
        peer = RawPeer(endpoint, b.addresses[0])
        await asyncio.wait_for(peer.handshake.wait(), 10)
        peer.link.send_stream(0, b"\x00\x00\x00\x10" + os.urandom(16))
        await wait_until(lambda: peer.terminated is not None, timeout=10)
        # 2. a proper session, then invalid chat frames and a flood of them
        peer2 = RawPeer(endpoint, b.addresses[0])
        await asyncio.wait_for(peer2.handshake.wait(), 10)
        session = SecureSession(initiator=True, our_key=identity.public_key, sign=identity.sign)
        session.initiate()
        peer2.link.send_stream(0, session.data_to_send())

        def pump() -> bool:
            if peer2.received:
                session.receive_data(bytes(peer2.received))
                peer2.received.clear()
                while session.next_event() is not None:
                    pass
                out = session.data_to_send()
                if out:
                    peer2.link.send_stream(0, out)
            return session.established

        await wait_until(pump, timeout=10)
        session.send(chat.encode(chat.Hello(name="mallory\x1b[31m"[:7])))
        for _ in range(40):
            session.send(b"\x93not a map")
        peer2.link.send_stream(0, session.data_to_send())
        await wait_until(lambda: peer2.terminated is not None, timeout=10)
        # The stranger left a request, nothing else.
        assert [r.peer_id for r in b.requests()] == [identity.peer_id]
        await still_works(a, b)
    finally:
        endpoint.close()


async def test_datagram_garbage_does_not_hurt(start_node: StartNode) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    host, port = parse_address(b.addresses[0])
    samples = [
        b"",
        b"d1:ad2:id20:" + os.urandom(20) + b"e1:q4:ping1:t2:aa1:y1:qe",  # KRPC-looking
        b"d" + os.urandom(100),
        b"\x00" + os.urandom(40),  # punch/relay space
        b"\xc0" + os.urandom(1300),  # long header, junk
        b"\x40" + os.urandom(50),  # short header, unknown CID
        os.urandom(1400),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(20):
            for sample in samples:
                s.sendto(sample, (host, port))
    await asyncio.sleep(0.2)
    await still_works(a, b)

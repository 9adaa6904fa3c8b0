"""Rendezvous and hole punching between real nodes on 127.0.0.1.

Loopback has no NAT, so these tests show the protocol end to end (registration,
forwarded connect requests, probes, QUIC on the punched path, hostile input); the
NAT behaviour itself is tested in the network lab (``tests/test_netlab_punch.py``).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from p2pchat.core import punch
from p2pchat.core.punch import BlobKind, ConnectBlob
from p2pchat.core.rendezvous import RendezvousLimits
from p2pchat.identity import Identity, verify_signature
from p2pchat.node import Node

from .conftest import StartNode, make_home, wait_until

Start = Callable[..., Awaitable[Node]]


@pytest.fixture
def start(start_node: StartNode) -> Start:
    """Nodes started with options (``start("relay", relay=True)``), stopped after."""
    return start_node


def address_of(node: Node) -> str:
    return node.addresses[0]


def status(node: Node) -> dict[str, Any]:
    reach = node.network_status()["reachability"]
    assert isinstance(reach, dict)
    return reach


async def registered(node: Node, count: int = 1) -> None:
    def ok() -> bool:
        regs = status(node)["registrations"]
        return sum(r["state"] == "registered" for r in regs) >= count

    await wait_until(ok, timeout=10)


async def test_punched_connection_through_a_rendezvous(start: Start) -> None:
    v = await start("rendezvous", relay=True)
    t = await start("target", rendezvous=[f"{v.peer_id}@{address_of(v)}"])
    d = await start("dialer")
    await registered(t)
    reg = status(t)["registrations"][0]
    assert reg["peer_id"] == v.peer_id and reg["observed"] == address_of(t)
    assert status(v)["rendezvous"]["registrations"] == 1
    # Both know each other by ID only; the dialer learns the rendezvous as a DHT
    # record would tell it.
    t.add_contact(d.peer_id, name="dialer")
    d.add_contact(t.peer_id, name="target")
    d.peer_discovered(t.peer_id, [], source="dht", rendezvous=[address_of(v)], nat="unknown")
    sent = d.send_message("target", "through the rendezvous")
    assert await d.wait_for_delivery(sent.id, 20) == "delivered"
    (view,) = d.contacts()
    assert view.path == "punched" and view.rtt_ms is not None
    await wait_until(lambda: t.contacts()[0].path == "punched")
    back = t.send_message("dialer", "and back")
    assert await t.wait_for_delivery(back.id, 20) == "delivered"
    assert status(d)["punch"]["paths_found"] >= 1
    assert status(t)["punch"]["accepted"] == 1
    assert status(v)["rendezvous"]["connect_forwarded"] >= 1


async def test_a_rendezvous_registers_only_its_contacts_unless_it_relays(start: Start) -> None:
    v = await start("rendezvous")
    t = await start("target", rendezvous=[f"{v.peer_id}@{address_of(v)}"])
    await wait_until(
        lambda: [r["state"] for r in status(t)["registrations"]] == ["refused"], timeout=10
    )
    assert "contact" in status(t)["registrations"][0]["reason"]
    assert status(v)["rendezvous"]["refused_policy"] >= 1
    # A contact of the rendezvous is registered without relaying.
    friend_home = make_home(Path(str(t.paths.home)).parent, "friend")
    v.add_contact(Node(friend_home).peer_id, name="friend")
    friend = await start("friend", rendezvous=[f"{v.peer_id}@{address_of(v)}"])
    await registered(friend)
    assert status(v)["rendezvous"]["registrations"] == 1


class Raw:
    """A bare UDP socket speaking the punch protocol by hand."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)

    def send(self, data: bytes, to: str) -> None:
        host, _, port = to.rpartition(":")
        self.sock.sendto(data, (host, int(port)))

    async def recv(self) -> bytes | None:
        """In a thread: the nodes under test share this event loop."""
        try:
            return await asyncio.to_thread(self.sock.recv, 2048)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


async def test_hostile_rendezvous_input(start: Start) -> None:
    v = await start("rendezvous", relay=True)
    t = await start("target", rendezvous=[f"{v.peer_id}@{address_of(v)}"])
    d = await start("dialer")
    await registered(t)
    raw = Raw()
    mallory = Identity.generate()
    try:
        # Junk and oversized datagrams in the punch space: dropped, counted.
        junk = [b"\x10", b"\x12p2" + os.urandom(1400), b"\x3fp2" + os.urandom(40)]
        junk += [bytes((0x10 + i % 0x30,)) + os.urandom(80) for i in range(50)]
        for data in junk:
            raw.send(data, address_of(v))
        # A registration flood from one source: rate-limited, memory bounded.
        for _ in range(300):
            raw.send(punch.encode(punch.RegHello(os.urandom(32))), address_of(v))
        await asyncio.sleep(0.3)
        challenges = 0
        while await raw.recv() is not None:
            challenges += 1
        assert challenges <= 45, "one source gets a burst of answers, then silence"
        assert status(v)["rendezvous"]["rate_limited"] > 0
        # A connect request for a key nobody registered: a clear refusal.
        stranger = Identity.generate()
        blob = ConnectBlob(
            BlobKind.REQUEST, mallory.public_key, stranger.public_key, bytes(8), 0,
            bytes(32), "unknown", (),
        ).seal(mallory.sign, stranger.public_key)  # fmt: skip
        await asyncio.sleep(2.1)  # let the source's bucket refill
        raw.send(
            punch.encode(punch.Connect(stranger.public_key, mallory.public_key, bytes(8), blob)),
            address_of(v),
        )
        reply = await raw.recv()
        assert reply is not None
        decoded = punch.decode(reply)
        assert isinstance(decoded, punch.ConnectReply)
        assert decoded.status == punch.Status.UNKNOWN_TARGET
        # A connect request forged in the dialer's name reaches the target, which drops it.
        forged = ConnectBlob(
            BlobKind.REQUEST, d.identity.public_key, t.identity.public_key, os.urandom(8),
            int(t.clock() * 1000), bytes(32), "unknown", (("127.0.0.1", 9),),
        )  # fmt: skip
        sealed = forged.seal(mallory.sign, t.identity.public_key)
        raw.send(
            punch.encode(
                punch.Connect(
                    t.identity.public_key, d.identity.public_key, forged.request_id, sealed
                )
            ),
            address_of(v),
        )
        await wait_until(lambda: status(t)["punch"].get("bad_request", 0) >= 1, timeout=5)
        # A node claiming to be t's rendezvous: forwards from it are ignored.
        genuine = ConnectBlob(
            BlobKind.REQUEST, mallory.public_key, t.identity.public_key, os.urandom(8),
            int(t.clock() * 1000), bytes(32), "unknown", (),
        ).seal(mallory.sign, t.identity.public_key)  # fmt: skip
        raw.send(
            punch.encode(punch.ConnectFwd(mallory.public_key, bytes(8), ("127.0.0.1", 9), genuine)),
            address_of(t),
        )
        await wait_until(lambda: status(t)["punch"].get("forward_from_stranger", 0) >= 1, timeout=5)
        # Registering in someone else's name: a signature from the wrong key.
        raw.send(punch.encode(punch.RegHello(d.identity.public_key)), address_of(v))
        challenge = punch.decode(await raw.recv() or b"")
        assert isinstance(challenge, punch.RegChallenge)
        signed = punch.Register.signed_part(
            challenge.rendezvous_key, d.identity.public_key, challenge.cookie
        )
        raw.send(
            punch.encode(
                punch.Register(d.identity.public_key, challenge.cookie, mallory.sign(signed))
            ),
            address_of(v),
        )
        await wait_until(lambda: status(v)["rendezvous"].get("bad_signature", 0) >= 1, timeout=5)
        assert await raw.recv() is None, "a forged registration gets no answer"
        assert status(v)["rendezvous"]["registrations"] == 1
        # Many genuine registrations from one address (one key each): the table for
        # that address stops at its cap, with a signed refusal for the rest.
        refused = 0
        for _ in range(24):
            someone = Identity.generate()
            raw.send(punch.encode(punch.RegHello(someone.public_key)), address_of(v))
            got = punch.decode(await raw.recv() or b"")
            assert isinstance(got, punch.RegChallenge)
            signed = punch.Register.signed_part(got.rendezvous_key, someone.public_key, got.cookie)
            register = punch.Register(someone.public_key, got.cookie, someone.sign(signed))
            raw.send(punch.encode(register), address_of(v))
            answer = punch.decode(await raw.recv() or b"")
            assert isinstance(answer, punch.Registered)
            refused += answer.status != punch.Status.OK
            await asyncio.sleep(0.05)  # stay inside the source's rate budget
        # (t registered from 127.0.0.1 too: on loopback everyone shares the address.)
        limit = RendezvousLimits().per_ip_registrations
        assert status(v)["rendezvous"]["registrations"] == limit
        assert refused == 24 - (limit - 1)
        assert status(v)["rendezvous"]["refused_ip_full"] == refused
        # Connect requests from a stranger: the target answers a few, then declines.
        answers = []
        for _ in range(8):
            rid = os.urandom(8)
            request = ConnectBlob(
                BlobKind.REQUEST, mallory.public_key, t.identity.public_key, rid,
                int(t.clock() * 1000), os.urandom(32), "unknown", (("127.0.0.1", 9),),
            ).seal(mallory.sign, t.identity.public_key)  # fmt: skip
            connect = punch.Connect(t.identity.public_key, mallory.public_key, rid, request)
            raw.send(punch.encode(connect), address_of(v))
            reply = punch.decode(await raw.recv() or b"")
            assert isinstance(reply, punch.ConnectReply) and reply.status == punch.Status.OK
            opened = ConnectBlob.open(reply.blob, mallory.seed, verify_signature)
            answers.append(opened.kind)
        assert answers.count(BlobKind.ACCEPT) == 4, answers
        assert answers[4:] == [BlobKind.DECLINE] * 4
        assert status(t)["punch"]["stranger_refused"] == 4
    finally:
        raw.close()
    # The real pair still connects through the rendezvous.
    t.add_contact(d.peer_id, name="dialer")
    d.add_contact(t.peer_id, name="target")
    d.peer_discovered(t.peer_id, [], source="dht", rendezvous=[address_of(v)])
    sent = d.send_message("target", "still works")
    assert await d.wait_for_delivery(sent.id, 20) == "delivered"
    # (0x30-0x3F is the relay's part of the space: its junk is counted there.)
    relay_junk = status(v)["relaying"]["using"].get("junk", 0)
    assert status(v)["punch"]["junk"] + relay_junk >= len(junk) - 1

"""Relayed sessions between real nodes on 127.0.0.1.

Loopback has no NAT, so a punch would always find a path here: in these tests the
dialer's punch is switched off (its ``Dialer`` gets no ``PunchService``), which
leaves the relay as its only way to the target.  Everything else is the real thing:
registrations, channel set-up, QUIC and the NaCl session over the relay, messages and
a file both ways.  The NAT cases (random x random, a relay that dies or misbehaves,
a NAT that becomes punchable) are in ``tests/test_netlab_relay.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from p2pchat.core import relay as wire
from p2pchat.core.events import PeerOffline
from p2pchat.identity import (
    Identity,
    InvalidInvite,
    Invite,
    key_from_peer_id,
    load_identity,
    parse_address,
)
from p2pchat.node import DUPLICATE, DUPLICATE_GRACE, Node

from .conftest import EventLog, StartNode, make_home, wait_until

Start = Callable[..., Awaitable[Node]]
MiB = 1024 * 1024


@pytest.fixture
def start(start_node: StartNode) -> Start:
    """Nodes started with options (``start("relay", relay=True)``), stopped after."""
    return start_node


def address_of(node: Node) -> str:
    return node.addresses[0]


def relaying(node: Node) -> dict[str, Any]:
    reach = node.network_status()["reachability"]
    assert isinstance(reach, dict)
    out = reach["relaying"]
    assert isinstance(out, dict)
    return out


async def registered(node: Node, count: int = 1) -> None:
    def ok() -> bool:
        regs = node.network_status()["reachability"]["registrations"]
        return sum(r["state"] == "registered" for r in regs) >= count

    await wait_until(ok, timeout=10)


def relay_only(node: Node) -> None:
    """This node's dialer may only relay (loopback would always punch)."""
    assert node._dialer is not None
    node._dialer.punch = None


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def relayed_pair(start: Start, tmp: Path) -> tuple[Node, Node, Node]:
    v = await start("relay", relay=True)
    t = await start("target", rendezvous=[f"{v.peer_id}@{address_of(v)}"])
    d = await start("dialer")
    relay_only(d)
    await registered(t)
    t.add_contact(d.peer_id, name="dialer")
    d.add_contact(t.peer_id, name="target")
    for node in (d, t):
        node.transfers.policy.downloads = tmp / f"downloads-{node.name}"
        node.transfers.policy.accept_from = frozenset({"contacts"})
    # The dialer knows the target's rendezvous as its DHT record would tell it, and
    # nothing else: no address.
    d.peer_discovered(t.peer_id, [], source="dht", rendezvous=[address_of(v)], nat="unknown")
    return v, t, d


async def test_relayed_session_carries_messages_and_files(start: Start, tmp_path: Path) -> None:
    v, t, d = await relayed_pair(start, tmp_path)
    sent = d.send_message("target", "through the relay")
    assert await d.wait_for_delivery(sent.id, 20) == "delivered"
    (view,) = d.contacts()
    assert view.path == "relayed" and view.via == v.peer_id, view
    await wait_until(lambda: t.contacts()[0].path == "relayed")
    assert t.contacts()[0].via == v.peer_id
    back = t.send_message("dialer", "and back")
    assert await t.wait_for_delivery(back.id, 20) == "delivered"
    # The relay's address is nobody's: neither side stores it for the other.
    assert address_of(v) not in d.store.get_contact(t.peer_id).addresses  # type: ignore[union-attr]
    assert address_of(v) not in t.store.get_contact(d.peer_id).addresses  # type: ignore[union-attr]
    # A file each way, over the session's QUIC streams.
    src = tmp_path / "src" / "a.bin"
    src.parent.mkdir()
    src.write_bytes(os.urandom(3 * MiB))
    up = await d.offer_files("target", [src])
    assert await d.wait_transfer(up.id, 60) == "done"
    assert digest(tmp_path / "downloads-target" / "a.bin") == digest(src)
    down = await t.offer_files("dialer", [src])
    assert await t.wait_transfer(down.id, 60) == "done"
    assert digest(tmp_path / "downloads-dialer" / "a.bin") == digest(src)
    served = relaying(v)["serving"]
    assert served["channels"] == 1 and served["forwarded_bytes"] > 6 * MiB, served
    assert served["dropped_wrong_source"] == 0
    (channel,) = relaying(d)["channels"]
    assert channel["relay"] == v.peer_id and channel["role"] == "dialer"
    assert channel["peer_id"] == t.peer_id
    assert t.transfers.status()["tcp_channels"] == 0  # the relay's address is no path


async def test_a_second_session_from_the_same_dialer_replaces_the_first_without_a_redial(
    start: Start, tmp_path: Path
) -> None:
    """A relay channel that opens after the race was won brings a second session from
    the same dialer: it replaces the first on both sides, and the dialer, whose active
    session the responder may close before the new one's Hello arrives, waits for that
    Hello instead of dialling again (over a loaded relay, each redial brought one more
    duplicate: a new connection every 100 ms until the relay's channels ran out)."""
    v, t, d = await relayed_pair(start, tmp_path)
    sent = d.send_message("target", "first session")
    assert await d.wait_for_delivery(sent.id, 20) == "delivered"
    await wait_until(lambda: t.peer_id in d._active and d.peer_id in t._active)
    first = d._active[t.peer_id]
    assert d._dialer is not None and d._relay is not None
    attempts = d._dialer.stats.get("attempts", 0)
    channel = await d._relay.dial(key_from_peer_id(t.peer_id), [parse_address(address_of(v))])
    second = d._open_connection(t.peer_id, channel.relay_addr, channel, "relayed")
    await wait_until(lambda: d._active.get(t.peer_id) is second and first.closed, timeout=20)
    their = t._active[d.peer_id]
    assert their.path == "relayed" and not their.closed
    after = d.send_message("target", "on the second session")
    assert await d.wait_for_delivery(after.id, 20) == "delivered"
    assert d._dialer.stats.get("attempts", 0) == attempts
    assert d._active.get(t.peer_id) is second and t._active[d.peer_id] is their
    assert [m.body for m in t.history("dialer")] == ["first session", "on the second session"]
    # Had the responder's Hello on the new session been slower than its close of the
    # old one, the dialer would have found itself without a session: it then waits for
    # the session the peer kept, and only after the grace dials again.
    log = EventLog(d)
    try:
        their.close(DUPLICATE)
        await wait_until(lambda: bool(log.of(PeerOffline)))
        assert [e.reason for e in log.of(PeerOffline)] == [DUPLICATE]  # type: ignore[attr-defined]
        assert d._dialer._peers[t.peer_id].next_at - d._dialer.loop.time() > DUPLICATE_GRACE - 1
        assert d._dialer.stats.get("attempts", 0) == attempts
        meanwhile = d.send_message("target", "after the grace")
        assert await d.wait_for_delivery(meanwhile.id, 30) == "delivered"
    finally:
        await log.close()


async def test_relay_keeps_only_contacts_unless_public(start: Start, tmp_path: Path) -> None:
    """A node without ``--relay`` registers, and so relays for, its contacts only: a
    dialer that is not its contact gets no registration there, hence no channel."""
    v = await start("relay")
    v.add_contact(load_identity(make_home(tmp_path, "target").identity).peer_id, name="target")
    t = await start("target", rendezvous=[f"{v.peer_id}@{address_of(v)}"])
    d = await start("dialer")
    relay_only(d)
    await registered(t)
    t.add_contact(d.peer_id, name="dialer")
    d.add_contact(t.peer_id, name="target")
    d.peer_discovered(t.peer_id, [], source="dht", rendezvous=[address_of(v)], nat="unknown")
    dialer = d._dialer
    assert dialer is not None

    def refused() -> bool:
        regs = d.network_status()["reachability"]["registrations"]
        return dialer.stats.get("relay_failed", 0) >= 1 and any(
            r["peer_id"] == v.peer_id and r["state"] == "refused" for r in regs
        )

    await wait_until(refused, timeout=20)
    assert not d.is_online(t.peer_id)
    assert relaying(v)["serving"]["channels_opened"] == 0
    # Once the relay's owner adds the dialer, the same dial goes through.
    v.add_contact(d.peer_id, name="dialer")
    dialer.refresh(t.peer_id)
    await wait_until(lambda: d.is_online(t.peer_id), timeout=30)
    assert d.contacts()[0].path == "relayed"


class Raw:
    """A bare UDP socket speaking the relay protocol by hand."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.3)

    def send(self, data: bytes, to: str) -> None:
        host, _, port = to.rpartition(":")
        self.sock.sendto(data, (host, int(port)))

    async def recv(self) -> bytes | None:
        try:
            return await asyncio.to_thread(self.sock.recv, 2048)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


async def test_hostile_relay_input(start: Start, tmp_path: Path) -> None:
    """Junk, forged opens, data for channels that do not exist or from the wrong
    address: counted and dropped, never answered to an unproven address, and the
    relayed pair keeps talking."""
    v, t, d = await relayed_pair(start, tmp_path)
    sent = d.send_message("target", "before")
    assert await d.wait_for_delivery(sent.id, 20) == "delivered"
    (channel,) = v._relay.server._channels  # type: ignore[union-attr]
    raw = Raw()
    try:
        to = address_of(v)
        junk = [
            b"\x30p2",
            b"\x30p2" + channel,  # no payload
            b"\x30p2" + channel + os.urandom(2000),  # too large
            b"\x31p2" + os.urandom(10),
            b"\x3fp2" + os.urandom(60),
            b"\x33p2" + os.urandom(57),
        ]
        for data in junk:
            raw.send(data, to)
        # A channel's traffic from someone else's address: dropped, not forwarded.
        raw.send(wire.data_packet(channel, b"\x40" + os.urandom(100)), to)
        # An open in the target's name (its key, not its address or keepalive key).
        raw.send(
            wire.encode(wire.RelayOpen(t.identity.public_key, d.identity.public_key,
                                       os.urandom(8), os.urandom(16))),
            to,
        )  # fmt: skip
        assert await raw.recv() is None  # nothing answers an unproven address
        served = relaying(v)["serving"]
        assert served["dropped_wrong_source"] >= 1
        assert served["dropped_unregistered"] >= 1
        assert relaying(v)["using"]["junk"] >= 4
        # An offer to the target from somebody who is not its rendezvous: ignored.
        raw.send(
            wire.encode(wire.RelayOffer(d.identity.public_key, os.urandom(8), os.urandom(16))),
            address_of(t),
        )
        await wait_until(lambda: relaying(t)["using"].get("offer_from_stranger", 0) >= 1)
    finally:
        raw.close()
    again = d.send_message("target", "after")
    assert await d.wait_for_delivery(again.id, 20) == "delivered"
    assert d.contacts()[0].path == "relayed"


async def test_an_invite_carries_relay_hints_and_the_invitee_uses_them(
    start: Start, tmp_path: Path
) -> None:
    v = await start("relay", relay=True)
    t = await start("target", rendezvous=[f"{v.peer_id}@{address_of(v)}"])
    await registered(t)
    invite = Invite.decode(t.invite())
    assert invite.relays == (f"{v.peer_id}@{address_of(v)}",)
    d = await start("dialer")
    d.add_contact(t.invite(), name="target")
    assert d.store.network_hints("relay") == [f"{v.peer_id}@{address_of(v)}"]
    # The invitee registers with the inviter's relay itself, and can reach the inviter
    # through it.
    await registered(d)
    regs = d.network_status()["reachability"]["registrations"]
    assert [r["peer_id"] for r in regs if r["state"] == "registered"] == [v.peer_id]
    assert d._routes[t.peer_id] == (tuple(parse_address(address_of(v))),)


def test_invite_hints_are_checked_and_round_trip() -> None:
    me, relay = Identity.generate(), Identity.generate()
    invite = Invite(
        me.peer_id,
        relays=(f"{relay.peer_id}@198.51.100.100:47474",),
        bootstrap=("198.51.100.100:47474", "boot.example.org:6881"),
    )
    assert Invite.decode(invite.encode()) == invite
    for relays, bootstrap in (
        (("198.51.100.100:47474",), ()),  # a relay needs its peer ID
        ((f"{relay.peer_id[:-1]}@198.51.100.100:1",), ()),
        ((), (f"{relay.peer_id}@198.51.100.100:1",)),  # a bootstrap node is an address
        ((), ("no-port",)),
        (tuple(f"{relay.peer_id}@10.0.0.{i}:1" for i in range(5)), ()),  # four at most
    ):
        with pytest.raises(InvalidInvite):
            Invite(me.peer_id, relays=relays, bootstrap=bootstrap)


class Starver(asyncio.DatagramProtocol):
    """A UDP path between a client and ``server`` that, once ``starving``, passes only
    datagrams of at most 300 bytes (pings and acknowledgements), as a hostile relay
    could."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.starving = False
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        src = (str(addr[0]), int(addr[1]))
        dest = self.client if src == self.server else self.server
        if src != self.server:
            self.client = src
        if dest is None or self.transport is None:
            return
        if self.starving and len(data) > 300:
            self.dropped += 1
            return
        self.transport.sendto(data, dest)


async def test_a_path_that_passes_pings_but_not_data_is_closed(start: Start) -> None:
    """QUIC retransmits for ever on a path that drops only the large datagrams; the node
    closes such a connection once its chat data made no progress for 10 s, and the
    message waits for the next session."""
    a = await start("alice")
    b = await start("bob")
    host, port = parse_address(address_of(b))
    loop = asyncio.get_running_loop()
    transport, path = await loop.create_datagram_endpoint(
        lambda: Starver((host, port)), local_addr=("127.0.0.1", 0)
    )
    try:
        via = f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"
        b.add_contact(a.peer_id, name="alice")
        a.add_contact(b.peer_id, name="bob", addresses=[via])
        first = a.send_message("bob", "through the path")
        assert await a.wait_for_delivery(first.id, 20) == "delivered"
        assert isinstance(path, Starver)
        path.starving = True
        log = EventLog(a)
        stuck = a.send_message("bob", "x" * 2000)
        await wait_until(
            lambda: any(isinstance(e, PeerOffline) and "no progress" in e.reason
                        for e in log.events),
            timeout=30,
        )  # fmt: skip
        assert path.dropped > 0
        assert a.store.get_message(stuck.id).state == "queued"  # type: ignore[union-attr]
        await log.close()
        path.starving = False
        assert await a.wait_for_delivery(stuck.id, 30) == "delivered"
    finally:
        transport.close()

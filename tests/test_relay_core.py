"""The relay's packets and its channel table with every budget, driven with real keys,
real registrations (``RendezvousServer`` and ``RegistrationClient``) and no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pchat.core import punch
from p2pchat.core import relay as wire
from p2pchat.core.punch import Addr, PunchError
from p2pchat.core.relay import (
    IDLE_TTL,
    MIN_COST,
    OFFER_TTL,
    RelayAnswer,
    RelayClose,
    RelayClosed,
    RelayData,
    RelayLimits,
    RelayOffer,
    RelayOpen,
    RelayReady,
    RelayServer,
    RelayStatus,
)
from p2pchat.core.rendezvous import RegistrationClient, RendezvousServer
from p2pchat.identity import Identity, verify_signature

V = ("198.51.100.100", 4001)
A_ADDR: Addr = ("198.51.100.1", 40001)
B_ADDR: Addr = ("198.51.100.2", 40002)
C_ADDR: Addr = ("198.51.100.3", 40003)
CH = bytes(range(8))


class World:
    """A relay (its rendezvous table and channel table) and registered nodes."""

    def __init__(self, **limits: float) -> None:
        self.me = Identity.generate()
        self.rendezvous = RendezvousServer(
            key=self.me.public_key,
            sign=self.me.sign,
            verify=verify_signature,
            may_register=lambda key: True,
        )
        self.relay = RelayServer(
            registration=self.rendezvous.registration,
            limits=RelayLimits(**limits),  # type: ignore[arg-type]
        )
        self.clients: dict[Addr, RegistrationClient] = {}

    def register(self, addr: Addr, now: float = 0.0) -> RegistrationClient:
        identity = Identity.generate()
        cli = RegistrationClient(
            our_key=identity.public_key,
            seed=identity.seed,
            sign=identity.sign,
            verify=verify_signature,
            addr=V,
        )
        cli.start(now)
        for _ in range(4):
            for data, _dest in cli.datagrams_to_send():
                self.rendezvous.receive(punch.decode(data), addr, now)
            for data, _dest in self.rendezvous.datagrams_to_send():
                cli.receive(punch.decode(data), V, now)
        assert cli.registered
        self.clients[addr] = cli
        return cli

    def sent(self) -> list[tuple[wire.Packet, Addr]]:
        return [(wire.decode(d), a) for d, a in self.relay.datagrams_to_send()]

    def open(
        self, dialer: RegistrationClient, target: RegistrationClient, src: Addr, now: float = 0.0
    ) -> list[tuple[wire.Packet, Addr]]:
        tag = wire.open_mac(dialer.keepalive_key, dialer.our_key, target.our_key, CH)
        self.relay.receive(RelayOpen(dialer.our_key, target.our_key, CH, tag), src, now)
        return self.sent()

    def answer(
        self, target: RegistrationClient, src: Addr, status: int = 0, now: float = 0.0
    ) -> list[tuple[wire.Packet, Addr]]:
        tag = wire.answer_mac(target.keepalive_key, target.our_key, CH, status)
        self.relay.receive(RelayAnswer(target.our_key, CH, status, tag), src, now)
        return self.sent()


def channel(world: World) -> tuple[RegistrationClient, RegistrationClient]:
    a, b = world.register(A_ADDR), world.register(B_ADDR)
    ((offer, to),) = world.open(a, b, A_ADDR)
    assert isinstance(offer, RelayOffer) and to == B_ADDR
    assert offer.mac == wire.offer_mac(b.keepalive_key, a.our_key, CH)
    ((ready, to),) = world.answer(b, B_ADDR)
    assert isinstance(ready, RelayReady) and to == A_ADDR and ready.status == RelayStatus.OK
    assert ready.mac == wire.ready_mac(a.keepalive_key, b.our_key, CH, RelayStatus.OK)
    return a, b


# ----------------------------------------------------------------------- packets
PACKETS = [
    RelayData(CH, b"\x40" * 1200),
    RelayOpen(bytes(32), bytes(range(32)), CH, bytes(16)),
    RelayOffer(bytes(32), CH, bytes(16)),
    RelayAnswer(bytes(32), CH, 1, bytes(16)),
    RelayReady(bytes(32), CH, 4, bytes(16)),
    RelayClose(bytes(32), CH, bytes(16)),
    RelayClosed(CH, bytes(16)),
]


@pytest.mark.parametrize("packet", PACKETS, ids=lambda p: type(p).__name__)
def test_every_packet_round_trips(packet: wire.Packet) -> None:
    data = wire.encode(packet)
    assert 0x30 <= data[0] <= 0x3F and data[1:3] == b"p2"
    assert wire.decode(data) == packet
    with pytest.raises(PunchError):
        wire.decode(data + b"\x00" if not isinstance(packet, RelayData) else data + bytes(300))


@given(st.binary(max_size=1600))
def test_decode_never_raises_anything_else(data: bytes) -> None:
    for kind in range(0x30, 0x40):
        try:
            wire.decode(bytes((kind,)) + b"p2" + data)
        except PunchError:
            pass


def test_relayed_datagrams_fit_a_1500_byte_mtu() -> None:
    assert len(wire.data_packet(CH, bytes(wire.MAX_PAYLOAD))) + 28 <= 1480


# ----------------------------------------------------------------------- channels
def test_a_channel_needs_both_registrations_and_both_consents() -> None:
    world = World()
    a, b = channel(world)
    datagram = wire.data_packet(CH, b"\x40quic")
    assert world.relay.forward(datagram, A_ADDR, 1.0) == B_ADDR
    assert world.relay.forward(datagram, B_ADDR, 1.0) == A_ADDR
    # Traffic for the channel from anywhere else goes nowhere.
    assert world.relay.forward(datagram, C_ADDR, 1.0) is None
    assert world.relay.stats["dropped_wrong_source"] == 1
    assert world.relay.stats["forwarded_packets"] == 2
    assert world.relay.peer_bytes(a.our_key) == world.relay.peer_bytes(b.our_key) == len(datagram)


def test_an_end_that_moves_is_followed_by_its_registration_only() -> None:
    world = World()
    a, _b = channel(world)
    datagram = wire.data_packet(CH, b"\x40quic")
    moved: Addr = ("198.51.100.9", 555)
    assert world.relay.forward(datagram, moved, 1.0) is None  # not proven yet
    # A's NAT gave it another mapping; its next keepalive (MACed) moves it.
    a.on_timer(5.0)
    for data, _ in a.datagrams_to_send():
        world.rendezvous.receive(punch.decode(data), moved, 5.0)
    assert world.relay.forward(datagram, moved, 5.0) == B_ADDR
    assert world.relay.forward(datagram, B_ADDR, 5.0) == moved


def test_opens_that_prove_nothing_get_nothing() -> None:
    world = World()
    a, b = world.register(A_ADDR), world.register(B_ADDR)
    # From an address that is not the dialer's registration: silence.
    assert world.open(a, b, C_ADDR) == []
    assert world.relay.stats["dropped_unregistered"] == 1
    # A MAC under the wrong key (someone who knows A's key but not its keepalive key).
    bad = RelayOpen(a.our_key, b.our_key, CH, wire.open_mac(b.keepalive_key, a.our_key,
                                                            b.our_key, CH))  # fmt: skip
    world.relay.receive(bad, A_ADDR, 0.0)
    assert world.sent() == [] and world.relay.stats["bad_mac"] == 1
    # A target nobody registered: a refusal the dialer can check.
    stranger = Identity.generate().public_key
    tag = wire.open_mac(a.keepalive_key, a.our_key, stranger, CH)
    world.relay.receive(RelayOpen(a.our_key, stranger, CH, tag), A_ADDR, 0.0)
    ((ready, to),) = world.sent()
    assert isinstance(ready, RelayReady) and to == A_ADDR
    assert ready.status == RelayStatus.UNKNOWN_TARGET
    assert ready.mac == wire.ready_mac(a.keepalive_key, stranger, CH, ready.status)


def test_the_target_decides_and_only_the_target() -> None:
    world = World()
    a, b = world.register(A_ADDR), world.register(B_ADDR)
    world.open(a, b, A_ADDR)
    # An answer in B's name from elsewhere, or MACed by A: ignored.
    assert world.answer(b, C_ADDR) == []
    forged = RelayAnswer(b.our_key, CH, 0, wire.answer_mac(a.keepalive_key, b.our_key, CH, 0))
    world.relay.receive(forged, B_ADDR, 0.0)
    assert world.sent() == []
    assert world.relay.forward(wire.data_packet(CH, b"\x40x"), A_ADDR, 0.0) is None
    # B declines: A hears it, the channel is gone.
    ((ready, _),) = world.answer(b, B_ADDR, status=RelayStatus.DECLINED)
    assert isinstance(ready, RelayReady) and ready.status == RelayStatus.DECLINED
    assert world.relay.channels == 0


def test_retransmitted_opens_repeat_the_offer_or_the_ready() -> None:
    world = World()
    a, b = world.register(A_ADDR), world.register(B_ADDR)
    world.open(a, b, A_ADDR)
    ((offer, to),) = world.open(a, b, A_ADDR)  # the offer was lost
    assert isinstance(offer, RelayOffer) and to == B_ADDR
    world.answer(b, B_ADDR)
    ((ready, _),) = world.open(a, b, A_ADDR)  # the ready was lost
    assert isinstance(ready, RelayReady) and ready.status == RelayStatus.OK
    assert world.relay.stats["channels_opened"] == 1


def test_unanswered_offers_and_idle_channels_expire() -> None:
    world = World()
    a, b = world.register(A_ADDR), world.register(B_ADDR)
    world.open(a, b, A_ADDR)
    world.relay.expire(OFFER_TTL + 1)
    ((ready, to),) = world.sent()
    assert isinstance(ready, RelayReady) and ready.status == RelayStatus.NO_ANSWER
    assert to == A_ADDR and world.relay.channels == 0
    world.open(a, b, A_ADDR, now=100.0)
    world.answer(b, B_ADDR, now=100.0)
    world.relay.expire(100.0 + IDLE_TTL + 1)
    closed = world.sent()
    assert sorted(to for _, to in closed) == [A_ADDR, B_ADDR]
    for packet, to in closed:
        assert isinstance(packet, RelayClosed)
        assert packet.mac == wire.closed_mac(world.clients[to].keepalive_key, CH)
    assert world.relay.channels == 0


def test_close_is_authenticated_and_told_to_the_other_end() -> None:
    world = World()
    a, b = channel(world)
    forged = RelayClose(a.our_key, CH, wire.close_mac(b.keepalive_key, a.our_key, CH))
    world.relay.receive(forged, A_ADDR, 1.0)
    assert world.relay.channels == 1
    world.relay.receive(
        RelayClose(a.our_key, CH, wire.close_mac(a.keepalive_key, a.our_key, CH)), A_ADDR, 1.0
    )
    ((closed, to),) = world.sent()
    assert isinstance(closed, RelayClosed) and to == B_ADDR
    assert world.relay.channels == 0
    assert world.relay.forward(wire.data_packet(CH, b"\x40x"), A_ADDR, 1.0) is None


def test_an_end_that_is_no_longer_registered_takes_its_channels_along() -> None:
    world = World()
    _a, _b = channel(world)
    world.rendezvous.expire(100.0)  # both went silent: registrations dropped
    assert world.relay.forward(wire.data_packet(CH, b"\x40x"), A_ADDR, 100.0) is None
    world.relay.expire(100.0)
    assert world.relay.channels == 0


# ----------------------------------------------------------------------- budgets
def flood(world: World, src: Addr, seconds: float, size: int = 1200, pps: int = 4000) -> int:
    """Offer ``pps`` datagrams a second for ``seconds``; return how many went through."""
    datagram = wire.data_packet(CH, bytes(size))
    through = 0
    for i in range(int(seconds * pps)):
        if world.relay.forward(datagram, src, i / pps) is not None:
            through += 1
    return through


def test_a_peer_gets_its_rate_and_no_more() -> None:
    rate, burst = 100_000.0, 200_000.0
    world = World(peer_rate=rate, peer_burst=burst)
    channel(world)
    through = flood(world, A_ADDR, 5.0)
    sent = through * len(wire.data_packet(CH, bytes(1200)))
    assert sent <= burst + rate * 5.0 + 1211
    assert sent >= rate * 5.0 * 0.9
    assert world.relay.stats["dropped_peer_rate"] > 0
    # The other end's own budget is untouched: it still gets its replies out.
    assert world.relay.forward(wire.data_packet(CH, b"\x40ack"), B_ADDR, 5.0) == A_ADDR


def test_tiny_datagrams_cost_a_minimum_so_packets_are_bounded_too() -> None:
    world = World(peer_rate=MIN_COST * 100.0, peer_burst=MIN_COST * 10.0)
    channel(world)
    through = flood(world, A_ADDR, 2.0, size=1, pps=5000)
    assert through <= 10 + 100 * 2 + 1


def test_a_daily_quota_ends_a_peers_relaying_for_the_day() -> None:
    world = World(peer_per_day=50_000.0)
    channel(world)
    through = flood(world, A_ADDR, 1.0, pps=1000)
    assert through * 1211 <= 50_000 + 1211
    assert world.relay.stats["dropped_peer_quota"] > 0


def test_the_total_rate_is_shared_and_one_peer_cannot_take_all_of_it() -> None:
    rate = 1_000_000.0
    world = World(peer_rate=rate / 4, peer_burst=rate / 4, total_rate=rate, total_burst=rate)
    _a, _b = channel(world)
    c, d = world.register(C_ADDR), world.register(("198.51.100.4", 40004))
    other = bytes(range(8, 16))
    tag = wire.open_mac(c.keepalive_key, c.our_key, d.our_key, other)
    world.relay.receive(RelayOpen(c.our_key, d.our_key, other, tag), C_ADDR, 0.0)
    world.relay.receive(
        RelayAnswer(d.our_key, other, 0, wire.answer_mac(d.keepalive_key, d.our_key, other, 0)),
        ("198.51.100.4", 40004),
        0.0,
    )
    # A pushes as hard as it can; C sends at a modest pace on its own channel.
    hostile = wire.data_packet(CH, bytes(1200))
    modest = wire.data_packet(other, bytes(1200))
    got_c = 0
    for i in range(20_000):
        now = i / 4000
        world.relay.forward(hostile, A_ADDR, now)
        if i % 40 == 0:  # 100 datagrams a second, ~120 kB/s
            got_c += world.relay.forward(modest, C_ADDR, now) is not None
    assert got_c == 20_000 // 40, "the other pair keeps its share"


def test_channels_per_peer_and_in_total_are_bounded() -> None:
    world = World(channels_per_peer=2, open_burst=100.0, max_channels=3)
    a, b = world.register(A_ADDR), world.register(B_ADDR)
    statuses = []
    for i in range(4):
        cid = bytes([i]) * 8
        tag = wire.open_mac(a.keepalive_key, a.our_key, b.our_key, cid)
        world.relay.receive(RelayOpen(a.our_key, b.our_key, cid, tag), A_ADDR, 0.0)
        statuses += [p.status for p, _ in world.sent() if isinstance(p, RelayReady)]
    assert statuses == [RelayStatus.FULL, RelayStatus.FULL]
    assert world.relay.channels == 2
    assert world.relay.stats["refused_full"] == 2


def test_a_disabled_relay_opens_nothing() -> None:
    world = World()
    world.relay.enabled = False
    a, b = world.register(A_ADDR), world.register(B_ADDR)
    ((ready, _),) = world.open(a, b, A_ADDR)
    assert isinstance(ready, RelayReady) and ready.status == RelayStatus.FULL

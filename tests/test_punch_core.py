"""The rendezvous/punch packets, connect blobs, probe plans and both rendezvous roles,
driven with real keys and no sockets."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pchat.core import punch
from p2pchat.core.punch import (
    NAT_ED,
    NAT_EI,
    NAT_NONE,
    NAT_UNKNOWN,
    BlobKind,
    Connect,
    ConnectBlob,
    ConnectReply,
    Mode,
    Probe,
    PunchError,
    PunchPlan,
    Status,
    choose_modes,
)
from p2pchat.core.rendezvous import (
    KEEPALIVE_INTERVAL,
    RegistrationClient,
    RendezvousLimits,
    RendezvousServer,
)
from p2pchat.identity import Identity, verify_signature

V_ADDR = ("198.51.100.100", 4001)
R_ADDR = ("198.51.100.1", 4001)
D_ADDR = ("198.51.100.2", 5000)


def server(identity: Identity, *, allow: bool = True, **limits: float) -> RendezvousServer:
    return RendezvousServer(
        key=identity.public_key,
        sign=identity.sign,
        verify=verify_signature,
        may_register=lambda key: allow,
        limits=RendezvousLimits(**limits),  # type: ignore[arg-type]
    )


def client(identity: Identity, *, pinned: bytes | None = None) -> RegistrationClient:
    return RegistrationClient(
        our_key=identity.public_key,
        seed=identity.seed,
        sign=identity.sign,
        verify=verify_signature,
        addr=V_ADDR,
        rendezvous_key=pinned,
    )


def pump(
    srv: RendezvousServer, cli: RegistrationClient, now: float, src: tuple[str, int] = R_ADDR
) -> list[tuple[bytes, tuple[str, int]]]:
    """Exchange datagrams until both are quiet; returns what the server sent elsewhere."""
    stray = []
    for _ in range(10):
        moved = False
        for data, dest in cli.datagrams_to_send():
            assert dest == V_ADDR
            srv.receive(punch.decode(data), src, now)
            moved = True
        for data, dest in srv.datagrams_to_send():
            if dest == src:
                cli.receive(punch.decode(data), V_ADDR, now)
                moved = True
            else:
                stray.append((data, dest))
        if not moved:
            break
    return stray


def events(cli: RegistrationClient) -> list[str]:
    out = []
    while (e := cli.next_event()) is not None:
        out.append(e.kind)
    return out


# ----------------------------------------------------------------------- packets
SAMPLES: list[punch.Packet] = [
    punch.RegHello(os.urandom(32)),
    punch.RegChallenge(os.urandom(32), os.urandom(16), ("203.0.113.5", 4444)),
    punch.Register(os.urandom(32), os.urandom(16), os.urandom(64)),
    punch.Registered(os.urandom(32), 0, 5, ("2001:db8::1", 9), os.urandom(80), "", os.urandom(64)),
    punch.Registered(os.urandom(32), 1, 5, ("10.0.0.1", 9), b"", "not a contact", os.urandom(64)),
    punch.Keepalive(os.urandom(32), 7, os.urandom(16)),
    punch.KeepaliveAck(7, ("10.0.0.1", 9), os.urandom(16)),
    punch.Connect(os.urandom(32), os.urandom(32), os.urandom(8), os.urandom(300)),
    punch.ConnectFwd(os.urandom(32), os.urandom(8), ("10.0.0.1", 9), os.urandom(300)),
    punch.ConnectAck(os.urandom(32), os.urandom(8), os.urandom(300)),
    punch.ConnectReply(os.urandom(32), os.urandom(8), 0, ("10.0.0.1", 9), os.urandom(300)),
    punch.ConnectReply(os.urandom(32), os.urandom(8), 3, None, b""),
    punch.Sync(os.urandom(32), os.urandom(8), os.urandom(16)),
    Probe(os.urandom(8), True, 3, os.urandom(16)),
    Probe(os.urandom(8), False, 65535, os.urandom(16), ack=True),
]


@pytest.mark.parametrize("packet", SAMPLES, ids=lambda p: type(p).__name__)
def test_every_packet_round_trips(packet: punch.Packet) -> None:
    data = punch.encode(packet)
    assert data[0] < 0x40 and data[1:3] == punch.MAGIC
    assert punch.decode(data) == packet


def test_stranger_requests_are_padded_so_no_reply_is_larger() -> None:
    hello = punch.encode(punch.RegHello(os.urandom(32)))
    challenge = punch.encode(punch.RegChallenge(os.urandom(32), os.urandom(16), ("::1", 1)))
    assert len(hello) == punch.MIN_REQUEST >= len(challenge)
    with pytest.raises(PunchError):
        punch.decode(hello[:100])  # an unpadded hello is refused


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x10",
        b"\x10p3" + bytes(200),
        b"\x3fp2" + bytes(20),
        punch.encode(punch.Keepalive(bytes(32), 1, bytes(16))) + b"x",
        punch.encode(punch.Sync(bytes(32), bytes(8), bytes(16)))[:-1],
        b"\x11p2" + bytes(48) + b"\x05" + bytes(6),
        b"\x18p2" + bytes(1300),
        punch.encode(punch.KeepaliveAck(1, ("10.0.0.1", 9), bytes(16))).replace(
            b"\x04\x0a\x00\x00\x01\x00\x09", b"\x04\x00\x00\x00\x00\x00\x09"
        ),
    ],
    ids=lambda d: f"{len(d)}-bytes",
)
def test_junk_is_refused(data: bytes) -> None:
    with pytest.raises(PunchError):
        punch.decode(data)


@given(st.binary(max_size=1400))
def test_decode_never_raises_anything_else(data: bytes) -> None:
    try:
        punch.decode(b"\x12p2" + data)
    except PunchError:
        pass


# ----------------------------------------------------------------------- blobs
def request_blob(dialer: Identity, target: Identity, **kw: object) -> ConnectBlob:
    fields: dict[str, object] = {
        "kind": BlobKind.REQUEST,
        "dialer_key": dialer.public_key,
        "target_key": target.public_key,
        "request_id": punch.new_request_id(),
        "timestamp": 1_700_000_000_000,
        "secret": punch.new_secret(),
        "nat": NAT_EI,
        "candidates": (("198.51.100.2", 5000), ("10.77.1.11", 4001)),
    }
    fields.update(kw)
    return ConnectBlob(**fields)  # type: ignore[arg-type]


def test_blob_is_signed_by_the_sender_and_sealed_to_the_recipient() -> None:
    dialer, target, other = Identity.generate(), Identity.generate(), Identity.generate()
    blob = request_blob(dialer, target)
    sealed = blob.seal(dialer.sign, target.public_key)
    assert ConnectBlob.open(sealed, target.seed, verify_signature) == blob
    with pytest.raises(PunchError, match="does not open"):
        ConnectBlob.open(sealed, other.seed, verify_signature)
    # Signed by someone else while naming the dialer: forged in the dialer's name.
    forged = request_blob(dialer, target).seal(other.sign, target.public_key)
    with pytest.raises(PunchError, match="signature"):
        ConnectBlob.open(forged, target.seed, verify_signature)
    # Tampering inside the sealed box breaks it.
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(PunchError):
        ConnectBlob.open(bytes(flipped), target.seed, verify_signature)


def test_the_punch_key_needs_both_secrets() -> None:
    rid, a, b = punch.new_request_id(), punch.new_secret(), punch.new_secret()
    key = punch.punch_key(rid, a, b)
    assert key == punch.punch_key(rid, a, b) != punch.punch_key(rid, b, a)


# ----------------------------------------------------------------------- plans
def test_modes_follow_the_two_nat_kinds() -> None:
    assert choose_modes(NAT_EI, NAT_EI) == (Mode.DIRECT, Mode.DIRECT)
    assert choose_modes(NAT_NONE, NAT_ED) == (Mode.DIRECT, Mode.DIRECT)
    assert choose_modes(NAT_ED, NAT_NONE) == (Mode.DIRECT, Mode.DIRECT)
    assert choose_modes(NAT_EI, NAT_ED) == (Mode.SPRAY, Mode.LISTEN)
    assert choose_modes(NAT_ED, NAT_UNKNOWN) == (Mode.LISTEN, Mode.SPRAY)
    assert choose_modes(NAT_ED, NAT_ED) == (Mode.DIRECT, Mode.DIRECT)


def test_direct_rounds_probe_every_candidate_then_stop() -> None:
    peers = (("198.51.100.2", 5000), ("10.0.0.5", 4001))
    plan = PunchPlan(Mode.DIRECT, peers, start=10.0, rng=random.Random(1))
    first = plan.due(10.0)
    assert [s.addr for s in first] == list(peers)
    sent = list(first)
    while (at := plan.next_deadline()) is not None:
        sent.extend(plan.due(at))
    assert len(sent) == len(punch.ROUNDS) * 2 == plan.probes_planned


def test_spray_hits_random_ports_of_the_public_ip_within_its_budget() -> None:
    # The peer claims a third party's address too: only the observed IP is sprayed.
    peers = (("198.51.100.2", 40000), ("10.77.2.11", 4001), ("203.0.113.9", 53))
    plan = PunchPlan(
        Mode.SPRAY, peers, start=0.0, rng=random.Random(2), observed=("198.51.100.2", 40000)
    )
    sent = []
    while (at := plan.next_deadline()) is not None:
        sent.extend(plan.due(at))
    sprayed = [s.addr for s in sent if s.addr not in peers]
    assert {ip for ip, _ in sprayed} == {"198.51.100.2"}
    assert sum(s.addr == ("203.0.113.9", 53) for s in sent) == len(punch.ROUNDS)
    assert len(sprayed) == len(set(sprayed)) <= punch.SPRAY_BUDGET
    assert len(sprayed) >= punch.SPRAY_BUDGET - 2
    assert all(1024 <= port <= 65535 for _, port in sprayed)


def test_listen_opens_many_sockets_each_probing_the_public_address() -> None:
    peers = (("198.51.100.1", 4001), ("10.77.1.11", 4001))
    seen = ("198.51.100.1", 4001)
    plan = PunchPlan(
        Mode.LISTEN, peers, start=0.0, rng=random.Random(3), observed=seen, listen_sockets=8
    )
    first = plan.due(0.0)
    from_sockets = [s for s in first if s.socket is not None]
    assert sorted(s.socket for s in from_sockets) == list(range(8))
    assert {s.addr for s in from_sockets} == {seen}
    # Without an address the rendezvous saw, no birthday probing at all.
    blind = PunchPlan(Mode.SPRAY, peers, start=0.0, rng=random.Random(3))
    assert blind.mode is Mode.DIRECT and blind.probes_planned == len(punch.ROUNDS) * 2


# ----------------------------------------------------------------------- rendezvous
def test_registration_keepalive_and_a_move() -> None:
    v, r = Identity.generate(), Identity.generate()
    srv, cli = server(v), client(r)
    cli.start(0.0)
    pump(srv, cli, 0.0)
    assert cli.registered and cli.rendezvous_key == v.public_key
    assert cli.observed == R_ADDR and events(cli) == ["registered"]
    assert srv.registered_keys() == [r.public_key]
    # Keepalives from a new address (the NAT mapping changed) move the registration.
    now = KEEPALIVE_INTERVAL + 0.1
    cli.on_timer(now)
    moved_to = ("198.51.100.9", 1234)
    pump(srv, cli, now, src=moved_to)
    assert cli.observed == moved_to and events(cli) == ["moved"]
    assert srv._registrations[r.public_key].addr == moved_to
    # A replayed keepalive (same counter) or a forged one does nothing.
    replay = punch.Keepalive(r.public_key, 1, bytes(16))
    srv.receive(replay, ("203.0.113.66", 1), now)
    assert srv.datagrams_to_send() == []
    assert srv._registrations[r.public_key].addr == moved_to


def test_registration_needs_the_key_and_the_address_that_got_the_cookie() -> None:
    v, r, mallory = Identity.generate(), Identity.generate(), Identity.generate()
    srv = server(v)
    srv.receive(punch.RegHello(r.public_key), R_ADDR, 0.0)
    ((data, _),) = srv.datagrams_to_send()
    challenge = punch.decode(data)
    assert isinstance(challenge, punch.RegChallenge)
    # Mallory registers in r's name with the cookie: cannot sign as r.
    signed = punch.Register.signed_part(v.public_key, r.public_key, challenge.cookie)
    srv.receive(punch.Register(r.public_key, challenge.cookie, mallory.sign(signed)), R_ADDR, 0.0)
    # A genuine signature replayed from another address: the cookie does not fit it.
    genuine = punch.Register(r.public_key, challenge.cookie, r.sign(signed))
    srv.receive(genuine, ("203.0.113.66", 9), 0.0)
    assert srv.registrations == 0 and srv.datagrams_to_send() == []
    assert srv.stats == {"bad_signature": 1, "bad_cookie": 1}
    # ... and the same signature for another rendezvous does not verify here.
    other_v = server(Identity.generate())
    other_v.receive(genuine, R_ADDR, 0.0)
    assert other_v.registrations == 0


def test_policy_refusal_is_signed_and_reported() -> None:
    v, r = Identity.generate(), Identity.generate()
    srv, cli = server(v, allow=False), client(r)
    cli.start(0.0)
    pump(srv, cli, 0.0)
    assert cli.state == "refused" and "contact" in cli.refused
    assert events(cli) == ["refused"] and srv.registrations == 0


def test_a_challenge_from_an_impostor_is_ignored_when_the_key_is_pinned() -> None:
    v, r, impostor = Identity.generate(), Identity.generate(), Identity.generate()
    cli = client(r, pinned=v.public_key)
    cli.start(0.0)
    cli.datagrams_to_send()
    fake = punch.RegChallenge(impostor.public_key, bytes(16), R_ADDR)
    assert cli.receive(fake, V_ADDR, 0.0) is False
    assert cli.datagrams_to_send() == []


def test_registrations_are_bounded_per_ip_and_in_total() -> None:
    v = Identity.generate()
    srv = server(v, max_registrations=3, per_ip_registrations=2, ip_rate=1e6, ip_burst=1e6)
    statuses = []
    for i, ip in enumerate(("10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3")):
        r = Identity.generate()
        cli = client(r)
        cli.start(0.0)
        pump(srv, cli, 0.0, src=(ip, 1000 + i))
        statuses.append(cli.state)
    assert statuses == ["registered", "registered", "refused", "registered", "refused"]
    assert srv.registrations == 3


def test_connect_is_forwarded_answered_and_synced() -> None:
    v, t, d = Identity.generate(), Identity.generate(), Identity.generate()
    srv, cli = server(v), client(t)
    cli.start(0.0)
    pump(srv, cli, 0.0)
    blob = request_blob(d, t).seal(d.sign, t.public_key)
    rid = punch.new_request_id()
    srv.receive(Connect(t.public_key, d.public_key, rid, blob), D_ADDR, 1.0)
    ((data, dest),) = srv.datagrams_to_send()
    fwd = punch.decode(data)
    assert dest == R_ADDR and isinstance(fwd, punch.ConnectFwd)
    assert fwd.observed == D_ADDR and fwd.blob == blob and fwd.dialer_key == d.public_key
    # Only the registered target may answer, from its registered address.
    srv.receive(punch.ConnectAck(d.public_key, rid, b"answer"), ("203.0.113.66", 1), 1.1)
    assert srv.datagrams_to_send() == []
    srv.receive(punch.ConnectAck(d.public_key, rid, b"answer"), R_ADDR, 1.1)
    ((data, dest),) = srv.datagrams_to_send()
    reply = punch.decode(data)
    assert dest == D_ADDR and isinstance(reply, ConnectReply)
    assert reply.status == Status.OK and reply.observed == R_ADDR and reply.blob == b"answer"
    # Sync goes from the dialer to the target, and from nobody else.
    sync = punch.Sync(t.public_key, rid, bytes(16))
    srv.receive(sync, ("203.0.113.66", 1), 1.2)
    assert srv.datagrams_to_send() == []
    srv.receive(sync, D_ADDR, 1.2)
    assert srv.datagrams_to_send() == [(punch.encode(sync), R_ADDR)]


def test_connect_for_someone_not_registered_is_refused_and_floods_are_capped() -> None:
    v, t, d = Identity.generate(), Identity.generate(), Identity.generate()
    srv, cli = server(v, target_rate=1, target_burst=3), client(t)
    srv.receive(Connect(t.public_key, d.public_key, bytes(8), bytes(200)), D_ADDR, 0.0)
    ((data, _),) = srv.datagrams_to_send()
    refused = punch.decode(data)
    assert isinstance(refused, ConnectReply) and refused.status == Status.UNKNOWN_TARGET
    cli.start(0.0)
    pump(srv, cli, 0.0)
    forwarded = 0
    for i in range(30):
        srv.receive(
            Connect(t.public_key, d.public_key, i.to_bytes(8, "big"), bytes(200)),
            (f"203.0.113.{i}", 1),
            0.5,
        )
        for _data, dest in srv.datagrams_to_send():
            forwarded += dest == R_ADDR
    assert forwarded == 3 and srv.stats["connect_rate_limited"] == 27

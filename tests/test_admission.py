"""The admission gate for new inbound QUIC connections, with real aioquic Initials."""

from __future__ import annotations

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicHeader, pull_quic_header

from p2pchat.identity import Identity
from p2pchat.net.admission import Accept, Drop, InitialGate, Reply
from p2pchat.net.endpoint import CID_LENGTH
from p2pchat.net.quic import configuration
from tests.attacks.attackers import quic_initial

SERVER = ("127.0.0.1", 4000)
CLIENT = ("127.0.0.1", 5000)


def parse(data: bytes) -> tuple[QuicHeader, int]:
    buf = Buffer(data=data)
    header = pull_quic_header(buf, host_cid_length=CID_LENGTH)
    return header, buf.tell()


def client_initial() -> tuple[QuicConnection, bytes]:
    conn = QuicConnection(configuration=configuration(Identity.generate(), is_client=True))
    conn.connect(SERVER, now=0.0)
    datagrams = conn.datagrams_to_send(now=0.0)
    return conn, datagrams[0][0]


def decide(gate: InitialGate, data: bytes, now: float = 0.0, **kw: object) -> object:
    header, offset = parse(data)
    return gate.decide(data, header, offset, kw.pop("addr", CLIENT), now, **kw)  # type: ignore[arg-type]


def test_a_real_initial_is_accepted_and_random_payload_is_not() -> None:
    gate = InitialGate()
    _, data = client_initial()
    assert isinstance(decide(gate, data), Accept)
    fake = decide(gate, quic_initial())
    assert isinstance(fake, Drop) and "decrypt" in fake.reason
    assert gate.stats["initial_undecryptable"] == 1


def test_under_load_a_client_must_come_back_with_a_retry_token() -> None:
    gate = InitialGate(retry_rate=5)
    for _ in range(10):
        assert not isinstance(decide(gate, quic_initial(), 0.5), Accept)
    assert gate.under_load(0.5)
    conn, data = client_initial()
    retry = decide(gate, data, 0.6)
    assert isinstance(retry, Reply)
    # The real client takes the Retry and sends a new Initial with the token.
    conn.receive_datagram(retry.packet, SERVER, now=0.6)
    again = conn.datagrams_to_send(now=0.6)[0][0]
    header, _ = parse(again)
    assert header.token
    accepted = decide(gate, again, 0.7)
    assert isinstance(accepted, Accept) and accepted.retry_source_cid == header.destination_cid
    # The token is bound to the address it was issued to.
    assert isinstance(decide(gate, again, 0.7, addr=("127.0.0.2", 5000)), Drop)
    assert gate.stats["retry_token_invalid"] == 1
    # Load passes: after two quiet seconds no Retry is needed.
    assert not gate.under_load(3.0)


def validated_initial(gate: InitialGate, addr: tuple[str, int]) -> bytes:
    """A real client's Initial carrying the token of a Retry ``gate`` sent to ``addr``."""
    conn, data = client_initial()
    header, _ = parse(data)
    retry = gate._retry(header, addr, 0.0)
    conn.receive_datagram(retry.packet, SERVER, now=0.0)
    return conn.datagrams_to_send(now=0.0)[0][0]


def test_pool_caps_per_source_and_globally_with_a_reserve_for_contacts() -> None:
    gate = InitialGate(max_pending=8, per_source=3, reserve=2, retry_rate=1e9)
    for _ in range(3):
        gate.opened("10.0.0.1")
    refused = decide(gate, client_initial()[1], addr=("10.0.0.1", 1))
    assert isinstance(refused, Drop) and "this address" in refused.reason
    assert isinstance(decide(gate, client_initial()[1], addr=("10.0.0.2", 1)), Accept)
    # Half full: new clients must validate their address first, whatever the rate.
    gate.opened("10.0.0.2")
    assert isinstance(decide(gate, client_initial()[1], addr=("10.0.0.3", 1)), Reply)
    for ip in ("10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"):
        gate.opened(ip)
    assert gate.pending == 8
    # Full: a validated stranger waits, a known contact's address uses the reserve.
    stranger = ("10.0.0.8", 1)
    full = decide(gate, validated_initial(gate, stranger), addr=stranger)
    assert isinstance(full, Drop) and "in progress" in full.reason
    contact = ("10.0.0.9", 1)
    admitted = decide(gate, validated_initial(gate, contact), addr=contact, known_source=True)
    assert isinstance(admitted, Accept)
    assert gate.stats["refused_source_cap"] == 1 and gate.stats["refused_pool_full"] == 1
    for _ in range(3):
        gate.released("10.0.0.1")
    gate.released("nobody")  # a release without a slot changes nothing
    assert gate.pending == 5

"""KRPC parsing and encoding: round trips, strictness, limits, and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.dht.bencode import BencodeError, bdecode, bencode
from p2pchat.dht.krpc import (
    MAX_DATAGRAM,
    AnnouncePeer,
    ErrorMessage,
    FindNode,
    Get,
    GetPeers,
    KrpcError,
    NodeInfo,
    Ping,
    Put,
    Response,
    compact_addr,
    decode_message,
    encode_message,
    parse_compact_addr,
)

from .helpers import query_bytes

ID = b"I" * 20
T = b"T" * 20


@pytest.mark.parametrize(
    "data",
    [b"i1ejunk", b"i01e", b"i-0e", b"03:abc", b"d1:bi1e1:ai2ee", b"d1:ai1e1:ai2ee", b"l" * 200],
)
def test_bencode_is_strict(data: bytes) -> None:
    with pytest.raises(BencodeError):
        bdecode(data)


def test_bencode_round_trip_is_exact() -> None:
    raw = b"d1:ali1ei-2e3:xyze1:bd1:c0:ee"
    assert bencode(bdecode(raw)) == raw


@pytest.mark.parametrize(
    "message",
    [
        Ping(tid=b"t1", sender_id=ID),
        Ping(tid=b"t1", sender_id=ID, read_only=True),
        FindNode(tid=b"t2", sender_id=ID, target=T, want=frozenset({"n4", "n6"})),
        GetPeers(tid=b"t3", sender_id=ID, info_hash=T),
        AnnouncePeer(tid=b"t4", sender_id=ID, info_hash=T, port=6881, token=b"tok"),
        AnnouncePeer(tid=b"t4", sender_id=ID, info_hash=T, port=0, token=b"t", implied_port=True),
        Get(tid=b"t5", sender_id=ID, target=T, seq=4),
        Put(tid=b"t6", sender_id=ID, token=b"tok", value=b"5:hello"),
        Put(
            tid=b"t7",
            sender_id=ID,
            token=b"tok",
            value=b"li1ee",
            key=b"k" * 32,
            signature=b"s" * 64,
            seq=9,
            cas=8,
            salt=b"salt",
        ),
        Response(
            tid=b"r1",
            sender_id=ID,
            ip=("203.0.113.7", 4000),
            nodes=(NodeInfo(T, ("198.51.100.1", 1)),),
            nodes6=(NodeInfo(T, ("2001:db8::1", 2)),),
            token=b"tok",
            values=(("198.51.100.2", 3), ("2001:db8::2", 4)),
            value=b"d1:ai1ee",
            key=b"k" * 32,
            signature=b"s" * 64,
            seq=3,
        ),
        ErrorMessage(tid=b"e1", code=203, text="bad", ip=("203.0.113.7", 1)),
    ],
)
def test_round_trip(message: object) -> None:
    data = encode_message(message)  # type: ignore[arg-type]
    assert decode_message(data) == message


def test_wire_format_matches_bep5_example() -> None:
    # BEP 5's ping example, byte for byte.
    data = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"
    assert decode_message(data) == Ping(tid=b"aa", sender_id=b"abcdefghij0123456789")
    assert encode_message(Ping(tid=b"aa", sender_id=b"abcdefghij0123456789")) == data


def test_query_errors_carry_tid_and_code() -> None:
    with pytest.raises(KrpcError) as bad:
        decode_message(query_bytes(b"ping", {b"id": b"short"}))
    assert bad.value.tid == b"aa" and bad.value.code == 203
    with pytest.raises(KrpcError) as unknown:
        decode_message(query_bytes(b"frobnicate", {b"id": ID}))
    assert unknown.value.code == 204


@pytest.mark.parametrize(
    ("method", "args"),
    [
        (b"find_node", {b"id": ID}),
        (b"find_node", {b"id": ID, b"target": 5}),
        (b"get_peers", {b"id": ID, b"info_hash": b"x" * 19}),
        (b"announce_peer", {b"id": ID, b"info_hash": T, b"port": 70000, b"token": b"t"}),
        (b"announce_peer", {b"id": ID, b"info_hash": T, b"port": 1, b"token": b""}),
        (b"announce_peer", {b"id": ID, b"info_hash": T, b"token": b"t"}),
        (b"get", {b"id": ID, b"target": T, b"seq": -1}),
        (b"put", {b"id": ID, b"token": b"t"}),
        (b"put", {b"id": ID, b"token": b"t", b"v": 1, b"k": b"k" * 32}),
        (b"put", {b"id": ID, b"token": b"t", b"v": 1, b"salt": b"s"}),
        (
            b"put",
            {b"id": ID, b"token": b"t", b"v": 1, b"k": b"k" * 31, b"sig": b"s" * 64, b"seq": 1},
        ),
    ],
)
def test_wrong_types_and_ranges_are_rejected(method: bytes, args: dict[bytes, object]) -> None:
    with pytest.raises(KrpcError):
        decode_message(query_bytes(method, args))


def test_oversized_datagram_is_dropped_before_decoding() -> None:
    data = query_bytes(b"ping", {b"id": ID, b"pad": b"x" * MAX_DATAGRAM})
    with pytest.raises(KrpcError, match="too large"):
        decode_message(data)


def test_bep44_sized_put_fits() -> None:
    put = Put(
        tid=b"tt",
        sender_id=ID,
        token=b"12345678",
        value=bencode(b"x" * 995),
        key=b"k" * 32,
        signature=b"s" * 64,
        seq=2**40,
        salt=b"s" * 64,
    )
    data = encode_message(put)
    assert len(data) <= MAX_DATAGRAM
    assert decode_message(data) == put


def test_compact_forms() -> None:
    assert compact_addr(("1.2.3.4", 0x1A2B)) == b"\x01\x02\x03\x04\x1a\x2b"
    assert parse_compact_addr(b"\x01\x02\x03\x04\x1a\x2b") == ("1.2.3.4", 0x1A2B)
    assert parse_compact_addr(b"\x01\x02\x03\x04\x00\x00") is None
    assert parse_compact_addr(b"12345") is None
    with pytest.raises(KrpcError):
        decode_message(bencode({b"t": b"a", b"y": b"r", b"r": {b"id": ID, b"nodes": b"x" * 27}}))


def test_malformed_ip_field_is_ignored_not_fatal() -> None:
    data = bencode({b"ip": b"abc", b"t": b"a", b"y": b"r", b"r": {b"id": ID}})
    reply = decode_message(data)
    assert isinstance(reply, Response) and reply.ip is None


bencodable = st.recursive(
    st.integers(min_value=-(2**70), max_value=2**70) | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    b"t",
                    b"y",
                    b"q",
                    b"a",
                    b"r",
                    b"e",
                    b"id",
                    b"v",
                    b"ip",
                    b"nodes",
                    b"target",
                    b"token",
                    b"values",
                    b"k",
                    b"sig",
                    b"seq",
                    b"salt",
                ]
            )
            | st.binary(max_size=8),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_decoder_fuzz_bytes(data: bytes) -> None:
    try:
        decode_message(data)
    except KrpcError:
        pass


@settings(max_examples=200, deadline=None)
@given(bencodable)
def test_decoder_fuzz_structures(value: object) -> None:
    try:
        decode_message(bencode(value))
    except KrpcError:
        pass


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([b"ping", b"find_node", b"get_peers", b"announce_peer", b"get", b"put"]),
    st.dictionaries(
        st.sampled_from(
            [
                b"id",
                b"target",
                b"info_hash",
                b"port",
                b"token",
                b"implied_port",
                b"v",
                b"k",
                b"sig",
                b"seq",
                b"cas",
                b"salt",
                b"want",
            ]
        ),
        bencodable,
        max_size=8,
    ),
)
def test_decoder_fuzz_queries(method: bytes, args: dict[bytes, object]) -> None:
    try:
        decode_message(query_bytes(method, args))
    except KrpcError:
        pass

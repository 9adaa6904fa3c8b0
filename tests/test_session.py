from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError
from p2pchat.core.framing import FrameDecoder, encode_frame
from p2pchat.core.session import (
    MAX_PLAINTEXT,
    MAX_REJECTED,
    FrameRejected,
    HandshakeComplete,
    PayloadReceived,
    PeerKeyMismatch,
    SecureSession,
    SessionEvent,
    SessionFailed,
    transcript,
)


def make_session(
    key: SigningKey, *, initiator: bool, expected_peer: bytes | None = None
) -> SecureSession:
    return SecureSession(
        initiator=initiator,
        our_key=bytes(key.verify_key),
        sign=lambda message: key.sign(message).signature,
        expected_peer=expected_peer,
    )


def drain(session: SecureSession) -> list[SessionEvent]:
    events: list[SessionEvent] = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


def pump(a: SecureSession, b: SecureSession) -> tuple[list[SessionEvent], list[SessionEvent]]:
    """Shuttle bytes both ways until neither side has anything left to say."""
    events_a: list[SessionEvent] = []
    events_b: list[SessionEvent] = []
    while True:
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_a and not to_b:
            return events_a, events_b
        if to_b:
            b.receive_data(to_b)
        if to_a:
            a.receive_data(to_a)
        events_a += drain(a)
        events_b += drain(b)


@pytest.fixture
def alice() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def bob() -> SigningKey:
    return SigningKey.generate()


def connected(alice: SigningKey, bob: SigningKey) -> tuple[SecureSession, SecureSession]:
    initiator = make_session(alice, initiator=True, expected_peer=bytes(bob.verify_key))
    responder = make_session(bob, initiator=False)
    initiator.initiate()
    events_i, events_r = pump(initiator, responder)
    assert events_i == [HandshakeComplete(bytes(bob.verify_key))]
    assert events_r == [HandshakeComplete(bytes(alice.verify_key))]
    return initiator, responder


def sealed_frames(session: SecureSession) -> list[bytes]:
    """Split a session's pending output into complete wire frames (header included)."""
    return [encode_frame(p) for p in FrameDecoder().feed(session.data_to_send())]


# -- handshake ---------------------------------------------------------------


def test_handshake_completes_and_authenticates_both_sides(
    alice: SigningKey, bob: SigningKey
) -> None:
    initiator, responder = connected(alice, bob)
    assert initiator.established and responder.established
    assert initiator.initiator and not responder.initiator
    assert initiator.peer_key == bytes(bob.verify_key)
    assert responder.peer_key == bytes(alice.verify_key)
    assert not initiator.failed and not responder.failed


def test_handshake_over_single_byte_writes(alice: SigningKey, bob: SigningKey) -> None:
    initiator = make_session(alice, initiator=True)
    responder = make_session(bob, initiator=False)
    initiator.initiate()
    for src, dst in ((initiator, responder), (responder, initiator), (initiator, responder)):
        for byte in src.data_to_send():
            dst.receive_data(bytes([byte]))
    assert drain(initiator) == [HandshakeComplete(bytes(bob.verify_key))]
    assert drain(responder) == [HandshakeComplete(bytes(alice.verify_key))]


def test_responder_does_not_complete_before_msg3(alice: SigningKey, bob: SigningKey) -> None:
    initiator = make_session(alice, initiator=True)
    responder = make_session(bob, initiator=False)
    initiator.initiate()
    responder.receive_data(initiator.data_to_send())
    assert drain(responder) == []
    assert not responder.established
    assert responder.peer_key is None
    with pytest.raises(LocalProtocolError):
        responder.send(b"too early")


def test_initiate_misuse(alice: SigningKey) -> None:
    responder = make_session(alice, initiator=False)
    with pytest.raises(LocalProtocolError):
        responder.initiate()
    initiator = make_session(alice, initiator=True)
    initiator.initiate()
    with pytest.raises(LocalProtocolError):
        initiator.initiate()
    with pytest.raises(LocalProtocolError):
        initiator.send(b"not yet")


def test_expected_peer_mismatch(alice: SigningKey, bob: SigningKey) -> None:
    mallory = SigningKey.generate()
    initiator = make_session(alice, initiator=True, expected_peer=bytes(bob.verify_key))
    responder = make_session(mallory, initiator=False)
    initiator.initiate()
    events_i, events_r = pump(initiator, responder)
    assert len(events_i) == 1
    failure = events_i[0]
    assert isinstance(failure, SessionFailed)
    assert isinstance(failure.error, PeerKeyMismatch)
    assert failure.error.seen == bytes(mallory.verify_key)
    assert failure.error.expected == bytes(bob.verify_key)
    assert initiator.failed and initiator.peer_key is None
    # The initiator never sent msg3, so the responder is still waiting.
    assert events_r == []
    assert not responder.established


def test_signer_not_matching_our_key_is_a_local_error(alice: SigningKey, bob: SigningKey) -> None:
    mallory = SigningKey.generate()
    initiator = make_session(alice, initiator=True)
    # Claims to be bob but signs with mallory's key.
    impostor = SecureSession(
        initiator=False,
        our_key=bytes(bob.verify_key),
        sign=lambda message: mallory.sign(message).signature,
    )
    initiator.initiate()
    with pytest.raises(LocalProtocolError):
        impostor.receive_data(initiator.data_to_send())


def _forge_r1(initiator_msg1: bytes, claimed: SigningKey, signer: SigningKey) -> bytes:
    """Build an r1 claiming ``claimed`` but signed by ``signer``."""
    (payload,) = FrameDecoder().feed(initiator_msg1)
    msg1 = msgpack.unpackb(payload)
    eph_r = bytes(range(1, 33))
    sig = signer.sign(
        transcript(b"R", msg1["id"], bytes(claimed.verify_key), msg1["eph"], eph_r)
    ).signature
    r1 = {"t": "r1", "v": 1, "id": bytes(claimed.verify_key), "eph": eph_r, "sig": sig}
    return encode_frame(msgpack.packb(r1))


def test_forged_responder_signature_fails_initiator(alice: SigningKey, bob: SigningKey) -> None:
    mallory = SigningKey.generate()
    initiator = make_session(alice, initiator=True)
    initiator.initiate()
    initiator.receive_data(_forge_r1(initiator.data_to_send(), bob, mallory))
    events = drain(initiator)
    assert len(events) == 1 and isinstance(events[0], SessionFailed)
    assert not isinstance(events[0].error, PeerKeyMismatch)
    assert initiator.failed
    assert initiator.data_to_send() == b""  # no msg3


def test_bad_initiator_signature_fails_responder(alice: SigningKey, bob: SigningKey) -> None:
    mallory = SigningKey.generate()
    impostor = SecureSession(
        initiator=True,
        our_key=bytes(alice.verify_key),
        sign=lambda message: mallory.sign(message).signature,
    )
    responder = make_session(bob, initiator=False)
    impostor.initiate()
    responder.receive_data(impostor.data_to_send())
    # Forge msg3 by hand, since the impostor's own signer is refused locally.
    (r1,) = FrameDecoder().feed(responder.data_to_send())
    assert msgpack.unpackb(r1)["t"] == "r1"
    i2 = {"t": "i2", "sig": mallory.sign(b"anything").signature}
    responder.receive_data(encode_frame(msgpack.packb(i2)))
    events = drain(responder)
    assert len(events) == 1 and isinstance(events[0], SessionFailed)
    assert responder.peer_key is None


def test_responder_expected_peer_checked_after_msg3(alice: SigningKey, bob: SigningKey) -> None:
    carol = SigningKey.generate()
    initiator = make_session(alice, initiator=True)
    responder = make_session(bob, initiator=False, expected_peer=bytes(carol.verify_key))
    initiator.initiate()
    _, events_r = pump(initiator, responder)
    assert len(events_r) == 1 and isinstance(events_r[0], SessionFailed)
    assert isinstance(events_r[0].error, PeerKeyMismatch)


@pytest.mark.parametrize(
    "message",
    [
        {"t": "i1", "v": 2, "id": bytes(32), "eph": bytes(32)},
        {"t": "i1", "v": True, "id": bytes(32), "eph": bytes(32)},
        {"t": "i1", "id": bytes(32), "eph": bytes(32)},
        {"t": "i1", "v": 1, "id": bytes(31), "eph": bytes(32)},
        {"t": "i1", "v": 1, "id": bytes(32), "eph": "x" * 32},
        {"t": "i1", "v": 1, "id": bytes(32), "eph": bytes(32), "extra": 1},
        {"t": "i2", "sig": bytes(64)},
        {"t": "r1", "v": 1, "id": bytes(32), "eph": bytes(32), "sig": bytes(64)},
        {"t": 1},
        [1, 2, 3],
        "i1",
    ],
)
def test_malformed_msg1_fails_responder(message: object, alice: SigningKey) -> None:
    responder = make_session(alice, initiator=False)
    responder.receive_data(encode_frame(msgpack.packb(message)))
    events = drain(responder)
    assert len(events) == 1 and isinstance(events[0], SessionFailed)
    assert responder.data_to_send() == b""


def test_low_order_ephemeral_fails_responder(alice: SigningKey, bob: SigningKey) -> None:
    responder = make_session(bob, initiator=False)
    msg1 = {"t": "i1", "v": 1, "id": bytes(alice.verify_key), "eph": bytes(32)}
    responder.receive_data(encode_frame(msgpack.packb(msg1)))
    events = drain(responder)
    assert len(events) == 1 and isinstance(events[0], SessionFailed)


def test_oversized_handshake_frame(alice: SigningKey) -> None:
    responder = make_session(alice, initiator=False)
    responder.receive_data(encode_frame(b"\x80" + bytes(600)))
    events = drain(responder)
    assert len(events) == 1 and isinstance(events[0], SessionFailed)


def test_data_before_initiate_fails(alice: SigningKey) -> None:
    initiator = make_session(alice, initiator=True)
    initiator.receive_data(encode_frame(b"hello"))
    events = drain(initiator)
    assert len(events) == 1 and isinstance(events[0], SessionFailed)


def test_data_frame_before_handshake_completes_fails(alice: SigningKey, bob: SigningKey) -> None:
    initiator = make_session(alice, initiator=True)
    responder = make_session(bob, initiator=False)
    initiator.initiate()
    responder.receive_data(initiator.data_to_send())
    initiator.receive_data(responder.data_to_send())
    drain(initiator)
    msg3 = initiator.data_to_send()
    initiator.send(b"data")
    data = initiator.data_to_send()
    responder.receive_data(data)  # sealed frame where msg3 belongs
    events = drain(responder)
    assert len(events) == 1 and isinstance(events[0], SessionFailed)
    responder.receive_data(msg3)
    assert drain(responder) == []


def test_msg1_twice_fails(alice: SigningKey, bob: SigningKey) -> None:
    initiator = make_session(alice, initiator=True)
    responder = make_session(bob, initiator=False)
    initiator.initiate()
    msg1 = initiator.data_to_send()
    responder.receive_data(msg1 + msg1)
    events = drain(responder)
    assert len(events) == 1 and isinstance(events[0], SessionFailed)


def test_invalid_constructor_arguments(alice: SigningKey) -> None:
    with pytest.raises(ValueError):
        SecureSession(initiator=True, our_key=b"short", sign=lambda m: b"")
    with pytest.raises(ValueError):
        SecureSession(
            initiator=True,
            our_key=bytes(alice.verify_key),
            sign=lambda m: alice.sign(m).signature,
            expected_peer=b"short",
        )


def test_transcript_is_fixed_layout() -> None:
    a, b, c, d = (bytes([i]) * 32 for i in range(4))
    t = transcript(b"I", a, b, c, d)
    assert t == b"p2pchat/1 session\x00I" + a + b + c + d
    assert transcript(b"R", a, b, c, d) != t
    with pytest.raises(ValueError):
        transcript(b"X", a, b, c, d)
    with pytest.raises(ValueError):
        transcript(b"I", a[:31], b, c, d)


# -- data phase ---------------------------------------------------------------


def test_thousand_payloads_each_way(alice: SigningKey, bob: SigningKey) -> None:
    initiator, responder = connected(alice, bob)
    out_i = [f"from alice {i}".encode() for i in range(1000)]
    out_r = [f"from bob {i}".encode() * (i % 7) for i in range(1000)]
    for p in out_i:
        initiator.send(p)
    for p in out_r:
        responder.send(p)
    events_i, events_r = pump(initiator, responder)
    assert events_r == [PayloadReceived(p) for p in out_i]
    assert events_i == [PayloadReceived(p) for p in out_r]


def test_data_right_after_msg3_in_same_write(alice: SigningKey, bob: SigningKey) -> None:
    initiator = make_session(alice, initiator=True)
    responder = make_session(bob, initiator=False)
    initiator.initiate()
    responder.receive_data(initiator.data_to_send())
    initiator.receive_data(responder.data_to_send())
    initiator.send(b"x" * 1000)
    responder.receive_data(initiator.data_to_send())
    assert drain(responder) == [
        HandshakeComplete(bytes(alice.verify_key)),
        PayloadReceived(b"x" * 1000),
    ]


def test_payload_size_limits(alice: SigningKey, bob: SigningKey) -> None:
    initiator, responder = connected(alice, bob)
    initiator.send(b"m" * MAX_PLAINTEXT)
    initiator.send(b"")
    with pytest.raises(LocalProtocolError):
        initiator.send(b"m" * (MAX_PLAINTEXT + 1))
    _, events_r = pump(initiator, responder)
    assert events_r == [PayloadReceived(b"m" * MAX_PLAINTEXT), PayloadReceived(b"")]


def test_tampered_frame_rejected_then_the_genuine_one_accepted(
    alice: SigningKey, bob: SigningKey
) -> None:
    initiator, responder = connected(alice, bob)
    initiator.send(b"one")
    initiator.send(b"two")
    first, second = sealed_frames(initiator)
    tampered = bytearray(first)
    tampered[-1] ^= 0x01
    responder.receive_data(bytes(tampered))
    events = drain(responder)
    assert len(events) == 1 and isinstance(events[0], FrameRejected)
    responder.receive_data(first + second)
    assert drain(responder) == [PayloadReceived(b"one"), PayloadReceived(b"two")]
    assert responder.established


def test_a_skipped_counter_fails_the_session(alice: SigningKey, bob: SigningKey) -> None:
    """Frames must arrive with consecutive counters: an authentic frame after a gap
    proves a frame was dropped (a relay could do it silently), so the session ends."""
    initiator, responder = connected(alice, bob)
    initiator.send(b"one")
    initiator.send(b"dropped on the way")
    initiator.send(b"three")
    first, _, third = sealed_frames(initiator)
    responder.receive_data(first + third)
    events = drain(responder)
    assert events[0] == PayloadReceived(b"one")
    assert isinstance(events[1], SessionFailed) and "skipped" in str(events[1].error)
    assert responder.failed


def test_tampered_counter_rejected(alice: SigningKey, bob: SigningKey) -> None:
    initiator, responder = connected(alice, bob)
    initiator.send(b"one")
    (frame,) = sealed_frames(initiator)
    tampered = bytearray(frame)
    tampered[4 + 7] ^= 0x02  # counter 1 -> 3: nonce and aad no longer match
    responder.receive_data(bytes(tampered))
    assert isinstance(drain(responder)[0], FrameRejected)
    responder.receive_data(frame)
    assert drain(responder) == [PayloadReceived(b"one")]


def test_replayed_frame_rejected(alice: SigningKey, bob: SigningKey) -> None:
    initiator, responder = connected(alice, bob)
    initiator.send(b"once")
    (frame,) = sealed_frames(initiator)
    responder.receive_data(frame)
    assert drain(responder) == [PayloadReceived(b"once")]
    responder.receive_data(frame)
    events = drain(responder)
    assert len(events) == 1 and isinstance(events[0], FrameRejected)
    assert "replay" in events[0].reason


def test_reordered_frames_fail_the_session(alice: SigningKey, bob: SigningKey) -> None:
    initiator, responder = connected(alice, bob)
    initiator.send(b"1")
    initiator.send(b"2")
    first, second = sealed_frames(initiator)
    responder.receive_data(second + first)
    events = drain(responder)
    assert len(events) == 1 and isinstance(events[0], SessionFailed)


def test_short_sealed_frame_rejected(alice: SigningKey, bob: SigningKey) -> None:
    _initiator, responder = connected(alice, bob)
    responder.receive_data(encode_frame(b"\x00" * 23))
    events = drain(responder)
    assert len(events) == 1 and isinstance(events[0], FrameRejected)


def test_too_many_rejections_fail_the_session(alice: SigningKey, bob: SigningKey) -> None:
    initiator, responder = connected(alice, bob)
    initiator.send(b"genuine")
    (frame,) = sealed_frames(initiator)
    garbage = encode_frame(struct.pack(">Q", 99) + bytes(40))
    for _ in range(MAX_REJECTED - 1):
        responder.receive_data(garbage)
    events = drain(responder)
    assert len(events) == MAX_REJECTED - 1
    assert all(isinstance(e, FrameRejected) for e in events)
    assert responder.established
    responder.receive_data(garbage)
    events = drain(responder)
    assert isinstance(events[0], FrameRejected)
    assert isinstance(events[-1], SessionFailed)
    assert responder.failed and not responder.established
    # A failed session ignores input and refuses to send.
    responder.receive_data(frame)
    assert drain(responder) == []
    with pytest.raises(LocalProtocolError):
        responder.send(b"after failure")


def test_oversized_length_header_fails_without_buffering(
    alice: SigningKey, bob: SigningKey
) -> None:
    _initiator, responder = connected(alice, bob)
    responder.receive_data(b"\x7f\xff\xff\xff" + bytes(100))
    events = drain(responder)
    assert len(events) == 1 and isinstance(events[0], SessionFailed)
    assert isinstance(events[0].error, RemoteProtocolError)
    assert responder.failed
    responder.receive_data(bytes(10_000))
    assert drain(responder) == []


def test_zero_length_frame_fails_session(alice: SigningKey, bob: SigningKey) -> None:
    _initiator, responder = connected(alice, bob)
    responder.receive_data(b"\x00\x00\x00\x00")
    events = drain(responder)
    assert len(events) == 1 and isinstance(events[0], SessionFailed)


def test_sessions_between_same_identities_use_fresh_keys(
    alice: SigningKey, bob: SigningKey
) -> None:
    first_i, first_r = connected(alice, bob)
    second_i, second_r = connected(alice, bob)
    first_i.send(b"same plaintext")
    second_i.send(b"same plaintext")
    frame_1 = first_i.data_to_send()
    frame_2 = second_i.data_to_send()
    # Same counter and plaintext, so only the key can make these differ.
    assert frame_1[:12] == frame_2[:12]
    assert frame_1 != frame_2
    # And one session's frames are meaningless to the other.
    second_r.receive_data(frame_1)
    events = drain(second_r)
    assert len(events) == 1 and isinstance(events[0], FrameRejected)
    first_r.receive_data(frame_1)
    assert drain(first_r) == [PayloadReceived(b"same plaintext")]


def test_directions_use_different_keys(alice: SigningKey, bob: SigningKey) -> None:
    initiator, _responder = connected(alice, bob)
    initiator.send(b"mirror")
    frame = initiator.data_to_send()
    # Reflecting the initiator's own frame back at it must not authenticate.
    initiator.receive_data(frame)
    events = drain(initiator)
    assert len(events) == 1 and isinstance(events[0], FrameRejected)


# -- fuzzing -----------------------------------------------------------------

_FUZZ_KEY = SigningKey.generate()


def _check_fuzz_events(session: SecureSession) -> None:
    for event in drain(session):
        assert not isinstance(event, HandshakeComplete)
        assert isinstance(event, FrameRejected | SessionFailed)
    assert not session.established
    assert session.peer_key is None


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_fuzz_fresh_responder(chunks: list[bytes]) -> None:
    responder = make_session(_FUZZ_KEY, initiator=False)
    for chunk in chunks:
        responder.receive_data(chunk)
    _check_fuzz_events(responder)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_fuzz_initiator_after_initiate(chunks: list[bytes]) -> None:
    initiator = make_session(_FUZZ_KEY, initiator=True)
    initiator.initiate()
    for chunk in chunks:
        initiator.receive_data(chunk)
    _check_fuzz_events(initiator)


_handshake_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.binary(max_size=70),
    st.text(alphabet="i12rtv\x00é", max_size=10),
    st.sampled_from([b"\x00" * 32, b"\x01" * 32, b"\x00" * 64]),
)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["t", "v", "id", "eph", "sig", "x"]),
        st.one_of(st.sampled_from(["i1", "r1", "i2", 1]), _handshake_values),
        max_size=6,
    )
)
def test_fuzz_structured_handshake_messages(message: dict[str, object]) -> None:
    """Well-formed msgpack maps reach deeper validation than random bytes do."""
    frame = encode_frame(msgpack.packb(message))
    initiator = make_session(_FUZZ_KEY, initiator=True)
    initiator.initiate()
    initiator.receive_data(frame)
    _check_fuzz_events(initiator)
    responder = make_session(_FUZZ_KEY, initiator=False)
    responder.receive_data(frame)
    responder.receive_data(frame)
    _check_fuzz_events(responder)


def test_exported_keys_agree_and_differ_by_label_and_session(
    alice: SigningKey, bob: SigningKey
) -> None:
    i, r = connected(alice, bob)
    second = connected(alice, bob)
    assert i.export_key(b"file", b"t1") == r.export_key(b"file", b"t1")
    assert i.export_key(b"file", b"t1") != i.export_key(b"file", b"t2")
    assert i.export_key(b"file") != i.export_key(b"other")
    assert second[0].export_key(b"file", b"t1") != i.export_key(b"file", b"t1")

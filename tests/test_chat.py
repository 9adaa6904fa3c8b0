from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import p2pchat.core.chat as chat_module
from p2pchat.core.chat import (
    MAX_BODY_BYTES,
    MAX_BUNDLE_FRAMES,
    MAX_SEQ,
    Ack,
    AckNow,
    ChatFrame,
    ChatMessage,
    Gap,
    Hello,
    Ping,
    Read,
    RequestPending,
    Typing,
    UnknownFrame,
    bundle,
    decode,
    decode_frames,
    encode,
)
from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError
from p2pchat.core.session import MAX_PLAINTEXT

MESSAGE_ID = "0123456789abcdef0123456789abcdef"


def message(**overrides: Any) -> ChatMessage:
    fields: dict[str, Any] = {
        "id": MESSAGE_ID,
        "seq": 5,
        "base": 3,
        "sent_at": 1_700_000_000.25,
        "body": "hi",
    }
    fields.update(overrides)
    return ChatMessage(**fields)


def raw_message(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "t": "msg",
        "i": MESSAGE_ID,
        "s": 5,
        "b": 3,
        "at": 1.5,
        "m": "hi",
    }
    fields.update(overrides)
    return bytes(msgpack.packb({k: v for k, v in fields.items() if v is not ...}))


ALL_FRAMES: list[ChatFrame] = [
    Hello(),
    Hello(name="Alice", token="invite-123"),
    Hello(name="Zoë 🌸", version=1),
    Hello(name="Bob", seen="[2001:db8::1]:47474"),
    message(),
    message(body="multi\nline\ttext ✓", seq=1, base=1, sent_at=0.0),
    message(body="", seq=MAX_SEQ, base=MAX_SEQ, sent_at=0.0),
    Ack(seq=0),
    Ack(seq=42),
    AckNow(),
    Read(seq=7),
    Typing(active=True),
    Typing(active=False),
    Gap(want=1),
    RequestPending(),
    Ping(),
]


@pytest.mark.parametrize("frame", ALL_FRAMES, ids=repr)
def test_round_trip(frame: ChatFrame) -> None:
    assert decode(encode(frame)) == frame


def test_round_trip_covers_every_frame_type() -> None:
    kinds = {type(f) for f in ALL_FRAMES}
    assert kinds == {Hello, ChatMessage, Ack, AckNow, Read, Typing, Gap, RequestPending, Ping}


def test_largest_message_fits_in_a_session_payload() -> None:
    frame = message(body="€" * (MAX_BODY_BYTES // 3), id="f" * 32, seq=MAX_SEQ, base=MAX_SEQ)
    assert len(encode(frame)) <= MAX_PLAINTEXT


def test_encoding_uses_short_keys() -> None:
    assert msgpack.unpackb(encode(Ack(seq=3))) == {"t": "ack", "s": 3}


# -- boundaries ----------------------------------------------------------------


def test_body_exactly_max_bytes_accepted() -> None:
    body = "a" * MAX_BODY_BYTES
    assert decode(raw_message(m=body)) == message(body=body, sent_at=1.5)
    assert decode(encode(message(body=body))) == message(body=body)


def test_body_one_byte_over_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        decode(raw_message(m="a" * (MAX_BODY_BYTES + 1)))
    with pytest.raises(LocalProtocolError):
        encode(message(body="a" * (MAX_BODY_BYTES + 1)))


def test_body_limit_counts_utf8_bytes() -> None:
    body = "é" * (MAX_BODY_BYTES // 2) + "x"
    with pytest.raises(RemoteProtocolError):
        decode(raw_message(m=body))


@pytest.mark.parametrize(
    "overrides",
    [
        {"s": True},
        {"b": True},
        {"s": 1.0},
        {"s": 0, "b": 0},
        {"s": 3, "b": 4},
        {"s": MAX_SEQ + 1, "b": 1},
        {"s": -1},
        {"s": ...},
        {"i": MESSAGE_ID.upper()},
        {"i": MESSAGE_ID[:-1]},
        {"i": MESSAGE_ID + "0"},
        {"i": "g" * 32},
        {"i": MESSAGE_ID.encode()},
        {"at": math.nan},
        {"at": math.inf},
        {"at": "now"},
        {"at": True},
        {"m": b"bytes body"},
        {"m": "nul\x00inside"},
        {"m": None},
    ],
    ids=repr,
)
def test_invalid_message_fields_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(raw_message(**overrides))


def test_integral_timestamp_accepted() -> None:
    assert decode(raw_message(at=1_700_000_000)) == message(sent_at=1_700_000_000.0, seq=5, base=3)


@pytest.mark.parametrize(
    "obj",
    [
        {"t": "ack", "s": True},
        {"t": "ack", "s": -1},
        {"t": "ack"},
        {"t": "read", "s": 2**53},
        {"t": "typing", "a": 1},
        {"t": "typing"},
        {"t": "gap", "w": 0},
        {"t": "hello", "v": 0},
        {"t": "hello", "v": True},
        {"t": "hello"},
        {"t": "hello", "v": 1, "k": "x" * 65},
        {"t": "hello", "v": 1, "o": "x" * 65},
        {"t": "hello", "v": 1, "o": "1.2.3.4:5\x1b[2J"},
        {"t": 1},
        {"s": 1},
        {b"t": "ack", b"s": 1},
        [1, 2],
        "ack",
        None,
    ],
    ids=repr,
)
def test_invalid_frames_refused(obj: object) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(msgpack.packb(obj))
    assert not isinstance(info.value, UnknownFrame)


def test_hello_limits_are_in_characters() -> None:
    assert decode(encode(Hello(name="ü" * 64, token="t" * 64))) == Hello(
        name="ü" * 64, token="t" * 64
    )


@pytest.mark.parametrize(
    ("name", "repaired"),
    [
        ("x" * 65, "x" * 64),
        ("x" * 5000, "x" * 64),
        ("evil\x1b[2J", "evil [2J"),
        ("line\nbreak", "line break"),
        ("abc\u202edcba", "abcdcba"),
        ("zero\u200bwidth", "zerowidth"),
        ("\u202e\u2066", None),
        ("", None),
        (5, None),
        (b"bytes", None),
    ],
    ids=repr,
)
def test_a_peers_bad_name_is_repaired_not_refused(name: object, repaired: str | None) -> None:
    """A Hello is never dropped over its name: that would close the session."""
    hello = decode(msgpack.packb({"t": "hello", "v": 1, "n": name}))
    assert isinstance(hello, Hello)
    assert hello.name == repaired
    assert hello.name_problem is not None


def test_a_good_name_is_normalised_without_a_problem() -> None:
    hello = decode(msgpack.packb({"t": "hello", "v": 1, "n": "  Ａlice  Smith "}))
    assert hello == Hello(name="Alice Smith", version=1)
    assert hello.name_problem is None


@pytest.mark.parametrize("name", ["x" * 65, "evil\x1b[2J", "a\u202eb", " padded ", ""])
def test_we_never_send_a_name_the_rule_refuses(name: str) -> None:
    with pytest.raises(LocalProtocolError):
        encode(Hello(name=name))


def test_unknown_type_is_distinguishable() -> None:
    with pytest.raises(UnknownFrame) as info:
        decode(msgpack.packb({"t": "file-offer", "size": 10}))
    assert info.value.frame_type == "file-offer"
    assert isinstance(info.value, RemoteProtocolError)


def test_unknown_keys_in_known_frames_ignored() -> None:
    assert decode(msgpack.packb({"t": "ack", "s": 1, "future": [1, 2]})) == Ack(seq=1)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        msgpack.packb({"t": "ping"}) + b"\x00",
        msgpack.packb({"t": "ping"})[:-1],
        b"\x81\xa1t\xa4p\xffng",  # invalid utf-8 in the tag
        b"\x91" * 5000,  # deep nesting
        b"\xdd\xff\xff\xff\xff",  # array header claiming 4 billion items
        b"\xdb\xff\xff\xff\xff",  # string header claiming 4 GiB
        msgpack.packb({"t": "ping", "x": list(range(5000))}),
        msgpack.packb({str(i): i for i in range(1000)}),
    ],
)
def test_malformed_msgpack_refused(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(payload)


def test_encode_refuses_invalid_frames() -> None:
    with pytest.raises(LocalProtocolError):
        encode(message(base=6, seq=5))
    with pytest.raises(LocalProtocolError):
        encode(message(id="not-hex"))
    with pytest.raises(LocalProtocolError):
        encode(message(body="\ud800"))
    with pytest.raises(LocalProtocolError):
        encode(message(sent_at=math.nan))
    with pytest.raises(LocalProtocolError):
        encode(Hello(name="n" * 65))
    with pytest.raises(LocalProtocolError):
        encode("ping")  # type: ignore[arg-type]


# -- fuzzing -------------------------------------------------------------------

_FRAME_TYPES = (Hello, ChatMessage, Ack, Read, Typing, Gap, RequestPending, Ping)


def _decode_only_frame_or_remote_error(payload: bytes) -> None:
    try:
        frame = decode(payload)
    except RemoteProtocolError:
        return
    assert isinstance(frame, _FRAME_TYPES)


_fuzz_settings = settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])


@_fuzz_settings
@given(st.binary(max_size=300))
def test_fuzz_decode_arbitrary_bytes(payload: bytes) -> None:
    _decode_only_frame_or_remote_error(payload)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from(["msg", "hello", "ack", "read", "typing", "gap", "pending", "ping"]),
    st.sampled_from([MESSAGE_ID, 0, 1, 2**53 - 1, 2**53, -0.0, "\x00"]),
)
_keys = st.one_of(
    st.sampled_from(["t", "v", "n", "k", "i", "s", "b", "at", "m", "a", "w"]),
    st.text(max_size=5),
    st.binary(max_size=5),
)
_objects = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(_keys, children, max_size=8)
    ),
    max_leaves=30,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(_objects)
def test_fuzz_decode_arbitrary_msgpack_objects(obj: object) -> None:
    _decode_only_frame_or_remote_error(msgpack.packb(obj))


@_fuzz_settings
@given(
    st.fixed_dictionaries(
        {"t": st.sampled_from(["msg", "hello", "ack", "read", "typing", "gap", "pending"])},
        optional={k: _scalars for k in ["v", "n", "k", "i", "s", "b", "at", "m", "a", "w"]},
    )
)
def test_fuzz_decode_known_tags(obj: dict[str, object]) -> None:
    """Maps with a real tag exercise the field validators, not just the tag check."""
    payload = msgpack.packb(obj)
    try:
        frame = decode(payload)
    except UnknownFrame:
        pytest.fail("known tag reported as unknown")
    except RemoteProtocolError:
        return
    assert isinstance(frame, _FRAME_TYPES)
    assert decode(encode(frame)) == frame


@pytest.mark.parametrize("at", [-1.0, 1e300, 1e11 + 1])
def test_implausible_timestamps_refused(at: float) -> None:
    frame = msgpack.packb(
        {"t": "msg", "i": "0" * 32, "s": 1, "b": 1, "at": at, "m": "x"}, use_bin_type=True
    )
    with pytest.raises(RemoteProtocolError, match="timestamp"):
        decode(frame)


# ------------------------------------------------------------------- bundles
def _only_frames_or_remote_errors(payload: bytes) -> list[object]:
    """``decode_frames`` never raises: every item is a frame or a ``RemoteProtocolError``."""
    items = decode_frames(payload)
    assert items, "decode_frames returned nothing"
    for item in items:
        assert isinstance(item, (*_FRAME_TYPES, RemoteProtocolError)), item
    return items


@_fuzz_settings
@given(st.lists(st.sampled_from(ALL_FRAMES), min_size=1, max_size=40))
def test_bundle_round_trip(frames: list[ChatFrame]) -> None:
    assert decode_frames(bundle([encode(f) for f in frames])) == frames


def test_a_single_frame_decodes_as_a_list_of_one() -> None:
    assert decode_frames(encode(message())) == [message()]


def test_bundle_array_headers_at_the_size_boundaries() -> None:
    for count in (1, 15, 16, 17, 1023, MAX_BUNDLE_FRAMES):
        frames = [Ack(seq=i) for i in range(count)]
        assert decode_frames(bundle([encode(f) for f in frames])) == frames
    with pytest.raises(LocalProtocolError):
        bundle([])
    with pytest.raises(LocalProtocolError):
        bundle([encode(Ack(seq=1))] * (MAX_BUNDLE_FRAMES + 1))


def test_a_full_bundle_fits_the_session_payload() -> None:
    biggest = encode(message(body="x" * MAX_BODY_BYTES))
    assert len(bundle([biggest] * 3)) <= MAX_PLAINTEXT


def test_bad_and_unknown_frames_inside_a_bundle_keep_their_place() -> None:
    good = encode(Ack(seq=3))
    unknown = msgpack.packb({"t": "from-the-future"})
    bad = raw_message(s=0)
    inner_bundle = bundle([good])
    items = decode_frames(bundle([good, unknown, bad, inner_bundle, encode(Read(seq=2))]))
    assert items[0] == Ack(seq=3)
    assert isinstance(items[1], UnknownFrame)
    assert isinstance(items[2], RemoteProtocolError) and not isinstance(items[2], UnknownFrame)
    assert isinstance(items[3], RemoteProtocolError)  # no bundle inside a bundle
    assert items[4] == Read(seq=2)


@pytest.mark.parametrize(
    "obj",
    [
        {"t": "bundle"},
        {"t": "bundle", "f": []},
        {"t": "bundle", "f": "not a list"},
        {"t": "bundle", "f": [{"t": "ack", "s": 1}] * (MAX_BUNDLE_FRAMES + 1)},
    ],
    ids=["no list", "empty", "not a list", "too many"],
)
def test_badly_shaped_bundles_are_one_error(obj: dict[str, object]) -> None:
    items = decode_frames(msgpack.packb(obj))
    assert len(items) == 1 and isinstance(items[0], RemoteProtocolError)


def test_decode_refuses_a_bundle_where_one_frame_is_expected() -> None:
    with pytest.raises(RemoteProtocolError):
        decode(bundle([encode(Ack(seq=1))]))


@_fuzz_settings
@given(st.binary(max_size=300))
def test_fuzz_decode_frames_arbitrary_bytes(payload: bytes) -> None:
    _only_frames_or_remote_errors(payload)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_objects, max_size=12))
def test_fuzz_bundles_of_arbitrary_objects(items: list[object]) -> None:
    """Whatever a bundle's list holds, each item comes back as a frame or an error, in
    place (a malformed list is one error)."""
    result = _only_frames_or_remote_errors(msgpack.packb({"t": "bundle", "f": items}))
    assert len(result) == (len(items) if items else 1)


@_fuzz_settings
@given(
    st.lists(
        st.fixed_dictionaries(
            {"t": st.sampled_from(["msg", "ack", "read", "typing", "gap", "bundle"])},
            optional={k: _scalars for k in ["i", "s", "b", "at", "m", "a", "w", "f"]},
        ),
        min_size=1,
        max_size=10,
    )
)
def test_fuzz_bundles_of_known_tags(maps: list[dict[str, object]]) -> None:
    result = _only_frames_or_remote_errors(msgpack.packb({"t": "bundle", "f": maps}))
    assert len(result) == len(maps)
    for item, raw in zip(result, maps, strict=True):
        if raw["t"] == "bundle":
            assert isinstance(item, RemoteProtocolError)
        elif not isinstance(item, RemoteProtocolError):
            assert decode(encode(item)) == item  # type: ignore[arg-type]


# ------------------------------------------------ encode checks what decode checks
_message_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=2**53 + 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=8),
    st.sampled_from(
        [MESSAGE_ID, MESSAGE_ID.upper(), "edit", "delete", "text", "", " ", "\x00", "\ud800",
         "a" * (MAX_BODY_BYTES + 1), 0, 1, MAX_SEQ, 1e11, 1e11 + 1, -0.0, 2**53]
    ),
)  # fmt: skip
_message_fields = ("id", "seq", "base", "sent_at", "body", "reply_to", "kind", "target")


@_fuzz_settings
@given(st.dictionaries(st.sampled_from(_message_fields), _message_values, max_size=3))
def test_encode_refuses_a_message_exactly_when_a_peer_would(overrides: dict[str, Any]) -> None:
    """``encode`` checks a message with the decoder's rules on the map it packs (not
    by decoding its own output): whatever it sends decodes, and what it refuses a
    peer would refuse too (or cannot even be packed)."""
    frame = message(**overrides)
    try:
        payload = encode(frame)
    except LocalProtocolError:
        try:
            raw = msgpack.packb(chat_module._to_map(frame), use_bin_type=True)
        except (ValueError, TypeError, OverflowError):
            return  # not even msgpack
        with pytest.raises(RemoteProtocolError):
            decode(raw)
        return
    decoded = decode(payload)
    assert isinstance(decoded, ChatMessage)
    assert decoded == decode(msgpack.packb(chat_module._to_map(frame), use_bin_type=True))

from __future__ import annotations

import itertools
import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError
from p2pchat.core.framing import MAX_FRAME, FrameDecoder, encode_frame


def test_encode_prefixes_big_endian_length() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_round_trip_several_frames_in_one_feed() -> None:
    payloads = [b"a", b"hello", bytes(range(256)), b"x" * MAX_FRAME]
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    assert decoder.feed(stream) == payloads
    assert decoder.buffered == 0


def test_encode_refuses_oversized_and_empty_payloads() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * (MAX_FRAME + 1))
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * 11, max_frame=10)
    with pytest.raises(LocalProtocolError):
        encode_frame(b"")


def test_split_at_every_byte_boundary() -> None:
    payloads = [b"first", b"second frame", b"3"]
    stream = b"".join(encode_frame(p) for p in payloads)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert got == payloads, cut
        assert decoder.buffered == 0


def test_split_at_every_pair_of_boundaries() -> None:
    payloads = [b"ab", b"cde"]
    stream = b"".join(encode_frame(p) for p in payloads)
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            decoder = FrameDecoder()
            got = decoder.feed(stream[:i]) + decoder.feed(stream[i:j]) + decoder.feed(stream[j:])
            assert got == payloads


def test_partial_frame_is_buffered() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"hello")[:6]) == []
    assert decoder.buffered == 6
    assert decoder.feed(b"llo") == [b"hello"]
    assert decoder.buffered == 0


def test_oversized_header_refused_before_body_arrives() -> None:
    decoder = FrameDecoder(max_frame=100)
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(RemoteProtocolError):
        decoder.feed(struct.pack(">H", 101))
    assert decoder.buffered == 0
    assert decoder.failed


def test_huge_header_costs_no_memory() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"\xff\xff\xff\xff")
    assert decoder.buffered == 0


def test_frame_of_exactly_max_frame_accepted() -> None:
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(encode_frame(b"0123456789", max_frame=10)) == [b"0123456789"]


def test_zero_length_frame_refused() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"\x00\x00\x00\x00")


def test_decoder_stays_failed() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError):
        decoder.feed(encode_frame(b"fine"))
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"")


def test_buffered_never_exceeds_max_frame_plus_header() -> None:
    decoder = FrameDecoder(max_frame=50)
    stream = encode_frame(b"x" * 50, max_frame=50) * 3
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        assert decoder.buffered <= 50 + 3


def test_many_small_frames_are_fast() -> None:
    payloads = [f"message {i}".encode() for i in range(1000)]
    stream = b"".join(encode_frame(p) for p in payloads)

    start = time.perf_counter()
    assert FrameDecoder().feed(stream) == payloads
    decoder = FrameDecoder()
    got: list[bytes] = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == payloads
    assert time.perf_counter() - start < 2.0


def test_many_large_frames_fed_in_small_chunks_are_linear() -> None:
    payload = b"y" * MAX_FRAME
    stream = encode_frame(payload) * 20
    decoder = FrameDecoder()
    got: list[bytes] = []
    start = time.perf_counter()
    for i in range(0, len(stream), 1000):
        got += decoder.feed(stream[i : i + 1000])
    assert got == [payload] * 20
    assert time.perf_counter() - start < 2.0


@given(st.lists(st.binary(max_size=64), max_size=20), st.integers(min_value=1, max_value=300))
def test_feed_arbitrary_chunks_only_returns_bytes_or_raises_remote(
    chunks: list[bytes], max_frame: int
) -> None:
    decoder = FrameDecoder(max_frame=max_frame)
    for chunk in chunks:
        try:
            frames = decoder.feed(chunk)
        except RemoteProtocolError:
            assert decoder.failed
            continue
        assert isinstance(frames, list)
        for frame in frames:
            assert isinstance(frame, bytes)
            assert 1 <= len(frame) <= max_frame
        assert decoder.buffered <= max_frame + 3


@given(
    st.lists(st.binary(min_size=1, max_size=40), max_size=10),
    st.lists(st.integers(min_value=0, max_value=500), max_size=10),
)
def test_round_trip_with_arbitrary_cuts(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    got: list[bytes] = []
    for start, end in itertools.pairwise(points):
        got += decoder.feed(stream[start:end])
    assert got == payloads
    assert decoder.buffered == 0

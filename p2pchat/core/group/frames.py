"""Group frames: the ``g…`` chat frames that carry group sync over pairwise sessions.

They travel sealed inside the same sessions as 1:1 chat (``core/chat.py`` decodes the
map with its msgpack limits and hands maps whose tag starts with ``g`` here).  Every
field is checked; operations and messages inside are checked again, signature and all,
by ``ops.py`` and ``messages.py`` when the replica takes them.

* ``gsum`` GroupSummary: ``g`` group id; ``o`` membership heads; ``a`` per author
  ``[author, shown, floor, [[lo, hi]...]]``.
* ``gops`` GroupOps: ``g``; ``o`` ``[[body, sig]...]``, parents first.
* ``gmsgs`` GroupMessages: ``g``; ``m`` ``[[header, sig, content]...]``; ``k`` skips
  ``[[author, floor]...]``; ``f`` fan-out (8-byte member key prefixes).
* ``gend`` GroupEnd: ``g``; ``more``: the answer to a summary is complete, or not.
* ``ghave`` GroupHave: ``g``; ``a`` ``[[author, shown]...]``.
* ``ginvite`` GroupInvite: ``g``; ``n`` group name (a hint until the operations arrive).
* ``gpeers`` GroupPeers: ``g``; ``p`` ``[[member key, [address...]]...]``: where the
  sender reaches those members (claims: a dial still checks the key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

import p2pchat.core.group.codec as codec
from p2pchat.core.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from p2pchat.core.group.messages import (
    MAX_CONTENT_BYTES,
    MAX_HEADER_BYTES,
    WireMessage,
)
from p2pchat.core.group.ops import MAX_OP_BYTES, WireOp
from p2pchat.core.group.replica import PREFIX, AuthorSummary, Summary

__all__ = [
    "GROUP_TAGS",
    "GroupEnd",
    "GroupFrame",
    "GroupHave",
    "GroupInvite",
    "GroupMessages",
    "GroupOps",
    "GroupPeers",
    "GroupSummary",
    "decode_group",
    "encode_group",
    "from_map",
    "message_frames",
    "op_frames",
    "to_map",
]

MAX_LIST = 2048
MAX_RANGES = 64
MAX_PEER_ADDRESSES = 8
MAX_ADDRESS_CHARS = 256
MAX_FRAME_PAYLOAD = 60 * 1024
"""Group frames are filled up to this many bytes (sealed frames carry at most 65,512)."""

ErrorType = type[ProtocolError]


@dataclass(frozen=True, slots=True)
class GroupSummary:
    group_id: bytes
    summary: Summary


@dataclass(frozen=True, slots=True)
class GroupOps:
    group_id: bytes
    ops: tuple[WireOp, ...]


@dataclass(frozen=True, slots=True)
class GroupMessages:
    group_id: bytes
    messages: tuple[WireMessage, ...]
    skips: tuple[tuple[bytes, int], ...] = ()
    fanout: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class GroupEnd:
    group_id: bytes
    more: bool


@dataclass(frozen=True, slots=True)
class GroupHave:
    group_id: bytes
    marks: tuple[tuple[bytes, int], ...]


@dataclass(frozen=True, slots=True)
class GroupInvite:
    group_id: bytes
    name: str


@dataclass(frozen=True, slots=True)
class GroupPeers:
    group_id: bytes
    peers: tuple[tuple[bytes, tuple[str, ...]], ...]


GroupFrame = (
    GroupSummary | GroupOps | GroupMessages | GroupEnd | GroupHave | GroupInvite | GroupPeers
)
GROUP_TAGS = ("gsum", "gops", "gmsgs", "gend", "ghave", "ginvite", "gpeers")


def to_map(frame: GroupFrame) -> dict[str, Any]:
    g = frame.group_id
    if isinstance(frame, GroupSummary):
        return {
            "t": "gsum",
            "g": g,
            "o": list(frame.summary.heads),
            "a": [
                [a.author, a.shown, a.floor, [list(r) for r in a.extra]]
                for a in frame.summary.authors
            ],
        }
    if isinstance(frame, GroupOps):
        return {"t": "gops", "g": g, "o": [list(op) for op in frame.ops]}
    if isinstance(frame, GroupMessages):
        m: dict[str, Any] = {"t": "gmsgs", "g": g, "m": [list(x) for x in frame.messages]}
        if frame.skips:
            m["k"] = [list(s) for s in frame.skips]
        if frame.fanout:
            m["f"] = list(frame.fanout)
        return m
    if isinstance(frame, GroupEnd):
        return {"t": "gend", "g": g, "more": frame.more}
    if isinstance(frame, GroupHave):
        return {"t": "ghave", "g": g, "a": [list(x) for x in frame.marks]}
    if isinstance(frame, GroupInvite):
        return {"t": "ginvite", "g": g, "n": frame.name}
    if isinstance(frame, GroupPeers):
        return {"t": "gpeers", "g": g, "p": [[k, list(a)] for k, a in frame.peers]}
    raise LocalProtocolError(f"not a group frame: {frame!r}")


def from_map(m: dict[Any, Any], err: ErrorType = RemoteProtocolError) -> GroupFrame | None:
    """The group frame in a decoded chat map (None: not a tag this version knows)."""
    kind = m.get("t")
    if kind not in GROUP_TAGS:
        return None
    g = codec.as_bytes(m.get("g"), err, "group id", codec.HASH_SIZE)
    if kind == "gsum":
        heads = codec.as_keys(m.get("o"), err, "summary heads", max_len=MAX_LIST,
                              size=codec.HASH_SIZE)
        authors: list[AuthorSummary] = []
        seen: set[bytes] = set()
        for item in codec.as_list(m.get("a"), err, "summary authors", max_len=MAX_LIST):
            row = codec.as_list(item, err, "summary entry", min_len=4, max_len=4)
            author = codec.as_bytes(row[0], err, "summary author", codec.KEY_SIZE)
            if author in seen:
                raise err("summary names an author twice")
            seen.add(author)
            shown = codec.as_int(row[1], err, "summary shown")
            floor = codec.as_int(row[2], err, "summary floor", 0, shown)
            extra = []
            last = shown
            for pair in codec.as_list(row[3], err, "summary ranges", max_len=MAX_RANGES):
                lo, hi = codec.as_list(pair, err, "summary range", min_len=2, max_len=2)
                lo = codec.as_int(lo, err, "range start", last + 1)
                hi = codec.as_int(hi, err, "range end", lo)
                extra.append((lo, hi))
                last = hi
            authors.append(AuthorSummary(author, shown, floor, tuple(extra)))
        return GroupSummary(g, Summary(heads, tuple(authors)))
    if kind == "gops":
        ops = []
        for item in codec.as_list(m.get("o"), err, "operations", min_len=1, max_len=MAX_LIST):
            pair = codec.as_list(item, err, "operation", min_len=2, max_len=2)
            ops.append(
                (
                    codec.as_bin(pair[0], err, "operation body", MAX_OP_BYTES),
                    codec.as_bytes(pair[1], err, "operation signature", codec.SIG_SIZE),
                )
            )
        return GroupOps(g, tuple(ops))
    if kind == "gmsgs":
        messages = []
        for item in codec.as_list(m.get("m"), err, "messages", min_len=1, max_len=MAX_LIST):
            triple = codec.as_list(item, err, "message", min_len=3, max_len=3)
            messages.append(
                (
                    codec.as_bin(triple[0], err, "message header", MAX_HEADER_BYTES),
                    codec.as_bytes(triple[1], err, "message signature", codec.SIG_SIZE),
                    codec.as_bin(triple[2], err, "message content", MAX_CONTENT_BYTES),
                )
            )
        skips = []
        for item in codec.as_list(m.get("k", []), err, "skips", max_len=MAX_LIST):
            pair = codec.as_list(item, err, "skip", min_len=2, max_len=2)
            skips.append(
                (
                    codec.as_bytes(pair[0], err, "skip author", codec.KEY_SIZE),
                    codec.as_int(pair[1], err, "skip floor", 1),
                )
            )
        fanout = codec.as_keys(m.get("f", []), err, "fan-out", max_len=MAX_LIST, size=PREFIX)
        return GroupMessages(g, tuple(messages), tuple(skips), fanout)
    if kind == "gend":
        more = m.get("more")
        if type(more) is not bool:
            raise err("field 'more' must be a boolean")
        return GroupEnd(g, more)
    if kind == "ghave":
        marks = []
        for item in codec.as_list(m.get("a"), err, "have marks", min_len=1, max_len=MAX_LIST):
            pair = codec.as_list(item, err, "have mark", min_len=2, max_len=2)
            marks.append(
                (
                    codec.as_bytes(pair[0], err, "have author", codec.KEY_SIZE),
                    codec.as_int(pair[1], err, "have seq"),
                )
            )
        return GroupHave(g, tuple(marks))
    if kind == "ginvite":
        return GroupInvite(g, codec.as_label(m.get("n"), err, "group name"))
    # gpeers
    peers = []
    for item in codec.as_list(m.get("p"), err, "peers", max_len=MAX_LIST):
        pair = codec.as_list(item, err, "peer", min_len=2, max_len=2)
        key = codec.as_bytes(pair[0], err, "peer key", codec.KEY_SIZE)
        addresses = []
        for a in codec.as_list(pair[1], err, "peer addresses", max_len=MAX_PEER_ADDRESSES):
            if type(a) is not str or not 0 < len(a) <= MAX_ADDRESS_CHARS or not a.isprintable():
                raise err("peer address must be a short printable string")
            addresses.append(a)
        peers.append((key, tuple(addresses)))
    return GroupPeers(g, tuple(peers))


def encode_group(frame: GroupFrame) -> bytes:
    """The frame as msgpack (checked as a receiver would check it)."""
    m = to_map(frame)
    from_map(m, LocalProtocolError)
    packed: bytes = msgpack.packb(m, use_bin_type=True)
    return packed


def decode_group(payload: bytes) -> GroupFrame:
    """Decode a group frame on its own (the node receives them through ``chat.decode``)."""
    obj = codec.unpack(payload, RemoteProtocolError, max_bin=MAX_CONTENT_BYTES, max_array=MAX_LIST)
    if not isinstance(obj, dict):
        raise RemoteProtocolError("group frame is not a map")
    frame = from_map(obj)
    if frame is None:
        raise RemoteProtocolError(f"not a group frame: {obj.get('t')!r}")
    return frame


def _wire_size(parts: tuple[bytes, ...]) -> int:
    return sum(len(p) + 5 for p in parts) + 3


class Carried(Protocol):
    """A message as held in memory or read from the store."""

    @property
    def author(self) -> bytes: ...

    @property
    def seq(self) -> int: ...

    @property
    def wire(self) -> WireMessage: ...


def message_frames(
    group_id: bytes,
    messages: Sequence[Carried],
    *,
    skips: dict[bytes, int] | None = None,
    fanout: Sequence[bytes] = (),
) -> list[GroupMessages]:
    """Pack messages into as few frames as fit; a skip rides with the frame that
    carries the message just above its floor (the receiver honours it only then)."""
    frames: list[GroupMessages] = []
    skips = dict(skips or {})
    base = 64 + len(fanout) * (PREFIX + 2)
    chunk: list[Carried] = []
    size = base
    for message in messages:
        extra = _wire_size(message.wire) + 50
        if chunk and size + extra > MAX_FRAME_PAYLOAD:
            frames.append(_message_frame(group_id, chunk, skips, fanout))
            chunk, size = [], base
        chunk.append(message)
        size += extra
    if chunk:
        frames.append(_message_frame(group_id, chunk, skips, fanout))
    return frames


def _message_frame(
    group_id: bytes,
    chunk: list[Carried],
    skips: dict[bytes, int],
    fanout: Sequence[bytes],
) -> GroupMessages:
    riding: list[tuple[bytes, int]] = []
    for m in chunk:
        floor = skips.get(m.author)
        if floor is not None and m.seq == floor + 1:
            riding.append((m.author, floor))
            del skips[m.author]
    return GroupMessages(group_id, tuple(m.wire for m in chunk), tuple(riding), tuple(fanout))


def op_frames(group_id: bytes, ops: list[WireOp]) -> list[GroupOps]:
    frames: list[GroupOps] = []
    chunk: list[WireOp] = []
    size = 64
    for wire in ops:
        extra = _wire_size(wire)
        if chunk and size + extra > MAX_FRAME_PAYLOAD:
            frames.append(GroupOps(group_id, tuple(chunk)))
            chunk, size = [], 64
        chunk.append(wire)
        size += extra
    if chunk:
        frames.append(GroupOps(group_id, tuple(chunk)))
    return frames

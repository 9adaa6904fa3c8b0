"""Chat frames: the msgpack maps carried inside sealed session payloads.

The session already authenticated the peer, but an authenticated peer can still
run buggy or hostile software, so ``decode`` trusts nothing: every field is
type- and range-checked, and msgpack is told how large strings, binaries and
containers may be so a 64 KiB payload cannot expand into a large allocation.

Every frame is a map with a short ``"t"`` tag.  A tag this version does not
know raises ``UnknownFrame`` so a node can ignore frames a newer peer sends,
while a known frame with a bad field is an error.  Unknown keys inside a known
frame are ignored for the same reason: a later version may add optional fields.

``encode`` runs the same checks, raising ``LocalProtocolError``, so we never
send a frame the peer would have to refuse.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import msgpack

from p2pchat.core.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_NAME_CHARS",
    "MAX_SEQ",
    "MAX_TOKEN_CHARS",
    "PROTOCOL_VERSION",
    "Ack",
    "ChatFrame",
    "ChatMessage",
    "Gap",
    "Hello",
    "Ping",
    "Read",
    "RequestPending",
    "Typing",
    "UnknownFrame",
    "decode",
    "encode",
]

PROTOCOL_VERSION = 1
MAX_BODY_BYTES = 16 * 1024
MAX_NAME_CHARS = 64
MAX_TOKEN_CHARS = 64
MAX_SEQ = 2**53 - 1
"""Sequence numbers stay exactly representable as IEEE doubles, for peers in JS."""
MAX_VERSION = 2**16 - 1

_MAX_MAP_LEN = 32
_MAX_ARRAY_LEN = 32
_MAX_EXT_LEN = 64
_ID_RE = re.compile(r"[0-9a-f]{32}")


class UnknownFrame(RemoteProtocolError):
    """A well-formed frame whose type this version does not know."""

    def __init__(self, frame_type: str) -> None:
        super().__init__(f"unknown chat frame type {frame_type!r}")
        self.frame_type = frame_type


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame each side sends after the handshake.

    ``token`` lets a stranger prove an invitation so the request can skip the
    "unknown sender" queue; ``name`` is only a suggestion for the contact list.
    """

    name: str | None = None
    token: str | None = None
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class ChatMessage:
    id: str
    seq: int
    base: int
    sent_at: float
    body: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Cumulative: every message up to ``seq`` is stored durably."""

    seq: int


@dataclass(frozen=True, slots=True)
class Read:
    """Cumulative: every message up to ``seq`` has been shown to the user."""

    seq: int


@dataclass(frozen=True, slots=True)
class Typing:
    active: bool


@dataclass(frozen=True, slots=True)
class Gap:
    """Resend your outbox starting at ``want``: an earlier message never arrived."""

    want: int


@dataclass(frozen=True, slots=True)
class RequestPending:
    """You are not a contact yet; your messages wait until the user decides."""


@dataclass(frozen=True, slots=True)
class Ping:
    pass


ChatFrame = Hello | ChatMessage | Ack | Read | Typing | Gap | RequestPending | Ping

_T_HELLO = "hello"
_T_MSG = "msg"
_T_ACK = "ack"
_T_READ = "read"
_T_TYPING = "typing"
_T_GAP = "gap"
_T_PENDING = "pending"
_T_PING = "ping"


def _to_map(frame: ChatFrame) -> dict[str, Any]:
    if isinstance(frame, Hello):
        m: dict[str, Any] = {"t": _T_HELLO, "v": frame.version}
        if frame.name is not None:
            m["n"] = frame.name
        if frame.token is not None:
            m["k"] = frame.token
        return m
    if isinstance(frame, ChatMessage):
        return {
            "t": _T_MSG,
            "i": frame.id,
            "s": frame.seq,
            "b": frame.base,
            "at": frame.sent_at,
            "m": frame.body,
        }
    if isinstance(frame, Ack):
        return {"t": _T_ACK, "s": frame.seq}
    if isinstance(frame, Read):
        return {"t": _T_READ, "s": frame.seq}
    if isinstance(frame, Typing):
        return {"t": _T_TYPING, "a": frame.active}
    if isinstance(frame, Gap):
        return {"t": _T_GAP, "w": frame.want}
    if isinstance(frame, RequestPending):
        return {"t": _T_PENDING}
    if isinstance(frame, Ping):
        return {"t": _T_PING}
    raise LocalProtocolError(f"not a chat frame: {frame!r}")


class _Reader:
    """Typed field access that raises the error class of whoever is checking."""

    __slots__ = ("_err", "_m")

    def __init__(self, m: dict[Any, Any], err: type[ProtocolError]) -> None:
        self._m = m
        self._err = err

    def fail(self, message: str) -> ProtocolError:
        return self._err(message)

    def get_int(self, key: str, lo: int, hi: int) -> int:
        value = self._m.get(key)
        # bool is a subclass of int, and True must not pass for seq 1.
        if type(value) is not int:
            raise self.fail(f"field {key!r} must be an integer")
        if not lo <= value <= hi:
            raise self.fail(f"field {key!r} out of range: {value}")
        return value

    def get_bool(self, key: str) -> bool:
        value = self._m.get(key)
        if type(value) is not bool:
            raise self.fail(f"field {key!r} must be a boolean")
        return value

    def get_float(self, key: str) -> float:
        value = self._m.get(key)
        # Integral timestamps are accepted: some msgpack encoders pack 1.7e9 as an int.
        if type(value) is int:
            if abs(value) > MAX_SEQ:
                raise self.fail(f"field {key!r} out of range")
            return float(value)
        if type(value) is not float or not math.isfinite(value):
            raise self.fail(f"field {key!r} must be a finite number")
        return value

    def get_str(self, key: str, max_bytes: int) -> str:
        value = self._m.get(key)
        if type(value) is not str:
            raise self.fail(f"field {key!r} must be a string")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise self.fail(f"field {key!r} is not valid unicode") from None
        if size > max_bytes:
            raise self.fail(f"field {key!r} exceeds {max_bytes} bytes")
        if "\x00" in value:
            raise self.fail(f"field {key!r} contains NUL")
        return value

    def get_label(self, key: str, max_chars: int) -> str | None:
        """An optional short single-line string shown in lists and prompts.

        Control characters are refused outright so a peer cannot smuggle
        terminal escape sequences or line breaks into a contact name.
        """
        if self._m.get(key) is None:
            return None
        value = self.get_str(key, max_chars * 4)
        if len(value) > max_chars:
            raise self.fail(f"field {key!r} exceeds {max_chars} characters")
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise self.fail(f"field {key!r} contains control characters")
        return value


def _from_map(m: dict[Any, Any], err: type[ProtocolError]) -> ChatFrame:
    kind = m.get("t")
    if type(kind) is not str:
        raise err("chat frame has no type tag")
    r = _Reader(m, err)
    if kind == _T_MSG:
        message_id = r.get_str("i", 32)
        if _ID_RE.fullmatch(message_id) is None:
            raise err("message id must be 32 lowercase hex characters")
        seq = r.get_int("s", 1, MAX_SEQ)
        base = r.get_int("b", 1, MAX_SEQ)
        if base > seq:
            raise err(f"message base {base} exceeds seq {seq}")
        return ChatMessage(
            id=message_id,
            seq=seq,
            base=base,
            sent_at=r.get_float("at"),
            body=r.get_str("m", MAX_BODY_BYTES),
        )
    if kind == _T_ACK:
        return Ack(seq=r.get_int("s", 0, MAX_SEQ))
    if kind == _T_READ:
        return Read(seq=r.get_int("s", 0, MAX_SEQ))
    if kind == _T_TYPING:
        return Typing(active=r.get_bool("a"))
    if kind == _T_GAP:
        return Gap(want=r.get_int("w", 1, MAX_SEQ))
    if kind == _T_PING:
        return Ping()
    if kind == _T_PENDING:
        return RequestPending()
    if kind == _T_HELLO:
        return Hello(
            name=r.get_label("n", MAX_NAME_CHARS),
            token=r.get_label("k", MAX_TOKEN_CHARS),
            version=r.get_int("v", 1, MAX_VERSION),
        )
    if err is LocalProtocolError:
        raise err(f"unknown chat frame type {kind!r}")
    raise UnknownFrame(kind)


def encode(frame: ChatFrame) -> bytes:
    m = _to_map(frame)
    _from_map(m, LocalProtocolError)
    packed: bytes = msgpack.packb(m, use_bin_type=True)
    return packed


def decode(payload: bytes) -> ChatFrame:
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_BODY_BYTES,
            max_bin_len=MAX_BODY_BYTES,
            max_array_len=_MAX_ARRAY_LEN,
            max_map_len=_MAX_MAP_LEN,
            max_ext_len=_MAX_EXT_LEN,
        )
    except Exception as exc:  # msgpack documents that "other exceptions can be raised"
        raise RemoteProtocolError(f"chat frame is not valid msgpack: {exc}") from exc
    if not isinstance(obj, dict):
        raise RemoteProtocolError("chat frame is not a map")
    return _from_map(obj, RemoteProtocolError)

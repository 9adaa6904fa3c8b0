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
from dataclasses import dataclass, field
from typing import Any

import msgpack

import p2pchat.core.group.codec as group_codec
import p2pchat.core.group.frames as group_frames
from p2pchat import names
from p2pchat.core.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from p2pchat.core.frozen import quick_init

__all__ = [
    "FILE_DROP_VERSION",
    "MAX_BODY_BYTES",
    "MAX_NAME_CHARS",
    "MAX_SEQ",
    "MAX_TOKEN_CHARS",
    "PROTOCOL_VERSION",
    "Ack",
    "AckNow",
    "ChatFrame",
    "ChatMessage",
    "Defer",
    "FileAccept",
    "FileCancel",
    "FileDecline",
    "FileEntry",
    "FileOffer",
    "FileProgress",
    "FileResult",
    "Gap",
    "Hello",
    "Ping",
    "Read",
    "RequestPending",
    "Typing",
    "UnknownFrame",
    "bundle",
    "decode",
    "decode_frames",
    "encode",
]

PROTOCOL_VERSION = 2
"""What our Hello announces.  2: we accept bundles (``bundle``); 1 (older peers): one
frame per sealed payload."""
BUNDLE_VERSION = 2
"""A peer whose Hello announces at least this version may be sent bundles."""
MAX_BUNDLE_FRAMES = 1024
FILE_DROP_VERSION = 2
"""The file drop this node speaks, announced in Hello's ``"f"``: 2 lets an offer leave
without content hashes (they travel at the end of the data channel); a peer that
announces nothing speaks 1 and gets offers with the hashes (docs/protocol.md, 12)."""
MAX_BODY_BYTES = 16 * 1024
MAX_NAME_CHARS = names.MAX_NAME_CHARS
# A peer's announced name is repaired, not refused; this much of it is looked at.
_MAX_WIRE_NAME_CHARS = 4 * MAX_NAME_CHARS
MAX_TOKEN_CHARS = 64
#: ``[IPv6]:port`` is at most 47 characters.
MAX_SEEN_CHARS = 64
MAX_SEQ = 2**53 - 1
"""Sequence numbers stay exactly representable as IEEE doubles, for peers in JS."""
MAX_VERSION = 2**16 - 1
MAX_TIMESTAMP = 1e11

_MAX_MAP_LEN = 32
# A file offer lists its files; everything stays inside one 64 KiB session frame.
MAX_OFFER_FILES = 2048
_MAX_ARRAY_LEN = MAX_OFFER_FILES
MAX_PATH_BYTES = 4096
MAX_FILE_SIZE = 2**53 - 1
MAX_REASON_CHARS = 200
MAX_WHY_CHARS = 16
MAX_RETRY_AFTER = 7 * 86400.0
"""A ``defer`` asks for at most a week's pause; the sender clamps it further."""
HASH_SIZE = 32
ATTEMPT_SIZE = 16
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
    ``seen`` is the address the sender sees the receiver's packets come from
    (``host:port``): the receiver's reflexive address, which a contact's word is
    enough for (``p2pchat.dht.reflexive``). Older peers do not send it.

    A name that breaks the name rule (``p2pchat.names``) never costs the peer
    its session: ``decode`` repairs it (or drops it) and says why in
    ``name_problem``, which is local information and never sent.
    """

    name: str | None = None
    token: str | None = None
    version: int = PROTOCOL_VERSION
    seen: str | None = None
    name_problem: str | None = field(default=None, compare=False)
    groups: tuple[bytes, ...] = ()
    """Groups the sender believes both sides are in (docs/groups.md): sent only on a
    dial to a fellow member who is not a contact, so the session is a group session."""
    files: int = 1
    """The file-drop version the sender speaks (``FILE_DROP_VERSION``); 1 when absent."""


@quick_init  # one per message on each side: core/frozen.py
@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One sequenced message.  ``kind`` ``"text"`` is what a person wrote (``reply_to``
    names the message it answers, in either direction); ``"edit"`` replaces the body
    of our earlier message ``target`` and ``"delete"`` (empty body) deletes it.  Edits
    and deletions are sequenced like text, so the outbox, acks and the receive window
    deliver them exactly once and after the message they change."""

    id: str
    seq: int
    base: int
    sent_at: float
    body: str
    reply_to: str | None = None
    kind: str = "text"
    target: str | None = None


@quick_init  # one per message on each side: core/frozen.py
@dataclass(frozen=True, slots=True)
class Ack:
    """Cumulative: every message up to ``seq`` is stored durably."""

    seq: int


@dataclass(frozen=True, slots=True)
class AckNow:
    """Someone here waits for ``delivered`` (``p2pchat msg``): acknowledge the messages
    of this payload without the delayed-ack wait (docs/protocol.md, "Delayed acks")."""


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
class Defer:
    """I cannot store your message ``seq`` now: keep it (and what follows) queued and
    send it again in ``retry_after`` seconds.  ``why`` is a short code (``"storage"``:
    my database failed; ``"quota"``: you used up your daily message allowance), and
    ``reason`` says it in words the sender's user can read."""

    seq: int
    retry_after: float
    why: str
    reason: str


@dataclass(frozen=True, slots=True)
class RequestPending:
    """You are not a contact yet; your messages wait until the user decides."""


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One offered file: a relative '/'-separated path, its size and BLAKE3-256.

    ``hash`` is None in a file-drop 2 offer: the sender hashes while it sends, and
    the hashes travel in the data channel's final record (``core/filedrop.py``).
    An offer lists every hash or none."""

    path: str
    size: int
    hash: bytes | None


@dataclass(frozen=True, slots=True)
class FileOffer:
    id: str
    files: tuple[FileEntry, ...]

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True, slots=True)
class FileAccept:
    """Send these files from these offsets (what I already hold, verified).

    ``attempt`` names this data connection: the data channel's key is derived
    from the session and it, so each attempt gets fresh keys.  ``tcp_port`` is a
    direct TCP port to send to (0: use a QUIC stream of this session).
    """

    id: str
    offsets: tuple[tuple[int, int], ...]
    attempt: bytes
    tcp_port: int = 0


@dataclass(frozen=True, slots=True)
class FileDecline:
    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class FileCancel:
    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class FileProgress:
    """Receiver -> sender: bytes of ``attempt`` stored so far (flow control + progress)."""

    id: str
    attempt: bytes
    received: int


@dataclass(frozen=True, slots=True)
class FileResult:
    """Receiver -> sender: every file verified and published (ok), or why not."""

    id: str
    ok: bool
    error: str | None = None


FileFrame = FileOffer | FileAccept | FileDecline | FileCancel | FileProgress | FileResult

ChatFrame = (
    Hello
    | ChatMessage
    | Ack
    | AckNow
    | Read
    | Typing
    | Gap
    | Defer
    | RequestPending
    | Ping
    | FileFrame
    | group_frames.GroupFrame
)
GROUP_FRAME_TYPES = (
    group_frames.GroupSummary,
    group_frames.GroupOps,
    group_frames.GroupMessages,
    group_frames.GroupEnd,
    group_frames.GroupHave,
    group_frames.GroupInvite,
    group_frames.GroupPeers,
)
MAX_HELLO_GROUPS = 16

_T_HELLO = "hello"
_T_MSG = "msg"
_K_EDIT = "edit"
_K_DELETE = "delete"
_T_ACK = "ack"
_T_ACK_NOW = "acknow"
_T_READ = "read"
_T_TYPING = "typing"
_T_GAP = "gap"
_T_DEFER = "defer"
_T_PENDING = "pending"
_T_PING = "ping"
_T_FOFFER = "foffer"
_T_FACCEPT = "faccept"
_T_FDECLINE = "fdecline"
_T_FCANCEL = "fcancel"
_T_FPROGRESS = "fprogress"
_T_FRESULT = "fresult"


def _to_map(frame: ChatFrame) -> dict[str, Any]:
    if isinstance(frame, Hello):
        m: dict[str, Any] = {"t": _T_HELLO, "v": frame.version}
        if frame.name is not None:
            m["n"] = frame.name
        if frame.token is not None:
            m["k"] = frame.token
        if frame.groups:
            m["g"] = list(frame.groups)
        if frame.seen is not None:
            m["o"] = frame.seen
        if frame.files != 1:
            m["f"] = frame.files
        return m
    if isinstance(frame, ChatMessage):
        m = {
            "t": _T_MSG,
            "i": frame.id,
            "s": frame.seq,
            "b": frame.base,
            "at": frame.sent_at,
            "m": frame.body,
        }
        if frame.reply_to is not None:
            m["r"] = frame.reply_to
        if frame.kind != "text":
            m["k"] = frame.kind
            m["x"] = frame.target
        return m
    if isinstance(frame, Ack):
        return {"t": _T_ACK, "s": frame.seq}
    if isinstance(frame, AckNow):
        return {"t": _T_ACK_NOW}
    if isinstance(frame, Read):
        return {"t": _T_READ, "s": frame.seq}
    if isinstance(frame, Typing):
        return {"t": _T_TYPING, "a": frame.active}
    if isinstance(frame, Gap):
        return {"t": _T_GAP, "w": frame.want}
    if isinstance(frame, Defer):
        return {
            "t": _T_DEFER,
            "s": frame.seq,
            "a": frame.retry_after,
            "w": frame.why,
            "r": frame.reason,
        }
    if isinstance(frame, RequestPending):
        return {"t": _T_PENDING}
    if isinstance(frame, Ping):
        return {"t": _T_PING}
    if isinstance(frame, FileOffer):
        return {
            "t": _T_FOFFER,
            "i": frame.id,
            "f": [
                [f.path, f.size] if f.hash is None else [f.path, f.size, f.hash]
                for f in frame.files
            ],
        }
    if isinstance(frame, FileAccept):
        return {
            "t": _T_FACCEPT,
            "i": frame.id,
            "o": [list(pair) for pair in frame.offsets],
            "a": frame.attempt,
            "p": frame.tcp_port,
        }
    if isinstance(frame, FileDecline):
        return {"t": _T_FDECLINE, "i": frame.id, "r": frame.reason}
    if isinstance(frame, FileCancel):
        return {"t": _T_FCANCEL, "i": frame.id, "r": frame.reason}
    if isinstance(frame, FileProgress):
        return {"t": _T_FPROGRESS, "i": frame.id, "a": frame.attempt, "n": frame.received}
    if isinstance(frame, FileResult):
        m = {"t": _T_FRESULT, "i": frame.id, "ok": frame.ok}
        if frame.error is not None:
            m["e"] = frame.error
        return m
    if isinstance(frame, GROUP_FRAME_TYPES):
        return group_frames.to_map(frame)
    raise LocalProtocolError(f"not a chat frame: {frame!r}")


def _int_error(value: Any, key: str, err: type[ProtocolError]) -> ProtocolError:
    """What is wrong with an integer field that failed its check."""
    # bool is a subclass of int, and True must not pass for seq 1.
    if type(value) is not int:
        return err(f"field {key!r} must be an integer")
    return err(f"field {key!r} out of range: {value}")


def _int(value: Any, key: str, lo: int, hi: int, err: type[ProtocolError]) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise _int_error(value, key, err)
    return value


def _float(value: Any, key: str, err: type[ProtocolError]) -> float:
    # Integral timestamps are accepted: some msgpack encoders pack 1.7e9 as an int.
    if type(value) is int:
        if abs(value) > MAX_SEQ:
            raise err(f"field {key!r} out of range")
        return float(value)
    if type(value) is not float or not math.isfinite(value):
        raise err(f"field {key!r} must be a finite number")
    number: float = value
    return number


def _time(value: Any, key: str, err: type[ProtocolError]) -> float:
    """A Unix timestamp a person could see: 1970 to the year 5138, so that
    formatting it as a date can never fail."""
    at = _float(value, key, err)
    if not 0.0 <= at <= MAX_TIMESTAMP:
        raise err(f"field {key!r} is not a plausible timestamp")
    return at


def _text(value: Any, key: str, max_bytes: int, err: type[ProtocolError]) -> str:
    if type(value) is not str:
        raise err(f"field {key!r} must be a string")
    if value.isascii():  # a flag of the string, no scan: one byte a character, no surrogate
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise err(f"field {key!r} is not valid unicode") from None
    if size > max_bytes:
        raise err(f"field {key!r} exceeds {max_bytes} bytes")
    if "\x00" in value:
        raise err(f"field {key!r} contains NUL")
    return value


def _id(value: Any, key: str, err: type[ProtocolError], what: str = "") -> str:
    # 32 lowercase hex characters: the match alone implies the size, the encoding and
    # no NUL, so only a value that fails it goes through ``_text`` (for its message).
    if type(value) is not str or _ID_RE.fullmatch(value) is None:
        _text(value, key, 32, err)
        raise err(f"{what or f'field {key!r}'} must be 32 lowercase hex characters")
    return value


def _check_message(m: dict[Any, Any], err: type[ProtocolError]) -> float:
    """Every rule of a ``msg`` frame's map; returns its timestamp as a float.

    The one place these rules live: ``decode`` runs it on what a peer sent, and
    ``encode`` on the map it is about to pack, so we never send a message a peer
    would refuse, without building the frame again from the map to prove it."""
    get = m.get
    _id(get("i"), "i", err, "message id")
    # The checks of ``_int`` and ``_time`` written out (their helpers only name what
    # is wrong): this runs twice for every message, once on each side.
    seq, base = get("s"), get("b")
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        raise _int_error(seq, "s", err)
    if type(base) is not int or not 1 <= base <= MAX_SEQ:
        raise _int_error(base, "b", err)
    if base > seq:
        raise err(f"message base {base} exceeds seq {seq}")
    body = _text(get("m"), "m", MAX_BODY_BYTES, err)
    reply_to = get("r")
    if reply_to is not None:
        _id(reply_to, "r", err)
    change = get("k")
    if change is None:
        if get("x") is not None:
            raise err("a message names a target only to edit or delete it")
    else:
        if change not in (_K_EDIT, _K_DELETE):
            raise err(f"unknown message kind {change!r}")
        if reply_to is not None:
            raise err("an edit or deletion is not a reply")
        if change == _K_EDIT and not body.strip():
            raise err("an edit needs text (delete the message instead)")
        if change == _K_DELETE and body:
            raise err("a deletion carries no text")
    at = get("at")
    if type(at) is not float or not 0.0 <= at <= MAX_TIMESTAMP:  # (NaN and inf fail too)
        at = _time(at, "at", err)  # an integral timestamp, or the error naming the problem
    if change is not None:
        _id(get("x"), "x", err)
    return at


class _Reader:
    """Typed field access that raises the error class of whoever is checking."""

    __slots__ = ("_err", "_m")

    def __init__(self, m: dict[Any, Any], err: type[ProtocolError]) -> None:
        self._m = m
        self._err = err

    def fail(self, message: str) -> ProtocolError:
        return self._err(message)

    def get_int(self, key: str, lo: int, hi: int) -> int:
        return _int(self._m.get(key), key, lo, hi, self._err)

    def get_bool(self, key: str) -> bool:
        value = self._m.get(key)
        if type(value) is not bool:
            raise self.fail(f"field {key!r} must be a boolean")
        return value

    def get_float(self, key: str) -> float:
        return _float(self._m.get(key), key, self._err)

    def get_time(self, key: str) -> float:
        return _time(self._m.get(key), key, self._err)

    def get_str(self, key: str, max_bytes: int) -> str:
        return _text(self._m.get(key), key, max_bytes, self._err)

    def get_id(self, key: str) -> str:
        return _id(self._m.get(key), key, self._err)

    def get_bytes(self, key: str, size: int) -> bytes:
        value = self._m.get(key)
        if type(value) is not bytes or len(value) != size:
            raise self.fail(f"field {key!r} must be {size} bytes")
        return value

    def get_list(self, key: str, max_len: int) -> list[Any]:
        value = self._m.get(key)
        if type(value) is not list or len(value) > max_len:
            raise self.fail(f"field {key!r} must be a list of at most {max_len} items")
        return value

    def get_reason(self, key: str) -> str:
        value = self.get_label(key, MAX_REASON_CHARS)
        return value or ""

    def get_name(self, key: str) -> tuple[str | None, str | None]:
        """A display name and, for a peer's, what was wrong with it.

        We send only names that are already valid and normalised.  A peer's bad
        name is repaired instead of failing the frame: refusing a Hello would
        close the session every few seconds over a cosmetic field.
        """
        value = self._m.get(key)
        if value is None:
            return None, None
        if self._err is LocalProtocolError:
            problem = names.name_problem(value)
            if problem is None and names.normalise_name(value) != value:
                problem = "name is not in normal form"
            if problem is not None:
                raise self.fail(f"field {key!r}: {problem}")
            return value, None
        if not isinstance(value, str):
            return None, "the announced name is not text"
        problem = names.name_problem(value[:_MAX_WIRE_NAME_CHARS])
        if len(value) > _MAX_WIRE_NAME_CHARS:
            problem = f"a name must be at most {MAX_NAME_CHARS} characters"
        return names.repair_name(value[:_MAX_WIRE_NAME_CHARS]), problem

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
    if kind == _T_MSG:
        at = _check_message(m, err)
        change = m.get("k")
        if change is None:
            return ChatMessage(m["i"], m["s"], m["b"], at, m["m"], m.get("r"))
        return ChatMessage(m["i"], m["s"], m["b"], at, m["m"], None, change, m["x"])
    r = _Reader(m, err)
    if kind == _T_ACK:
        return Ack(seq=r.get_int("s", 0, MAX_SEQ))
    if kind == _T_ACK_NOW:
        return AckNow()
    if kind == _T_READ:
        return Read(seq=r.get_int("s", 0, MAX_SEQ))
    if kind == _T_TYPING:
        return Typing(active=r.get_bool("a"))
    if kind == _T_GAP:
        return Gap(want=r.get_int("w", 1, MAX_SEQ))
    if kind == _T_DEFER:
        retry_after = r.get_float("a")
        if not 0.0 <= retry_after <= MAX_RETRY_AFTER:
            raise err(f"field 'a' out of range: {retry_after}")
        return Defer(
            seq=r.get_int("s", 1, MAX_SEQ),
            retry_after=retry_after,
            why=r.get_label("w", MAX_WHY_CHARS) or "",
            reason=r.get_reason("r"),
        )
    if kind == _T_PING:
        return Ping()
    if kind == _T_PENDING:
        return RequestPending()
    if kind == _T_HELLO:
        name, problem = r.get_name("n")
        return Hello(
            name=name,
            token=r.get_label("k", MAX_TOKEN_CHARS),
            version=r.get_int("v", 1, MAX_VERSION),
            name_problem=problem,
            groups=group_codec.as_keys(m.get("g", []), err, "field 'g'", max_len=MAX_HELLO_GROUPS),
            seen=r.get_label("o", MAX_SEEN_CHARS),
            files=r.get_int("f", 1, MAX_VERSION) if m.get("f") is not None else 1,
        )
    if kind.startswith("f"):
        frame = _file_frame(kind, r, err)
        if frame is not None:
            return frame
    if kind.startswith("g"):
        group = group_frames.from_map(m, err)
        if group is not None:
            return group
    if err is LocalProtocolError:
        raise err(f"unknown chat frame type {kind!r}")
    raise UnknownFrame(kind)


def _file_frame(kind: str, r: _Reader, err: type[ProtocolError]) -> ChatFrame | None:
    """File-drop frames: types and ranges here; path safety is the receiver's job
    (``core/filedrop.py``), which answers an unsafe offer with a decline."""
    if kind == _T_FOFFER:
        entries = []
        items = r.get_list("f", MAX_OFFER_FILES)
        form = len(items[0]) if items and type(items[0]) is list else 3
        for item in items:
            # [path, size, hash] (file drop 1), or [path, size] for every file (2).
            if type(item) is not list or len(item) != form or form not in (2, 3):
                raise err("file entry must be [path, size, hash] or, in every entry, [path, size]")
            path, size = item[0], item[1]
            digest = item[2] if form == 3 else None
            if (
                type(path) is not str
                or not path
                or len(path.encode("utf-8", "replace")) > MAX_PATH_BYTES
            ):
                raise err("file path must be a non-empty string of at most 4096 bytes")
            if type(size) is not int or not 0 <= size <= MAX_FILE_SIZE:
                raise err("file size out of range")
            if digest is not None and (type(digest) is not bytes or len(digest) != HASH_SIZE):
                raise err("file hash must be 32 bytes")
            entries.append(FileEntry(path, size, digest))
        if not entries:
            raise err("a file offer needs at least one file")
        return FileOffer(id=r.get_id("i"), files=tuple(entries))
    if kind == _T_FACCEPT:
        offsets = []
        for pair in r.get_list("o", MAX_OFFER_FILES):
            if (
                type(pair) is not list
                or len(pair) != 2
                or type(pair[0]) is not int
                or type(pair[1]) is not int
                or not 0 <= pair[0] < MAX_OFFER_FILES
                or not 0 <= pair[1] <= MAX_FILE_SIZE
            ):
                raise err("accepted file must be [index, offset]")
            offsets.append((pair[0], pair[1]))
        return FileAccept(
            id=r.get_id("i"),
            offsets=tuple(offsets),
            attempt=r.get_bytes("a", ATTEMPT_SIZE),
            tcp_port=r.get_int("p", 0, 65535),
        )
    if kind == _T_FDECLINE:
        return FileDecline(id=r.get_id("i"), reason=r.get_reason("r"))
    if kind == _T_FCANCEL:
        return FileCancel(id=r.get_id("i"), reason=r.get_reason("r"))
    if kind == _T_FPROGRESS:
        return FileProgress(
            id=r.get_id("i"),
            attempt=r.get_bytes("a", ATTEMPT_SIZE),
            received=r.get_int("n", 0, MAX_FILE_SIZE),
        )
    if kind == _T_FRESULT:
        return FileResult(id=r.get_id("i"), ok=r.get_bool("ok"), error=r.get_label("e", 200))
    return None


_T_BUNDLE = "bundle"
# msgpack of {"t": "bundle", "f": <array>} up to the array's header (fixmap of 2 entries).
_BUNDLE_HEAD: bytes = b"\x82" + bytes(
    msgpack.packb("t") + msgpack.packb(_T_BUNDLE) + msgpack.packb("f")
)


def bundle(payloads: list[bytes]) -> bytes:
    """Several encoded frames (``encode``'s output, each one msgpack map) as one payload:
    ``{"t": "bundle", "f": [frame, frame, ...]}``, so they are sealed and opened once.

    The maps are spliced in as they are, after an array header: nothing is packed
    twice.  Only for a peer whose Hello announced ``BUNDLE_VERSION``."""
    count = len(payloads)
    if not 1 <= count <= MAX_BUNDLE_FRAMES:
        raise LocalProtocolError(f"a bundle carries 1 to {MAX_BUNDLE_FRAMES} frames, not {count}")
    header = bytes([0x90 | count]) if count < 16 else b"\xdc" + count.to_bytes(2, "big")
    return _BUNDLE_HEAD + header + b"".join(payloads)


def encode(frame: ChatFrame) -> bytes:
    """The frame's msgpack map, after the checks ``decode`` would run on it
    (``LocalProtocolError``: we never send what the peer would have to refuse)."""
    m = _to_map(frame)
    if m["t"] == _T_MSG:
        # The frame of every message: the decoder's own rules on this very map,
        # without reading a second ChatMessage back out of it.
        _check_message(m, LocalProtocolError)
    else:
        _from_map(m, LocalProtocolError)
    packed: bytes = msgpack.packb(m, use_bin_type=True)
    return packed


def _unpack(payload: bytes) -> dict[Any, Any]:
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
    return obj


def decode(payload: bytes) -> ChatFrame:
    """One frame (a bundle is not one: see ``decode_frames``)."""
    obj = _unpack(payload)
    if obj.get("t") == _T_BUNDLE:
        raise RemoteProtocolError("a bundle where one frame was expected")
    return _from_map(obj, RemoteProtocolError)


def decode_frames(payload: bytes) -> list[ChatFrame | RemoteProtocolError]:
    """Every frame a sealed payload carries, in order: one, or the frames of a bundle.

    What cannot be read is returned in its place as the error it raised (an
    ``UnknownFrame`` for a type this version does not know), so the caller treats a
    bad frame inside a bundle as it treats a bad frame on its own and still takes
    the others.  A payload that is no frame, or a bundle of the wrong shape, is one
    error.  A bundle inside a bundle is refused: there is no use for one."""
    try:
        obj = _unpack(payload)
        if obj.get("t") != _T_BUNDLE:
            return [_from_map(obj, RemoteProtocolError)]
        frames = obj.get("f")
        if type(frames) is not list or not 1 <= len(frames) <= MAX_BUNDLE_FRAMES:
            raise RemoteProtocolError(
                f"a bundle must carry a list of 1 to {MAX_BUNDLE_FRAMES} frames"
            )
    except RemoteProtocolError as exc:
        return [exc]
    out: list[ChatFrame | RemoteProtocolError] = []
    for item in frames:
        try:
            if type(item) is not dict:
                raise RemoteProtocolError("a bundled frame is not a map")
            if item.get("t") == _T_BUNDLE:
                raise RemoteProtocolError("a bundle inside a bundle")
            out.append(_from_map(item, RemoteProtocolError))
        except RemoteProtocolError as exc:
            out.append(exc)
    return out

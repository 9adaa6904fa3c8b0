"""The rows the store hands out, as frozen dataclasses, and how a row becomes one.

Every part of the store returns these types, so they live below all of them;
the column lists sit next to the converters that read them in that order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from p2pchat.core.events import MessageState
from p2pchat.core.frozen import quick_init
from p2pchat.core.window import Verdict

Direction = Literal["in", "out"]
MessageKind = Literal["text", "edit", "delete"]
RequestState = Literal["pending", "declined"]

MAX_ADDRESSES = 8
MAX_PENDING_REQUESTS = 256
MAX_PREVIEW_CHARS = 200
MAX_ADDRESS_CHARS = 256
MIN_ID_PREFIX = 4
DEFAULT_INVITE_TTL = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class Contact:
    peer_id: str
    name: str
    verified: bool
    added_at: float
    addresses: tuple[str, ...]
    last_seen: float | None
    last_address: str | None
    muted: bool = False
    """No notifications for this contact (views read it; the node stores it)."""


# ``quick_init``: built several times per message (queued, sent, received), see core/frozen.py.
@quick_init
@dataclass(frozen=True, slots=True)
class Message:
    id: str
    peer_id: str
    direction: Direction
    seq: int
    body: str
    created_at: float
    received_at: float | None
    state: MessageState
    updated_at: float
    reply_to: str | None = None
    """The id of the message this one answers (either direction; may be unknown here)."""
    edited_at: float | None = None
    deleted_at: float | None = None
    """Set on a deleted message, whose body is then empty: a tombstone, no history."""
    kind: MessageKind = "text"
    """``text`` for what people wrote; ``edit`` and ``delete`` rows only carry an
    edit or deletion of ``target`` through the outbox and never show in ``history``."""
    target: str | None = None

    def with_state(self, state: MessageState) -> Message:
        """This message in another state (``dataclasses.replace`` costs about three
        times as much, on the send path of every message)."""
        return Message(
            self.id, self.peer_id, self.direction, self.seq, self.body, self.created_at,
            self.received_at, state, self.updated_at, self.reply_to, self.edited_at,
            self.deleted_at, self.kind, self.target,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class BlockedPeer:
    peer_id: str
    name: str | None
    blocked_at: float


@dataclass(frozen=True, slots=True)
class ContactRequest:
    peer_id: str
    name: str | None
    address: str | None
    preview: str | None
    first_seen: float
    last_seen: float
    attempts: int
    state: RequestState


@dataclass(frozen=True, slots=True)
class TransferFile:
    index: int
    path: str
    size: int
    hash: bytes
    source: str | None
    part: str | None
    final: str | None
    accepted: bool
    done: bool
    mtime: int | None = None
    """Outgoing: the source's modification time (ns) when it was offered."""


@dataclass(frozen=True, slots=True)
class Transfer:
    id: str
    peer_id: str
    direction: str
    state: str
    created_at: float
    updated_at: float
    error: str | None
    bytes_moved: int
    attempts: int
    folder: str | None
    files: tuple[TransferFile, ...]

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files if f.accepted)


class IncomingMessage(Protocol):
    """What ``receive_messages`` needs of a received message (``chat.ChatMessage``)."""

    @property
    def id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def base(self) -> int: ...
    @property
    def body(self) -> str: ...
    @property
    def sent_at(self) -> float: ...
    @property
    def reply_to(self) -> str | None: ...
    @property
    def kind(self) -> str: ...
    @property
    def target(self) -> str | None: ...


_INCOMING_KINDS: dict[str, MessageKind] = {"edit": "edit", "delete": "delete"}
"""A received ``kind`` as stored: anything else is text."""


@quick_init  # one per received message
@dataclass(frozen=True, slots=True)
class ReceiveResult:
    """What happened to an incoming message; ``recv_seq`` is what the node acks.

    For an accepted ``edit`` or ``delete``, ``changed`` is the message it changed,
    or None when it was refused (unknown message, not the sender's own, already
    deleted); either way its sequence number is used up and acknowledged.

    ``"quota"``: the window would accept it, but the contact's message bytes for the
    day are used up; nothing was stored and ``retry_at`` (wall clock) is when the
    next day's allowance starts.
    """

    verdict: Verdict | Literal["quota"]
    message: Message | None
    recv_seq: int
    retry_at: float | None = None
    changed: Message | None = None


_CONTACT_COLUMNS = "peer_id, name, verified, added_at, addresses, last_seen, last_address, muted"
_MESSAGE_COLUMNS = (
    "id, peer_id, direction, seq, body, created_at, received_at, state, updated_at,"
    " reply_to, edited_at, deleted_at, kind, target"
)
# The same columns for a query that joins ``messages`` as ``m`` (outbox, search).
_JOINED_MESSAGE_COLUMNS = ", ".join(f"m.{c.strip()}" for c in _MESSAGE_COLUMNS.split(","))
_REQUEST_COLUMNS = "peer_id, name, address, preview, first_seen, last_seen, attempts, state"


_MAX_POS = 2**63 - 1


def _clip(text: str | None, limit: int) -> str | None:
    """Bound stranger-controlled text before it reaches the disk or the UI."""
    if text is None:
        return None
    text = text.strip()[:limit]
    return text or None


def _load_addresses(raw: str | None) -> list[str]:
    """Tolerate a damaged column: losing dial hints beats refusing to start."""
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, str)]


def _contact(row: Sequence[Any]) -> Contact:
    return Contact(
        peer_id=row[0],
        name=row[1],
        verified=bool(row[2]),
        added_at=row[3],
        addresses=tuple(_load_addresses(row[4])),
        last_seen=row[5],
        last_address=row[6],
        muted=bool(row[7]),
    )


def _message(row: Sequence[Any]) -> Message:
    # The columns are the fields, in order (tests/test_frozen.py checks it): one
    # positional call, as a history page or an outbox resend builds one per row.
    return Message(*row)


def _request(row: Sequence[Any]) -> ContactRequest:
    return ContactRequest(
        peer_id=row[0],
        name=row[1],
        address=row[2],
        preview=row[3],
        first_seen=row[4],
        last_seen=row[5],
        attempts=row[6],
        state=cast(RequestState, row[7]),
    )

"""The node's local state: contacts, conversations, outbox, requests and invites.

Everything lives in one SQLite file so that a single committed transaction is
the unit of truth.  The node may be SIGKILLed right after any call returns, so
every method that writes runs as exactly one ``BEGIN IMMEDIATE`` transaction
(``isolation_level=None``: the sqlite3 module never opens or commits anything
behind our back).  When a method returns, its effect is in the WAL and survives
the process dying; with ``synchronous=NORMAL`` a power cut may lose the last few
commits but never corrupts the file, which is the usual trade-off for a chat
client.

``BEGIN IMMEDIATE`` also matters for concurrency: a deferred transaction that
reads and then writes can fail with ``SQLITE_BUSY`` when another connection
committed in between, and ``busy_timeout`` cannot retry that.  Taking the write
lock up front lets a second process (``p2pchat send`` next to a running node)
share the file safely; WAL lets its readers proceed meanwhile.

Sequence numbers live in ``conversations`` rather than in ``contacts``: removing
a contact and adding it again, or talking to a peer that is not (yet) a
contact, must never restart numbering at 1, because the peer's receive window
would then treat new messages as duplicates and the ``(peer_id, direction,
seq)`` uniqueness would reject them.  Removing a contact therefore keeps its
history, its counters and its queued messages.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar, cast

import sqlcipher3

from p2pchat.core.events import MessageState
from p2pchat.core.window import Verdict, classify_incoming
from p2pchat.names import MAX_NAME_CHARS, normalise_name, repair_name

__all__ = [
    "MAX_ADDRESSES",
    "MAX_PENDING_REQUESTS",
    "MIGRATIONS",
    "AmbiguousContact",
    "BlockedPeer",
    "Contact",
    "ContactExists",
    "ContactRequest",
    "Direction",
    "Message",
    "ReceiveResult",
    "RequestState",
    "Store",
    "StoreError",
    "UnknownContact",
    "resolve_ref",
]

Direction = Literal["in", "out"]
MessageKind = Literal["text", "edit", "delete"]
RequestState = Literal["pending", "declined"]

MAX_ADDRESSES = 8
MAX_PENDING_REQUESTS = 256
MAX_PREVIEW_CHARS = 200
MAX_ADDRESS_CHARS = 256
MIN_ID_PREFIX = 4
DEFAULT_INVITE_TTL = 7 * 86400.0


class StoreError(Exception):
    """The local database cannot do what was asked."""


class DatabaseBusy(StoreError):
    """Another process holds the database in a way that excludes this request."""


class DatabaseKeyError(StoreError):
    """The database cannot be read with the key given (or without one)."""


class UnknownContact(StoreError):
    """No contact (or contact request) matches the given reference."""


class AmbiguousContact(StoreError):
    """Several contacts match a reference; the caller should ask for more characters."""

    def __init__(self, message: str, candidates: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.candidates: tuple[str, ...] = tuple(candidates)


class ContactExists(StoreError):
    """Another contact already uses the name the user chose.

    Names are unique (case-insensitively) so that ``find_contact`` by name is
    never ambiguous and the contact list never shows two indistinguishable rows.
    Only names typed by the user are refused; names that arrive from peers
    (invites, hellos, requests) are suffixed instead, because a stranger's
    choice of name must not make adding them fail.
    """


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


# Each step is applied once, in order, inside the same transaction that bumps
# ``PRAGMA user_version``; append new steps, never edit a released one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE contacts (
        peer_id      TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        verified     INTEGER NOT NULL DEFAULT 0,
        added_at     REAL NOT NULL,
        addresses    TEXT NOT NULL DEFAULT '[]',
        last_seen    REAL,
        last_address TEXT
    );

    CREATE TABLE conversations (
        peer_id       TEXT PRIMARY KEY,
        send_seq      INTEGER NOT NULL DEFAULT 0,
        recv_seq      INTEGER NOT NULL DEFAULT 0,
        peer_read_seq INTEGER NOT NULL DEFAULT 0,
        my_read_seq   INTEGER NOT NULL DEFAULT 0
    );

    -- pos is AUTOINCREMENT so it is never reused: it is the order the user saw.
    CREATE TABLE messages (
        pos         INTEGER PRIMARY KEY AUTOINCREMENT,
        id          TEXT NOT NULL UNIQUE,
        peer_id     TEXT NOT NULL,
        direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        seq         INTEGER NOT NULL CHECK (seq >= 1),
        body        TEXT NOT NULL,
        created_at  REAL NOT NULL,
        received_at REAL,
        state       TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'delivered', 'read')),
        updated_at  REAL NOT NULL
    );
    CREATE UNIQUE INDEX messages_peer_direction_seq ON messages (peer_id, direction, seq);
    CREATE INDEX messages_history ON messages (peer_id, pos);
    -- Only delivered-but-unread rows, named with INDEXED BY by the queries that
    -- need them: keeps read receipts and unread counts independent of how long
    -- the history is (without statistics the planner would pick the unique index).
    CREATE INDEX messages_unread_in ON messages (peer_id, seq)
        WHERE direction = 'in' AND state = 'delivered';
    CREATE INDEX messages_unread_out ON messages (peer_id, seq)
        WHERE direction = 'out' AND state = 'delivered';

    CREATE TABLE outbox (
        message_id   TEXT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
        peer_id      TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_attempt REAL
    );
    CREATE UNIQUE INDEX outbox_peer_seq ON outbox (peer_id, seq);

    CREATE TABLE requests (
        peer_id    TEXT PRIMARY KEY,
        name       TEXT,
        address    TEXT,
        preview    TEXT,
        first_seen REAL NOT NULL,
        last_seen  REAL NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 1,
        state      TEXT NOT NULL CHECK (state IN ('pending', 'declined'))
    );
    CREATE INDEX requests_state_last_seen ON requests (state, last_seen);

    CREATE TABLE invite_tokens (
        token      TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at    REAL,
        used_by    TEXT
    );
    """,
    """
    -- File drop: one row per transfer, one per offered file.  The receiver's
    -- progress is the size of its .part file (every byte in it was authenticated),
    -- so nothing per chunk needs to be written here.
    CREATE TABLE transfers (
        id          TEXT PRIMARY KEY,
        peer_id     TEXT NOT NULL,
        direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        state       TEXT NOT NULL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        error       TEXT,
        bytes_moved INTEGER NOT NULL DEFAULT 0,
        attempts    INTEGER NOT NULL DEFAULT 0,
        folder      TEXT
    );
    CREATE INDEX transfers_peer ON transfers (peer_id, created_at);
    CREATE TABLE transfer_files (
        transfer_id TEXT NOT NULL REFERENCES transfers (id) ON DELETE CASCADE,
        idx         INTEGER NOT NULL,
        path        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        hash        BLOB NOT NULL,
        source      TEXT,
        part        TEXT,
        final       TEXT,
        accepted    INTEGER NOT NULL DEFAULT 1,
        done        INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (transfer_id, idx)
    );
    """,
    """
    -- File drop budgets: how many file rows each transfer holds (so a contact's share
    -- is one indexed sum), and indexes for paged listings, expiry and pruning.
    ALTER TABLE transfers ADD COLUMN file_count INTEGER NOT NULL DEFAULT 0;
    UPDATE transfers SET file_count =
        (SELECT COUNT(*) FROM transfer_files WHERE transfer_id = transfers.id);
    CREATE INDEX transfers_created ON transfers (created_at, id);
    CREATE INDEX transfers_state ON transfers (direction, state, updated_at);
    """,
    """
    -- One-time tokens of invites we redeemed, waiting for the first Hello to that
    -- peer.  Here rather than in settings.json so that a home with a passphrase holds
    -- no contact's peer ID in clear.
    CREATE TABLE pending_tokens (
        peer_id TEXT PRIMARY KEY,
        token   TEXT NOT NULL
    );
    """,
    """
    -- Message ids are unique per conversation, not across the whole table: a contact
    -- reusing another contact's id must not make that contact's message a duplicate
    -- forever.  SQLite cannot change a constraint in place, so messages and outbox
    -- (whose foreign key must follow) are rebuilt.  The outbox goes first, so dropping
    -- the old messages table cascades into nothing.
    CREATE TABLE messages_v4 (
        pos         INTEGER PRIMARY KEY AUTOINCREMENT,
        id          TEXT NOT NULL,
        peer_id     TEXT NOT NULL,
        direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        seq         INTEGER NOT NULL CHECK (seq >= 1),
        body        TEXT NOT NULL,
        created_at  REAL NOT NULL,
        received_at REAL,
        state       TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'delivered', 'read')),
        updated_at  REAL NOT NULL,
        UNIQUE (peer_id, id)
    );
    INSERT INTO messages_v4 (pos, id, peer_id, direction, seq, body, created_at,
        received_at, state, updated_at)
        SELECT pos, id, peer_id, direction, seq, body, created_at, received_at, state,
        updated_at FROM messages ORDER BY pos;
    -- pos is never reused: carry the counter over, not just the highest row left.
    UPDATE sqlite_sequence SET seq = max(seq,
        coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0))
        WHERE name = 'messages_v4';
    CREATE TABLE outbox_v4 (
        message_id   TEXT NOT NULL,
        peer_id      TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_attempt REAL,
        PRIMARY KEY (peer_id, message_id),
        FOREIGN KEY (peer_id, message_id) REFERENCES messages_v4 (peer_id, id)
            ON DELETE CASCADE
    );
    INSERT INTO outbox_v4 (message_id, peer_id, seq, attempts, last_attempt)
        SELECT message_id, peer_id, seq, attempts, last_attempt FROM outbox;
    DROP TABLE outbox;
    DROP TABLE messages;
    ALTER TABLE messages_v4 RENAME TO messages;
    ALTER TABLE outbox_v4 RENAME TO outbox;
    CREATE UNIQUE INDEX messages_peer_direction_seq ON messages (peer_id, direction, seq);
    CREATE INDEX messages_history ON messages (peer_id, pos);
    CREATE INDEX messages_unread_in ON messages (peer_id, seq)
        WHERE direction = 'in' AND state = 'delivered';
    CREATE INDEX messages_unread_out ON messages (peer_id, seq)
        WHERE direction = 'out' AND state = 'delivered';
    CREATE UNIQUE INDEX outbox_peer_seq ON outbox (peer_id, seq);

    -- Message bytes accepted from each contact per UTC day (the daily quota).
    CREATE TABLE intake (
        peer_id  TEXT NOT NULL,
        day      INTEGER NOT NULL,
        bytes    INTEGER NOT NULL DEFAULT 0,
        messages INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (peer_id, day)
    ) WITHOUT ROWID;
    """,
    """
    -- Contact management: muted contacts, and a block list that also covers
    -- strangers (a blocked key gets no session, its knocks are dropped).
    ALTER TABLE contacts ADD COLUMN muted INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE blocked (
        peer_id    TEXT PRIMARY KEY,
        name       TEXT,
        blocked_at REAL NOT NULL
    );
    -- Replies, edits and deletions.  Edits and deletions travel through the outbox
    -- as sequenced rows of their own (kind 'edit'/'delete', naming their target),
    -- so they get the same exactly-once delivery as messages; history shows only
    -- kind 'text'.  A deleted message keeps its row with an empty body.
    ALTER TABLE messages ADD COLUMN reply_to TEXT;
    ALTER TABLE messages ADD COLUMN edited_at REAL;
    ALTER TABLE messages ADD COLUMN deleted_at REAL;
    ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text'
        CHECK (kind IN ('text', 'edit', 'delete'));
    ALTER TABLE messages ADD COLUMN target TEXT;
    CREATE INDEX messages_target ON messages (peer_id, target) WHERE target IS NOT NULL;
    """,
    """
    -- Groups (docs/groups.md): the signed operations and messages exactly as received,
    -- plus the replica's counters, so a restart rebuilds the same view.  Queries are in
    -- p2pchat/group_store.py.
    CREATE TABLE groups (
        id          BLOB PRIMARY KEY,
        name        TEXT NOT NULL,
        status      TEXT NOT NULL
                    CHECK (status IN ('invited', 'joined', 'left', 'removed', 'declined')),
        inviter     TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        read_clock  INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE group_ops (
        group_id BLOB NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
        pos      INTEGER NOT NULL,
        id       BLOB NOT NULL,
        body     BLOB NOT NULL,
        sig      BLOB NOT NULL,
        PRIMARY KEY (group_id, id)
    );
    CREATE INDEX group_ops_pos ON group_ops (group_id, pos);
    CREATE TABLE group_messages (
        group_id    BLOB NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
        author      BLOB NOT NULL,
        seq         INTEGER NOT NULL,
        id          TEXT NOT NULL,
        clock       INTEGER NOT NULL,
        sent_at     REAL NOT NULL,
        received_at REAL NOT NULL,
        kind        TEXT NOT NULL,
        header      BLOB NOT NULL,
        sig         BLOB NOT NULL,
        content     BLOB NOT NULL,
        shown       INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (group_id, author, seq)
    );
    CREATE INDEX group_messages_order ON group_messages (group_id, shown, clock, author, seq);
    CREATE INDEX group_messages_id ON group_messages (id);
    CREATE TABLE group_authors (
        group_id    BLOB NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
        author      BLOB NOT NULL,
        shown       INTEGER NOT NULL,
        shown_clock INTEGER NOT NULL,
        floor       INTEGER NOT NULL,
        PRIMARY KEY (group_id, author)
    );
    CREATE TABLE group_marks (
        group_id BLOB NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
        member   BLOB NOT NULL,
        author   BLOB NOT NULL,
        upto     INTEGER NOT NULL,
        PRIMARY KEY (group_id, member, author)
    );
    -- Where fellow members who are not contacts may be reached: addresses a session
    -- with them came from, then addresses other members claimed (a dial checks the key).
    CREATE TABLE group_hints (
        peer_id    TEXT PRIMARY KEY,
        addresses  TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    """
    -- Hints from invites (docs/self-hosting.md): relays ('PEER_ID@HOST:PORT') to
    -- register with, DHT bootstrap nodes ('HOST:PORT') to use when none was named.
    CREATE TABLE network_hints (
        kind     TEXT NOT NULL CHECK (kind IN ('relay', 'bootstrap')),
        value    TEXT NOT NULL,
        added_at REAL NOT NULL,
        PRIMARY KEY (kind, value)
    ) WITHOUT ROWID;
    """,
    """
    -- The highest seq ever handed to a session for each contact.  An ack beyond it
    -- names messages the contact cannot have received (they are still queued here),
    -- so it is refused whole, like an ack beyond send_seq.
    ALTER TABLE conversations ADD COLUMN sent_seq INTEGER NOT NULL DEFAULT 0;
    UPDATE conversations SET sent_seq = coalesce((SELECT max(m.seq) FROM messages m
        WHERE m.peer_id = conversations.peer_id AND m.direction = 'out'
        AND m.state != 'queued'), 0);

    -- A leaner outbox: keyed by (peer_id, seq) without a rowid, so queueing a message
    -- writes one outbox b-tree instead of three (the rowid table, its primary key and
    -- the seq index), and an ack deletes from one.  The cascade from messages has no
    -- index of its own and scans the outbox, which holds only unacknowledged messages.
    CREATE TABLE outbox_v6 (
        peer_id      TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        message_id   TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_attempt REAL,
        PRIMARY KEY (peer_id, seq),
        FOREIGN KEY (peer_id, message_id) REFERENCES messages (peer_id, id)
            ON DELETE CASCADE
    ) WITHOUT ROWID;
    INSERT INTO outbox_v6 (peer_id, seq, message_id, attempts, last_attempt)
        SELECT peer_id, seq, message_id, attempts, last_attempt FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v6 RENAME TO outbox;
    """,
    """
    -- Full-text search over message bodies (SQLite FTS5; external content, so the text
    -- is stored once, in messages).  New rows are indexed in batches by the store
    -- (Store.index_messages: at the node's tick, and before every search), not by a
    -- trigger on each insert, which would add the index's pages to every message's
    -- commit; fts_position is how far indexing got.  Edits and deletions of indexed
    -- rows keep the index right through the triggers.
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        body, content = 'messages', content_rowid = 'pos'
    );
    CREATE TABLE fts_position (
        id  INTEGER PRIMARY KEY CHECK (id = 0),
        pos INTEGER NOT NULL
    );
    INSERT INTO fts_position (id, pos) VALUES (0, 0);
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
        WHEN old.pos <= (SELECT pos FROM fts_position)
    BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.pos, old.body);
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages
        WHEN old.pos <= (SELECT pos FROM fts_position)
    BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.pos, old.body);
        INSERT INTO messages_fts (rowid, body) VALUES (new.pos, new.body);
    END;
    """,
    """
    -- What a view remembers between runs (the conversation the terminal app had
    -- open): here rather than in a file of its own so that a home with a passphrase
    -- holds no contact's peer ID in clear.
    CREATE TABLE view_state (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    """
    -- File drop 2: an offered file's modification time (ns) when it was offered, so
    -- the sender notices a file changed since; its hash may now be empty (b"") until
    -- it is known (offers leave before the files are hashed).
    ALTER TABLE transfer_files ADD COLUMN mtime INTEGER;
    """,
)

_CONTACT_COLUMNS = "peer_id, name, verified, added_at, addresses, last_seen, last_address, muted"
_MESSAGE_COLUMNS = (
    "id, peer_id, direction, seq, body, created_at, received_at, state, updated_at,"
    " reply_to, edited_at, deleted_at, kind, target"
)
_OUTBOX_MESSAGE_COLUMNS = ", ".join(f"m.{c.strip()}" for c in _MESSAGE_COLUMNS.split(","))
_REQUEST_COLUMNS = "peer_id, name, address, preview, first_seen, last_seen, attempts, state"

_T = TypeVar("_T")


def _transfer_filter(
    direction: str | None, states: Sequence[str] | None, peer_id: str | None
) -> tuple[list[str], list[Any]]:
    """WHERE clauses (joined with AND by the caller) and their parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    if direction is not None:
        clauses.append("direction = ?")
        params.append(direction)
    if states is not None:
        clauses.append(f"state IN ({', '.join('?' for _ in states)})")
        params.extend(states)
    if peer_id is not None:
        clauses.append("peer_id = ?")
        params.append(peer_id)
    return clauses, params


def _split_statements(script: str) -> list[str]:
    """Split a migration into statements so it can run inside our transaction.

    ``executescript`` would commit the open transaction first, which would make
    a half-applied migration possible and race with a second process migrating
    the same file.
    """
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    leftover = [
        line for line in buffer.splitlines() if line.strip() and not line.strip().startswith("--")
    ]
    if leftover:
        raise StoreError(f"incomplete SQL statement in migration: {leftover[0].strip()[:80]!r}")
    return statements


_MAX_POS = 2**63 - 1


def _search_words(text: str) -> list[str]:
    """The words of a search, for quoting into an FTS5 query (a quote inside a word is
    doubled, FTS5's own escape); at most 16, each at most 64 characters."""
    return [w[:64].replace('"', '""') for w in text.split()][:16]


def _clip(text: str | None, limit: int) -> str | None:
    """Bound stranger-controlled text before it reaches the disk or the UI."""
    if text is None:
        return None
    text = text.strip()[:limit]
    return text or None


def _default_name(peer_id: str) -> str:
    return f"peer-{peer_id[:8]}"


def _normalise_addresses(addresses: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for address in addresses:
        address = address.strip()
        if address and address not in seen and len(address) <= MAX_ADDRESS_CHARS:
            seen.append(address)
    return seen[:MAX_ADDRESSES]


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
    return Message(
        id=row[0],
        peer_id=row[1],
        direction=cast(Direction, row[2]),
        seq=row[3],
        body=row[4],
        created_at=row[5],
        received_at=row[6],
        state=cast(MessageState, row[7]),
        updated_at=row[8],
        reply_to=row[9],
        edited_at=row[10],
        deleted_at=row[11],
        kind=cast(MessageKind, row[12]),
        target=row[13],
    )


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


def resolve_ref(
    ref: str,
    items: Sequence[_T],
    peer_id: Callable[[_T], str],
    name: Callable[[_T], str | None],
    what: str,
) -> _T:
    """The lookup rule shared by contacts and requests, most specific first.

    Each stage either finds exactly one match, reports ambiguity, or falls
    through; a longer prefix never silently picks a different peer than the
    user could see listed.
    """
    ref = ref.strip()
    if not ref:
        raise UnknownContact(f"no {what} matches an empty reference")
    for item in items:
        if peer_id(item) == ref:
            return item
    folded = ref.casefold()

    def label(item: _T) -> str:
        item_name = name(item)
        short = peer_id(item)[:12]
        return f"{item_name} ({short})" if item_name else short

    stages: list[list[_T]] = [
        [item for item in items if (name(item) or "").casefold() == folded],
    ]
    if len(ref) >= MIN_ID_PREFIX:
        stages.append([item for item in items if peer_id(item).casefold().startswith(folded)])
    stages.append([item for item in items if (name(item) or "").casefold().startswith(folded)])
    for matches in stages:
        if len(matches) == 1:
            return matches[0]
        if matches:
            labels = sorted(label(item) for item in matches)
            raise AmbiguousContact(
                f"{ref!r} matches several {what}s: {', '.join(labels)}; "
                "type more of the name or peer id",
                [peer_id(item) for item in matches],
            )
    raise UnknownContact(f"no {what} matches {ref!r}")


# -- opening the database ------------------------------------------------------
#
# The one place where a connection to the node's database is made.  A home with
# a passphrase keeps its database in SQLCipher (every page, the WAL included,
# encrypted with AES-256 and authenticated with HMAC-SHA512) under a raw 256-bit
# key derived from the unlocked identity (``p2pchat.atrest``); a home without
# one keeps an ordinary SQLite file opened by the standard library, exactly as
# before encryption existed.

# Both bindings implement the same DB-API but raise their own exception classes.
DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, sqlcipher3.Error)
_SQLITE_MAGIC = b"SQLite format 3\x00"
# How long opening waits for a re-encryption by another process to finish.
LOCK_WAIT = 120.0


def database_is_plaintext(path: Path) -> bool | None:
    """True for an ordinary SQLite file, False for an encrypted one, None when empty or absent.

    SQLCipher encrypts the whole first page, header included (its first 16 bytes
    are the random salt), so an encrypted file never starts with SQLite's magic.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return None
    if not head:
        return None
    return head == _SQLITE_MAGIC


def pending_rekey_marker(path: Path) -> Path:
    """The commit marker of an unfinished passphrase change (see ``p2pchat.atrest``)."""
    return path.with_name(path.name + ".rekey")


def open_database(path: Path, key: bytes | None, *, sqlcipher: bool = False) -> sqlite3.Connection:
    """Connect to the database at ``path``, encrypted under ``key`` or plain when None.

    A plain database is opened by the standard library unless ``sqlcipher`` asks for
    the SQLCipher binding (re-encryption needs its ``sqlcipher_export``).  Raises
    :class:`DatabaseKeyError` when the file and the key do not go together.
    """
    plaintext = database_is_plaintext(path)
    if key is None and plaintext is False:
        raise DatabaseKeyError(
            f"{path} is encrypted, but the identity has no passphrase; was identity.key "
            "replaced by an unprotected copy?"
        )
    if key is not None and plaintext is True:
        raise DatabaseKeyError(f"{path} is not encrypted, but a database key was given")
    try:
        if key is None and not sqlcipher:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        else:
            raw = sqlcipher3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=5.0
            )
            # Same DB-API; the cast lets the store keep one connection type.
            db = cast(sqlite3.Connection, raw)
            # SQLCipher's own log would print to stderr on a key that does not fit;
            # every failure reaches us as an exception, which says it once.
            db.execute("PRAGMA cipher_log_level = NONE")
            if key is not None:
                if len(key) != 32:
                    raise ValueError("a database key is 32 bytes")
                # A raw key skips SQLCipher's PBKDF2: it is already a uniform 256-bit
                # key, and the passphrase's Argon2id ran when the identity was unlocked.
                db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
                # Wiping every freed SQLite buffer would not keep the key or the seed
                # out of process memory; docs/performance.md has the measured cost.
                db.execute("PRAGMA cipher_memory_security = OFF")
    except DB_ERRORS as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except DB_ERRORS as exc:
            if key is not None:
                raise DatabaseKeyError(
                    f"cannot decrypt {path}: it was not encrypted by this identity, or it is "
                    "damaged"
                ) from None
            raise StoreError(f"cannot open {path}: {exc}") from exc
        db.execute("PRAGMA busy_timeout = 5000")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot enable WAL mode on {path} (got {mode!r})")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        # Sorts, temporary tables and indices stay in memory, never in a temp file.
        db.execute("PRAGMA temp_store = MEMORY")
    except DB_ERRORS as exc:
        db.close()
        raise StoreError(f"cannot open {path}: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db


class StoreLock:
    """An ``flock`` on ``<database>.lock`` that every open :class:`Store` holds shared.

    A passphrase change swaps the database file for a re-encrypted copy; it takes
    this lock exclusively first, so no process can be left holding (and writing
    to) the file that was replaced.  The kernel releases it when a process dies.
    """

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".lock")
        self._fd: int | None = None

    def shared(self, timeout: float = LOCK_WAIT) -> None:
        """Hold the lock shared, waiting up to ``timeout`` for a re-encryption to end."""
        self._take(fcntl.LOCK_SH, timeout)

    def exclusive(self, timeout: float = 0.0) -> None:
        """Hold the lock alone; fails at once if another store is open anywhere.

        Converting a shared lock is not atomic: on failure this process holds no
        lock at all until it calls :meth:`shared` again.
        """
        self._take(fcntl.LOCK_EX, timeout)

    def _take(self, operation: int, timeout: float) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.fchmod(fd, 0o600)
            self._fd = fd
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._fd, operation | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        if operation == fcntl.LOCK_EX:
            raise DatabaseBusy(
                f"the database in {self.path.parent} is open in another p2pchat process "
                "(the app, a command, or a node opened by a test or script): close it and "
                "try again"
            )
        raise DatabaseBusy(
            f"the database in {self.path.parent} is being re-encrypted by another p2pchat "
            "process (a passphrase change); try again when it is done"
        )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


@dataclass(slots=True)
class Reopen:
    """What :meth:`Store.offline` reopens with: its file lock and the (new) key."""

    lock: StoreLock
    key: bytes | None


class Store:
    """One connection to the node's database; safe to share between threads.

    ``key`` is the SQLCipher key of an encrypted database (None: plain SQLite).
    ``lock`` is a :class:`StoreLock` the caller already holds shared; the store
    then owns it.  Without one the store takes its own.
    """

    def __init__(
        self, path: Path, *, key: bytes | None = None, lock: StoreLock | None = None
    ) -> None:
        self.path = Path(path)
        self._key = key
        self._lock = threading.RLock()
        self._batching = False
        self._db: sqlite3.Connection | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._file_lock = lock if lock is not None else StoreLock(self.path)
        try:
            if lock is None:
                self._file_lock.shared()
            self._create_private(self.path)
            self._db = self._open()
            self._migrate(self._db)
        except DB_ERRORS as exc:
            self.close()
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _open(self) -> sqlite3.Connection:
        marker = pending_rekey_marker(self.path)
        if marker.exists():
            raise StoreError(
                f"{marker} shows an unfinished passphrase change; open this home with "
                "p2pchat (any command) to finish it"
            )
        return open_database(self.path, self._key)

    @property
    def encrypted(self) -> bool:
        return self._key is not None

    @contextmanager
    def offline(self) -> Iterator[Reopen]:
        """Close the connection so the caller can replace the database file.

        Every store call from other threads waits meanwhile.  The caller may take
        the yielded lock exclusively and set the key to reopen with; on the way out
        the lock is shared again and the database reopened.
        """
        with self._lock:
            if self._db is None:
                raise StoreError("store is closed")
            self._db.close()
            self._db = None
            reopen = Reopen(self._file_lock, self._key)
            try:
                yield reopen
            finally:
                self._file_lock.shared()
                self._key = reopen.key
                self._db = self._open()

    @staticmethod
    def _create_private(path: Path) -> None:
        """Create the file ourselves so it never exists with a umask-wide mode.

        SQLite gives the ``-wal`` and ``-shm`` files the main file's mode, so
        restricting this one file covers all three.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise StoreError(f"cannot create {path}: {exc}") from exc
        os.close(fd)
        os.chmod(path, 0o600)

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"{self.path} has schema version {version}, but this p2pchat only knows "
                    f"up to version {len(MIGRATIONS)}; it was written by a newer p2pchat, "
                    "please upgrade"
                )
            for step in MIGRATIONS[version:]:
                for statement in _split_statements(step):
                    db.execute(statement)
            if version != len(MIGRATIONS):
                db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._file_lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._read() as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: every write made inside is one transaction, committed (durable)
        when the block ends, or rolled back whole if anything in it raises.

        The node applies what arrives in one event-loop turn this way (messages of
        several contacts, acks, sent marks): one commit instead of one per message.
        Acknowledge or announce nothing written inside before the block has ended.
        Nesting is allowed; only the outermost block commits.
        """
        with self._lock:
            if self._batching:
                yield
                return
            with self._write():
                self._batching = True
                try:
                    yield
                finally:
                    self._batching = False

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable-on-return write; sqlite errors become ``StoreError``.

        Inside ``batch`` the write joins the batch's transaction instead."""
        with self._lock:
            db = self._connection()
            if self._batching:
                try:
                    yield db
                except DB_ERRORS as exc:
                    raise StoreError(f"database error: {exc}") from exc
                return
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except DB_ERRORS as exc:
                raise StoreError(f"database error: {exc}") from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._connection()
            try:
                yield db
            except DB_ERRORS as exc:
                raise StoreError(f"database error: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is closed")
        return self._db

    # -- contacts ------------------------------------------------------------

    @staticmethod
    def _get_contact(db: sqlite3.Connection, peer_id: str) -> Contact | None:
        row = db.execute(
            f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE peer_id = ?", (peer_id,)
        ).fetchone()
        return None if row is None else _contact(row)

    @staticmethod
    def _require_contact(db: sqlite3.Connection, peer_id: str) -> Contact:
        contact = Store._get_contact(db, peer_id)
        if contact is None:
            raise UnknownContact(f"{peer_id} is not a contact")
        return contact

    @staticmethod
    def _name_owner(db: sqlite3.Connection, name: str, peer_id: str) -> str | None:
        folded = name.casefold()
        for other_id, other_name in db.execute(
            "SELECT peer_id, name FROM contacts WHERE peer_id != ?", (peer_id,)
        ):
            if other_name.casefold() == folded:
                return cast(str, other_id)
        return None

    @staticmethod
    def _check_name_free(db: sqlite3.Connection, name: str, peer_id: str) -> None:
        owner = Store._name_owner(db, name, peer_id)
        if owner is not None:
            raise ContactExists(f"a contact named {name!r} already exists ({owner[:12]})")

    @staticmethod
    def _free_name(db: sqlite3.Connection, wanted: str, peer_id: str) -> str:
        """A name chosen for the user (from a request or the peer id) must not fail."""
        candidates = [wanted]
        for width in (6, 12, len(peer_id)):
            suffix = f"-{peer_id[:width]}"
            candidates.append(wanted[: MAX_NAME_CHARS - len(suffix)] + suffix)
        for candidate in candidates:
            candidate = candidate[:MAX_NAME_CHARS]
            if Store._name_owner(db, candidate, peer_id) is None:
                return candidate
        return peer_id[:MAX_NAME_CHARS]

    def _upsert_contact(
        self,
        db: sqlite3.Connection,
        peer_id: str,
        name: str | None,
        *,
        derived_name: str | None,
        strict_name: bool,
        addresses: Iterable[str],
        now: float,
        verified: bool,
    ) -> Contact:
        if not peer_id:
            raise ValueError("peer_id must not be empty")
        existing = self._get_contact(db, peer_id)
        new_addresses = list(addresses)
        final_name: str | None = None
        if name is not None:
            final_name = normalise_name(name)
            if strict_name:
                self._check_name_free(db, final_name, peer_id)
            else:
                final_name = self._free_name(db, final_name, peer_id)
        if existing is None:
            if final_name is None:
                wanted = repair_name(derived_name) or _default_name(peer_id)
                final_name = self._free_name(db, wanted, peer_id)
            db.execute(
                "INSERT INTO contacts (peer_id, name, verified, added_at, addresses)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    peer_id,
                    final_name,
                    int(verified),
                    now,
                    json.dumps(_normalise_addresses(new_addresses)),
                ),
            )
        else:
            merged = _normalise_addresses([*new_addresses, *existing.addresses])
            db.execute(
                "UPDATE contacts SET name = ?, verified = ?, addresses = ? WHERE peer_id = ?",
                (
                    final_name or existing.name,
                    int(existing.verified or verified),
                    json.dumps(merged),
                    peer_id,
                ),
            )
        db.execute("DELETE FROM requests WHERE peer_id = ?", (peer_id,))
        return self._require_contact(db, peer_id)

    def add_contact(
        self,
        peer_id: str,
        name: str | None,
        *,
        addresses: Iterable[str] = (),
        now: float,
        verified: bool = False,
    ) -> Contact:
        """Add or refresh a contact; adding twice is how an invite re-teaches addresses.

        The node passes names that peers announce, so a name already used by
        another contact is suffixed with the peer id rather than refused; the
        returned contact carries the final name.  New addresses go first (they
        come from the freshest invite); ``verified`` only ever goes up here,
        lowering it takes an explicit ``set_verified``.
        """
        with self._write() as db:
            return self._upsert_contact(
                db,
                peer_id,
                name,
                derived_name=None,
                strict_name=False,
                addresses=addresses,
                now=now,
                verified=verified,
            )

    def get_contact(self, peer_id: str) -> Contact | None:
        with self._read() as db:
            return self._get_contact(db, peer_id)

    def list_contacts(self) -> list[Contact]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_CONTACT_COLUMNS} FROM contacts ORDER BY name COLLATE NOCASE, peer_id"
            ).fetchall()
        return [_contact(row) for row in rows]

    def remove_contact(self, peer_id: str) -> None:
        """Forget the contact but keep history, counters and queued messages.

        Keeping the counters is what lets the peer be re-added later without
        the two sides disagreeing about sequence numbers.
        """
        with self._write() as db:
            if db.execute("DELETE FROM contacts WHERE peer_id = ?", (peer_id,)).rowcount == 0:
                raise UnknownContact(f"{peer_id} is not a contact")

    def set_muted(self, peer_id: str, muted: bool) -> Contact:
        with self._write() as db:
            self._require_contact(db, peer_id)
            db.execute("UPDATE contacts SET muted = ? WHERE peer_id = ?", (int(muted), peer_id))
            return self._require_contact(db, peer_id)

    def block(self, peer_id: str, *, name: str | None, now: float) -> BlockedPeer:
        """Put a key on the block list (contact or not); its pending request goes.

        Blocking keeps a contact's row, history and counters (unblocking brings
        them back as they were); ``name`` is remembered for the list.
        """
        if not peer_id:
            raise ValueError("peer_id must not be empty")
        name = _clip(name, MAX_NAME_CHARS)
        with self._write() as db:
            db.execute(
                "INSERT INTO blocked (peer_id, name, blocked_at) VALUES (?, ?, ?)"
                " ON CONFLICT (peer_id) DO UPDATE SET name = coalesce(excluded.name, name)",
                (peer_id, name, now),
            )
            db.execute("DELETE FROM requests WHERE peer_id = ?", (peer_id,))
            row = db.execute(
                "SELECT peer_id, name, blocked_at FROM blocked WHERE peer_id = ?", (peer_id,)
            ).fetchone()
        return BlockedPeer(row[0], row[1], row[2])

    def unblock(self, peer_id: str) -> None:
        with self._write() as db:
            if db.execute("DELETE FROM blocked WHERE peer_id = ?", (peer_id,)).rowcount == 0:
                raise UnknownContact(f"{peer_id} is not blocked")

    def is_blocked(self, peer_id: str) -> bool:
        with self._read() as db:
            found = db.execute("SELECT 1 FROM blocked WHERE peer_id = ?", (peer_id,)).fetchone()
        return found is not None

    def list_blocked(self) -> list[BlockedPeer]:
        """The block list, most recently blocked first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT peer_id, name, blocked_at FROM blocked ORDER BY blocked_at DESC, peer_id"
            ).fetchall()
        return [BlockedPeer(r[0], r[1], r[2]) for r in rows]

    def rename_contact(self, peer_id: str, name: str) -> Contact:
        with self._write() as db:
            self._require_contact(db, peer_id)
            cleaned = normalise_name(name)
            self._check_name_free(db, cleaned, peer_id)
            db.execute("UPDATE contacts SET name = ? WHERE peer_id = ?", (cleaned, peer_id))
            return self._require_contact(db, peer_id)

    def repair_names(self) -> list[tuple[str, str | None, str | None]]:
        """Bring names stored by older versions under the name rule (``p2pchat.names``).

        Those versions stored whatever was typed or announced, and a name with a
        control character or over the length limit broke every session that
        carried it.  Returns ``(peer_id, old, new)`` for each contact or request
        changed; a read-only pass when nothing needs repair.
        """
        with self._read() as db:
            contacts = db.execute("SELECT peer_id, name FROM contacts").fetchall()
            requests = db.execute(
                "SELECT peer_id, name FROM requests WHERE name IS NOT NULL"
            ).fetchall()
        bad_contacts = [(p, n) for p, n in contacts if repair_name(n) != n]
        bad_requests = [(p, n) for p, n in requests if repair_name(n) != n]
        if not bad_contacts and not bad_requests:
            return []
        changed: list[tuple[str, str | None, str | None]] = []
        with self._write() as db:
            for peer_id, old in bad_contacts:
                new = self._free_name(db, repair_name(old) or _default_name(peer_id), peer_id)
                db.execute("UPDATE contacts SET name = ? WHERE peer_id = ?", (new, peer_id))
                changed.append((peer_id, old, new))
            for peer_id, old in bad_requests:
                fixed = repair_name(old)
                db.execute("UPDATE requests SET name = ? WHERE peer_id = ?", (fixed, peer_id))
                changed.append((peer_id, old, fixed))
        return changed

    def set_verified(self, peer_id: str, verified: bool) -> Contact:
        with self._write() as db:
            self._require_contact(db, peer_id)
            db.execute(
                "UPDATE contacts SET verified = ? WHERE peer_id = ?", (int(verified), peer_id)
            )
            return self._require_contact(db, peer_id)

    def set_addresses(self, peer_id: str, addresses: Iterable[str]) -> Contact:
        with self._write() as db:
            self._require_contact(db, peer_id)
            db.execute(
                "UPDATE contacts SET addresses = ? WHERE peer_id = ?",
                (json.dumps(_normalise_addresses(addresses)), peer_id),
            )
            return self._require_contact(db, peer_id)

    def record_seen(self, peer_id: str, address: str, now: float) -> Contact | None:
        """Remember where a contact was last reachable; a no-op for strangers.

        The node calls this on every authenticated connection, including from
        peers that are only knocking, so it must not raise for non-contacts.
        """
        with self._write() as db:
            contact = self._get_contact(db, peer_id)
            if contact is None:
                return None
            addresses = list(contact.addresses)
            address = address.strip()
            if address and address not in addresses and len(address) <= MAX_ADDRESS_CHARS:
                addresses.insert(0, address)
            db.execute(
                "UPDATE contacts SET last_seen = ?, last_address = ?, addresses = ?"
                " WHERE peer_id = ?",
                (now, address or None, json.dumps(addresses[:MAX_ADDRESSES]), peer_id),
            )
            return self._require_contact(db, peer_id)

    def find_contact(self, ref: str) -> Contact:
        """Resolve what a user typed: peer id, name, id prefix (>= 4 chars), name prefix."""
        exact = self.get_contact(ref)  # a whole peer ID: one indexed read, not the list
        if exact is not None:
            return exact
        return resolve_ref(
            ref, self.list_contacts(), lambda c: c.peer_id, lambda c: c.name, "contact"
        )

    # -- outgoing messages ---------------------------------------------------

    def queue_message(
        self,
        peer_id: str,
        body: str,
        *,
        now: float,
        message_id: str | None = None,
        reply_to: str | None = None,
    ) -> Message:
        """Number, store and enqueue a message in one transaction.

        Passing the same ``message_id`` again returns the stored message instead
        of sending it twice, so a caller unsure whether a call went through
        (it was killed around it) can simply retry.
        """
        if not peer_id:
            raise ValueError("peer_id must not be empty")
        if message_id is None:  # a fresh random id names no stored message
            with self._write() as db:
                return self._queue(db, peer_id, secrets.token_hex(16), body, now, reply_to=reply_to)
        mid = message_id
        with self._write() as db:
            row = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer_id = ? AND id = ?",
                (peer_id, mid),
            ).fetchone()
            if row is not None:
                existing = _message(row)
                if existing.direction == "out":
                    return existing
                raise StoreError(f"message id {mid!r} is already used by another message")
            return self._queue(db, peer_id, mid, body, now, reply_to=reply_to)

    def _queue(
        self,
        db: sqlite3.Connection,
        peer_id: str,
        mid: str,
        body: str,
        now: float,
        *,
        reply_to: str | None = None,
        kind: MessageKind = "text",
        target: str | None = None,
    ) -> Message:
        seq = int(
            db.execute(
                "INSERT INTO conversations (peer_id, send_seq) VALUES (?, 1)"
                " ON CONFLICT (peer_id) DO UPDATE SET send_seq = send_seq + 1"
                " RETURNING send_seq",
                (peer_id,),
            ).fetchall()[0][0]
        )
        db.execute(
            "INSERT INTO messages (id, peer_id, direction, seq, body, created_at,"
            " received_at, state, updated_at, reply_to, kind, target)"
            " VALUES (?, ?, 'out', ?, ?, ?, NULL, 'queued', ?, ?, ?, ?)",
            (mid, peer_id, seq, body, now, now, reply_to, kind, target),
        )
        db.execute(
            "INSERT INTO outbox (message_id, peer_id, seq) VALUES (?, ?, ?)",
            (mid, peer_id, seq),
        )
        return Message(
            mid, peer_id, "out", seq, body, now, None, "queued", now,
            reply_to=reply_to, kind=kind, target=target,
        )  # fmt: skip

    @staticmethod
    def _own_text(db: sqlite3.Connection, message_id: str) -> Message:
        """One of our messages (their ids were drawn here: one id, one message)."""
        row = db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?"
            " ORDER BY direction = 'out' DESC LIMIT 1",
            (message_id,),
        ).fetchone()
        if row is None:
            raise StoreError(f"no message {message_id}")
        message = _message(row)
        if message.kind != "text" or message.direction != "out":
            raise StoreError("only your own messages can be edited or deleted")
        if message.deleted_at is not None:
            raise StoreError("that message was deleted")
        return message

    def edit_message(self, message_id: str, body: str, *, now: float) -> tuple[Message, Message]:
        """Change the text of one of our messages and queue the edit for the peer,
        in one transaction; returns (the message as it is now, the edit row)."""
        with self._write() as db:
            message = self._own_text(db, message_id)
            db.execute(
                "UPDATE messages SET body = ?, edited_at = ?, updated_at = ?"
                " WHERE peer_id = ? AND id = ?",
                (body, now, now, message.peer_id, message_id),
            )
            edit = self._queue(
                db, message.peer_id, secrets.token_hex(16), body, now,
                kind="edit", target=message_id,
            )  # fmt: skip
            changed = self._get_message(db, message.peer_id, message_id)
        return changed, edit

    def delete_message(self, message_id: str, *, now: float) -> tuple[Message, Message]:
        """Delete one of our messages for both sides: it becomes a tombstone (empty
        body), and so does every edit of it still stored here, then the deletion is
        queued for the peer.  Returns (the tombstone, the delete row)."""
        with self._write() as db:
            message = self._own_text(db, message_id)
            db.execute(
                "UPDATE messages SET body = '', deleted_at = ?, updated_at = ?"
                " WHERE peer_id = ? AND id = ?",
                (now, now, message.peer_id, message_id),
            )
            # An edit not yet acknowledged would still carry the old words to the
            # peer: it becomes a deletion too (applying one twice is harmless).
            db.execute(
                "UPDATE messages SET body = '', kind = 'delete' WHERE peer_id = ? AND target = ?",
                (message.peer_id, message_id),
            )
            delete = self._queue(
                db, message.peer_id, secrets.token_hex(16), "", now,
                kind="delete", target=message_id,
            )  # fmt: skip
            changed = self._get_message(db, message.peer_id, message_id)
        return changed, delete

    @staticmethod
    def _get_message(db: sqlite3.Connection, peer_id: str, message_id: str) -> Message:
        row = db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer_id = ? AND id = ?",
            (peer_id, message_id),
        ).fetchone()
        assert row is not None
        return _message(row)

    def queue_messages(self, peer_id: str, bodies: Sequence[str], *, now: float) -> list[Message]:
        """Number, store and enqueue several messages in order, in one transaction and
        a fixed number of statements (the rows go in with ``executemany``)."""
        if not peer_id:
            raise ValueError("peer_id must not be empty")
        if not bodies:
            return []
        with self._write() as db:
            last = int(
                db.execute(
                    "INSERT INTO conversations (peer_id, send_seq) VALUES (?1, ?2)"
                    " ON CONFLICT (peer_id) DO UPDATE SET send_seq = send_seq + ?2"
                    " RETURNING send_seq",
                    (peer_id, len(bodies)),
                ).fetchall()[0][0]
            )
            first = last - len(bodies) + 1
            messages = [
                Message(secrets.token_hex(16), peer_id, "out", seq, body, now, None, "queued", now)
                for seq, body in enumerate(bodies, first)
            ]
            db.executemany(
                "INSERT INTO messages (id, peer_id, direction, seq, body, created_at,"
                " received_at, state, updated_at)"
                " VALUES (?, ?, 'out', ?, ?, ?, NULL, 'queued', ?)",
                [(m.id, peer_id, m.seq, m.body, now, now) for m in messages],
            )
            db.executemany(
                "INSERT INTO outbox (message_id, peer_id, seq) VALUES (?, ?, ?)",
                [(m.id, peer_id, m.seq) for m in messages],
            )
        return messages

    def outbox(
        self, peer_id: str, *, from_seq: int = 0, limit: int | None = None
    ) -> list[Message]:
        """Unacknowledged messages in ``seq`` order, the order they must be sent in:
        those from ``from_seq`` on, at most ``limit`` (so a resend reads what it can
        send now, not the whole outbox)."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_OUTBOX_MESSAGE_COLUMNS}"
                " FROM outbox o JOIN messages m ON m.peer_id = o.peer_id AND m.id = o.message_id"
                " WHERE o.peer_id = ? AND o.seq >= ? ORDER BY o.seq LIMIT ?",
                (peer_id, from_seq, -1 if limit is None else limit),
            ).fetchall()
        return [_message(row) for row in rows]

    def outbox_peers(self) -> list[str]:
        with self._read() as db:
            rows = db.execute("SELECT DISTINCT peer_id FROM outbox ORDER BY peer_id").fetchall()
        return [row[0] for row in rows]

    @staticmethod
    def _send_seq(db: sqlite3.Connection, peer_id: str) -> int:
        row = db.execute(
            "SELECT send_seq FROM conversations WHERE peer_id = ?", (peer_id,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def outbox_base(self, peer_id: str) -> int:
        """The ``base`` to put on outgoing messages (see ``p2pchat.core.window``)."""
        with self._read() as db:
            row = db.execute(
                "SELECT coalesce("
                " (SELECT min(seq) FROM outbox WHERE peer_id = ?1),"
                " (SELECT send_seq FROM conversations WHERE peer_id = ?1) + 1,"
                " 1)",
                (peer_id,),
            ).fetchone()
        return int(row[0])

    def send_seq(self, peer_id: str) -> int:
        """The highest ``seq`` assigned to an outgoing message (0 if none)."""
        with self._read() as db:
            return self._send_seq(db, peer_id)

    @staticmethod
    def _changed_ids(rows: list[Any]) -> list[str]:
        """Ids of changed messages in ``seq`` order; edit and delete rows are
        bookkeeping nobody shows, so their state changes are not reported."""
        return [row[0] for row in sorted(rows, key=lambda row: row[1]) if row[2] == "text"]

    def mark_sent(self, peer_id: str, upto_seq: int, now: float, *, from_seq: int = 0) -> list[str]:
        """Count a transmission of outbox messages ``from_seq..upto_seq``; returns ids
        now 'sent'.  Bounded below so that sending one new message does not touch
        every older unacknowledged row (a burst would otherwise cost O(n^2))."""
        with self._write() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_attempt = ?"
                " WHERE peer_id = ? AND seq BETWEEN ? AND ?",
                (now, peer_id, from_seq, upto_seq),
            )
            db.execute(
                "UPDATE conversations SET sent_seq = max(sent_seq, min(?, send_seq))"
                " WHERE peer_id = ?",
                (upto_seq, peer_id),
            )
            rows = db.execute(
                "UPDATE messages SET state = 'sent', updated_at = ?"
                " WHERE peer_id = ? AND direction = 'out' AND seq BETWEEN ? AND ?"
                " AND state = 'queued' RETURNING id, seq, kind",
                (now, peer_id, from_seq, upto_seq),
            ).fetchall()
        return self._changed_ids(rows)

    def requeue_sent(self, peer_id: str, now: float) -> list[str]:
        """Unacknowledged messages go back from 'sent' to 'queued'; returns their ids.

        For when the session that carried them died, or the peer answered that we
        are not its contact yet: "sent" would claim they are on their way when they
        are only waiting in the outbox for the next session.
        """
        with self._write() as db:
            rows = db.execute(
                "UPDATE messages SET state = 'queued', updated_at = ?"
                " WHERE peer_id = ? AND direction = 'out' AND state = 'sent'"
                " RETURNING id, seq, kind",
                (now, peer_id),
            ).fetchall()
        return self._changed_ids(rows)

    def ack_outgoing(self, peer_id: str, upto_seq: int, now: float) -> list[str]:
        """Apply a cumulative delivery ack; returns ids that became 'delivered'.

        An ack beyond the highest ``seq`` ever transmitted (``mark_sent``) is ignored
        entirely: it is either a bug or a peer lying, and honouring any part of it
        would let a peer claim delivery of messages it never received.
        """
        with self._write() as db:
            row = db.execute(
                "SELECT sent_seq FROM conversations WHERE peer_id = ?", (peer_id,)
            ).fetchone()
            if upto_seq < 1 or row is None or upto_seq > int(row[0]):
                return []
            # Everything below the outbox's lowest seq was acknowledged before: start
            # there, so an ack costs what it acknowledges, not the whole history.
            rows = db.execute(
                "UPDATE messages SET state = 'delivered', updated_at = ?1"
                " WHERE peer_id = ?2 AND direction = 'out' AND seq <= ?3"
                " AND seq >= (SELECT coalesce(min(seq), ?3 + 1) FROM outbox WHERE peer_id = ?2)"
                " AND state IN ('queued', 'sent') RETURNING id, seq, kind",
                (now, peer_id, upto_seq),
            ).fetchall()
            db.execute("DELETE FROM outbox WHERE peer_id = ? AND seq <= ?", (peer_id, upto_seq))
        return self._changed_ids(rows)

    def mark_read_outgoing(self, peer_id: str, upto_seq: int, now: float) -> list[str]:
        """Apply the peer's read receipt; returns ids that became 'read'.

        Only messages already 'delivered' move: a receipt that outruns its ack
        does not skip the delivery step, and one beyond ``send_seq`` is ignored
        like a lying ack.
        """
        with self._write() as db:
            if upto_seq < 1 or upto_seq > self._send_seq(db, peer_id):
                return []
            db.execute(
                "UPDATE conversations SET peer_read_seq = max(peer_read_seq, ?) WHERE peer_id = ?",
                (upto_seq, peer_id),
            )
            rows = db.execute(
                "UPDATE messages INDEXED BY messages_unread_out SET state = 'read', updated_at = ?"
                " WHERE peer_id = ? AND direction = 'out' AND state = 'delivered' AND seq <= ?"
                " RETURNING id, seq, kind",
                (now, peer_id, upto_seq),
            ).fetchall()
        return self._changed_ids(rows)

    # -- incoming messages ---------------------------------------------------

    def receive_message(
        self,
        peer_id: str,
        *,
        message_id: str,
        seq: int,
        base: int,
        body: str,
        sent_at: float,
        now: float,
        daily_quota: int | None = None,
        reply_to: str | None = None,
        kind: MessageKind = "text",
        target: str | None = None,
    ) -> ReceiveResult:
        """Apply the receive window and store the message in one transaction.

        Reading ``recv_seq`` and storing under the same write lock is what makes
        two racing sessions (or two processes) unable to both accept one seq.
        A ``message_id`` this peer already used is a duplicate whatever its seq
        says; another peer's ids do not matter (ids are unique per conversation).

        ``daily_quota`` bounds the UTF-8 bytes of message bodies stored from this
        peer per UTC day (``intake``); a message over it is refused, not stored.

        An ``edit`` or ``delete`` is applied in the same transaction, and only to
        a message this peer wrote to us that is not deleted; its own row keeps no
        text (the changed message has it, or nothing does).
        """
        size = len(body.encode("utf-8"))
        day = int(now // 86400)
        with self._write() as db:
            row = db.execute(
                "SELECT recv_seq FROM conversations WHERE peer_id = ?", (peer_id,)
            ).fetchone()
            recv_seq = 0 if row is None else int(row[0])
            known = db.execute(
                "SELECT 1 FROM messages WHERE peer_id = ? AND id = ?", (peer_id, message_id)
            ).fetchone()
            verdict: Verdict = (
                "duplicate" if known is not None else classify_incoming(seq, base, recv_seq)
            )
            if verdict != "accept":
                return ReceiveResult(verdict, None, recv_seq)
            if daily_quota is not None:
                used = db.execute(
                    "SELECT bytes FROM intake WHERE peer_id = ? AND day = ?", (peer_id, day)
                ).fetchone()
                if (0 if used is None else int(used[0])) + size > daily_quota:
                    return ReceiveResult("quota", None, recv_seq, retry_at=(day + 1) * 86400.0)
            db.execute("DELETE FROM intake WHERE peer_id = ? AND day < ?", (peer_id, day))
            db.execute(
                "INSERT INTO intake (peer_id, day, bytes, messages) VALUES (?, ?, ?, 1)"
                " ON CONFLICT (peer_id, day) DO UPDATE"
                " SET bytes = bytes + excluded.bytes, messages = messages + 1",
                (peer_id, day, size),
            )
            changed: Message | None = None
            if kind != "text":
                changed = self._apply_change(db, peer_id, kind, target, body, now)
                body = ""
            db.execute(
                "INSERT INTO messages (id, peer_id, direction, seq, body, created_at,"
                " received_at, state, updated_at, reply_to, kind, target)"
                " VALUES (?, ?, 'in', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id, peer_id, seq, body, sent_at, now,
                    # Bookkeeping rows are never unread.
                    "delivered" if kind == "text" else "read",
                    now, reply_to, kind, target,
                ),
            )  # fmt: skip
            db.execute(
                "INSERT INTO conversations (peer_id, recv_seq) VALUES (?, ?)"
                " ON CONFLICT (peer_id) DO UPDATE SET recv_seq = excluded.recv_seq",
                (peer_id, seq),
            )
        message = Message(
            message_id, peer_id, "in", seq, body, sent_at, now,
            "delivered" if kind == "text" else "read", now,
            reply_to=reply_to, kind=kind, target=target,
        )  # fmt: skip
        return ReceiveResult("accept", message, seq, changed=changed)

    def _apply_change(
        self,
        db: sqlite3.Connection,
        peer_id: str,
        kind: MessageKind,
        target: str | None,
        body: str,
        now: float,
    ) -> Message | None:
        """An incoming edit or delete of ``target``; None if refused."""
        row = db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer_id = ? AND id = ?",
            (peer_id, target),
        ).fetchone()
        if row is None:
            return None
        original = _message(row)
        if (
            original.peer_id != peer_id
            or original.direction != "in"
            or original.kind != "text"
            or original.deleted_at is not None
        ):
            return None
        if kind == "edit":
            db.execute(
                "UPDATE messages SET body = ?, edited_at = ?, updated_at = ?"
                " WHERE peer_id = ? AND id = ?",
                (body, now, now, peer_id, target),
            )
        else:
            db.execute(
                "UPDATE messages SET body = '', deleted_at = ?, updated_at = ?"
                " WHERE peer_id = ? AND id = ?",
                (now, now, peer_id, target),
            )
        return self._get_message(db, peer_id, original.id)

    def receive_messages(
        self,
        peer_id: str,
        frames: Sequence[IncomingMessage],
        *,
        now: float,
        daily_quota: int | None = None,
    ) -> list[ReceiveResult]:
        """``receive_message`` for several messages of one contact, in order, in one
        transaction and a fixed number of statements: the receive window is read once
        and applied here message by message, and the accepted rows go in together.

        Stops after a message over the daily quota (its result is the last one): the
        contact is told to wait, and what it sent after that is not looked at.
        """
        if not frames:
            return []
        day = int(now // 86400)
        results: list[ReceiveResult] = []
        with self._write() as db:
            row = db.execute(
                "SELECT recv_seq FROM conversations WHERE peer_id = ?", (peer_id,)
            ).fetchone()
            recv_seq = 0 if row is None else int(row[0])
            known: set[str] = set()
            ids = list(dict.fromkeys(f.id for f in frames))
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                known.update(
                    r[0]
                    for r in db.execute(
                        "SELECT id FROM messages WHERE peer_id = ? AND id IN"
                        f" ({','.join('?' * len(part))})",
                        (peer_id, *part),
                    )
                )
            used = db.execute(
                "SELECT bytes FROM intake WHERE peer_id = ? AND day = ?", (peer_id, day)
            ).fetchone()
            intake = 0 if used is None else int(used[0])
            pending: list[Message] = []  # accepted, not inserted yet
            count = 0

            def insert_pending() -> None:
                db.executemany(
                    "INSERT INTO messages (id, peer_id, direction, seq, body, created_at,"
                    " received_at, state, updated_at, reply_to, kind, target)"
                    " VALUES (?, ?, 'in', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (m.id, peer_id, m.seq, m.body, m.created_at, now, m.state, now,
                         m.reply_to, m.kind, m.target)
                        for m in pending
                    ],
                )  # fmt: skip
                pending.clear()

            for frame in frames:
                verdict: Verdict = (
                    "duplicate"
                    if frame.id in known
                    else classify_incoming(frame.seq, frame.base, recv_seq)
                )
                if verdict != "accept":
                    results.append(ReceiveResult(verdict, None, recv_seq))
                    continue
                size = len(frame.body.encode("utf-8"))
                if daily_quota is not None and intake + size > daily_quota:
                    retry_at = (day + 1) * 86400.0
                    results.append(ReceiveResult("quota", None, recv_seq, retry_at=retry_at))
                    break
                intake += size
                count += 1
                recv_seq = frame.seq
                known.add(frame.id)
                kind = _INCOMING_KINDS.get(frame.kind, "text")
                body = frame.body
                changed: Message | None = None
                if kind != "text":
                    # Its target may be earlier in this batch: that one goes in first.
                    insert_pending()
                    changed = self._apply_change(db, peer_id, kind, frame.target, body, now)
                    body = ""  # the changed message has the text, or nothing does
                message = Message(
                    frame.id, peer_id, "in", frame.seq, body, frame.sent_at, now,
                    # Bookkeeping rows are never unread.
                    "delivered" if kind == "text" else "read", now,
                    reply_to=frame.reply_to, kind=kind, target=frame.target,
                )  # fmt: skip
                pending.append(message)
                results.append(ReceiveResult("accept", message, recv_seq, changed=changed))
            if count:
                insert_pending()
                db.execute("DELETE FROM intake WHERE peer_id = ? AND day < ?", (peer_id, day))
                db.execute(
                    "INSERT INTO intake (peer_id, day, bytes, messages) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (peer_id, day) DO UPDATE"
                    " SET bytes = excluded.bytes, messages = messages + excluded.messages",
                    (peer_id, day, intake, count),
                )
                db.execute(
                    "INSERT INTO conversations (peer_id, recv_seq) VALUES (?, ?)"
                    " ON CONFLICT (peer_id) DO UPDATE SET recv_seq = excluded.recv_seq",
                    (peer_id, recv_seq),
                )
        return results

    def intake_today(self, peer_id: str, *, now: float) -> tuple[int, int]:
        """(bytes, messages) stored from ``peer_id`` this UTC day."""
        with self._read() as db:
            row = db.execute(
                "SELECT bytes, messages FROM intake WHERE peer_id = ? AND day = ?",
                (peer_id, int(now // 86400)),
            ).fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def recv_seq(self, peer_id: str) -> int:
        with self._read() as db:
            row = db.execute(
                "SELECT recv_seq FROM conversations WHERE peer_id = ?", (peer_id,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def mark_read_incoming(self, peer_id: str, upto_seq: int, *, now: float | None = None) -> int:
        """Advance our read marker (never backwards, never past what we hold).

        ``now`` stamps ``updated_at`` on the messages that change; without it
        their timestamps are left alone.
        """
        with self._write() as db:
            row = db.execute(
                "SELECT recv_seq, my_read_seq FROM conversations WHERE peer_id = ?", (peer_id,)
            ).fetchone()
            if row is None:
                return 0
            recv_seq, my_read_seq = int(row[0]), int(row[1])
            new_read_seq = max(my_read_seq, min(upto_seq, recv_seq))
            if new_read_seq != my_read_seq:
                db.execute(
                    "UPDATE conversations SET my_read_seq = ? WHERE peer_id = ?",
                    (new_read_seq, peer_id),
                )
            db.execute(
                "UPDATE messages INDEXED BY messages_unread_in"
                " SET state = 'read', updated_at = coalesce(?, updated_at)"
                " WHERE peer_id = ? AND direction = 'in' AND state = 'delivered' AND seq <= ?",
                (now, peer_id, new_read_seq),
            )
        return new_read_seq

    def unread_count(self, peer_id: str) -> int:
        with self._read() as db:
            row = db.execute(
                "SELECT count(*) FROM messages INDEXED BY messages_unread_in"
                " WHERE peer_id = ? AND direction = 'in' AND state = 'delivered'",
                (peer_id,),
            ).fetchone()
        return int(row[0])

    # -- history -------------------------------------------------------------

    def history(
        self, peer_id: str, *, limit: int | None = None, before: str | None = None
    ) -> list[Message]:
        """Both directions in the order they were stored, which is the order shown:
        the newest ``limit`` messages, or the ``limit`` stored just before the message
        ``before`` (an id of this conversation), for paging back through a long history
        at the same cost per page however long it is.

        Ordering by the peer's ``sent_at`` would let a skewed clock reshuffle
        a conversation the user already read.
        """
        if limit is not None and limit <= 0:
            return []
        with self._read() as db:
            upper = None
            if before is not None:
                found = db.execute(
                    "SELECT pos FROM messages WHERE peer_id = ? AND id = ?", (peer_id, before)
                ).fetchone()
                if found is None:
                    raise StoreError(f"no message {before!r} in this conversation")
                upper = int(found[0])
            if limit is None:
                rows = db.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                    " WHERE peer_id = ? AND kind = 'text' AND pos < ? ORDER BY pos",
                    (peer_id, upper if upper is not None else _MAX_POS),
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM ("
                    f" SELECT pos, {_MESSAGE_COLUMNS} FROM messages"
                    " WHERE peer_id = ? AND kind = 'text' AND pos < ?"
                    " ORDER BY pos DESC LIMIT ?) ORDER BY pos",
                    (peer_id, upper if upper is not None else _MAX_POS, limit),
                ).fetchall()
        return [_message(row) for row in rows]

    # -- search --------------------------------------------------------------

    def index_messages(self, *, limit: int | None = None, chunk: int = 20_000) -> int:
        """Add messages stored since the last call to the full-text index, oldest first,
        at most ``limit`` (all when None), ``chunk`` per transaction so other writers
        wait briefly.  Returns how many were indexed."""
        with self._read() as db:
            behind = db.execute(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE pos > (SELECT pos FROM fts_position))"
            ).fetchone()[0]
        if not behind:
            return 0  # nothing new: no write transaction (the node asks every second)
        done = 0
        while limit is None or done < limit:
            step = chunk if limit is None else min(chunk, limit - done)
            with self._write() as db:
                start = int(db.execute("SELECT pos FROM fts_position").fetchone()[0])
                last = db.execute(
                    "SELECT max(pos), count(*) FROM (SELECT pos FROM messages WHERE pos > ?"
                    " ORDER BY pos LIMIT ?)",
                    (start, step),
                ).fetchone()
                if last[0] is None:
                    return done
                db.execute(
                    "INSERT INTO messages_fts (rowid, body)"
                    " SELECT pos, body FROM messages WHERE pos > ? AND pos <= ?",
                    (start, int(last[0])),
                )
                db.execute("UPDATE fts_position SET pos = ?", (int(last[0]),))
            done += int(last[1])
        return done

    def search(
        self, text: str, *, peer_id: str | None = None, limit: int = 50
    ) -> list[Message]:
        """Messages whose body has every word of ``text`` (the last one as a prefix),
        newest first, at most ``limit``; only with ``peer_id`` when given.

        Words are matched by SQLite FTS5's unicode61 tokenizer: case and diacritics
        do not matter, punctuation separates words.  ``text`` is never parsed as an
        FTS5 query: each word is quoted, so no input is a syntax error.
        """
        words = _search_words(text)
        if not words or limit <= 0:
            return []
        query = " ".join(f'"{w}"' for w in words[:-1]) + f' "{words[-1]}"*'
        self.index_messages()
        columns = ", ".join(f"m.{c.strip()}" for c in _MESSAGE_COLUMNS.split(","))
        with self._read() as db:
            if peer_id is None:
                rows = db.execute(
                    f"SELECT {columns} FROM messages_fts f JOIN messages m ON m.pos = f.rowid"
                    " WHERE messages_fts MATCH ? AND m.kind = 'text' ORDER BY f.rowid DESC"
                    " LIMIT ?",
                    (query.strip(), limit),
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT {columns} FROM messages_fts f JOIN messages m ON m.pos = f.rowid"
                    " WHERE messages_fts MATCH ? AND m.peer_id = ? AND m.kind = 'text'"
                    " ORDER BY f.rowid DESC"
                    " LIMIT ?",
                    (query.strip(), peer_id, limit),
                ).fetchall()
        return [_message(row) for row in rows]

    def message_ids(self, prefix: str, *, peer_id: str | None = None, limit: int = 2) -> list[str]:
        """Ids of text messages that start with ``prefix`` (to resolve what a user
        typed; ``limit`` 2 is enough to tell unique from ambiguous)."""
        if not prefix or not all(c in "0123456789abcdef" for c in prefix):
            return []
        query = "SELECT DISTINCT id FROM messages WHERE kind = 'text' AND id >= ? AND id < ?"
        params: list[Any] = [prefix, prefix + "g"]
        if peer_id is not None:
            query += " AND peer_id = ?"
            params.append(peer_id)
        with self._read() as db:
            return [r[0] for r in db.execute(query + " ORDER BY id LIMIT ?", (*params, limit))]

    def get_message(self, message_id: str, *, peer_id: str | None = None) -> Message | None:
        """A message by id.  Ids are unique per conversation; without ``peer_id`` our
        own outgoing message wins (its id was drawn here, so it names one message),
        then the earliest stored incoming one."""
        with self._read() as db:
            if peer_id is not None:
                row = db.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer_id = ? AND id = ?",
                    (peer_id, message_id),
                ).fetchone()
            else:
                row = db.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?"
                    " ORDER BY direction = 'out' DESC, pos LIMIT 1",
                    (message_id,),
                ).fetchone()
        return None if row is None else _message(row)

    # -- contact requests ----------------------------------------------------

    @staticmethod
    def _get_request(db: sqlite3.Connection, peer_id: str) -> ContactRequest | None:
        row = db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE peer_id = ?", (peer_id,)
        ).fetchone()
        return None if row is None else _request(row)

    def add_request(
        self,
        peer_id: str,
        *,
        name: str | None,
        address: str | None,
        preview: str | None,
        now: float,
    ) -> tuple[ContactRequest, bool]:
        """Record a knock from a stranger; the bool says whether to notify the user.

        Only a brand-new row notifies: a pending request was already shown and
        a declined peer must not be able to pester.  Pending rows are capped,
        evicting the stalest, so a flood of fresh keys cannot grow the file
        without bound.

        A peer that is already a contact is not a request: nothing is stored
        and the returned request is a transient view with ``attempts == 0``.
        """
        if not peer_id:
            raise ValueError("peer_id must not be empty")
        name = repair_name(name)
        address = _clip(address, MAX_ADDRESS_CHARS)
        preview = _clip(preview, MAX_PREVIEW_CHARS)
        with self._write() as db:
            if self._get_contact(db, peer_id) is not None:
                transient = ContactRequest(peer_id, name, address, preview, now, now, 0, "pending")
                return transient, False
            existing = self._get_request(db, peer_id)
            if existing is None:
                pending = int(
                    db.execute("SELECT count(*) FROM requests WHERE state = 'pending'").fetchone()[
                        0
                    ]
                )
                excess = pending - MAX_PENDING_REQUESTS + 1
                if excess > 0:
                    db.execute(
                        "DELETE FROM requests WHERE peer_id IN ("
                        " SELECT peer_id FROM requests WHERE state = 'pending'"
                        " ORDER BY last_seen, first_seen, peer_id LIMIT ?)",
                        (excess,),
                    )
                db.execute(
                    "INSERT INTO requests (peer_id, name, address, preview, first_seen,"
                    " last_seen, attempts, state) VALUES (?, ?, ?, ?, ?, ?, 1, 'pending')",
                    (peer_id, name, address, preview, now, now),
                )
                created = True
            elif existing.state == "declined":
                db.execute(
                    "UPDATE requests SET last_seen = ?, attempts = attempts + 1 WHERE peer_id = ?",
                    (now, peer_id),
                )
                created = False
            else:
                db.execute(
                    "UPDATE requests SET last_seen = ?, attempts = attempts + 1,"
                    " name = coalesce(?, name), address = coalesce(?, address),"
                    " preview = coalesce(preview, ?) WHERE peer_id = ?",
                    (now, name, address, preview, peer_id),
                )
                created = False
            stored = self._get_request(db, peer_id)
            assert stored is not None  # written in this very transaction
            return stored, created

    def list_requests(self) -> list[ContactRequest]:
        """Pending requests, most recently active first."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE state = 'pending'"
                " ORDER BY last_seen DESC, peer_id"
            ).fetchall()
        return [_request(row) for row in rows]

    def get_request(self, peer_id: str) -> ContactRequest | None:
        with self._read() as db:
            return self._get_request(db, peer_id)

    def find_request(self, ref: str) -> ContactRequest:
        """Resolve a pending request the way ``find_contact`` resolves contacts."""
        return resolve_ref(
            ref, self.list_requests(), lambda r: r.peer_id, lambda r: r.name, "contact request"
        )

    def accept_request(self, peer_id: str, *, name: str | None, now: float) -> Contact:
        """Turn a request (pending or declined) into a contact.

        An explicit ``name`` must be free (``ContactExists``); the name the
        stranger announced is only a suggestion and is suffixed with the peer id
        when it collides, so accepting never fails on someone else's choice.
        """
        with self._write() as db:
            request = self._get_request(db, peer_id)
            if request is None:
                raise UnknownContact(f"no contact request from {peer_id}")
            return self._upsert_contact(
                db,
                peer_id,
                name,
                derived_name=request.name,
                strict_name=True,
                addresses=[request.address] if request.address else [],
                now=now,
                verified=False,
            )

    def decline_request(self, peer_id: str) -> None:
        with self._write() as db:
            updated = db.execute(
                "UPDATE requests SET state = 'declined' WHERE peer_id = ?", (peer_id,)
            ).rowcount
            if updated == 0:
                raise UnknownContact(f"no contact request from {peer_id}")

    # -- invite tokens -------------------------------------------------------

    def add_network_hints(
        self, kind: str, values: Sequence[str], *, now: float, keep: int = 4
    ) -> None:
        """Remember relay or bootstrap hints (the newest ``keep`` of each kind)."""
        if kind not in ("relay", "bootstrap"):
            raise ValueError(f"unknown hint kind {kind!r}")
        with self._write() as db:
            for value in values:
                db.execute(
                    "INSERT OR REPLACE INTO network_hints (kind, value, added_at)"
                    " VALUES (?, ?, ?)",
                    (kind, value, now),
                )
            db.execute(
                "DELETE FROM network_hints WHERE kind = ? AND value NOT IN ("
                " SELECT value FROM network_hints WHERE kind = ?"
                " ORDER BY added_at DESC, value LIMIT ?)",
                (kind, kind, keep),
            )

    def network_hints(self, kind: str) -> list[str]:
        """Relay or bootstrap hints from invites, newest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT value FROM network_hints WHERE kind = ? ORDER BY added_at DESC, value",
                (kind,),
            ).fetchall()
        return [str(row[0]) for row in rows]

    def save_pending_token(self, peer_id: str, token: str) -> None:
        """Remember the token of a peer's invite until our Hello has presented it."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO pending_tokens (peer_id, token) VALUES (?, ?)",
                (peer_id, token),
            )

    def pending_token(self, peer_id: str) -> str | None:
        with self._read() as db:
            row = db.execute(
                "SELECT token FROM pending_tokens WHERE peer_id = ?", (peer_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def view_state(self, key: str) -> str | None:
        with self._read() as db:
            row = db.execute("SELECT value FROM view_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_view_state(self, key: str, value: str | None) -> None:
        """Set (or with None forget) one value a view remembers between runs."""
        with self._write() as db:
            if value is None:
                db.execute("DELETE FROM view_state WHERE key = ?", (key,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO view_state (key, value) VALUES (?, ?)", (key, value)
                )

    def drop_pending_token(self, peer_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM pending_tokens WHERE peer_id = ?", (peer_id,))

    def create_invite_token(self, *, now: float, ttl: float = DEFAULT_INVITE_TTL) -> str:
        """Issue a single-use token; expired unused ones are purged on the way."""
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        token = secrets.token_urlsafe(16)
        with self._write() as db:
            db.execute(
                "DELETE FROM invite_tokens WHERE used_at IS NULL AND expires_at <= ?", (now,)
            )
            db.execute(
                "INSERT INTO invite_tokens (token, created_at, expires_at) VALUES (?, ?, ?)",
                (token, now, now + ttl),
            )
        return token

    def redeem_invite_token(self, token: str, peer_id: str, *, now: float) -> bool:
        """True exactly once per valid token; the check and the marking are one UPDATE."""
        with self._write() as db:
            updated = db.execute(
                "UPDATE invite_tokens SET used_at = ?, used_by = ?"
                " WHERE token = ? AND used_at IS NULL AND expires_at > ?",
                (now, peer_id, token, now),
            ).rowcount
        return updated == 1

    # -- file transfers ------------------------------------------------------

    def create_transfer(
        self,
        transfer_id: str,
        peer_id: str,
        *,
        direction: str,
        state: str,
        files: Sequence[tuple[str, int, bytes, str | None]],
        now: float,
        folder: str | None = None,
        mtimes: Sequence[int | None] | None = None,
    ) -> Transfer:
        """``files``: (relative path, size, hash or b"" while unknown, local source path
        or None); ``mtimes``: the sources' modification times (ns), if known."""
        times = list(mtimes) if mtimes is not None else [None] * len(files)
        with self._write() as db:
            db.execute(
                "INSERT INTO transfers (id, peer_id, direction, state, created_at, updated_at,"
                " folder, file_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (transfer_id, peer_id, direction, state, now, now, folder, len(files)),
            )
            db.executemany(
                "INSERT INTO transfer_files (transfer_id, idx, path, size, hash, source, mtime)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (transfer_id, i, p, size, h, src, mtime)
                    for i, ((p, size, h, src), mtime) in enumerate(zip(files, times, strict=True))
                ],
            )
        transfer = self.get_transfer(transfer_id)
        assert transfer is not None
        return transfer

    def get_transfer(self, transfer_id: str) -> Transfer | None:
        found = self.get_transfers([transfer_id])
        return found[0] if found else None

    def get_transfers(self, ids: Sequence[str]) -> list[Transfer]:
        """Whole transfers (with their files) in the order of ``ids``; two queries."""
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        with self._read() as db:
            rows = db.execute(
                "SELECT id, peer_id, direction, state, created_at, updated_at, error,"
                f" bytes_moved, attempts, folder FROM transfers WHERE id IN ({marks})",
                list(ids),
            ).fetchall()
            files = db.execute(
                "SELECT transfer_id, idx, path, size, hash, source, part, final, accepted, done,"
                f" mtime FROM transfer_files WHERE transfer_id IN ({marks})"
                " ORDER BY transfer_id, idx",
                list(ids),
            ).fetchall()
        entries: dict[str, list[TransferFile]] = {}
        for f in files:
            entries.setdefault(f[0], []).append(
                TransferFile(
                    f[1], f[2], f[3], bytes(f[4]), f[5], f[6], f[7], bool(f[8]), bool(f[9]), f[10]
                )
            )
        by_id = {
            row[0]: Transfer(
                id=row[0],
                peer_id=row[1],
                direction=row[2],
                state=row[3],
                created_at=row[4],
                updated_at=row[5],
                error=row[6],
                bytes_moved=row[7],
                attempts=row[8],
                folder=row[9],
                files=tuple(entries.get(row[0], ())),
            )
            for row in rows
        }
        return [by_id[i] for i in ids if i in by_id]

    def list_transfers(
        self,
        *,
        peer_id: str | None = None,
        direction: str | None = None,
        states: Sequence[str] | None = None,
        limit: int | None = None,
        before: str | None = None,
        max_files: int | None = None,
    ) -> list[Transfer]:
        """Newest first.  ``before``: only transfers older than that one (the next page).

        ``limit`` bounds the transfers and ``max_files`` the file rows a page loads
        (a page always holds at least one transfer), so a listing costs the same
        whatever the database holds.
        """
        clauses, params = _transfer_filter(direction, states, peer_id)
        with self._read() as db:
            if before is not None:
                row = db.execute(
                    "SELECT created_at, id FROM transfers WHERE id = ?", (before,)
                ).fetchone()
                if row is None:
                    raise StoreError(f"no transfer {before}")
                clauses.append("(created_at, id) < (?, ?)")
                params.extend(row)
            query = "SELECT id, file_count FROM transfers"
            if clauses:
                query += " WHERE " + " AND ".join(clauses)
            query += " ORDER BY created_at DESC, id DESC"
            if limit is not None:
                query += " LIMIT ?"
                params.append(limit)
            ids: list[str] = []
            files = 0
            for transfer_id, count in db.execute(query, params):
                if max_files is not None and ids and files + count > max_files:
                    break
                ids.append(transfer_id)
                files += count
        return self.get_transfers(ids)

    def find_transfer_ids(self, prefix: str, *, limit: int = 2) -> list[str]:
        """Ids starting with ``prefix`` (ids are lowercase hex), through the primary key."""
        prefix = prefix.lower()
        with self._read() as db:
            return [
                r[0]
                for r in db.execute(
                    "SELECT id FROM transfers WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                    (prefix, prefix + "\U0010ffff", limit),
                )
            ]

    def transfer_ids(
        self,
        *,
        direction: str,
        states: Sequence[str],
        peer_id: str | None = None,
        created_before: float | None = None,
        updated_after: float | None = None,
    ) -> list[str]:
        """Ids of transfers in some states (oldest first), for sweeps that need no rows."""
        clauses, params = _transfer_filter(direction, states, peer_id)
        if created_before is not None:
            clauses.append("created_at < ?")
            params.append(created_before)
        if updated_after is not None:
            clauses.append("updated_at > ?")
            params.append(updated_after)
        query = "SELECT id FROM transfers WHERE " + " AND ".join(clauses)
        with self._read() as db:
            return [r[0] for r in db.execute(query + " ORDER BY created_at", params)]

    def transfer_usage(
        self, *, direction: str, peer_id: str | None = None, states: Sequence[str] | None = None
    ) -> tuple[int, int]:
        """(transfers, file rows) stored for one peer, or for everyone."""
        clauses, params = _transfer_filter(direction, states, peer_id)
        query = "SELECT COUNT(*), COALESCE(SUM(file_count), 0) FROM transfers WHERE "
        query += " AND ".join(clauses)
        with self._read() as db:
            count, files = db.execute(query, params).fetchone()
        return int(count), int(files)

    def prune_transfers(
        self,
        *,
        direction: str,
        states: Sequence[str],
        transfers: int,
        files: int,
        peer_id: str | None = None,
    ) -> int:
        """Delete the least recently updated transfers in ``states`` until at least
        ``transfers`` transfers and ``files`` file rows are gone (or none are left).

        Returns how many transfers were deleted.
        """
        clauses, params = _transfer_filter(direction, states, peer_id)
        query = "SELECT id, file_count FROM transfers WHERE " + " AND ".join(clauses)
        query += " ORDER BY updated_at LIMIT 512"
        doomed: list[str] = []
        with self._write() as db:
            freed_rows = freed_files = 0
            for transfer_id, count in db.execute(query, params).fetchall():
                if freed_rows >= transfers and freed_files >= files:
                    break
                doomed.append(transfer_id)
                freed_rows += 1
                freed_files += count
            db.executemany("DELETE FROM transfers WHERE id = ?", [(i,) for i in doomed])
        return len(doomed)

    def running_incoming_files(self) -> list[tuple[str | None, str | None, int]]:
        """(folder, part file, size) of every accepted, unfinished incoming file of
        a transfer still under way: what the disk has been promised."""
        with self._read() as db:
            return [
                (r[0], r[1], int(r[2]))
                for r in db.execute(
                    "SELECT t.folder, f.part, f.size FROM transfers t"
                    " JOIN transfer_files f ON f.transfer_id = t.id"
                    " WHERE t.direction = 'in' AND t.state IN ('accepted', 'receiving', 'paused')"
                    " AND f.accepted = 1 AND f.done = 0"
                )
            ]

    def set_transfer_state(
        self, transfer_id: str, state: str, *, now: float, error: str | None = None
    ) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE transfers SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                (state, error, now, transfer_id),
            )

    def add_transfer_bytes(self, transfer_id: str, count: int, *, now: float) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE transfers SET bytes_moved = bytes_moved + ?, updated_at = ? WHERE id = ?",
                (count, now, transfer_id),
            )

    def set_transfer_folder(self, transfer_id: str, folder: str) -> None:
        with self._write() as db:
            db.execute("UPDATE transfers SET folder = ? WHERE id = ?", (folder, transfer_id))

    def bump_transfer_attempts(self, transfer_id: str, *, now: float) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE transfers SET attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (now, transfer_id),
            )

    def set_transfer_files(
        self,
        transfer_id: str,
        updates: Sequence[tuple[int, dict[str, Any]]],
    ) -> None:
        """Per-file updates of ``part``, ``final``, ``accepted``, ``done`` or ``hash``
        (known late in file drop 2)."""
        allowed = {"part", "final", "accepted", "done", "hash"}
        with self._write() as db:
            for index, fields in updates:
                if not fields.keys() <= allowed:
                    raise ValueError(f"cannot update {set(fields) - allowed}")
                sets = ", ".join(f"{k} = ?" for k in fields)
                db.execute(
                    f"UPDATE transfer_files SET {sets} WHERE transfer_id = ? AND idx = ?",
                    (*fields.values(), transfer_id, index),
                )

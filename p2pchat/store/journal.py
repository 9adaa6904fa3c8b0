"""The message journal: what makes a sent or received message durable for one ``write``.

``send_message`` must not return before the message would survive the process
being killed, and a received message must not be acknowledged before that either.
Committing it to SQLite costs a whole transaction: the ``messages`` row and its
indexes, the ``outbox`` row (or the contact's intake) and the ``conversations``
counter, eight to thirteen pages into the WAL (150 - 240 us on a quiet 2-core machine,
against a few us for the rest of the sender's work; docs/storage.md has the
measurements).  The database runs WAL with ``synchronous = NORMAL``, so a commit
is durable against a crash of the process (its pages are in the OS) but not
against a power cut.  An append to a file through ``os.write`` gives exactly that
guarantee too, for one system call: once it returned, the bytes are the
kernel's.  SQLite offers no cheaper commit that keeps that guarantee (a commit
always writes whole pages, and ``synchronous = OFF`` changes nothing for a
process crash), so this file is hand-written, and small.

Each record is one message, framed so that a reader can tell a record cut short
by a crash (or a full disk) at the end of the file from damage::

    u32 length of payload (big-endian)  u32 CRC-32 of payload  payload

The payload is the msgpack list ``[1, peer_id, id, seq, body, created_at,
reply_to]`` for a message we send, and ``[2, peer_id, id, seq, body, created_at,
reply_to, received_at]`` for a text message a contact sent us (its ``seq`` is the
contact's numbering, ``created_at`` the contact's clock); for an encrypted database
it is sealed (XSalsa20-Poly1305, random nonce) under a key derived from the
database key, so the journal never holds in clear what the database keeps
encrypted.  Records of both kinds share one file, in the order they happened:
that order is the order of the rows (``pos``), the order the user saw them in.

The store appends records here (``Store.queue_message``, ``receive_messages``),
folds them into the database in the next commit (:func:`fold_into`) and then
empties this file; when it opens, it folds whatever a crash left here first
(:func:`not_yet_stored` skips what a fold already committed).  The file keeps
its first name, ``p2pchat.db.outbox``, from when it held only outgoing messages.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import msgpack
import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash

from p2pchat.store.errors import DatabaseBusy, StoreError

__all__ = [
    "Entry",
    "Folded",
    "Journal",
    "JournalCorrupt",
    "Parsed",
    "encode",
    "fold_counters",
    "fold_into",
    "folded",
    "insert_folded",
    "journal_key",
    "journal_path",
    "not_yet_stored",
    "parse",
]

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct(">II")
HEADER_SIZE: Final = _HEADER.size
MAX_PAYLOAD: Final = 1 << 20
"""A record is one message (bodies are at most 16 KiB on the wire): anything
longer is damage, not a record."""
_SENT: Final = 1
"""The first field of a record of a message we send."""
_RECEIVED: Final = 2
"""The first field of a record of a message a contact sent us."""
_NONCE: Final = nacl.bindings.crypto_secretbox_NONCEBYTES
_KEY_PERSON: Final = b"p2pchat/1 jrnl"
_KEY_CONTEXT: Final = b"outbox journal key"


class JournalCorrupt(StoreError):
    """The journal holds damage that is not a write cut short at its end."""


class Record(Protocol):
    """What a record holds: an :class:`Entry`, or the store's ``Message`` itself (the
    send and receive paths build no second object per message).  ``received_at`` is
    None for a message we send."""

    @property
    def peer_id(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def body(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def reply_to(self) -> str | None: ...
    @property
    def received_at(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Entry:
    """One text message as the journal keeps it until it is folded: one we send, or
    (``received_at`` set) one a contact sent us."""

    peer_id: str
    id: str
    seq: int
    body: str
    created_at: float
    reply_to: str | None = None
    received_at: float | None = None


@dataclass(frozen=True, slots=True)
class Parsed:
    """What a journal holds: its whole records, and how many bytes at its end were
    a record cut short (0 when none), with why."""

    entries: list[Entry]
    torn: int = 0
    why: str = ""


def journal_path(database: Path) -> Path:
    """The journal of the database at ``database``: ``p2pchat.db.outbox``."""
    return database.with_name(database.name + ".outbox")


def journal_key(database_key: bytes) -> bytes:
    """The sealing key of an encrypted store's journal: keyed BLAKE2b of a fixed
    context under the database key, so it is never stored and says nothing about
    the database key (or the identity seed that key comes from)."""
    return nacl.hash.blake2b(
        _KEY_CONTEXT,
        digest_size=32,
        key=database_key,
        person=_KEY_PERSON,
        encoder=nacl.encoding.RawEncoder,
    )


def encode(
    entries: Sequence[Record], key: bytes | None = None, packer: msgpack.Packer | None = None
) -> bytes:
    """The records of ``entries``, back to back (``key``: seal each under it)."""
    pack = (packer or msgpack.Packer()).pack
    parts = []
    for e in entries:
        received = e.received_at
        payload = pack(
            [_SENT, e.peer_id, e.id, e.seq, e.body, e.created_at, e.reply_to]
            if received is None
            else [_RECEIVED, e.peer_id, e.id, e.seq, e.body, e.created_at, e.reply_to, received]
        )
        if key is not None:
            nonce = os.urandom(_NONCE)
            payload = nonce + nacl.bindings.crypto_secretbox(payload, nonce, key)
        if len(payload) > MAX_PAYLOAD:
            raise StoreError(f"a message of {len(e.body)} characters is too large to queue")
        parts.append(_HEADER.pack(len(payload), zlib.crc32(payload)))
        parts.append(payload)
    return b"".join(parts)


def parse(data: bytes, key: bytes | None = None, *, name: str = "the outbox journal") -> Parsed:
    """Every record in ``data``, in order.

    A record cut short at the end (a crash or a full disk in the middle of an
    append: too few bytes, a wrong checksum on the last record, or nothing but
    zeros left, as a power cut can leave an extended file) is reported in
    ``torn`` and not returned.  Anything else that is not a record we wrote
    raises :class:`JournalCorrupt`: damage in the middle of the file, a record
    that was tampered with or sealed under another key.
    """
    entries: list[Entry] = []
    offset = 0
    size = len(data)
    view = memoryview(data)
    while offset < size:
        rest = size - offset
        if not any(view[offset:]):
            return Parsed(entries, rest, "zeros")
        if rest < HEADER_SIZE:
            return Parsed(entries, rest, "a header cut short")
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + HEADER_SIZE
        end = start + length
        if length == 0 or length > MAX_PAYLOAD:
            raise JournalCorrupt(f"{name} is damaged at byte {offset}: a record of {length} bytes")
        if end > size:
            return Parsed(entries, rest, "a record cut short")
        payload = bytes(view[start:end])
        if zlib.crc32(payload) != crc:
            if end == size:
                return Parsed(entries, rest, "a last record with a wrong checksum")
            raise JournalCorrupt(f"{name} is damaged at byte {offset}: wrong checksum")
        entries.append(_decode(payload, key, name, offset))
        offset = end
    return Parsed(entries)


def _decode(payload: bytes, key: bytes | None, name: str, offset: int) -> Entry:
    def damaged(what: str) -> JournalCorrupt:
        return JournalCorrupt(f"{name} is damaged at byte {offset}: {what}")

    if key is not None:
        if len(payload) <= _NONCE:
            raise damaged("a sealed record too short")
        try:
            payload = nacl.bindings.crypto_secretbox_open(payload[_NONCE:], payload[:_NONCE], key)
        except nacl.exceptions.CryptoError:
            raise damaged("a record that does not open under this store's key") from None
    try:
        fields: Any = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception:  # msgpack raises several unrelated classes on bad input
        raise damaged("a record that is not msgpack") from None
    if not (
        isinstance(fields, list)
        and (
            (len(fields) == 7 and fields[0] == _SENT)
            or (len(fields) == 8 and fields[0] == _RECEIVED)
        )
    ):
        raise damaged("a record of an unknown form")
    peer_id, mid, seq, body, created_at, reply_to = fields[1:7]
    received_at = fields[7] if len(fields) == 8 else None
    if not (
        isinstance(peer_id, str) and peer_id
        and isinstance(mid, str) and mid
        and type(seq) is int and seq >= 1
        and isinstance(body, str)
        and type(created_at) in (int, float)
        and (reply_to is None or isinstance(reply_to, str))
        and (received_at is None or type(received_at) in (int, float))
    ):  # fmt: skip
        raise damaged("a record with fields of the wrong type")
    return Entry(
        peer_id, mid, seq, body, float(created_at), reply_to,
        None if received_at is None else float(received_at),
    )  # fmt: skip


@dataclass(slots=True)
class Folded:
    """A journaled message on its way into the tables, with what the transaction that
    folds it did to it before its row was written: the group commit that folds a
    burst also applies its sent marks and, often, the ack for it (``Store.batch``).
    A received message goes in as it came: ``delivered`` (to us), and unread."""

    entry: Record
    state: str = "queued"
    updated_at: float = 0.0
    attempts: int = 0
    last_attempt: float | None = None


def folded(entry: Record) -> Folded:
    """``entry`` as its row starts: queued when we send it, delivered when we got it."""
    received = entry.received_at
    if received is None:
        return Folded(entry, "queued", entry.created_at)
    return Folded(entry, "delivered", received)


def fold_into(db: sqlite3.Connection, entries: Sequence[Record]) -> None:
    """Write ``entries`` as rows (message, outbox, conversation counters, a contact's
    daily intake) inside the caller's transaction, in a fixed number of statements
    whatever their number."""
    if not entries:
        return
    insert_folded(db, [folded(e) for e in entries])
    fold_counters(db, entries)


def fold_counters(db: sqlite3.Connection, entries: Sequence[Record]) -> None:
    """Each conversation's ``send_seq`` counts the messages of ``entries`` we send, its
    ``recv_seq`` the ones we received, and each contact's ``intake`` the bytes of
    those (as ``receive_messages`` counts them): a few statements a contact."""
    sent: dict[str, int] = {}
    received: dict[str, int] = {}
    intake: dict[tuple[str, int], list[int]] = {}
    for e in entries:
        at = e.received_at
        if at is None:
            sent[e.peer_id] = e.seq
            continue
        received[e.peer_id] = e.seq
        body = e.body
        counts = intake.setdefault((e.peer_id, int(at // 86400)), [0, 0])
        counts[0] += len(body) if body.isascii() else len(body.encode("utf-8"))
        counts[1] += 1
    if sent:
        db.executemany(
            "INSERT INTO conversations (peer_id, send_seq) VALUES (?, ?)"
            " ON CONFLICT (peer_id) DO UPDATE SET send_seq = max(send_seq, excluded.send_seq)",
            list(sent.items()),
        )
    if received:
        db.executemany(
            "INSERT INTO conversations (peer_id, recv_seq) VALUES (?, ?)"
            " ON CONFLICT (peer_id) DO UPDATE SET recv_seq = max(recv_seq, excluded.recv_seq)",
            list(received.items()),
        )
        today: dict[str, int] = {}
        for peer, day in intake:
            today[peer] = max(day, today.get(peer, day))
        db.executemany("DELETE FROM intake WHERE peer_id = ? AND day < ?", list(today.items()))
        db.executemany(
            "INSERT INTO intake (peer_id, day, bytes, messages) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (peer_id, day) DO UPDATE"
            " SET bytes = bytes + excluded.bytes, messages = messages + excluded.messages",
            [
                (peer, day, size, count)
                for (peer, day), (size, count) in intake.items()
                if day == today[peer]
            ],
        )


def insert_folded(db: sqlite3.Connection, rows: Sequence[Folded]) -> None:
    """The message rows of ``rows`` as they are now, in order, and an outbox row for
    each one we send not acknowledged yet: one acknowledged in the transaction that
    folds it never gets an outbox row to be deleted again.  Two statements whatever
    their number."""
    if not rows:
        return
    db.executemany(
        "INSERT INTO messages (id, peer_id, direction, seq, body, created_at,"
        " received_at, state, updated_at, reply_to)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (r.entry.id, r.entry.peer_id, "out" if r.entry.received_at is None else "in",
             r.entry.seq, r.entry.body, r.entry.created_at, r.entry.received_at,
             r.state, r.updated_at, r.entry.reply_to)
            for r in rows
        ],
    )  # fmt: skip
    waiting = [
        (r.entry.id, r.entry.peer_id, r.entry.seq, r.attempts, r.last_attempt)
        for r in rows
        if r.state != "delivered" and r.entry.received_at is None
    ]
    if waiting:
        db.executemany(
            "INSERT INTO outbox (message_id, peer_id, seq, attempts, last_attempt)"
            " VALUES (?, ?, ?, ?, ?)",
            waiting,
        )


def not_yet_stored(db: sqlite3.Connection, entries: Sequence[Entry], name: str) -> list[Entry]:
    """What a journal found on opening still has to fold: the entries whose message
    is not stored yet (a crash between a fold's commit and emptying the file leaves
    stored ones).  They must continue each conversation's numbering (ours for what
    we send, the contact's for what we received) without a gap; anything else means
    the journal does not belong to this database."""
    todo = []
    next_seq: dict[tuple[str, bool], int] = {}
    for e in entries:
        stored = db.execute(
            "SELECT 1 FROM messages WHERE peer_id = ? AND id = ?", (e.peer_id, e.id)
        ).fetchone()
        if stored is not None:
            continue
        received = e.received_at is not None
        key = (e.peer_id, received)
        if key not in next_seq:
            row = db.execute(
                f"SELECT {'recv_seq' if received else 'send_seq'} FROM conversations"
                " WHERE peer_id = ?",
                (e.peer_id,),
            ).fetchone()
            next_seq[key] = (0 if row is None else int(row[0])) + 1
        if e.seq != next_seq[key]:
            raise JournalCorrupt(
                f"{name} holds message {e.seq} {'from' if received else 'to'} {e.peer_id}, "
                f"but the database expects {next_seq[key]}: it does not belong to this database"
            )
        next_seq[key] += 1
        todo.append(e)
    return todo


class Journal:
    """The journal file beside the database, and the lock that says who writes it.

    Whoever holds the file's ``flock`` (exclusive) owns it: it alone may number
    outgoing messages, because it numbers them from counters in its memory.  A
    node's store holds it for as long as it is open; any other store takes it
    for one transaction at a time (``own``/``release``).
    """

    def __init__(self, path: Path, key: bytes | None = None) -> None:
        self.path = Path(path)
        self.key = key
        self._fd: int | None = None
        self._size = 0
        self._packer = msgpack.Packer()  # reused: the store's lock serialises appends

    @property
    def owned(self) -> bool:
        return self._fd is not None

    def try_own(self) -> bool:
        """Take the lock if nobody holds it; True when this journal now owns it."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        try:
            os.fchmod(fd, 0o600)
            self._size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def own(self, timeout: float) -> None:
        """Take the lock, waiting up to ``timeout`` seconds for its holder."""
        deadline = time.monotonic() + timeout
        while not self.try_own():
            if time.monotonic() >= deadline:
                raise DatabaseBusy(
                    f"another p2pchat process (the running node) is sending from "
                    f"{self.path.parent}: send through it"
                )
            time.sleep(0.01)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def read(self) -> Parsed:
        """Everything the file holds (see :func:`parse`)."""
        fd = self._owned_fd()
        chunks = []
        offset = 0
        while True:
            chunk = os.pread(fd, 1 << 20, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        self._size = offset
        return parse(b"".join(chunks), self.key, name=str(self.path))

    def append(self, entries: Sequence[Record]) -> None:
        """Make ``entries`` durable against a crash of this process: one ``write``.

        A write the disk cannot take whole is undone (the file is cut back to
        where it was) and raises :class:`StoreError`: nothing was queued.
        """
        fd = self._owned_fd()
        data = encode(entries, self.key, self._packer)
        try:
            written = os.write(fd, data)
        except OSError as exc:
            self._undo()
            raise _write_error(self.path, exc) from exc
        if written != len(data):
            self._undo()
            raise _write_error(self.path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        self._size += written

    def clear(self) -> None:
        """Empty the file: everything in it is now in the database."""
        fd = self._owned_fd()
        if self._size == 0:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError as exc:
            # What stays is folded again at the next open: each record is skipped
            # when its message is already stored.
            log.warning("cannot empty %s: %s", self.path, exc)
            return
        self._size = 0

    def _undo(self) -> None:
        try:
            os.ftruncate(self._owned_fd(), self._size)
        except OSError as exc:  # pragma: no cover - the next open discards a torn tail
            log.warning("cannot cut %s back after a failed write: %s", self.path, exc)

    def _owned_fd(self) -> int:
        if self._fd is None:
            raise StoreError(f"{self.path} is not held by this store")
        return self._fd


def _write_error(path: Path, exc: OSError) -> StoreError:
    if exc.errno == errno.ENOSPC:
        return StoreError(f"database error: database or disk is full ({path})")
    return StoreError(f"database error: cannot write {path}: {exc.strerror or exc}")

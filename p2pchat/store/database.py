"""Opening the node's database and running transactions on it.

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

This module owns the one connection (plain SQLite or SQLCipher at rest), the
file lock a passphrase change takes, the schema check on open, and the
read/write/batch helpers every other part of the store goes through.

**The message journal** (``journal.py``, docs/storage.md).  A node's store
(``journal=True``) makes a message it queues, or a text message it receives,
durable with one append to a journal file instead of a commit, and keeps the
records in memory (``_pending``) until the next transaction folds them into the
tables.  For a received message it keeps the receive window and the day's intake
of that contact in memory too (``_receiving``: the tables plus what is pending),
so a message is accepted, made durable and acknowledged without a transaction.
The rule that nothing can tell the difference lives here, in one place: every
read and every write (``_read``, ``_write``, ``batch``) folds what is pending
first, inside its own transaction when it writes, so it sees exactly what it
would have seen had each message been committed on its own.  The file is emptied
after the fold committed; a rollback puts the records back.  Opening folds what a
crash left.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, cast

import sqlcipher3

from p2pchat.store.checkpoint import Checkpointer
from p2pchat.store.errors import DatabaseBusy, DatabaseKeyError, StoreError
from p2pchat.store.journal import (
    Folded,
    Journal,
    JournalCorrupt,
    fold_counters,
    fold_into,
    folded,
    insert_folded,
    journal_key,
    journal_path,
    not_yet_stored,
)
from p2pchat.store.records import Message
from p2pchat.store.schema import migrate

log = logging.getLogger(__name__)

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
# How long a store waits for another one to stop numbering outgoing messages.
JOURNAL_WAIT = 5.0
MAX_PENDING = 4096
"""Journaled messages waiting for a fold beyond which received ones are no longer
journaled: each then goes through a transaction (``receive_messages``), which folds
first, so a database that cannot fold (a full disk) refuses them instead of memory
filling up.  A node folds at least every ``delivery.MARK_DELAY`` and as soon as
``delivery.FOLD_AT`` (1,024) wait, so this is only reached when folds fail."""


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


def open_database(
    path: Path, key: bytes | None, *, sqlcipher: bool = False, another: bool = False
) -> sqlite3.Connection:
    """Connect to the database at ``path``, encrypted under ``key`` or plain when None.

    A plain database is opened by the standard library unless ``sqlcipher`` asks for
    the SQLCipher binding (re-encryption needs its ``sqlcipher_export``).  Raises
    :class:`DatabaseKeyError` when the file and the key do not go together.

    ``another``: this process has a connection to the file open already (the store's
    checkpoint thread).  The file is then not read here: closing any descriptor of a
    file drops every POSIX lock the process holds on it, SQLite's included, and
    without its lock on the database file the node's connection no longer counts as
    open, so another process closing its own connection would checkpoint the WAL and
    delete it under the node, whose later commits would go to a deleted file.
    """
    if not another:
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
class Sending:
    """A conversation's outgoing counters, kept in memory by the journal's holder:
    the last ``seq`` assigned, and ``base``, the lowest one not yet acknowledged
    (``send_seq + 1`` when the outbox is empty)."""

    send_seq: int
    base: int


@dataclass(slots=True)
class Receiving:
    """A conversation as the receive path sees it, kept in memory by the journal's
    holder between commits: the tables plus the journaled messages not folded yet.
    ``recv_seq`` and ``intake`` (bytes on UTC day ``day``) are the contact's; ``ids``
    are the pending messages' ids, ours and the contact's (an id is unique per
    conversation whatever the direction); ``top_id`` the greatest id of the
    conversation in the tables: an id above it cannot be there (ids begin with the
    time they were made, so a new message's usually is), and needs no lookup."""

    recv_seq: int
    day: int
    intake: int
    ids: set[str]
    top_id: str


@dataclass(slots=True)
class Reopen:
    """What :meth:`Store.offline` reopens with: its file lock and the (new) key."""

    lock: StoreLock
    key: bytes | None


class StoreBase:
    """The connection, its locks and the transaction helpers every part of the store uses."""

    def __init__(
        self,
        path: Path,
        *,
        key: bytes | None = None,
        lock: StoreLock | None = None,
        journal: bool = False,
        background_checkpoints: bool | None = None,
    ) -> None:
        """``journal``: hold the outbox journal for as long as the store is open and
        queue messages through it (a node's store); other stores take it for one
        transaction at a time, and only to number messages in SQL.

        ``background_checkpoints`` (by default: what ``journal`` says, so a node's
        store): commits never checkpoint the WAL, a thread of the store's does
        (``checkpoint.py``); other stores leave that to SQLite, in their commits."""
        self.path = Path(path)
        self._key = key
        if background_checkpoints is None:
            background_checkpoints = journal
        self._lock = threading.RLock()
        self._checkpointer = (
            Checkpointer(
                self.path, lambda: open_database(self.path, self._key, another=True), self._lock
            )
            if background_checkpoints
            else None
        )
        self._batching = False
        self._db: sqlite3.Connection | None = None
        self._keeps_journal = journal
        self._journal = Journal(journal_path(self.path), _journal_key(key))
        self._pending: list[Message] = []
        """Journaled messages not folded into the tables yet, oldest first."""
        self._folding: list[Message] = []
        """Folded into the transaction in progress: pending again if it rolls back."""
        self._unfolded: dict[str, list[Folded]] = {}
        """Of those, the ones whose rows wait for the end of the transaction (a write
        that knows them, ``_write(defer=True)``: the group commit's sent marks and
        acks), by contact, in ``seq`` order; any other statement writes them first,
        and so does one that inserts a message (``pos`` keeps the order of events)."""
        self._unfolded_rows: list[Folded] = []
        """The same, in the order they were queued: the order their rows go in."""
        self._sending: dict[str, Sending] = {}
        self._receiving: dict[str, Receiving] = {}
        """Loaded at a contact's first received message after each commit, which
        makes the tables current again (``_receiving_state``)."""
        self._contact_refs: dict[str, str] = {}
        """Contact references resolved to peer IDs (``ContactsMixin.contact_id``)."""
        self._fold_error: str | None = None
        self.on_pending: Callable[[], None] | None = None
        """Called when a message was journaled: the node folds at the end of the turn."""
        self.before_read: Callable[[], None] | None = None
        """Called before each read outside a batch: the node writes the acks it
        announced from memory (``Delivery.settle``), so reads see them as committed."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._file_lock = lock if lock is not None else StoreLock(self.path)
        try:
            if lock is None:
                self._file_lock.shared()
            self._create_private(self.path)
            self._db = self._open()
            self._migrate(self._db)
            self._open_journal()
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
        db = open_database(self.path, self._key)
        if self._checkpointer is not None:
            try:
                # The checkpointer's thread copies the WAL back; a commit never does.
                # After a complete checkpoint the next commit cuts the file back.
                db.execute("PRAGMA wal_autocheckpoint = 0")
                db.execute(f"PRAGMA journal_size_limit = {self._checkpointer.limit}")
            except BaseException:
                db.close()
                raise
        return db

    @property
    def encrypted(self) -> bool:
        return self._key is not None

    # -- the outbox journal ----------------------------------------------------

    def _open_journal(self) -> None:
        """Fold what a crash left in the journal, unless a running store holds it."""
        if not self._journal.try_own():
            return  # its holder folds it
        try:
            self._replay()
        finally:
            if not self._keeps_journal:
                self._journal.release()

    def _replay(self) -> None:
        """Fold the journal's records whose messages are not stored yet, then empty it."""
        name = str(self._journal.path)
        try:
            parsed = self._journal.read()
        except JournalCorrupt as exc:
            raise JournalCorrupt(
                f"{exc}; move it aside to open this home (messages it holds that are "
                "not in the history would not be sent)"
            ) from None
        if parsed.torn:
            log.warning(
                "%s: discarded %d bytes at its end (%s): a write cut short by a crash "
                "or a full disk; that message was never reported queued",
                name, parsed.torn, parsed.why,
            )  # fmt: skip
        if parsed.entries:
            with self._write() as db:  # nothing is pending yet: this is the fold
                todo = not_yet_stored(db, parsed.entries, name)
                fold_into(db, todo)
            if todo:
                log.info("%s: %d queued messages folded into the database", name, len(todo))
        self._journal.clear()

    def _holds_journal(self) -> bool:
        """Whether messages are queued through the journal: a node's store, holding
        it (taken over, after waiting for its holder, when it had one at opening)."""
        if not self._keeps_journal:
            return False
        if not self._journal.owned:
            with self._lock:
                self._journal.own(JOURNAL_WAIT)
                self._replay()
                self._sending.clear()
        return True

    @contextmanager
    def _numbering(self) -> Iterator[None]:
        """Around a transaction that numbers outgoing messages in SQL: only the
        journal's holder numbers (it counts in memory), so a store that does not hold
        it takes it for the while, after folding what a crash left in it."""
        with self._lock:
            if self._journal.owned:
                yield
                return
            self._journal.own(JOURNAL_WAIT)
            try:
                self._replay()
                yield
            finally:
                if self._keeps_journal:
                    self._sending.clear()
                else:
                    self._journal.release()

    def _journal_append(self, entries: list[Message]) -> None:
        """Durable on return (one write); folded by the next transaction."""
        with self._lock:
            self._journal.append(entries)
            self._pending.extend(entries)
            receiving = self._receiving
            if receiving:
                for e in entries:
                    state = receiving.get(e.peer_id)
                    if state is not None:
                        _count_pending(state, e)
        if self.on_pending is not None:
            self.on_pending()

    @property
    def journals_receipts(self) -> bool:
        """Whether a received text message is journaled instead of committed now."""
        return (
            self._keeps_journal
            and not self._batching
            and self._journal.owned
            and len(self._pending) < MAX_PENDING
        )

    def _receiving_state(self, peer_id: str, day: int) -> Receiving:
        """The contact's window and intake on ``day`` as a transaction would read them
        after folding what is pending: read from the tables once after each commit."""
        state = self._receiving.get(peer_id)
        if state is not None and state.day == day:
            return state
        db = self._connection()
        try:
            row = db.execute(
                "SELECT recv_seq FROM conversations WHERE peer_id = ?", (peer_id,)
            ).fetchone()
            used = db.execute(
                "SELECT bytes FROM intake WHERE peer_id = ? AND day = ?", (peer_id, day)
            ).fetchone()
            top = db.execute(
                "SELECT max(id) FROM messages WHERE peer_id = ?", (peer_id,)
            ).fetchone()
        except DB_ERRORS as exc:
            raise StoreError(f"database error: {exc}") from exc
        state = Receiving(
            0 if row is None else int(row[0]),
            day,
            0 if used is None else int(used[0]),
            set(),
            "" if top is None or top[0] is None else str(top[0]),
        )
        for e in self._pending:
            if e.peer_id == peer_id:
                _count_pending(state, e)
        self._receiving[peer_id] = state
        return state

    def _stored_ids(self, peer_id: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` this conversation's rows hold (committed or not)."""
        found: set[str] = set()
        db = self._connection()
        try:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                found.update(
                    r[0]
                    for r in db.execute(
                        "SELECT id FROM messages WHERE peer_id = ? AND id IN"
                        f" ({','.join('?' * len(part))})",
                        (peer_id, *part),
                    )
                )
        except DB_ERRORS as exc:
            raise StoreError(f"database error: {exc}") from exc
        return found

    @property
    def pending(self) -> bool:
        """Whether journaled messages wait to be folded into the tables."""
        return bool(self._pending)

    @property
    def pending_messages(self) -> int:
        """How many journaled messages wait to be folded into the tables."""
        return len(self._pending)

    def fold(self) -> None:
        """Fold the journaled messages into the tables now, in one transaction."""
        with self._lock:
            if self._pending or self._unfolded:
                with self._write():
                    pass

    def _fold_into(self, db: sqlite3.Connection, defer: bool) -> None:
        """Fold what is pending into the transaction: its rows now, or (``defer``) at
        the end of the transaction, so that the sent marks and acks applied meanwhile
        are written with them (``_unfolded``).  The counters go in at once either way:
        every check of ``send_seq`` and ``sent_seq`` sees the messages."""
        if not defer:
            self._insert_unfolded(db)
        if self._pending:
            entries, self._pending = self._pending, []
            self._folding.extend(entries)
            if not defer:
                fold_into(db, entries)
                return
            for e in entries:
                row = folded(e)
                self._unfolded_rows.append(row)
                if e.received_at is None:
                    self._unfolded.setdefault(e.peer_id, []).append(row)
            fold_counters(db, entries)

    def _insert_unfolded(self, db: sqlite3.Connection) -> None:
        if self._unfolded_rows:
            rows, self._unfolded_rows = self._unfolded_rows, []
            self._unfolded.clear()
            insert_folded(db, rows)

    def _committed(self) -> None:
        self._folding.clear()
        self._receiving.clear()
        if not self._pending and self._journal.owned:
            self._journal.clear()
        checkpointer = self._checkpointer
        if checkpointer is not None:
            checkpointer.poke()
            if checkpointer.failed is not None:
                # Without its thread the WAL would grow without bound: SQLite
                # checkpoints in this connection's commits again, as by default.
                self._checkpointer = None
                self._connection().execute("PRAGMA wal_autocheckpoint = 1000")

    def _rolled_back(self) -> None:
        self._receiving.clear()
        self._unfolded.clear()
        self._unfolded_rows.clear()
        if self._folding:
            self._pending[:0] = self._folding
            self._folding.clear()
        self._sending.clear()  # counters bumped inside are undone: reload them

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
            self.fold()  # the journal is empty while the file changes (and its key)
            if self._checkpointer is not None:
                self._checkpointer.stop()  # its connection is to the file being replaced
            self._db.close()
            self._db = None
            self._contact_refs.clear()
            reopen = Reopen(self._file_lock, self._key)
            try:
                yield reopen
            finally:
                self._file_lock.shared()
                self._key = reopen.key
                self._journal.key = _journal_key(reopen.key)
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
        migrate(db, self.path)

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self.fold()
                except StoreError as exc:
                    log.warning("%s; the next opening folds the journal", exc)
            if self._checkpointer is not None:
                self._checkpointer.stop()  # after the last commit, which may wake it
            if self._db is not None:
                # The last connection to close checkpoints the whole WAL and removes it.
                self._db.close()
                self._db = None
            self._journal.release()
            self._file_lock.release()

    def __enter__(self) -> Self:
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
            with self._write(defer=True):
                self._batching = True
                try:
                    yield
                finally:
                    self._batching = False

    @contextmanager
    def _write(self, *, defer: bool = False) -> Iterator[sqlite3.Connection]:
        """One atomic, durable-on-return write; sqlite errors become ``StoreError``.

        Inside ``batch`` the write joins the batch's transaction instead.  ``defer``:
        the caller knows the journaled messages whose rows wait for the end of the
        transaction (``_unfolded``); any other write has them written first."""
        with self._lock:
            db = self._connection()
            if self._batching:
                try:
                    self._fold_into(db, defer)
                    yield db
                except DB_ERRORS as exc:
                    raise StoreError(f"database error: {exc}") from exc
                return
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    self._fold_into(db, defer)
                    yield db
                    self._insert_unfolded(db)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    self._rolled_back()
                    raise
            except DB_ERRORS as exc:
                raise StoreError(f"database error: {exc}") from exc
            self._committed()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self.before_read is not None and not self._batching:
                self.before_read()
            self._fold_for_read()
            db = self._connection()
            try:
                yield db
            except DB_ERRORS as exc:
                raise StoreError(f"database error: {exc}") from exc

    def _fold_for_read(self) -> None:
        """Reads see journaled messages as if each had been committed.

        When the fold cannot commit (a full disk), the read still answers, from what
        is committed, as every read did before the journal: the messages stay durable
        in the journal and pending, and show once a fold succeeds.  A read inside a
        batch shares its transaction, which the failure may have ended: it raises.
        Numbering never reads past a failed fold (``_sending_state`` folds first).
        """
        if not (self._pending or self._unfolded):
            return
        try:
            self.fold()
        except StoreError as exc:
            if self._batching:
                raise
            if str(exc) != self._fold_error:
                self._fold_error = str(exc)
                log.warning("cannot fold the outbox journal yet (reads show the tables): %s", exc)
        else:
            self._fold_error = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is closed")
        return self._db


def _count_pending(state: Receiving, e: Message) -> None:
    """``state`` after ``e`` was journaled."""
    state.ids.add(e.id)
    at = e.received_at
    if at is not None:
        state.recv_seq = max(state.recv_seq, e.seq)
        if int(at // 86400) == state.day:
            body = e.body
            state.intake += len(body) if body.isascii() else len(body.encode("utf-8"))


def _journal_key(database_key: bytes | None) -> bytes | None:
    return None if database_key is None else journal_key(database_key)

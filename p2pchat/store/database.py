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
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, cast

import sqlcipher3

from p2pchat.store.errors import DatabaseBusy, DatabaseKeyError, StoreError
from p2pchat.store.schema import migrate

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


class StoreBase:
    """The connection, its locks and the transaction helpers every part of the store uses."""

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
        migrate(db, self.path)

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
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

"""Encryption at rest: one passphrase protects the key file and the database.

A home whose identity has a passphrase keeps its database in SQLCipher under a
key derived from the identity's secret seed (:func:`database_key`).  Unlocking
the identity is therefore what unlocks the database: there is one passphrase,
one Argon2id run, and the database key exists only in memory.  A home without a
passphrase keeps an ordinary SQLite file, as it always did.

Changing the passphrase (``set``, ``change``, ``remove``) rewrites the key file
and, when encryption is switched on or off, the whole database.  Both must
change together, and a SIGKILL may come at any instant, so the change follows a
small commit protocol (docs/storage.md has the full argument):

1. Take the database's lock exclusively (:class:`p2pchat.store.StoreLock`): no
   other process has the database open, and none can open it until we are done.
2. Write the new files beside the old ones, each fsynced: ``p2pchat.db.next``
   (a complete copy made by ``sqlcipher_export``) and ``identity.key.next``.
3. Commit: write the marker ``p2pchat.db.rekey`` (through a temporary file and
   a rename) and fsync the folder.  Before this point the old state is the
   truth; from this point on the new one is.
4. Roll forward: rename ``identity.key.next`` over ``identity.key``; overwrite
   the old plaintext database and WAL with zeros when encrypting, delete its
   ``-wal``/``-shm``, rename ``p2pchat.db.next`` over ``p2pchat.db``; fsync the
   folder; delete the marker.

Every opener of the home (:func:`open_home`) first finishes what it finds: with
a marker it redoes step 4 (each part is skipped once done, so it can be redone
any number of times); without one it deletes the ``.next`` files.  A home thus
always opens as wholly old or wholly new.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import nacl.encoding
import nacl.hash

from p2pchat.config import Paths
from p2pchat.identity import (
    Identity,
    IdentityError,
    PassphraseRequired,
    is_sealed,
    key_file_bytes,
    load_identity,
    write_private_file,
)
from p2pchat.store import (
    DB_ERRORS,
    LOCK_WAIT,
    DatabaseBusy,
    Store,
    StoreError,
    StoreLock,
    database_is_plaintext,
    open_database,
    pending_rekey_marker,
)

__all__ = [
    "PassphraseChange",
    "change_passphrase",
    "database_key",
    "open_home",
    "recover",
]

log = logging.getLogger(__name__)

# BLAKE2b's personalisation keeps this key apart from anything else ever derived
# from the seed (Ed25519 uses SHA-512 of it; safety numbers hash public keys).
_KEY_PERSON: Final = b"p2pchat/1 dbkey"
_KEY_CONTEXT: Final = b"sqlcipher database key"
_MARKER_VERSION: Final = 1
_SCRUB_CHUNK: Final = 1 << 20

Action = Literal["set", "change", "remove", "encrypt"]


def database_key(identity: Identity) -> bytes:
    """The 256-bit SQLCipher key of this identity's database.

    Keyed BLAKE2b of a fixed context under the seed, personalised for this one
    use: whoever can unseal the key file can derive it, nobody else can, and it
    is never stored.  It depends on the seed alone, so changing the passphrase
    re-seals the key file without re-encrypting the database.
    """
    return nacl.hash.blake2b(
        _KEY_CONTEXT,
        digest_size=32,
        key=identity.seed,
        person=_KEY_PERSON,
        encoder=nacl.encoding.RawEncoder,
    )


@dataclass(frozen=True, slots=True)
class PassphraseChange:
    """What a passphrase change did, for the user: the CLI and the app print it."""

    action: Action
    database: Literal["encrypted", "decrypted", "unchanged"]
    messages: int | None
    size: int
    seconds: float
    """Time of the database copy and the swap (the Argon2id runs are not in it)."""

    def describe(self) -> str:
        done = {
            "set": "passphrase set",
            "change": "passphrase changed",
            "remove": "passphrase removed",
            "encrypt": "database encrypted under the identity's passphrase",
        }[self.action]
        if self.database == "unchanged":
            return f"{done}; the database needed no re-encryption"
        count = "" if self.messages is None else f"{self.messages:,} messages, "
        return (
            f"{done}; the database ({count}{self.size / (1 << 20):.1f} MiB) was "
            f"{self.database} in {self.seconds:.2f} s"
        )


@dataclass(frozen=True, slots=True)
class _Plan:
    key_file: bool
    database: bool
    scrub: bool

    def dump(self) -> bytes:
        doc = {
            "version": _MARKER_VERSION,
            "key_file": self.key_file,
            "database": self.database,
            "scrub": self.scrub,
        }
        return (json.dumps(doc) + "\n").encode()

    @classmethod
    def load(cls, path: Path) -> _Plan:
        try:
            doc = json.loads(path.read_bytes())
            if doc.get("version") != _MARKER_VERSION:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            return cls(bool(doc["key_file"]), bool(doc["database"]), bool(doc["scrub"]))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Files:
    """Every file the protocol touches, named from the home."""

    home: Path
    key: Path
    database: Path

    @classmethod
    def of(cls, paths: Paths) -> _Files:
        return cls(paths.home, paths.identity, paths.database)

    def _db_sibling(self, suffix: str) -> Path:
        return self.database.with_name(self.database.name + suffix)

    @property
    def key_next(self) -> Path:
        return self.key.with_name(self.key.name + ".next")

    @property
    def db_next(self) -> Path:
        return self._db_sibling(".next")

    @property
    def marker(self) -> Path:
        return pending_rekey_marker(self.database)

    @property
    def marker_tmp(self) -> Path:
        return self._db_sibling(".rekey.tmp")

    @property
    def wal(self) -> Path:
        return self._db_sibling("-wal")

    @property
    def shm(self) -> Path:
        return self._db_sibling("-shm")

    @property
    def leftovers(self) -> tuple[Path, ...]:
        """What an interrupted, uncommitted change may leave behind."""
        return (
            self.key_next,
            self.db_next,
            self._db_sibling(".next-journal"),
            self._db_sibling(".next-wal"),
            self._db_sibling(".next-shm"),
            self.marker_tmp,
        )

    def unfinished(self) -> bool:
        return self.marker.exists() or any(p.exists() for p in self.leftovers)


# --------------------------------------------------------------------------- opening


def open_home(
    paths: Paths, passphrase: str | None = None, *, journal: bool = False
) -> tuple[Identity, Store]:
    """Unlock the identity and open its database, the way every process does it.

    Finishes or discards an interrupted passphrase change first, and encrypts a
    plaintext database left by a version without encryption when the identity
    has a passphrase.  Raises what :func:`p2pchat.identity.load_identity` raises
    for a missing, sealed or wrongly unlocked key file.
    """
    files = _Files.of(paths)
    lock = StoreLock(paths.database)
    lock.shared()
    try:
        _recover_if_needed(files, lock)
        identity = load_identity(paths.identity, passphrase)
        key: bytes | None = None
        if is_sealed(paths.identity):
            key = database_key(identity)
            _no_core_dumps()
            if database_is_plaintext(paths.database):
                key = _encrypt_on_open(files, lock, key)
        store = Store(paths.database, key=key, lock=lock, journal=journal)
    except BaseException:
        lock.release()
        raise
    return identity, store


def _recover_if_needed(files: _Files, lock: StoreLock) -> None:
    """Holding the lock shared, finish a crashed change (which needs it exclusively).

    Seen under a shared lock, a marker or a ``.next`` file cannot belong to a
    change in progress (that one would hold the lock exclusively), so it is left
    by a crash.  Two processes may find it together: one recovers, the other
    waits and then finds nothing left to do.
    """
    deadline = time.monotonic() + LOCK_WAIT
    while files.unfinished():
        try:
            lock.exclusive()
        except DatabaseBusy:
            lock.shared()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        try:
            _recover(files)
        finally:
            lock.shared()


def _encrypt_on_open(files: _Files, lock: StoreLock, key: bytes) -> bytes | None:
    """A sealed identity with a plaintext database (written before encryption existed):
    encrypt it now if no other process has it open, else open it as it is."""
    try:
        lock.exclusive()
    except DatabaseBusy:
        lock.shared()
        log.warning(
            "%s is not encrypted yet, and another p2pchat process has it open; it will be "
            "encrypted the next time it is opened alone",
            files.database,
        )
        return None
    try:
        # A node that had it open in clear may have left queued messages in the outbox
        # journal, in clear: opening folds them, so the journal is empty when its key
        # changes.  (The lock passed is one this store does not take or release: this
        # process holds the home's lock exclusively already.)
        Store(files.database, lock=StoreLock(files.database)).close()
        result = _rekey(files, "encrypt", None, None, key)
    finally:
        lock.shared()
    log.warning("%s", result.describe())
    return key


def _no_core_dumps() -> None:
    """A core dump of a node holds decrypted history and the seed: none for encrypted homes."""
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))


# --------------------------------------------------------------------------- changing


def change_passphrase(
    paths: Paths, store: Store, identity: Identity, old: str | None, new: str | None
) -> PassphraseChange:
    """Set (no passphrase yet), change, or remove (``new`` None) the passphrase.

    ``store`` is the open store of this home (the node's); it is closed during the
    swap, so its other users wait, and reopened under the new key.  Raises
    :class:`p2pchat.identity.WrongPassphrase` when ``old`` does not open the key
    file, and :class:`p2pchat.store.DatabaseBusy` when another process has the
    database open.
    """
    if new is not None and not new:
        raise ValueError("the new passphrase is empty; to have none, remove the passphrase")
    if is_sealed(paths.identity):
        if old is None:
            raise PassphraseRequired("the current passphrase is needed to change or remove it")
        if load_identity(paths.identity, old).seed != identity.seed:
            raise IdentityError(f"{paths.identity} holds another identity than this node's")
        action: Action = "remove" if new is None else "change"
    elif new is None:
        raise ValueError("this identity has no passphrase to remove")
    else:
        action = "set"
    sealed_bytes = key_file_bytes(identity, new)  # Argon2id, before anything waits on us
    to_key = database_key(identity) if new is not None else None
    files = _Files.of(paths)
    with store.offline() as reopen:
        reopen.lock.exclusive()
        result = _rekey(files, action, sealed_bytes, reopen.key, to_key)
        reopen.key = to_key
    if to_key is not None:
        _no_core_dumps()
    return result


def _rekey(
    files: _Files,
    action: Action,
    key_file: bytes | None,
    from_key: bytes | None,
    to_key: bytes | None,
) -> PassphraseChange:
    """Steps 2 to 4 of the protocol; the caller holds the lock exclusively."""
    _recover(files)
    started = time.monotonic()
    plan = _Plan(
        key_file=key_file is not None, database=from_key != to_key, scrub=from_key is None
    )
    messages: int | None = None
    size = 0
    if plan.database:
        messages = _export(files.database, from_key, files.db_next, to_key)
        size = files.db_next.stat().st_size
    if key_file is not None:
        _write_durable(files.key_next, key_file)
    _fsync(files.home)
    _write_durable(files.marker_tmp, plan.dump())
    os.replace(files.marker_tmp, files.marker)
    _fsync(files.home)  # the commit point
    _roll_forward(files, plan)
    database: Literal["encrypted", "decrypted", "unchanged"] = "unchanged"
    if plan.database:
        database = "encrypted" if to_key is not None else "decrypted"
    return PassphraseChange(action, database, messages, size, time.monotonic() - started)


def _export(source: Path, from_key: bytes | None, target: Path, to_key: bytes | None) -> int | None:
    """Copy the whole database into a new file under ``to_key``; return its message count.

    ``sqlcipher_export`` copies the schema and every row (virtual tables such as
    FTS5 included) but not ``user_version``, which is copied here.  The copy
    needs no journal: an interrupted one is simply deleted.
    """
    db = open_database(source, from_key, sqlcipher=True)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        try:
            messages: int | None = int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
        except DB_ERRORS:
            messages = None
        key_text = f"x'{to_key.hex()}'" if to_key is not None else ""
        db.execute("ATTACH DATABASE ? AS rekey_next KEY ?", (str(target), key_text))
        try:
            db.execute("PRAGMA rekey_next.journal_mode = OFF")
            db.execute("SELECT sqlcipher_export('rekey_next')")
            db.execute(f"PRAGMA rekey_next.user_version = {version}")
        finally:
            db.execute("DETACH DATABASE rekey_next")
    except DB_ERRORS as exc:
        raise StoreError(f"cannot re-encrypt {source}: {exc}") from exc
    finally:
        db.close()
    os.chmod(target, 0o600)
    _fsync(target)
    return messages


def recover(paths: Paths) -> bool:
    """Finish a committed change or discard an uncommitted one; True if there was one.

    For commands that read the key file without opening the database (``init``).
    """
    files = _Files.of(paths)
    if not files.unfinished():
        return False
    lock = StoreLock(paths.database)
    lock.shared()
    try:
        _recover_if_needed(files, lock)
    finally:
        lock.release()
    return True


def _recover(files: _Files) -> bool:
    """:func:`recover` for a caller that holds the database's lock exclusively."""
    home = files.home
    if files.marker.exists():
        _roll_forward(files, _Plan.load(files.marker))
        log.warning("finished an interrupted passphrase change in %s", home)
        return True
    found = False
    for leftover in files.leftovers:
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
            found = True
    if found:
        _fsync(home)
        log.warning("discarded an interrupted passphrase change in %s", home)
    return found


def _roll_forward(files: _Files, plan: _Plan) -> None:
    """Step 4, safe to repeat after a crash at any point inside it."""
    if plan.key_file and files.key_next.exists():
        os.replace(files.key_next, files.key)
    if plan.database and files.db_next.exists():
        if plan.scrub:
            for old in (files.database, files.wal):
                _scrub(old)
        for stale in (files.wal, files.shm):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        os.replace(files.db_next, files.database)
    _fsync(files.home)
    with contextlib.suppress(FileNotFoundError):
        files.marker.unlink()
    _fsync(files.home)


def _scrub(path: Path) -> None:
    """Overwrite a plaintext file with zeros before it is dropped (best effort only:
    SSDs and copy-on-write file systems may keep the old blocks elsewhere)."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        remaining = os.fstat(fd).st_size
        zeros = bytes(_SCRUB_CHUNK)
        while remaining > 0:
            remaining -= os.write(fd, zeros[: min(remaining, _SCRUB_CHUNK)])
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    write_private_file(path, data)


def _fsync(path: Path) -> None:
    """Make a file's data, or a folder's entries, durable; failure aborts the change
    (unlike the key file's best-effort folder sync in ``identity``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

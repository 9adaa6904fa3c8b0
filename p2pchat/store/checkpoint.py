"""WAL checkpoints in a thread of their own, so a commit never waits for an fsync.

In WAL mode SQLite appends every commit to ``p2pchat.db-wal`` and copies the pages
back into the database file in a *checkpoint*, which fsyncs both files.  By
default the connection that commits past 1,000 pages runs that checkpoint inside
its commit: measured on the node's store (2 vCPUs, single-message commits), such a
commit takes 4 - 8 ms against 0.2 ms for the others, once every few dozen commits,
which was the round trip's p99.  The node commits on its event loop, so every
connection, timer and message waited for that fsync.

A node's store therefore turns SQLite's automatic checkpoint off on its own
connection (``wal_autocheckpoint = 0``) and keeps the WAL bounded with this
:class:`Checkpointer`: after each commit the store looks at the WAL's size (one
``stat``) and, once it passed :data:`WAL_LIMIT`, wakes a thread that runs a
``PASSIVE`` checkpoint on a connection of its own.  ``PASSIVE`` never takes the
write lock and never waits for a busy handler, so the store's commits go on
meanwhile (the sqlite3 module releases the GIL while SQLite works); the next
commit after a complete checkpoint starts the WAL again from its beginning and
cuts the file back to the limit (``journal_size_limit``).

The thread belongs to the store: it is started the first time the WAL passes the
limit (a store that never writes that much never starts one), it takes none of
the store's locks, and :meth:`Checkpointer.stop` joins it (``Store.close`` and the
passphrase change call it), so no thread outlives the store.  Durability is the
same as before: a checkpoint only copies committed pages, and a crash at any
point leaves a WAL that the next opening replays.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

__all__ = ["WAL_LIMIT", "Checkpointer"]

log = logging.getLogger(__name__)

WAL_LIMIT: Final = 4 * 1024 * 1024
"""The WAL size past which the thread checkpoints: about SQLite's own default of
1,000 pages of 4 KiB, so the file stays as large as it was with autocheckpoint."""
CATCH_UP: Final = 3
"""Runs without the store's lock after the first, each copying what commits added
during the one before."""
FEW_FRAMES: Final = 64
"""Frames left for the run under the store's lock: what one or two commits add."""
MIN_INTERVAL: Final = 0.05
"""Seconds between two checkpoints at the most: a reader that keeps the WAL from
being started again (the app reading history) must not turn this into a loop of
fsyncs."""


class Lock(Protocol):
    """The store's lock (a ``threading.RLock``), taken for the short final step."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...
    def release(self) -> None: ...


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` in a thread when the WAL has grown
    past ``limit`` bytes; ``connect`` opens the thread's own connection."""

    def __init__(
        self,
        database: Path,
        connect: Callable[[], sqlite3.Connection],
        store_lock: Lock,
        limit: int | None = None,
    ) -> None:
        self.wal = database.with_name(database.name + "-wal")
        self.limit = WAL_LIMIT if limit is None else limit
        self._connect = connect
        self._store_lock = store_lock
        self._cond = threading.Condition()
        self._wanted = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.runs = 0
        """Checkpoints run so far (what the tests count)."""
        self.cycles = 0
        """Checkpoints completed by their run under the store's lock."""
        self.held = 0.0
        """The longest the store's lock was held for a final run (seconds)."""
        self.failed: str | None = None
        """Why the thread gave up (it could not open or checkpoint); the store then
        lets SQLite checkpoint in its commits again."""

    def poke(self) -> None:
        """After a commit: wake the thread when the WAL passed the limit."""
        if self._size() <= self.limit:
            return
        with self._cond:
            if self._stopping or self.failed is not None:
                return
            self._wanted = True
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"checkpoint {self.wal.name}", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def stop(self) -> None:
        """Stop and join the thread (a checkpoint under way finishes first); a later
        :meth:`poke` starts a new one, with a new connection."""
        with self._cond:
            thread = self._thread
            self._stopping = True
            self._cond.notify()
        if thread is not None:
            thread.join()
        with self._cond:
            self._thread = None
            self._stopping = False
            self._wanted = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            while True:
                with self._cond:
                    while not (self._wanted or self._stopping):
                        self._cond.wait()
                    if self._stopping:
                        return
                    self._wanted = False
                if db is None:
                    db = self._connect()
                    db.execute("PRAGMA wal_autocheckpoint = 0")
                # The bulk of the WAL while commits go on, then what they added meanwhile,
                # until little is left.
                frames = self._checkpoint(db)
                for _ in range(CATCH_UP):
                    again = self._checkpoint(db)
                    if again - frames <= FEW_FRAMES:
                        break
                    frames = again
                # Then the rest, with the store's commits held off: a commit
                # under way would add frames this run does not see, and the WAL can only
                # start again from its beginning once every frame in it was copied.
                while not self._store_lock.acquire(timeout=0.01):
                    if self._stopping:  # the store is closing, holding its lock
                        return
                try:
                    started = time.perf_counter()
                    self._checkpoint(db)
                    self.held = max(self.held, time.perf_counter() - started)
                    self.cycles += 1  # under the lock: no commit came after this run yet
                finally:
                    self._store_lock.release()
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, timeout=MIN_INTERVAL)
        except Exception as exc:  # any error of either binding, or of opening
            self.failed = str(exc) or type(exc).__name__
            log.warning(
                "%s: background checkpoints stopped (%s); SQLite checkpoints in commits again",
                self.wal, self.failed,
            )  # fmt: skip
        finally:
            if db is not None:
                db.close()

    def _checkpoint(self, db: sqlite3.Connection) -> int:
        """One PASSIVE checkpoint; returns the WAL's frames when it began (it copied
        those, unless a reader of another connection still needs some)."""
        _busy, frames, _copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.runs += 1
        return int(frames)

    def _size(self) -> int:
        try:
            return os.stat(self.wal).st_size
        except OSError:
            return 0

"""WAL checkpoints off the event loop: a node's store never checkpoints in its own
commits, a thread of the store's does, the WAL stays bounded, and closing leaves no
thread and a checkpointed database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import p2pchat.store.checkpoint
from p2pchat.store import Store

from .conftest import StartNode, wait_until
from .test_messaging import befriend, bodies

PEER = "b2" * 26
KEY = bytes(range(32))
LIMIT = 64 * 1024


@pytest.fixture(autouse=True)
def small_wal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A WAL limit a test reaches in a few hundred small commits."""
    monkeypatch.setattr(p2pchat.store.checkpoint, "WAL_LIMIT", LIMIT)


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("checkpoint ")]


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def burst(store: Store, n: int, first: int = 0) -> None:
    """``n`` messages through the journal, each folded, marked sent and acknowledged
    in a transaction of its own: the commits of a node in a slow burst."""
    for i in range(first, first + n):
        m = store.queue_message(PEER, f"message {i}", now=float(i))
        with store.batch():
            store.mark_sent(PEER, m.seq, float(i), from_seq=m.seq)
            store.ack_outgoing(PEER, m.seq, float(i))


def wal(store: Store) -> Path:
    return store.path.with_name(store.path.name + "-wal")


def assert_cut_back(store: Store) -> None:
    """Once a checkpoint copied the whole WAL (its last run holds the store's lock, so
    no commit overtakes it), the next commit starts the WAL again from its beginning
    and cuts the file back to the limit: it stays bounded however long the burst."""
    checkpointer = store._checkpointer
    assert checkpointer is not None
    cycles = checkpointer.cycles
    if wal(store).stat().st_size > LIMIT:  # the last commit woke the thread
        wait_for(lambda: checkpointer.cycles > cycles)
    store.set_view_state("open", "x")  # any commit
    assert wal(store).stat().st_size <= LIMIT


def autocheckpoint(store: Store) -> int:
    with store._read() as db:
        return int(db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "sqlcipher"])
def test_a_node_store_checkpoints_in_a_thread_and_keeps_the_wal_bounded(
    tmp_path: Path, key: bytes | None
) -> None:
    store = Store(tmp_path / "p2pchat.db", key=key, journal=True)
    store.add_contact(PEER, "bob", now=0.0)
    checkpointer = store._checkpointer
    assert checkpointer is not None and checkpointer.limit == LIMIT
    assert autocheckpoint(store) == 0  # its commits never checkpoint
    burst(store, 200)
    wait_for(lambda: checkpointer.runs >= 2)
    assert checkpointer.failed is None
    assert len(checkpoint_threads()) == 1
    assert_cut_back(store)
    store.close()
    assert checkpoint_threads() == []
    assert not wal(store).exists()  # the last connection checkpointed all of it
    reopened = Store(tmp_path / "p2pchat.db", key=key)
    assert [m.body for m in reopened.history(PEER)] == [f"message {i}" for i in range(200)]
    assert {m.state for m in reopened.history(PEER)} == {"delivered"}
    reopened.close()


def count_from_another_process(database: Path) -> int:
    """Rows of ``messages`` as another process sees them; its connection closes after."""
    script = (
        "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]);"
        " print(db.execute('SELECT count(*) FROM messages').fetchone()[0]); db.close()"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(database)], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_the_thread_leaves_the_node_connections_locks_alone(tmp_path: Path) -> None:
    """Opening the thread's connection must not read the database file itself: closing
    any descriptor of a file drops the process's POSIX locks on it, SQLite's too, and
    another process closing its connection then took itself for the last one open,
    checkpointed the WAL and deleted it under the node, which kept committing to the
    deleted file: everything it wrote after that was lost."""
    store = Store(tmp_path / "p2pchat.db", journal=True)
    store.add_contact(PEER, "bob", now=0.0)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    burst(store, 100)
    wait_for(lambda: checkpointer.runs >= 1)  # its connection is open
    assert count_from_another_process(store.path) == 100
    burst(store, 10, first=100)
    assert count_from_another_process(store.path) == 110
    store.close()
    assert count_from_another_process(store.path) == 110


def test_the_copy_runs_while_the_store_is_busy(tmp_path: Path) -> None:
    """The bulk of a checkpoint never takes the store's lock: it goes on while a store
    call holds it (on the node's loop, any store call), and only the final run, for
    the few frames added meanwhile, waits for the lock."""
    store = Store(tmp_path / "p2pchat.db", journal=True)
    store.add_contact(PEER, "bob", now=0.0)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    with store._lock:
        burst(store, 200)
        wait_for(lambda: checkpointer.runs >= 1)  # while this thread holds the lock
    store.close()
    assert checkpoint_threads() == []


def test_a_store_without_a_node_lets_sqlite_checkpoint(tmp_path: Path) -> None:
    store = Store(tmp_path / "p2pchat.db")  # a CLI command's, a script's
    assert store._checkpointer is None
    assert autocheckpoint(store) == 1000
    store.close()
    forced = Store(tmp_path / "p2pchat.db", background_checkpoints=False, journal=True)
    assert forced._checkpointer is None and autocheckpoint(forced) == 1000
    forced.close()


def test_a_checkpointer_that_fails_gives_checkpoints_back_to_sqlite(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "p2pchat.db", journal=True)
    store.add_contact(PEER, "bob", now=0.0)
    checkpointer = store._checkpointer
    assert checkpointer is not None

    def cannot_open() -> object:
        raise OSError("no file descriptors left")

    checkpointer._connect = cannot_open  # type: ignore[assignment]
    burst(store, 200)
    wait_for(lambda: checkpointer.failed is not None)
    burst(store, 1, first=200)  # the next commit notices
    assert store._checkpointer is None
    assert autocheckpoint(store) == 1000
    assert "background checkpoints stopped (no file descriptors left)" in caplog.text
    store.close()
    assert checkpoint_threads() == []


def test_the_thread_is_stopped_while_the_database_is_offline(tmp_path: Path) -> None:
    store = Store(tmp_path / "p2pchat.db", journal=True)
    store.add_contact(PEER, "bob", now=0.0)
    burst(store, 200)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    wait_for(lambda: checkpointer.runs >= 1)
    with store.offline():
        assert checkpoint_threads() == []  # its connection must not outlive the file
    burst(store, 200, first=200)  # a new thread, on the reopened database
    runs = checkpointer.runs
    wait_for(lambda: checkpointer.runs > runs)
    store.close()
    assert checkpoint_threads() == []


async def test_a_long_burst_between_nodes_keeps_both_wals_bounded(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 512 * 1024
    monkeypatch.setattr(p2pchat.store.checkpoint, "WAL_LIMIT", limit)
    a = await start_node("alice")
    b = await start_node("bob")
    befriend(a, b)
    await wait_until(lambda: a.is_online(b.peer_id) and b.is_online(a.peer_id))
    assert autocheckpoint(a.store) == 0 and autocheckpoint(b.store) == 0
    checkpointers = [node.store._checkpointer for node in (a, b)]
    # Until each WAL was checkpointed twice: how many messages that takes depends on
    # how many commits the burst is cut into (fewer, larger ones on a fast machine)
    # and on the pause between a thread's runs.
    n = 0
    while n < 30_000 and not all(c is not None and c.cycles >= 2 for c in checkpointers):
        for i in range(n, n + 1000):
            a.send_message("b", f"m {i:05d}")
            if i % 100 == 0:
                await wait_until(lambda: len(a.store.outbox(b.peer_id)) < 500, timeout=60)
        n += 1000
        await wait_until(lambda: a.store.outbox(b.peer_id) == [], timeout=60)
    assert bodies(b, "a", "in") == [f"m {i:05d}" for i in range(n)]
    for checkpointer in checkpointers:
        assert checkpointer is not None and checkpointer.failed is None
        assert checkpointer.cycles >= 2
    # Every time a WAL passed the limit, a checkpoint followed and the next commit cut
    # the file back: an exchange commits on both sides.
    def cut_back() -> bool:
        return all(wal(n.store).stat().st_size <= limit for n in (a, b))

    for i in range(200):
        if cut_back():
            break
        b.send_message("a", f"r {i}")
        await wait_until(lambda: b.store.outbox(a.peer_id) == [], timeout=30)
        await asyncio.sleep(0.1)
    assert cut_back()

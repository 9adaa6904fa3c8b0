"""A node's store makes a received text message durable by a journal append, decides it
against the receive window and intake held in memory, and folds it into the tables with
the next commit.  Nothing may tell the difference from a commit per burst: the same
verdicts (tests/test_store_inbox.py checks them against one message at a time), the
same rows after a crash at any point, the same refusals."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from p2pchat.core import chat
from p2pchat.store import Store, StoreError
from p2pchat.store import database as database_module
from p2pchat.store import journal as journal_module
from p2pchat.store.journal import JournalCorrupt, encode, journal_path, parse

from .test_fold_acks import statements

PEER = "b2" * 26
NOW = 86400.0 * 20000 + 5.0


def frame(seq: int, body: str = "hi", *, mid: str | None = None) -> chat.ChatMessage:
    return chat.ChatMessage(id=mid or f"{seq:032x}", seq=seq, base=1, sent_at=1.0 + seq, body=body)


def journaled_ids(store: Store) -> list[str]:
    return [e.id for e in parse(journal_path(store.path).read_bytes()).entries]


def rows(path: Path) -> list[tuple[object, ...]]:
    """What another connection reads from the tables (committed rows only)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT id, direction, seq, body, created_at, received_at, state FROM messages"
            " ORDER BY pos"
        ).fetchall()
    finally:
        db.close()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "p2pchat.db", journal=True)
    s.add_contact(PEER, "bob", now=0.0)
    return s


def test_a_text_burst_is_journaled_without_a_transaction(store: Store) -> None:
    ran = statements(store)
    results = store.receive_messages(PEER, [frame(1), frame(2), frame(3)], now=NOW)
    assert [r.verdict for r in results] == ["accept"] * 3
    assert [r.recv_seq for r in results] == [1, 2, 3]
    # Reads only: the window and intake once, the ids that could be new once.
    assert all(s.lstrip().upper().startswith("SELECT") for s in ran), ran
    assert len(ran) <= 3, ran
    assert journaled_ids(store) == [f"{i:032x}" for i in (1, 2, 3)]
    assert rows(store.path) == []  # nothing committed yet...
    more = store.receive_messages(PEER, [frame(4)], now=NOW)
    assert [r.verdict for r in more] == ["accept"]
    assert len(ran) <= 4, ran  # ...and the next burst reads only the id it may add
    # Any read folds first: it sees the messages as if each had been committed.
    assert [m.seq for m in store.history(PEER)] == [1, 2, 3, 4]
    assert store.recv_seq(PEER) == 4
    assert store.intake_today(PEER, now=NOW) == (8, 4)
    assert [r[2] for r in rows(store.path)] == [1, 2, 3, 4]
    assert journal_path(store.path).stat().st_size == 0
    store.close()


def test_the_window_and_intake_count_what_is_pending(store: Store) -> None:
    assert (
        store.receive_messages(PEER, [frame(1, "x" * 6)], now=NOW, daily_quota=10)[0].verdict
        == "accept"
    )
    # Not folded: the second message finds the first's bytes and seq in memory.
    results = store.receive_messages(
        PEER, [frame(1, "again"), frame(2, "x" * 6)], now=NOW, daily_quota=10
    )
    assert [r.verdict for r in results] == ["duplicate", "quota"]
    assert results[1].recv_seq == 1
    # A new seq reusing an id that is only in the journal is a duplicate too.
    assert (
        store.receive_messages(PEER, [frame(2, "y", mid=f"{1:032x}")], now=NOW)[0].verdict
        == "duplicate"
    )
    # So is one reusing the id of our own message that waits in the journal.
    mine = store.queue_messages(PEER, ["mine"], now=NOW)[0]
    assert store.pending
    assert (
        store.receive_messages(PEER, [frame(2, "y", mid=mine.id)], now=NOW)[0].verdict
        == "duplicate"
    )
    assert store.recv_seq(PEER) == 1
    assert store.intake_today(PEER, now=NOW) == (6, 1)
    store.close()


def test_the_next_day_starts_a_new_intake(store: Store) -> None:
    assert (
        store.receive_messages(PEER, [frame(1, "x" * 8)], now=NOW, daily_quota=10)[0].verdict
        == "accept"
    )
    tomorrow = NOW + 86400.0
    got = store.receive_messages(PEER, [frame(2, "x" * 8)], now=tomorrow, daily_quota=10)
    assert got[0].verdict == "accept"
    assert store.intake_today(PEER, now=tomorrow) == (8, 1)
    store.close()


def test_an_edit_goes_through_a_transaction_that_sees_the_pending_message(
    store: Store,
) -> None:
    store.receive_messages(PEER, [frame(1, "helo")], now=NOW)
    assert store.pending
    edit = chat.ChatMessage(
        id=f"{2:032x}", seq=2, base=1, sent_at=3.0, body="hello", kind="edit",
        target=f"{1:032x}",
    )  # fmt: skip
    result = store.receive_messages(PEER, [edit], now=NOW)[0]
    assert result.verdict == "accept" and result.changed is not None
    assert result.changed.body == "hello"
    assert not store.pending  # the transaction folded the journal first
    assert [m.body for m in store.history(PEER) if m.kind == "text"] == ["hello"]
    store.close()


def test_too_much_pending_is_received_in_transactions(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database_module, "MAX_PENDING", 2)
    store.receive_messages(PEER, [frame(1), frame(2)], now=NOW)
    assert len(store._pending) == 2
    ran = statements(store)
    assert store.receive_messages(PEER, [frame(3)], now=NOW)[0].verdict == "accept"
    assert any(s.startswith("BEGIN") for s in ran), ran  # a fold, then the row
    assert not store.pending
    assert [r[2] for r in rows(store.path)] == [1, 2, 3]
    store.close()


def test_a_failed_append_accepts_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.receive_messages(PEER, [frame(1)], now=NOW)

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal_module.os, "write", full)
    with pytest.raises(StoreError, match="full"):
        store.receive_messages(PEER, [frame(2), frame(3)], now=NOW)
    monkeypatch.undo()
    # Neither the window nor the intake moved: the contact's resend is accepted.
    assert [r.verdict for r in store.receive_messages(PEER, [frame(2)], now=NOW)] == ["accept"]
    assert [m.seq for m in store.history(PEER)] == [1, 2]
    assert store.intake_today(PEER, now=NOW) == (4, 2)
    store.close()


# A store receives, then its process is killed before any commit.
KILLED_AFTER_RECEIVE = """
import os, signal, sys
from pathlib import Path
from p2pchat.core import chat
from p2pchat.store import Store

store = Store(Path(sys.argv[1]), journal=True)
peer = "b2" * 26
frames = [chat.ChatMessage(id=f"{i:032x}", seq=i, base=1, sent_at=1.0, body=f"m {i}")
          for i in range(1, 6)]
results = store.receive_messages(peer, frames, now=86400.0 * 20000 + 5.0)
assert [r.verdict for r in results] == ["accept"] * 5
assert store.pending
print("received", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_after_the_append_keeps_every_acknowledged_message(tmp_path: Path) -> None:
    path = tmp_path / "p2pchat.db"
    with Store(path) as setup:
        setup.add_contact(PEER, "bob", now=0.0)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_RECEIVE, str(path)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.strip() == "received"
    assert rows(path) == []  # only the journal holds them
    with Store(path, journal=True) as store:
        history = store.history(PEER)
        assert [(m.seq, m.body, m.direction, m.state) for m in history] == [
            (i, f"m {i}", "in", "delivered") for i in range(1, 6)
        ]
        assert store.recv_seq(PEER) == 5
        assert store.intake_today(PEER, now=NOW) == (15, 5)
        # The sender resends after the crash: duplicates, acknowledged again.
        again = store.receive_messages(PEER, [frame(5, "m 5")], now=NOW)
        assert again[0].verdict == "duplicate" and again[0].recv_seq == 5


def test_a_crash_after_the_fold_committed_folds_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p2pchat.db"
    store = Store(path, journal=True)
    store.add_contact(PEER, "bob", now=0.0)
    store.receive_messages(PEER, [frame(1), frame(2)], now=NOW)
    data = journal_path(path).read_bytes()
    store.close()  # folds and empties the journal...
    journal_path(path).write_bytes(data)  # ...which a crash would have left full
    with Store(path, journal=True) as reopened:
        assert [m.seq for m in reopened.history(PEER)] == [1, 2]
        assert reopened.intake_today(PEER, now=NOW) == (4, 2)
        assert journal_path(path).stat().st_size == 0


def test_a_journal_that_skips_a_received_seq_is_not_this_database(tmp_path: Path) -> None:
    path = tmp_path / "p2pchat.db"
    store = Store(path, journal=True)
    store.add_contact(PEER, "bob", now=0.0)
    store.receive_messages(PEER, [frame(1), frame(2)], now=NOW)
    entries = parse(journal_path(path).read_bytes()).entries
    store.close()
    # A record of message 5 when the database holds 2: refused, with the file named.
    record = dataclasses.replace(entries[1], seq=5, id="x" * 32)
    journal_path(path).write_bytes(encode([record]))
    with pytest.raises(JournalCorrupt, match="from"):
        Store(path, journal=True)

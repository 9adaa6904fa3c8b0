"""Tests for the SQLite store, against real database files."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from p2pchat.store import (
    MAX_ADDRESSES,
    MAX_PENDING_REQUESTS,
    MIGRATIONS,
    AmbiguousContact,
    ContactExists,
    ReceiveResult,
    Store,
    StoreError,
    UnknownContact,
)

ALICE = "a1" * 16
BOB = "b2" * 16
CAROL = "c3" * 16
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "node.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as s:
        yield s


# -- opening, migrations, file ---------------------------------------------


def test_fresh_database_is_fully_migrated(store: Store, db_path: Path) -> None:
    assert store.schema_version == len(MIGRATIONS)
    with sqlite3.connect(db_path) as raw:
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    assert {"contacts", "conversations", "messages", "outbox", "requests", "invite_tokens"} <= (
        tables
    )


def test_wal_mode_and_pragmas(store: Store, db_path: Path) -> None:
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._connection().execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store._connection().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert store._connection().execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_file_is_private(store: Store, db_path: Path) -> None:
    store.queue_message(BOB, "hi", now=1.0)
    for path in db_path.parent.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_reopen_keeps_data_and_does_not_remigrate(db_path: Path) -> None:
    with Store(db_path) as s:
        s.add_contact(BOB, "Bob", addresses=["10.0.0.2:7000"], now=1.0)
        s.queue_message(BOB, "one", now=2.0)
    with Store(db_path) as s:
        contact = s.get_contact(BOB)
        assert contact is not None and contact.addresses == ("10.0.0.2:7000",)
        assert [m.body for m in s.outbox(BOB)] == ["one"]
        assert s.queue_message(BOB, "two", now=3.0).seq == 2


def test_the_check_constraint_rewrite_touches_no_row_and_still_checks(db_path: Path) -> None:
    """The messages table's CHECK constraints are rewritten without IN lists (SQLite
    builds a temporary b-tree of such a list for every row it checks): only the
    schema's text changes, so it takes no time on a million messages, the rows stay
    as they were, and a value outside the list is still refused."""
    import p2pchat.store.schema as store_module

    step = next(i for i, s in enumerate(MIGRATIONS) if "writable_schema" in s)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(db_path, isolation_level=None)
    for old in MIGRATIONS[:step]:
        for statement in store_module._split_statements(old):
            raw.execute(statement)
    raw.execute(f"PRAGMA user_version = {step}")
    raw.executemany(
        "INSERT INTO messages (id, peer_id, direction, seq, body, created_at, state,"
        " updated_at) VALUES (?, ?, 'in', ?, 'hello', 1, 'delivered', 1)",
        [(f"m{i}", BOB, i) for i in range(1, 101)],
    )
    rows = raw.execute("SELECT * FROM messages ORDER BY pos").fetchall()
    before = raw.total_changes
    store_module.migrate(raw, db_path)
    assert raw.total_changes - before == 1  # the one row of sqlite_master, no message
    table = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'messages'").fetchone()[0]
    assert " IN (" not in table and "state = 'read'" in table
    assert raw.execute("SELECT * FROM messages ORDER BY pos").fetchall() == rows
    assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    for bad in ("direction", "state", "kind"):
        values = {"direction": "'in'", "state": "'read'", "kind": "'text'", bad: "'other'"}
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            raw.execute(
                "INSERT INTO messages (id, peer_id, seq, body, created_at, updated_at,"
                f" direction, state, kind) VALUES ('x', ?, 999, '', 1, 1, {values['direction']},"
                f" {values['state']}, {values['kind']})",
                (BOB,),
            )
    raw.close()
    with Store(db_path) as s:
        assert s.schema_version == len(MIGRATIONS)
        assert len(s.history(BOB)) == 100


def test_migration_to_per_conversation_ids_keeps_everything(db_path: Path) -> None:
    """A database from before ids were per conversation: rows, outbox, counters and
    the position counter all survive the rebuild, and the foreign key still cascades."""
    import p2pchat.store.schema as store_module

    rebuild = next(i for i, step in enumerate(MIGRATIONS) if "messages_v4" in step)
    old = store_module.MIGRATIONS[:rebuild]
    db_path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("PRAGMA foreign_keys = ON")
    for step in old:
        for statement in store_module._split_statements(step):
            raw.execute(statement)
    raw.execute(f"PRAGMA user_version = {len(old)}")
    raw.execute(
        "INSERT INTO messages (pos, id, peer_id, direction, seq, body, created_at, state,"
        " updated_at) VALUES (7, 'm1', ?, 'out', 1, 'queued one', 1, 'sent', 1),"
        " (9, 'm2', ?, 'in', 1, 'from carol', 1, 'delivered', 1)",
        (BOB, CAROL),
    )
    raw.execute("INSERT INTO outbox (message_id, peer_id, seq) VALUES ('m1', ?, 1)", (BOB,))
    raw.execute("DELETE FROM messages WHERE pos = 9")  # the counter must stay at 9
    raw.execute("INSERT INTO conversations (peer_id, send_seq) VALUES (?, 1)", (BOB,))
    raw.close()
    with Store(db_path) as s:
        assert s.schema_version == len(MIGRATIONS)
        assert [m.body for m in s.outbox(BOB)] == ["queued one"]
        following = s.queue_message(BOB, "next", now=2.0)
        assert following.seq == 2
        positions = s._connection().execute("SELECT pos FROM messages ORDER BY pos").fetchall()
        assert positions == [(7,), (10,)]
        assert s.ack_outgoing(BOB, 1, now=3.0) == ["m1"]
        s._connection().execute("DELETE FROM messages WHERE id = ?", (following.id,))
        assert s.outbox(BOB) == []
        assert s._connection().execute("PRAGMA foreign_key_check").fetchall() == []


def test_newer_schema_is_refused(db_path: Path) -> None:
    Store(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer p2pchat"):
        Store(db_path)


def test_migration_steps_are_atomic_and_incremental(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import p2pchat.store.schema as store_module

    with Store(db_path) as s:
        s.queue_message(BOB, "kept", now=1.0)
    broken = "CREATE TABLE extra (x INTEGER);\n-- the next statement fails\nSELECT no_such_fn();\n"
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(StoreError):
        Store(db_path)
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert raw.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'extra'"
        ).fetchone() == (0,)
    step = "CREATE TABLE extra (x INTEGER);\nINSERT INTO extra VALUES (1);\n"
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, step))
    with Store(db_path) as s:
        assert s.schema_version == len(MIGRATIONS) + 1
        assert [m.body for m in s.outbox(BOB)] == ["kept"]
    with Store(db_path) as s:  # already applied: not run twice
        assert s._connection().execute("SELECT count(*) FROM extra").fetchone() == (1,)


def test_closed_store_raises(db_path: Path) -> None:
    s = Store(db_path)
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.list_contacts()


# -- contacts ---------------------------------------------------------------


def test_contact_crud(store: Store) -> None:
    c = store.add_contact(BOB, "Bob", addresses=["h1:1", "h2:2", "h1:1"], now=5.0)
    assert (c.name, c.verified, c.added_at, c.addresses) == ("Bob", False, 5.0, ("h1:1", "h2:2"))
    assert c.last_seen is None and c.last_address is None

    # Adding again merges addresses (newest first), keeps added_at, never unverifies.
    store.set_verified(BOB, True)
    again = store.add_contact(BOB, None, addresses=["h3:3", "h2:2"], now=9.0)
    assert again.addresses == ("h3:3", "h2:2", "h1:1")
    assert again.name == "Bob" and again.added_at == 5.0 and again.verified

    assert store.rename_contact(BOB, "  Robert ").name == "Robert"
    assert store.set_verified(BOB, False).verified is False
    assert store.set_addresses(BOB, ["x:1"]).addresses == ("x:1",)
    store.add_contact(ALICE, "alice", now=1.0)
    assert [c.name for c in store.list_contacts()] == ["alice", "Robert"]

    store.remove_contact(BOB)
    assert store.get_contact(BOB) is None
    with pytest.raises(UnknownContact):
        store.remove_contact(BOB)
    with pytest.raises(UnknownContact):
        store.rename_contact(BOB, "x")


def test_the_contact_list_follows_every_write(store: Store, db_path: Path) -> None:
    """``list_contacts`` keeps its last answer while the database is unchanged (the dial
    loop asks every second): a write of this store, a rolled-back one and a commit by
    another connection each show at once."""
    store.add_contact(BOB, "Bob", addresses=["h1:1"], now=1.0)
    first = store.list_contacts()
    assert [c.name for c in first] == ["Bob"]
    assert store.list_contacts() == first
    store.set_addresses(BOB, ["h2:2"])
    assert [c.addresses for c in store.list_contacts()] == [("h2:2",)]
    with pytest.raises(RuntimeError), store.batch():
        store.add_contact(ALICE, "alice", now=2.0)
        assert [c.name for c in store.list_contacts()] == ["alice", "Bob"]
        raise RuntimeError("roll the batch back")
    assert [c.name for c in store.list_contacts()] == ["Bob"]
    other = sqlite3.connect(db_path)
    with other:
        other.execute("UPDATE contacts SET name = 'Robert' WHERE peer_id = ?", (BOB,))
    other.close()
    assert [c.name for c in store.list_contacts()] == ["Robert"]


def test_contact_names_are_unique_and_valid(store: Store) -> None:
    store.add_contact(ALICE, "Alice", now=1.0)
    # Names reaching add_contact may come from peers: collisions are suffixed, not refused.
    assert store.add_contact(BOB, "ALICE", now=1.0).name == f"ALICE-{BOB[:6]}"
    assert store.add_contact(BOB, "Bob", now=1.0).name == "Bob"
    assert store.add_contact(BOB, "alice", now=1.0).name == f"alice-{BOB[:6]}"
    store.rename_contact(BOB, "Bob")
    with pytest.raises(ContactExists):
        store.rename_contact(BOB, "alice")
    store.rename_contact(ALICE, "alice")  # renaming to itself is fine
    with pytest.raises(ValueError):
        store.rename_contact(BOB, "   ")
    with pytest.raises(ValueError):
        store.add_contact(CAROL, "x" * 65, now=1.0)
    assert store.add_contact(CAROL, None, now=1.0).name == f"peer-{CAROL[:8]}"


def test_record_seen(store: Store) -> None:
    assert store.record_seen(BOB, "1.2.3.4:5", now=1.0) is None  # strangers are ignored
    store.add_contact(BOB, "Bob", addresses=[f"h{i}:1" for i in range(MAX_ADDRESSES)], now=1.0)
    c = store.record_seen(BOB, "new:9", now=7.0)
    assert c is not None
    assert (c.last_seen, c.last_address) == (7.0, "new:9")
    assert c.addresses[0] == "new:9" and len(c.addresses) == MAX_ADDRESSES
    assert "h7:1" not in c.addresses
    c = store.record_seen(BOB, "h3:1", now=8.0)
    assert c is not None and c.addresses[0] == "new:9" and c.last_address == "h3:1"


def test_find_contact(store: Store) -> None:
    store.add_contact("abcd1111", "Alice", now=1.0)
    store.add_contact("abcd2222", "Alan", now=1.0)
    store.add_contact("ffff0000", "Bob", now=1.0)
    store.add_contact("alx00000", "zed", now=1.0)

    assert store.find_contact("abcd1111").name == "Alice"  # exact id
    assert store.find_contact("alice").peer_id == "abcd1111"  # case-insensitive name
    assert store.find_contact("abcd2").name == "Alan"  # unique id prefix
    assert store.find_contact("ffff").name == "Bob"
    assert store.find_contact("bo").name == "Bob"  # name prefix
    assert store.find_contact("alx0").name == "zed"  # id prefix wins over name prefix

    with pytest.raises(AmbiguousContact) as excinfo:
        store.find_contact("abcd")
    assert "Alice" in str(excinfo.value) and "Alan" in str(excinfo.value)
    assert set(excinfo.value.candidates) == {"abcd1111", "abcd2222"}
    with pytest.raises(AmbiguousContact, match="Alan"):
        store.find_contact("al")
    with pytest.raises(UnknownContact):
        store.find_contact("carol")
    with pytest.raises(UnknownContact):
        store.find_contact("fff")  # too short for an id prefix, and no such name
    with pytest.raises(UnknownContact):
        store.find_contact("  ")


# -- outgoing messages --------------------------------------------------------


def test_queue_send_ack_cycle(store: Store) -> None:
    assert store.outbox_base(BOB) == 1
    msgs = [store.queue_message(BOB, f"m{i}", now=10.0 + i) for i in range(1, 5)]
    assert [m.seq for m in msgs] == [1, 2, 3, 4]
    assert all(m.state == "queued" and m.direction == "out" for m in msgs)
    assert store.get_message(msgs[0].id) == msgs[0]
    assert [m.id for m in store.outbox(BOB)] == [m.id for m in msgs]
    assert store.outbox_peers() == [BOB]
    assert store.outbox_base(BOB) == 1

    assert store.mark_sent(BOB, 2, now=20.0) == [msgs[0].id, msgs[1].id]
    assert store.mark_sent(BOB, 4, now=21.0) == [msgs[2].id, msgs[3].id]
    assert store.mark_sent(BOB, 4, now=22.0) == []  # retransmission changes no state
    attempts = store._connection().execute("SELECT seq, attempts FROM outbox ORDER BY seq")
    assert attempts.fetchall() == [(1, 3), (2, 3), (3, 2), (4, 2)]

    assert store.ack_outgoing(BOB, 2, now=30.0) == [msgs[0].id, msgs[1].id]
    assert store.ack_outgoing(BOB, 2, now=31.0) == []  # repeated ack
    assert store.outbox_base(BOB) == 3
    assert [m.seq for m in store.outbox(BOB)] == [3, 4]
    assert store.ack_outgoing(BOB, 4, now=32.0) == [msgs[2].id, msgs[3].id]
    assert store.outbox(BOB) == []
    assert store.outbox_peers() == []
    assert store.outbox_base(BOB) == 5
    states = [m.state for m in store.history(BOB)]
    assert states == ["delivered"] * 4
    delivered = store.get_message(msgs[3].id)
    assert delivered is not None and delivered.updated_at == 32.0


def test_ack_beyond_send_seq_is_ignored(store: Store) -> None:
    first = store.queue_message(BOB, "one", now=1.0)
    store.queue_message(BOB, "two", now=1.0)
    assert store.ack_outgoing(BOB, 3, now=2.0) == []
    assert store.ack_outgoing(BOB, 0, now=2.0) == []
    assert store.ack_outgoing(CAROL, 1, now=2.0) == []
    assert len(store.outbox(BOB)) == 2
    # Queued but never transmitted: the peer cannot have received them.
    assert store.ack_outgoing(BOB, 1, now=2.0) == []
    store.mark_sent(BOB, 1, now=2.0, from_seq=1)
    # An ack naming the untransmitted second message is refused whole.
    assert store.ack_outgoing(BOB, 2, now=2.0) == []
    assert len(store.outbox(BOB)) == 2
    assert store.ack_outgoing(BOB, 1, now=2.0) == [first.id]
    # A later message must not be deliverable by an ack that predates it.
    assert store.mark_read_outgoing(BOB, 3, now=3.0) == []


def test_read_receipts_for_outgoing(store: Store) -> None:
    msgs = [store.queue_message(BOB, str(i), now=1.0) for i in range(3)]
    store.mark_sent(BOB, 3, now=2.0)
    assert store.mark_read_outgoing(BOB, 2, now=3.0) == []  # not delivered yet
    store.ack_outgoing(BOB, 2, now=4.0)
    assert store.mark_read_outgoing(BOB, 3, now=5.0) == [msgs[0].id, msgs[1].id]
    assert [m.state for m in store.history(BOB)] == ["read", "read", "sent"]
    assert store.mark_read_outgoing(BOB, 2, now=6.0) == []


def test_queue_with_explicit_id_is_idempotent(store: Store) -> None:
    m = store.queue_message(BOB, "hi", now=1.0, message_id="fixed")
    assert store.queue_message(BOB, "hi", now=2.0, message_id="fixed") == m
    assert len(store.outbox(BOB)) == 1
    receive(store, 1, mid="theirs")
    with pytest.raises(StoreError):
        store.queue_message(BOB, "hi", now=2.0, message_id="theirs")
    assert store.queue_message(BOB, "x", now=3.0).seq == 2  # the failed call used no seq
    # Ids are per conversation: another contact may use the same one.
    assert store.queue_message(CAROL, "hi", now=2.0, message_id="fixed").seq == 1


def test_messages_do_not_need_a_contact_and_survive_removal(store: Store) -> None:
    store.add_contact(BOB, "Bob", now=1.0)
    store.queue_message(BOB, "a", now=1.0)
    store.remove_contact(BOB)
    store.add_contact(BOB, "Bob", now=2.0)
    assert store.queue_message(BOB, "b", now=3.0).seq == 2
    assert [m.body for m in store.outbox(BOB)] == ["a", "b"]


# -- incoming messages --------------------------------------------------------


def receive(
    store: Store, seq: int, *, base: int = 1, mid: str | None = None, peer: str = BOB
) -> ReceiveResult:
    return store.receive_message(
        peer,
        message_id=mid or f"{peer[:4]}-{seq}",
        seq=seq,
        base=base,
        body=f"body {seq}",
        sent_at=100.0 + seq,
        now=200.0 + seq,
    )


def test_receive_in_order_duplicate_and_gap(store: Store) -> None:
    r1 = receive(store, 1)
    assert r1.verdict == "accept" and r1.recv_seq == 1
    assert r1.message is not None
    assert (r1.message.direction, r1.message.state) == ("in", "delivered")
    assert (r1.message.created_at, r1.message.received_at) == (101.0, 201.0)
    assert store.get_message("b2b2-1") == r1.message

    assert receive(store, 2).verdict == "accept"
    dup = receive(store, 2)
    assert (dup.verdict, dup.message, dup.recv_seq) == ("duplicate", None, 2)
    gap = receive(store, 4, base=3)
    assert (gap.verdict, gap.message, gap.recv_seq) == ("gap", None, 2)
    assert receive(store, 3, base=3).recv_seq == 3
    assert receive(store, 4, base=3).recv_seq == 4
    assert store.recv_seq(BOB) == 4
    assert [m.seq for m in store.history(BOB)] == [1, 2, 3, 4]


def test_receive_base_jump(store: Store) -> None:
    assert store.recv_seq(BOB) == 0
    r = receive(store, 57, base=57)
    assert (r.verdict, r.recv_seq) == ("accept", 57)
    assert receive(store, 59, base=57).verdict == "gap"
    assert receive(store, 58, base=57).verdict == "accept"


def test_known_message_id_is_a_duplicate(store: Store) -> None:
    receive(store, 1, mid="same")
    r = receive(store, 2, mid="same")
    assert (r.verdict, r.recv_seq) == ("duplicate", 1)
    assert len(store.history(BOB)) == 1
    # An id we used for an outgoing message in this conversation cannot be smuggled in.
    out = store.queue_message(CAROL, "mine", now=1.0)
    assert receive(store, 1, mid=out.id, peer=CAROL).verdict == "duplicate"


def test_another_contacts_message_id_is_not_a_duplicate(store: Store) -> None:
    """Dedup is by (peer, id): a contact reusing another contact's id (or one of our
    own outgoing ids to someone else) blocks nothing."""
    receive(store, 1, mid="shared", peer=CAROL)
    out = store.queue_message(CAROL, "mine", now=1.0)
    assert receive(store, 1, mid="shared").verdict == "accept"
    assert receive(store, 2, mid=out.id).verdict == "accept"
    assert [m.body for m in store.history(BOB)] == ["body 1", "body 2"]
    assert store.get_message(out.id) == out
    assert store.get_message("shared", peer_id=BOB) is not None


def test_daily_quota_refuses_without_storing(store: Store) -> None:
    day = 86400.0 * 20000
    ok = store.receive_message(
        BOB, message_id="a" * 32, seq=1, base=1, body="x" * 600, sent_at=1.0,
        now=day + 10, daily_quota=1000,
    )  # fmt: skip
    assert ok.verdict == "accept"
    refused = store.receive_message(
        BOB, message_id="b" * 32, seq=2, base=1, body="y" * 600, sent_at=1.0,
        now=day + 20, daily_quota=1000,
    )  # fmt: skip
    assert (refused.verdict, refused.recv_seq, refused.retry_at) == ("quota", 1, day + 86400)
    assert store.intake_today(BOB, now=day + 30) == (600, 1)
    later = store.receive_message(
        BOB, message_id="b" * 32, seq=2, base=1, body="y" * 600, sent_at=1.0,
        now=day + 86400, daily_quota=1000,
    )  # fmt: skip
    assert later.verdict == "accept"


def test_incoming_read_marker(store: Store) -> None:
    for seq in range(1, 6):
        receive(store, seq)
    assert store.unread_count(BOB) == 5
    assert store.mark_read_incoming(BOB, 3, now=500.0) == 3
    assert store.unread_count(BOB) == 2
    assert store.mark_read_incoming(BOB, 2) == 3  # never backwards
    assert store.mark_read_incoming(BOB, 99) == 5  # never past what we hold
    assert store.unread_count(BOB) == 0
    states = {m.seq: (m.state, m.updated_at) for m in store.history(BOB)}
    assert states[1] == ("read", 500.0) and states[5] == ("read", 205.0)
    assert store.mark_read_incoming(CAROL, 4) == 0


def test_history_is_insertion_order_with_limit(store: Store) -> None:
    receive(store, 1)
    mine = store.queue_message(BOB, "reply", now=1.0)  # earlier timestamp, later row
    receive(store, 2)
    store.queue_message(CAROL, "elsewhere", now=2.0)
    ids = [m.id for m in store.history(BOB)]
    assert ids == ["b2b2-1", mine.id, "b2b2-2"]
    assert [m.id for m in store.history(BOB, limit=2)] == ids[1:]
    assert store.history(BOB, limit=0) == []
    assert store.get_message("nope") is None


def test_thousand_receives_are_fast(store: Store) -> None:
    start = time.perf_counter()
    for seq in range(1, 1001):
        receive(store, seq)
    elapsed = time.perf_counter() - start
    assert store.recv_seq(BOB) == 1000
    assert elapsed < 3.0, f"1000 receive_message calls took {elapsed:.2f}s"


# -- two connections, two processes -------------------------------------------


def test_second_store_sees_committed_writes(db_path: Path) -> None:
    with Store(db_path) as one, Store(db_path) as two:
        one.add_contact(BOB, "Bob", now=1.0)
        m = one.queue_message(BOB, "hi", now=1.0)
        assert two.get_contact(BOB) is not None
        assert [x.id for x in two.outbox(BOB)] == [m.id]
        assert two.queue_message(BOB, "from two", now=2.0).seq == 2
        assert one.mark_sent(BOB, 2, now=2.5) == [m.id, two.history(BOB)[1].id]
        assert two.ack_outgoing(BOB, 2, now=3.0) == [m.id, two.history(BOB)[1].id]
        assert one.outbox(BOB) == []
        assert receive(two, 1).verdict == "accept"
        assert receive(one, 1).verdict == "duplicate"


def test_concurrent_writers_never_duplicate_seq(db_path: Path) -> None:
    stores = [Store(db_path) for _ in range(3)]
    errors: list[BaseException] = []

    def work(s: Store, n: int) -> None:
        try:
            for i in range(60):
                s.queue_message(BOB, f"{n}-{i}", now=float(i))
                receive(s, i + 1, mid=f"w{n}-{i}", peer=CAROL)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert [m.seq for m in stores[0].outbox(BOB)] == list(range(1, 181))
        incoming = [m.seq for m in stores[0].history(CAROL)]
        assert incoming == list(range(1, 61))  # each seq accepted exactly once
    finally:
        for s in stores:
            s.close()


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from p2pchat.store import Store

    store = Store(Path(sys.argv[1]))
    i = 0
    while True:
        i += 1
        m = store.queue_message("peer", f"m{i}", now=float(i))
        print(m.id, m.seq, flush=True)
    """
)


def test_sigkill_after_return_loses_nothing(db_path: Path) -> None:
    Store(db_path).close()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    acknowledged: list[tuple[str, int]] = []
    with Store(db_path) as watcher:  # a second process holds the file open meanwhile
        while len(acknowledged) < 200:
            line = child.stdout.readline()
            assert line, "child died early"
            mid, seq = line.split()
            acknowledged.append((mid, int(seq)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        assert len(watcher.outbox("peer")) >= 200
    with Store(db_path) as s:
        outbox = s.outbox("peer")
        seqs = [m.seq for m in outbox]
        assert seqs == list(range(1, len(seqs) + 1))
        stored = {m.id for m in outbox}
        assert all(mid in stored for mid, _ in acknowledged)
        assert s.queue_message("peer", "after", now=0.0).seq == len(seqs) + 1


# -- contact requests ----------------------------------------------------------


def test_request_lifecycle(store: Store) -> None:
    req, new = store.add_request(
        BOB, name=" Bob " + "b" * 100, address="1.2.3.4:5", preview="x" * 500, now=1.0
    )
    assert new
    assert req.name is not None and len(req.name) == 64 and req.name.startswith("Bob ")
    assert req.preview == "x" * 200
    assert (req.attempts, req.state, req.first_seen, req.last_seen) == (1, "pending", 1.0, 1.0)

    req, new = store.add_request(BOB, name=None, address=None, preview="again", now=5.0)
    assert not new
    # The first words a stranger sent stay the preview: later ones cannot replace them.
    assert (req.attempts, req.last_seen, req.preview, req.address) == (
        2,
        5.0,
        "x" * 200,
        "1.2.3.4:5",
    )
    assert [r.peer_id for r in store.list_requests()] == [BOB]

    contact = store.accept_request(BOB, name=None, now=6.0)
    assert contact.name == req.name and contact.addresses == ("1.2.3.4:5",)
    assert store.get_request(BOB) is None and store.list_requests() == []
    transient, new = store.add_request(BOB, name="Bob", address=None, preview=None, now=7.0)
    assert not new and transient.attempts == 0
    assert store.get_request(BOB) is None


def test_declined_request_does_not_renotify(store: Store) -> None:
    store.add_request(CAROL, name="spam", address=None, preview="buy", now=1.0)
    store.decline_request(CAROL)
    req, new = store.add_request(CAROL, name="spam2", address=None, preview="buy!", now=2.0)
    assert not new
    assert (req.state, req.attempts, req.name) == ("declined", 2, "spam")
    assert store.list_requests() == []
    with pytest.raises(UnknownContact):
        store.decline_request(BOB)
    # The user may still change their mind.
    assert store.accept_request(CAROL, name="Carol", now=3.0).name == "Carol"


def test_add_contact_clears_request(store: Store) -> None:
    store.add_request(BOB, name="Bob", address=None, preview=None, now=1.0)
    store.add_contact(BOB, "Bob", now=2.0)
    assert store.get_request(BOB) is None


def test_accept_request_names(store: Store) -> None:
    store.add_contact(ALICE, "Alice", now=1.0)
    store.add_request(BOB, name="alice", address=None, preview=None, now=1.0)
    store.add_request(CAROL, name=None, address=None, preview=None, now=1.0)
    with pytest.raises(ContactExists):
        store.accept_request(BOB, name="Alice", now=2.0)
    assert store.get_request(BOB) is not None  # the failed accept changed nothing
    assert store.accept_request(BOB, name=None, now=2.0).name == f"alice-{BOB[:6]}"
    assert store.accept_request(CAROL, name=None, now=2.0).name == f"peer-{CAROL[:8]}"
    with pytest.raises(UnknownContact):
        store.accept_request(CAROL, name=None, now=3.0)


def test_pending_requests_are_capped(store: Store) -> None:
    for i in range(MAX_PENDING_REQUESTS):
        store.add_request(f"peer{i:04d}", name=None, address=None, preview=None, now=float(i))
    store.add_request("peer0000", name=None, address=None, preview=None, now=1000.0)  # refreshed
    store.add_request("declined", name=None, address=None, preview=None, now=0.5)
    assert store.get_request("peer0001") is None  # the stalest was evicted for it
    store.decline_request("declined")
    _, new = store.add_request("newcomer", name=None, address=None, preview=None, now=2000.0)
    assert new
    pending = store.list_requests()
    assert len(pending) == MAX_PENDING_REQUESTS
    assert pending[0].peer_id == "newcomer"
    assert store.get_request("peer0000") is not None
    assert store.get_request("peer0002") is not None  # declining freed a pending slot
    store.add_request("late", name=None, address=None, preview=None, now=3000.0)
    assert len(store.list_requests()) == MAX_PENDING_REQUESTS
    assert store.get_request("peer0002") is None
    assert store.get_request("declined") is not None  # declined rows are not evicted


def test_find_request(store: Store) -> None:
    store.add_request("abcd1111", name="Eve", address=None, preview=None, now=1.0)
    store.add_request("abcd2222", name=None, address=None, preview=None, now=1.0)
    store.add_request("ffff0000", name="Mallory", address=None, preview=None, now=1.0)
    assert store.find_request("eve").peer_id == "abcd1111"
    assert store.find_request("abcd2").peer_id == "abcd2222"
    assert store.find_request("mal").peer_id == "ffff0000"
    with pytest.raises(AmbiguousContact):
        store.find_request("abcd")
    store.decline_request("ffff0000")
    with pytest.raises(UnknownContact):
        store.find_request("mal")


# -- invite tokens ---------------------------------------------------------------


def test_invite_token_single_use(store: Store) -> None:
    token = store.create_invite_token(now=100.0)
    assert len(token) >= 20
    assert store.redeem_invite_token(token, BOB, now=101.0)
    assert not store.redeem_invite_token(token, CAROL, now=102.0)
    assert not store.redeem_invite_token("forged", BOB, now=101.0)
    row = store._connection().execute(
        "SELECT used_at, used_by FROM invite_tokens WHERE token = ?", (token,)
    )
    assert row.fetchone() == (101.0, BOB)


def test_invite_token_expiry(store: Store) -> None:
    token = store.create_invite_token(now=100.0, ttl=60.0)
    assert not store.redeem_invite_token(token, BOB, now=160.0)
    fresh = store.create_invite_token(now=200.0, ttl=60.0)
    assert store.redeem_invite_token(fresh, BOB, now=259.0)
    with pytest.raises(ValueError):
        store.create_invite_token(now=0.0, ttl=0)


# -- properties: two nodes over a lossy, reordering, duplicating network ----------


@dataclass
class Packet:
    to: int
    kind: str  # "msg" or "ack"
    message_id: str = ""
    seq: int = 0
    base: int = 0
    body: str = ""


PEERS = (ALICE, BOB)
# Hundreds of databases are created here; on tmpfs their fsyncs cost nothing.
FAST_TMP = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


class TwoNodes(RuleBasedStateMachine):
    """Random interleavings of queue/transmit/deliver/drop/restart on two real stores.

    Whatever the network does, each side must store the other's messages once,
    in order, and each history must list rows in the order they were stored.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(dir=FAST_TMP)
        self.paths = [Path(self.tmp.name) / f"{i}.db" for i in range(2)]
        self.stores = [Store(p) for p in self.paths]
        self.flight: list[Packet] = []
        self.inserted: list[list[str]] = [[], []]  # ids in the order each store added them
        self.sent: list[list[str]] = [[], []]  # ids each side queued, in seq order
        self.clock = 0.0

    def now(self) -> float:
        self.clock += 1.0
        return self.clock

    @initialize()
    def start(self) -> None:
        for i, s in enumerate(self.stores):
            s.add_contact(PEERS[1 - i], "peer", now=0.0)

    @rule(side=st.integers(0, 1), body=st.text(max_size=5))
    def queue(self, side: int, body: str) -> None:
        m = self.stores[side].queue_message(PEERS[1 - side], body, now=self.now())
        assert m.seq == len(self.sent[side]) + 1
        self.sent[side].append(m.id)
        self.inserted[side].append(m.id)

    @rule(side=st.integers(0, 1), count=st.integers(1, 4))
    def transmit(self, side: int, count: int) -> None:
        s, peer = self.stores[side], PEERS[1 - side]
        base = s.outbox_base(peer)
        batch = s.outbox(peer)[:count]
        if batch:
            s.mark_sent(peer, batch[-1].seq, now=self.now())
        for m in batch:
            self.flight.append(Packet(1 - side, "msg", m.id, m.seq, base, m.body))

    @precondition(lambda self: bool(self.flight))
    @rule(data=st.data(), keep=st.booleans())
    def deliver(self, data: st.DataObject, keep: bool) -> None:
        index = data.draw(st.integers(0, len(self.flight) - 1))
        self._process(self.flight[index] if keep else self.flight.pop(index))

    def _process(self, packet: Packet) -> None:
        s, sender = self.stores[packet.to], PEERS[1 - packet.to]
        if packet.kind == "ack":
            s.ack_outgoing(sender, packet.seq, now=self.now())
            return
        result = s.receive_message(
            sender,
            message_id=packet.message_id,
            seq=packet.seq,
            base=packet.base,
            body=packet.body,
            sent_at=0.0,
            now=self.now(),
        )
        if result.verdict == "accept":
            self.inserted[packet.to].append(packet.message_id)
        self.flight.append(Packet(1 - packet.to, "ack", seq=result.recv_seq))

    @rule()
    def good_moment(self) -> None:
        """Both sides transmit everything and the network delivers it all in order."""
        for side in (0, 1):
            self.transmit(side, 1000)
        while self.flight:
            self._process(self.flight.pop(0))

    @precondition(lambda self: bool(self.flight))
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.flight.pop(data.draw(st.integers(0, len(self.flight) - 1)))

    @rule(side=st.integers(0, 1))
    def restart(self, side: int) -> None:
        self.stores[side].close()
        self.stores[side] = Store(self.paths[side])

    @rule(side=st.integers(0, 1), upto=st.integers(0, 12))
    def lying_ack(self, side: int, upto: int) -> None:
        s, peer = self.stores[side], PEERS[1 - side]
        if upto > len(self.sent[side]):
            assert s.ack_outgoing(peer, upto, now=self.now()) == []

    @invariant()
    def exactly_once_in_order(self) -> None:
        for side, s in enumerate(self.stores):
            peer = PEERS[1 - side]
            history = s.history(peer)
            assert [m.id for m in history] == self.inserted[side]
            incoming = [m.id for m in history if m.direction == "in"]
            assert incoming == self.sent[1 - side][: len(incoming)]
            assert s.recv_seq(peer) == len(incoming)
            dupes = s._connection().execute(
                "SELECT count(*) FROM (SELECT 1 FROM messages"
                " GROUP BY peer_id, direction, seq HAVING count(*) > 1)"
            )
            assert dupes.fetchone()[0] == 0

    @invariant()
    def outbox_is_exactly_the_unacked_suffix(self) -> None:
        for side, s in enumerate(self.stores):
            peer = PEERS[1 - side]
            outgoing = [m for m in s.history(peer) if m.direction == "out"]
            pending = [m.id for m in outgoing if m.state in ("queued", "sent")]
            assert [m.id for m in s.outbox(peer)] == pending
            assert pending == self.sent[side][len(self.sent[side]) - len(pending) :]
            # Never delivered beyond what the other side actually stored.
            delivered = len(outgoing) - len(pending)
            assert delivered <= self.stores[1 - side].recv_seq(PEERS[side])

    def teardown(self) -> None:
        for s in self.stores:
            s.close()
        self.tmp.cleanup()


TwoNodes.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_two_nodes = TwoNodes.TestCase

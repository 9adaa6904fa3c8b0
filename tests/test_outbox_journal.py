"""The outbox journal in the store and the node: a sent message is durable when
``send_message`` returns, for one write and no SQL statement; the loop turn's
group commit folds it; a crash leaves nothing lost, duplicated or out of order."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import p2pchat.store.database
from p2pchat.atrest import open_home
from p2pchat.config import Paths
from p2pchat.identity import load_identity
from p2pchat.node import Node
from p2pchat.store import DatabaseBusy, Store, StoreError
from p2pchat.store.journal import Entry, encode, journal_path

from .conftest import StartNode, friends, make_home, wait_until
from .daemons import Daemon, cli_env, free_udp_port
from .test_atrest import sealed_home
from .test_messaging import bodies

PEER = "b2" * 26
KEY = bytes(range(32))


def journal_bytes(db: Path) -> bytes:
    return journal_path(db).read_bytes()


def test_queued_messages_are_journaled_then_folded_by_the_next_transaction(
    tmp_path: Path,
) -> None:
    db = tmp_path / "p2pchat.db"
    with Store(db, journal=True) as store:
        sql: list[str] = []
        store._connection().set_trace_callback(sql.append)
        first = store.queue_message(PEER, "one", now=1.0)  # loads the counters: reads
        sql.clear()
        more = store.queue_messages(PEER, ["two", "three"], now=2.0)
        assert sql == []  # numbered in memory, made durable by one append
        assert store.pending and len(journal_bytes(db)) > 0
        assert [m.seq for m in [first, *more]] == [1, 2, 3]
        # Any read folds first: it sees what one commit per message would have shown.
        assert [m.body for m in store.outbox(PEER)] == ["one", "two", "three"]
        assert sql.count("COMMIT") == 1
        assert not store.pending and journal_bytes(db) == b""
        assert store.send_seq(PEER) == 3 and store.outbox_base(PEER) == 1
        store.ack_outgoing(PEER, 0, now=3.0)
        assert store.queue_message(PEER, "four", now=4.0).seq == 4


def test_a_torn_tail_is_discarded_and_earlier_records_survive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "p2pchat.db"
    Store(db).close()
    whole = encode([Entry(PEER, f"id{seq}", seq, f"m{seq}", 1.0) for seq in (1, 2)])
    torn = encode([Entry(PEER, "id3", 3, "m3", 1.0)])[:-5]  # a write cut short
    journal_path(db).write_bytes(whole + torn)
    with caplog.at_level(logging.WARNING), Store(db) as store:
        assert [(m.seq, m.body) for m in store.outbox(PEER)] == [(1, "m1"), (2, "m2")]
        assert store.queue_message(PEER, "next", now=2.0).seq == 3
    assert "discarded" in caplog.text and "a record cut short" in caplog.text
    assert journal_bytes(db) == b""


def test_records_already_folded_are_skipped_and_damage_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "p2pchat.db"
    with Store(db, journal=True) as store:
        store.queue_messages(PEER, ["a", "b"], now=1.0)
        left = journal_bytes(db)  # what a crash between the commit and emptying leaves
        store.fold()
        stored = store.outbox(PEER)
    later = encode([Entry(PEER, "c" * 32, 3, "c", 2.0)])
    journal_path(db).write_bytes(left + later)
    with Store(db) as store:
        assert [m.body for m in store.outbox(PEER)] == ["a", "b", "c"]
        assert store.outbox(PEER)[:2] == stored
    damaged = bytearray(left + later)
    damaged[10] ^= 0xFF  # inside the first record: not a torn tail
    journal_path(db).write_bytes(bytes(damaged))
    with pytest.raises(StoreError, match=r"damaged at byte 0.*move it aside"):
        Store(db)
    # A journal from another database (its numbering does not continue ours).
    journal_path(db).write_bytes(encode([Entry(PEER, "x" * 32, 9, "x", 3.0)]))
    with pytest.raises(StoreError, match="does not belong to this database"):
        Store(db)


def test_an_encrypted_stores_journal_holds_no_text(tmp_path: Path) -> None:
    secret = "the launch code is 0000"
    for key in (None, KEY):
        db = tmp_path / ("sealed.db" if key else "plain.db")
        with Store(db, key=key, journal=True) as store:
            store.queue_message(PEER, secret, now=1.0)
            data = journal_bytes(db)
            store.fold()
            assert [m.body for m in store.outbox(PEER)] == [secret]
        # The plain journal shows the check can fail; the sealed one holds no text.
        assert (secret.encode() in data and PEER.encode() in data) is (key is None)
        assert secret.encode() not in data or key is None


def test_only_the_journals_holder_numbers_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(p2pchat.store.database, "JOURNAL_WAIT", 0.05)
    db = tmp_path / "p2pchat.db"
    with Store(db, journal=True) as node_store, Store(db) as other:
        node_store.queue_message(PEER, "from the node", now=1.0)
        with pytest.raises(DatabaseBusy, match="send through it"):
            other.queue_message(PEER, "from elsewhere", now=1.0)
    with Store(db) as other:  # nobody holds it now
        assert other.queue_message(PEER, "later", now=2.0).seq == 2


async def test_the_send_path_runs_no_sql_and_a_turn_costs_one_commit(
    start_node: StartNode,
) -> None:
    a, b = await friends(start_node)
    a.send_message("bob", "warm-up")  # the first send reads the counters once
    await wait_until(lambda: bodies(b, "alice", "in") == ["warm-up"])
    statements: list[str] = []
    a.store._connection().set_trace_callback(statements.append)
    try:
        for i in range(100):
            a.send_message("bob", f"m {i:03d}")
        a.send_messages("bob", ["x", "y"])
        assert statements == []
        assert a.store.pending
        a.delivery.flush()  # the group commit (scheduled within MARK_DELAY)
        assert [s for s in statements if s.strip().upper() == "COMMIT"] == ["COMMIT"]
    finally:
        a.store._connection().set_trace_callback(None)
    expected = ["warm-up"] + [f"m {i:03d}" for i in range(100)] + ["x", "y"]
    await wait_until(lambda: bodies(b, "alice", "in") == expected)
    await wait_until(lambda: a.store.outbox(b.peer_id) == [])


# Alice's node in a process of its own: it sends (the first five are folded in a loop
# turn, the last five are not) and is killed right after send_message returned.
KILLED_AFTER_SEND = """
import asyncio, os, signal, sys
from pathlib import Path
from p2pchat.config import Paths
from p2pchat.node import Node

async def main():
    node = Node(Paths(Path(sys.argv[1])))
    await node.start()
    for i in range(5):
        print(node.send_message("bob", f"m {i}").id, flush=True)
    await asyncio.sleep(0.1)
    assert not node.store.pending
    for i in range(5, 10):
        print(node.send_message("bob", f"m {i}").id, flush=True)
    assert node.store.pending  # not folded: only the journal holds these
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_sigkill_right_after_send_message_loses_nothing(
    tmp_path: Path, start_node: StartNode
) -> None:
    alice_paths = make_home(tmp_path, "alice")
    bob = await start_node("bob")
    alice_id = load_identity(alice_paths.identity).peer_id
    with Store(alice_paths.database) as store:  # offline: bob's port is not in it
        store.add_contact(bob.peer_id, "bob", addresses=["127.0.0.1:1"], now=1.0)
    done = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_SEND, str(alice_paths.home)],
        capture_output=True, text=True, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    returned = done.stdout.split()
    assert len(returned) == 10
    assert len(journal_bytes(alice_paths.database)) > 0
    alice = Node(Paths(alice_paths.home))
    try:
        outbox = alice.store.outbox(bob.peer_id)
        assert [m.id for m in outbox] == returned
        assert [m.seq for m in outbox] == list(range(1, 11))
        assert [m.body for m in outbox] == [f"m {i}" for i in range(10)]
        await alice.start()
        alice.store.set_addresses(bob.peer_id, bob.addresses)
        bob.add_contact(alice_id, name="alice", addresses=alice.addresses)
        alice.send_message("bob", "after the restart")
        expected = [f"m {i}" for i in range(10)] + ["after the restart"]
        await wait_until(lambda: bodies(bob, "alice", "in") == expected, timeout=30)
        await wait_until(lambda: alice.store.outbox(bob.peer_id) == [], timeout=30)
        await asyncio.sleep(0.2)  # a late duplicate would show now
        assert bodies(bob, "alice", "in") == expected
    finally:
        await alice.stop()


async def test_a_passphrase_change_folds_the_journal_first(tmp_path: Path) -> None:
    paths = make_home(tmp_path, "alice")
    peer = load_identity(make_home(tmp_path, "peer").identity).peer_id
    node = Node(paths)
    try:
        node.add_contact(peer, name="peer")
        sent = node.send_message("peer", "queued before the change")
        assert node.store.pending
        await node.change_passphrase(None, "correct horse")
        assert node.database_encrypted
        assert journal_bytes(paths.database) == b""
        node.send_message("peer", "queued after it")
        assert b"queued after it" not in journal_bytes(paths.database)
        assert [m.body for m in node.history("peer")] == [sent.body, "queued after it"]
    finally:
        await node.stop()


async def test_a_daemon_killed_right_after_its_sends_keeps_them_once_in_order(
    tmp_path: Path,
) -> None:
    """The same through a real daemon and its control socket: SIGKILL as soon as the last
    ``send`` answered (the fold waits for a group commit, so it has usually not run)."""
    alice = Daemon(make_home(tmp_path, "alice").home, f"127.0.0.1:{free_udp_port()}")
    bob = load_identity(make_home(tmp_path, "bob").identity).peer_id
    await alice.start()
    try:
        await alice.call("add", ref=bob, name="bob", addresses=["127.0.0.1:1"])
        sent = [
            (await alice.call("send", contact="bob", text=f"m {i:02d}"))["message"]["id"]
            for i in range(30)
        ]
        await alice.kill()
        await alice.start()
        history = await alice.call("history", contact="bob")
        assert [m["id"] for m in history] == sent
        assert [m["body"] for m in history] == [f"m {i:02d}" for i in range(30)]
        again = await alice.call("send", contact="bob", text="after the restart")
        assert again["message"]["seq"] == 31
    finally:
        await alice.stop()


def test_a_fold_that_cannot_commit_leaves_reads_working_and_numbering_safe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk can refuse the fold after the appends succeeded: reads answer from
    the tables (as before the journal), writes and new sends fail with the disk error,
    nothing is lost or numbered twice, and the next fold that commits catches up."""
    db = tmp_path / "p2pchat.db"
    with Store(db, journal=True) as store:
        store.queue_messages(PEER, ["one", "two"], now=1.0)
        fold_into = p2pchat.store.database.fold_into
        insert_folded = p2pchat.store.database.insert_folded

        def disk_full(*_args: object) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        # Both ways a fold writes its rows: at once, or at the end of a transaction
        # that marks them (a group commit, a sent mark).
        monkeypatch.setattr(p2pchat.store.database, "fold_into", disk_full)
        monkeypatch.setattr(p2pchat.store.database, "insert_folded", disk_full)
        assert store.outbox(PEER) == []  # what is committed; no error for a read
        assert store.pending
        with pytest.raises(StoreError, match="disk is full"):
            store.queue_message(PEER, "three", now=2.0)
        with pytest.raises(StoreError, match="disk is full"):
            store.mark_sent(PEER, 2, now=2.0)
        monkeypatch.setattr(p2pchat.store.database, "fold_into", fold_into)
        monkeypatch.setattr(p2pchat.store.database, "insert_folded", insert_folded)
        assert [m.body for m in store.outbox(PEER)] == ["one", "two"]
        assert store.queue_message(PEER, "three", now=3.0).seq == 3
    with Store(db) as store:
        assert [(m.seq, m.body) for m in store.outbox(PEER)] == [
            (1, "one"), (2, "two"), (3, "three"),
        ]  # fmt: skip


def test_a_clear_journal_is_folded_before_the_database_is_encrypted_on_open(
    tmp_path: Path,
) -> None:
    """A sealed identity whose database is still plaintext (another process had it open
    when it should have been encrypted) and a node that crashed with queued messages:
    the next opening folds the journal in clear, then encrypts, losing nothing."""
    paths = sealed_home(tmp_path, "alice")
    Store(paths.database).close()
    left = encode([Entry(PEER, f"id{seq}", seq, f"queued {seq}", 1.0) for seq in (1, 2)])
    journal_path(paths.database).write_bytes(left)
    _identity, store = open_home(paths, "correct horse")
    with store:
        assert store.encrypted
        assert [m.body for m in store.outbox(PEER)] == ["queued 1", "queued 2"]
    assert journal_bytes(paths.database) == b""

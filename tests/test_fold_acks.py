"""The group commit folds journaled messages with the sent marks and acks applied in
the same transaction: a message acknowledged before its row is written goes in as
'delivered' without an outbox row.  Nothing else may tell the difference: the same
messages change state, the same rows end up in the tables, as when each message was
committed on its own; the statements a batch runs do not grow with its size."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from p2pchat.core import chat
from p2pchat.store import Message, Store

PEER = "b2" * 26
OTHER = "c3" * 26


def journaled(tmp_path: Path, queued: int = 0) -> tuple[Store, list[Message]]:
    """A store that holds its journal, as a node's does, with bob as a contact and
    ``queued`` messages to him in the journal."""
    store = Store(tmp_path / "p2pchat.db", journal=True)
    store.add_contact(PEER, "bob", now=0.0)
    return store, [store.queue_message(PEER, f"m {i}", now=1.0) for i in range(queued)]


def statements(store: Store) -> list[str]:
    """Every statement the store's connection runs from now on."""
    seen: list[str] = []
    store._connection().set_trace_callback(seen.append)
    return seen


def tables(store: Store) -> dict[str, Any]:
    """What the tables hold about outgoing messages, by seq (ids are random)."""
    with store._read() as db:
        return {
            "messages": db.execute(
                "SELECT peer_id, seq, body, state, updated_at FROM messages"
                " WHERE direction = 'out' ORDER BY peer_id, seq"
            ).fetchall(),
            "outbox": db.execute(
                "SELECT peer_id, seq, attempts, last_attempt FROM outbox ORDER BY peer_id, seq"
            ).fetchall(),
            "conversations": db.execute(
                "SELECT peer_id, send_seq, sent_seq FROM conversations ORDER BY peer_id"
            ).fetchall(),
        }


def seqs(store: Store, peer: str, ids: list[str]) -> list[int]:
    out = []
    for message_id in ids:
        message = store.get_message(message_id, peer_id=peer)
        assert message is not None
        out.append(message.seq)
    return out


def test_messages_acknowledged_in_the_batch_that_folds_them_get_no_outbox_row(
    tmp_path: Path,
) -> None:
    store, sent = journaled(tmp_path, 10)
    seen = statements(store)
    with store.batch():
        marked = store.mark_sent(PEER, 10, 2.0, from_seq=1)
        delivered = store.ack_outgoing(PEER, 6, 3.0)
    assert marked == [m.id for m in sent]
    assert delivered == [m.id for m in sent[:6]]
    writes = [s for s in seen if s.split()[0] in ("INSERT", "UPDATE", "DELETE")]
    # The rows go in once, as they are at the end: no outbox row for the six acknowledged,
    # no UPDATE or DELETE of a message or outbox row.
    assert [s.split()[2] for s in writes if s.startswith("INSERT")] == [
        "conversations", *["messages"] * 10, *["outbox"] * 4,
    ]  # fmt: skip
    assert not [s for s in writes if "messages" in s.split()[1] or "outbox" in s.split()[1]]
    assert tables(store)["messages"] == [
        *[(PEER, i, f"m {i - 1}", "delivered", 3.0) for i in range(1, 7)],
        *[(PEER, i, f"m {i - 1}", "sent", 2.0) for i in range(7, 11)],
    ]
    assert tables(store)["outbox"] == [(PEER, i, 1, 2.0) for i in range(7, 11)]
    assert tables(store)["conversations"] == [(PEER, 10, 10)]
    assert [m.seq for m in store.outbox(PEER)] == [7, 8, 9, 10]
    assert store.ack_outgoing(PEER, 10, 4.0) == [m.id for m in sent[6:]]
    assert tables(store)["outbox"] == []
    store.close()


def test_an_ack_beyond_what_was_transmitted_is_refused_before_the_fold(tmp_path: Path) -> None:
    store, _sent = journaled(tmp_path, 5)
    with store.batch():
        store.mark_sent(PEER, 3, 2.0, from_seq=1)
        assert store.ack_outgoing(PEER, 4, 3.0) == []  # 4 was never transmitted
    assert [m.state for m in store.history(PEER)] == ["sent"] * 3 + ["queued"] * 2
    assert [m.seq for m in store.outbox(PEER)] == [1, 2, 3, 4, 5]
    store.close()


@pytest.mark.parametrize("batch", [10, 100])
def test_a_batch_runs_the_same_statements_whatever_its_size(tmp_path: Path, batch: int) -> None:
    store, _first = journaled(tmp_path, 1)
    store.fold()
    store.mark_sent(PEER, 1, 1.0, from_seq=1)
    store.ack_outgoing(PEER, 1, 1.0)
    for i in range(batch):
        store.queue_message(PEER, f"m {i}", now=1.0)
    seen = statements(store)
    with store.batch():
        store.mark_sent(PEER, batch + 1, 2.0, from_seq=2)
        store.ack_outgoing(PEER, batch + 1, 3.0)
    # BEGIN, the counters, the sent_seq, the ack's check, the rows, COMMIT.
    executions = [s.split()[0] for s in seen]
    assert executions.count("INSERT") == 1 + batch  # executemany runs once per row
    assert len(executions) - executions.count("INSERT") == 4, seen
    store.close()


def test_a_batch_that_fails_leaves_its_messages_queued(tmp_path: Path) -> None:
    store, _sent = journaled(tmp_path, 3)
    with pytest.raises(RuntimeError), store.batch():
        store.mark_sent(PEER, 3, 2.0, from_seq=1)
        store.ack_outgoing(PEER, 3, 3.0)
        raise RuntimeError("the batch fails after the ack was applied")
    assert store.pending
    assert [m.state for m in store.outbox(PEER)] == ["queued"] * 3
    assert store.ack_outgoing(PEER, 3, 4.0) == []  # never transmitted, as far as it knows
    store.close()
    reopened = Store(tmp_path / "p2pchat.db", journal=True)
    assert [m.body for m in reopened.outbox(PEER)] == ["m 0", "m 1", "m 2"]
    reopened.close()


def test_an_incoming_message_reusing_the_id_of_one_folded_in_the_batch_is_a_duplicate(
    tmp_path: Path,
) -> None:
    """Ids are unique per conversation whatever the direction: a peer that sends back
    the id of our message gets 'duplicate', as when our row was written first, and the
    batch commits (a failed insert would roll back the whole group commit, every time)."""
    store, (ours,) = journaled(tmp_path, 1)
    frame = chat.ChatMessage(id=ours.id, seq=1, base=1, sent_at=1.0, body="theirs")
    with store.batch():
        results = store.receive_messages(PEER, [frame], now=2.0)
        store.mark_sent(PEER, 1, 2.0, from_seq=1)
    assert [r.verdict for r in results] == ["duplicate"]
    assert [(m.direction, m.body) for m in store.history(PEER)] == [("out", "m 0")]
    store.close()


def test_reads_and_other_writes_inside_a_batch_see_the_folded_messages(tmp_path: Path) -> None:
    store, sent = journaled(tmp_path, 4)
    with store.batch():
        store.mark_sent(PEER, 4, 2.0, from_seq=1)
        assert [m.state for m in store.outbox(PEER)] == ["sent"] * 4  # a read writes them
        store.ack_outgoing(PEER, 2, 3.0)
        edited, _edit = store.edit_message(sent[3].id, "m 3, edited", now=4.0)
    assert edited.body == "m 3, edited"
    assert [m.seq for m in store.outbox(PEER)] == [3, 4, 5]
    store.close()


def apply(store: Store, rng: random.Random, steps: int) -> list[Any]:
    """A random run of what a node does: queue, then group commits that mark ranges
    sent and apply acks (sometimes beyond what was sent), reads, edits, requeues."""
    log: list[Any] = []
    queued = {PEER: 0, OTHER: 0}
    sent = {PEER: 0, OTHER: 0}
    now = 10.0
    for _ in range(steps):
        now += 1.0
        for peer in (PEER, OTHER):
            for _ in range(rng.randrange(0, 5)):
                store.queue_message(peer, f"{peer[:2]} {queued[peer]}", now=now)
                queued[peer] += 1
        action = rng.random()
        if action < 0.1:
            log.append(("outbox", [m.seq for m in store.outbox(PEER)]))
            continue
        if action < 0.15:
            log.append(("requeue", seqs(store, PEER, store.requeue_sent(PEER, now))))
            continue
        with store.batch():
            for peer in (PEER, OTHER):
                if rng.random() < 0.8 and queued[peer] > sent[peer]:
                    first = sent[peer] + 1 if rng.random() < 0.8 else 1
                    upto = rng.randint(sent[peer], queued[peer])
                    ids = store.mark_sent(peer, upto, now, from_seq=first)
                    log.append(("sent", peer, seqs(store, peer, ids)))
                    sent[peer] = max(sent[peer], upto)
                if rng.random() < 0.7:
                    upto = rng.randint(0, queued[peer] + 1)
                    ids = store.ack_outgoing(peer, upto, now + 0.5)
                    log.append(("delivered", peer, seqs(store, peer, ids)))
    log.append(tables(store))
    return log


@pytest.mark.parametrize("seed", range(6))
def test_folding_with_the_marks_changes_nothing_anyone_can_see(tmp_path: Path, seed: int) -> None:
    """The same run against a store that journals (rows written at the end of the
    batch) and one that commits each message (rows written when queued)."""
    journaled = Store(tmp_path / "journaled.db", journal=True)
    committed = Store(tmp_path / "committed.db")
    for store in (journaled, committed):
        store.add_contact(PEER, "bob", now=0.0)
        store.add_contact(OTHER, "carol", now=0.0)
    assert apply(journaled, random.Random(seed), 60) == apply(committed, random.Random(seed), 60)
    journaled.close()
    committed.close()
    with sqlite3.connect(tmp_path / "journaled.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []


def test_rows_keep_the_order_of_events(tmp_path: Path) -> None:
    """``pos`` (the history's order) is the order things happened in: our messages
    queued before a message arrived come first, whatever the batch defers, and
    messages to several contacts go in as they were queued."""
    store = Store(tmp_path / "p2pchat.db", journal=True)
    store.add_contact(PEER, "bob", now=0.0)
    store.add_contact(OTHER, "carol", now=0.0)
    store.queue_message(PEER, "to bob 1", now=1.0)
    store.queue_message(OTHER, "to carol", now=1.0)
    store.queue_message(PEER, "to bob 2", now=1.0)
    frame = chat.ChatMessage(id="f" * 32, seq=1, base=1, sent_at=1.0, body="from bob")
    with store.batch():
        store.mark_sent(PEER, 2, 2.0, from_seq=1)
        store.receive_messages(PEER, [frame], now=2.0)
        store.ack_outgoing(PEER, 2, 3.0)
    assert [m.body for m in store.history(PEER)] == ["to bob 1", "to bob 2", "from bob"]
    assert [m.state for m in store.history(PEER)] == ["delivered", "delivered", "delivered"]
    with store._read() as db:
        bodies = [r[0] for r in db.execute("SELECT body FROM messages ORDER BY pos")]
    assert bodies == ["to bob 1", "to carol", "to bob 2", "from bob"]
    assert [m.seq for m in store.outbox(PEER)] == [] and len(store.outbox(OTHER)) == 1
    store.close()

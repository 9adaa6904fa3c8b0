"""Paging back through a long history, and full-text search (FTS5) over it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pchat.store import Store, StoreError

from .conftest import make_home
from .daemons import Daemon, free_udp_port, run_cli
from .history import fill_history

BOB = "b" * 52
CAROL = "c" * 52


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "db")
    s.add_contact(BOB, "bob", now=1.0)
    s.add_contact(CAROL, "carol", now=1.0)
    return s


def test_pages_back_from_any_message(store: Store) -> None:
    fill_history(store, BOB, 1000)
    store.queue_message(CAROL, "interleaved", now=2.0)
    everything = store.history(BOB)
    newest = store.history(BOB, limit=50)
    assert newest == everything[-50:]
    pages = [newest]
    while True:
        page = store.history(BOB, before=pages[-1][0].id, limit=300)
        if not page:
            break
        pages.append(page)
    assert [m for page in reversed(pages) for m in page] == everything
    assert store.history(BOB, before=everything[10].id) == everything[:10]
    with pytest.raises(StoreError):
        store.history(BOB, before="not-a-message", limit=10)
    # Another conversation's id is not a position in this one.
    other = store.history(CAROL)[0]
    with pytest.raises(StoreError):
        store.history(BOB, before=other.id, limit=10)


def test_search_finds_words_newest_first_and_follows_edits(store: Store) -> None:
    store.queue_message(BOB, "Lunch at the Café tomorrow?", now=1.0)
    store.receive_message(
        BOB, message_id="r1", seq=1, base=1, body="lunch sounds great", sent_at=2.0, now=2.0
    )
    store.queue_message(CAROL, "no lunch for me", now=3.0)
    store.queue_message(CAROL, 'a "quoted" word AND NOT (syntax*', now=4.0)
    found = [m.body for m in store.search("lunch")]
    assert found == ["no lunch for me", "lunch sounds great", "Lunch at the Café tomorrow?"]
    assert [m.body for m in store.search("LUNCH cafe")] == ["Lunch at the Café tomorrow?"]
    assert [m.body for m in store.search("lunch", peer_id=CAROL)] == ["no lunch for me"]
    assert [m.body for m in store.search("tomor")] == ["Lunch at the Café tomorrow?"]
    assert [m.body for m in store.search("lunch", limit=1)] == ["no lunch for me"]
    # User input is words, never FTS5 syntax: none of this is an error.
    assert [m.body for m in store.search('"quoted" AND NOT (syntax*')] == [
        'a "quoted" word AND NOT (syntax*'
    ]
    assert store.search("") == [] and store.search('"') == []
    # An indexed message that is edited or deleted is found by its new text only.
    db = store._connection()
    db.execute("UPDATE messages SET body = 'dinner instead' WHERE id = 'r1'")
    assert "lunch sounds great" not in [m.body for m in store.search("lunch")]
    assert [m.body for m in store.search("dinner")] == ["dinner instead"]
    db.execute("DELETE FROM messages WHERE peer_id = ? AND body LIKE 'no lunch%'", (CAROL,))
    assert [m.body for m in store.search("lunch")] == ["Lunch at the Café tomorrow?"]
    # Edits of rows not indexed yet need nothing: they are indexed as they are.
    late = store.queue_message(BOB, "breakfast", now=5.0)
    db.execute("UPDATE messages SET body = 'brunch' WHERE id = ?", (late.id,))
    assert store.search("breakfast") == [] and len(store.search("brunch")) == 1


def test_index_catches_up_in_chunks(store: Store) -> None:
    fill_history(store, BOB, 2500)
    assert store.index_messages(limit=1000, chunk=300) == 1000
    assert store.index_messages(chunk=700) == 1500
    assert store.index_messages() == 0
    assert len(store.search("saturday", limit=500)) == 500
    integrity = store._connection().execute(
        "INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)"
    )
    assert integrity is not None  # raises on a corrupt index


async def test_cli_search_and_history_pages(tmp_path: Path) -> None:
    paths = make_home(tmp_path, "alice")
    with Store(paths.database) as store:
        store.add_contact(BOB, "bob", now=1.0)
        store.add_contact(CAROL, "carol", now=1.0)
        fill_history(store, BOB, 200)
        store.queue_message(CAROL, "see you at the station", now=2.0)
    daemon = Daemon(paths.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    try:
        found = run_cli(paths.home, "search", "station", "--limit", "3", "--json")
        assert found.returncode == 0, found.stderr
        hits = json.loads(found.stdout)
        assert hits[0]["body"] == "see you at the station" and len(hits) == 3
        only = json.loads(run_cli(paths.home, "search", "station", "--contact", "carol",
                                  "--json").stdout)  # fmt: skip
        assert [m["body"] for m in only] == ["see you at the station"]
        plain = run_cli(paths.home, "search", "station", "--contact", "carol")
        assert "carol: see you at the station" in plain.stdout
        none = run_cli(paths.home, "search", "zeppelin")
        assert none.returncode == 0 and "no message matches" in none.stdout
        page = json.loads(run_cli(paths.home, "history", "bob", "--limit", "20", "--json").stdout)
        older = run_cli(
            paths.home, "history", "bob", "--limit", "20", "--before", page[0]["id"], "--json"
        )
        assert [m["seq"] for m in json.loads(older.stdout)] == [m["seq"] - 10 for m in page]
    finally:
        await daemon.stop()

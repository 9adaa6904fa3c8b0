"""``receive_messages`` (a burst in one transaction, or journaled by a node's store)
decides exactly what ``receive_message`` decides one message at a time: the same
verdicts, stored rows, quota stop, edits and deletes, whatever mix of duplicates,
gaps and kinds arrives."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pchat.core import chat
from p2pchat.store import ReceiveResult, Store

PEER = "p" * 52
NOW = 86400.0 * 20000 + 5.0
IDS = [f"{i:032x}" for i in range(6)]

def frames(kinds: list[str], targets: st.SearchStrategy[str | None]) -> st.SearchStrategy[Any]:
    return st.builds(
        chat.ChatMessage,
        id=st.sampled_from(IDS),
        seq=st.integers(1, 8),
        base=st.integers(1, 8),
        sent_at=st.just(1.0),
        # ASCII and not: the quota counts UTF-8 bytes
        body=st.sampled_from(["", "hi", "héllo", "日本語のテキスト", "x" * 40]),
        reply_to=st.one_of(st.none(), st.sampled_from(IDS)),
        kind=st.sampled_from(kinds),
        target=targets,
    )


frame_strategy = frames(
    ["text", "text", "edit", "delete", "reaction"], st.one_of(st.none(), st.sampled_from(IDS))
)


def _one_by_one(
    store: Store, frames: list[chat.ChatMessage], quota: int | None
) -> list[ReceiveResult]:
    results = []
    for f in frames:
        kind = f.kind if f.kind in ("edit", "delete") else "text"
        result = store.receive_message(
            PEER, message_id=f.id, seq=f.seq, base=f.base, body=f.body, sent_at=f.sent_at,
            now=NOW, daily_quota=quota, reply_to=f.reply_to, kind=kind, target=f.target,
        )  # fmt: skip
        results.append(result)
        if result.verdict == "quota":
            break  # receive_messages stops there: the contact is told to wait
    return results


def _history(store: Store) -> list[tuple[object, ...]]:
    with store._read() as db:
        return list(db.execute("SELECT * FROM messages ORDER BY pos"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bursts=st.lists(st.lists(frame_strategy, max_size=8), min_size=1, max_size=3),
    quota=st.one_of(st.none(), st.integers(0, 120)),
)
def test_a_burst_is_decided_as_one_message_at_a_time(
    bursts: list[list[chat.ChatMessage]], quota: int | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        single = Store(Path(tmp) / "single.db", journal=True)
        batched = Store(Path(tmp) / "batched.db", journal=True)
        try:
            for frames in bursts:
                expected = _one_by_one(single, frames, quota)
                with batched.batch():
                    got = batched.receive_messages(PEER, frames, now=NOW, daily_quota=quota)
                assert got == expected
                assert batched.recv_seq(PEER) == single.recv_seq(PEER)
                assert batched.intake_today(PEER, now=NOW) == single.intake_today(PEER, now=NOW)
                assert _history(batched) == _history(single)
        finally:
            single.close()
            batched.close()


text_strategy = frames(["text", "reaction"], st.none())
"""Messages a node's store journals (text, no target): a burst of only these is
decided in memory; one with an edit or a delete goes through a transaction."""


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bursts=st.lists(
        st.one_of(
            st.lists(text_strategy, max_size=8),
            st.lists(text_strategy, max_size=8),
            st.lists(frame_strategy, max_size=4),
        ),
        min_size=1,
        max_size=4,
    ),
    quota=st.one_of(st.none(), st.integers(0, 120)),
    reads=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_journaled_bursts_are_decided_as_one_message_at_a_time(
    bursts: list[list[chat.ChatMessage]], quota: int | None, reads: list[bool]
) -> None:
    """Outside a batch a node's store journals text messages and decides them against
    the window in memory (the tables plus what is pending); a read between bursts
    folds what is pending, or nothing does until the end."""
    with tempfile.TemporaryDirectory() as tmp:
        single = Store(Path(tmp) / "single.db", journal=True)
        journaled = Store(Path(tmp) / "journaled.db", journal=True)
        for store in (single, journaled):  # our own message's id is taken too
            store.queue_message(PEER, "mine", now=NOW, message_id=IDS[5])
        try:
            for frames, read in zip(bursts, reads, strict=False):
                expected = _one_by_one(single, frames, quota)
                got = journaled.receive_messages(PEER, frames, now=NOW, daily_quota=quota)
                assert got == expected
                if read:
                    assert journaled.recv_seq(PEER) == single.recv_seq(PEER)
            assert journaled.recv_seq(PEER) == single.recv_seq(PEER)
            assert journaled.intake_today(PEER, now=NOW) == single.intake_today(PEER, now=NOW)
            assert _history(journaled) == _history(single)
        finally:
            single.close()
            journaled.close()

"""``receive_messages`` (a burst in one transaction) decides exactly what
``receive_message`` decides one message at a time: the same verdicts, stored rows,
quota stop, edits and deletes, whatever mix of duplicates, gaps and kinds arrives."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pchat.core import chat
from p2pchat.store import ReceiveResult, Store

PEER = "p" * 52
NOW = 86400.0 * 20000 + 5.0
IDS = [f"{i:032x}" for i in range(6)]

frame_strategy = st.builds(
    chat.ChatMessage,
    id=st.sampled_from(IDS),
    seq=st.integers(1, 8),
    base=st.integers(1, 8),
    sent_at=st.just(1.0),
    # ASCII and not: the quota counts UTF-8 bytes
    body=st.sampled_from(["", "hi", "héllo", "日本語のテキスト", "x" * 40]),
    reply_to=st.one_of(st.none(), st.sampled_from(IDS)),
    kind=st.sampled_from(["text", "text", "edit", "delete", "reaction"]),
    target=st.one_of(st.none(), st.sampled_from(IDS)),
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

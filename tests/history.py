"""Large histories made fast, for tests and benchmarks of whole-database operations."""

from __future__ import annotations

from p2pchat.store import Store

_WORDS = "the plan for saturday is still on and we meet at the station around noon".split()


def history_body(i: int) -> str:
    """A chat-sized line (about 60 characters) that differs for every ``i``."""
    words = [_WORDS[(i * 7 + k) % len(_WORDS)] for k in range(9)]
    return f"#{i} " + " ".join(words)


def fill_history(store: Store, peer_id: str, count: int, *, now: float = 1_700_000_000.0) -> None:
    """``count`` delivered messages with ``peer_id``, alternating in and out, written with
    one ``executemany`` in one transaction (100,000 take a few seconds)."""
    rows = []
    sent = received = 0
    for i in range(count):
        at = now + i
        if i % 2:
            sent += 1
            rows.append((f"o{i:08d}", peer_id, "out", sent, history_body(i), at, None, "read", at))
        else:
            received += 1
            rows.append((f"i{i:08d}", peer_id, "in", received, history_body(i), at, at, "read", at))
    db = store._connection()
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(
            "INSERT INTO messages (id, peer_id, direction, seq, body, created_at, received_at,"
            " state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.execute(
            "INSERT INTO conversations (peer_id, send_seq, recv_seq, peer_read_seq, my_read_seq)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (peer_id) DO UPDATE SET send_seq ="
            " excluded.send_seq, recv_seq = excluded.recv_seq, peer_read_seq ="
            " excluded.peer_read_seq, my_read_seq = excluded.my_read_seq",
            (peer_id, sent, received, sent, received),
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise

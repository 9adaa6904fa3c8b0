"""The store's share of a message in a burst, without network or event loop.

What the node's group commits do to the store in a burst of 100-byte messages,
batches of ``--batch`` (128):

* sender: ``queue_message`` (an outbox journal append), then one group commit that
  folds the journaled messages, marks them sent and applies the contact's ack for
  them (the ack rides on the commit of the sent marks);
* receiver: one group commit of ``receive_messages``;
* for comparison, the sender's work in three commits (fold, marks, ack), as it was
  when an ack asked for a commit of its own.

``--indexes``: what each index of ``messages`` costs when a row goes in (CPU time of
the inserting thread, all indexes against each one dropped, on a store of 20,000
messages, 'in' rows and acknowledged 'out' rows as the store writes them).

Prints µs per message (median of 5 fresh stores) and the load average; run it under
``flock /work/bench.lock`` like every benchmark whose figures are kept.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pchat.core import chat
from p2pchat.store import Store

A = "a" * 52
B = "b" * 52
BODY = "x" * 100
ROUNDS = 40
REPEATS = 5


def burst(batch: int) -> dict[str, float]:
    """One fresh set of stores; µs per message of each step."""
    spent = dict.fromkeys(
        ("queue", "fold+mark+ack", "receive", "fold alone", "mark alone", "ack alone"), 0.0
    )
    clock = time.perf_counter
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        sender = Store(home / "a.db", journal=True)
        receiver = Store(home / "b.db", journal=True)
        apart = Store(home / "c.db", journal=True)
        sender.add_contact(B, "bob", now=1.0)
        apart.add_contact(B, "bob", now=1.0)
        receiver.add_contact(A, "alice", now=1.0)
        for _ in range(ROUNDS):
            t0 = clock()
            sent = [sender.queue_message(B, BODY, now=time.time()) for _ in range(batch)]
            spent["queue"] += clock() - t0
            t0 = clock()
            with sender.batch():
                sender.mark_sent(B, sent[-1].seq, time.time(), from_seq=sent[0].seq)
                sender.ack_outgoing(B, sent[-1].seq, time.time())
            spent["fold+mark+ack"] += clock() - t0
            frames = [
                chat.ChatMessage(id=m.id, seq=m.seq, base=1, sent_at=m.created_at, body=BODY)
                for m in sent
            ]
            t0 = clock()
            with receiver.batch():
                receiver.receive_messages(A, frames, now=time.time())
            spent["receive"] += clock() - t0
            sent = [apart.queue_message(B, BODY, now=time.time()) for _ in range(batch)]
            t0 = clock()
            apart.fold()
            spent["fold alone"] += clock() - t0
            t0 = clock()
            with apart.batch():
                apart.mark_sent(B, sent[-1].seq, time.time(), from_seq=sent[0].seq)
            spent["mark alone"] += clock() - t0
            t0 = clock()
            with apart.batch():
                apart.ack_outgoing(B, sent[-1].seq, time.time())
            spent["ack alone"] += clock() - t0
        for store in (sender, receiver, apart):
            store.close()
    return {k: v / ROUNDS / batch * 1e6 for k, v in spent.items()}


INDEXES = (
    "",
    "messages_peer_direction_seq",
    "messages_history",
    "messages_unread_in",
    "messages_unread_out",
    "messages_target",
)


def insert_cost(drop: str, direction: str) -> float:
    """CPU µs per row of inserting 'delivered' rows, 128 a transaction."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.db"
        Store(path).close()
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA synchronous = NORMAL")
        if drop:
            db.execute(f"DROP INDEX {drop}")
        seq = 0

        def insert(n: int, state: str) -> float:
            nonlocal seq
            rows = []
            for _ in range(n):
                seq += 1
                rows.append((secrets.token_hex(16), A, direction, seq, BODY, 1.0, state, 2.0))
            db.execute("BEGIN IMMEDIATE")
            t0 = time.thread_time()
            db.executemany(
                "INSERT INTO messages (id, peer_id, direction, seq, body, created_at, state,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            t = time.thread_time() - t0
            db.execute("COMMIT")
            return t

        for _ in range(20):
            insert(1000, "read")
        cost = statistics.median(insert(128, "delivered") for _ in range(ROUNDS))
        db.close()
    return cost / 128 * 1e6


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="messages per group commit")
    parser.add_argument("--indexes", action="store_true", help="cost of each messages index")
    opts = parser.parse_args()
    print(f"load average before: {load()}")
    if opts.indexes:
        for direction in ("in", "out"):
            costs = {name: [] for name in INDEXES}  # type: dict[str, list[float]]
            for _ in range(REPEATS):
                for name in INDEXES:
                    costs[name].append(insert_cost(name, direction))
            base = statistics.median(costs[""])
            print(f"'{direction}' rows, all indexes: {base:.2f} µs CPU per row")
            for name in INDEXES[1:]:
                without = statistics.median(costs[name])
                print(f"  without {name:30s} {without:6.2f}  (the index: {base - without:+.2f})")
    else:
        runs = [burst(opts.batch) for _ in range(REPEATS)]
        print(f"µs per message, batches of {opts.batch}, median of {REPEATS}")
        for step in runs[0]:
            print(f"  {step:14s} {statistics.median(r[step] for r in runs):7.1f}")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()

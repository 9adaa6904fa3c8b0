#!/usr/bin/env python3
"""What making one sent message durable costs: a SQLite commit against a journal append.

Usage (from the repository root)::

    python3 benchmarks/outbox_journal.py [--messages N] [--repeat R]

Each row is the median over R runs of N calls (µs per message), on a real file in
a temporary folder, WAL with ``synchronous = NORMAL`` (the store's settings):

* ``queue_message, one commit each``: the store's durable path before the
  journal, and still that of a store without it: one ``BEGIN IMMEDIATE``
  transaction per message (conversation counter, message row, outbox row, their
  indexes), around which such a store takes the journal's lock.
* ``bare one-row insert, one commit each``: the floor of any SQLite commit: one
  row into a table with no index.
* ``os.write of one framed record``: ``p2pchat.store.journal.encode`` and one
  ``os.write`` on an ``O_APPEND`` descriptor (plain, then sealed).
* ``Journal.append``: the journal's own call (framing, one write).
* ``store send path (journal)``: ``Store.queue_message`` on a store that owns its
  journal (a node's), plus its share of the fold: the records are folded into
  the database in one transaction every 256 messages, as a group commit of a
  loop turn does in a burst.

Both sides of the comparison give the same guarantee: the message survives the
process being killed once the call returned (the bytes are the kernel's), not a
power cut (neither fsyncs).  The figures depend on the machine and its load;
nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2pchat.store import Store  # noqa: E402
from p2pchat.store.journal import Entry, Journal, encode, journal_key  # noqa: E402

PEER = "b2" * 16
BODY = "x" * 100
KEY = bytes(range(32))


def per_call(setup: Callable[[Path], Callable[[int], None]], n: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="p2pchat-journal-") as tmp:
            step = setup(Path(tmp))
            for i in range(50):  # warm-up
                step(-1 - i)
            started = time.perf_counter()
            for i in range(n):
                step(i)
            times.append((time.perf_counter() - started) / n * 1e6)
    return median(times)


def queue_commit(folder: Path) -> Callable[[int], None]:
    store = Store(folder / "bench.db")

    def step(i: int) -> None:
        store.queue_message(PEER, BODY, now=1.0)

    return step


def bare_insert(folder: Path) -> Callable[[int], None]:
    db = sqlite3.connect(folder / "bare.db", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE t (a INTEGER, b TEXT)")

    def step(i: int) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?)", (i, BODY))
        db.execute("COMMIT")

    return step


def raw_write(key: bytes | None) -> Callable[[Path], Callable[[int], None]]:
    def setup(folder: Path) -> Callable[[int], None]:
        fd = os.open(folder / "raw", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

        def step(i: int) -> None:
            os.write(fd, encode([Entry(PEER, "a" * 32, i + 100, BODY, 1.0)], key))

        return step

    return setup


def journal_append(key: bytes | None) -> Callable[[Path], Callable[[int], None]]:
    def setup(folder: Path) -> Callable[[int], None]:
        journal = Journal(folder / "j", key)
        journal.try_own()

        def step(i: int) -> None:
            journal.append([Entry(PEER, "a" * 32, i + 100, BODY, 1.0)])

        return step

    return setup


def store_journal(key: bytes | None) -> Callable[[Path], Callable[[int], None]]:
    def setup(folder: Path) -> Callable[[int], None]:
        store = Store(folder / "bench.db", key=key, journal=True)

        def step(i: int) -> None:
            store.queue_message(PEER, BODY, now=1.0)
            if i % 256 == 255:
                store.fold()

        return step

    return setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, r = args.messages, args.repeat
    sealing = journal_key(KEY)
    print(f"p2pchat outbox journal micro-benchmark: N = {n}, R = {r} (median µs per message)")
    print(f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows: list[tuple[str, Callable[[Path], Callable[[int], None]]]] = [
        ("queue_message, one commit each", queue_commit),
        ("bare one-row insert, one commit each", bare_insert),
        ("os.write of one framed record", raw_write(None)),
        ("os.write of one sealed record", raw_write(sealing)),
        ("Journal.append", journal_append(None)),
        ("Journal.append, sealed", journal_append(sealing)),
        ("store send path (journal, fold every 256)", store_journal(None)),
        ("store send path, SQLCipher (journal, fold every 256)", store_journal(KEY)),
    ]
    for label, setup in rows:
        print(f"  {label:<54} {per_call(setup, n, r):8.1f} µs")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

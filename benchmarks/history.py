#!/usr/bin/env python3
"""History at scale: a conversation of 1,000,000 messages.

Usage (from the repository root)::

    python3 benchmarks/history.py [--messages 1000000] [--runs 20] [--no-cli]

A fresh home (identity, contact "bob", and 9 more contacts with 1,000 messages each)
gets ``--messages`` messages with bob, alternating in and out, about 60 characters of
chat each (generated, not typed: a sentence built from a word list and the message
number, so words repeat the way chat does).  Then, each timed ``--runs`` times and
reported as median and worst:

* open: ``Store(path)`` (connect, pragmas, schema check) and ``Node(paths)`` (the
  identity, the store and the node's start-up reads), not started;
* ``history(bob, limit=50)``: the newest page, what ``p2pchat history --limit 50``
  and the app show first;
* ``history(bob, before=ID, limit=50)``: a page 500,000 messages back, as the app
  asks when the user scrolls up;
* full-text index: how long indexing the whole history takes once (a home upgraded
  from a version without search; new messages are indexed as they come);
* ``search``: a word in every 13th message (most recent 50), a word and a number
  that match one message, a prefix, and a word restricted to another contact;
* through the CLI (unless ``--no-cli``): ``p2pchat history bob --limit 50`` and
  ``p2pchat search WORD`` against a daemon running on that home, wall time of the
  whole command (interpreter start-up included).

RSS: the benchmark process's peak resident memory (``ru_maxrss``) after the Node
calls, and the daemon's after its calls.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2pchat.config import Paths, save_settings  # noqa: E402
from p2pchat.identity import create_identity, load_identity  # noqa: E402
from p2pchat.node import Node  # noqa: E402
from p2pchat.store import Store  # noqa: E402

WORDS = (
    "the plan for saturday is still on and we meet at the station around noon bring "
    "coffee photos train late sorry great day tomorrow tonight dinner call later"
).split()


def body(i: int) -> str:
    words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(9)]
    return f"#{i} " + " ".join(words)


def fill(store: Store, peer: str, count: int, start_at: float) -> None:
    """``count`` delivered messages with ``peer``, alternating in and out, in chunks."""
    db = store._connection()
    sent = received = 0
    chunk = 50_000
    for first in range(0, count, chunk):
        rows = []
        for i in range(first, min(count, first + chunk)):
            at = start_at + i
            if i % 2:
                sent += 1
                rows.append((f"o{i:08d}", peer, "out", sent, body(i), at, None, "read", at))
            else:
                received += 1
                rows.append((f"i{i:08d}", peer, "in", received, body(i), at, at, "read", at))
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO messages (id, peer_id, direction, seq, body, created_at,"
            " received_at, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.execute("COMMIT")
    db.execute(
        "INSERT INTO conversations (peer_id, send_seq, recv_seq, sent_seq) VALUES (?, ?, ?, ?)",
        (peer, sent, received, sent),
    )


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, float, Any]:
    times = []
    result = None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3, max(times) * 1e3, result


def row(label: str, median: float, worst: float, note: str = "") -> None:
    print(f"| {label:<46} | {median:8.2f} | {worst:8.2f} | {note}")


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-cli", action="store_true")
    opts = parser.parse_args()
    print(
        f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} cores; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory(prefix="p2pchat-history-bench-") as tmp:
        paths = Paths(Path(tmp) / "alice")
        paths.ensure()
        create_identity(paths.identity)
        save_settings(paths, {"name": "alice", "listen": "127.0.0.1:0"})
        bob = create_identity(Path(tmp) / "bob.key").peer_id
        started = time.perf_counter()
        with Store(paths.database) as store:
            store.add_contact(bob, "bob", now=1.0)
            fill(store, bob, opts.messages, 1_600_000_000.0)
            for n in range(9):
                other = create_identity(Path(tmp) / f"c{n}.key").peer_id
                store.add_contact(other, f"contact{n}", now=1.0)
                fill(store, other, 1000, 1_700_000_000.0 + n * 10_000)
        wal = Path(f"{paths.database}-wal")  # gone when the last connection closed it
        size = paths.database.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        print(
            f"generated {opts.messages:,} messages with bob (+9,000 with others) in "
            f"{time.perf_counter() - started:.1f} s; database {size / 2**20:.0f} MiB\n"
        )
        print(f"| {'operation (ms)':<46} |   median |    worst | note")
        print(f"|{'-' * 48}|---------:|---------:|------")

        def open_store() -> None:
            Store(paths.database).close()

        row("open the store", *timed(open_store, opts.runs)[:2])
        node = Node(paths)
        try:
            node.store.close()

            def open_node() -> None:
                Node(paths).store.close()

            row("open the node (identity, store; not started)", *timed(open_node, 5)[:2])
        finally:
            pass
        node = Node(paths)
        try:
            median, worst, page = timed(lambda: node.history("bob", limit=50), opts.runs)
            assert len(page) == 50 and page[-1].body == body(opts.messages - 1)
            row("history(bob, limit=50): newest page", median, worst)
            deep = node.history("bob", limit=opts.messages // 2)[0]
            median, worst, older = timed(
                lambda: node.history("bob", before=deep.id, limit=50), opts.runs
            )
            assert len(older) == 50 and older[-1].seq <= deep.seq
            row("history(bob, before=ID, limit=50): 500k back", median, worst)
            started = time.perf_counter()
            indexed = node.store.index_messages()
            row(
                "full-text index of the whole history (once)",
                (time.perf_counter() - started) * 1e3,
                (time.perf_counter() - started) * 1e3,
                f"{indexed:,} messages",
            )
            third = opts.messages // 3  # its number and one of its words: one message
            rare = f"{third} {body(third).split()[1]}"
            queries: list[tuple[str, str, str | None]] = [
                ("search 'photos' (common word, newest 50)", "photos", None),
                (f"search '{rare}' (one message)", rare, None),
                ("search 'satur' (prefix)", "satur", None),
                ("search 'coffee' --contact contact3", "coffee", "contact3"),
            ]
            for label, text, contact in queries:
                median, worst, found = timed(
                    lambda t=text, c=contact: node.search(t, contact=c), opts.runs  # type: ignore[misc]
                )
                row(label, median, worst, f"{len(found)} found")
            usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(f"\npeak RSS of this process (generation included): {usage / 1024:.0f} MiB")
        finally:
            node.store.close()
        if opts.no_cli:
            return
        daemon = subprocess.Popen(
            [sys.executable, "-m", "p2pchat", "--home", str(paths.home), "daemon",
             "--listen", f"127.0.0.1:{free_udp_port()}", "--no-mdns", "--no-dht"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(),
        )  # fmt: skip
        try:
            assert daemon.stdout is not None
            line = daemon.stdout.readline()
            assert "listening" in line, line
            print("\nthrough the CLI against a daemon on that home (wall, whole command):")
            for label, args in (
                ("p2pchat history bob --limit 50", ["history", "bob", "--limit", "50"]),
                ("p2pchat search photos", ["search", "photos"]),
                ("p2pchat search photos --contact bob --json", ["search", "photos", "--contact",
                                                                "bob", "--json"]),
            ):  # fmt: skip
                argv = [sys.executable, "-m", "p2pchat", "--home", str(paths.home), *args]

                def run(argv: list[str] = argv) -> None:
                    done = subprocess.run(argv, capture_output=True, env=cli_env(), timeout=60)
                    assert done.returncode == 0, done.stderr

                run()
                row(label, *timed(run, opts.runs)[:2])
            print(f"daemon peak RSS: {rss_kib(daemon.pid) / 1024:.0f} MiB")
        finally:
            daemon.terminate()
            daemon.communicate(timeout=30)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    _ = load_identity
    main()

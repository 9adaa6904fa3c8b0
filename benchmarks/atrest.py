#!/usr/bin/env python3
"""Encryption at rest: what SQLCipher costs the store, and how long re-encryption takes.

Usage (from the repository root)::

    python3 benchmarks/atrest.py [--transactions N] [--history M] [--repeat R]

Per-transaction cost
    The store's own write path, ``Store.queue_message`` (one ``BEGIN IMMEDIATE``
    transaction: a conversation counter, a message row, an outbox row; WAL,
    ``synchronous=NORMAL``), N times, and ``Store.history(limit=50)`` N times,
    on a real file in a temporary folder, in three configurations:

    * plain: no passphrase, the standard library's sqlite3;
    * SQLCipher with ``cipher_memory_security = OFF`` (what p2pchat uses);
    * SQLCipher with ``cipher_memory_security = ON`` (SQLCipher wipes every
      buffer SQLite frees and locks its own allocations in memory).

    Each configuration runs in a fresh process (the setting is process-wide), R
    times; the median is reported.

Re-encryption
    ``change_passphrase`` (``p2pchat passphrase set``, then ``remove``) on a home
    of M messages filled straight into the tables: the time it reports, which is
    the database copy and the swap (the Argon2id runs come before it and are not
    counted), and ``open_home`` of the encrypted home (Argon2id included).

The figures depend on the machine and its load; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2pchat.atrest import change_passphrase, open_home  # noqa: E402
from p2pchat.config import Paths  # noqa: E402
from p2pchat.identity import create_identity  # noqa: E402
from p2pchat.store import Store  # noqa: E402
from tests.history import fill_history  # noqa: E402

PEER = "b2" * 16
KEY = bytes(range(32))
CONFIGS = ("plain", "sqlcipher, memory security OFF", "sqlcipher, memory security ON")


def measure(config: str, transactions: int) -> dict[str, float]:
    """Run in a child process: µs per write transaction and per history read."""
    with tempfile.TemporaryDirectory(prefix="p2pchat-atrest-") as tmp:
        key = None if config == "plain" else KEY
        with Store(Path(tmp) / "bench.db", key=key) as store:
            if config.endswith("ON"):
                store._connection().execute("PRAGMA cipher_memory_security = ON")
            for i in range(200):  # warm-up
                store.queue_message(PEER, f"warm-up message {i:04d} " + "x" * 60, now=1.0)
            started = time.perf_counter()
            for i in range(transactions):
                store.queue_message(PEER, f"bench message {i:06d} " + "x" * 60, now=2.0)
            write = (time.perf_counter() - started) / transactions * 1e6
            started = time.perf_counter()
            for _ in range(transactions):
                store.history(PEER, limit=50)
            read = (time.perf_counter() - started) / transactions * 1e6
    return {"write_us": write, "read_us": read}


def per_transaction(transactions: int, repeat: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, list[float]]] = {
        config: {"write_us": [], "read_us": []} for config in CONFIGS
    }
    for _ in range(repeat):
        for config in CONFIGS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", config, "--transactions", str(transactions)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            for name, value in json.loads(out.stdout).items():
                results[config][name].append(value)
    return {c: {k: median(v) for k, v in r.items()} for c, r in results.items()}


def reencryption(messages: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="p2pchat-atrest-") as tmp:
        paths = Paths(Path(tmp) / "home")
        paths.ensure()
        create_identity(paths.identity)
        identity, store = open_home(paths)
        with store:
            started = time.perf_counter()
            fill_history(store, PEER, messages)
            fill = time.perf_counter() - started
            size = paths.database.stat().st_size
            encrypt = change_passphrase(paths, store, identity, None, "bench")
        started = time.perf_counter()
        identity, store = open_home(paths, "bench")
        reopen = time.perf_counter() - started
        with store:
            decrypt = change_passphrase(paths, store, identity, "bench", None)
    return {
        "fill": fill,
        "size_mib": size / (1 << 20),
        "encrypt": encrypt.seconds,
        "decrypt": decrypt.seconds,
        "reopen": reopen,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=5000, metavar="N")
    parser.add_argument("--history", type=int, default=100_000, metavar="M")
    parser.add_argument("--repeat", type=int, default=3, metavar="R")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.transactions)))
        return 0
    import sqlcipher3

    cipher = sqlcipher3.connect(":memory:").execute("PRAGMA cipher_version").fetchone()[0]
    print(f"python     {platform.python_version()}, SQLCipher {cipher}")
    print(f"machine    {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"workload   {args.transactions:,} queue_message transactions and history(limit=50)"
        f" reads per run, median of {args.repeat} runs; re-encryption of {args.history:,}"
        " messages"
    )
    print()
    rows = per_transaction(args.transactions, args.repeat)
    plain = rows["plain"]
    print(f"{'':<34}{'write µs':>10}{'x plain':>9}{'read µs':>10}{'x plain':>9}")
    for config, row in rows.items():
        print(
            f"{config:<34}{row['write_us']:>10.1f}{row['write_us'] / plain['write_us']:>8.2f}x"
            f"{row['read_us']:>10.1f}{row['read_us'] / plain['read_us']:>8.2f}x"
        )
    print()
    r = reencryption(args.history)
    print(f"{args.history:,} messages, {r['size_mib']:.1f} MiB (filled in {r['fill']:.2f} s):")
    print(f"  passphrase set (encrypt, swap)     {r['encrypt']:.2f} s")
    print(f"  open the encrypted home            {r['reopen'] * 1000:.1f} ms")
    print(f"  passphrase remove (decrypt, swap)  {r['decrypt']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

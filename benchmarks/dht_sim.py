#!/usr/bin/env python3
"""DHT simulation benchmark: lookup success, hops and messages under churn.

Usage (from the repository root)::

    python3 benchmarks/dht_sim.py [--nodes 1000 10000] [--lookups 200] [--items 50] [--seed 1]

Runs ``tests/dht/sim.py``: N sans-IO ``DhtCore`` nodes on a simulated network with virtual
time (10-150 ms latency, datagrams to dead nodes dropped). Nodes join one at a time, 50
immutable items are stored, then 0%, 10% and 30% of the nodes are killed (cumulatively)
and, after one neighbourhood-refresh period, random ``find_node`` lookups and ``get``s run
from random live nodes. Nothing is sent on any real network.

Columns: success = the lookup returned exactly the true k closest live nodes; items = the
stored item was found; hops = longest referral chain to a final result; msgs = datagrams
per lookup (queries plus replies).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.dht.sim import run_simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    header = (
        f"{'nodes':>6} {'churn':>5} {'live':>6} {'success':>8} {'items':>7} "
        f"{'hops med':>8} {'hops mean':>9} {'hops max':>8} {'bound':>6} "
        f"{'msgs mean':>9} {'msgs med':>8}"
    )
    rows = []
    for n in args.nodes:
        print(f"simulating {n} nodes ...", flush=True)
        started = time.perf_counter()
        results = run_simulation(
            n, lookups=args.lookups, items=args.items, seed=args.seed, log=True
        )
        elapsed = time.perf_counter() - started
        bound = math.log2(n) / 3 + 2
        for r in results:
            rows.append(
                f"{n:>6} {r.churn:>5.0%} {r.live_nodes:>6} {r.lookup_success:>8.1%} "
                f"{r.item_success:>7.1%} {r.hops_median:>8.1f} {r.hops_mean:>9.2f} "
                f"{r.hops_max:>8} {bound:>6.2f} {r.messages_mean:>9.1f} {r.messages_median:>8.1f}"
            )
            if r.internal_errors:
                rows.append(f"       !! {r.internal_errors} internal errors")
        rows.append(f"       ({n} nodes: {elapsed:.0f} s wall clock)")
    print()
    print(header)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()

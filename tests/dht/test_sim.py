"""The simulated 1,000-node network: lookups must stay exact and short under churn."""

from __future__ import annotations

import math

from .sim import run_simulation


def test_thousand_nodes_under_churn() -> None:
    n = 1000
    results = {r.churn: r for r in run_simulation(n, lookups=200, items=50, seed=7)}
    bound = math.log2(n) / 3 + 2
    calm, light, heavy = results[0.0], results[0.1], results[0.3]
    assert calm.lookup_success == 1.0 and calm.item_success == 1.0
    assert light.lookup_success >= 0.99 and light.item_success >= 0.99
    assert heavy.lookup_success >= 0.99 and heavy.item_success >= 0.99
    for r in results.values():
        assert r.hops_median <= bound, r
        assert r.internal_errors == 0
        assert r.messages_mean < 60, r

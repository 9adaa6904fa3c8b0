"""Round-trip estimates and the lookup deadlines derived from them."""

from __future__ import annotations

import pytest

from p2pchat.dht.rtt import RttTable

A = ("198.51.100.1", 1)
B = ("198.51.100.2", 1)


def table(**kwargs: float) -> RttTable:
    limits = {"min_slow": 0.1, "max_slow": 1.0, "min_give_up": 0.25, "max_give_up": 2.0}
    limits.update(kwargs)
    return RttTable(**limits)  # type: ignore[arg-type]


def test_nothing_known_means_the_fixed_timeouts() -> None:
    t = table()
    assert t.slow_after(A) == 1.0 and t.give_up_after() == 2.0


def test_a_steady_node_is_slow_soon_after_its_usual_round_trip() -> None:
    t = table()
    for _ in range(30):
        t.sample(A, 0.2)
    assert t.srtt(A) == pytest.approx(0.2)
    assert t.slow_after(A) == pytest.approx(0.2, abs=0.01)
    assert t.give_up_after() == pytest.approx(0.4, abs=0.02)


def test_bounds_hold_for_very_fast_and_very_slow_networks() -> None:
    fast = table()
    for _ in range(10):
        fast.sample(A, 0.001)
    assert fast.slow_after(A) == 0.1 and fast.give_up_after() == 0.25
    slow = table()
    for _ in range(10):
        slow.sample(A, 5.0)
    assert slow.slow_after(A) == 1.0 and slow.give_up_after() == 2.0


def test_a_stale_high_estimate_yields_to_the_network_as_it_is_now() -> None:
    t = table()
    t.sample(A, 0.9)  # measured at a busy moment; A then died and never answers again
    for _ in range(50):
        t.sample(B, 0.02)
    assert t.slow_after(A) < 0.2
    t.forget(A)
    assert t.srtt(A) is None and t.slow_after(A) == t.slow_after(("203.0.113.9", 9))


def test_the_table_is_bounded() -> None:
    t = RttTable(min_slow=0.1, max_slow=1, min_give_up=0.25, max_give_up=2, max_entries=10)
    for i in range(100):
        t.sample((f"10.0.0.{i}", 1), 0.05)
    assert len(t) == 10

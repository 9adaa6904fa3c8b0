"""Routing table rules from BEP 5: buckets, node health, eviction, refresh, persistence."""

from __future__ import annotations

import random

import pytest

from p2pchat.dht.routing import GOOD_INTERVAL, NodeStatus, RoutingTable

OWN = bytes(20)


def nid(prefix_bits: str, fill: int = 0) -> bytes:
    """An ID starting with the given bits, the rest from ``fill``."""
    value = int(prefix_bits, 2) << (160 - len(prefix_bits)) if prefix_bits else 0
    value |= fill & ((1 << (160 - len(prefix_bits))) - 1)
    return value.to_bytes(20, "big")


def a(i: int) -> tuple[str, int]:
    return (f"10.0.{i // 256}.{i % 256}", 1000 + i)


def test_own_bucket_splits_far_buckets_do_not() -> None:
    table = RoutingTable(OWN)
    for i in range(8):
        table.on_response(nid("1", i + 1), a(i), 0)
    assert len(table.buckets) == 1
    table.on_response(nid("1", 100), a(100), 0)  # full bucket containing our ID: split
    assert len(table.buckets) == 2
    assert len(table) == 8  # the far half (prefix 1) is full, newcomer only a replacement
    assert len(table.buckets[0].replacements) == 1
    for i in range(8):
        table.on_response(nid("01", i + 1), a(200 + i), 0)
    table.on_response(nid("001", 1), a(300), 0)
    assert len(table) == 17
    assert [table.bucket_index(int.from_bytes(nid(p, 5), "big")) for p in "1 01 001".split()] == [
        0,
        1,
        2,
    ]


def test_node_status_follows_bep5() -> None:
    table = RoutingTable(OWN)
    table.on_response(nid("1", 1), a(1), 0)
    node = table.get(nid("1", 1))
    assert node is not None
    assert table.status(node, GOOD_INTERVAL) is NodeStatus.GOOD
    assert table.status(node, GOOD_INTERVAL + 1) is NodeStatus.QUESTIONABLE
    table.on_query(nid("1", 1), a(1), GOOD_INTERVAL + 100)  # queried us after responding
    assert table.status(node, GOOD_INTERVAL + 200) is NodeStatus.GOOD
    table.on_failure(a(1), 0)
    table.on_failure(a(1), 0)
    assert table.status(node, 0) is NodeStatus.BAD


def test_unconfirmed_node_is_never_vouched_for() -> None:
    table = RoutingTable(OWN)
    to_ping = table.on_query(nid("1", 1), a(1), 0)
    assert [n.id for n in to_ping] == [nid("1", 1)]  # verify it
    assert table.closest(nid("1"), 8, vouch=True) == []
    assert len(table.closest(nid("1"), 8)) == 1
    table.on_response(nid("1", 1), a(1), 1)
    assert len(table.closest(nid("1"), 8, vouch=True)) == 1


def test_failed_node_is_not_vouched_for() -> None:
    table = RoutingTable(OWN)
    table.on_response(nid("1", 1), a(1), 0)
    table.on_failure(a(1), 1)
    assert table.closest(nid("1"), 8, vouch=True) == []
    assert len(table.closest(nid("1"), 8)) == 1  # one failure: not bad yet


def fill_far_bucket(table: RoutingTable, now: float = 0) -> None:
    for i in range(8):
        table.on_response(nid("1", i + 1), a(i), now)
    table.on_response(nid("0", 1), a(50), now)  # split so bucket 0 is a far bucket


def test_good_nodes_are_never_evicted() -> None:
    table = RoutingTable(OWN)
    fill_far_bucket(table)
    before = {n.id for n in table.buckets[0].nodes}
    to_ping = table.on_response(nid("1", 999), a(999), 10)
    assert to_ping == []  # all good: nothing to question
    assert {n.id for n in table.buckets[0].nodes} == before


def test_questionable_nodes_are_pinged_then_replaced() -> None:
    table = RoutingTable(OWN)
    fill_far_bucket(table)
    later = GOOD_INTERVAL + 10
    to_ping = table.on_response(nid("1", 999), a(999), later)
    assert len(to_ping) == 2 and all(n.ping_pending for n in to_ping)
    victim = to_ping[0]
    table.on_failure(victim.addr, later + 2)
    assert table.get(victim.id) is not None  # one failure is not enough
    table.on_failure(victim.addr, later + 4)
    assert table.get(victim.id) is None
    assert table.get(nid("1", 999)) is not None  # the replacement took its place


def test_bad_node_is_replaced_immediately_by_a_newcomer() -> None:
    table = RoutingTable(OWN)
    fill_far_bucket(table)
    for _ in range(2):
        table.on_failure(a(3), 1)
    table.on_response(nid("1", 999), a(999), 2)
    assert table.get(nid("1", 4)) is None and table.get(nid("1", 999)) is not None


def test_confirmed_newcomer_displaces_unconfirmed_node() -> None:
    table = RoutingTable(OWN)
    table.on_response(nid("0", 1), a(50), 0)
    for i in range(7):
        table.on_response(nid("1", i + 1), a(i), 0)
    table.on_query(nid("1", 77), a(77), 0)  # unconfirmed, fills the bucket
    table.on_response(nid("0", 2), a(51), 0)  # split
    table.on_response(nid("1", 999), a(999), 1)
    assert table.get(nid("1", 77)) is None and table.get(nid("1", 999)) is not None


def test_good_node_keeps_its_address() -> None:
    table = RoutingTable(OWN)
    table.on_response(nid("1", 1), a(1), 0)
    table.on_response(nid("1", 1), a(2), 1)  # someone claims the ID from elsewhere
    node = table.get(nid("1", 1))
    assert node is not None and node.addr == a(1)
    table.on_query(nid("1", 5), a(1), 2)  # and a spoofed query reusing the address
    assert table.get(nid("1", 5)) is None


def test_own_id_and_garbage_ids_ignored() -> None:
    table = RoutingTable(OWN)
    table.on_response(OWN, a(1), 0)
    table.on_response(b"short", a(2), 0)
    assert len(table) == 0


def test_closest_orders_by_xor_distance() -> None:
    rng = random.Random(5)
    own = rng.randbytes(20)
    table = RoutingTable(own)
    ids = [rng.randbytes(20) for _ in range(300)]
    for i, node_id in enumerate(ids):
        table.on_response(node_id, a(i), 0)
    target = rng.randbytes(20)
    t = int.from_bytes(target, "big")
    got = [n.id for n in table.closest(target, 8)]
    known = sorted((n.id for n in table), key=lambda x: int.from_bytes(x, "big") ^ t)
    assert got == known[:8]
    # Near our own ID the table is complete: the 8 closest of all are known.
    near = sorted(ids, key=lambda x: int.from_bytes(x, "big") ^ int.from_bytes(own, "big"))
    assert {n.id for n in table.closest(own, 8)} == set(near[:8])


def test_refresh_targets_fall_in_their_bucket() -> None:
    rng = random.Random(1)
    table = RoutingTable(rng.randbytes(20))
    for i in range(200):
        table.on_response(rng.randbytes(20), a(i), 0)
    assert table.stale_buckets(GOOD_INTERVAL - 1) == []
    stale = table.stale_buckets(GOOD_INTERVAL + 1)
    assert stale == list(range(len(table.buckets)))
    for index in stale:
        target = table.random_id_in_bucket(index, rng)
        assert table.bucket_index(int.from_bytes(target, "big")) == index
    table.mark_refreshed(0, GOOD_INTERVAL + 1)
    assert 0 not in table.stale_buckets(GOOD_INTERVAL + 2)


def test_serialisation_round_trip() -> None:
    rng = random.Random(2)
    table = RoutingTable(rng.randbytes(20))
    for i in range(60):
        table.on_response(rng.randbytes(20), a(i), 0)
    table.on_response(rng.randbytes(20), ("2001:db8::5", 7), 0)
    data = table.to_bytes()
    again = RoutingTable.from_bytes(data, now=5)
    assert again.own_id == table.own_id
    assert {(n.id, n.addr) for n in again} == {(n.id, n.addr) for n in table}
    assert not any(n.confirmed for n in again)  # re-verified after a restart


@pytest.mark.parametrize("data", [b"", b"garbage", b"d3:veri9ee", b"d2:id3:abc3:veri1ee"])
def test_damaged_state_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        RoutingTable.from_bytes(data)


def test_rebuilding_around_a_new_id_keeps_contacts() -> None:
    rng = random.Random(3)
    table = RoutingTable(rng.randbytes(20))
    for i in range(40):
        table.on_response(rng.randbytes(20), a(i), 0)
    moved = table.with_own_id(rng.randbytes(20), 1)
    assert len(moved) >= 8 and {n.id for n in moved} <= {n.id for n in table}
    assert all(n.confirmed for n in moved)

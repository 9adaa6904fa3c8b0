"""What we believe about our own reflexive addresses and NAT kind, and from whom."""

from __future__ import annotations

import pytest

from p2pchat.dht.reflexive import (
    NAT_ED,
    NAT_EI,
    NAT_NONE,
    NAT_UNKNOWN,
    SOURCE_BOOTSTRAP,
    SOURCE_CONTACT,
    SOURCE_DHT,
    SOURCE_RENDEZVOUS,
    ReflexiveAddresses,
)


def book(**kwargs: object) -> ReflexiveAddresses:
    kwargs.setdefault("threshold", 3)
    kwargs.setdefault("local_port", 5000)
    return ReflexiveAddresses(**kwargs)  # type: ignore[arg-type]


def test_strangers_need_distinct_voters() -> None:
    b = book()
    assert not b.observe("1.1.1.1", ("9.9.9.9", 5000), SOURCE_DHT, 0)
    assert not b.observe("1.1.1.1", ("9.9.9.9", 5000), SOURCE_DHT, 1)  # same voter twice
    assert not b.observe("2.2.2.2", ("9.9.9.9", 5000), SOURCE_DHT, 2)
    assert b.primary is None and b.nat_kind == NAT_UNKNOWN
    assert b.observe("3.3.3.3", ("9.9.9.9", 5000), SOURCE_DHT, 3)
    primary = b.primary
    assert primary is not None
    assert (primary.addr, primary.observers, primary.trusted) == (("9.9.9.9", 5000), 3, False)
    assert b.nat_kind == NAT_EI  # three observers, one port (our local IP is not 9.9.9.9)
    assert not b.observe("4.4.4.4", ("9.9.9.9", 5000), SOURCE_DHT, 4)  # unchanged
    assert set(b.observations()) == {"1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"}


@pytest.mark.parametrize("source", [SOURCE_BOOTSTRAP, SOURCE_CONTACT, SOURCE_RENDEZVOUS])
def test_one_trusted_observer_is_enough(source: str) -> None:
    b = book()
    assert b.observe("them", ("9.9.9.9", 6000), source, 0)
    assert b.primary is not None and b.primary.addr == ("9.9.9.9", 6000) and b.primary.trusted
    assert b.nat_kind == NAT_UNKNOWN  # one observer cannot tell the mapping behaviour


def test_our_own_address_seen_means_no_nat() -> None:
    b = book(local_ips=frozenset({"198.51.100.11", "10.0.0.5"}))
    b.observe("198.51.100.100:4001", ("198.51.100.11", 5000), SOURCE_BOOTSTRAP, 0)
    assert b.nat_kind == NAT_NONE
    # Same IP, another port: a firewall or NAT that translates ports is in the way.
    other = book(local_ips=frozenset({"198.51.100.11"}))
    other.observe("boot", ("198.51.100.11", 5001), SOURCE_BOOTSTRAP, 0)
    assert other.nat_kind == NAT_UNKNOWN
    assert other.set_local(frozenset({"198.51.100.11"}), 5001)  # the port was rebound
    assert other.nat_kind == NAT_NONE


def test_same_port_from_two_observers_is_endpoint_independent() -> None:
    b = book()
    b.observe("boot", ("9.9.9.9", 6000), SOURCE_BOOTSTRAP, 0)
    assert b.observe("peer-a", ("9.9.9.9", 6000), SOURCE_CONTACT, 1)
    assert b.nat_kind == NAT_EI


def test_different_ports_are_endpoint_dependent() -> None:
    b = book()
    b.observe("boot", ("9.9.9.9", 40001), SOURCE_BOOTSTRAP, 0)
    b.observe("rv", ("9.9.9.9", 40002), SOURCE_RENDEZVOUS, 1)
    assert b.nat_kind == NAT_ED
    # The reflexive IP is still worth publishing: random-port punching aims at it.
    assert b.primary is not None and b.primary.ip == "9.9.9.9"
    strangers = book()
    for i, port in enumerate((40001, 40002, 40003)):
        strangers.observe(f"1.1.1.{i}", ("9.9.9.9", port), SOURCE_DHT, i)
    assert strangers.nat_kind == NAT_ED


def test_one_stale_port_does_not_flip_a_consistent_majority() -> None:
    b = book()
    for i in range(3):
        b.observe(f"1.1.1.{i}", ("9.9.9.9", 6000), SOURCE_DHT, i)
    b.observe("1.1.1.9", ("9.9.9.9", 6001), SOURCE_DHT, 5)
    assert b.nat_kind == NAT_EI


def test_a_minority_of_liars_does_not_win() -> None:
    b = book()
    b.observe("6.6.6.6", ("1.2.3.4", 1), SOURCE_DHT, 0)
    b.observe("6.6.6.7", ("1.2.3.4", 1), SOURCE_DHT, 0)
    for i in range(4):
        b.observe(f"8.8.8.{i}", ("9.9.9.9", 7), SOURCE_DHT, 0)
    assert [a.ip for a in b.accepted] == ["9.9.9.9"]


def test_a_lying_stranger_cannot_override_the_bootstrap() -> None:
    b = book()
    b.observe("boot", ("9.9.9.9", 6000), SOURCE_BOOTSTRAP, 0)
    b.observe("6.6.6.6", ("1.2.3.4", 1), SOURCE_DHT, 0)
    assert [a.addr for a in b.accepted] == [("9.9.9.9", 6000)]


def test_public_addresses_come_first() -> None:
    b = book()
    b.observe("lan-boot", ("10.0.0.5", 5000), SOURCE_BOOTSTRAP, 0)
    b.observe("contact", ("9.9.9.9", 6000), SOURCE_CONTACT, 1)
    assert [a.ip for a in b.accepted] == ["9.9.9.9", "10.0.0.5"]


def test_a_trusted_observer_moving_forgets_the_old_address_at_once() -> None:
    b = book()
    for i in range(3):
        b.observe(f"1.1.1.{i}", ("9.9.9.9", 6000), SOURCE_DHT, i)
    b.observe("boot", ("9.9.9.9", 6000), SOURCE_BOOTSTRAP, 3)
    assert b.observe("boot", ("7.7.7.7", 6000), SOURCE_BOOTSTRAP, 10)  # new network
    assert [a.ip for a in b.accepted] == ["7.7.7.7"]


def test_two_strangers_moving_forget_the_old_address() -> None:
    b = book()
    for i in range(4):
        b.observe(f"1.1.1.{i}", ("9.9.9.9", 6000), SOURCE_DHT, i)
    b.observe("1.1.1.0", ("7.7.7.7", 6000), SOURCE_DHT, 10)
    assert [a.ip for a in b.accepted] == ["9.9.9.9"]  # one mover could be a liar
    b.observe("1.1.1.1", ("7.7.7.7", 6000), SOURCE_DHT, 11)
    assert b.accepted == ()  # the old IP is gone; the new one needs its three votes
    b.observe("1.1.1.2", ("7.7.7.7", 6000), SOURCE_DHT, 12)
    assert [a.ip for a in b.accepted] == ["7.7.7.7"]


def test_observations_are_bounded_and_expire() -> None:
    b = book(max_strangers=5, max_trusted=2, lifetime=10)
    for i in range(50):
        b.observe(f"1.1.{i}.1", ("9.9.9.9", 1), SOURCE_DHT, 0)
        b.observe(f"peer{i}", ("9.9.9.9", 1), SOURCE_CONTACT, 0)
    assert len(b.observations()) == 7
    assert b.observe("2.2.2.2", ("9.9.9.9", 1), SOURCE_DHT, 100)
    assert list(b.observations()) == ["2.2.2.2"] and b.accepted == ()
    # A flood of stranger votes never pushes out what a trusted observer said.
    b.observe("boot", ("8.8.8.8", 2), SOURCE_BOOTSTRAP, 100)
    for i in range(50):
        b.observe(f"3.3.{i}.1", ("6.6.6.6", 1), SOURCE_DHT, 100)
    assert "boot" in b.observations()
    assert b.expire(200) and b.accepted == ()


def test_unknown_source_is_a_local_error() -> None:
    with pytest.raises(ValueError):
        book().observe("x", ("9.9.9.9", 1), "gossip", 0)

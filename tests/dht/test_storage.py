"""BEP 44 items (with the BEP's test vectors), peers, and write tokens."""

from __future__ import annotations

import hashlib
import random

import nacl.bindings as sodium
import nacl.signing
import pytest

from p2pchat.dht.bencode import bencode
from p2pchat.dht.storage import (
    Item,
    ItemStore,
    PeerStore,
    PutRejected,
    TokenManager,
    immutable_target,
    mutable_target,
    signature_buffer,
    verify_signature,
)

from .helpers import (
    BEP44_PRIVATE_KEY,
    BEP44_PUBLIC_KEY,
    BEP44_SIG_PLAIN,
    BEP44_SIG_SALTED,
    BEP44_TARGET_IMMUTABLE,
    BEP44_TARGET_PLAIN,
    BEP44_TARGET_SALTED,
)

HELLO = b"12:Hello World!"


def sign_with_expanded_key(expanded: bytes, message: bytes) -> bytes:
    """Ed25519 with the 64-byte expanded secret key the BEP prints (scalar + prefix)."""
    scalar = sodium.crypto_core_ed25519_scalar_reduce(expanded[:32] + bytes(32))
    public = sodium.crypto_scalarmult_ed25519_base_noclamp(scalar)
    r = sodium.crypto_core_ed25519_scalar_reduce(hashlib.sha512(expanded[32:] + message).digest())
    big_r = sodium.crypto_scalarmult_ed25519_base_noclamp(r)
    k = sodium.crypto_core_ed25519_scalar_reduce(hashlib.sha512(big_r + public + message).digest())
    s = sodium.crypto_core_ed25519_scalar_add(r, sodium.crypto_core_ed25519_scalar_mul(k, scalar))
    return bytes(big_r + s)


def test_bep44_vector_1_mutable() -> None:
    buffer = signature_buffer(b"", 1, HELLO)
    assert buffer == b"3:seqi1e1:v12:Hello World!"
    assert sign_with_expanded_key(BEP44_PRIVATE_KEY, buffer) == BEP44_SIG_PLAIN
    assert verify_signature(BEP44_PUBLIC_KEY, b"", 1, HELLO, BEP44_SIG_PLAIN)
    assert mutable_target(BEP44_PUBLIC_KEY) == BEP44_TARGET_PLAIN
    item = Item(value=HELLO, key=BEP44_PUBLIC_KEY, signature=BEP44_SIG_PLAIN, seq=1)
    assert item.verify() and item.target == BEP44_TARGET_PLAIN


def test_bep44_vector_2_mutable_with_salt() -> None:
    buffer = signature_buffer(b"foobar", 1, HELLO)
    assert buffer == b"4:salt6:foobar3:seqi1e1:v12:Hello World!"
    assert sign_with_expanded_key(BEP44_PRIVATE_KEY, buffer) == BEP44_SIG_SALTED
    item = Item(
        value=HELLO, key=BEP44_PUBLIC_KEY, signature=BEP44_SIG_SALTED, seq=1, salt=b"foobar"
    )
    assert item.verify() and item.target == BEP44_TARGET_SALTED


def test_bep44_vector_3_immutable() -> None:
    assert immutable_target(HELLO) == BEP44_TARGET_IMMUTABLE
    assert Item(value=HELLO).target == BEP44_TARGET_IMMUTABLE


def test_forged_or_altered_items_fail() -> None:
    good = Item(value=HELLO, key=BEP44_PUBLIC_KEY, signature=BEP44_SIG_PLAIN, seq=1)
    for bad in (
        Item(value=HELLO, key=BEP44_PUBLIC_KEY, signature=BEP44_SIG_PLAIN, seq=2),
        Item(value=b"3:abc", key=BEP44_PUBLIC_KEY, signature=BEP44_SIG_PLAIN, seq=1),
        Item(value=HELLO, key=BEP44_PUBLIC_KEY, signature=BEP44_SIG_PLAIN, seq=1, salt=b"x"),
        Item(value=HELLO, key=bytes(32), signature=BEP44_SIG_PLAIN, seq=1),
        Item(value=HELLO, key=BEP44_PUBLIC_KEY, signature=bytes(64), seq=1),
    ):
        assert not bad.verify()
    assert good.verify()


KEY = nacl.signing.SigningKey(bytes(range(32)))
PUB = bytes(KEY.verify_key)


def signed(value: bytes, seq: int, salt: bytes = b"") -> Item:
    return Item.sign(lambda m: KEY.sign(m).signature, PUB, value, seq, salt)


def test_item_store_rules() -> None:
    store = ItemStore()
    first = signed(bencode(b"one"), 5)
    assert store.put(first, source="1.1.1.1", now=0)
    assert store.get(first.target, 1) == first
    with pytest.raises(PutRejected) as old:
        store.put(signed(bencode(b"older"), 4), source="1.1.1.1", now=1)
    assert old.value.code == 302
    with pytest.raises(PutRejected) as same_seq:
        store.put(signed(bencode(b"other"), 5), source="1.1.1.1", now=1)
    assert same_seq.value.code == 302
    assert store.put(first, source="1.1.1.1", now=2)  # same item again: a refresh
    with pytest.raises(PutRejected) as cas:
        store.put(signed(bencode(b"new"), 6), source="1.1.1.1", now=2, cas=4)
    assert cas.value.code == 301
    assert store.put(signed(bencode(b"new"), 6), source="1.1.1.1", now=2, cas=5)
    with pytest.raises(PutRejected) as big:
        store.put(signed(bencode(b"x" * 1000), 7), source="1.1.1.1", now=2)
    assert big.value.code == 205
    with pytest.raises(PutRejected) as salt:
        store.put(signed(bencode(b"x"), 7, b"s" * 65), source="1.1.1.1", now=2)
    assert salt.value.code == 207
    forged = Item(value=bencode(b"evil"), key=PUB, signature=bytes(64), seq=99)
    with pytest.raises(PutRejected) as sig:
        store.put(forged, source="6.6.6.6", now=2)
    assert sig.value.code == 206


def test_item_store_expiry_and_limits() -> None:
    store = ItemStore(max_items=10, max_per_source=3, lifetime=100)
    items = [Item(value=bencode(b"v%d" % i)) for i in range(20)]
    assert all(store.put(items[i], source="1.1.1.1", now=0) for i in range(3))
    assert not store.put(items[3], source="1.1.1.1", now=0)  # per-source cap
    for i in range(3, 20):
        store.put(items[i], source=f"2.2.{i}.1", now=i)
    assert len(store) == 10  # total cap, oldest evicted
    assert store.get(items[19].target, 50) is not None
    assert store.get(items[19].target, 200) is None
    store.expire(200)
    assert len(store) == 0


def test_peer_store_limits() -> None:
    rng = random.Random(1)
    peers = PeerStore(max_per_hash=5, max_hashes=2, max_per_ip=2, lifetime=60)
    h1, h2, h3 = b"1" * 20, b"2" * 20, b"3" * 20
    for port in range(1, 10):
        peers.announce(h1, ("1.1.1.1", port), port)
    assert len(peers.peers(h1, 10, 50, rng)) == 2  # one IP cannot fill the swarm
    for i in range(10):
        peers.announce(h1, (f"2.2.2.{i}", 1), 10 + i)
    assert len(peers.peers(h1, 20, 50, rng)) == 5
    assert len(peers.peers(h1, 20, 3, rng)) == 3
    assert peers.announce(h2, ("3.3.3.3", 1), 0)
    assert not peers.announce(h3, ("3.3.3.3", 1), 0)  # too many swarms
    assert peers.peers(h1, 1000, 50, rng) == []
    peers.expire(1000)
    assert peers.swarm_count() == 0


def test_peer_store_filters_family() -> None:
    peers = PeerStore()
    peers.announce(b"h" * 20, ("1.1.1.1", 1), 0)
    peers.announce(b"h" * 20, ("2001:db8::1", 1), 0)
    rng = random.Random(0)
    assert peers.peers(b"h" * 20, 1, 10, rng, family=4) == [("1.1.1.1", 1)]
    assert peers.peers(b"h" * 20, 1, 10, rng, family=6) == [("2001:db8::1", 1)]


def test_tokens_are_bound_to_ip_and_expire() -> None:
    tokens = TokenManager(now=0, rotation=300)
    token = tokens.token_for("1.2.3.4", 0)
    assert tokens.is_valid(token, "1.2.3.4", 10)
    assert not tokens.is_valid(token, "1.2.3.5", 10)  # issued to another IP
    assert not tokens.is_valid(b"x" * len(token), "1.2.3.4", 10)
    assert tokens.is_valid(token, "1.2.3.4", 301)  # previous secret still accepted
    assert not tokens.is_valid(token, "1.2.3.4", 601)  # two rotations: gone
    fresh = tokens.token_for("1.2.3.4", 700)
    assert not tokens.is_valid(fresh, "1.2.3.4", 5000)  # long sleep voids everything

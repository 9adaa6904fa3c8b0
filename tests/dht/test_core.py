"""DhtCore end to end over an in-memory wire, and against hostile input."""

from __future__ import annotations

import random
from typing import Any

import nacl.signing
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.dht.bencode import bdecode, bencode
from p2pchat.dht.bep42 import is_valid_node_id, node_id_for_ip
from p2pchat.dht.core import DhtConfig, DhtCore
from p2pchat.dht.events import (
    AnnounceDone,
    ExternalAddressChanged,
    GetItemDone,
    LookupDone,
    NodeIdChanged,
    PeersFound,
    PutDone,
)
from p2pchat.dht.krpc import MAX_DATAGRAM, ErrorMessage, Ping, Response, encode_message
from p2pchat.dht.records import PeerRecord, make_record_item, read_record_item
from p2pchat.dht.reflexive import NAT_EI
from p2pchat.dht.storage import Item
from p2pchat.identity import Identity

from .helpers import Wire, addr, make_core, query_bytes, replies

PEER = ("127.9.9.9", 5555)
OTHER = ("127.9.9.10", 5555)
KEY = nacl.signing.SigningKey(bytes(range(32)))
PUB = bytes(KEY.verify_key)


def signed(value: bytes, seq: int, salt: bytes = b"") -> Item:
    return Item.sign(lambda m: KEY.sign(m).signature, PUB, value, seq, salt)


def swarm(n: int = 24, **kwargs: Any) -> Wire:
    wire = Wire()
    first, _ = wire.add(0, **kwargs)
    for i in range(1, n):
        _, core = wire.add(i, **kwargs)
        core.bootstrap([first], wire.now)
        wire.run()
    for _a, core in wire.cores.items():
        core.bootstrap([], wire.now)
        wire.run()
    return wire


def ask(
    core: DhtCore,
    method: bytes,
    args: dict[bytes, Any],
    src: tuple[str, int] = PEER,
    now: float = 100.0,
    **top: Any,
) -> Any:
    core.receive_datagram(query_bytes(method, args, **top), src, now)
    # Our answer, not the verification ping the core may also send to a new contact.
    out = [m for m in replies(core) if isinstance(m, Response | ErrorMessage)]
    assert len(out) <= 1
    return out[0] if out else None


def token_for(core: DhtCore, src: tuple[str, int] = PEER, now: float = 100.0) -> bytes:
    reply = ask(core, b"get_peers", {b"id": b"p" * 20, b"info_hash": b"h" * 20}, src, now)
    assert isinstance(reply, Response) and reply.token
    return reply.token


# ------------------------------------------------------------------ serving


def test_ping_reply_carries_our_id_and_their_address() -> None:
    core = make_core(1, now=100)
    reply = ask(core, b"ping", {b"id": b"p" * 20})
    assert isinstance(reply, Response)
    assert reply.tid == b"aa" and reply.sender_id == core.node_id and reply.ip == PEER


def test_malformed_query_gets_203_unknown_method_204() -> None:
    core = make_core(1, now=100)
    bad = ask(core, b"ping", {b"id": b"short"})
    assert isinstance(bad, ErrorMessage) and bad.code == 203 and bad.ip == PEER
    unknown = ask(core, b"vote", {b"id": b"p" * 20})
    assert isinstance(unknown, ErrorMessage) and unknown.code == 204


def test_garbage_and_unsolicited_replies_are_dropped_silently() -> None:
    core = make_core(1, now=100)
    for data in (b"", b"d", b"hello", b"i5e", b"d1:t2:aa1:y1:re", b"x" * 3000):
        core.receive_datagram(data, PEER, 100)
    stray = encode_message(Response(tid=b"zz", sender_id=b"p" * 20))
    core.receive_datagram(stray, PEER, 100)
    assert core.datagrams_to_send() == []
    assert core.stats["internal_errors"] == 0
    assert core.stats["dropped_unsolicited"] == 1


def test_reply_from_the_wrong_address_is_ignored() -> None:
    core = make_core(1, now=100)
    core.find_node(b"t" * 20, 100)
    core.bootstrap([PEER], 100)
    ((data, _dst),) = core.datagrams_to_send()
    tid = bdecode(data)[b"t"]
    core.receive_datagram(encode_message(Response(tid=tid, sender_id=b"p" * 20)), OTHER, 100)
    assert core.pending_count() == 1
    core.receive_datagram(encode_message(Response(tid=tid, sender_id=b"p" * 20)), PEER, 100)
    assert core.pending_count() == 0


def test_find_node_only_vouches_for_nodes_that_answered() -> None:
    core = make_core(1, now=100)
    ask(core, b"ping", {b"id": b"q" * 20}, src=OTHER)  # queried us: unconfirmed
    reply = ask(core, b"find_node", {b"id": b"p" * 20, b"target": b"q" * 20})
    assert reply.nodes == ()


def test_read_only_node_does_not_answer_and_says_so() -> None:
    core = make_core(1, now=100, read_only=True)
    assert ask(core, b"ping", {b"id": b"p" * 20}) is None
    core.bootstrap([PEER], 100)
    ((data, _),) = core.datagrams_to_send()
    assert bdecode(data)[b"ro"] == 1


def test_read_only_peers_stay_out_of_the_table() -> None:
    core = make_core(1, now=100)
    ask(core, b"ping", {b"id": b"p" * 20}, ro=1)
    assert len(core.routing_table()) == 0
    ask(core, b"ping", {b"id": b"p" * 20})
    assert len(core.routing_table()) == 1


def test_bep42_enforcement_keeps_forged_ids_out() -> None:
    core = make_core(1, now=100, enforce_bep42=True)
    public = ("124.31.75.21", 6881)
    ask(core, b"ping", {b"id": b"p" * 20}, src=public)
    assert len(core.routing_table()) == 0
    good = bytes.fromhex("5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401")
    ask(core, b"ping", {b"id": good}, src=public)
    assert core.routing_table().get(good) is not None
    ask(core, b"ping", {b"id": b"r" * 20}, src=("127.0.0.5", 1))  # loopback is exempt
    assert core.routing_table().get(b"r" * 20) is not None


def test_rate_limit_per_source_ip() -> None:
    config = DhtConfig(rate_per_ip=10, burst_per_ip=20)
    core = make_core(1, now=100, config=config)
    for _ in range(500):
        core.receive_datagram(query_bytes(b"ping", {b"id": b"p" * 20}), PEER, 100)
    answers = [m for m in replies(core) if isinstance(m, Response)]
    assert len(answers) == 20
    assert core.stats["dropped_rate"] == 480
    assert ask(core, b"ping", {b"id": b"q" * 20}, src=OTHER) is not None  # others unaffected
    for _ in range(50):
        core.receive_datagram(query_bytes(b"ping", {b"id": b"p" * 20}), PEER, 101)
    assert len([a for _, a in core.datagrams_to_send() if a == PEER]) == 10


def test_rate_table_is_bounded() -> None:
    core = make_core(1, now=100, config=DhtConfig(max_rate_entries=50))
    for i in range(500):
        core.receive_datagram(
            query_bytes(b"ping", {b"id": b"p" * 20}), (f"127.1.{i // 250}.{i % 250}", 1), 100
        )
    assert len(core._rate) == 50


def test_global_budget_for_unverified_sources_keeps_a_share_for_verified_ones() -> None:
    """Forged source addresses defeat a per-IP limit: replies to sources that never
    answered us share one small budget, nodes that did keep their own."""
    config = DhtConfig(
        unverified_reply_rate=10,
        unverified_reply_burst=20,
        verified_reply_rate=5,
        verified_reply_burst=10,
    )
    wire = Wire()
    _me, core = wire.add(1, config=config)
    friend, other = wire.add(2, config=config)
    core.bootstrap([friend], wire.now)  # the friend answers us: verified
    wire.run()
    assert core.is_verified(friend, wire.now)
    wire.advance(5)  # the budgets are full again
    before = core.stats["replies_unverified"]
    ping = query_bytes(b"ping", {b"id": b"p" * 20})
    for i in range(256):
        for _ in range(5):
            core.receive_datagram(ping, (f"127.50.{i}.1", 6881), wire.now)
    answered = [a for data, a in core.datagrams_to_send() if bdecode(data)[b"y"] != b"q"]
    assert len(answered) == 20  # the unverified burst, whatever the number of sources
    assert core.stats["replies_unverified"] - before == 20
    assert core.stats["dropped_budget_unverified"] == 256 * 5 - 20
    # The verified friend is still answered, from its own share.
    op = other.find_node(b"t" * 20, wire.now)
    wire.run()
    assert isinstance(wire.event_for(friend, op), LookupDone)
    assert core.stats["replies_verified"] >= 1
    # The unverified budget refills at its rate.
    core.receive_datagram(ping, ("127.60.0.1", 6881), wire.now + 1.0)
    assert any(a == ("127.60.0.1", 6881) for _, a in core.datagrams_to_send())


# ------------------------------------------------------------------ tokens and storage


def test_announce_needs_a_token_from_the_same_ip() -> None:
    core = make_core(1, now=100)
    token = token_for(core)
    args = {b"id": b"p" * 20, b"info_hash": b"h" * 20, b"port": 7000, b"token": token}
    wrong = ask(core, b"announce_peer", {**args, b"token": b"nottoken"})
    assert isinstance(wrong, ErrorMessage) and wrong.code == 203
    stolen = ask(core, b"announce_peer", args, src=OTHER)
    assert isinstance(stolen, ErrorMessage) and stolen.code == 203
    assert core.stored_peer_count() == 0
    assert isinstance(ask(core, b"announce_peer", args), Response)
    implied = {**args, b"implied_port": 1}
    assert isinstance(ask(core, b"announce_peer", implied), Response)
    reply = ask(core, b"get_peers", {b"id": b"q" * 20, b"info_hash": b"h" * 20}, src=OTHER)
    assert set(reply.values) == {(PEER[0], 7000), PEER}
    expired = ask(core, b"announce_peer", args, now=100 + 2 * 300 + 1)
    assert isinstance(expired, ErrorMessage) and expired.code == 203


def put_args(item: Item, token: bytes, extra: dict[bytes, Any] | None = None) -> dict[bytes, Any]:
    args: dict[bytes, Any] = {b"id": b"p" * 20, b"token": token, b"v": bdecode(item.value)}
    if item.key is not None:
        args.update({b"k": item.key, b"sig": item.signature, b"seq": item.seq})
        if item.salt:
            args[b"salt"] = item.salt
    args.update(extra or {})
    return args


def test_put_rules_answered_with_bep44_error_codes() -> None:
    core = make_core(1, now=100)
    token = token_for(core)
    first = signed(bencode(b"v1"), 10)
    assert isinstance(ask(core, b"put", put_args(first, token)), Response)
    cases = [
        (put_args(signed(bencode(b"v0"), 9), token), 302),
        (put_args(signed(bencode(b"v2"), 11), token, {b"cas": 3}), 301),
        (put_args(signed(bencode(b"x" * 1000), 12), token), 205),
        (put_args(signed(bencode(b"v"), 12, b"s" * 65), token), 207),
        ({**put_args(signed(bencode(b"v3"), 12), token), b"sig": bytes(64)}, 206),
        (put_args(signed(bencode(b"v3"), 12), b"badtoken"), 203),
    ]
    for args, code in cases:
        reply = ask(core, b"put", args)
        assert isinstance(reply, ErrorMessage) and reply.code == code, code
    stored = core.local_item(first.target, 100)
    assert stored == first


def test_get_honours_seq_and_keeps_replies_small() -> None:
    core = make_core(1, now=100)
    for i in range(30):
        ask(core, b"ping", {b"id": random.Random(i).randbytes(20)}, src=(f"127.3.0.{i}", 1))
        # confirm them so they are returned as nodes
        for data, dst in core.datagrams_to_send():
            tid = bdecode(data)[b"t"]
            core.receive_datagram(
                encode_message(Response(tid=tid, sender_id=random.Random(i).randbytes(20))),
                dst,
                100,
            )
    token = token_for(core)
    item = signed(bencode(b"x" * 995), 7, b"s" * 64)
    assert isinstance(ask(core, b"put", put_args(item, token)), Response)
    full = ask(core, b"get", {b"id": b"p" * 20, b"target": item.target, b"want": [b"n4", b"n6"]})
    assert full.value == item.value and full.signature == item.signature and full.seq == 7
    assert len(encode_message(full)) <= MAX_DATAGRAM
    newer_only = ask(core, b"get", {b"id": b"p" * 20, b"target": item.target, b"seq": 7})
    assert newer_only.value is None and newer_only.seq == 7


# ------------------------------------------------------------------ operations on a swarm


def test_bootstrap_and_find_node() -> None:
    wire = swarm(24)
    me = addr(5)
    target = random.Random(9).randbytes(20)
    op = wire.cores[me].find_node(target, wire.now)
    wire.run()
    event = wire.event_for(me, op)
    assert isinstance(event, LookupDone)
    others = [c.node_id for a, c in wire.cores.items() if a != me]
    t = int.from_bytes(target, "big")
    truth = sorted(others, key=lambda i: int.from_bytes(i, "big") ^ t)[:8]
    assert [n.id for n in event.nodes] == truth
    assert event.stats.hops >= 1 and event.stats.responded >= 8


def test_announce_then_get_peers() -> None:
    wire = swarm(20)
    info_hash = b"i" * 20
    op = wire.cores[addr(3)].announce(info_hash, 4242, wire.now)
    wire.run()
    done = wire.event_for(addr(3), op)
    assert isinstance(done, AnnounceDone) and done.stored >= 8
    op = wire.cores[addr(11)].get_peers(info_hash, wire.now)
    wire.run()
    found = wire.event_for(addr(11), op)
    assert isinstance(found, PeersFound) and (addr(3)[0], 4242) in found.peers


def test_put_and_get_items() -> None:
    wire = swarm(20)
    value = bencode({b"hello": b"world"})
    op = wire.cores[addr(2)].put_immutable(value, wire.now)
    wire.run()
    put = wire.event_for(addr(2), op)
    assert isinstance(put, PutDone) and put.stored >= 8 and put.errors == ()
    op = wire.cores[addr(17)].get_item(Item(value).target, wire.now)
    wire.run()
    got = wire.event_for(addr(17), op)
    assert isinstance(got, GetItemDone) and got.item == Item(value)

    me = Identity(bytes(range(32)))
    record = PeerRecord(addresses=(("203.0.113.1", 4433),), nat="none")
    for seq_time in (1000, 2000):
        op = wire.cores[addr(4)].put_mutable(make_record_item(me, record, seq_time), wire.now)
        wire.run()
        assert wire.event_for(addr(4), op).stored >= 8  # type: ignore[union-attr]
    stale = make_record_item(me, record, 1500)
    op = wire.cores[addr(4)].put_mutable(stale, wire.now)
    wire.run()
    rejected = wire.event_for(addr(4), op)
    assert isinstance(rejected, PutDone) and rejected.stored == 0
    assert {code for code, _ in rejected.errors} == {302} and rejected.newest_seq == 2000
    from p2pchat.dht.records import PEER_RECORD_SALT

    op = wire.cores[addr(9)].get_item(
        None, wire.now, public_key=me.public_key, salt=PEER_RECORD_SALT
    )
    wire.run()
    got = wire.event_for(addr(9), op)
    assert isinstance(got, GetItemDone) and got.item is not None and got.item.seq == 2000
    assert read_record_item(got.item, me.public_key) == record


def test_lookup_survives_dead_nodes_without_retrying_forever() -> None:
    wire = swarm(20)
    for n in (1, 2, 3, 4, 6, 7):
        wire.dropped.add(addr(n))
    me = addr(10)
    op = wire.cores[me].find_node(random.Random(4).randbytes(20), wire.now)
    wire.run()
    wire.advance(60)
    event = wire.event_for(me, op)
    assert isinstance(event, LookupDone)
    assert event.stats.timeouts >= 1
    assert not {n.addr for n in event.nodes} & {addr(n) for n in (1, 2, 3, 4, 6, 7)}
    assert wire.cores[me].operation_count() == 0
    sent_before = len(wire.log)
    wire.advance(30)
    assert len(wire.log) - sent_before < 50  # quiet once done


def test_dead_nodes_cost_a_lookup_its_usual_round_trips_not_the_fixed_timeout() -> None:
    """Replies here take no time, so once round trips are measured a dead node is slow
    after 0.1 s and given up after 0.25 s (the floors), in parallel, instead of being
    waited for 2 s each; the queries stay open for the routing table's sake."""
    wire = swarm(20)
    dead = {addr(n) for n in (1, 2, 3, 4, 6, 7)}
    wire.dropped.update(dead)
    me = addr(10)
    core = wire.cores[me]
    op = core.find_node(random.Random(4).randbytes(20), wire.now)
    wire.run()
    wire.advance(0.6)
    event = wire.event_for(me, op)
    assert isinstance(event, LookupDone) and event.stats.timeouts >= 1
    assert not {n.addr for n in event.nodes} & dead
    assert core.pending_count() >= 1  # the given-up queries, until their real timeout
    wire.advance(3)
    assert core.pending_count() == 0


def test_external_address_vote_and_bep42_id_change() -> None:
    core = make_core(1, now=100, enforce_bep42=True, local_port=6881)
    old_id = core.node_id
    voters = [(f"8.8.8.{i}", 6881) for i in range(3)]
    core.bootstrap(voters, 100)
    for data, dst in core.datagrams_to_send():
        tid = bdecode(data)[b"t"]
        responder = node_id_for_ip(dst[0], random.Random(dst[0]).randbytes(20))
        reply = Response(tid=tid, sender_id=responder, ip=("124.31.75.21", 6881))
        core.receive_datagram(encode_message(reply), dst, 100)
    events = []
    while (event := core.next_event()) is not None:
        events.append(event)
    changed = [e for e in events if isinstance(e, ExternalAddressChanged)]
    assert len(changed) == 1
    assert changed[0].addresses == (("124.31.75.21", 6881),)
    assert changed[0].nat == NAT_EI  # three observers saw one port
    address = core.external_address
    assert address is not None and address.observers == 3 and not address.trusted
    id_change = [e for e in events if isinstance(e, NodeIdChanged)]
    assert id_change and id_change[0].old_id == old_id
    assert core.node_id != old_id
    assert is_valid_node_id(core.node_id, "124.31.75.21")


def test_a_public_interface_address_fits_the_id_before_anyone_votes() -> None:
    core = make_core(1, now=100, enforce_bep42=True, local_port=6881)
    old_id = core.node_id
    core.set_local_addresses(["10.0.0.5"], 6881, 100)  # private: exempt, nothing to fit
    assert core.node_id == old_id
    core.set_local_addresses(["10.0.0.5", "198.51.100.100"], 6881, 100)
    assert is_valid_node_id(core.node_id, "198.51.100.100") and core.node_id != old_id
    changed = [e for e in iter(core.next_event, None) if isinstance(e, NodeIdChanged)]
    assert [e.old_id for e in changed] == [old_id]


def test_a_named_bootstrap_enters_the_table_whatever_its_id() -> None:
    """A self-hosted first node on a public address may not know its address yet to fit
    its ID to; the user named it, so BEP 42 enforcement does not keep it out."""
    boot = ("198.51.100.100", 4001)
    stranger = ("198.51.100.101", 4001)
    for trusted, expected in ((True, 1), (False, 0)):
        core = make_core(1, now=100, enforce_bep42=True)
        if trusted:
            core.trust_observers([boot])
        core.bootstrap([boot, stranger], 100)
        for data, dst in core.datagrams_to_send():
            reply = Response(tid=bdecode(data)[b"t"], sender_id=bytes(20), ip=("9.9.9.9", 1))
            core.receive_datagram(encode_message(reply), dst, 100)
        assert len(core.routing_table()) == expected


def test_state_survives_a_restart() -> None:
    wire = swarm(12)
    core = wire.cores[addr(4)]
    state = core.save_state()
    again = DhtCore(state=state, rng=random.Random(1), now=wire.now, enforce_bep42=False)
    assert again.node_id == core.node_id
    assert len(again.routing_table()) == len(core.routing_table())


def test_local_misuse_raises() -> None:
    import pytest

    from p2pchat.core.errors import LocalProtocolError

    core = make_core(1)
    with pytest.raises(LocalProtocolError):
        core.find_node(b"short", 0)
    with pytest.raises(LocalProtocolError):
        core.put_immutable(bencode(b"x" * 2000), 0)
    with pytest.raises(LocalProtocolError):
        core.put_immutable(b"not bencode", 0)
    with pytest.raises(LocalProtocolError):
        core.get_item(b"t" * 20, 0, public_key=PUB)
    with pytest.raises(LocalProtocolError):
        core.put_mutable(Item(bencode(1)), 0)


# ------------------------------------------------------------------ fuzzing

bencodable = st.recursive(
    st.integers(min_value=-(2**64), max_value=2**64) | st.binary(max_size=30),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    b"t",
                    b"y",
                    b"q",
                    b"a",
                    b"r",
                    b"e",
                    b"id",
                    b"v",
                    b"ip",
                    b"nodes",
                    b"target",
                    b"info_hash",
                    b"token",
                    b"port",
                    b"values",
                    b"k",
                    b"sig",
                    b"seq",
                    b"salt",
                    b"ro",
                    b"want",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=25,
)

FUZZ_CORE = make_core(77, now=100, config=DhtConfig(max_rate_entries=64))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1600), st.integers(0, 300))
def test_receive_datagram_never_raises_on_bytes(data: bytes, host: int) -> None:
    FUZZ_CORE.receive_datagram(data, (f"127.5.0.{host % 250}", 1 + host), 100)
    FUZZ_CORE.datagrams_to_send()
    assert FUZZ_CORE.stats["internal_errors"] == 0


@settings(max_examples=300, deadline=None)
@given(
    bencodable,
    st.sampled_from([b"q", b"r", b"e"]),
    st.sampled_from([b"ping", b"find_node", b"get_peers", b"announce_peer", b"get", b"put"]),
)
def test_receive_datagram_never_raises_on_structures(body: Any, kind: bytes, method: bytes) -> None:
    for message in (
        body,
        {b"t": b"aa", b"y": kind, b"q": method, b"a": body},
        {b"t": b"aa", b"y": kind, b"r": body, b"e": body},
    ):
        FUZZ_CORE.receive_datagram(bencode(message), ("127.6.0.1", 9), 100)
    for data, _ in FUZZ_CORE.datagrams_to_send():
        assert len(data) <= MAX_DATAGRAM
    assert FUZZ_CORE.stats["internal_errors"] == 0
    # Memory stays bounded however much junk arrives.
    assert len(FUZZ_CORE.routing_table()) <= 160 * 8
    assert len(FUZZ_CORE._rate) <= 64
    assert FUZZ_CORE.stored_item_count() <= 1000


def test_fuzzed_core_still_works() -> None:
    reply = ask(FUZZ_CORE, b"ping", {b"id": b"p" * 20}, src=("127.7.0.1", 1))
    assert isinstance(reply, Response)
    assert isinstance(encode_message(Ping(tid=b"x", sender_id=b"p" * 20)), bytes)

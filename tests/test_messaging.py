"""Two real nodes over real UDP/QUIC on 127.0.0.1: reliable, ordered, exactly once."""

from __future__ import annotations

from p2pchat.core.events import (
    ContactRequestReceived,
    MessageReceived,
    PeerKeyMismatch,
    PeerOnline,
)
from p2pchat.node import Node

from .conftest import EventLog, StartNode, wait_until


def befriend(a: Node, b: Node) -> None:
    a.add_contact(b.peer_id, name="b", addresses=b.addresses)
    b.add_contact(a.peer_id, name="a", addresses=a.addresses)


def bodies(node: Node, contact: str, direction: str) -> list[str]:
    return [m.body for m in node.history(contact) if m.direction == direction]


async def test_thousand_messages_each_way_exactly_once_in_order(start_node: StartNode) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    befriend(a, b)
    await wait_until(lambda: a.is_online(b.peer_id) and b.is_online(a.peer_id))
    n = 1000
    for i in range(n):
        a.send_message("b", f"a->b {i:04d}")
        b.send_message("a", f"b->a {i:04d}")
    expected_ab = [f"a->b {i:04d}" for i in range(n)]
    expected_ba = [f"b->a {i:04d}" for i in range(n)]
    await wait_until(lambda: len(bodies(b, "a", "in")) >= n and len(bodies(a, "b", "in")) >= n)
    await wait_until(
        lambda: all(m.state == "delivered" for m in a.history("b") if m.direction == "out")
        and all(m.state == "delivered" for m in b.history("a") if m.direction == "out")
    )
    assert bodies(b, "a", "in") == expected_ab
    assert bodies(a, "b", "in") == expected_ba
    assert a.store.outbox(b.peer_id) == [] and b.store.outbox(a.peer_id) == []


async def test_messages_sent_while_offline_arrive_after_reconnect(start_node: StartNode) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    befriend(a, b)
    await wait_until(lambda: a.is_online(b.peer_id))
    await b.stop()
    await wait_until(lambda: not a.is_online(b.peer_id), timeout=40)
    queued = [a.send_message("b", f"while away {i}") for i in range(20)]
    assert all(m.state == "queued" for m in queued)
    b = await start_node("bob")
    await wait_until(lambda: len(bodies(b, "a", "in")) == 20, timeout=40)
    assert bodies(b, "a", "in") == [f"while away {i}" for i in range(20)]
    await wait_until(lambda: all(a.store.get_message(m.id).state == "delivered" for m in queued))  # type: ignore[union-attr]


async def test_receipts_and_typing(start_node: StartNode) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    befriend(a, b)
    log_a, log_b = EventLog(a), EventLog(b)
    await wait_until(lambda: a.is_online(b.peer_id) and b.is_online(a.peer_id))
    sent = a.send_message("b", "hello bob")
    assert await a.wait_for_delivery(sent.id, 10) == "delivered"
    received = [e for e in log_b.of(MessageReceived) if isinstance(e, MessageReceived)]
    assert [e.body for e in received] == ["hello bob"]
    b.mark_read("a")
    await wait_until(lambda: a.store.get_message(sent.id).state == "read")  # type: ignore[union-attr]
    b.set_typing("a", True)
    await wait_until(lambda: any(getattr(e, "active", False) for e in log_a.events))
    await log_a.close()
    await log_b.close()


async def test_wrong_key_is_refused(start_node: StartNode) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    mallory = await start_node("mallory")
    log_a, log_m = EventLog(a), EventLog(mallory)
    # Alice believes Bob lives at Mallory's address.
    a.add_contact(b.peer_id, name="b", addresses=mallory.addresses)
    await wait_until(lambda: bool(log_a.of(PeerKeyMismatch)))
    event = log_a.of(PeerKeyMismatch)[0]
    assert isinstance(event, PeerKeyMismatch) and event.peer_id == b.peer_id
    assert not a.is_online(b.peer_id)
    a.send_message("b", "for bob only")
    await wait_until(lambda: len(log_a.of(PeerKeyMismatch)) >= 2, timeout=30)
    # Mallory learnt nothing: no session, no request, no message.
    assert mallory.requests() == []
    assert not log_m.of(ContactRequestReceived) and not log_m.of(MessageReceived)
    assert a.store.get_message(a.history("b")[0].id).state == "queued"  # type: ignore[union-attr]
    await log_a.close()
    await log_m.close()


async def test_stranger_becomes_a_request_not_chat(start_node: StartNode) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    log_b = EventLog(b)
    a.add_contact(b.peer_id, name="b", addresses=b.addresses)
    sent = a.send_message("b", "hi, it's alice")
    await wait_until(lambda: bool(b.requests()) and b.requests()[0].preview is not None)
    request = b.requests()[0]
    assert request.peer_id == a.peer_id and request.preview == "hi, it's alice"
    assert request.name == "alice"
    assert not log_b.of(MessageReceived)
    assert b.store.history(a.peer_id) == []
    assert a.store.get_message(sent.id).state != "delivered"  # type: ignore[union-attr]
    assert log_b.of(ContactRequestReceived)[0].peer_id == a.peer_id  # type: ignore[attr-defined]
    # Accepting turns the held-back message into chat, delivered exactly once.
    b.accept_request("alice")
    await wait_until(lambda: bodies(b, "alice", "in") == ["hi, it's alice"])
    assert await a.wait_for_delivery(sent.id, 10) == "delivered"
    await log_b.close()


async def test_one_time_invite_needs_no_accept(start_node: StartNode) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    invite = a.invite(one_time=True)
    b.add_contact(invite)
    log_b = EventLog(b)
    await wait_until(lambda: b.is_online(a.peer_id) and a.is_online(b.peer_id))
    assert a.requests() == []
    assert a.find_contact(b.peer_id).name == "bob"
    sent = b.send_message("alice", "redeemed")
    assert await b.wait_for_delivery(sent.id, 10) == "delivered"
    # The token is single-use: a second identity presenting it gets a request only.
    c = await start_node("carol")
    c.add_contact(invite)
    await wait_until(lambda: any(r.peer_id == c.peer_id for r in a.requests()))
    assert all(x.peer_id != c.peer_id for x in a.contacts())
    assert log_b.of(PeerOnline)
    await log_b.close()


async def test_presence_route_and_network_status(start_node: StartNode) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    befriend(a, b)
    await wait_until(lambda: a.is_online(b.peer_id))
    (view,) = a.contacts()
    # Loopback is this very machine, not the LAN: the path is plainly direct.
    assert view.online and view.path == view.route == "direct"
    assert view.rtt_ms is not None and view.rtt_ms >= 0
    status = a.network_status()
    assert status["online"] == 1 and status["addresses"] == list(a.addresses)
    assert status["dht"] is None and status["mdns"] is False

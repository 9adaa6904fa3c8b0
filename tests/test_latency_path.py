"""The message path waits for nothing it does not need: the ack of a group commit leaves
one loop turn after the commit, with whatever the events' readers wrote (a reply), a
received message is announced only after its commit, a flush
cancels the sent-mark timer it made useless, and QUIC ACKs ride on our data instead of
datagrams of their own, and the frames of one turn are sealed together
(docs/performance.md, "Messaging"; docs/protocol.md, "Bundles")."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from p2pchat import delivery as delivery_module
from p2pchat import node as node_module
from p2pchat.core import chat
from p2pchat.core.events import MessageReceived, MessageSent, MessageStateChanged, NodeEvent
from p2pchat.net import endpoint as endpoint_module
from p2pchat.net.endpoint import QuicLink
from p2pchat.net.peer import BUNDLE_BYTES
from p2pchat.node import Node
from p2pchat.store.journal import journal_path, parse

from .conftest import EventLog, StartNode, wait_until


@contextlib.contextmanager
def turn_counter() -> Iterator[list[int]]:
    """Counts event-loop turns: a callback that schedules itself again runs once per turn."""
    loop = asyncio.get_running_loop()
    turns = [0]
    handle: list[asyncio.Handle] = []

    def tick() -> None:
        turns[0] += 1
        handle[:] = [loop.call_soon(tick)]

    tick()
    try:
        yield turns
    finally:
        handle[0].cancel()


async def one_connection(start_node: StartNode) -> tuple[Node, Node]:
    """alice and bob, contacts of each other; only alice knows bob's address, so there is
    exactly one connection (two dialling each other would settle on one of two)."""
    a = await start_node("alice")
    b = await start_node("bob")
    b.add_contact(a.peer_id, name="a")
    a.add_contact(b.peer_id, name="b", addresses=b.addresses)
    await wait_until(lambda: a.is_online(b.peer_id) and b.is_online(a.peer_id))
    return a, b


def link_of(node: Node, peer: Node) -> QuicLink:
    conn = node._active[peer.peer_id]
    return conn.link


async def test_the_ack_of_stored_messages_leaves_one_turn_after_they_were_stored(
    start_node: StartNode,
) -> None:
    a, b = await one_connection(start_node)
    endpoint = b._endpoint
    assert endpoint is not None
    log: list[tuple[str, int]] = []
    with turn_counter() as turns:
        flush, sendto = b.delivery._flush_turn, endpoint.sendto

        def traced_flush() -> None:
            stores = bool(b.delivery._incoming)
            flush()
            if stores:
                log.append(("commit", turns[0]))

        def traced_sendto(data: bytes, address: Any, **kwargs: Any) -> None:
            log.append(("datagram", turns[0]))
            sendto(data, address, **kwargs)

        b.delivery._flush_turn = traced_flush  # type: ignore[method-assign]
        endpoint.sendto = traced_sendto  # type: ignore[method-assign]
        for i in range(5):
            log.clear()
            # Two at once: the ack of a batch does not wait for a reply to ride on.
            sent = a.send_messages("b", [f"hello {i}", f"again {i}"])[-1]
            await wait_until(lambda m=sent.id: a.store.get_message(m).state == "delivered")  # type: ignore[union-attr]
            # (Other datagrams may come and go: a keepalive, a late ACK.)
            at = log.index(next(entry for entry in log if entry[0] == "commit"))
            commit_turn = log[at][1]
            assert any(
                kind == "datagram" and commit_turn <= turn <= commit_turn + 2
                for kind, turn in log[at:]
            ), log


@pytest.fixture
def long_ack_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ack of a single message waits (almost) for ever for a message to ride on."""
    monkeypatch.setattr(delivery_module, "ACK_WAIT", 60.0)


def delivered(log: EventLog, message_id: str) -> bool:
    return any(
        e.message_id == message_id and e.state == "delivered"  # type: ignore[attr-defined]
        for e in log.of(MessageStateChanged)
    )


@pytest.mark.usefixtures("long_ack_wait")
async def test_the_ack_of_a_single_message_rides_on_the_next_message(
    start_node: StartNode,
) -> None:
    a, b = await one_connection(start_node)
    log_a = EventLog(a)
    try:
        sent = a.send_message("b", "hello")
        await wait_until(lambda: any(m.body == "hello" for m in b.history("a")))
        await asyncio.sleep(0.3)
        assert not delivered(log_a, sent.id)  # the ack waits...
        b.send_message("a", "hi")  # ...for this
        await wait_until(lambda: delivered(log_a, sent.id))
    finally:
        await log_a.close()


async def test_the_ack_of_a_single_message_leaves_after_ack_wait_alone(
    start_node: StartNode,
) -> None:
    a, b = await one_connection(start_node)
    log_a = EventLog(a)
    try:
        for i in range(3):
            sent = a.send_message("b", f"hello {i}")
            await wait_until(lambda m=sent.id: delivered(log_a, m))
        assert b.history("a")[-1].body == "hello 2"
    finally:
        await log_a.close()


@pytest.mark.usefixtures("long_ack_wait")
async def test_a_sender_that_waits_for_delivery_is_not_made_to_wait_for_a_reply(
    start_node: StartNode,
) -> None:
    """``p2pchat msg`` waits for ``delivered``: ``wait_for_delivery`` asks the contact
    (``AckNow``, in the message's own payload) not to hold its ack back."""
    a, b = await one_connection(start_node)
    sealed = count_seals(a, b)
    for i in range(3):
        sealed.clear()
        sent = a.send_message("b", f"waited for {i}")
        assert await a.wait_for_delivery(sent.id, 10.0) == "delivered"
        assert len(sealed) == 1, sealed  # the message and its AckNow together
    assert [m.body for m in b.history("a")] == [f"waited for {i}" for i in range(3)]


@pytest.mark.usefixtures("long_ack_wait")
async def test_a_read_receipt_takes_the_ack_it_would_outrun_along(
    start_node: StartNode,
) -> None:
    """bob reads the message while its ack still waits: the ack leaves first, so alice
    counts the receipt (one that outran its ack would move nothing)."""
    a, b = await one_connection(start_node)
    log_a = EventLog(a)
    try:
        sent = a.send_message("b", "read me")
        await wait_until(lambda: any(m.body == "read me" for m in b.history("a")))
        assert b.mark_read("a") == sent.seq
        await wait_until(
            lambda: any(
                e.message_id == sent.id and e.state == "read"  # type: ignore[attr-defined]
                for e in log_a.of(MessageStateChanged)
            )
        )
        assert [e.state for e in log_a.of(MessageStateChanged)] == ["sent", "delivered", "read"]
    finally:
        await log_a.close()


@pytest.mark.usefixtures("long_ack_wait")
async def test_a_reply_written_on_seeing_the_message_carries_its_ack(
    start_node: StartNode,
) -> None:
    """bob's event reader answers each message as it sees it (a bot, a script on the
    node's API): the answer and the ack leave in one payload.  (``ACK_WAIT`` is made
    long: on a loaded machine the reader may wake later than 20 ms, and the ack would
    rightly leave alone.)"""
    a, b = await one_connection(start_node)
    log_a = EventLog(a)
    stream = b.events()

    async def answer() -> None:
        async for event in stream:
            if isinstance(event, MessageReceived):
                b.send_message("a", "re: " + event.body)

    answering = asyncio.ensure_future(answer())
    sealed = count_seals(b, a)
    try:
        for i in range(5):
            sealed.clear()
            sent = a.send_message("b", f"ping {i}")
            await wait_until(lambda m=sent.id: delivered(log_a, m))
            await wait_until(
                lambda i=i: any(e.body == f"re: ping {i}" for e in log_a.of(MessageReceived))
            )
            assert len(sealed) == 1, sealed  # the answer and the ack of the ping together
    finally:
        answering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await answering
        await log_a.close()


def committed_state(node: Node, message_id: str) -> str | None:
    """The message's state as another connection sees it: committed, nothing else."""
    with contextlib.closing(sqlite3.connect(f"file:{node.store.path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT state FROM messages WHERE id = ?", (message_id,)).fetchone()
    return None if row is None else str(row[0])


def journaled_ids(node: Node) -> set[str]:
    """The ids of the messages in the node's journal file, as a reopening would read it."""
    data = journal_path(node.store.path).read_bytes()
    return {e.id for e in parse(data).entries}


def check_events_against_commits(node: Node, seen: list[NodeEvent]) -> None:
    """Every message event of ``node`` is checked, when it is emitted, against what a
    second database connection can read at that moment."""
    emit = node._emit

    def checked(event: NodeEvent) -> None:
        if isinstance(event, MessageReceived):
            # Committed, or journaled (a received text message is durable once its
            # record is in the message journal; the next commit folds it).
            assert committed_state(
                node, event.message_id
            ) is not None or event.message_id in journaled_ids(node), event
        elif isinstance(event, MessageStateChanged) and event.state in ("sent", "delivered"):
            # Or announced from an ack this node holds in memory, written by the next
            # commit (``Delivery.on_ack``): checked once everything settled.
            announced = node.delivery._announced.get(event.peer_id, set())
            assert event.message_id in announced or committed_state(node, event.message_id) in (
                event.state,
                "delivered",
            ), event
        seen.append(event)
        emit(event)

    node._emit = checked  # type: ignore[method-assign]
    node.delivery._emit = checked


async def test_no_event_before_its_commit(start_node: StartNode) -> None:
    a, b = await one_connection(start_node)
    seen_a: list[NodeEvent] = []
    seen_b: list[NodeEvent] = []
    check_events_against_commits(a, seen_a)
    check_events_against_commits(b, seen_b)
    for i in range(20):
        a.send_message("b", f"ping {i}")
        b.send_message("a", f"pong {i}")
        if i % 5 == 0:
            await asyncio.sleep(0)
    a.send_messages("b", [f"burst {i}" for i in range(50)])
    await wait_until(lambda: not a.store.outbox(b.peer_id) and not b.store.outbox(a.peer_id))
    received = [e for e in seen_b if isinstance(e, MessageReceived)]
    assert len(received) == 70
    delivered = [e for e in seen_a if isinstance(e, MessageStateChanged) and e.state == "delivered"]
    assert len(delivered) == 70
    # What was journaled is committed soon after, reads or not.
    await wait_until(lambda: all(committed_state(b, e.message_id) for e in received))
    # What was announced from memory is committed soon after, reads or not.
    await wait_until(
        lambda: all(committed_state(a, e.message_id) == "delivered" for e in delivered)
    )


async def test_a_flush_cancels_the_sent_mark_timer_it_made_useless(
    start_node: StartNode,
) -> None:
    a, _b = await one_connection(start_node)
    loop = asyncio.get_running_loop()
    timers: list[asyncio.Handle] = []
    schedule: Callable[[float, Callable[[], None]], Any] = a.delivery._schedule  # type: ignore[assignment]

    def recorded(delay: float, callback: Callable[[], None]) -> Any:
        handle = schedule(delay, callback)
        if delay > 0:
            timers.append(handle)
        return handle

    a.delivery._schedule = recorded
    for i in range(5):
        message = a.send_message("b", f"hello {i}")
        await wait_until(lambda m=message.id: a.store.get_message(m).state == "delivered")  # type: ignore[union-attr]
        # The ack's flush wrote the sent mark: its timer is cancelled, not left to wake
        # the loop (or to commit the next message's mark on its own) 50 ms later.
        assert timers, "the sent mark was not deferred"
        pending = [
            t
            for t in timers
            if not t.cancelled() and isinstance(t, asyncio.TimerHandle) and t.when() > loop.time()
        ]
        assert pending == []
        assert a.delivery._marks_timer is None


@pytest.fixture
def long_ack_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone packet's ACK waits (almost) for ever unless data of ours leaves first, so
    the test does not depend on how fast a loaded machine runs."""
    monkeypatch.setattr(endpoint_module, "ACK_DELAY", 60.0)


@pytest.mark.usefixtures("long_ack_delay")
async def test_quic_acks_ride_on_our_data(start_node: StartNode) -> None:
    a, b = await one_connection(start_node)
    link = link_of(a, b)
    assert len(a._endpoint.links) == 1  # type: ignore[union-attr]
    space = link._ack_space()
    assert space is not None
    deferred: list[float] = []
    receive = link.datagram_received

    def traced_receive(data: bytes, address: Any) -> None:
        receive(data, address)
        if space.ack_at is not None:
            deferred.append(space.ack_at - link.endpoint.now())

    link.datagram_received = traced_receive  # type: ignore[method-assign]
    for i in range(5):
        deferred.clear()
        message = a.send_message("b", f"hello {i}")
        await wait_until(lambda m=message.id: a.store.get_message(m).state == "delivered")  # type: ignore[union-attr]
        # bob's chat-level ack came in one packet: its QUIC ACK waits for our data (a
        # keepalive ping of bob's in between is acknowledged at once, with the next)...
        assert any(wait > 30.0 for wait in deferred), deferred
    # ...which carries it: nothing is left to acknowledge once our next message left.
    left: list[float | None] = []
    transmit = link.transmit

    def traced_transmit() -> None:
        data = link._data_written or bool(a._active[b.peer_id]._pending)
        transmit()
        if data:
            left.append(space.ack_at)

    link.transmit = traced_transmit  # type: ignore[method-assign]
    a.send_message("b", "last")
    await wait_until(lambda: bool(left))
    assert left[0] is None


def count_seals(node: Node, peer: Node) -> list[int]:
    """Counts the payloads ``node`` seals for ``peer`` from now on (and their sizes)."""
    session = node._active[peer.peer_id].session
    sizes: list[int] = []
    send = session.send

    def counted(payload: bytes) -> None:
        sizes.append(len(payload))
        send(payload)

    session.send = counted  # type: ignore[method-assign]
    return sizes


async def test_frames_of_one_turn_are_sealed_together_for_a_peer_that_accepts_bundles(
    start_node: StartNode,
) -> None:
    a, b = await one_connection(start_node)
    assert a._active[b.peer_id].hello.version >= chat.BUNDLE_VERSION  # type: ignore[union-attr]
    sealed = count_seals(a, b)
    a.send_messages("b", [f"burst {i:03d}" for i in range(300)])
    await wait_until(lambda: not a.store.outbox(b.peer_id))
    assert [m.body for m in b.history("a")] == [f"burst {i:03d}" for i in range(300)]
    # 300 frames of about 80 bytes: two bundles of at most BUNDLE_BYTES, not 300 payloads.
    assert 2 <= len(sealed) <= 4, sealed
    assert max(sealed) <= BUNDLE_BYTES + 16


async def test_a_peer_that_announced_version_1_gets_one_frame_per_payload(
    start_node: StartNode,
) -> None:
    a, b = await one_connection(start_node)
    conn = a._active[b.peer_id]
    assert conn.hello is not None
    conn.hello = dataclasses.replace(conn.hello, version=1)
    sealed = count_seals(a, b)
    a.send_messages("b", [f"old {i}" for i in range(20)])
    await wait_until(lambda: not a.store.outbox(b.peer_id))
    assert [m.body for m in b.history("a")] == [f"old {i}" for i in range(20)]
    assert len(sealed) == 20


async def test_a_slow_event_consumer_loses_the_oldest_events_and_never_blocks(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "EVENT_QUEUE_SIZE", 5)
    a, b = await one_connection(start_node)
    stream = a.events()  # subscribed now; nothing is read until the burst is over
    sent = [a.send_message("b", f"m {i}") for i in range(10)]  # 10 events, no await
    kept = [await anext(stream) for _ in range(5)]
    # The newest five, in order.
    assert [e.message_id for e in kept if isinstance(e, MessageSent)] == [m.id for m in sent[5:]]
    assert b.peer_id == sent[-1].peer_id
    # A stream that waits wakes up for the next event.
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    assert not waiting.done()
    a.send_message("b", "one more")
    assert isinstance(await asyncio.wait_for(waiting, 10), NodeEvent)
    await stream.aclose()


async def test_acks_are_announced_from_memory_and_written_with_a_later_commit(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folding the journal, the sent marks and the acks wait for a commit that happens
    anyway (bounded by ``MARK_DELAY``, made long here; the node's own periodic reads
    may bring it earlier): each ``delivered`` is announced while nothing of it is
    committed yet, and a later commit writes it."""
    monkeypatch.setattr(delivery_module, "MARK_DELAY", 60.0)
    a, b = await one_connection(start_node)
    a.send_message("b", "warm-up")
    await wait_until(lambda: not a.store.outbox(b.peer_id))
    at_announcement: dict[str, str | None] = {}
    emit = a.delivery._emit

    def recorded(event: NodeEvent) -> None:
        if isinstance(event, MessageStateChanged) and event.state == "delivered":
            at_announcement[event.message_id] = committed_state(a, event.message_id)
        emit(event)

    a.delivery._emit = recorded
    sent = []
    for i in range(3):
        sent.append(a.send_message("b", f"alone {i}"))
        await wait_until(lambda m=sent[-1].id: m in at_announcement)
    # (None: still in the outbox journal, not folded into the tables yet)
    assert all(at_announcement[m.id] in (None, "queued", "sent") for m in sent), at_announcement
    a.delivery.flush()  # what the MARK_DELAY timer does, if nothing did it first
    assert [committed_state(a, m.id) for m in sent] == ["delivered"] * 3
    assert not a.store.outbox(b.peer_id)


async def test_a_burst_is_folded_once_fold_at_messages_wait(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folds wait for ``MARK_DELAY`` (made long here), except when ``FOLD_AT`` journaled
    messages wait: then the end of the turn folds them, on both sides, without any read."""
    monkeypatch.setattr(delivery_module, "MARK_DELAY", 60.0)
    monkeypatch.setattr(delivery_module, "FOLD_AT", 8)
    a, b = await one_connection(start_node)
    for node in (a, b):  # the nodes' own periodic reads fold and settle nothing here
        monkeypatch.setattr(node.store, "_fold_for_read", lambda: None)
        monkeypatch.setattr(node.store, "before_read", None)
    few = a.send_messages("b", ["one", "two"])
    await wait_until(lambda: b.store.pending_messages == 2)  # journaled, not folded
    await asyncio.sleep(0.2)
    assert a.store.pending and b.store.pending
    assert committed_state(b, few[0].id) is None
    burst = a.send_messages("b", [f"m {i}" for i in range(10)])
    await wait_until(lambda: all(committed_state(b, m.id) for m in burst))
    assert committed_state(b, few[0].id) is not None  # folded with the burst, in order
    assert all(committed_state(a, m.id) for m in few + burst)


async def test_messages_are_stored_in_the_turn_that_read_their_datagram(
    start_node: StartNode,
) -> None:
    """The endpoint hands over once the socket's queued datagrams are read
    (``after_datagrams``): what they brought is journaled and answered in that turn,
    not one loop iteration later."""
    a, b = await one_connection(start_node)
    endpoint = b._endpoint
    assert endpoint is not None
    log: list[tuple[str, int]] = []
    with turn_counter() as turns:
        receive, flush = endpoint._receive, b.delivery._flush_turn

        def traced_receive(data: bytes, addr: Any, via: Any) -> None:
            log.append(("datagram", turns[0]))
            receive(data, addr, via)

        def traced_flush() -> None:
            if b.delivery._flush_requested and b.delivery._incoming:
                log.append(("stored", turns[0]))
            flush()

        endpoint._receive = traced_receive  # type: ignore[method-assign]
        b.delivery._flush_turn = traced_flush  # type: ignore[method-assign]
        for i in range(5):
            log.clear()
            sent = a.send_message("b", f"m {i}")
            await wait_until(lambda m=sent.id: any(x.id == m for x in b.history("a")))
            stored = [turn for kind, turn in log if kind == "stored"]
            assert stored, log
            assert ("datagram", stored[0]) in log, log

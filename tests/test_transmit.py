"""A datagram that asks for nothing runs no transmit, and nothing owed is left behind:
an ACK that is due leaves (a delayed one within the ``max_ack_delay`` we announce), a
bulk transfer gets its flow-control credit, lost packets are sent again, a close goes
out.  ``sendable.nothing_to_send`` is checked against aioquic's own
``datagrams_to_send`` wherever it says "nothing" (docs/performance.md, "Messaging")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from p2pchat.core.events import MessageReceived, NodeEvent
from p2pchat.net import endpoint as endpoint_module
from p2pchat.net import sendable
from p2pchat.net.endpoint import ACK_DELAY, Endpoint, QuicLink

from .conftest import EventLog, StartNode, wait_until
from .test_keepalive import _pair as linked_pair
from .test_latency_path import one_connection

pytestmark = pytest.mark.skipif(
    not sendable.ENABLED, reason="an aioquic version sendable.py was not checked against"
)


class Checked:
    """Every "nothing to send" of ``sendable`` is checked at once against aioquic's
    ``datagrams_to_send``; what that would have sent is a violation."""

    def __init__(self) -> None:
        self.skips = 0
        self.violations: list[int] = []

    def __call__(self, conn: Any, now: float) -> bool:
        nothing = sendable.nothing_to_send(conn, now)
        if nothing:
            self.skips += 1
            out = type(conn).datagrams_to_send(conn, now=now)  # (not what a test counts)
            if out:
                self.violations.append(len(out))
        return nothing


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> Checked:
    check = Checked()
    monkeypatch.setattr(endpoint_module, "nothing_to_send", check)
    return check


def count_empty_transmits(link: QuicLink) -> list[int]:
    """[transmits that built nothing, transmits that sent]: from now on."""
    counts = [0, 0]
    original = link.conn.datagrams_to_send

    def counting(now: float) -> Any:
        out = original(now=now)
        counts[bool(out)] += 1
        return out

    link.conn.datagrams_to_send = counting  # type: ignore[method-assign]
    return counts


class Sink:
    """A link handler that keeps the stream data it is given."""

    def __init__(self) -> None:
        self.data: dict[int, bytearray] = {}

    def link_handshake_done(self, link: QuicLink) -> None:
        pass

    def link_stream_data(self, link: QuicLink, stream_id: int, data: bytes, end: bool) -> None:
        self.data.setdefault(stream_id, bytearray()).extend(data)

    def link_terminated(self, link: QuicLink, reason: str) -> None:
        pass


async def _pair() -> tuple[Endpoint, Endpoint, QuicLink, QuicLink, Sink]:
    dialler, accepter, link, server = await linked_pair()
    sink = Sink()
    server.handler = sink
    return dialler, accepter, link, server, sink


@pytest.fixture
async def pair() -> Any:
    dialler, accepter, link, server, sink = await _pair()
    try:
        yield link, server, sink
    finally:
        dialler.close()
        accepter.close()


async def test_a_conversation_builds_no_empty_packets(
    start_node: StartNode, checked: Checked
) -> None:
    """alice sends, bob replies on seeing it: bob's QUIC ACK of her message rides on his
    reply, hers on her next message.  Neither side runs a transmit that finds nothing
    to send (each read one after every datagram: the message whose ACK waits, the
    reply that carried the ACK)."""
    a, b = await one_connection(start_node)
    link_a, link_b = a._active[b.peer_id].link, b._active[a.peer_id].link
    log_a, log_b = EventLog(a), EventLog(b)
    try:
        empty_a, empty_b = count_empty_transmits(link_a), count_empty_transmits(link_b)
        for i in range(10):
            a.send_message("b", f"ping {i}")
            await wait_until(lambda i=i: len(log_b.of(MessageReceived)) > i)
            b.send_message("a", f"pong {i}")
            await wait_until(lambda i=i: len(log_a.of(MessageReceived)) > i)
        assert empty_a[0] == 0 and empty_b[0] == 0, (empty_a, empty_b)
        assert empty_a[1] >= 10 and empty_b[1] >= 10
        assert checked.skips >= 10 and not checked.violations
    finally:
        await log_a.close()
        await log_b.close()


async def test_a_lone_packet_is_acknowledged_within_max_ack_delay(
    pair: tuple[QuicLink, QuicLink, Sink], checked: Checked
) -> None:
    """A packet nothing of ours answers: no transmit when it is read, its ACK waits on
    the timer, due within ``ACK_DELAY``, below the ``max_ack_delay`` the peer was
    told (its loss recovery counts on it), and leaves on its own."""
    link, server, sink = pair
    back = Sink()
    link.handler = back
    space = server._ack_space()
    # Settle: the packets of the handshake left gaps in the packet numbers, and a
    # packet after a gap is acknowledged at once (as is the next after a gap).
    link.send_stream(0, b"warm")
    await wait_until(lambda: bytes(sink.data.get(0, b"")) == b"warm")
    server.send_stream(0, b"up")
    both = [*link.conn._loss.spaces, *server.conn._loss.spaces]
    await wait_until(
        lambda: (
            bytes(back.data.get(0, b"")) == b"up"
            and not any(s.ack_eliciting_in_flight or s.ack_at is not None for s in both)
            and len(space.ack_queue) <= 1
        ),
        interval=0.005,
    )
    counts = count_empty_transmits(server)
    heard = server._last_heard
    link.send_stream(0, b"hello")
    await wait_until(lambda: server._last_heard > heard, interval=0.001)
    received_at = server._last_heard
    if counts[1] == 0:  # (the ACK may have left already on a slow machine)
        assert server._timer_at is not None
        assert server._timer_at <= received_at + ACK_DELAY
    assert ACK_DELAY < link.conn._loss.max_ack_delay
    spaces = link.conn._loss.spaces
    await wait_until(lambda: not any(s.ack_eliciting_in_flight for s in spaces), timeout=5)
    assert counts == [0, 1]  # one ACK-only datagram, no empty transmit
    assert bytes(sink.data[0]) == b"warmhello"
    assert checked.skips >= 1 and not checked.violations


def lossy(link: QuicLink, every: int) -> Callable[[], int]:
    """Drops every ``every``-th datagram ``link`` sends; returns how many were dropped."""
    endpoint = link.endpoint
    sendto = endpoint.sendto
    sent = [0, 0]

    def dropping(data: bytes, address: Any, **kwargs: Any) -> None:
        sent[0] += 1
        if sent[0] % every == 0:
            sent[1] += 1
            return
        sendto(data, address, **kwargs)

    endpoint.sendto = dropping  # type: ignore[method-assign]
    return lambda: sent[1]


@pytest.mark.parametrize("every", [0, 9])
async def test_bulk_data_gets_flow_control_credit_and_survives_loss(
    pair: tuple[QuicLink, QuicLink, Sink], checked: Checked, every: int
) -> None:
    """3 MiB, three times the connection's initial flow-control window, in both
    directions' worth of loss: the receiver's MAX_DATA and MAX_STREAM_DATA leave, the
    lost packets and ACKs are sent again, and every byte arrives in order."""
    link, server, sink = pair
    dropped = [lossy(link, every), lossy(server, every)] if every else []
    payload = bytes(range(256)) * (3 * 4096)
    stream = link.conn.get_next_available_stream_id(is_unidirectional=True)
    window = link.conn._remote_max_data
    assert len(payload) > 2 * window
    for offset in range(0, len(payload), 64 * 1024):
        link.send_stream(stream, payload[offset : offset + 64 * 1024])
        await asyncio.sleep(0)
    link.send_stream(stream, b"", end=True)
    await wait_until(lambda: len(sink.data.get(stream, b"")) == len(payload), timeout=60)
    assert bytes(sink.data[stream]) == payload
    assert link.conn._remote_max_data > window  # MAX_DATA came
    assert all(count() > 0 for count in dropped)
    assert not checked.violations


async def test_a_close_goes_out(pair: tuple[QuicLink, QuicLink, Sink], checked: Checked) -> None:
    link, server, _sink = pair
    link.send_stream(0, b"last words")
    link.close("done")
    await wait_until(lambda: server.closed, timeout=5)
    assert server.close_reason == "done"
    assert not checked.violations


def test_unknown_aioquic_state_means_transmit() -> None:
    """Anything ``sendable`` cannot read means "transmit", as before."""

    class Odd:
        pass

    assert sendable.nothing_to_send(Odd(), 0.0) is False  # type: ignore[arg-type]


async def test_a_conversation_rearms_few_asyncio_timers(start_node: StartNode) -> None:
    """The loss timer moves on with every packet sent or acknowledged; an asyncio timer
    armed sooner is left to fire and re-arm instead of being cancelled and made
    again each time (``QuicLink._arm_timer``): about four a round trip before, where
    bob replies as soon as he sees alice's message (a timer that comes due on a slow
    machine, a delayed ACK, is made again after it fired, as before)."""
    a, b = await one_connection(start_node)
    links = [a._active[b.peer_id].link, b._active[a.peer_id].link]
    loop = asyncio.get_running_loop()
    made: list[float] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(callback, "__self__", None) in links:
            made.append(when)
        return call_at(when, callback, *args, **kwargs)

    replies: asyncio.Queue[str] = asyncio.Queue()

    async def bob_replies(events: AsyncIterator[NodeEvent]) -> None:
        async for event in events:
            if isinstance(event, MessageReceived):
                b.send_message("a", "pong" + event.body[4:])

    async def alice_reads(events: AsyncIterator[NodeEvent]) -> None:
        async for event in events:
            if isinstance(event, MessageReceived):
                replies.put_nowait(event.body)

    tasks = [
        asyncio.ensure_future(bob_replies(b.events())),
        asyncio.ensure_future(alice_reads(a.events())),
    ]
    rounds = 20
    loop.call_at = counting  # type: ignore[method-assign]
    try:
        for i in range(rounds):
            a.send_message("b", f"ping {i}")
            assert await asyncio.wait_for(replies.get(), 10) == f"pong {i}"
    finally:
        loop.call_at = call_at  # type: ignore[method-assign]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert len(made) < 2 * rounds, made

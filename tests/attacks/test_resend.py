"""Resend amplification: a contact must not be able to make us send our outbox again
and again (a `pending` frame used to make the next `gap` bypass every limit)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from p2pchat.core import chat
from p2pchat.delivery import RESEND_BYTES_BURST
from p2pchat.node import Node

from ..conftest import StartNode, wait_until
from .attackers import HostilePeer, pending_gap_pairs

BODY = "x" * 8000
QUEUED = 40
PAIRS = 150


async def settled(read: Callable[[], int], quiet: float = 1.5, timeout: float = 60) -> int:
    """Wait until ``read()`` stops growing for ``quiet`` seconds; return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = read(), loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, loop.time()
        elif loop.time() - since >= quiet:
            return now
    raise AssertionError("still sending after the attack stopped")


async def test_pending_gap_pairs_do_not_amplify(start_node: StartNode) -> None:
    victim = await start_node("victim")
    mallory = HostilePeer()
    await mallory.start()
    try:
        victim.add_contact(mallory.peer_id, name="mallory")
        for i in range(QUEUED):
            victim.send_message("mallory", f"{i} {BODY}")
        outbox = QUEUED * len(BODY)
        link = await mallory.connect(victim.addresses[0])
        await wait_until(lambda: len(link.of(chat.ChatMessage)) >= QUEUED, timeout=20)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await pending_gap_pairs(link, PAIRS)
        total = await settled(lambda: link.bytes_received)
        elapsed = loop.time() - started
        # Before the budget: every pair resent the whole outbox, PAIRS x 320 KB = 48 MB.
        allowed = outbox + RESEND_BYTES_BURST + 256 * 1024 * (elapsed + 2) + outbox
        assert total < allowed, (total, allowed)
        assert total < PAIRS * outbox / 4
        status = victim.network_status()["messages"]
        assert status["resends_waiting_for_budget"] > 0
        assert link.terminated is None  # refused quietly, the session lives on
    finally:
        mallory.close()


async def test_a_large_outbox_still_goes_out_whole(start_node: StartNode) -> None:
    """Normal recovery: an outbox larger than the resend burst is delivered in full,
    in order, the rest following at the budget's pace."""
    alice = await start_node("alice")
    bob = await start_node("bob")
    bob_id, bob_addresses = bob.peer_id, bob.addresses
    alice.add_contact(bob_id, name="bob", addresses=bob_addresses)
    bob.add_contact(alice.peer_id, name="alice", addresses=alice.addresses)
    await wait_until(lambda: alice.is_online(bob_id), timeout=20)
    await bob.stop()
    count = RESEND_BYTES_BURST // 10_000 + 100
    sent = [alice.send_message("bob", f"{i:05d} " + "y" * 10_000) for i in range(count)]
    bob = await start_node("bob")
    assert isinstance(bob, Node)
    assert await alice.wait_for_delivery(sent[-1].id, 60) == "delivered"
    bodies = [m.body[:5] for m in bob.history("alice")]
    assert bodies == [f"{i:05d}" for i in range(count)]
    assert alice.network_status()["messages"]["resends_waiting_for_budget"] > 0

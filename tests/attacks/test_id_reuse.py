"""A contact reusing another contact's message id: dedup is by (peer, id), so the
other conversation is not blocked (it used to stall forever)."""

from __future__ import annotations

from p2pchat.core import chat

from ..conftest import StartNode, wait_until
from .attackers import HostilePeer, chat_message

SHARED_ID = "5" * 32


async def test_a_contact_cannot_block_another_by_reusing_its_ids(
    start_node: StartNode,
) -> None:
    victim = await start_node("victim")
    bob = await start_node("bob")
    victim.add_contact(bob.peer_id, name="bob", addresses=bob.addresses)
    bob.add_contact(victim.peer_id, name="victim", addresses=victim.addresses)
    await wait_until(lambda: bob.is_online(victim.peer_id), timeout=20)
    mallory = HostilePeer()
    await mallory.start()
    try:
        victim.add_contact(mallory.peer_id, name="mallory")
        link = await mallory.connect(victim.addresses[0])
        # Mallory gets in first with the id Bob's next message will carry.
        link.send(chat_message(1, "mine", SHARED_ID))
        await wait_until(lambda: bool(link.of(chat.Ack)), timeout=10)
        # ...and also with an id the victim itself used towards Bob.
        own = victim.send_message("bob", "hello bob")
        link.send(chat_message(2, "copy", own.id))
        # Bob's message with that id, and the ones after it, all arrive.
        queued = bob.store.queue_message(
            victim.peer_id, "from bob", now=bob.clock(), message_id=SHARED_ID
        )
        # Sending the next one shows the victim a gap, and it asks for the first.
        bob.send_message("victim", "and more")
        await wait_until(lambda: len(victim.history("bob")) == 3, timeout=20)
        assert [m.body for m in victim.history("bob") if m.direction == "in"] == [
            "from bob",
            "and more",
        ]
        assert [m.body for m in victim.history("mallory")] == ["mine", "copy"]
        assert await bob.wait_for_delivery(queued.id, 10) == "delivered"
    finally:
        mallory.close()

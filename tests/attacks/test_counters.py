"""Sealed frames must carry consecutive counters: a frame lost on the way (as a relay
could arrange) ends the session instead of passing unnoticed, and the outbox makes
up for it on the next session."""

from __future__ import annotations

from p2pchat.core.events import PeerOffline

from ..conftest import EventLog, StartNode, wait_until


async def test_a_skipped_counter_closes_the_session_and_nothing_is_lost(
    start_node: StartNode,
) -> None:
    alice = await start_node("alice")
    bob = await start_node("bob")
    alice.add_contact(bob.peer_id, name="bob", addresses=bob.addresses)
    bob.add_contact(alice.peer_id, name="alice", addresses=alice.addresses)
    await wait_until(lambda: alice.is_online(bob.peer_id) and bob.is_online(alice.peer_id))
    log = EventLog(bob)
    try:
        first = alice.send_message("bob", "one")
        assert await alice.wait_for_delivery(first.id, 10) == "delivered"
        # The next sealed frame never reaches Bob, as if a relay had dropped it.
        alice._active[bob.peer_id].session._send_counter += 1
        second = alice.send_message("bob", "two")
        await wait_until(lambda: bool(log.of(PeerOffline)), timeout=10)
        [offline] = log.of(PeerOffline)
        assert isinstance(offline, PeerOffline) and "skipped" in offline.reason
        assert await alice.wait_for_delivery(second.id, 20) == "delivered"
        assert [m.body for m in bob.history("alice")] == ["one", "two"]
    finally:
        await log.close()

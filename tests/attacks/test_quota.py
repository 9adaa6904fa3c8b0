"""A contact cannot grow the database without bound with messages: a daily quota per
contact, refused with `defer`, and nothing lost on an honest sender's side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from p2pchat.config import Paths, save_settings
from p2pchat.core import chat
from p2pchat.core.events import DeliveryDeferred, IncomingDeferred
from p2pchat.node import Node

from ..conftest import EventLog, wait_until
from ..daemons import make_home
from .attackers import HostilePeer, message_flood

QUOTA = 20_000
DAY = 86400.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def with_quota(paths: Paths, quota: int) -> Paths:
    settings = json.loads(paths.settings.read_text())
    settings["max_message_bytes_per_day"] = quota
    save_settings(paths, settings)
    return paths


async def test_quota_refuses_then_delivers_the_next_day(tmp_path: Path) -> None:
    clock = Clock(DAY * 20000 + 3600)
    bob_paths = with_quota(make_home(tmp_path, "bob"), QUOTA)
    alice = Node(make_home(tmp_path, "alice"))
    bob = Node(bob_paths, clock=clock)
    await alice.start()
    await bob.start()
    alice_log, bob_log = EventLog(alice), EventLog(bob)
    try:
        alice.add_contact(bob.peer_id, name="bob", addresses=bob.addresses)
        bob.add_contact(alice.peer_id, name="alice", addresses=alice.addresses)
        await wait_until(lambda: alice.is_online(bob.peer_id), timeout=20)
        sent = [alice.send_message("bob", f"{i:02d} " + "q" * 4000) for i in range(8)]
        # Four fit in 20,000 bytes; the fifth is refused and everything after waits.
        await wait_until(lambda: bool(alice_log.of(DeliveryDeferred)), timeout=20)
        [deferred] = alice_log.of(DeliveryDeferred)
        assert isinstance(deferred, DeliveryDeferred) and deferred.why == "quota"
        assert "allowance" in deferred.reason
        await wait_until(lambda: bool(bob_log.of(IncomingDeferred)), timeout=10)
        assert [m.body[:2] for m in bob.history("alice")] == ["00", "01", "02", "03"]
        assert bob.store.intake_today(alice.peer_id, now=clock()) == (4 * 4003, 4)
        assert alice.contacts()[0].deferred is not None
        states = [alice.store.get_message(m.id, peer_id=bob.peer_id) for m in sent]
        assert [s.state for s in states if s is not None][4:] != ["delivered"] * 4
        assert len(alice.store.outbox(bob.peer_id)) == 4  # kept, nothing lost
        # The next day (here: a new session after midnight) the rest goes through.
        clock.now += DAY
        await bob.stop()
        bob = Node(bob_paths, clock=clock)
        await bob.start()
        assert await alice.wait_for_delivery(sent[-1].id, 30) == "delivered"
        assert [m.body[:2] for m in bob.history("alice")] == [f"{i:02d}" for i in range(8)]
    finally:
        await alice_log.close()
        await bob_log.close()
        await alice.stop()
        await bob.stop()


async def test_a_contact_ignoring_defer_cannot_grow_the_database(tmp_path: Path) -> None:
    bob = Node(with_quota(make_home(tmp_path, "bob"), QUOTA))
    await bob.start()
    mallory = HostilePeer()
    await mallory.start()
    try:
        bob.add_contact(mallory.peer_id, name="mallory")
        link = await mallory.connect(bob.addresses[0])
        await wait_until(lambda: bob.is_online(mallory.peer_id), timeout=10)
        await message_flood(link, 1, 400, "m" * 8000)

        def status() -> dict[str, Any]:
            return dict(bob.network_status()["messages"])

        await wait_until(lambda: status()["dropped_while_refusing"] > 300, timeout=30)
        stored, _ = bob.store.intake_today(mallory.peer_id, now=bob.clock())
        assert stored <= QUOTA
        assert len(bob.history("mallory")) == 2
        assert status()["refused_quota"] >= 1
        assert link.of(chat.Defer) and link.terminated is None
    finally:
        mallory.close()
        await bob.stop()

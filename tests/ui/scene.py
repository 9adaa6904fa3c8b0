"""A fixed, fully deterministic home for snapshot tests.

Fixed seeds give fixed peer IDs, invites, fingerprints and safety numbers; a
frozen clock and UTC give fixed times; history is written straight into the
store with chosen timestamps, so no network timing reaches the screen.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from p2pchat.config import Paths
from p2pchat.store import Store
from p2pchat.ui.app import ChatApp

from .conftest import fixed_home, write_fixed_identity

UTC = dt.UTC
NOW = dt.datetime(2025, 3, 14, 15, 30, tzinfo=UTC).timestamp()
HOUR = 3600.0
DAY = 86400.0


def frozen_clock() -> float:
    return NOW


@dataclass(frozen=True, slots=True)
class Scene:
    paths: Paths
    me: str
    bob: str
    carol: str
    dave: str
    erin: str

    def app(self, **kwargs: object) -> ChatApp:
        return ChatApp(self.paths, clock=frozen_clock, tz=UTC, network=False, **kwargs)  # type: ignore[arg-type]


def _at(day_offset: int, hour: int, minute: int) -> float:
    base = dt.datetime.fromtimestamp(NOW, UTC).replace(hour=hour, minute=minute, second=0)
    return (base + dt.timedelta(days=day_offset)).timestamp()


def build_scene(root: Path) -> Scene:
    paths, me = fixed_home(root, "alice", 0x01, "127.0.0.1:47474")
    others = {}
    for name, seed in (("bob", 0x02), ("carol", 0x03), ("dave", 0x04), ("erin", 0x05)):
        others[name] = write_fixed_identity(Paths(root / f"peer-{name}"), bytes([seed]) * 32)
    bob, carol, dave = others["bob"], others["carol"], others["dave"]
    store = Store(paths.database)
    try:
        store.add_contact(bob, "bob", addresses=("127.0.0.1:47475",), now=NOW - 30 * DAY)
        store.set_verified(bob, True)
        store.record_seen(bob, "127.0.0.1:47475", now=_at(0, 15, 22))
        store.add_contact(carol, "carol", addresses=("127.0.0.1:47476",), now=NOW - 2 * DAY)
        store.record_seen(carol, "127.0.0.1:47476", now=_at(-1, 21, 40))

        incoming = {"bob": 0, "carol": 0}

        def receive(peer: str, key: str, body: str, at: float) -> None:
            incoming[key] += 1
            seq = incoming[key]
            store.receive_message(
                peer,
                message_id=f"{key}-in-{seq}",
                seq=seq,
                base=seq,
                body=body,
                sent_at=at - 1,
                now=at,
            )

        def send(peer: str, body: str, at: float) -> int:
            return store.queue_message(peer, body, now=at).seq

        receive(bob, "bob", "are we still on for tomorrow?", _at(-1, 18, 2))
        send(bob, "yes! 10:00 at the station", _at(-1, 18, 5))
        receive(bob, "bob", "running 5 min late, sorry", _at(0, 9, 58))
        read_upto = send(bob, "no problem, I'll grab a coffee ☕", _at(0, 9, 59))
        receive(
            bob,
            "bob",
            "great day! I took lots of photos\nwill send them once file drop lands 📷",
            _at(0, 15, 12),
        )
        delivered_upto = send(bob, "can't wait to see them", _at(0, 15, 20))
        sent_upto = send(bob, "I'm on the train, reception is patchy", _at(0, 15, 21))
        send(bob, "see you tonight", _at(0, 15, 29))
        store.mark_sent(bob, sent_upto, _at(0, 15, 21))
        store.ack_outgoing(bob, delivered_upto, _at(0, 15, 20))
        store.mark_read_outgoing(bob, read_upto, _at(0, 10, 0))
        store.mark_read_incoming(bob, 2, now=_at(0, 10, 0))

        receive(carol, "carol", "hi alice! it's carol from the meetup", _at(-1, 21, 30))
        receive(carol, "carol", "here is the link I mentioned", _at(-1, 21, 31))

        store.add_request(
            dave,
            name="dave",
            address="127.0.0.1:47477",
            preview="hi alice, we met at the conference",
            now=NOW - 600,
        )
    finally:
        store.close()
    return Scene(paths, me, bob, carol, dave, others["erin"])

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


# ---------------------------------------------------------------- file drop
PHOTOS_ID = "a1" * 16
SLIDES_ID = "b2" * 16
BUDGET_ID = "c3" * 16
OFFER_ID = "d4" * 16
DOWNLOADS = "/home/alice/Downloads"
HASH = bytes(32)
# What the node reports for the slides while the snapshot is taken.
SLIDES_PROGRESS = (31_500_000, 48_200_000, 12_400_000.0)
OFFER_FILES = (
    ("trip/IMG_2041.jpg", 4_812_330),
    ("trip/IMG_2042.jpg", 5_120_004),
    ("trip/IMG_2043.jpg", 4_977_152),
    ("trip/map.pdf", 912_384),
    ("trip/notes.txt", 2_211),
)


def add_transfers(scene: Scene) -> None:
    """A finished incoming folder and an outgoing file half way, with bob; a declined
    offer to carol yesterday.  States are written as they are: no network involved."""
    store = Store(scene.paths.database)
    try:
        photos = [
            ("photos/IMG_1998.jpg", 5_204_113),
            ("photos/IMG_1999.jpg", 4_903_877),
            ("photos/IMG_2000.jpg", 5_511_020),
        ]
        store.create_transfer(
            PHOTOS_ID,
            scene.bob,
            direction="in",
            state="pending",
            files=[(path, size, HASH, None) for path, size in photos],
            now=_at(0, 15, 14),
        )
        store.set_transfer_folder(PHOTOS_ID, DOWNLOADS)
        store.set_transfer_files(
            PHOTOS_ID,
            [(i, {"done": 1, "final": f"{DOWNLOADS}/{p}"}) for i, (p, _) in enumerate(photos)],
        )
        store.set_transfer_state(PHOTOS_ID, "done", now=_at(0, 15, 15))
        store.create_transfer(
            SLIDES_ID,
            scene.bob,
            direction="out",
            state="offered",
            files=[("slides.pdf", 48_200_000, HASH, "/home/alice/talks/slides.pdf")],
            now=_at(0, 15, 25),
        )
        store.set_transfer_state(SLIDES_ID, "sending", now=_at(0, 15, 26))
        store.create_transfer(
            BUDGET_ID,
            scene.carol,
            direction="out",
            state="offered",
            files=[("budget.xlsx", 84_211, HASH, "/home/alice/budget.xlsx")],
            now=_at(-1, 21, 35),
        )
        store.set_transfer_state(BUDGET_ID, "declined", now=_at(-1, 21, 40), error="declined")
    finally:
        store.close()


def add_offer(store: Store, bob: str) -> None:
    """Bob offers a folder of holiday pictures, waiting for an answer."""
    store.create_transfer(
        OFFER_ID,
        bob,
        direction="in",
        state="pending",
        files=[(path, size, HASH, None) for path, size in OFFER_FILES],
        now=_at(0, 15, 29),
    )

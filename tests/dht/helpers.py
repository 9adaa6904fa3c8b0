"""Small wiring for unit tests: a few cores that deliver datagrams to each other at once."""

from __future__ import annotations

import random
from typing import Any

from p2pchat.dht.bencode import bencode
from p2pchat.dht.core import DhtConfig, DhtCore
from p2pchat.dht.events import DhtEvent
from p2pchat.dht.krpc import Addr, decode_message

# BEP 44 test vectors (bittorrent.org/beps/bep_0044.html, "test vectors").
BEP44_PUBLIC_KEY = bytes.fromhex("77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548")
BEP44_PRIVATE_KEY = bytes.fromhex(
    "e06d3183d14159228433ed599221b80bd0a5ce8352e4bdf0262f76786ef1c74d"
    "b7e7a9fea2c0eb269d61e3b38e450a22e754941ac78479d6c54e1faf6037881d"
)
BEP44_SIG_PLAIN = bytes.fromhex(
    "305ac8aeb6c9c151fa120f120ea2cfb923564e11552d06a5d856091e5e853cff"
    "1260d3f39e4999684aa92eb73ffd136e6f4f3ecbfda0ce53a1608ecd7ae21f01"
)
BEP44_SIG_SALTED = bytes.fromhex(
    "6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17d"
    "df9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08"
)
BEP44_TARGET_PLAIN = bytes.fromhex("4a533d47ec9c7d95b1ad75f576cffc641853b750")
BEP44_TARGET_SALTED = bytes.fromhex("411eba73b6f087ca51a3795d9c8c938d365e32c1")
BEP44_TARGET_IMMUTABLE = bytes.fromhex("e5f96f6f38320f0f33959cb4d3d656452117aadb")


def addr(n: int) -> Addr:
    return (f"127.0.{n // 256}.{n % 256}", 6881)


def make_core(n: int = 1, **kwargs: Any) -> DhtCore:
    kwargs.setdefault("enforce_bep42", False)
    kwargs.setdefault("rng", random.Random(n))
    return DhtCore(random.Random(1000 + n).randbytes(20), **kwargs)


class Wire:
    """Cores by address; ``run`` delivers until nobody has anything left to send."""

    def __init__(self) -> None:
        self.cores: dict[Addr, DhtCore] = {}
        self.events: dict[Addr, list[DhtEvent]] = {}
        self.now = 100.0
        self.dropped: set[Addr] = set()
        self.log: list[tuple[Addr, Addr, bytes]] = []

    def add(self, n: int, **kwargs: Any) -> tuple[Addr, DhtCore]:
        kwargs.setdefault("now", self.now)
        kwargs.setdefault("config", DhtConfig())
        a = addr(n)
        core = make_core(n, **kwargs)
        self.cores[a] = core
        self.events[a] = []
        return a, core

    def run(self, rounds: int = 1000) -> None:
        for _ in range(rounds):
            moved = False
            for src, core in list(self.cores.items()):
                for data, dst in core.datagrams_to_send():
                    moved = True
                    self.log.append((src, dst, data))
                    target = self.cores.get(dst)
                    if target is not None and dst not in self.dropped:
                        target.receive_datagram(data, src, self.now)
                while (event := core.next_event()) is not None:
                    self.events[src].append(event)
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        """Move time forward, firing timers as they come due."""
        end = self.now + seconds
        while True:
            due = [
                (t, a)
                for a, c in self.cores.items()
                if (t := c.get_timer()) is not None and t <= end
            ]
            if not due:
                break
            t, a = min(due)
            self.now = max(self.now, t)
            self.cores[a].handle_timer(self.now)
            self.run()
        self.now = end
        self.run()

    def event_for(self, a: Addr, op_id: int) -> DhtEvent:
        for event in self.events[a]:
            if getattr(event, "op_id", None) == op_id:
                return event
        raise AssertionError(f"no event for op {op_id}")


def query_bytes(method: bytes, args: dict[bytes, Any], tid: bytes = b"aa", **top: Any) -> bytes:
    msg: dict[bytes, Any] = {b"t": tid, b"y": b"q", b"q": method, b"a": args}
    msg.update({k.encode(): v for k, v in top.items()})
    return bencode(msg)


def replies(core: DhtCore) -> list[Any]:
    return [decode_message(data) for data, _ in core.datagrams_to_send()]

#!/usr/bin/env python3
"""Group chat benchmark: real nodes on loopback, one process, one asyncio loop.

Usage (from the repository root)::

    python3 benchmarks/groups.py [--members 20] [--messages 20] [--backlog 10000]

Every node is a real ``Node`` (its own home, SQLite, UDP socket on 127.0.0.1,
QUIC, sealed sessions); the first member is every other member's contact and
invites them, the others are not each other's contacts and meet through group
sessions, as in real use.  All nodes share one loop and two cores, so every figure
includes the work of every member, sender and receivers alike.

Measured:

* **All online**: ``--messages`` times, a member (in turn) posts a 100-byte text;
  time until every other member's event stream has shown it.  Median and 90th
  percentile.
* **Bytes per message per member**: UDP bytes sent by all nodes during the all-online
  phase (QUIC headers, acknowledgements, sealing, group frames, acknowledgements of
  group frames, keepalives included), divided by messages and by the other members.
* **Half online, the rest later**: half the members stop; ``--messages`` are posted by
  the online half; then the other half starts at once: time from their start until
  every one of them shows every message.
* **A week's backlog**: one member stops; ``--backlog`` messages are posted while it is
  away (by two members, so the store and the clocks look like a busy week); it comes
  back and meets one member: time until it shows all of them, rounds (summaries it
  sent), and bytes both ways on the wire.

Nothing is asserted; the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("P2PCHAT_KDF_FAST", "1")

from p2pchat.config import Paths
from p2pchat.core.events import NodeEvent
from p2pchat.core.group.events import GroupMessageReceived
from p2pchat.node import Node
from tests.daemons import make_home

BODY = 100
TIMEOUT = 600.0


def text(tag: str, i: int) -> str:
    head = f"{tag} {i:06d} "
    return head + "x" * (BODY - len(head))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class LoopLag:
    """How late the shared loop runs a 100 ms sleep: every node lives on this loop, so
    a lag near the sessions' liveness timeout (3.5 s) means the figures measure a
    starved process, not the protocol."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.1)
            self.worst = max(self.worst, loop.time() - start - 0.1)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def take(self) -> str:
        worst, self.worst = self.worst, 0.0
        return f"worst loop lag {worst * 1000:.0f} ms"


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


class Member:
    """One node plus what the benchmark watches of it."""

    def __init__(self, paths: Paths, wire: Counter[str]) -> None:
        self.paths = paths
        self.wire = wire
        self.node: Node | None = None
        self.shown: dict[str, float] = {}
        self.summaries = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def n(self) -> Node:
        assert self.node is not None
        return self.node

    async def start(self) -> None:
        self.node = Node(self.paths)
        # Subscribed before the start: a member that comes back is synced by the others
        # while ``start`` still runs, and those messages must be counted too.
        stream = self.node.events()
        await self.node.start()
        endpoint = self.node._endpoint
        assert endpoint is not None
        name = self.paths.home.name
        send = endpoint.sendto

        def counted(data: bytes, address: Any, **kw: Any) -> None:
            self.wire[name] += len(data)
            send(data, address, **kw)

        endpoint.sendto = counted  # type: ignore[method-assign]
        groups = self.node.groups
        ask = groups._ask

        def counting_ask(gid: bytes, replica: object, key: bytes) -> None:
            self.summaries += 1
            ask(gid, replica, key)  # type: ignore[arg-type]

        groups._ask = counting_ask  # type: ignore[method-assign]
        self._task = asyncio.ensure_future(self._watch(stream))

    async def _watch(self, stream: AsyncGenerator[NodeEvent, None]) -> None:
        async for event in stream:
            if isinstance(event, GroupMessageReceived):
                self.shown[event.message.message_id] = time.perf_counter()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.node is not None:
            await self.node.stop()
            self.node = None


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError("the benchmark waited too long")
        await asyncio.sleep(0.01)


async def waiting(predicate: Callable[[], bool], status: Callable[[], str]) -> None:
    """``until``, saying every 10 s how far it got (a stalled phase shows where)."""

    async def report() -> None:
        while True:
            await asyncio.sleep(10)
            print(f"  ... {status()}", flush=True)

    reporter = asyncio.ensure_future(report())
    try:
        await until(predicate)
    finally:
        reporter.cancel()


async def restart(m: Member) -> None:
    for _ in range(200):
        try:
            await m.start()
            return
        except OSError:
            await asyncio.sleep(0.02)
    await m.start()


async def run(args: argparse.Namespace) -> None:
    wire: Counter[str] = Counter()
    lag = LoopLag()
    lag.start()
    with tempfile.TemporaryDirectory(prefix="p2pchat-groups-bench-") as tmp:
        root = Path(tmp)
        members = [Member(make_home(root, f"m{i:02d}"), wire) for i in range(args.members)]
        for m in members:
            await m.start()
        admin = members[0]
        for m in members[1:]:
            admin.n.add_contact(m.n.peer_id, name=m.paths.home.name, addresses=m.n.addresses)
            m.n.add_contact(admin.n.peer_id, name="admin", addresses=admin.n.addresses)
        await until(lambda: all(admin.n.is_online(m.n.peer_id) for m in members[1:]))
        setup = time.perf_counter()
        group = admin.n.groups.create("bench", [m.paths.home.name for m in members[1:]])
        gid = group.group_id
        for m in members[1:]:
            await until(lambda m=m: any(v.group_id == gid for v in m.n.groups.invites()))
            m.n.groups.accept(gid)
        others = len(members) - 1

        ids = [m.n.peer_id for m in members]

        def mesh() -> int:
            """Sessions with fellow members, counted without touching the databases (the
            wait polls this often; ``groups.members`` would query each contact)."""
            return sum(
                1 for m in members for pid in ids
                if pid != m.n.peer_id and m.n.groups.session(pid) is not None
            )  # fmt: skip

        def sessions() -> str:
            return f"{mesh()} of {len(members) * others} member sessions up"

        await waiting(lambda: mesh() == len(members) * others, sessions)
        print(
            f"{len(members)} members, full mesh of sessions after "
            f"{time.perf_counter() - setup:.1f} s of setup ({lag.take()})"
        )

        # ----------------------------------------------------- all online
        latencies: list[float] = []
        wire.clear()
        for i in range(args.messages):
            author = members[i % len(members)]
            start = time.perf_counter()
            view = author.n.groups.send(gid, text("live", i))
            rest = [m for m in members if m is not author]
            await until(lambda rest=rest, view=view: all(view.message_id in m.shown for m in rest))
            latencies.append(max(m.shown[view.message_id] for m in rest) - start)
        await asyncio.sleep(0.5)  # acknowledgements still in flight belong to these messages
        sent = sum(wire.values())
        per = sent / args.messages / others
        print(
            f"all online: a message reaches all {others} others in "
            f"{percentile(latencies, 50) * 1000:.0f} ms median, "
            f"{percentile(latencies, 90) * 1000:.0f} ms p90 ({args.messages} messages)"
        )
        print(
            f"bytes on the wire per message per member: {per:,.0f} "
            f"(a {BODY}-byte text; all traffic of all nodes, {sent:,} bytes in all)"
        )

        print(f"load average: {load()}; {lag.take()}")

        # ------------------------------------ half online, the rest later
        half = len(members) // 2
        late = members[half:]
        for m in late:
            await m.stop()
        posted = []
        for i in range(args.messages):
            posted.append(members[i % half].n.groups.send(gid, text("while away", i)).message_id)
        await asyncio.sleep(0.2)
        start = time.perf_counter()
        for m in late:
            await restart(m)

        def missing() -> str:
            lacking = sum(1 for m in late for mid in posted if mid not in m.shown)
            return f"{lacking} messages still missing at the late members; {sessions()}"

        await waiting(lambda: all(all(mid in m.shown for mid in posted) for m in late), missing)
        done = sorted(max(m.shown[mid] for mid in posted) - start for m in late)
        await waiting(lambda: mesh() == len(members) * others, sessions)
        mesh_up = time.perf_counter() - start
        print(
            f"half online ({half}), {args.messages} messages posted, then the other "
            f"{len(late)} start at once: each has everything after {done[0]:.2f} s (first), "
            f"{percentile(done, 50):.2f} s (median), {done[-1]:.2f} s (last); "
            f"full mesh of sessions again after {mesh_up:.2f} s"
        )
        print(f"load average: {load()}; {lag.take()}")

        # ---------------------------------------------------- a week away
        away, holder, second = members[-1], members[1], members[2]
        for m in members:
            if m not in (holder, second) and m.node is not None:
                await m.stop()
        posted_at = time.perf_counter()
        backlog = []
        for i in range(args.backlog):
            who = holder if i % 3 else second
            backlog.append(who.n.groups.send(gid, text("backlog", i)).message_id)
            if i % 256 == 0:
                await asyncio.sleep(0)
        g = bytes.fromhex(gid)
        one, two = holder.n.groups._replicas[g], second.n.groups._replicas[g]
        k1, k2 = holder.n.identity.public_key, second.n.identity.public_key
        await until(lambda: two.shown(k1) == one.shown(k1) and one.shown(k2) == two.shown(k2))
        took = time.perf_counter() - posted_at
        print(f"posted a backlog of {args.backlog} messages in {took:.1f} s")
        await second.stop()
        wire.clear()
        await restart(away)
        away.summaries = 0
        start = time.perf_counter()
        # Counted first: a full scan of 10,000 ids every poll would be the benchmark's
        # own cost on the loop every node shares.
        need = len(set(away.shown) | set(backlog))
        await until(lambda: len(away.shown) >= need and all(m in away.shown for m in backlog))
        took = time.perf_counter() - start
        await asyncio.sleep(0.5)
        received = wire[holder.paths.home.name]
        print(
            f"back after a backlog of {args.backlog} messages: all shown after {took:.2f} s, "
            f"{away.summaries} summaries sent, {received / 1e6:.2f} MB from the member it met "
            f"({received / args.backlog:.0f} bytes per message), "
            f"{wire[away.paths.home.name] / 1e6:.2f} MB sent by it"
        )
        print(f"load average: {load()}; {lag.take()}")
        for m in members:
            await m.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--backlog", type=int, default=10_000)
    args = parser.parse_args()
    print(
        f"p2pchat groups benchmark, {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    print(f"load average: {load()}")
    # A restarted member receives packets of its peers' old connections; aioquic
    # warns about each (the peers' idle timeouts end them): not what is measured.
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

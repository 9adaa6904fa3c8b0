"""A deterministic network of ``DhtCore`` nodes with virtual time.

Used by the tests (``test_sim.py``) and by ``benchmarks/dht_sim.py``. Nothing here touches
a socket: datagrams are tuples in an event queue, delivered after a random latency, and
dropped when the destination is dead. Addresses are in 127.0.0.0/8 and only ever used as
dictionary keys.

A run builds the network (nodes join one after another, each bootstrapping from one
random earlier node), stores some immutable items, kills a fraction of the nodes
("churn", after the tables are built, so the survivors' tables are full of dead contacts)
and then measures random lookups against the ground truth computed from all live IDs.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import cast

from p2pchat.dht.bencode import bencode
from p2pchat.dht.core import DhtConfig, DhtCore
from p2pchat.dht.events import DhtEvent, GetItemDone, LookupDone, PutDone
from p2pchat.dht.krpc import Addr

__all__ = ["ChurnResult", "SimNetwork", "lookup_times_with_dead_nodes", "run_simulation"]

_DELIVER = 0
_TIMER = 1


@dataclass(eq=False)
class SimNode:
    index: int
    addr: Addr
    core: DhtCore
    alive: bool = True
    timer: float | None = None
    events: list[DhtEvent] = field(default_factory=list)
    #: Virtual time at which each operation's event came out.
    ended_at: dict[int, float] = field(default_factory=dict)


class SimNetwork:
    """Event-driven network: ``run_until`` advances virtual time."""

    def __init__(
        self,
        *,
        seed: int = 1,
        latency: tuple[float, float] = (0.01, 0.15),
        config: DhtConfig | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.latency = latency
        self.config = config or DhtConfig()
        self.now = 0.0
        self.nodes: list[SimNode] = []
        self.by_addr: dict[Addr, SimNode] = {}
        self._queue: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()
        self.datagrams = 0

    @staticmethod
    def address(index: int) -> Addr:
        n = index + 1
        return (f"127.{(n >> 16) & 0xFF}.{(n >> 8) & 0xFF}.{n & 0xFF}", 6881)

    def add_node(self) -> SimNode:
        index = len(self.nodes)
        core = DhtCore(
            self.rng.randbytes(20),
            rng=random.Random(self.rng.getrandbits(64)),
            now=self.now,
            enforce_bep42=False,
            config=self.config,
            local_port=6881,
        )
        node = SimNode(index, self.address(index), core)
        self.nodes.append(node)
        self.by_addr[node.addr] = node
        self._after(node)
        return node

    def kill(self, node: SimNode) -> None:
        node.alive = False

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes if n.alive]

    # ------------------------------------------------------------------ engine

    def _push(self, at: float, kind: int, payload: object) -> None:
        heapq.heappush(self._queue, (at, next(self._seq), kind, payload))

    def _after(self, node: SimNode) -> None:
        """Collect what a core wants to send, its events and its next timer."""
        core = node.core
        lo, hi = self.latency
        for data, dst in core.datagrams_to_send():
            self.datagrams += 1
            target = self.by_addr.get(dst)
            if target is None or not target.alive:
                continue
            self._push(self.now + self.rng.uniform(lo, hi), _DELIVER, (target, data, node.addr))
        while (event := core.next_event()) is not None:
            node.events.append(event)
            op_id = getattr(event, "op_id", None)
            if op_id is not None:
                node.ended_at[op_id] = self.now
        timer = core.get_timer()
        if timer is not None and timer != node.timer:
            node.timer = timer
            self._push(max(timer, self.now), _TIMER, (node, timer))

    def run_until(self, until: float) -> None:
        queue = self._queue
        while queue and queue[0][0] <= until:
            at, _, kind, payload = heapq.heappop(queue)
            self.now = at
            if kind == _DELIVER:
                target, data, src = cast(tuple[SimNode, bytes, Addr], payload)
                if not target.alive:
                    continue
                target.core.receive_datagram(data, src, at)
                self._after(target)
            else:
                node, timer = cast(tuple[SimNode, float], payload)
                if not node.alive or node.timer != timer:
                    continue
                node.timer = None
                node.core.handle_timer(at)
                self._after(node)
        self.now = max(self.now, until)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    # ------------------------------------------------------------------ helpers

    def build(self, n: int, *, join_interval: float = 0.05, settle: float = 30.0) -> None:
        """Join ``n`` nodes one after another, each bootstrapping from a random earlier one."""
        ready: list[SimNode] = [self.add_node()]
        joining: list[tuple[SimNode, int]] = []
        for _ in range(1, n):
            self.run_for(join_interval)
            still = []
            for node, op_id in joining:
                if any(getattr(e, "op_id", None) == op_id for e in node.events):
                    ready.append(node)
                else:
                    still.append((node, op_id))
            joining = still
            node = self.add_node()
            # Like a real bootstrap node, the contact is one that has finished joining.
            contact = self.rng.choice(ready)
            joining.append((node, node.core.bootstrap([contact.addr], self.now)))
            self._after(node)
        self.run_for(settle)

    def true_closest(self, target: bytes, k: int, exclude: SimNode) -> set[bytes]:
        t = int.from_bytes(target, "big")
        live = (n.core.node_id for n in self.nodes if n.alive and n is not exclude)
        return set(heapq.nsmallest(k, live, key=lambda i: int.from_bytes(i, "big") ^ t))

    def wait_for(self, node: SimNode, op_id: int, *, limit: float = 120.0) -> DhtEvent:
        deadline = self.now + limit
        while self.now < deadline:
            for event in node.events:
                if getattr(event, "op_id", None) == op_id:
                    node.events.remove(event)
                    return event
            self.run_for(0.25)
        raise AssertionError(f"operation {op_id} on node {node.index} did not finish")


@dataclass
class ChurnResult:
    churn: float
    live_nodes: int
    lookups: int
    lookup_success: float
    item_gets: int
    item_success: float
    hops_median: float
    hops_mean: float
    hops_max: int
    messages_mean: float
    messages_median: float
    internal_errors: int


def _run_lookups(net: SimNetwork, count: int, k: int) -> tuple[int, list[int], list[int]]:
    live = net.live()
    started: list[tuple[SimNode, int, bytes]] = []
    for _ in range(count):
        node = net.rng.choice(live)
        target = net.rng.randbytes(20)
        op_id = node.core.find_node(target, net.now)
        net._after(node)
        started.append((node, op_id, target))
        net.run_for(0.02)
    ok = 0
    hops: list[int] = []
    messages: list[int] = []
    for node, op_id, target in started:
        event = net.wait_for(node, op_id)
        assert isinstance(event, LookupDone)
        found = {info.id for info in event.nodes}
        if found == net.true_closest(target, k, node):
            ok += 1
        hops.append(event.stats.hops)
        messages.append(event.stats.queried + event.stats.responded)
    return ok, hops, messages


def _store_items(net: SimNetwork, count: int) -> list[bytes]:
    targets: list[tuple[SimNode, int, bytes]] = []
    for i in range(count):
        node = net.rng.choice(net.live())
        value = bencode(b"item %d " % i + net.rng.randbytes(16))
        op_id = node.core.put_immutable(value, net.now)
        net._after(node)
        targets.append((node, op_id, hashlib.sha1(value).digest()))
        net.run_for(0.02)
    stored: list[bytes] = []
    for node, op_id, target in targets:
        event = net.wait_for(node, op_id)
        assert isinstance(event, PutDone)
        assert event.stored > 0, "a put reached no node"
        stored.append(target)
    return stored


def _get_items(net: SimNetwork, targets: list[bytes]) -> int:
    started = []
    for target in targets:
        node = net.rng.choice(net.live())
        op_id = node.core.get_item(target, net.now)
        net._after(node)
        started.append((node, op_id))
        net.run_for(0.02)
    found = 0
    for node, op_id in started:
        event = net.wait_for(node, op_id)
        assert isinstance(event, GetItemDone)
        found += event.item is not None
    return found


def run_simulation(
    n: int,
    *,
    churn_levels: tuple[float, ...] = (0.0, 0.1, 0.3),
    lookups: int = 200,
    items: int = 50,
    seed: int = 1,
    config: DhtConfig | None = None,
    log: bool = False,
) -> list[ChurnResult]:
    """Build one network of ``n`` nodes, then measure at each (cumulative) churn level.

    Churn levels are fractions of the original population that are dead when measuring;
    nodes are killed in a random order, so the 30% run's dead include the 10% run's.
    """
    started = time.perf_counter()
    net = SimNetwork(seed=seed, config=config)
    net.build(n)
    if log:
        print(
            f"  built {n} nodes in {time.perf_counter() - started:.1f} s "
            f"({net.datagrams} datagrams)",
            flush=True,
        )
    k = net.config.k
    stored = _store_items(net, items)
    order = list(net.nodes)
    net.rng.shuffle(order)
    killed = 0
    results: list[ChurnResult] = []
    for churn in churn_levels:
        target_dead = round(churn * n)
        while killed < target_dead:
            net.kill(order[killed])
            killed += 1
        if churn:
            # Let one neighbourhood refresh period pass, as it would between a crash and
            # a later lookup: survivors notice their dead neighbours.
            net.run_for(net.config.self_refresh_interval + net.config.maintenance_interval)
        ok, hops, messages = _run_lookups(net, lookups, k)
        found = _get_items(net, stored)
        results.append(
            ChurnResult(
                churn=churn,
                live_nodes=n - killed,
                lookups=lookups,
                lookup_success=ok / lookups,
                item_gets=len(stored),
                item_success=found / len(stored) if stored else 1.0,
                hops_median=statistics.median(hops),
                hops_mean=statistics.fmean(hops),
                hops_max=max(hops),
                messages_mean=statistics.fmean(messages),
                messages_median=statistics.median(messages),
                internal_errors=sum(x.core.stats["internal_errors"] for x in net.nodes),
            )
        )
        if log:
            print(f"  churn {churn:.0%} done at {time.perf_counter() - started:.1f} s", flush=True)
    return results


def lookup_times_with_dead_nodes(
    n: int, *, dead: float, lookups: int = 100, seed: int = 1
) -> tuple[list[float], int]:
    """Kill ``dead`` of the nodes and, at once (their contacts still in every table),
    time ``lookups`` lookups from random live nodes, one at a time: durations in
    virtual seconds, and how many returned exactly the true k closest live nodes."""
    net = SimNetwork(seed=seed)
    net.build(n)
    order = list(net.nodes)
    net.rng.shuffle(order)
    for node in order[: round(dead * n)]:
        net.kill(node)
    live = net.live()
    times: list[float] = []
    exact = 0
    for _ in range(lookups):
        node = net.rng.choice(live)
        target = net.rng.randbytes(20)
        started = net.now
        op_id = node.core.find_node(target, net.now)
        net._after(node)
        event = net.wait_for(node, op_id)
        assert isinstance(event, LookupDone)
        times.append(node.ended_at[op_id] - started)
        exact += {i.id for i in event.nodes} == net.true_closest(target, net.config.k, node)
    return times, exact

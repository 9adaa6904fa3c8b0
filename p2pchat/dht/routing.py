"""The Kademlia routing table of BEP 5: k-buckets over the 160-bit XOR metric.

Only the bucket that covers our own ID is ever split, so the table is detailed near us
and sparse far away, and a bucket's index is just the length of the prefix a node ID
shares with ours (capped at the last bucket). That makes placing a node O(1).

Node health follows BEP 5: *good* nodes answered us in the last 15 minutes (or queried
us after having answered at some point), *questionable* ones have been quiet longer (or
never answered: "unconfirmed"), *bad* ones failed several queries in a row. A full bucket
takes a newcomer only in place of a bad node, or of an unconfirmed one when the newcomer
itself has answered; otherwise the newcomer waits in the bucket's replacement cache and
the caller is asked to ping the bucket's questionable nodes, whose failures then make
room. Good nodes are never evicted, which is what makes a Kademlia table resist being
flooded with fresh identities.

Unconfirmed nodes (they only queried us, or came from a saved table) are never handed
out to other nodes, and neither are nodes whose last query from us timed out: we only
vouch for nodes we have heard answer since their last failure.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from .bencode import BencodeError, bdecode, bencode
from .krpc import ID_LENGTH, Addr, KrpcError, NodeInfo, compact_nodes, parse_compact_nodes

__all__ = [
    "GOOD_INTERVAL",
    "Bucket",
    "K",
    "NodeStatus",
    "RoutingNode",
    "RoutingTable",
    "dump_state",
    "load_state",
]

K: Final = 8
GOOD_INTERVAL: Final = 15 * 60.0
ID_BITS: Final = ID_LENGTH * 8
_STATE_VERSION: Final = 1


class NodeStatus(Enum):
    GOOD = "good"
    QUESTIONABLE = "questionable"
    BAD = "bad"


@dataclass(slots=True, eq=False)
class RoutingNode:
    """One contact's bookkeeping; mutable because it is updated on every message."""

    id: bytes
    addr: Addr
    id_int: int
    added: float
    last_response: float | None = None
    last_query: float | None = None
    failures: int = 0
    ping_pending: bool = False

    @property
    def confirmed(self) -> bool:
        """It has answered one of our queries at least once."""
        return self.last_response is not None

    @property
    def last_seen(self) -> float:
        return max(self.last_response or self.added, self.last_query or self.added)

    def info(self) -> NodeInfo:
        return NodeInfo(self.id, self.addr)


@dataclass(slots=True, eq=False)
class Bucket:
    """Nodes ordered least recently seen first, plus waiting replacements."""

    nodes: list[RoutingNode] = field(default_factory=list)
    replacements: list[RoutingNode] = field(default_factory=list)
    last_changed: float = 0.0


class RoutingTable:
    """BEP 5 routing table; the caller supplies ``now`` and sends whatever pings it asks."""

    def __init__(
        self,
        own_id: bytes,
        *,
        k: int = K,
        max_failures: int = 2,
        good_interval: float = GOOD_INTERVAL,
        replacement_size: int = K,
        now: float = 0.0,
    ) -> None:
        if len(own_id) != ID_LENGTH:
            raise ValueError("a node ID is 20 bytes")
        self.own_id = own_id
        self.own_int = int.from_bytes(own_id, "big")
        self.k = k
        self.max_failures = max_failures
        self.good_interval = good_interval
        self.replacement_size = replacement_size
        self.buckets: list[Bucket] = [Bucket(last_changed=now)]
        self._by_id: dict[bytes, RoutingNode] = {}
        self._by_addr: dict[Addr, RoutingNode] = {}

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[RoutingNode]:
        return iter(list(self._by_id.values()))

    def get(self, node_id: bytes) -> RoutingNode | None:
        return self._by_id.get(node_id)

    def get_by_addr(self, addr: Addr) -> RoutingNode | None:
        return self._by_addr.get(addr)

    def status(self, node: RoutingNode, now: float) -> NodeStatus:
        if node.failures >= self.max_failures:
            return NodeStatus.BAD
        if node.last_response is not None:
            if now - node.last_response <= self.good_interval:
                return NodeStatus.GOOD
            if node.last_query is not None and now - node.last_query <= self.good_interval:
                return NodeStatus.GOOD
        return NodeStatus.QUESTIONABLE

    def bucket_index(self, id_int: int) -> int:
        shared = ID_BITS - (id_int ^ self.own_int).bit_length()
        return min(shared, len(self.buckets) - 1)

    def closest(
        self, target: bytes, n: int, *, vouch: bool = False, healthy_first: bool = False
    ) -> list[RoutingNode]:
        """The ``n`` non-bad nodes closest to ``target`` by XOR distance.

        With ``vouch`` only nodes we would recommend to others: they have answered us and
        have not failed a query since. With ``healthy_first`` nodes whose last query
        failed come only after all the others (a lookup seeded with them would start by
        waiting for probably dead nodes).
        """
        t = int.from_bytes(target, "big")
        if vouch:
            pool = [
                node
                for node in self._by_id.values()
                if node.failures == 0 and node.last_response is not None
            ]
        else:
            limit = self.max_failures
            pool = [node for node in self._by_id.values() if node.failures < limit]
        if healthy_first:
            healthy = [node for node in pool if node.failures == 0]
            found = heapq.nsmallest(n, healthy, key=lambda node: node.id_int ^ t)
            if len(found) < n:
                failing = [node for node in pool if node.failures]
                found += heapq.nsmallest(n - len(found), failing, key=lambda nd: nd.id_int ^ t)
            return found
        return heapq.nsmallest(n, pool, key=lambda node: node.id_int ^ t)

    # ------------------------------------------------------------------ updates

    def on_response(self, node_id: bytes, addr: Addr, now: float) -> list[RoutingNode]:
        """Node answered us: confirm or insert it. Returns nodes the caller should ping."""
        return self._heard(node_id, addr, now, responded=True)

    def on_query(self, node_id: bytes, addr: Addr, now: float) -> list[RoutingNode]:
        """Node queried us: refresh it, or insert it unconfirmed if there is room."""
        return self._heard(node_id, addr, now, responded=False)

    def on_failure(self, addr: Addr, now: float) -> None:
        """A query to ``addr`` timed out; a node that turns bad gives way to a replacement."""
        node = self._by_addr.get(addr)
        if node is None:
            return
        node.failures += 1
        node.ping_pending = False
        if node.failures >= self.max_failures or node.last_response is None:
            bucket = self.buckets[self.bucket_index(node.id_int)]
            replacement = self._pop_replacement(bucket)
            if replacement is not None:
                self._remove(node, bucket)
                self._add(replacement, bucket, now)
            elif node.last_response is None:
                # An unconfirmed node that does not answer is no use to anyone.
                self._remove(node, bucket)

    def remove(self, node_id: bytes) -> None:
        node = self._by_id.get(node_id)
        if node is not None:
            self._remove(node, self.buckets[self.bucket_index(node.id_int)])

    def _heard(
        self, node_id: bytes, addr: Addr, now: float, *, responded: bool
    ) -> list[RoutingNode]:
        if node_id == self.own_id or len(node_id) != ID_LENGTH:
            return []
        existing = self._by_id.get(node_id)
        if existing is not None:
            if existing.addr != addr:
                # A good node keeps its address: otherwise anyone could hijack its slot.
                if self.status(existing, now) is NodeStatus.GOOD or not responded:
                    return []
                del self._by_addr[existing.addr]
                other = self._by_addr.get(addr)
                if other is not None:
                    self._remove(other, self.buckets[self.bucket_index(other.id_int)])
                existing.addr = addr
                self._by_addr[addr] = existing
            self._touch(existing, now, responded=responded)
            return []
        holder = self._by_addr.get(addr)
        if holder is not None:
            # Same address, new ID: a restart, or a spoofed source. Only a reply (which
            # needs the round trip) may replace a node that is still good.
            if self.status(holder, now) is NodeStatus.GOOD and not responded:
                return []
            self._remove(holder, self.buckets[self.bucket_index(holder.id_int)])
        node = RoutingNode(id=node_id, addr=addr, id_int=int.from_bytes(node_id, "big"), added=now)
        self._touch(node, now, responded=responded)
        to_ping = self._insert(node, now)
        if not responded and node.id in self._by_id:
            # It only queried us: ask it something so it can prove it is reachable.
            node.ping_pending = True
            to_ping.append(node)
        return to_ping

    def _touch(self, node: RoutingNode, now: float, *, responded: bool) -> None:
        if responded:
            node.last_response = now
            node.failures = 0
            node.ping_pending = False
        else:
            node.last_query = now
        if node.id in self._by_id:
            bucket = self.buckets[self.bucket_index(node.id_int)]
            if bucket.nodes and bucket.nodes[-1] is not node:
                bucket.nodes.remove(node)
                bucket.nodes.append(node)
            if responded:
                bucket.last_changed = now

    def _insert(self, node: RoutingNode, now: float) -> list[RoutingNode]:
        while True:
            index = self.bucket_index(node.id_int)
            bucket = self.buckets[index]
            if len(bucket.nodes) < self.k:
                self._add(node, bucket, now)
                return []
            if index == len(self.buckets) - 1 and len(self.buckets) < ID_BITS:
                self._split()
                continue
            break
        victim = self._find_victim(bucket, now, newcomer_confirmed=node.confirmed)
        if victim is not None:
            self._remove(victim, bucket)
            self._add(node, bucket, now)
            return []
        self._add_replacement(bucket, node)
        to_ping = [
            candidate
            for candidate in bucket.nodes
            if not candidate.ping_pending and self.status(candidate, now) is NodeStatus.QUESTIONABLE
        ][:2]
        for candidate in to_ping:
            candidate.ping_pending = True
        return to_ping

    def _find_victim(
        self, bucket: Bucket, now: float, *, newcomer_confirmed: bool
    ) -> RoutingNode | None:
        for candidate in bucket.nodes:
            if candidate.failures >= self.max_failures:
                return candidate
        if newcomer_confirmed:
            for candidate in bucket.nodes:
                if candidate.last_response is None:
                    return candidate
        return None

    def _add(self, node: RoutingNode, bucket: Bucket, now: float) -> None:
        bucket.nodes.append(node)
        bucket.last_changed = now
        self._by_id[node.id] = node
        self._by_addr[node.addr] = node

    def _remove(self, node: RoutingNode, bucket: Bucket) -> None:
        if node in bucket.nodes:
            bucket.nodes.remove(node)
        self._by_id.pop(node.id, None)
        if self._by_addr.get(node.addr) is node:
            del self._by_addr[node.addr]

    def _add_replacement(self, bucket: Bucket, node: RoutingNode) -> None:
        bucket.replacements = [
            r for r in bucket.replacements if r.id != node.id and r.addr != node.addr
        ]
        bucket.replacements.append(node)
        if len(bucket.replacements) > self.replacement_size:
            # Drop the oldest unconfirmed entry first, else the oldest entry.
            for i, r in enumerate(bucket.replacements):
                if r.last_response is None:
                    del bucket.replacements[i]
                    break
            else:
                del bucket.replacements[0]

    def _pop_replacement(self, bucket: Bucket) -> RoutingNode | None:
        while bucket.replacements:
            confirmed = [r for r in bucket.replacements if r.last_response is not None]
            pick = confirmed[-1] if confirmed else bucket.replacements[-1]
            bucket.replacements.remove(pick)
            if pick.id not in self._by_id and pick.addr not in self._by_addr:
                pick.failures = 0
                pick.ping_pending = False
                return pick
        return None

    def _split(self) -> None:
        old = self.buckets[-1]
        depth = len(self.buckets) - 1
        near = Bucket(last_changed=old.last_changed)
        far = Bucket(last_changed=old.last_changed)
        self.buckets[-1] = far
        self.buckets.append(near)

        def shares_more(node: RoutingNode) -> bool:
            return ID_BITS - (node.id_int ^ self.own_int).bit_length() > depth

        for node in old.nodes:
            (near if shares_more(node) else far).nodes.append(node)
        for node in old.replacements:
            (near if shares_more(node) else far).replacements.append(node)

    # ------------------------------------------------------------------ refresh

    def stale_buckets(self, now: float, idle: float = GOOD_INTERVAL) -> list[int]:
        """Indexes of buckets nothing happened in for ``idle`` seconds (BEP 5 refresh)."""
        return [i for i, b in enumerate(self.buckets) if now - b.last_changed >= idle]

    def mark_refreshed(self, index: int, now: float) -> None:
        if 0 <= index < len(self.buckets):
            self.buckets[index].last_changed = now

    def random_id_in_bucket(self, index: int, rng: random.Random) -> bytes:
        """A random ID that falls into bucket ``index`` (target of a refresh lookup)."""
        last = len(self.buckets) - 1
        rand = rng.getrandbits(ID_BITS)
        if index >= last:
            keep = last
            mask = (1 << (ID_BITS - keep)) - 1
            value = (self.own_int & ~mask) | (rand & mask)
        else:
            keep = index
            mask = (1 << (ID_BITS - keep - 1)) - 1
            prefix = (self.own_int >> (ID_BITS - keep - 1)) ^ 1
            value = (prefix << (ID_BITS - keep - 1)) | (rand & mask)
        return value.to_bytes(ID_LENGTH, "big")

    # ------------------------------------------------------------------ persistence

    def to_bytes(self) -> bytes:
        """Our ID and the contacts worth trying after a restart (bad nodes left out)."""
        return dump_state(self.own_id, self.good_enough_nodes())

    def good_enough_nodes(self) -> list[NodeInfo]:
        limit = self.max_failures
        return [node.info() for node in self._by_id.values() if node.failures < limit]

    @staticmethod
    def load_state(data: bytes) -> tuple[bytes, list[NodeInfo]]:
        return load_state(data)

    def with_own_id(self, own_id: bytes, now: float) -> RoutingTable:
        """A copy of this table re-centred on a new ID (after a BEP 42 ID change)."""
        table = RoutingTable(
            own_id,
            k=self.k,
            max_failures=self.max_failures,
            good_interval=self.good_interval,
            replacement_size=self.replacement_size,
            now=now,
        )
        for node in self._by_id.values():
            if node.id == own_id:
                continue
            copy = RoutingNode(
                id=node.id,
                addr=node.addr,
                id_int=node.id_int,
                added=node.added,
                last_response=node.last_response,
                last_query=node.last_query,
                failures=node.failures,
            )
            table._insert(copy, now)
        return table

    @classmethod
    def from_bytes(cls, data: bytes, *, now: float = 0.0, **options: Any) -> RoutingTable:
        """Rebuild a table from :meth:`to_bytes`; every node starts unconfirmed."""
        own, nodes = cls.load_state(data)
        table = cls(own, now=now, **options)
        for info in nodes:
            table.add_unconfirmed(info.id, info.addr, now)
        return table

    def add_unconfirmed(self, node_id: bytes, addr: Addr, now: float) -> None:
        """Insert a contact we have not heard from (saved state, configuration)."""
        for node in self._heard(node_id, addr, now, responded=False):
            node.ping_pending = False


def dump_state(own_id: bytes, nodes: list[NodeInfo]) -> bytes:
    """Serialise an ID and contacts (both address families) for the next start."""
    v4, v6 = compact_nodes(nodes)
    return bencode({b"ver": _STATE_VERSION, b"id": own_id, b"n4": v4, b"n6": v6})


def load_state(data: bytes) -> tuple[bytes, list[NodeInfo]]:
    """Parse :func:`dump_state` output; raises ``ValueError`` if it is damaged."""
    try:
        doc: Any = bdecode(data)
    except BencodeError as exc:
        raise ValueError(f"routing state is not bencode: {exc}") from None
    if not isinstance(doc, dict) or doc.get(b"ver") != _STATE_VERSION:
        raise ValueError("unknown routing state version")
    own = doc.get(b"id")
    v4 = doc.get(b"n4", b"")
    v6 = doc.get(b"n6", b"")
    if not isinstance(own, bytes) or len(own) != ID_LENGTH:
        raise ValueError("routing state has no valid node ID")
    if not isinstance(v4, bytes) or not isinstance(v6, bytes):
        raise ValueError("routing state node lists are not strings")
    try:
        return own, list(parse_compact_nodes(v4, 4)) + list(parse_compact_nodes(v6, 16))
    except KrpcError as exc:
        raise ValueError(str(exc)) from None

"""Iterative Kademlia lookups and the operations built on them, without any I/O.

A :class:`Traversal` is the generic part: it keeps the candidates sorted by XOR distance
to the target, says which ones to query next (at most ``alpha`` outstanding, only among
the ``k`` closest that have not failed, a slow one making room for the next) and decides
when the lookup is over: when the
``k`` closest non-failed candidates have all answered. Because only the current ``k``
closest are ever queried, a lookup ends as soon as nothing closer turns up; because each
contact is queried at most once and the candidate list is bounded, it cannot run forever.

The operation classes add what each RPC needs on top (peers, items, tokens) and the
optional store phase (``announce_peer``/``put`` to the closest nodes with their tokens).
The core owns transaction IDs and timers and tells a traversal about replies, timeouts
and slow replies (a slow query stops counting against ``alpha`` so one dead node does not
stall the lookup, but a late answer is still used).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from .events import (
    AnnounceDone,
    DhtEvent,
    GetItemDone,
    LookupDone,
    LookupStats,
    PeersFound,
    PutDone,
)
from .krpc import (
    Addr,
    AnnouncePeer,
    ErrorMessage,
    FindNode,
    Get,
    GetPeers,
    NodeInfo,
    Put,
    Query,
    Response,
)
from .storage import MAX_VALUE_SIZE, Item

__all__ = [
    "AnnounceOp",
    "Candidate",
    "FindNodeOp",
    "GetItemOp",
    "GetPeersOp",
    "Operation",
    "PutOp",
    "Traversal",
]

NEW: Final = 0
INFLIGHT: Final = 1
RESPONDED: Final = 2
FAILED: Final = 3

MAX_PEERS_COLLECTED: Final = 500


@dataclass(slots=True, eq=False)
class Candidate:
    """A contact in one lookup. ``id`` is ``None`` for a bootstrap address not yet heard."""

    id: bytes | None
    addr: Addr
    distance: int
    round: int
    state: int = NEW
    #: Unanswered for longer than usual: it no longer counts against ``alpha``.
    slow: bool = False
    #: Unanswered for so long that the lookup may end without it.
    given_up: bool = False
    token: bytes | None = None


class Traversal:
    """Candidate bookkeeping for one iterative lookup."""

    def __init__(
        self,
        target: bytes,
        *,
        own_id: bytes,
        k: int = 8,
        alpha: int = 3,
        max_candidates: int = 64,
    ) -> None:
        self.target = target
        self.target_int = int.from_bytes(target, "big")
        self.own_id = own_id
        self.k = k
        self.alpha = alpha
        self.max_candidates = max(max_candidates, k)
        self._sorted: list[Candidate] = []
        self._keys: list[int] = []
        self._by_addr: dict[Addr, Candidate] = {}
        self._seen_ids: set[bytes] = set()
        self._bootstrap: list[Candidate] = []
        self._boot_by_addr: dict[Addr, Candidate] = {}
        self.queried = 0
        self.responded = 0
        self.timeouts = 0
        self.finished = False

    # ------------------------------------------------------------------ feeding

    def add_seed(self, node_id: bytes, addr: Addr) -> None:
        self._add(node_id, addr, 1)

    def add_bootstrap(self, addr: Addr) -> None:
        if addr in self._by_addr or addr in self._boot_by_addr:
            return
        cand = Candidate(None, addr, -1, 1)
        self._boot_by_addr[addr] = cand
        self._bootstrap.append(cand)

    def add_referrals(self, parent: Candidate, nodes: Iterable[NodeInfo]) -> None:
        for node in nodes:
            self._add(node.id, node.addr, parent.round + 1)

    def _add(self, node_id: bytes, addr: Addr, round_: int) -> None:
        if node_id == self.own_id or node_id in self._seen_ids or addr in self._by_addr:
            return
        distance = int.from_bytes(node_id, "big") ^ self.target_int
        if len(self._sorted) >= self.max_candidates and distance >= self._keys[-1]:
            return
        self._seen_ids.add(node_id)
        cand = Candidate(node_id, addr, distance, round_)
        self._by_addr[addr] = cand

        index = bisect.bisect(self._keys, distance)
        self._keys.insert(index, distance)
        self._sorted.insert(index, cand)
        self._trim()

    def _trim(self) -> None:
        index = len(self._sorted) - 1
        while len(self._sorted) > self.max_candidates and index >= self.k:
            cand = self._sorted[index]
            if cand.state == NEW:
                del self._sorted[index]
                del self._keys[index]
                del self._by_addr[cand.addr]
                if cand.id is not None:
                    self._seen_ids.discard(cand.id)
            index -= 1

    # ------------------------------------------------------------------ stepping

    def candidate(self, addr: Addr) -> Candidate | None:
        cand = self._by_addr.get(addr)
        if cand is None or cand.state != INFLIGHT:
            boot = self._boot_by_addr.get(addr)
            if boot is not None and boot.state == INFLIGHT:
                return boot
        return cand

    def next_queries(self, capacity: int) -> list[Candidate]:
        """Mark and return the candidates to query now (the caller sends the queries)."""
        if self.finished or capacity <= 0:
            return []
        out: list[Candidate] = []
        for cand in self._bootstrap:
            if cand.state == NEW and len(out) < capacity:
                out.append(cand)
        active = sum(1 for c in self._sorted if c.state == INFLIGHT and not c.slow)
        active += len(out)
        for cand in self._window():
            if active >= self.alpha or len(out) >= capacity:
                break
            if cand.state == NEW:
                out.append(cand)
                active += 1
        for cand in out:
            cand.state = INFLIGHT
        self.queried += len(out)
        return out

    def on_response(self, cand: Candidate, node_id: bytes) -> Candidate | None:
        """Record a reply; returns the candidate to attach reply data to, or ``None`` if the
        reply cannot be used (lookup over, duplicate, or the contact changed its ID)."""
        if cand.state in (RESPONDED, FAILED) or self.finished:
            return None
        self.responded += 1
        if cand.id is None:
            # A bootstrap address: now that its ID is known it becomes an ordinary candidate.
            cand.state = RESPONDED
            cand.id = node_id
            self._add(node_id, cand.addr, cand.round)
            real = self._by_addr.get(cand.addr)
            if real is None or real.id != node_id:
                return cand
            real.state = RESPONDED
            return real
        if node_id != cand.id:
            self._fail(cand)
            return None
        cand.state = RESPONDED
        return cand

    def on_failure(self, cand: Candidate) -> None:
        if cand.state in (RESPONDED, FAILED):
            return
        self.timeouts += 1
        self._fail(cand)

    def on_slow(self, cand: Candidate) -> None:
        if cand.state == INFLIGHT:
            cand.slow = True

    def on_give_up(self, cand: Candidate) -> None:
        if cand.state == INFLIGHT:
            cand.slow = cand.given_up = True


    def _fail(self, cand: Candidate) -> None:
        cand.state = FAILED
        if cand.id is not None and cand in self._sorted:
            index = self._sorted.index(cand)
            del self._sorted[index]
            del self._keys[index]

    def _window(self) -> list[Candidate]:
        """The ``k`` closest candidates that have not failed, not counting slow queries:
        a slow (probably dead) node brings the next candidate into play at once, so dead
        nodes near the target are waited for in parallel, not one after another."""
        window: list[Candidate] = []
        for cand in self._sorted:
            if len(window) >= self.k:
                break
            if not (cand.state == INFLIGHT and cand.slow):
                window.append(cand)
        return window

    def is_done(self) -> bool:
        """The ``k`` closest that answer in time have all answered, and no closer query is
        still worth waiting for (a given-up one's answer is used if the lookup is still
        running when it comes)."""
        if self.finished:
            return True
        if any(c.state == INFLIGHT for c in self._bootstrap):
            return False
        window = self._window()
        if any(c.state != RESPONDED for c in window):
            return False
        last = window[-1].distance if window else None
        for cand in self._sorted:
            if last is not None and cand.distance > last:
                break
            if cand.state == INFLIGHT and not cand.given_up:
                return False
        return bool(window) or not any(c.state == INFLIGHT for c in self._sorted)

    def results(self) -> list[Candidate]:
        """The ``k`` closest candidates that answered, closest first."""
        return [c for c in self._sorted if c.state == RESPONDED][: self.k]

    def inflight(self) -> list[Candidate]:
        pool = [*self._by_addr.values(), *self._bootstrap]
        return [c for c in pool if c.state == INFLIGHT]

    def stats(self) -> LookupStats:
        results = self.results()
        return LookupStats(
            hops=max((c.round for c in results), default=0),
            queried=self.queried,
            responded=self.responded,
            # Queries still open when the lookup ended count as timed out for it.
            timeouts=self.timeouts + sum(1 for c in self.inflight() if c.slow),
        )


# --------------------------------------------------------------------------- operations


class Operation:
    """One user-visible DHT operation: a lookup, optionally followed by a store phase."""

    bootstrap = False

    def __init__(self, op_id: int, traversal: Traversal) -> None:
        #: Internal maintenance (bucket refresh): finishes without an event.
        self.silent = False
        self.op_id = op_id
        self.traversal = traversal
        self.storing: dict[Addr, bool] = {}
        self.stored = 0
        self.store_errors: list[tuple[int, str]] = []

    @property
    def target(self) -> bytes:
        return self.traversal.target

    def make_query(self, tid: bytes, sender_id: bytes, read_only: bool) -> Query:
        return FindNode(tid=tid, sender_id=sender_id, read_only=read_only, target=self.target)

    def on_lookup_response(self, cand: Candidate, response: Response) -> None:
        """Digest a reply during the lookup (peers, items); the core did the routing."""

    def store_requests(self, sender_id: bytes, read_only: bool) -> list[tuple[Addr, Query]]:
        """Queries for the store phase, built once the lookup ended (tid filled in later)."""
        return []

    def on_store_result(self, addr: Addr, reply: Response | ErrorMessage | None) -> None:
        if addr not in self.storing or self.storing[addr]:
            return
        self.storing[addr] = True
        if isinstance(reply, Response):
            self.stored += 1
        elif isinstance(reply, ErrorMessage):
            self.store_errors.append((reply.code, reply.text))

    @property
    def store_pending(self) -> bool:
        return not all(self.storing.values())

    def nodes(self) -> tuple[NodeInfo, ...]:
        return tuple(NodeInfo(c.id, c.addr) for c in self.traversal.results() if c.id is not None)

    def event(self) -> DhtEvent:
        return LookupDone(
            self.op_id, self.target, self.nodes(), self.traversal.stats(), self.bootstrap
        )


class FindNodeOp(Operation):
    """``find_node`` lookup; also used for bootstrap and bucket refresh."""

    def __init__(self, op_id: int, traversal: Traversal, *, bootstrap: bool = False) -> None:
        super().__init__(op_id, traversal)
        self.bootstrap = bootstrap


class GetPeersOp(Operation):
    """``get_peers`` lookup collecting every peer any node returned (bounded)."""

    def __init__(self, op_id: int, traversal: Traversal) -> None:
        super().__init__(op_id, traversal)
        self.peers: dict[Addr, None] = {}

    def make_query(self, tid: bytes, sender_id: bytes, read_only: bool) -> Query:
        return GetPeers(tid=tid, sender_id=sender_id, read_only=read_only, info_hash=self.target)

    def on_lookup_response(self, cand: Candidate, response: Response) -> None:
        cand.token = response.token
        for peer in response.values:
            if len(self.peers) >= MAX_PEERS_COLLECTED:
                break
            self.peers[peer] = None

    def event(self) -> DhtEvent:
        return PeersFound(
            self.op_id, self.target, tuple(self.peers), self.nodes(), self.traversal.stats()
        )


class AnnounceOp(GetPeersOp):
    """``get_peers`` then ``announce_peer`` to the closest nodes that gave us a token."""

    def __init__(self, op_id: int, traversal: Traversal, *, port: int, implied_port: bool) -> None:
        super().__init__(op_id, traversal)
        self.port = port
        self.implied_port = implied_port

    def store_requests(self, sender_id: bytes, read_only: bool) -> list[tuple[Addr, Query]]:
        out: list[tuple[Addr, Query]] = []
        for cand in self.traversal.results():
            if cand.token is None:
                continue
            self.storing[cand.addr] = False
            query = AnnouncePeer(
                tid=b"",
                sender_id=sender_id,
                read_only=read_only,
                info_hash=self.target,
                port=self.port,
                token=cand.token,
                implied_port=self.implied_port,
            )
            out.append((cand.addr, query))
        return out

    def event(self) -> DhtEvent:
        return AnnounceDone(
            self.op_id, self.target, tuple(self.peers), self.stored, self.traversal.stats()
        )


def _item_from(response: Response, salt: bytes) -> Item | None:
    if response.value is None or len(response.value) > MAX_VALUE_SIZE:
        return None
    if response.key is None:
        return Item(value=response.value)
    if response.signature is None or response.seq is None:
        return None
    return Item(
        value=response.value,
        key=response.key,
        signature=response.signature,
        seq=response.seq,
        salt=salt,
    )


class GetItemOp(Operation):
    """BEP 44 ``get``: immutable items end the lookup at once, mutable ones keep the
    highest ``seq`` with a valid signature."""

    def __init__(
        self, op_id: int, traversal: Traversal, *, salt: bytes = b"", min_seq: int | None = None
    ) -> None:
        super().__init__(op_id, traversal)
        self.salt = salt
        self.min_seq = min_seq
        self.item: Item | None = None
        self.stop_when_found = True

    def make_query(self, tid: bytes, sender_id: bytes, read_only: bool) -> Query:
        return Get(
            tid=tid, sender_id=sender_id, read_only=read_only, target=self.target, seq=self.min_seq
        )

    def on_lookup_response(self, cand: Candidate, response: Response) -> None:
        cand.token = response.token
        item = _item_from(response, self.salt)
        if item is None or item.target != self.target or not item.verify():
            return
        if not item.mutable:
            self.item = item
            if self.stop_when_found:
                self.traversal.finished = True
            return
        assert item.seq is not None
        best = self.item
        if best is None or (best.seq is not None and item.seq > best.seq):
            self.item = item

    def event(self) -> DhtEvent:
        return GetItemDone(self.op_id, self.target, self.item, self.traversal.stats())


class PutOp(GetItemOp):
    """BEP 44 ``put``: a ``get`` lookup for tokens, then ``put`` to the closest nodes."""

    def __init__(
        self, op_id: int, traversal: Traversal, *, item: Item, cas: int | None = None
    ) -> None:
        super().__init__(op_id, traversal, salt=item.salt)
        self.put_item = item
        self.cas = cas
        # Finding the value must not cut the lookup short: we need the closest nodes.
        self.stop_when_found = False

    def store_requests(self, sender_id: bytes, read_only: bool) -> list[tuple[Addr, Query]]:
        item = self.put_item
        template = Put(
            tid=b"",
            sender_id=sender_id,
            read_only=read_only,
            token=b"-",
            value=item.value,
            key=item.key,
            signature=item.signature,
            seq=item.seq,
            cas=self.cas,
            salt=item.salt,
        )
        out: list[tuple[Addr, Query]] = []
        for cand in self.traversal.results():
            if cand.token is None:
                continue
            self.storing[cand.addr] = False
            out.append((cand.addr, replace(template, token=cand.token)))
        return out

    def event(self) -> DhtEvent:
        newest = self.item.seq if self.item is not None else None
        return PutDone(
            self.op_id,
            self.target,
            self.stored,
            tuple(self.store_errors),
            newest,
            self.traversal.stats(),
        )

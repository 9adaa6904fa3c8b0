"""``DhtCore``: a Mainline DHT node as a sans-IO state machine.

It is driven like aioquic's ``QuicConnection``: the network layer hands over every UDP
datagram that looks like KRPC (:meth:`DhtCore.receive_datagram`), sends what
:meth:`DhtCore.datagrams_to_send` returns, and calls :meth:`DhtCore.handle_timer` when
:meth:`DhtCore.get_timer` expires. Time is always a parameter, so the same code runs
against a real socket, in unit tests and in a 10,000-node simulation with virtual time.

Nothing a remote sends can raise out of :meth:`~DhtCore.receive_datagram`: malformed
queries get error 203, everything else malformed is dropped. Every structure a remote
can grow is bounded: pending transactions, the per-IP rate limiter, the routing table
(k per bucket), peers and items (see :mod:`.storage`), and the size of every reply.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from ..core.errors import LocalProtocolError
from .bencode import BencodeError, bdecode
from .bep42 import is_bep42_exempt, is_valid_node_id, node_id_for_ip
from .budget import KeyedBuckets, TokenBucket
from .events import DhtEvent, ExternalAddressChanged, NodeIdChanged
from .krpc import (
    ERROR_PROTOCOL,
    ERROR_SERVER,
    ID_LENGTH,
    MAX_DATAGRAM,
    Addr,
    AnnouncePeer,
    ErrorMessage,
    FindNode,
    Get,
    GetPeers,
    KrpcError,
    NodeInfo,
    Ping,
    Put,
    Query,
    Response,
    decode_message,
    encode_message,
)
from .lookup import (
    AnnounceOp,
    Candidate,
    FindNodeOp,
    GetItemOp,
    GetPeersOp,
    Operation,
    PutOp,
    Traversal,
)
from .reflexive import SOURCE_BOOTSTRAP, SOURCE_DHT, ReflexiveAddress, ReflexiveAddresses
from .routing import RoutingNode, RoutingTable, dump_state, load_state
from .rtt import RttTable
from .storage import (
    Item,
    ItemStore,
    PeerStore,
    PutRejected,
    TokenManager,
    check_item,
    mutable_target,
)

__all__ = ["DhtConfig", "DhtCore"]

logger = logging.getLogger(__name__)

_LOOKUP: Final = 0
_STORE: Final = 1
_PING: Final = 2

_SLOW: Final = 0
_GIVE_UP: Final = 1
_HARD: Final = 2


@dataclass(frozen=True, slots=True)
class DhtConfig:
    """Tunables. The defaults are those of the public Mainline DHT."""

    k: int = 8
    alpha: int = 3
    #: A query unanswered after this long has failed (for the routing table too).
    query_timeout: float = 2.0
    #: At the latest after this long a lookup sends another query in parallel; sooner
    #: when round trips are known (``rtt.py``), but not before ``min_slow``.
    slow_timeout: float = 1.0
    min_slow: float = 0.1
    #: A lookup stops waiting for a query after twice the usual round trip, at least
    #: this long (and at most ``query_timeout``).
    min_give_up: float = 0.25
    max_candidates: int = 64
    max_pending: int = 512
    #: Outstanding pings that verify nodes which queried us (the rest stay unconfirmed).
    max_verify_pings: int = 32
    max_failures: int = 2
    refresh_interval: float = 15 * 60.0
    #: Our own neighbourhood is what we vouch for most often (targets near our ID are
    #: routed to us), so it is re-checked by a self-lookup more often than other buckets.
    self_refresh_interval: float = 5 * 60.0
    maintenance_interval: float = 60.0
    #: Queries per second a single source IP may make us answer, and the burst allowed.
    rate_per_ip: float = 20.0
    burst_per_ip: float = 40.0
    max_rate_entries: int = 4096
    #: Replies per second to all sources that have not proved their address together
    #: (forged source addresses make replies a reflection weapon), and the burst.
    unverified_reply_rate: float = 50.0
    unverified_reply_burst: float = 100.0
    #: The separate share of sources that answered one of our queries recently.
    verified_reply_rate: float = 200.0
    verified_reply_burst: float = 400.0
    max_verified: int = 4096
    verified_lifetime: float = 30 * 60.0
    #: Peers returned in one get_peers reply.
    max_values: int = 50
    vote_threshold: int = 3
    max_items: int = 1000
    items_per_source: int = 16
    item_lifetime: float = 2 * 3600.0
    peers_per_hash: int = 100
    max_info_hashes: int = 500
    peers_per_ip: int = 4
    peer_lifetime: float = 30 * 60.0
    token_rotation: float = 5 * 60.0


@dataclass(slots=True, eq=False)
class _Pending:
    tid: bytes
    addr: Addr
    purpose: int
    seq: int
    sent_at: float
    op: Operation | None = None
    cand: Candidate | None = None


class DhtCore:
    """One DHT node. See the module docstring for how to drive it."""

    def __init__(
        self,
        node_id: bytes | None = None,
        *,
        rng: random.Random | None = None,
        now: float = 0.0,
        read_only: bool = False,
        enforce_bep42: bool = True,
        config: DhtConfig | None = None,
        local_port: int | None = None,
        state: bytes | None = None,
    ) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.config = config if config is not None else DhtConfig()
        self.read_only = read_only
        self.enforce_bep42 = enforce_bep42
        saved: list[NodeInfo] = []
        if state is not None:
            saved_id, saved = load_state(state)
            node_id = node_id or saved_id
        if node_id is None:
            node_id = self.rng.randbytes(ID_LENGTH)
        if len(node_id) != ID_LENGTH:
            raise LocalProtocolError("a node ID is 20 bytes")
        self._node_id = node_id
        self._tables = {4: self._new_table(node_id, now), 6: self._new_table(node_id, now)}
        for info in saved:
            self._table_for(info.addr).add_unconfirmed(info.id, info.addr, now)
        self._pending: dict[bytes, _Pending] = {}
        #: (deadline, pending seq, tid, kind): _HARD fails the query; _SLOW and _GIVE_UP
        #: tell its lookup (``rtt.py``).
        self._timers: list[tuple[float, int, bytes, int]] = []
        self._seq = itertools.count()
        self._op_ids = itertools.count(1)
        self._ops: dict[int, Operation] = {}
        self._outbox: list[tuple[bytes, Addr]] = []
        self._events: deque[DhtEvent] = deque()
        cfg = self.config
        self._rate: KeyedBuckets[str] = KeyedBuckets(
            cfg.rate_per_ip, cfg.burst_per_ip, cfg.max_rate_entries
        )
        self._unverified_budget = TokenBucket(
            cfg.unverified_reply_rate, cfg.unverified_reply_burst, now
        )
        self._verified_budget = TokenBucket(cfg.verified_reply_rate, cfg.verified_reply_burst, now)
        #: Addresses that answered one of our queries (proof they are really there), and when.
        self._verified: OrderedDict[Addr, float] = OrderedDict()
        self._tokens = TokenManager(now=now, rotation=cfg.token_rotation)
        self._peers = PeerStore(
            max_per_hash=cfg.peers_per_hash,
            max_hashes=cfg.max_info_hashes,
            max_per_ip=cfg.peers_per_ip,
            lifetime=cfg.peer_lifetime,
        )
        self._items = ItemStore(
            max_items=cfg.max_items,
            max_per_source=cfg.items_per_source,
            lifetime=cfg.item_lifetime,
        )
        self._reflexive = ReflexiveAddresses(threshold=cfg.vote_threshold, local_port=local_port)
        self._rtt = RttTable(
            min_slow=cfg.min_slow,
            max_slow=cfg.slow_timeout,
            min_give_up=cfg.min_give_up,
            max_give_up=cfg.query_timeout,
        )
        #: Addresses whose BEP 42 ``ip`` reports count as trusted (configured bootstraps).
        self._trusted_observers: set[Addr] = set()
        self._next_maintenance = now + cfg.maintenance_interval
        self._bootstrap_addrs: list[Addr] = []
        self._next_self_refresh = now + cfg.self_refresh_interval
        #: Counters for tests, the benchmark and the UI's diagnostics.
        self.stats: dict[str, int] = {
            "received": 0,
            "sent": 0,
            "dropped_malformed": 0,
            "dropped_rate": 0,
            "replies_unverified": 0,
            "replies_verified": 0,
            "dropped_budget_unverified": 0,
            "dropped_budget_verified": 0,
            "dropped_unsolicited": 0,
            "internal_errors": 0,
        }

    def _new_table(self, node_id: bytes, now: float) -> RoutingTable:
        return RoutingTable(
            node_id, k=self.config.k, max_failures=self.config.max_failures, now=now
        )

    # ------------------------------------------------------------------ introspection

    @property
    def node_id(self) -> bytes:
        return self._node_id

    @property
    def external_address(self) -> ReflexiveAddress | None:
        """The primary reflexive address (see :mod:`.reflexive`)."""
        return self._reflexive.primary

    @property
    def reflexive(self) -> ReflexiveAddresses:
        """Everything we know about our reflexive addresses and NAT kind (read it only:
        feed it through :meth:`observe_address`)."""
        return self._reflexive

    def routing_table(self, family: int = 4) -> RoutingTable:
        return self._tables[family]

    def save_state(self) -> bytes:
        """Our ID and known contacts, to pass back as ``state=`` after a restart."""
        nodes = self._tables[4].good_enough_nodes() + self._tables[6].good_enough_nodes()
        return dump_state(self._node_id, nodes)

    def budgets(self) -> dict[str, dict[str, float]]:
        """The reply budgets (per second, burst) and what they let through or dropped."""
        cfg, stats = self.config, self.stats
        return {
            "per_ip": {
                "rate": cfg.rate_per_ip,
                "burst": cfg.burst_per_ip,
                "dropped": stats["dropped_rate"],
            },
            "unverified": {
                "rate": cfg.unverified_reply_rate,
                "burst": cfg.unverified_reply_burst,
                "replied": stats["replies_unverified"],
                "dropped": stats["dropped_budget_unverified"],
            },
            "verified": {
                "rate": cfg.verified_reply_rate,
                "burst": cfg.verified_reply_burst,
                "replied": stats["replies_verified"],
                "dropped": stats["dropped_budget_verified"],
            },
        }

    def pending_count(self) -> int:
        return len(self._pending)

    def operation_count(self) -> int:
        return len(self._ops)

    def stored_item_count(self) -> int:
        return len(self._items)

    def stored_peer_count(self) -> int:
        return len(self._peers)

    def local_item(self, target: bytes, now: float) -> Item | None:
        return self._items.get(target, now)

    def store_own(self, item: Item, now: float) -> bool:
        """Keep one of our own items in our storage too, as if we had been sent a put:
        a serving node is one of the nodes that exist near its own record's target (in
        a small swarm maybe the only one serving), and lookups reaching it find it."""
        try:
            return self._items.put(item, source="(self)", now=now)
        except PutRejected:
            return False

    def serving_contacts(self) -> int:
        """Contacts that answered us (confirmed): the nodes a put could reach."""
        return sum(1 for table in self._tables.values() for node in table if node.confirmed)

    # ------------------------------------------------------------------ driver interface

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> DhtEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        timers = self._timers
        while timers:
            _, seq, tid, _ = timers[0]
            pending = self._pending.get(tid)
            if pending is not None and pending.seq == seq:
                return min(timers[0][0], self._next_maintenance)
            heapq.heappop(timers)
        return self._next_maintenance

    def handle_timer(self, now: float) -> None:
        try:
            self._handle_timer(now)
        except Exception:  # a bug must not take the node's event loop down with it
            self.stats["internal_errors"] += 1
            logger.exception("DHT timer handling failed")

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        self.stats["received"] += 1
        try:
            self._receive(data, addr, now)
        except Exception:  # never let one datagram take the node down
            self.stats["internal_errors"] += 1
            logger.exception("DHT datagram handling failed")

    # ------------------------------------------------------------------ operations

    def bootstrap(self, addrs: Iterable[Addr], now: float) -> int:
        """Look up our own ID through ``addrs`` (and any contacts we already have)."""
        for addr in addrs:
            if addr not in self._bootstrap_addrs and len(self._bootstrap_addrs) < 16:
                self._bootstrap_addrs.append(addr)
        return self._start(self._self_lookup(bootstrap=True), now)

    def _self_lookup(self, *, bootstrap: bool) -> FindNodeOp:
        traversal = self._traversal(self._node_id)
        for addr in self._bootstrap_addrs:
            traversal.add_bootstrap(addr)
        return FindNodeOp(next(self._op_ids), traversal, bootstrap=bootstrap)

    def find_node(self, target: bytes, now: float) -> int:
        self._check_id(target)
        return self._start(FindNodeOp(next(self._op_ids), self._traversal(target)), now)

    def get_peers(self, info_hash: bytes, now: float) -> int:
        self._check_id(info_hash)
        return self._start(GetPeersOp(next(self._op_ids), self._traversal(info_hash)), now)

    def announce(
        self, info_hash: bytes, port: int, now: float, *, implied_port: bool = False
    ) -> int:
        """``get_peers`` then ``announce_peer`` to the k closest nodes."""
        self._check_id(info_hash)
        if not 0 < port <= 0xFFFF and not implied_port:
            raise LocalProtocolError("port out of range")
        op = AnnounceOp(
            next(self._op_ids), self._traversal(info_hash), port=port, implied_port=implied_port
        )
        return self._start(op, now)

    def get_item(
        self,
        target: bytes | None,
        now: float,
        *,
        public_key: bytes | None = None,
        salt: bytes = b"",
        min_seq: int | None = None,
    ) -> int:
        """BEP 44 get. For a mutable item pass ``public_key`` (and ``salt``); the target is
        derived from them and, if also given, must match."""
        if public_key is not None:
            derived = mutable_target(public_key, salt)
            if target is not None and target != derived:
                raise LocalProtocolError("target does not match public key and salt")
            target = derived
        if target is None:
            raise LocalProtocolError("get_item needs a target or a public key")
        self._check_id(target)
        op = GetItemOp(next(self._op_ids), self._traversal(target), salt=salt, min_seq=min_seq)
        return self._start(op, now)

    def put_immutable(self, value: bytes, now: float) -> int:
        """Store a bencoded value under SHA1(value)."""
        return self.put_item(Item(value=value), now)

    def put_mutable(self, item: Item, now: float, *, cas: int | None = None) -> int:
        """Store a signed mutable item (build it with :meth:`Item.sign`)."""
        if not item.mutable:
            raise LocalProtocolError("put_mutable needs a signed item")
        return self.put_item(item, now, cas=cas)

    def put_item(self, item: Item, now: float, *, cas: int | None = None) -> int:
        try:
            bdecode(item.value)
            check_item(item)
        except (BencodeError, PutRejected) as exc:
            raise LocalProtocolError(f"item would be rejected: {exc}") from None
        target = item.target
        op = PutOp(next(self._op_ids), self._traversal(target), item=item, cas=cas)
        return self._start(op, now)

    def _check_id(self, value: bytes) -> None:
        if len(value) != ID_LENGTH:
            raise LocalProtocolError("targets and info-hashes are 20 bytes")

    def _traversal(self, target: bytes) -> Traversal:
        cfg = self.config
        traversal = Traversal(
            target,
            own_id=self._node_id,
            k=cfg.k,
            alpha=cfg.alpha,
            max_candidates=cfg.max_candidates,
        )
        for table in self._tables.values():
            for node in table.closest(target, cfg.k, healthy_first=True):
                traversal.add_seed(node.id, node.addr)
        return traversal

    def _start(self, op: Operation, now: float) -> int:
        self._ops[op.op_id] = op
        self._pump(op, now)
        return op.op_id

    def _pump(self, op: Operation, now: float) -> None:
        if op.op_id not in self._ops:
            return
        traversal = op.traversal
        if not op.storing:
            capacity = self.config.max_pending - len(self._pending)
            for cand in traversal.next_queries(capacity):
                tid = self._new_tid()
                query = op.make_query(tid, self._node_id, self.read_only)
                self._send_query(query, cand.addr, now, _LOOKUP, op, cand)
            if not traversal.is_done():
                return
            traversal.finished = True
            for addr, query in op.store_requests(self._node_id, self.read_only):
                self._send_query(replace(query, tid=self._new_tid()), addr, now, _STORE, op)
        if not op.store_pending:
            del self._ops[op.op_id]
            if not op.silent:
                self._events.append(op.event())

    # ------------------------------------------------------------------ sending

    def _new_tid(self) -> bytes:
        while True:
            tid = self.rng.getrandbits(32).to_bytes(4, "big")
            if tid not in self._pending:
                return tid

    def _send_query(
        self,
        query: Query,
        addr: Addr,
        now: float,
        purpose: int,
        op: Operation | None = None,
        cand: Candidate | None = None,
    ) -> None:
        seq = next(self._seq)
        self._pending[query.tid] = _Pending(query.tid, addr, purpose, seq, now, op, cand)
        timers = self._timers
        heapq.heappush(timers, (now + self.config.query_timeout, seq, query.tid, _HARD))
        if purpose == _LOOKUP:
            rtt = self._rtt
            heapq.heappush(timers, (now + rtt.slow_after(addr), seq, query.tid, _SLOW))
            heapq.heappush(timers, (now + rtt.give_up_after(), seq, query.tid, _GIVE_UP))
        self._send(encode_message(query), addr)

    def _send(self, data: bytes, addr: Addr) -> None:
        self.stats["sent"] += 1
        self._outbox.append((data, addr))

    def _ping(self, node: RoutingNode, now: float) -> None:
        pings = sum(1 for p in self._pending.values() if p.purpose == _PING)
        if pings >= self.config.max_verify_pings or len(self._pending) >= self.config.max_pending:
            node.ping_pending = False
            return
        tid = self._new_tid()
        query = Ping(tid=tid, sender_id=self._node_id, read_only=self.read_only)
        self._send_query(query, node.addr, now, _PING)

    def _reply(self, response: Response, addr: Addr) -> None:
        data = encode_message(response)
        while len(data) > MAX_DATAGRAM:
            if len(response.values) > 1:
                response = replace(response, values=response.values[: len(response.values) // 2])
            elif response.nodes6:
                response = replace(response, nodes6=())
            elif response.nodes:
                response = replace(response, nodes=())
            else:
                self._error(response.tid, ERROR_SERVER, "reply too large", addr)
                return
            data = encode_message(response)
        self._send(data, addr)

    def _error(self, tid: bytes, code: int, text: str, addr: Addr) -> None:
        self._send(encode_message(ErrorMessage(tid=tid, code=code, text=text, ip=addr)), addr)

    # ------------------------------------------------------------------ receiving

    def _receive(self, data: bytes, addr: Addr, now: float) -> None:
        if len(data) > MAX_DATAGRAM:
            self.stats["dropped_malformed"] += 1
            return
        try:
            message = decode_message(data)
        except KrpcError as exc:
            self.stats["dropped_malformed"] += 1
            if exc.tid is not None and not self.read_only and self._allow(addr, now):
                self._error(exc.tid, exc.code, str(exc)[:100], addr)
            return
        if isinstance(message, Response | ErrorMessage):
            self._on_reply(message, addr, now)
        else:
            self._on_query(message, addr, now)

    def _table_for(self, addr: Addr) -> RoutingTable:
        return self._tables[6 if ":" in addr[0] else 4]

    def _bep42_ok(self, node_id: bytes, addr: Addr) -> bool:
        """BEP 42 holds, or is not enforced, or the node is a bootstrap the user named
        (a self-hosted first node may not know its public address to fit its ID to)."""
        return (
            not self.enforce_bep42
            or is_valid_node_id(node_id, addr[0])
            or addr in self._trusted_observers
        )

    def _on_reply(self, message: Response | ErrorMessage, addr: Addr, now: float) -> None:
        pending = self._pending.get(message.tid)
        if pending is None or pending.addr != addr:
            self.stats["dropped_unsolicited"] += 1
            return
        del self._pending[message.tid]
        self._mark_verified(addr, now)
        self._rtt.sample(addr, now - pending.sent_at)
        if isinstance(message, Response):
            if message.sender_id != self._node_id and self._bep42_ok(message.sender_id, addr):
                table = self._table_for(addr)
                for node in table.on_response(message.sender_id, addr, now):
                    self._ping(node, now)
            if message.ip is not None:
                self._vote(addr, message.ip, now)
        op = pending.op
        if op is None or op.op_id not in self._ops:
            return
        if pending.purpose == _STORE:
            op.on_store_result(addr, message)
        elif pending.cand is not None:
            traversal = op.traversal
            if isinstance(message, Response):
                cand = traversal.on_response(pending.cand, message.sender_id)
                if cand is not None:
                    op.on_lookup_response(cand, message)
                    traversal.add_referrals(cand, message.nodes)
                    traversal.add_referrals(cand, message.nodes6)
            else:
                traversal.on_failure(pending.cand)
        self._pump(op, now)

    def _handle_timer(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, seq, tid, kind = heapq.heappop(timers)
            pending = self._pending.get(tid)
            if pending is None or pending.seq != seq:
                continue
            op = pending.op
            if kind != _HARD:
                if op is not None and pending.cand is not None and op.op_id in self._ops:
                    if kind == _SLOW:
                        op.traversal.on_slow(pending.cand)
                    else:
                        op.traversal.on_give_up(pending.cand)
                    self._pump(op, now)
                continue
            del self._pending[tid]
            self._table_for(pending.addr).on_failure(pending.addr, now)
            self._rtt.forget(pending.addr)  # next time: the current overall estimate
            if op is None or op.op_id not in self._ops:
                continue
            if pending.purpose == _STORE:
                op.on_store_result(pending.addr, None)
            elif pending.cand is not None:
                op.traversal.on_failure(pending.cand)
            self._pump(op, now)
        if now >= self._next_maintenance:
            self._maintain(now)

    def _maintain(self, now: float) -> None:
        self._next_maintenance = now + self.config.maintenance_interval
        self._tokens.rotate_if_due(now)
        self._peers.expire(now)
        self._items.expire(now)
        if self._reflexive.expire(now):
            self._address_changed(now)
        table = self._tables[4]
        confirmed = sum(1 for node in table if node.confirmed)
        few = confirmed < self.config.k and (len(table) or self._bootstrap_addrs)
        if few or (now >= self._next_self_refresh and len(table)):
            # Too few contacts (the bootstrap node may not have been ready, or we were
            # offline), or time to re-check our neighbourhood: look ourselves up again.
            self._next_self_refresh = now + self.config.self_refresh_interval
            op = self._self_lookup(bootstrap=False)
            op.silent = True
            self._start(op, now)
        for table in self._tables.values():
            if not len(table):
                continue
            for index in table.stale_buckets(now, self.config.refresh_interval):
                table.mark_refreshed(index, now)
                target = table.random_id_in_bucket(index, self.rng)
                op = FindNodeOp(next(self._op_ids), self._traversal(target))
                op.silent = True
                self._start(op, now)

    # ------------------------------------------------------------------ external address

    def trust_observers(self, addrs: Iterable[Addr]) -> None:
        """The BEP 42 ``ip`` these nodes report is trusted like a contact's observation:
        they are bootstrap nodes the user named, not strangers."""
        self._trusted_observers = set(addrs)

    def set_local_addresses(self, ips: Iterable[str], port: int | None, now: float) -> None:
        """Our own addresses: an observation equal to one of them means no NAT. A public
        IPv4 address among them is what others see us at, so before anyone has told us
        our address, our BEP 42 ID is fitted to it."""
        ips = list(ips)
        if self._reflexive.set_local(frozenset(ips), port):
            self._address_changed(now)
        if self._reflexive.primary is None:
            public = [ip for ip in ips if ":" not in ip and not is_bep42_exempt(ip)]
            if public:
                self._fit_id_to(public[0], now)

    def observe_address(self, observer: str, address: Addr, source: str, now: float) -> None:
        """Someone saw our packets come from ``address`` (see :mod:`.reflexive` for the
        kinds of observer and how much each is believed)."""
        if self._reflexive.observe(observer, address, source, now):
            self._address_changed(now)

    def _vote(self, voter: Addr, reported: Addr, now: float) -> None:
        if voter in self._trusted_observers:
            self.observe_address(f"{voter[0]}:{voter[1]}", reported, SOURCE_BOOTSTRAP, now)
        else:
            self.observe_address(voter[0], reported, SOURCE_DHT, now)

    def _address_changed(self, now: float) -> None:
        book = self._reflexive
        self._events.append(
            ExternalAddressChanged(tuple(a.addr for a in book.accepted), book.nat_kind)
        )
        if book.primary is not None:
            self._fit_id_to(book.primary.ip, now)

    def _fit_id_to(self, ip: str, now: float) -> None:
        """With BEP 42 enforced, adopt a node ID that fits our public IPv4 address."""
        if (
            self.enforce_bep42
            and ":" not in ip
            and not is_bep42_exempt(ip)
            and not is_valid_node_id(self._node_id, ip)
        ):
            old = self._node_id
            self._node_id = node_id_for_ip(ip, self.rng.randbytes(ID_LENGTH))
            self._tables = {
                family: table.with_own_id(self._node_id, now)
                for family, table in self._tables.items()
            }
            self._events.append(NodeIdChanged(old, self._node_id))

    # ------------------------------------------------------------------ serving queries

    def _mark_verified(self, addr: Addr, now: float) -> None:
        """``addr`` answered a query with our random transaction ID: it is really there."""
        self._verified.pop(addr, None)
        self._verified[addr] = now
        while len(self._verified) > self.config.max_verified:
            self._verified.popitem(last=False)

    def is_verified(self, addr: Addr, now: float) -> bool:
        seen = self._verified.get(addr)
        if seen is None:
            return False
        if now - seen > self.config.verified_lifetime:
            del self._verified[addr]
            return False
        return True

    def _allow(self, addr: Addr, now: float) -> bool:
        """May we answer ``addr`` now? Its IP's bucket, then the global budget of its
        kind (see :mod:`.budget`); beyond either, the query is dropped unanswered."""
        # Every process on this host shares 127.0.0.1 (a local swarm would share one
        # bucket); any 127/8 address is free to use anyway, which the global budgets cover.
        key = f"{addr[0]}:{addr[1]}" if addr[0].startswith("127.") or addr[0] == "::1" else addr[0]
        if not self._rate.take(key, now):
            self.stats["dropped_rate"] += 1
            return False
        if self.is_verified(addr, now):
            kind, budget = "verified", self._verified_budget
        else:
            kind, budget = "unverified", self._unverified_budget
        if not budget.take(now):
            self.stats[f"dropped_budget_{kind}"] += 1
            return False
        self.stats[f"replies_{kind}"] += 1
        return True

    def _on_query(self, query: Query, addr: Addr, now: float) -> None:
        if self.read_only:
            return  # BEP 43: read-only nodes do not answer
        if not self._allow(addr, now):
            return
        sender = query.sender_id
        if not query.read_only and sender != self._node_id and self._bep42_ok(sender, addr):
            for node in self._table_for(addr).on_query(sender, addr, now):
                self._ping(node, now)
        base = Response(tid=query.tid, sender_id=self._node_id, ip=addr)
        ip = addr[0]
        if isinstance(query, Ping):
            self._reply(base, addr)
        elif isinstance(query, FindNode):
            self._reply(self._with_nodes(base, query.target, addr, query.want), addr)
        elif isinstance(query, GetPeers):
            family = 6 if ":" in ip else 4
            values = self._peers.peers(
                query.info_hash, now, self.config.max_values, self.rng, family=family
            )
            response = replace(
                self._with_nodes(base, query.info_hash, addr, query.want),
                token=self._tokens.token_for(ip, now),
                values=tuple(values),
            )
            self._reply(response, addr)
        elif isinstance(query, AnnouncePeer):
            if not self._tokens.is_valid(query.token, ip, now):
                self._error(query.tid, ERROR_PROTOCOL, "invalid token", addr)
                return
            port = addr[1] if query.implied_port else query.port
            self._peers.announce(query.info_hash, (ip, port), now)
            self._reply(base, addr)
        elif isinstance(query, Get):
            self._reply(self._get_response(base, query, addr, now), addr)
        elif isinstance(query, Put):
            self._serve_put(base, query, addr, now)

    def _with_nodes(
        self, base: Response, target: bytes, addr: Addr, want: frozenset[str]
    ) -> Response:
        families = want or frozenset({"n6" if ":" in addr[0] else "n4"})
        k = self.config.k
        nodes4: tuple[NodeInfo, ...] = ()
        nodes6: tuple[NodeInfo, ...] = ()
        if "n4" in families:
            nodes4 = tuple(n.info() for n in self._tables[4].closest(target, k, vouch=True))
        if "n6" in families:
            nodes6 = tuple(n.info() for n in self._tables[6].closest(target, k, vouch=True))
        return replace(base, nodes=nodes4, nodes6=nodes6)

    def _get_response(self, base: Response, query: Get, addr: Addr, now: float) -> Response:
        response = replace(
            self._with_nodes(base, query.target, addr, query.want),
            token=self._tokens.token_for(addr[0], now),
        )
        item = self._items.get(query.target, now)
        if item is None:
            return response
        if not item.mutable:
            return replace(response, value=item.value)
        if query.seq is not None and item.seq is not None and item.seq <= query.seq:
            return replace(response, seq=item.seq)
        return replace(
            response, value=item.value, key=item.key, signature=item.signature, seq=item.seq
        )

    def _serve_put(self, base: Response, query: Put, addr: Addr, now: float) -> None:
        if not self._tokens.is_valid(query.token, addr[0], now):
            self._error(query.tid, ERROR_PROTOCOL, "invalid token", addr)
            return
        item = Item(
            value=query.value,
            key=query.key,
            signature=query.signature,
            seq=query.seq,
            salt=query.salt,
        )
        try:
            stored = self._items.put(item, source=addr[0], now=now, cas=query.cas)
        except PutRejected as exc:
            self._error(query.tid, exc.code, exc.text, addr)
            return
        if not stored:
            self._error(query.tid, ERROR_SERVER, "storage limit reached", addr)
            return
        self._reply(base, addr)

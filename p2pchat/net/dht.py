"""The DHT on the node's shared UDP socket: :class:`~p2pchat.dht.core.DhtCore` under asyncio.

The core is sans-IO; this module is its shell, in the same way ``endpoint.py`` is
aioquic's.  It sends from the endpoint's socket (so the NAT mapping the DHT learns
about is the one QUIC uses), arms one loop timer for the core's deadline, keeps the
routing table across restarts, and keeps this node findable: it publishes the signed
peer record (``p2pchat/dht/records.py``) and announces the discovery info-hash.

Read-only mode (BEP 43) is automatic unless the options force it.  A node joining a
public swarm starts read-only, so nodes behind NATs and firewalls, which could not answer
queries anyway, stay out of other nodes' routing tables.  It starts serving once two
things are true: enough voters agree on its external address with one consistent port
(others would store that address for it), and a query reached it from an IP it had not
sent anything to in the last ten minutes (nothing but an open path lets such a datagram
in).  A network change (new external IP) puts it back to read-only until both hold again.
A private swarm (every bootstrap address is a local one, or there are none) serves from
the start: no NAT sits between its members, and a swarm of read-only nodes would be
empty.  ``docs/dht.md`` discusses the rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from p2pchat.config import DEFAULT_BOOTSTRAP, bootstrap_list
from p2pchat.core.errors import LocalProtocolError
from p2pchat.dht.bep42 import is_bep42_exempt
from p2pchat.dht.core import DhtConfig, DhtCore
from p2pchat.dht.events import (
    AnnounceDone,
    DhtEvent,
    ExternalAddressChanged,
    GetItemDone,
    LookupDone,
    NodeIdChanged,
    PeersFound,
    PutDone,
)
from p2pchat.dht.krpc import Addr, ErrorMessage, KrpcError, Response, decode_message
from p2pchat.dht.records import (
    DISCOVERY_INFO_HASH,
    MAX_ADDRESSES,
    MAX_LOCAL,
    MAX_RENDEZVOUS,
    PEER_RECORD_SALT,
    PeerRecord,
    RecordError,
    make_record_item,
    read_record_item,
)
from p2pchat.dht.reflexive import NAT_ED, SOURCES
from p2pchat.dht.storage import Item
from p2pchat.identity import (
    Identity,
    format_address,
    key_from_peer_id,
    parse_address,
    peer_id_from_key,
)
from p2pchat.net.endpoint import Endpoint
from p2pchat.net.interfaces import interface_ips

__all__ = ["DhtError", "DhtOptions", "DhtService"]

log = logging.getLogger(__name__)

#: BEP 44 items live 2 hours on storage nodes; a put every half hour keeps one alive with
#: three chances to spare (pkarr measured a copy surviving an hour only 86% of the time).
PUBLISH_INTERVAL: Final = 1800.0
#: Announced peers expire after 30 minutes on most nodes.
ANNOUNCE_INTERVAL: Final = 25 * 60.0
#: First retry after a publication no node accepted (doubling up to RETRY_MAX).
RETRY_MIN: Final = 15.0
RETRY_MAX: Final = 600.0
#: How often a node with an empty routing table checks whether it can publish yet, and
#: one whose record sits on fewer nodes than could hold it whether the table grew.
EMPTY_TABLE_POLL: Final = 2.0
SAVE_INTERVAL: Final = 600.0
#: While the table is empty (offline at start, names that did not resolve), re-bootstrap.
REBOOTSTRAP_INTERVAL: Final = 60.0
#: A query from an IP we sent nothing to for this long came through an open path.
UNSOLICITED_AFTER: Final = 600.0
MAX_CONTACTED: Final = 4096
RESOLVE_TIMEOUT: Final = 30.0
#: How often a wildcard-bound node re-reads its interface addresses (a laptop that
#: changes networks gets a new one; the record follows).
INTERFACE_POLL: Final = 10.0
STATE_FILE_MODE: Final = 0o600
_WILDCARDS: Final = ("0.0.0.0", "::")


class DhtError(Exception):
    """The DHT cannot do what was asked (stopped, or a bad argument)."""


@dataclass(frozen=True, slots=True)
class DhtOptions:
    """How the node takes part in the DHT.

    ``bootstrap`` are ``HOST:PORT`` strings (names are resolved when the DHT starts);
    an empty list makes this node the first of a swarm.  ``read_only`` forces BEP 43
    mode on or off; ``None`` chooses automatically (module docstring).
    ``enforce_bep42`` is for the public DHT; a swarm whose members have public addresses
    but arbitrary node IDs turns it off.  ``trust_bootstrap``: the bootstrap nodes were
    named by the user, so the address they see us at is believed on their word alone
    (a stranger's needs two more to agree); the CLI turns it off when it falls back to
    the public routers.
    """

    bootstrap: tuple[str, ...] = ()
    read_only: bool | None = None
    enforce_bep42: bool = True
    trust_bootstrap: bool = True

    def __post_init__(self) -> None:
        for entry in self.bootstrap:
            parse_address(entry)  # fail at configuration time, not at bootstrap time

    @classmethod
    def configured(
        cls, cli: Sequence[str] | None, environ: Mapping[str, str] = os.environ
    ) -> DhtOptions:
        """Options from ``--bootstrap`` / ``$P2PCHAT_BOOTSTRAP`` / the public routers; only
        bootstrap nodes the user named are trusted to tell us our address."""
        bootstrap = bootstrap_list(cli, environ)
        return cls(bootstrap=bootstrap, trust_bootstrap=bootstrap != DEFAULT_BOOTSTRAP)


@dataclass(slots=True)
class _Publication:
    record: PeerRecord | None = None
    seq: int | None = None
    published_at: float | None = None  # wall clock, for people
    stored: int = 0
    #: How many nodes could have stored it (answering contacts, at most k) at that put.
    reach: int = 0
    errors: tuple[tuple[int, str], ...] = ()
    next_at: float = 0.0  # loop clock
    retry: float = RETRY_MIN
    announced_at: float | None = None
    announce_stored: int = 0
    next_announce: float = 0.0
    announce_retry: float = RETRY_MIN


class DhtService:
    """One node's DHT presence on ``endpoint``: see the module docstring."""

    def __init__(
        self,
        endpoint: Endpoint,
        identity: Identity,
        options: DhtOptions,
        *,
        state_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        config: DhtConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if endpoint.local_address is None:
            raise DhtError("the endpoint must be bound before the DHT starts")
        self._endpoint = endpoint
        self._identity = identity
        self.options = options
        self._state_path = state_path
        self._clock = clock
        self._config = config
        self._rng = rng if rng is not None else random.SystemRandom()
        self._loop = asyncio.get_running_loop()
        self._local: Addr = endpoint.local_address
        self._family = socket.AF_INET6 if ":" in self._local[0] else socket.AF_INET
        #: Our own IPs: the bound one, or every interface's for a wildcard bind.
        self._local_ips: tuple[str, ...] = ()
        self._rendezvous: tuple[tuple[bytes, Addr], ...] = ()
        self._core: DhtCore | None = None
        self._waiters: dict[int, asyncio.Future[DhtEvent]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._contacted: OrderedDict[str, float] = OrderedDict()
        self._unsolicited_from: str | None = None
        self._external_ip: str | None = None
        self._read_only_reason = "starting"
        self._bootstrap_resolved: list[Addr] = []
        self._bootstrap_complete = not options.bootstrap
        self._pub = _Publication()
        self.running = False

    # ------------------------------------------------------------------ life
    @property
    def core(self) -> DhtCore:
        if self._core is None:
            raise DhtError("the DHT is not running")
        return self._core

    @property
    def ready(self) -> bool:
        """The first bootstrap finished (successfully or not)."""
        return self._ready.is_set()

    async def start(self) -> None:
        """Restore the routing table, take over KRPC on the endpoint, bootstrap in the
        background: starting never waits for the network."""
        if self.running:
            return
        now = self._loop.time()
        state = self._load_state()
        kwargs: dict[str, Any] = {
            "rng": self._rng,
            "now": now,
            "read_only": self.options.read_only is not False,
            "enforce_bep42": self.options.enforce_bep42,
            "local_port": self._local[1],
        }
        if self._config is not None:
            kwargs["config"] = self._config
        try:
            self._core = DhtCore(state=state, **kwargs)
        except ValueError as exc:
            log.warning("ignoring damaged DHT state %s: %s", self._state_path, exc)
            self._core = DhtCore(**kwargs)
        if self.options.read_only is not None:
            self._read_only_reason = "forced by configuration"
        self._endpoint.krpc_handler = self.datagram_received
        self.running = True
        self._refresh_local_ips()
        if self._local[0] in _WILDCARDS:
            self._spawn(self._interface_loop())
        self._spawn(self._bootstrap_loop())
        self._spawn(self._presence_loop())
        self._spawn(self._save_loop())
        self._arm_timer()

    async def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        if self._endpoint.krpc_handler == self.datagram_received:
            self._endpoint.krpc_handler = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(DhtError("the DHT stopped"))
        self._waiters.clear()
        self._save_state()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("DHT task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ state file
    def _load_state(self) -> bytes | None:
        if self._state_path is None:
            return None
        try:
            return self._state_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s: %s", self._state_path, exc)
            return None

    def _save_state(self) -> None:
        """Atomically, owner-only: the table reveals which nodes we talked to."""
        if self._state_path is None or self._core is None:
            return
        tmp = self._state_path.with_name(self._state_path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, STATE_FILE_MODE)
            with os.fdopen(fd, "wb") as fh:
                fh.write(self._core.save_state())
            os.replace(tmp, self._state_path)
        except OSError as exc:
            log.warning("cannot save the DHT state to %s: %s", self._state_path, exc)

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            self._save_state()

    # ------------------------------------------------------------------ driving the core
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """The endpoint's KRPC handler."""
        core = self._core
        if core is None or not self.running:
            return
        if core.read_only and self.options.read_only is None:
            self._note_unsolicited(data, addr)
        core.receive_datagram(data, addr, self._loop.time())
        self._flush()

    def _note_unsolicited(self, data: bytes, addr: Addr) -> None:
        if self._unsolicited_from is not None:
            return
        sent = self._contacted.get(addr[0])
        if sent is not None and self._loop.time() - sent < UNSOLICITED_AFTER:
            return
        try:
            message = decode_message(data)
        except KrpcError:
            return
        if not isinstance(message, Response | ErrorMessage):
            self._unsolicited_from = addr[0]
            self._update_mode()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._core is None or not self.running:
            return
        self._core.handle_timer(self._loop.time())
        self._flush()

    def _flush(self) -> None:
        core = self._core
        if core is None:
            return
        now = self._loop.time()
        for data, addr in core.datagrams_to_send():
            if (":" in addr[0]) != (self._family == socket.AF_INET6):
                continue  # the other address family cannot leave this socket
            self._contacted[addr[0]] = now
            self._contacted.move_to_end(addr[0])
            if len(self._contacted) > MAX_CONTACTED:
                self._contacted.popitem(last=False)
            self._endpoint.sendto(data, addr)
        while (event := core.next_event()) is not None:
            self._on_event(event)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._core is None or not self.running:
            return
        deadline = self._core.get_timer()
        if deadline == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_event(self, event: DhtEvent) -> None:
        if isinstance(event, ExternalAddressChanged):
            shown = ", ".join(format_address(*a) for a in event.addresses) or "none"
            log.info("reflexive addresses: %s (NAT %s)", shown, event.nat)
            ip = event.addresses[0][0] if event.addresses else None
            if ip != self._external_ip:
                self._external_ip = ip
                self._unsolicited_from = None  # a new network: prove reachability again
            self._update_mode()
            self._changed.set()
            return
        if isinstance(event, NodeIdChanged):
            log.info("DHT node ID now %s (BEP 42)", event.new_id.hex())
            return
        fut = self._waiters.pop(event.op_id, None)
        if fut is not None and not fut.done():
            fut.set_result(event)

    async def _run(self, start: Callable[[float], int]) -> DhtEvent:
        """Start one core operation and wait for the event that ends it."""
        if not self.running or self._core is None:
            raise DhtError("the DHT is not running")
        fut: asyncio.Future[DhtEvent] = self._loop.create_future()
        op_id = start(self._loop.time())
        # The core may already have ended the operation; _flush delivers it below.
        self._waiters[op_id] = fut
        self._flush()
        return await fut

    # ------------------------------------------------------------------ read-only rule
    def _private_swarm(self) -> bool:
        """Every bootstrap entry resolved, and only to local addresses (or there are none)."""
        return self._bootstrap_complete and all(
            is_bep42_exempt(ip) for ip, _ in self._bootstrap_resolved
        )

    def _update_mode(self) -> None:
        core = self._core
        if core is None or self.options.read_only is not None:
            return
        external = core.external_address
        if self._private_swarm():
            read_only, reason = False, "serving: private swarm (local bootstrap addresses)"
        elif external is None:
            read_only, reason = True, "read-only: external address not known yet"
        elif core.reflexive.nat_kind == NAT_ED:
            read_only, reason = True, "read-only: the NAT changes our port per destination"
        elif self._unsolicited_from is None:
            read_only, reason = True, "read-only: no unsolicited query has reached us yet"
        else:
            read_only, reason = False, "serving: reachable from outside"
        if read_only != core.read_only:
            log.info("DHT %s", reason)
        core.read_only = read_only
        self._read_only_reason = reason

    # ------------------------------------------------------------------ bootstrap
    async def _resolve_bootstrap(self) -> tuple[list[Addr], bool]:
        """The bootstrap addresses, and whether every entry resolved."""
        out: list[Addr] = []
        complete = True
        for entry in self.options.bootstrap:
            host, port = parse_address(entry)
            if _is_ip(host):
                candidates = [(host, port)]
            else:
                try:
                    infos = await self._loop.getaddrinfo(
                        host, port, family=self._family, type=socket.SOCK_DGRAM
                    )
                except (OSError, UnicodeError) as exc:
                    log.info("cannot resolve DHT bootstrap node %s: %s", entry, exc)
                    complete = False
                    continue
                candidates = [(str(info[4][0]), int(info[4][1])) for info in infos]
            for addr in candidates:
                if (":" in addr[0]) != (self._family == socket.AF_INET6):
                    continue
                if self._is_self(addr) or addr in out:
                    continue
                out.append(addr)
        return out, complete

    def _is_self(self, addr: Addr) -> bool:
        host, port = self._local
        if port != addr[1]:
            return False
        return addr[0] == host or (
            host in _WILDCARDS and (_is_loopback(addr[0]) or addr[0] in self._local_ips)
        )

    def _refresh_local_ips(self) -> None:
        """Tell the core which addresses are ours (an observer seeing one of them with
        our port means no NAT); re-read for wildcard binds, whose set can change."""
        host, port = self._local
        if host in _WILDCARDS:
            ips = tuple(interface_ips(v6=self._family == socket.AF_INET6))
        else:
            ips = (host,)
        if ips != self._local_ips:
            self._local_ips = ips
            self.core.set_local_addresses(ips, port, self._loop.time())
            self._changed.set()
            self._flush()

    async def _interface_loop(self) -> None:
        while True:
            await asyncio.sleep(INTERFACE_POLL)
            self._refresh_local_ips()

    async def _bootstrap(self) -> None:
        self._bootstrap_resolved, self._bootstrap_complete = await self._resolve_bootstrap()
        if self.options.trust_bootstrap:
            self.core.trust_observers(self._bootstrap_resolved)
        self._update_mode()
        addrs = list(self._bootstrap_resolved)
        event = await self._run(lambda now: self.core.bootstrap(addrs, now))
        assert isinstance(event, LookupDone)
        log.info("DHT bootstrap: %d nodes close to us answered", len(event.nodes))

    async def _bootstrap_loop(self) -> None:
        try:
            await self._bootstrap()
        finally:
            self._ready.set()
        self._save_state()
        self._changed.set()
        while True:
            await asyncio.sleep(REBOOTSTRAP_INTERVAL)
            core = self.core
            if len(core.routing_table(4)) + len(core.routing_table(6)) == 0:
                await self._bootstrap()
                self._changed.set()

    def add_bootstrap(self, entries: Sequence[str]) -> None:
        """More bootstrap nodes (an invite's hints): joined now, kept for re-bootstraps."""
        new = tuple(e for e in entries if e not in self.options.bootstrap)
        if not new or not self.running:
            return
        self.options = dataclasses.replace(self.options, bootstrap=self.options.bootstrap + new)
        self._spawn(self._bootstrap())

    async def wait_ready(self, timeout: float) -> bool:
        # asyncio.timeout, not wait_for, here and below: on 3.11 wait_for swallows a
        # cancel that races with the awaited event, and stop() then waits forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        return self._ready.is_set()

    # ------------------------------------------------------------------ operations
    async def find_node(self, target: bytes) -> LookupDone:
        event = await self._run(lambda now: self.core.find_node(target, now))
        assert isinstance(event, LookupDone)
        return event

    async def get_peers(self, info_hash: bytes) -> list[Addr]:
        event = await self._run(lambda now: self.core.get_peers(info_hash, now))
        assert isinstance(event, PeersFound)
        return list(event.peers)

    async def announce(self, info_hash: bytes, *, port: int | None = None) -> AnnounceDone:
        """Announce ``port`` (default: the port other nodes see us at, ``implied_port``)."""
        implied = port is None
        event = await self._run(
            lambda now: self.core.announce(
                info_hash, port or self._local[1], now, implied_port=implied
            )
        )
        assert isinstance(event, AnnounceDone)
        return event

    async def get_item(self, public_key: bytes, salt: bytes = b"") -> Item | None:
        """The newest valid mutable item in the DHT, or in our own storage if newer."""
        event = await self._run(
            lambda now: self.core.get_item(None, now, public_key=public_key, salt=salt)
        )
        assert isinstance(event, GetItemDone)
        found = event.item
        local = self.core.local_item(event.target, self._loop.time())
        if local is not None and local.verify() and local.key == public_key:
            if found is None or (local.seq or 0) > (found.seq or 0):
                found = local
        return found

    async def put_item(self, item: Item) -> PutDone:
        event = await self._run(lambda now: self.core.put_item(item, now))
        assert isinstance(event, PutDone)
        return event

    async def lookup_record(
        self, peer_id: str, *, timeout: float = RESOLVE_TIMEOUT
    ) -> PeerRecord | None:
        """``peer_id``'s signed record (addresses, NAT kind, rendezvous nodes), or ``None``
        when none is found in time.

        The record is checked against the key the peer ID spells, so a storage node can
        withhold it but not forge it.
        """
        key = key_from_peer_id(peer_id)
        await self.wait_ready(timeout)
        try:
            async with asyncio.timeout(timeout):
                item = await self.get_item(key, PEER_RECORD_SALT)
        except TimeoutError:
            return None
        if item is None:
            return None
        try:
            return read_record_item(item, key)
        except RecordError as exc:
            log.info("ignoring the DHT record of %s: %s", peer_id, exc)
            return None

    async def resolve(self, peer_id: str, *, timeout: float = RESOLVE_TIMEOUT) -> list[str]:
        """The addresses worth dialling in ``peer_id``'s record; empty if none is found."""
        record = await self.lookup_record(peer_id, timeout=timeout)
        if record is None:
            return []
        out: list[str] = []
        for host, port in record.dial_addresses():
            with contextlib.suppress(ValueError):
                out.append(format_address(host, port))
        return out

    # ------------------------------------------------------------------ our presence
    def observed(self, address: Addr | str, source_kind: str, observer_id: str) -> None:
        """Someone saw our packets come from ``address``.

        ``source_kind`` is ``"contact"`` or ``"rendezvous"`` for a peer on an
        authenticated session (``observer_id``: its peer ID; one such report is
        believed), ``"bootstrap"`` for a node the user named, ``"dht"`` for a stranger
        (``observer_id``: its IP; three must agree).  A change of our reflexive
        addresses or NAT kind republishes the record.
        """
        if source_kind not in SOURCES:
            raise DhtError(f"unknown observation source {source_kind!r}")
        addr = parse_address(address) if isinstance(address, str) else address
        core = self.core
        core.observe_address(
            observer_id, (str(addr[0]), int(addr[1])), source_kind, self._loop.time()
        )
        self._flush()

    def reflexive_addresses(self) -> list[Addr]:
        """Where others see us: the accepted reflexive addresses, the best first."""
        if self._core is None:
            return []
        return [a.addr for a in self._core.reflexive.accepted][:MAX_ADDRESSES]

    def nat_kind(self) -> str:
        """``unknown``, ``none``, ``endpoint-independent`` or ``endpoint-dependent``
        (:mod:`p2pchat.dht.reflexive`)."""
        return self._core.reflexive.nat_kind if self._core is not None else "unknown"

    def local_addresses(self) -> list[Addr]:
        """Our own addresses for peers on the same network: the bound one, or every
        interface's for a wildcard bind (loopback only when there is nothing else)."""
        ips = [ip for ip in self._local_ips if not _is_loopback(ip)] or list(self._local_ips)
        if self._local[0] in _WILDCARDS:
            return [(ip, self._local[1]) for ip in ips][:MAX_LOCAL]
        return [self._local]

    def set_rendezvous(self, nodes: Iterable[tuple[str, Addr | str]]) -> None:
        """The (peer ID, address) of the rendezvous nodes we are registered with; the
        record is republished with them."""
        out: list[tuple[bytes, Addr]] = []
        for peer_id, address in nodes:
            addr = parse_address(address) if isinstance(address, str) else address
            out.append((key_from_peer_id(peer_id), (str(addr[0]), int(addr[1]))))
        if len(out) > MAX_RENDEZVOUS:
            raise DhtError(f"at most {MAX_RENDEZVOUS} rendezvous nodes fit in the record")
        self._rendezvous = tuple(out)
        self._changed.set()

    def rendezvous(self) -> list[tuple[str, Addr]]:
        return [(peer_id_from_key(key), addr) for key, addr in self._rendezvous]

    def current_record(self) -> PeerRecord:
        addresses = self.reflexive_addresses()
        local = [a for a in self.local_addresses() if a not in addresses]
        return PeerRecord(
            addresses=tuple(addresses),
            nat=self.nat_kind(),
            local=tuple(local),
            rendezvous=self._rendezvous,
        )

    async def publish(self) -> PutDone | None:
        """Put our signed record now; ``None`` when we know no address to publish."""
        record = self.current_record()
        if not record.dial_addresses():
            return None
        pub = self._pub
        item = make_record_item(self._identity, record, self._clock(), previous_seq=pub.seq)
        done = await self.put_item(item)
        if any(code == 302 for code, _ in done.errors) and done.newest_seq is not None:
            # A record with a higher seq is out there (our clock went backwards).
            item = make_record_item(
                self._identity, record, self._clock(), previous_seq=done.newest_seq
            )
            done = await self.put_item(item)
        pub.seq = item.seq
        pub.record = record
        pub.stored = done.stored
        pub.reach = self._reach()
        pub.errors = done.errors
        if not self.core.read_only:
            self.core.store_own(item, self._loop.time())
        if done.stored:
            pub.published_at = self._clock()
        return done

    def _reach(self) -> int:
        """How many nodes a put can reach: those that answered us, at most k."""
        core = self.core
        return min(core.config.k, core.serving_contacts())

    async def _presence_loop(self) -> None:
        await self._ready.wait()
        while True:
            self._changed.clear()
            try:
                await self._keep_present()
            except (DhtError, LocalProtocolError) as exc:
                log.warning("DHT publication failed: %s", exc)
                await asyncio.sleep(RETRY_MIN)
                continue
            pub = self._pub
            delay = max(0.0, min(pub.next_at, pub.next_announce) - self._loop.time())
            if pub.record is not None and pub.stored < self.core.config.k:
                delay = min(delay, EMPTY_TABLE_POLL)  # watch for the table to grow
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._changed.wait()

    async def _keep_present(self) -> None:
        """Publish the record when it changed, when it is due, and when it sits on fewer
        nodes than the table now holds; announce when due. A put that reached fewer
        nodes than could hold it is retried with a doubling delay."""
        pub = self._pub
        now = self._loop.time()
        reach = self._reach()
        if reach == 0:
            # Nobody to store anything on (the first node of a swarm, or offline):
            # keep our own copy, look again soon, publish as soon as someone is there.
            if self.core.read_only is False and pub.record != self.current_record():
                await self.publish()
            pub.next_at = pub.next_announce = self._loop.time() + EMPTY_TABLE_POLL
            return
        changed = pub.record != self.current_record()
        grew = pub.record is not None and pub.stored < reach and reach > pub.reach
        if changed or grew or now >= pub.next_at:
            done = await self.publish()
            now = self._loop.time()
            if done is not None and done.stored >= pub.reach:
                pub.retry = RETRY_MIN
                pub.next_at = now + PUBLISH_INTERVAL
            else:
                pub.next_at = now + pub.retry
                pub.retry = min(RETRY_MAX, pub.retry * 2)
        if now >= pub.next_announce:
            announced = await self.announce(DISCOVERY_INFO_HASH)
            now = self._loop.time()
            pub.announce_stored = announced.stored
            if announced.stored:
                pub.announced_at = self._clock()
                pub.announce_retry = RETRY_MIN
                pub.next_announce = now + ANNOUNCE_INTERVAL
            else:
                pub.next_announce = now + pub.announce_retry
                pub.announce_retry = min(RETRY_MAX, pub.announce_retry * 2)

    # ------------------------------------------------------------------ diagnostics
    def status(self) -> dict[str, Any]:
        core = self.core
        book = core.reflexive
        t4, t6 = core.routing_table(4), core.routing_table(6)
        pub = self._pub
        reflexive = [
            {
                "address": format_address(a.ip, a.port),
                "observers": a.observers,
                "trusted": a.trusted,
            }
            for a in book.accepted
        ]
        return {
            "node_id": core.node_id.hex(),
            "listen": format_address(*self._local),
            "table_size": len(t4) + len(t6),
            "table_confirmed": sum(1 for n in t4 if n.confirmed)
            + sum(1 for n in t6 if n.confirmed),
            "external_address": reflexive[0] if reflexive else None,
            "reflexive": reflexive,
            "observations": {
                observer: {"address": format_address(*seen), "source": source}
                for observer, (seen, source) in book.observations().items()
            },
            "nat": book.nat_kind,
            "local_addresses": [format_address(*a) for a in self.local_addresses()],
            "rendezvous": [
                {"peer_id": peer_id, "address": format_address(*addr)}
                for peer_id, addr in self.rendezvous()
            ],
            "read_only": core.read_only,
            "mode": self._read_only_reason,
            "bootstrap": list(self.options.bootstrap),
            "bootstrap_resolved": [format_address(*a) for a in self._bootstrap_resolved],
            "bootstrap_trusted": self.options.trust_bootstrap,
            "ready": self.ready,
            "record": {
                "seq": pub.seq,
                "published_at": pub.published_at,
                "stored": pub.stored,
                "reach": pub.reach,
                "errors": [list(e) for e in pub.errors],
                "addresses": []
                if pub.record is None
                else [format_address(*a) for a in pub.record.dial_addresses()],
                "nat": None if pub.record is None else pub.record.nat,
            },
            "announce": {"announced_at": pub.announced_at, "stored": pub.announce_stored},
            "stored_items": core.stored_item_count(),
            "stored_peers": core.stored_peer_count(),
            "pending": core.pending_count(),
            "budgets": core.budgets(),
            "stats": dict(core.stats),
        }


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True

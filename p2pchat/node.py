"""The node facade: the one object the CLI, the control socket and the UI talk to.

It owns the state folder (identity, SQLite store, lock) and, once started, the
network (``p2pchat.net``).  Chat reliability lives in the store's outbox and the
receive-window rule (``core/window.py``); this module only decides which
session carries a contact's frames and reacts to what arrives on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import os
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pchat.atrest import PassphraseChange, change_passphrase, open_home
from p2pchat.config import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_PORT,
    PASSPHRASE_ENV,
    NodeLock,
    Paths,
    load_settings,
    save_settings,
)
from p2pchat.core import chat
from p2pchat.core.events import (
    AwaitingAcceptance,
    BlockChanged,
    ContactAdded,
    ContactChanged,
    ContactRemoved,
    ContactRequestReceived,
    MessageDeleted,
    MessageEdited,
    MessageSent,
    MessageStateChanged,
    NearbyPeerFound,
    NearbyPeerLost,
    NodeEvent,
    NodeStarted,
    NodeStopped,
    PeerKeyMismatch,
    PeerOffline,
    PeerOnline,
    TransferStateChanged,
    TypingChanged,
)
from p2pchat.core.filedrop import RUNNING_STATES
from p2pchat.core.punch import is_public_ip
from p2pchat.delivery import Delivery, daily_quota_setting
from p2pchat.identity import (
    INVITE_PREFIX,
    Identity,
    Invite,
    format_address,
    is_peer_id,
    key_from_peer_id,
    parse_address,
    parse_contact_ref,
    peer_id_from_key,
    safety_number,
)
from p2pchat.names import name_problem, normalise_name, repair_name
from p2pchat.net.dht import DhtError, DhtOptions, DhtService
from p2pchat.net.dial import Dialer, Route
from p2pchat.net.endpoint import AuxSocket, Endpoint, QuicLink
from p2pchat.net.groups import GroupService
from p2pchat.net.interfaces import interface_ips, local_networks
from p2pchat.net.mdns import MdnsOptions, MdnsService
from p2pchat.net.peer import PeerConnection
from p2pchat.net.punch import PunchService, RendezvousNode
from p2pchat.net.quic import next_tick, smoothed_rtt
from p2pchat.net.relay import RelayChannel, RelayLimits, RelayService
from p2pchat.net.rendezvous import RendezvousFinder
from p2pchat.net.transfers import PAGE_SIZE, TransferManager, TransferPolicy
from p2pchat.net.transfers import TERMINAL as TERMINAL_TRANSFER_STATES
from p2pchat.net.transfers import TransferError as TransferError
from p2pchat.store import (
    BlockedPeer,
    Contact,
    ContactRequest,
    Message,
    StoreError,
    Transfer,
    UnknownContact,
    resolve_ref,
)

log = logging.getLogger(__name__)

# Two sessions with one contact established within this many seconds of each
# other are a simultaneous open, settled by a rule both sides compute alike;
# a session that arrives later replaces the old one, which is likely stale (the
# peer restarted, and its old connection has not timed out yet).
RACE_WINDOW = 5.0
DUPLICATE = "duplicate connection"
#: The peer closed our session as a duplicate: it keeps another one with us, whose
#: Hello is on its way (the responder settles a race first).  Dialling again at once
#: would bring one more duplicate, which closes the session we were about to get
#: (seen over a loaded relay: a new connection every 100 ms until its channels ran
#: out); wait this long for that session instead.
DUPLICATE_GRACE = 5.0
MAX_BACKOFF = 30.0
MAX_REQUEST_SESSIONS = 32
EVENT_QUEUE_SIZE = 10_000
MAX_INVITE_ADDRESSES = 8
ACCEPT_GRACE = 1.0
# Transfers per page of ``list_transfers`` unless the caller asks for another size.
TRANSFER_PAGE_SIZE = PAGE_SIZE
# A contact unreachable at its known addresses (this many dials without a session, or
# no address at all) is looked up in the DHT; repeated lookups back off up to an hour.
DHT_AFTER_ATTEMPTS = 2
DHT_RETRY_MIN = 1.0
DHT_RETRY_MAX = 3600.0
SEARCH_LIMIT = 50
MAX_SEARCH_LIMIT = 500
# Messages added to the full-text index per dial-loop tick (about a second); a search
# indexes whatever is left first, so this only keeps that catch-up short.
INDEX_PER_TICK = 5000
# What a view may keep in the store between runs (``view_state``): small values only.
MAX_VIEW_KEY = 64
MAX_VIEW_VALUE = 4096


class NodeError(Exception):
    """An error the user can act on; the CLI prints it and exits non-zero."""


class NotRunning(NodeError):
    """The operation needs the network, and the node is not started."""


@dataclass(frozen=True, slots=True)
class ContactView:
    """A contact as the outside sees it: stored fields plus live presence."""

    peer_id: str
    name: str
    verified: bool
    addresses: tuple[str, ...]
    last_seen: float | None
    online: bool
    unread: int
    route: str | None = None
    """The same as ``path`` (the name the app reads until it moves to ``path``)."""
    path: str | None = None
    """How the live session runs: "lan" (the peer's private address is on one of our
    own subnets), "direct" (any other address dialled or accepted as is, loopback
    included), "punched" (a path a hole punch opened), "relayed" (through a relay,
    ``via``), None when offline."""
    via: str | None = None
    """The relay's peer ID when ``path`` is "relayed"."""
    rtt_ms: float | None = None
    """QUIC's smoothed round-trip time of the live session, in milliseconds."""
    deferred: str | None = None
    """Why our queued messages wait although the contact is reachable: its node asked
    us to hold them (its storage failed, or our daily allowance there is used up).
    The reason comes from the contact's node: render it literally."""
    awaiting_acceptance: bool = False
    """Their node answered that we are not its contact yet: our messages wait."""
    muted: bool = False
    """The user wants no notifications for this contact (views honour it)."""
    blocked: bool = False
    """On the block list: no session, no request, no lookup until unblocked."""


@dataclass(frozen=True, slots=True)
class NearbyPeer:
    """A peer seen by a discovery source; the ID is a claim until a session proves it."""

    peer_id: str
    name: str | None
    addresses: tuple[str, ...]
    source: str
    seen_at: float
    is_contact: bool
    verified: bool = False


@dataclass(eq=False, slots=True)
class _Subscription:
    """One ``events()`` stream: the events not yet taken, the oldest dropped beyond
    ``EVENT_QUEUE_SIZE`` (a ``deque`` with ``maxlen`` does that by itself), and the
    consumer's future while it waits.  Cheaper per event than an ``asyncio.Queue``,
    which matters when a burst announces thousands of messages at once."""

    events: deque[NodeEvent] = field(default_factory=lambda: deque(maxlen=EVENT_QUEUE_SIZE))
    waiter: asyncio.Future[None] | None = None

    def put(self, event: NodeEvent) -> None:
        self.events.append(event)
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        """Until an event is there."""
        while not self.events:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter


class Node:
    """One identity, its store, and (after ``start``) its network presence."""

    def __init__(
        self,
        paths: Paths,
        *,
        passphrase: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.paths = paths
        self.clock = clock
        if passphrase is None:
            passphrase = os.environ.get(PASSPHRASE_ENV) or None
        self.identity: Identity
        # The node's store queues messages through the outbox journal (one write
        # each, folded into the database with the loop turn's group commit).
        self.identity, self.store = open_home(paths, passphrase, journal=True)
        self._peer_id = self.identity.peer_id  # derived once: z-base-32 is not free
        for peer, old, new in self.store.repair_names():
            log.warning("stored name %r of %s breaks the name rule; now %r", old, peer, new)
        self.settings = load_settings(paths)
        self._move_pending_tokens()
        self._name = self._load_name()
        self._lock = NodeLock(paths)
        self._endpoint: Endpoint | None = None
        self._stop_hooks: list[Callable[[], Awaitable[None]]] = []
        self._mdns: MdnsService | None = None
        self._dht: DhtService | None = None
        self._dht_retry: dict[str, tuple[float, float]] = {}
        self._dht_resolving: set[str] = set()
        self._conns: set[PeerConnection] = set()
        self._active: dict[str, PeerConnection] = {}
        self._requests: dict[str, PeerConnection] = {}
        self._dialer: Dialer | None = None
        self._punch: PunchService | None = None
        self._relay: RelayService | None = None
        self._relay_hints: tuple[RendezvousNode, ...] = ()
        self._rendezvous_config: tuple[RendezvousNode, ...] = ()
        self._finder: RendezvousFinder | None = None
        self._routes: dict[str, tuple[tuple[str, int], ...]] = {}
        """Rendezvous addresses of contacts, from their DHT records (in memory)."""
        self._nat_hints: dict[str, str] = {}
        self._public_ips: set[str] = set()
        """The public IPs the rendezvous nodes saw us at, since the last move."""
        self._subs: set[_Subscription] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None
        self._state_waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._nearby: dict[str, NearbyPeer] = {}
        self._hints: dict[str, tuple[str, ...]] = {}
        # Checked on every session and dial: kept in memory, written through.
        self._blocked: set[str] = {b.peer_id for b in self.store.list_blocked()}
        self._known_ips: set[str] = set()
        """IPs where contacts were seen or are hinted: their handshakes may use the
        endpoint's reserve when strangers fill the pool."""
        self._known_from: tuple[list[Contact], dict[str, tuple[str, ...]]] | None = None
        """The contacts and hints ``_known_ips`` was computed from."""
        self.delivery = Delivery(
            self.store,
            clock=self.clock,
            emit=self._emit,
            active=self._active.get,
            daily_quota=lambda: daily_quota_setting(self.settings),
            schedule=self._schedule_flush,
        )
        self.store.on_pending = self.delivery.fold_soon
        self.store.before_read = self.delivery.settle
        self.transfers = TransferManager(
            self.store,
            _transfer_policy(self.settings, paths),
            clock=self.clock,
            emit=self._emit,
            connection_for=self._session_for,
            storage=self.delivery,
        )
        self.groups = GroupService(self)
        """Group chat (docs/groups.md): the group part of the Node API."""
        self.running = False
        self.start_options: dict[str, Any] = {}
        """What the last ``start`` was given, so a hand-off can start a daemon alike."""

    # ------------------------------------------------------------------ life
    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def name(self) -> str:
        return self._name

    def _load_name(self) -> str:
        """Our display name from settings, repaired if an older version stored one
        that breaks the name rule (it would fail every Hello and every invite)."""
        stored = self.settings.get("name")
        name = repair_name(stored) if isinstance(stored, str) else None
        if stored is not None and name != stored:
            problem = name_problem(stored)
            if problem is not None:
                log.warning("the stored display name is refused (%s); using %r", problem, name)
            if name is None:
                self.settings.pop("name", None)
            else:
                self.settings["name"] = name
            save_settings(self.paths, self.settings)
        return name or self.peer_id[:8]

    @property
    def addresses(self) -> tuple[str, ...]:
        """Where peers can reach us: a wildcard bind is spelled out per interface,
        since ``0.0.0.0:47474`` in an invite would be useless to the reader."""
        if self._endpoint is None or self._endpoint.local_address is None:
            listen = self.settings.get("listen")
            if not isinstance(listen, str):
                return ()
            host, port = parse_address(listen)
        else:
            host, port = self._endpoint.local_address
        if host not in ("0.0.0.0", "::"):
            return (format_address(host, port),)
        ips = interface_ips(v6=host == "::")
        # Loopback only helps a peer on this very machine; list it only when alone.
        public = [ip for ip in ips if not ipaddress.ip_address(ip).is_loopback] or ips
        return tuple(format_address(ip, port) for ip in public[:MAX_INVITE_ADDRESSES])

    @property
    def listen_address(self) -> str | None:
        """The UDP address this node is bound to (as given, not spelled out per
        interface), or None before ``start``."""
        if self._endpoint is None or self._endpoint.local_address is None:
            return None
        return format_address(*self._endpoint.local_address)

    async def start(
        self,
        *,
        listen: str | None = None,
        downloads: Path | None = None,
        accept_files_from: str | Iterable[str] = (),
        mdns: MdnsOptions | None = None,
        dht: DhtOptions | None = None,
        relay: bool = False,
        rendezvous: Iterable[str] = (),
        relay_limits: RelayLimits | None = None,
    ) -> None:
        """Take the home's lock and bind the UDP socket.

        The control socket is not the node's business: whoever owns the node (the
        daemon, or the app that started first) serves it, see ``p2pchat/owner.py``.

        ``rendezvous`` (``PEER_ID@HOST:PORT`` strings) are nodes to register with when
        we sit behind a NAT (the DHT's bootstrap nodes and reachable contacts are
        tried too); ``relay`` makes this node a rendezvous for anyone, not only for
        its contacts (``docs/nat.md``), and so a relay for anyone's data;
        ``relay_limits`` are the budgets of what it relays (``docs/self-hosting.md``).

        ``dht`` joins the DHT on the same socket; None (the default) keeps the node
        off it, so tests never reach bootstrap nodes they did not name.

        ``mdns`` turns LAN discovery on (None, the default, keeps the node silent
        on the LAN: tests and embedders opt in, the CLI daemon opts out).

        ``accept_files_from`` lists contacts (or ``"contacts"`` for all of them)
        whose file offers are accepted without asking: for headless receivers.
        """
        if self.running:
            return
        self.delivery.run_on_this_thread()
        self.start_options = {
            "listen": listen,
            "downloads": downloads,
            "accept_files_from": accept_files_from,
            "mdns": mdns,
            "dht": dht,
            "relay": relay,
            "rendezvous": tuple(rendezvous),
            "relay_limits": relay_limits,
        }
        if downloads is not None:
            self.transfers.policy.downloads = _absolute(downloads)
        if isinstance(accept_files_from, str):
            accept_files_from = (accept_files_from,)
        self.transfers.policy.accept_from = frozenset(
            ref if ref == "contacts" else self.store.find_contact(ref).peer_id
            for ref in accept_files_from
        )
        self._rendezvous_config = tuple(
            _parse_rendezvous(entry) for entry in self.start_options["rendezvous"]
        )
        self._relay_hints = self._load_relay_hints()
        hints = self.store.network_hints("bootstrap")
        if dht is not None and dht.bootstrap == DEFAULT_BOOTSTRAP and hints:
            # The user named no bootstrap node, but joined a swarm through an invite:
            # that swarm's nodes, not the public routers.
            dht = dataclasses.replace(dht, bootstrap=tuple(hints), trust_bootstrap=True)
        self._lock.acquire()
        try:
            host, port = parse_address(listen) if listen else self._default_listen()
            self._endpoint = Endpoint(self.identity)
            self._endpoint.on_incoming = self._incoming
            self._endpoint.known_source = lambda ip: ip in self._known_ips
            self._endpoint.after_datagrams = self.delivery.flush_turn_now
            bound = await self._endpoint.start(host, port)
            await self.transfers.start(bound[0])
            if dht is not None:
                self._dht = DhtService(
                    self._endpoint,
                    self.identity,
                    dht,
                    state_path=self.paths.dht_state,
                    clock=self.clock,
                )
                await self._dht.start()
            self._punch = PunchService(
                self._endpoint,
                self.identity,
                relay=relay,
                is_contact=lambda key: self.store.get_contact(peer_id_from_key(key)) is not None,
                local_candidates=self._local_candidates,
                external=self._dht_external if self._dht is not None else None,
                on_change=self._rendezvous_changed,
                clock=self.clock,
            )
            await self._punch.start()
            self._relay = RelayService(
                self._endpoint,
                self.identity,
                self._punch,
                limits=relay_limits,
                is_contact=lambda key: self.store.get_contact(peer_id_from_key(key)) is not None,
            )
            await self._relay.start()
            if self._dht is not None:
                self._finder = RendezvousFinder(self._dht, self._punch, relay=relay)
            self._dialer = Dialer(
                self._open_connection,
                punch=self._punch,
                local_networks=local_networks,
                relay=self._relay,
            )
            self._wake = asyncio.Event()
            if mdns is not None:
                self._mdns = MdnsService(self, mdns)
                await self._mdns.start(bound)
        except BaseException:
            if self._mdns is not None:
                await self._mdns.stop()
                self._mdns = None
            if self._relay is not None:
                await self._relay.stop()
                self._relay = None
            if self._punch is not None:
                await self._punch.stop()
                self._punch = None
            self._dialer = None
            if self._dht is not None:
                await self._dht.stop()
                self._dht = None
            await self.transfers.stop()
            if self._endpoint is not None:
                self._endpoint.close()
                self._endpoint = None
            self._lock.release()
            raise
        self.running = True
        if listen:
            self.settings["listen"] = format_address(*bound)
            save_settings(self.paths, self.settings)
        self._spawn(self._dial_loop())
        if self._finder is not None:
            self._spawn(self._finder.run())
        self._emit(NodeStarted(self.peer_id, self.addresses))
        log.info("node %s listening on %s", self.peer_id, self.addresses)

    def _schedule_flush(self, delay: float, callback: Callable[[], None]) -> asyncio.Handle | None:
        """Delivery's group commit and owed acks: at the end of this event-loop turn
        (``delay`` 0) or a little later (bookkeeping that can wait for other writes)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            callback()  # no loop (a node used without ``start``): at once
            return None
        if delay > 0:
            return loop.call_later(delay, callback)
        return loop.call_soon(callback)

    def _default_listen(self) -> tuple[str, int]:
        listen = self.settings.get("listen")
        if isinstance(listen, str):
            return parse_address(listen)
        return ("0.0.0.0", DEFAULT_PORT)

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` first thing when the node stops (once).

        The owner's control server registers its ``stop`` here, so every attached
        view sees its connection close the moment the node starts going away.
        """
        self._stop_hooks.append(hook)

    async def stop(self) -> None:
        hooks, self._stop_hooks = self._stop_hooks, []
        for hook in hooks:
            try:
                await hook()
            except Exception:
                log.exception("a stop hook failed")
        if not self.running:
            self.store.close()
            return
        self.running = False
        if self._mdns is not None:
            # Goodbyes first, while the sockets still work: the LAN forgets us now.
            await self._mdns.stop()
            self._mdns = None
        if self._dht is not None:
            await self._dht.stop()  # saves the routing table for the next start
            self._dht = None
        self._finder = None
        if self._dialer is not None:
            await self._dialer.stop()
            self._dialer = None
        if self._relay is not None:
            await self._relay.stop()
            self._relay = None
        if self._punch is not None:
            await self._punch.stop()
            self._punch = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.transfers.stop()
        self.delivery.flush()  # what this turn received is stored and acknowledged
        for conn in list(self._conns):
            conn.close("node stopping")
        if self._endpoint is not None:
            # Let the CONNECTION_CLOSE frames leave before the socket goes.
            await asyncio.sleep(0)
            self._endpoint.close()
            # The port is free only once the socket is closed, a loop turn later (or
            # after queued datagrams left): a restart right away must find it free.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._endpoint.wait_closed()
            self._endpoint = None
        self.groups.save()
        self._emit(NodeStopped())
        self._lock.release()
        self.store.close()

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("node task failed", exc_info=task.exception())

    # ---------------------------------------------------------------- events
    def events(self) -> AsyncGenerator[NodeEvent, None]:
        """Every event from this call on (subscribed at once, not at the first
        iteration, so nothing emitted in between is lost); a slow consumer loses
        the oldest events, never blocks the node."""
        sub = _Subscription()
        self._subs.add(sub)

        async def stream() -> AsyncGenerator[NodeEvent, None]:
            try:
                while True:
                    if not sub.events:
                        await sub.wait()
                    yield sub.events.popleft()
            finally:
                self._subs.discard(sub)

        return stream()

    @property
    def database_encrypted(self) -> bool:
        """Whether the history is encrypted at rest (the identity has a passphrase)."""
        return self.store.encrypted

    async def change_passphrase(self, old: str | None, new: str | None) -> PassphraseChange:
        """Set, change or remove (``new`` None) the passphrase of the key file and database.

        Runs in this node, which owns the database, so neither the daemon nor the
        app has to stop; while the database is copied, store calls wait.  Refused
        (``DatabaseBusy``) while another process has the database open.  See
        ``p2pchat.atrest`` for the crash-safe swap.
        """
        return await asyncio.to_thread(
            change_passphrase, self.paths, self.store, self.identity, old, new
        )

    def update_settings(self, **values: Any) -> None:
        """Change settings through the node's own copy, so no writer loses another's keys."""
        if "name" in values:
            values["name"] = normalise_name(values["name"])
        self.settings.update(values)
        save_settings(self.paths, self.settings)
        self._name = self._load_name()

    def _emit(self, event: NodeEvent) -> None:
        for sub in self._subs:
            sub.put(event)
        if self._state_waiters and isinstance(event, MessageStateChanged):
            for fut in self._state_waiters.pop(event.message_id, ()):
                if not fut.done():
                    fut.set_result(event.state)

    # ------------------------------------------------------------ public API
    def info(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "name": self.name,
            "fingerprint": self.identity.fingerprint,
            "addresses": list(self.addresses),
            "invite": self.invite(),
            "running": self.running,
            "online": sorted(self._active),
            "storage_error": self.delivery.storage_error,
        }

    def invite(self, *, one_time: bool = False) -> str:
        token = self.store.create_invite_token(now=self.clock()) if one_time else None
        relays, bootstrap = self._invite_hints()
        return Invite(
            peer_id=self.peer_id,
            addresses=self.addresses,
            token=token,
            name=self.name,
            relays=relays,
            bootstrap=bootstrap,
        ).encode()

    def _invite_hints(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Where an invitee can reach us and join our swarm: the rendezvous nodes we are
        registered with (or we ourselves, a public ``--relay`` node), and the DHT
        bootstrap nodes the user named (or we ourselves, as a public DHT node)."""
        relays: list[str] = []
        bootstrap: list[str] = []
        public = [a for a in self.addresses if is_public_ip(parse_address(a)[0])]
        if self.running and self.start_options.get("relay"):
            relays += [f"{self.peer_id}@{a}" for a in public]
            if self._dht is not None:
                bootstrap += public
        if self._punch is not None:
            relays += [
                f"{peer_id_from_key(k)}@{format_address(*a)}"
                for k, a in self._punch.registered_rendezvous()
            ]
        if self._dht is not None and self._dht.options.trust_bootstrap:
            bootstrap += [b for b in self._dht.options.bootstrap if not _is_loopback(b)]
        return tuple(dict.fromkeys(relays))[:4], tuple(dict.fromkeys(bootstrap))[:4]

    def add_contact(
        self, ref: str, *, name: str | None = None, addresses: Iterable[str] = ()
    ) -> Contact:
        """Add from an invite or a bare ID; an invite's token is presented on first contact."""
        invite = parse_contact_ref(ref)
        if invite.peer_id == self.peer_id:
            raise NodeError("that is your own ID")
        addrs = list(invite.addresses)
        seen = self._nearby.get(invite.peer_id)
        if seen is not None:
            addrs.extend(seen.addresses)
        for addr in addresses:
            host, port = parse_address(addr)
            addrs.append(format_address(host, port))
        if name is not None:
            display = normalise_name(name)
        else:
            display = repair_name(invite.name) or invite.peer_id[:8]
        contact = self.store.add_contact(
            invite.peer_id, display, addresses=tuple(dict.fromkeys(addrs)), now=self.clock()
        )
        if invite.token:
            self.store.save_pending_token(invite.peer_id, invite.token)
        self._take_hints(invite)
        self._promote_request_session(contact.peer_id)
        self._emit(ContactAdded(contact.peer_id, contact.name))
        self._poke()
        return contact

    def _take_hints(self, invite: Invite) -> None:
        """An invite's relays are routes to its sender and rendezvous candidates for
        us; its bootstrap nodes are our DHT's when the user named none (at the next
        start, and now if the DHT runs).  Kept in the store, the newest four of each."""
        now = self.clock()
        if invite.relays:
            self.store.add_network_hints("relay", invite.relays, now=now)
            self._relay_hints = self._load_relay_hints()
            routes = tuple(_parse_rendezvous(r).addr for r in invite.relays)
            self._routes.setdefault(invite.peer_id, routes)
        if invite.bootstrap:
            self.store.add_network_hints("bootstrap", invite.bootstrap, now=now)
            if self._dht is not None:
                self._dht.add_bootstrap(invite.bootstrap)

    def _load_relay_hints(self) -> tuple[RendezvousNode, ...]:
        nodes = []
        for hint in self.store.network_hints("relay"):
            with contextlib.suppress(NodeError, ValueError):
                nodes.append(_parse_rendezvous(hint))
        return tuple(nodes)

    def contacts(self) -> list[ContactView]:
        # The interfaces are listed once for the whole list, if at all (each listing
        # costs about half a millisecond: ``p2pchat contacts`` waits for this).
        networks = functools.cache(local_networks)
        views = []
        for c in self.store.list_contacts():
            path = self._path(c.peer_id, networks)
            views.append(
                ContactView(
                    peer_id=c.peer_id,
                    name=c.name,
                    verified=c.verified,
                    addresses=c.addresses,
                    last_seen=c.last_seen,
                    online=c.peer_id in self._active,
                    unread=self.store.unread_count(c.peer_id),
                    route=path,
                    path=path,
                    via=self._via(c.peer_id),
                    rtt_ms=self._rtt_ms(c.peer_id),
                    deferred=self.delivery.paused_reason(c.peer_id),
                    awaiting_acceptance=self.awaiting_acceptance(c.peer_id),
                    muted=c.muted,
                    blocked=c.peer_id in self._blocked,
                )
            )
        return views

    def _path(self, peer_id: str, networks: Callable[[], list[Any]] = local_networks) -> str | None:
        conn = self._active.get(peer_id)
        if conn is None:
            return None
        if conn.path is not None:
            return conn.path
        try:
            ip = ipaddress.ip_address(str(conn.link.address[0]).split("%")[0])
        except ValueError:
            return "direct"
        # A LAN is a private network we share a link with; a public address on our
        # own subnet (a datacenter, an ISP segment) is still just direct.
        if is_public_ip(str(ip)):
            return "direct"
        return "lan" if any(ip in net for net in networks()) else "direct"

    def _via(self, peer_id: str) -> str | None:
        """The relay's peer ID, when the contact's session runs through one."""
        conn = self._active.get(peer_id)
        via = conn.link.via if conn is not None else None
        return via.relay_peer_id if isinstance(via, RelayChannel) else None

    def _rtt_ms(self, peer_id: str) -> float | None:
        conn = self._active.get(peer_id)
        rtt = smoothed_rtt(conn.link.conn) if conn is not None else None
        return None if rtt is None else round(rtt * 1000, 1)

    def network_status(self) -> dict[str, Any]:
        """What a status bar and ``p2pchat net`` show: addresses, peers online and
        nearby, DHT and NAT, how we are reachable (``reachability``: docs/nat.md), and
        what every budget turned away (docs/threat-model.md, "Budgets")."""
        status: dict[str, Any] = {
            "running": self.running,
            "addresses": list(self.addresses),
            "online": len(self._active),
            "nearby": sum(1 for p in self._nearby.values() if p.source == "mdns"),
            "mdns": self._mdns is not None,
            "dht": None,
            "reachability": self._reachability(),
            "handshakes": self._handshake_status(),
            "file_drop": self.transfers.status(),
            "messages": self.delivery.status(),
        }
        if self._dht is not None:
            dht = self._dht.status()
            external = dht.get("external_address") or {}
            status["dht"] = {
                "nodes": dht.get("table_size"),
                "external_address": external.get("address"),
                "nat": dht.get("nat"),
                "read_only": dht.get("read_only"),
            }
        return status

    def _reachability(self) -> dict[str, Any] | None:
        """NAT kind, reflexive addresses, rendezvous registrations (ours and those we
        hold for others), punch counters, socket buffers and dial attempts."""
        if self._punch is None or self._endpoint is None:
            return None
        status: dict[str, Any] = dict(self._punch.status())
        status["socket_buffers"] = self._endpoint.socket_buffers
        if self._dialer is not None:
            status["dial"] = dict(self._dialer.stats)
        if self._finder is not None:
            status["relays_found_on_dht"] = len(self._finder.found)
        if self._relay is not None:
            status["relaying"] = self._relay.status()
        return status

    def _handshake_status(self) -> dict[str, Any] | None:
        """The inbound QUIC admission counters (docs/nat.md, "Initial floods")."""
        endpoint = self._endpoint
        if endpoint is None:
            return None
        status: dict[str, Any] = dict(endpoint.gate.status(endpoint.now()))
        status["dropped_datagrams"] = endpoint.dropped_datagrams
        return status

    def requests(self) -> list[ContactRequest]:
        return self.store.list_requests()

    def accept_request(self, ref: str, *, name: str | None = None) -> Contact:
        request = self.store.find_request(ref)
        contact = self.store.accept_request(
            request.peer_id, name=None if name is None else normalise_name(name), now=self.clock()
        )
        self._promote_request_session(contact.peer_id)
        self._emit(ContactAdded(contact.peer_id, contact.name))
        self._poke()
        return contact

    def decline_request(self, ref: str) -> None:
        request = self.store.find_request(ref)
        self.store.decline_request(request.peer_id)
        conn = self._requests.pop(request.peer_id, None)
        if conn is not None:
            conn.close("contact request declined")

    def find_contact(self, ref: str) -> Contact:
        return self.store.find_contact(ref)

    # ---------------------------------------------------- contact management
    def remove_contact(self, ref: str) -> Contact:
        """Remove a contact: its session ends and it is no longer dialled or looked
        up.  History, counters and unsent messages stay (adding it again picks up
        where it was); the peer may knock again as a stranger (``block`` stops that)."""
        contact = self.store.find_contact(ref)
        peer = contact.peer_id
        self.store.remove_contact(peer)
        self._forget_peer(peer, "contact removed")
        self._emit(ContactRemoved(peer))
        return contact

    def block(self, ref: str) -> BlockedPeer:
        """Block a contact, a requester or any peer ID (or invite).

        From now on a session with that key is closed right after it authenticates
        (before our Hello, so it learns not even our name), its contact request is
        dropped and no new one recorded, we never dial it nor look it up in the DHT,
        and LAN announcements of it are ignored.  A blocked contact stays a contact
        (history kept) and ``unblock`` restores it as it was.  Nobody is told.
        """
        peer, name = self._peer_for(ref)
        if peer == self.peer_id:
            raise NodeError("that is your own ID")
        blocked = self.store.block(peer, name=name, now=self.clock())
        self._blocked.add(peer)
        self._forget_peer(peer, "blocked", group_sessions=True)
        self._nearby.pop(peer, None)
        self._emit(BlockChanged(peer, True))
        return blocked

    def unblock(self, ref: str) -> BlockedPeer:
        """Take a key off the block list (by the contact's name, the name it was
        blocked under, or its ID)."""
        entry = _resolve_blocked(ref, self.blocked())
        self.store.unblock(entry.peer_id)
        self._blocked.discard(entry.peer_id)
        self._emit(BlockChanged(entry.peer_id, False))
        self._poke()  # a contact is dialled again
        return entry

    def blocked(self) -> list[BlockedPeer]:
        """The block list, most recent first; a blocked contact shows its contact name."""
        names = {c.peer_id: c.name for c in self.store.list_contacts()}
        return [
            dataclasses.replace(b, name=names.get(b.peer_id, b.name))
            for b in self.store.list_blocked()
        ]

    def is_blocked(self, peer_id: str) -> bool:
        return peer_id in self._blocked

    def set_muted(self, ref: str, muted: bool = True) -> Contact:
        """Mute (or unmute) a contact: views show no notifications for it."""
        contact = self.store.set_muted(self.store.find_contact(ref).peer_id, muted)
        self._emit(ContactChanged(contact.peer_id))
        return contact

    def _peer_for(self, ref: str) -> tuple[str, str | None]:
        """A contact, then a contact request, then a bare peer ID or invite."""
        try:
            contact = self.store.find_contact(ref)
            return contact.peer_id, contact.name
        except UnknownContact:
            pass
        try:
            request = self.store.find_request(ref)
            return request.peer_id, request.name
        except UnknownContact:
            pass
        if is_peer_id(ref.strip()) or ref.strip().startswith(INVITE_PREFIX):
            invite = parse_contact_ref(ref)
            return invite.peer_id, repair_name(invite.name)
        raise UnknownContact(f"no contact, request or peer ID matches {ref!r}")

    def _forget_peer(self, peer: str, reason: str, *, group_sessions: bool = False) -> None:
        """End every session with ``peer`` and stop dialling and looking it up.

        Not only the active one: a second session (both sides dialled at once) may
        have authenticated and still wait for the peer's Hello, which would make it
        the active session a moment after the block or removal.  A group session is
        ended only with ``group_sessions`` (a block; a removed contact may still share
        a group with us)."""
        for conn in list(self._conns):
            if conn.peer_id != peer or conn.closed:
                continue
            if group_sessions or not self.groups.owns(conn):
                conn.close(reason)
        if self._dialer is not None:
            self._dialer.forget(peer)
        self._hints.pop(peer, None)
        self._routes.pop(peer, None)
        self._nat_hints.pop(peer, None)
        self._dht_retry.pop(peer, None)

    def history(
        self, contact: str, *, limit: int | None = None, before: str | None = None
    ) -> list[Message]:
        """The conversation in order: the newest ``limit`` messages, or with ``before``
        (a message id, or its end as shown: ``find_message``) the ``limit`` just before
        that message, to page back as the user scrolls up.  Each page costs the same
        however long the history is."""
        peer = self.store.find_contact(contact).peer_id
        if before is not None and len(before) != 32:
            before = self.find_message(before, contact=contact).id
        return self.store.history(peer, limit=limit, before=before)

    def search(
        self, text: str, *, contact: str | None = None, limit: int = SEARCH_LIMIT
    ) -> list[Message]:
        """Messages containing every word of ``text`` (the last word may be the start
        of a word), newest first; only with ``contact`` when given.  Full-text search
        (SQLite FTS5) over the whole history."""
        peer = self.store.find_contact(contact).peer_id if contact else None
        return self.store.search(text, peer_id=peer, limit=min(limit, MAX_SEARCH_LIMIT))

    def send_message(self, contact: str, text: str, *, reply_to: str | None = None) -> Message:
        """Store first (the outbox survives anything), then send if the contact is online.

        ``reply_to``: a message of this conversation (either direction; the unique
        end of its id will do, as shown: ``#1a2b3c4d``) that this one answers.
        """
        peer = self.store.contact_id(contact)  # from memory: sending reads no row
        body = _message_body(text)
        quoted = None
        if reply_to is not None:
            quoted = self.find_message(reply_to, contact=peer).id
        message = self.store.queue_message(peer, body, now=self.clock(), reply_to=quoted)
        self._emit(
            MessageSent(
                message.peer_id, message.id, message.seq, message.body, message.created_at,
                message.reply_to,
            )
        )  # fmt: skip
        if self._send_now(message):
            message = message.with_state("sent")
        return message

    def send_messages(self, contact: str, texts: Iterable[str]) -> list[Message]:
        """Several messages to one contact, in order: all are checked first, then stored
        in the outbox in one transaction (durable when this returns), then sent.

        Raises ``NodeError`` naming the first text that cannot be a message (empty,
        too long) before anything is stored.
        """
        peer = self.store.contact_id(contact)
        bodies = []
        for n, text in enumerate(texts, 1):
            try:
                bodies.append(_message_body(text))
            except NodeError as exc:
                raise NodeError(f"message {n}: {exc}" if n > 1 else str(exc)) from None
        if not bodies:
            raise NodeError("no message to send")
        messages = self.store.queue_messages(peer, bodies, now=self.clock())
        for m in messages:
            self._emit(MessageSent(m.peer_id, m.id, m.seq, m.body, m.created_at, m.reply_to))
        if self._send_now(*messages):
            messages = [m.with_state("sent") for m in messages]
        return messages

    def _send_now(self, *messages: Message) -> bool:
        """Messages of one contact just queued, in seq order: out now if it is online
        (True; the store marks them ``sent`` at the end of this loop turn)."""
        conn = self._active.get(messages[0].peer_id)
        return conn is not None and self.delivery.send_new(conn, list(messages))

    def find_message(self, ref: str, *, contact: str | None = None) -> Message:
        """A message by id or by a unique end of it (at least 4 characters, with or
        without the ``#`` it is shown with: ids begin with the time they were made,
        ``store.messages.new_message_id``), in one conversation (``contact``: a
        reference, as for ``find_contact``) or in any.  Edits and deletions themselves
        are not messages here."""
        peer = self.store.find_contact(contact).peer_id if contact is not None else None
        ref = ref.strip().lower().removeprefix("#")
        exact = self.store.get_message(ref, peer_id=peer)
        if exact is not None and exact.kind == "text":
            return exact
        ids = self.store.message_ids(ref, peer_id=peer) if len(ref) >= 4 else []
        if len(ids) != 1:
            what = "several messages" if ids else "no message"
            raise NodeError(f"{what} with id {ref!r}" + (" in that conversation" if peer else ""))
        found = self.store.get_message(ids[0], peer_id=peer)
        assert found is not None
        return found

    def get_message(self, message_id: str, *, contact: str | None = None) -> Message | None:
        """The message with this exact id, or None: how a view shows the text a
        reply quotes (resolved here, never sent along with the reply)."""
        try:
            return self.find_message(message_id, contact=contact)
        except NodeError:
            return None

    def edit_message(self, ref: str, text: str) -> Message:
        """Change the text of one of our messages, here and (in order, exactly once,
        whenever it is reachable) at the contact.  Returns the message as edited."""
        body = _message_body(text)
        message = self.find_message(ref)
        try:
            changed, edit = self.store.edit_message(message.id, body, now=self.clock())
        except StoreError as exc:
            raise NodeError(str(exc)) from exc
        assert changed.edited_at is not None
        self._emit(
            MessageEdited(changed.peer_id, changed.id, "out", changed.body, changed.edited_at)
        )
        self._send_now(edit)
        return changed

    def delete_message(self, ref: str) -> Message:
        """Delete one of our messages for both sides: it becomes a tombstone here (no
        text kept, not even earlier edits) and at the contact.  Returns the tombstone."""
        message = self.find_message(ref)
        try:
            changed, delete = self.store.delete_message(message.id, now=self.clock())
        except StoreError as exc:
            raise NodeError(str(exc)) from exc
        assert changed.deleted_at is not None
        self._emit(MessageDeleted(changed.peer_id, changed.id, "out", changed.deleted_at))
        self._send_now(delete)
        return changed

    async def wait_for_delivery(self, message_id: str, timeout: float) -> str:
        """Wait until the message is delivered (or read); return its state then.

        Returns early, with the message still ``queued``, when the contact's node
        answers that we are not its contact yet (``awaiting_acceptance``): waiting
        longer would not help, they have to accept our request first.  If that was
        already so when the call began, it waits up to ``ACCEPT_GRACE`` seconds
        first: their accept may be on its way.
        """
        message = self.store.get_message(message_id)
        if message is None:
            raise NodeError(f"no message {message_id}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        held = self.awaiting_acceptance(message.peer_id)
        grace_until = loop.time() + ACCEPT_GRACE if held else 0.0
        conn = self._active.get(message.peer_id)
        if conn is not None and message.state not in ("delivered", "read"):
            # Someone waits: the contact should not hold its ack back for a reply.
            conn.send(chat.AckNow())
        while message.state not in ("delivered", "read"):
            now = loop.time()
            if self.awaiting_acceptance(message.peer_id) and now >= grace_until:
                break
            remaining = deadline - now
            if remaining <= 0:
                break
            if grace_until > now:
                remaining = min(remaining, grace_until - now)
            fut: asyncio.Future[str] = loop.create_future()
            waiters = self._state_waiters.setdefault(message_id, [])
            waiters.append(fut)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await fut
            finally:
                if fut in waiters:
                    waiters.remove(fut)
                if not waiters and self._state_waiters.get(message_id) is waiters:
                    del self._state_waiters[message_id]
            message = self.store.get_message(message_id) or message
        return message.state

    def awaiting_acceptance(self, peer_id: str) -> bool:
        """Whether the contact's node told this session that we are not its contact
        yet (our messages wait in the outbox until they accept)."""
        conn = self._active.get(peer_id)
        return conn is not None and conn.held_as_request

    def set_typing(self, contact: str, active: bool) -> None:
        conn = self._active.get(self.store.find_contact(contact).peer_id)
        if conn is not None:
            conn.send(chat.Typing(active))

    def view_state(self, key: str) -> str | None:
        """A value a view (the terminal app) remembers between runs, or None."""
        return self.store.view_state(_view_key(key))

    def set_view_state(self, key: str, value: str | None) -> None:
        """Remember (None: forget) a small value for a view.  It lives in the database,
        so a home with a passphrase keeps it encrypted like the history it points into
        (the conversation that was open names a contact)."""
        if value is not None and len(value) > MAX_VIEW_VALUE:
            raise NodeError(f"a view's value is at most {MAX_VIEW_VALUE} characters")
        self.store.set_view_state(_view_key(key), value)

    def mark_read(self, contact: str) -> int:
        peer = self.store.find_contact(contact)
        seq = self.store.mark_read_incoming(peer.peer_id, self.store.recv_seq(peer.peer_id))
        conn = self._active.get(peer.peer_id)
        if conn is not None and seq:
            self.delivery.ack_now(conn)  # a receipt that outran its ack would not count
            conn.send(chat.Read(seq))
        return seq

    def is_online(self, peer_id: str) -> bool:
        return peer_id in self._active

    def set_name(self, name: str) -> str:
        """Our display name, sent to peers in Hello from the next session on.

        Raises ``InvalidName`` (a ValueError) saying why a name is refused.
        """
        self.update_settings(name=name)
        return self._name

    def rename_contact(self, ref: str, name: str) -> Contact:
        cleaned = normalise_name(name)
        contact = self.store.rename_contact(self.store.find_contact(ref).peer_id, cleaned)
        self._emit(ContactChanged(contact.peer_id))
        return contact

    def safety_number(self, ref: str) -> str:
        """Compare this aloud or side by side with the contact's own screen."""
        peer = self.store.find_contact(ref)
        return safety_number(self.identity.public_key, key_from_peer_id(peer.peer_id))

    def verify_contact(self, ref: str, verified: bool = True) -> Contact:
        contact = self.store.set_verified(self.store.find_contact(ref).peer_id, verified)
        self._emit(ContactChanged(contact.peer_id))
        return contact

    # ------------------------------------------------------------ file drop
    async def offer_files(self, contact: str, paths: Iterable[Path]) -> Transfer:
        """Offer files or folders; they are sent once the contact accepts."""
        peer = self.store.find_contact(contact)
        return await self.transfers.offer(peer.peer_id, [Path(p) for p in paths])

    def list_transfers(
        self,
        contact: str | None = None,
        *,
        limit: int = TRANSFER_PAGE_SIZE,
        before: str | None = None,
    ) -> list[Transfer]:
        """Transfers newest first, one page: at most ``limit`` of them (and a bounded
        number of file rows, so a page costs the same whatever the database holds).
        For the next page pass the last id of this one as ``before``."""
        peer_id = self.store.find_contact(contact).peer_id if contact else None
        if before is not None:
            before = self.get_transfer(before).id
        return self.transfers.page(peer_id, limit=limit, before=before)

    def pending_offers(self, contact: str | None = None) -> list[Transfer]:
        """Every incoming offer waiting for accept or decline (of one contact, or of
        all), newest first.  Not paged: the offer budgets bound it (at most 64 in all,
        16 per contact), so a view can always show each one, even while a flood fills
        the pages of ``list_transfers`` with finished transfers."""
        peer_id = self.store.find_contact(contact).peer_id if contact else None
        return self.transfers.pending_offers(peer_id)

    def running_transfers(self) -> list[Transfer]:
        """Transfers moving bytes now (accepted, sending, receiving): what quitting
        this node would interrupt.  They resume from where they were once a node
        runs for this home again (or hand the node to a daemon: ``owner.hand_off``)."""
        return self.store.list_transfers(states=RUNNING_STATES)

    def get_transfer(self, transfer_id: str) -> Transfer:
        exact = self.store.get_transfer(transfer_id)
        if exact is not None:
            return exact
        matches = self.store.find_transfer_ids(transfer_id) if len(transfer_id) >= 4 else []
        if len(matches) != 1:
            raise TransferError(f"no single transfer matches {transfer_id!r}")
        found = self.store.get_transfer(matches[0])
        assert found is not None
        return found

    def accept_transfer(
        self, transfer_id: str, *, only: list[int] | None = None, folder: Path | None = None
    ) -> Transfer:
        return self.transfers.accept(self.get_transfer(transfer_id).id, only=only, folder=folder)

    def decline_transfer(self, transfer_id: str, reason: str = "declined") -> None:
        self.transfers.decline(self.get_transfer(transfer_id).id, reason)

    def cancel_transfer(self, transfer_id: str) -> None:
        self.transfers.cancel(self.get_transfer(transfer_id).id)

    async def wait_transfer(self, transfer_id: str, timeout: float) -> str:
        """Wait until the transfer reaches a final state; return the state then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        events = self.events()
        try:
            while True:
                t = self.store.get_transfer(transfer_id)
                if t is None:
                    raise TransferError(f"no transfer {transfer_id}")
                if t.state in TERMINAL_TRANSFER_STATES:
                    return t.state
                # Only this transfer's state changes warrant another look at the store.
                while (remaining := deadline - loop.time()) > 0:
                    try:
                        async with asyncio.timeout(remaining):
                            event = await anext(events)
                    except TimeoutError:
                        break
                    if isinstance(event, TransferStateChanged) and event.transfer_id == transfer_id:
                        break
                else:
                    return t.state
        finally:
            await events.aclose()

    # ------------------------------------------------------------ discovery
    def nearby(self) -> list[NearbyPeer]:
        """Announced peers; ``verified`` once a session with that key exists."""
        proven = self._active.keys() | self._requests.keys()
        return sorted(
            (dataclasses.replace(p, verified=p.peer_id in proven) for p in self._nearby.values()),
            key=lambda p: (p.name or "", p.peer_id),
        )

    def peer_discovered(
        self,
        peer_id: str,
        addresses: Iterable[str],
        *,
        source: str,
        name: str | None = None,
        rendezvous: Iterable[str] = (),
        nat: str | None = None,
    ) -> None:
        """A discovery source (mDNS, DHT) claims ``peer_id`` is reachable at ``addresses``
        (and, from a DHT record, through the ``rendezvous`` nodes, behind a ``nat``).

        Nothing is trusted yet: a contact is dialled with its key as the expected
        peer, so a false claim ends in a key mismatch, not in a session.
        """
        if peer_id == self.peer_id or peer_id in self._blocked:
            return
        addrs = tuple(dict.fromkeys(addresses))
        contact = self.store.get_contact(peer_id)
        if contact is not None:
            # Kept in memory only: a claim must not push the contact's proven
            # addresses out of its stored list.  An address is stored once a
            # session over it proved the key (``record_seen``).
            known_before = (self._hints.get(peer_id), self._routes.get(peer_id))
            self._hints[peer_id] = addrs[:8]
            routes = tuple(parse_address(a) for a in rendezvous)[:4]
            if routes:
                self._routes[peer_id] = routes
            if nat is not None:
                self._nat_hints[peer_id] = nat
            if peer_id not in self._active and self._dialer is not None:
                if known_before != (self._hints.get(peer_id), self._routes.get(peer_id)):
                    self._dialer.refresh(peer_id)  # new ways to try: start over now
                else:
                    self._dialer.retry_after(peer_id, 0.0)
                self._poke()
        before = self._nearby.get(peer_id)
        entry = NearbyPeer(
            peer_id=peer_id,
            name=repair_name(name),
            addresses=addrs,
            source=source,
            seen_at=self.clock(),
            is_contact=contact is not None,
        )
        self._nearby[peer_id] = entry
        if before is None or before.addresses != addrs or before.name != entry.name:
            self._emit(NearbyPeerFound(peer_id, entry.name, addrs, source))

    def peer_lost(self, peer_id: str, *, source: str) -> None:
        entry = self._nearby.get(peer_id)
        if entry is not None and entry.source == source:
            del self._nearby[peer_id]
            self._emit(NearbyPeerLost(peer_id, source))

    # --------------------------------------------------------- connections
    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _incoming(self, link: QuicLink) -> None:
        conn = PeerConnection(link, self.identity, self)
        address = (str(link.address[0]), int(link.address[1]))
        if isinstance(link.via, RelayChannel):
            conn.path = "relayed"
        elif self._punch is not None and self._punch.was_punched(address, link.via):
            conn.path = "punched"
        self._conns.add(conn)

    def _open_connection(
        self, peer_id: str, address: tuple[str, int], via: AuxSocket | None, path: str
    ) -> PeerConnection:
        """The dialer's way to dial: a connection the node owns, expecting ``peer_id``."""
        assert self._endpoint is not None
        link = self._endpoint.connect(address, via=via)
        conn = PeerConnection(link, self.identity, self, expected_peer=key_from_peer_id(peer_id))
        conn.path = path if path in ("punched", "relayed") else None
        self._conns.add(conn)
        return conn

    async def _dial_loop(self) -> None:
        """Keep a session with every contact that has an address, backing off on failure."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            contacts = self.store.list_contacts()
            for contact in contacts:
                self._maybe_dial(contact, now)
                self._maybe_resolve(contact, now)
            self._update_known_ips(contacts)
            self._refresh_rendezvous(contacts)
            self.transfers.tick()
            self.delivery.tick()
            try:
                self.store.index_messages(limit=INDEX_PER_TICK)
            except StoreError as exc:
                log.warning("indexing messages for search failed: %s", exc)
            self.groups.tick(now)
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
            # races with the wake-up (a poke right before stop()), and stop() then
            # waits for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_tick(loop.time())):
                    await self._wake.wait()

    def _update_known_ips(self, contacts: list[Contact]) -> None:
        """``_known_ips`` from the contacts' addresses and hints, parsed again only
        when they changed (an idle node's tick finds the same ``Contact`` objects,
        which the store keeps until a write, and the same hints: comparing them is
        an identity check each)."""
        known_from = self._known_from
        if known_from is not None and known_from[0] == contacts and known_from[1] == self._hints:
            return
        known: set[str] = set()
        for contact in contacts:
            for address in (*contact.addresses, *self._hints.get(contact.peer_id, ())):
                with contextlib.suppress(ValueError):
                    known.add(parse_address(address)[0])
        self._known_ips = known
        self._known_from = (contacts, dict(self._hints))

    def _maybe_resolve(self, contact: Contact, now: float) -> None:
        """Ask the DHT for the contact's signed record when its known addresses fail."""
        peer = contact.peer_id
        if self._dht is None or peer in self._active or peer in self._blocked:
            self._dht_retry.pop(peer, None)
            return
        failures = self._dialer.failures(peer) if self._dialer is not None else 0
        known = contact.addresses or self._hints.get(peer)
        # Without a route through a rendezvous we cannot punch: ask for the record at
        # once; with one, only when the known ways keep failing.
        if known and peer in self._routes and failures < DHT_AFTER_ATTEMPTS:
            return
        next_at, delay = self._dht_retry.get(peer, (0.0, DHT_RETRY_MIN))
        if now < next_at or peer in self._dht_resolving:
            return
        self._dht_retry[peer] = (now + delay, min(DHT_RETRY_MAX, delay * 2))
        self._dht_resolving.add(peer)
        self._spawn(self._resolve_contact(peer))

    async def _resolve_contact(self, peer_id: str) -> None:
        """The contact's signed record: addresses to dial, rendezvous nodes to punch
        through, and its NAT kind, all handed to the dialer as claims."""
        try:
            record = await self._require_dht().lookup_record(peer_id)
        except (NodeError, DhtError) as exc:
            log.info("DHT lookup of %s failed: %s", peer_id, exc)
            return
        finally:
            self._dht_resolving.discard(peer_id)
        if record is None or not self.running:
            return
        addresses = [format_address(*a) for a in record.dial_addresses()]
        rendezvous = [format_address(*addr) for _, addr in record.rendezvous]
        if addresses or rendezvous:
            self.peer_discovered(
                peer_id, addresses, source="dht", rendezvous=rendezvous, nat=record.nat
            )

    def dht_status(self) -> dict[str, Any]:
        return self._require_dht().status()

    async def dht_lookup(self, ref: str) -> list[str]:
        """Addresses from the signed DHT record of a contact (name or ID) or any peer ID."""
        dht = self._require_dht()
        if is_peer_id(ref) or ref.startswith(INVITE_PREFIX):
            peer_id = parse_contact_ref(ref).peer_id
        else:
            peer_id = self.store.find_contact(ref).peer_id
        return await dht.resolve(peer_id)

    def _require_dht(self) -> DhtService:
        if not self.running:
            raise NotRunning("the node is not running")
        if self._dht is None:
            raise NodeError("the DHT is off (the node was started without it, e.g. --no-dht)")
        return self._dht

    def _maybe_dial(self, contact: Contact, now: float) -> None:
        """Hand what we know about reaching the contact to the dialer (``net/dial.py``)."""
        peer = contact.peer_id
        conn = self._active.get(peer)
        if self._dialer is None or peer in self._blocked:
            return
        if conn is not None and conn.path != "relayed":
            return
        addresses = []
        for text in dict.fromkeys((*self._hints.get(peer, ()), *contact.addresses)):
            with contextlib.suppress(ValueError):
                addresses.append(parse_address(text))
        route = Route(
            addresses=tuple(addresses),
            rendezvous=self._routes.get(peer, ()),
            nat=self._nat_hints.get(peer, "unknown"),
        )
        if conn is not None:
            self._dialer.upgrade(peer, route, now)  # relayed: keep trying for direct
        else:
            self._dialer.want(peer, route, now)

    def _network_moved(self) -> None:
        """Our NAT gave us another public address (a new WAN address, another network).

        Peers behind filtering NATs drop what we now send from the new address, and
        QUIC's idle timeout would take 20 s to notice: close the sessions that do not
        run on the LAN and dial again at once (through the contacts' rendezvous nodes,
        which follow us by our keepalives).  Unacknowledged messages are resent on the
        new sessions, as after any reconnect.
        """
        punch = self._punch
        ips = {ip for ip, _ in punch.observed_addresses()} if punch is not None else set()
        fresh = ips - self._public_ips
        self._public_ips = ips
        if not fresh:
            return  # a port moved on an endpoint-dependent NAT, or a second report
        seen = ", ".join(sorted(fresh))
        for peer, conn in list(self._active.items()):
            if self._path(peer) != "lan":
                log.info("our public address is now %s: reconnecting to %s", seen, peer[:12])
                conn.close("our public address changed")
                if self._dialer is not None:
                    self._dialer.refresh(peer)
        self._poke()

    # ------------------------------------------------------------ rendezvous
    def _local_candidates(self) -> list[tuple[str, int]]:
        out = []
        for text in self.addresses:
            with contextlib.suppress(ValueError):
                out.append(parse_address(text))
        return out

    def _dht_external(self) -> tuple[list[tuple[str, int]], str]:
        """Reflexive addresses and NAT kind as the DHT measured them."""
        dht = self._dht
        if dht is None or not dht.running:
            return [], "unknown"
        return dht.reflexive_addresses(), dht.nat_kind()

    def _refresh_rendezvous(self, contacts: list[Contact]) -> None:
        """Where to register, best first (``net/rendezvous.py``): configured nodes, the
        bootstrap nodes the user named, contacts we reached at a public address, and
        public relays found on the DHT when the others are too few."""
        if self._punch is None:
            return
        nodes = list(self._rendezvous_config)
        nodes.extend(self._relay_hints)
        if self._dht is not None and self._dht.options.trust_bootstrap:
            for entry in self._dht.options.bootstrap:
                with contextlib.suppress(ValueError):
                    nodes.append(RendezvousNode(parse_address(entry), None, "bootstrap"))
        for contact in contacts:
            conn = self._active.get(contact.peer_id)
            if conn is None or not conn.initiator or conn.path in ("punched", "relayed"):
                continue
            address = (str(conn.link.address[0]), int(conn.link.address[1]))
            if self._nat_hints.get(contact.peer_id) == "none" or is_public_ip(address[0]):
                key = key_from_peer_id(contact.peer_id)
                nodes.append(RendezvousNode(address, key, "contact"))
        if self._finder is not None:
            self._finder.wanted = len(nodes) < 2
            nodes.extend(self._finder.found)
        self._punch.set_rendezvous(nodes)

    def _rendezvous_changed(self, moved: bool) -> None:
        """A registration came up, went away, or the address it sees changed: the DHT
        learns what the rendezvous nodes see and where we can be reached.  ``moved``:
        our public address changed, so every session through the old one is dead."""
        dht, punch = self._dht, self._punch
        if moved:
            self._network_moved()
        elif punch is not None:
            self._public_ips |= {ip for ip, _ in punch.observed_addresses()}
        if dht is not None and dht.running and punch is not None:
            for reg in punch.registrations():
                if reg.observed is not None and reg.rendezvous_key is not None:
                    dht.observed(reg.observed, "rendezvous", peer_id_from_key(reg.rendezvous_key))
            nodes = [(peer_id_from_key(k), a) for k, a in punch.registered_rendezvous()]
            if nodes != dht.rendezvous():
                dht.set_rendezvous(nodes)
        self._poke()

    # ------------------------------------------------- PeerOwner callbacks
    def session_established(self, conn: PeerConnection) -> None:
        if conn.peer_id in self._blocked:
            # Refused as soon as the key is known, before our Hello: a blocked
            # peer learns nothing, not even our name.
            conn.close("refused")
            return
        if conn.path is None:
            conn.path = self._through_nat(conn)
        conn.send(
            chat.Hello(
                name=self.name,
                token=self._pending_token(conn.peer_id),
                # Where we see the peer: its reflexive address (through a relay we
                # see only the relay).
                seen=_proven_address(conn) or None,
                groups=tuple(sorted(self.groups.hello_groups(conn))),
                files=chat.FILE_DROP_VERSION,
            )
        )

    def _session_for(self, peer_id: str) -> PeerConnection | None:
        """The session that carries a peer's file frames: its contact session, or a
        group session (file drops to a group)."""
        return self._active.get(peer_id) or self.groups.session(peer_id)

    def _through_nat(self, conn: PeerConnection) -> str | None:
        """ "punched" when the session crossed a filtering NAT on the way in: theirs
        when we dialled (their record says they sit behind one), ours when they did;
        such a path is open only because both sides sent first (a punch, or two dials
        at once).  None leaves the label to the address (lan or direct)."""
        punch = self._punch
        if punch is None:
            return None
        link = conn.link
        address = (str(link.address[0]), int(link.address[1]))
        if not is_public_ip(address[0]):
            return None
        if punch.was_punched(address, link.via):
            return "punched"
        nat = self._nat_hints.get(conn.peer_id or "") if conn.initiator else punch.nat_kind()
        return "punched" if nat in ("endpoint-independent", "endpoint-dependent") else None

    def _forget_token(self, peer_id: str) -> None:
        """The token went out in this session's Hello: one presentation is all it
        gets, so it is not repeated in every later Hello."""
        self.store.drop_pending_token(peer_id)

    def _pending_token(self, peer_id: str | None) -> str | None:
        return self.store.pending_token(peer_id) if peer_id else None

    def _move_pending_tokens(self) -> None:
        """Older versions kept these in settings.json, where they named contacts in clear."""
        tokens = self.settings.pop("pending_tokens", None)
        if tokens is None:
            return
        if isinstance(tokens, dict):
            for peer_id, token in tokens.items():
                if isinstance(peer_id, str) and isinstance(token, str):
                    self.store.save_pending_token(peer_id, token)
        save_settings(self.paths, self.settings)

    def key_mismatch(self, conn: PeerConnection, seen_key: bytes) -> None:
        expected = conn.expected_peer
        if expected is None:
            return
        log.warning(
            "%s answered with key %s instead of contact %s",
            conn.address,
            seen_key.hex() if seen_key else "?",
            peer_id_from_key(expected),
        )
        self._emit(PeerKeyMismatch(peer_id_from_key(expected), conn.address))

    def stream_received(self, conn: PeerConnection, stream_id: int, data: bytes, end: bool) -> None:
        if conn.peer_id is not None and self._session_for(conn.peer_id) is conn:
            self.transfers.stream_data(conn, stream_id, data, end)

    def connection_closed(self, conn: PeerConnection, reason: str) -> None:
        self._conns.discard(conn)
        self.transfers.connection_closed(conn)
        self.delivery.connection_closed(conn)
        self.groups.connection_closed(conn)
        peer = conn.peer_id
        if peer is None:
            return
        if self._requests.get(peer) is conn:
            del self._requests[peer]
        if self._active.get(peer) is conn:
            del self._active[peer]
            self._emit(PeerOffline(peer, reason))
            # What this session carried without an ack waits for the next one.
            self._requeue(peer)
            self.transfers.peer_offline(peer, f"{self._name_of(peer)} went offline ({reason})")
            if self._dialer is not None:
                if conn.held_as_request:
                    # We are only a pending request there: knocking again soon would
                    # just resend the introduction.  Their accept dials us anyway.
                    self._dialer.retry_after(peer, MAX_BACKOFF * random.uniform(1, 2))
                elif reason == DUPLICATE:
                    self._dialer.retry_after(peer, DUPLICATE_GRACE, reset=True)
                else:
                    # The larger key waits a little, so both sides rarely dial at once.
                    delay = 0.1 if self.identity.public_key < (conn.peer_key or b"") else 1.0
                    self._dialer.retry_after(peer, delay * random.uniform(1, 2), reset=True)
            self._poke()

    def _requeue(self, peer: str) -> None:
        self.delivery.flush()  # sent marks of this turn first, or they would win
        self.delivery.forget_transmitted(peer)
        try:
            requeued = self.store.requeue_sent(peer, self.clock())
        except StoreError as exc:
            # They stay "sent" on screen, but the next session resends the whole
            # unacknowledged outbox anyway (``Delivery.session_active``).
            self.delivery.storage_failed(exc)
            return
        for message_id in requeued:
            self._emit(MessageStateChanged(peer, message_id, "queued"))

    def _name_of(self, peer: str) -> str:
        contact = self.store.get_contact(peer)
        return contact.name if contact is not None else peer[:8]

    def frame_received(self, conn: PeerConnection, frame: chat.ChatFrame) -> None:
        """Every frame of every session; a failing database never escapes from here
        (it would reach aioquic's event loop and drop the rest of the datagram)."""
        try:
            self._frame_received(conn, frame)
        except StoreError as exc:
            self.delivery.storage_failed(exc)
            if isinstance(frame, chat.Hello) and not conn.closed:
                # Unclassified, the connection would idle on keepalives for good; the
                # peer redials with backoff and finds the database working again.
                conn.close("local storage failure")

    def _frame_received(self, conn: PeerConnection, frame: chat.ChatFrame) -> None:
        peer = conn.peer_id
        if peer is None:
            return
        if self.groups.owns(conn):
            self.groups.frame_received(conn, frame)
            return
        if isinstance(frame, chat.Hello):
            if self._active.get(peer) is not conn and self._requests.get(peer) is not conn:
                self._on_hello(conn, frame)
            return
        if self._active.get(peer) is conn:
            self._on_contact_frame(conn, peer, frame)
        elif self._requests.get(peer) is conn and isinstance(frame, chat.ChatMessage):
            # A stranger's words are kept as the request's preview, never as chat.
            self.store.add_request(
                peer,
                name=None,
                address=_proven_address(conn) or None,
                preview=frame.body,
                now=self.clock(),
            )

    def _on_hello(self, conn: PeerConnection, hello: chat.Hello) -> None:
        peer = conn.peer_id
        assert peer is not None
        now = self.clock()
        if hello.name_problem is not None:
            log.warning(
                "%s announced a name that breaks the name rule (%s); using %r",
                peer,
                hello.name_problem,
                hello.name,
            )
        if self.store.get_contact(peer) is None and hello.token:
            if self.store.redeem_invite_token(hello.token, peer, now=now):
                name = hello.name or peer[:8]
                proven = _proven_address(conn)
                self.store.add_contact(peer, name, addresses=(proven,) if proven else (), now=now)
                self._emit(ContactAdded(peer, name))
        if self.store.get_contact(peer) is not None:
            if hello.seen is not None and self._dht is not None and conn.path != "relayed":
                # A contact on an authenticated session told us where it sees us.
                with contextlib.suppress(ValueError, DhtError):
                    self._dht.observed(hello.seen, "contact", peer)
            self._activate(conn)
            return
        if self.groups.admit(conn, hello):
            return  # a fellow group member: a group session, no contact request
        if len(self._requests) >= MAX_REQUEST_SESSIONS and peer not in self._requests:
            conn.close("too many pending contact requests")
            return
        request, new = self.store.add_request(
            peer, name=hello.name, address=_proven_address(conn) or None, preview=None, now=now
        )
        if request.state == "declined":
            conn.close("contact request declined")
            return
        old = self._requests.get(peer)
        self._requests[peer] = conn
        if old is not None and old is not conn:
            old.close("replaced by a newer connection")
        conn.send(chat.RequestPending())
        if new:
            self._emit(ContactRequestReceived(peer, request.name, request.preview))

    def _promote_request_session(self, peer: str) -> None:
        conn = self._requests.pop(peer, None)
        if conn is not None and not conn.closed:
            self._activate(conn)
            # The peer held its messages back while we were strangers: ask for them.
            conn.send(chat.Gap(self.store.recv_seq(peer) + 1))

    def _activate(self, conn: PeerConnection) -> None:
        peer = conn.peer_id
        assert peer is not None
        existing = self._active.get(peer)
        if existing is not None and existing is not conn:
            keep = self._prefer(existing, conn)
            drop = conn if keep is existing else existing
            del self._active[peer]
            drop.close(DUPLICATE)
            if keep is existing:
                self._active[peer] = existing
                return
        self._active[peer] = conn
        if self._dialer is not None:
            self._dialer.established(peer, conn)
        try:
            self.store.record_seen(peer, _proven_address(conn), now=self.clock())
        except StoreError as exc:
            self.delivery.storage_failed(exc)  # only the address book misses a line
        self._forget_token(peer)
        self._emit(PeerOnline(peer, conn.address))
        # Anything stored but not yet acknowledged (we may have died in between).
        recv_seq = self.store.recv_seq(peer)
        if recv_seq:
            conn.send(chat.Ack(recv_seq))
        self.delivery.session_active(conn, peer)
        self.transfers.peer_online(conn)
        self.groups.peer_online(conn)

    def _prefer(self, old: PeerConnection, new: PeerConnection) -> PeerConnection:
        if (old.path == "relayed") != (new.path == "relayed"):
            # A path that costs nobody's bandwidth beats a relay (both sides agree).
            return new if old.path == "relayed" else old
        old_at = old.established_at or 0.0
        new_at = new.established_at or 0.0
        if new_at - old_at > RACE_WINDOW:
            return new

        def dialer(c: PeerConnection) -> bytes:
            return self.identity.public_key if c.initiator else (c.peer_key or b"")

        if dialer(old) == dialer(new):
            return new
        return old if dialer(old) < dialer(new) else new

    def _on_contact_frame(self, conn: PeerConnection, peer: str, frame: chat.ChatFrame) -> None:
        if isinstance(frame, chat.ChatMessage):  # first: nearly every frame of a burst
            self.delivery.on_message(conn, peer, frame)
        elif isinstance(frame, chat.Defer):
            self.delivery.on_defer(conn, peer, frame)
        elif isinstance(frame, chat.Ack):
            self.delivery.on_ack(peer, frame.seq)
        elif isinstance(frame, chat.AckNow):
            self.delivery.on_ack_now(conn)
        elif isinstance(frame, chat.Read):
            self.delivery.flush()  # the acks before it first: a receipt needs 'delivered'
            for message_id in self.store.mark_read_outgoing(peer, frame.seq, self.clock()):
                self._emit(MessageStateChanged(peer, message_id, "read"))
        elif isinstance(frame, chat.Gap):
            self.delivery.on_gap(conn, peer, frame.want)
        elif isinstance(frame, chat.Typing):
            self._emit(TypingChanged(peer, frame.active))
        elif isinstance(frame, chat.RequestPending):
            # (PeerConnection set held_as_request.)  What went out before this
            # answer is held there, not stored: it is queued again here.
            self._requeue(peer)
            self._emit(AwaitingAcceptance(peer))
        elif isinstance(frame, _FILE_FRAMES):
            self.transfers.frame_received(peer, frame)
        elif isinstance(frame, chat.GROUP_FRAME_TYPES):
            self.groups.frame_received(conn, frame)


_FILE_FRAMES = (
    chat.FileOffer,
    chat.FileAccept,
    chat.FileDecline,
    chat.FileCancel,
    chat.FileProgress,
    chat.FileResult,
)


def _message_body(text: str) -> str:
    body = text.strip("\n")
    if not body.strip():
        raise NodeError("refusing to send an empty message")
    if len(body.encode("utf-8")) > chat.MAX_BODY_BYTES:
        raise NodeError(f"message too long (limit {chat.MAX_BODY_BYTES} bytes)")
    return body


def _resolve_blocked(ref: str, blocked: list[BlockedPeer]) -> BlockedPeer:
    return resolve_ref(ref, blocked, lambda b: b.peer_id, lambda b: b.name, "blocked peer")


def _view_key(key: str) -> str:
    if not key or len(key) > MAX_VIEW_KEY:
        raise NodeError(f"a view's key is 1 to {MAX_VIEW_KEY} characters")
    return key


def _transfer_policy(settings: dict[str, Any], paths: Paths) -> TransferPolicy:
    """Download folder and size limits from settings.json (see docs/filedrop.md)."""
    downloads = settings.get("downloads")
    policy = TransferPolicy(Path(downloads) if isinstance(downloads, str) else paths.downloads)
    limit = settings.get("max_incoming_bytes")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        policy.max_incoming = limit
    per_contact = settings.get("max_incoming_bytes_per_contact")
    if isinstance(per_contact, dict):
        policy.per_contact_max = {
            str(peer): int(n)
            for peer, n in per_contact.items()
            if isinstance(n, int) and not isinstance(n, bool) and n >= 0
        }
    return policy


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(parse_address(address)[0]).is_loopback
    except ValueError:
        return False


def _proven_address(conn: PeerConnection) -> str:
    """The peer's address as its session proved it: none through a relay (the
    address there is the relay's, which must not become the contact's)."""
    return "" if conn.path == "relayed" else conn.address


def _parse_rendezvous(entry: str) -> RendezvousNode:
    """``PEER_ID@HOST:PORT`` (or ``HOST:PORT``: whoever answers there)."""
    peer, sep, address = entry.rpartition("@")
    if sep and not is_peer_id(peer):
        raise NodeError(f"not a peer ID in rendezvous {entry!r}")
    key = key_from_peer_id(peer) if sep else None
    return RendezvousNode(parse_address(address), key, "configured")


def _absolute(path: Path) -> Path:
    return path.expanduser().absolute()

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
import ipaddress
import logging
import os
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pchat.atrest import PassphraseChange, change_passphrase, open_home
from p2pchat.config import (
    DEFAULT_PORT,
    PASSPHRASE_ENV,
    NodeLock,
    Paths,
    load_settings,
    save_settings,
)
from p2pchat.core import chat
from p2pchat.core.events import (
    ContactAdded,
    ContactChanged,
    ContactRequestReceived,
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
from p2pchat.net.endpoint import Endpoint, QuicLink
from p2pchat.net.interfaces import interface_ips
from p2pchat.net.mdns import MdnsOptions, MdnsService
from p2pchat.net.peer import PeerConnection
from p2pchat.net.transfers import PAGE_SIZE, TransferManager, TransferPolicy
from p2pchat.net.transfers import TERMINAL as TERMINAL_TRANSFER_STATES
from p2pchat.net.transfers import TransferError as TransferError
from p2pchat.store import Contact, ContactRequest, Message, StoreError, Transfer

log = logging.getLogger(__name__)

# Two sessions with one contact established within this many seconds of each
# other are a simultaneous open, settled by a rule both sides compute alike;
# a session that arrives later replaces the old one, which is likely stale (the
# peer restarted, and its old connection has not timed out yet).
RACE_WINDOW = 5.0
MAX_BACKOFF = 30.0
MAX_REQUEST_SESSIONS = 32
EVENT_QUEUE_SIZE = 10_000
MAX_INVITE_ADDRESSES = 8
# Transfers per page of ``list_transfers`` unless the caller asks for another size.
TRANSFER_PAGE_SIZE = PAGE_SIZE
# A contact unreachable at its known addresses (this many dials without a session, or
# no address at all) is looked up in the DHT; repeated lookups back off up to an hour.
DHT_AFTER_ATTEMPTS = 2
DHT_RETRY_MIN = 5.0
DHT_RETRY_MAX = 3600.0
RUNNING_TRANSFER_STATES = ("accepted", "sending", "receiving")
SEARCH_LIMIT = 50
MAX_SEARCH_LIMIT = 500
# Messages added to the full-text index per dial-loop tick (about a second); a search
# indexes whatever is left first, so this only keeps that catch-up short.
INDEX_PER_TICK = 5000


class NodeError(Exception):
    """An error the user can act on; the CLI prints it and exits non-zero."""


class NotRunning(NodeError):
    """The operation needs the network, and the node is not started."""


@dataclass(slots=True)
class _DialState:
    attempts: int = 0
    next_at: float = 0.0
    index: int = 0
    link: PeerConnection | None = None


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
    """How the live session runs: "lan" (a local-network or loopback address) or
    "direct" (any other address); None when offline."""
    deferred: str | None = None
    """Why our queued messages wait although the contact is reachable: its node asked
    us to hold them (its storage failed, or our daily allowance there is used up).
    The reason comes from the contact's node: render it literally."""


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
    queue: asyncio.Queue[NodeEvent] = field(
        default_factory=lambda: asyncio.Queue(EVENT_QUEUE_SIZE)
    )


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
        self.identity, self.store = open_home(paths, passphrase)
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
        self._dial: dict[str, _DialState] = {}
        self._subs: set[_Subscription] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None
        self._state_waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._nearby: dict[str, NearbyPeer] = {}
        self._hints: dict[str, tuple[str, ...]] = {}
        self._known_ips: set[str] = set()
        """IPs where contacts were seen or are hinted: their handshakes may use the
        endpoint's reserve when strangers fill the pool."""
        self.delivery = Delivery(
            self.store,
            clock=self.clock,
            emit=self._emit,
            active=self._active.get,
            daily_quota=lambda: daily_quota_setting(self.settings),
            schedule=self._schedule_flush,
        )
        self.transfers = TransferManager(
            self.store,
            _transfer_policy(self.settings, paths),
            clock=self.clock,
            emit=self._emit,
            connection_for=self._active.get,
        )
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
    ) -> None:
        """Take the home's lock and bind the UDP socket.

        The control socket is not the node's business: whoever owns the node (the
        daemon, or the app that started first) serves it, see ``p2pchat/owner.py``.

        ``dht`` joins the DHT on the same socket; None (the default) keeps the node
        off it, so tests never reach bootstrap nodes they did not name.

        ``mdns`` turns LAN discovery on (None, the default, keeps the node silent
        on the LAN: tests and embedders opt in, the CLI daemon opts out).

        ``accept_files_from`` lists contacts (or ``"contacts"`` for all of them)
        whose file offers are accepted without asking: for headless receivers.
        """
        if self.running:
            return
        self.start_options = {
            "listen": listen,
            "downloads": downloads,
            "accept_files_from": accept_files_from,
            "mdns": mdns,
            "dht": dht,
        }
        if downloads is not None:
            self.transfers.policy.downloads = _absolute(downloads)
        if isinstance(accept_files_from, str):
            accept_files_from = (accept_files_from,)
        self.transfers.policy.accept_from = frozenset(
            ref if ref == "contacts" else self.store.find_contact(ref).peer_id
            for ref in accept_files_from
        )
        self._lock.acquire()
        try:
            host, port = parse_address(listen) if listen else self._default_listen()
            self._endpoint = Endpoint(self.identity)
            self._endpoint.on_incoming = self._incoming
            self._endpoint.known_source = lambda ip: ip in self._known_ips
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
            self._wake = asyncio.Event()
            if mdns is not None:
                self._mdns = MdnsService(self, mdns)
                await self._mdns.start(bound)
        except BaseException:
            if self._mdns is not None:
                await self._mdns.stop()
                self._mdns = None
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
        self._emit(NodeStarted(self.peer_id, self.addresses))
        log.info("node %s listening on %s", self.peer_id, self.addresses)

    def _schedule_flush(self) -> None:
        """Delivery's group commit runs once at the end of this event-loop turn."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.delivery.flush()  # no loop (a node used without ``start``): at once
            return
        loop.call_soon(self.delivery.flush)

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
                    yield await sub.queue.get()
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
            if sub.queue.full():
                sub.queue.get_nowait()
            sub.queue.put_nowait(event)
        if isinstance(event, MessageStateChanged):
            for fut in self._state_waiters.pop(event.message_id, []):
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
        return Invite(
            peer_id=self.peer_id, addresses=self.addresses, token=token, name=self.name
        ).encode()

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
        self._promote_request_session(contact.peer_id)
        self._emit(ContactAdded(contact.peer_id, contact.name))
        self._poke()
        return contact

    def contacts(self) -> list[ContactView]:
        return [
            ContactView(
                peer_id=c.peer_id,
                name=c.name,
                verified=c.verified,
                addresses=c.addresses,
                last_seen=c.last_seen,
                online=c.peer_id in self._active,
                unread=self.store.unread_count(c.peer_id),
                route=self._route(c.peer_id),
                deferred=self.delivery.paused_reason(c.peer_id),
            )
            for c in self.store.list_contacts()
        ]

    def _route(self, peer_id: str) -> str | None:
        conn = self._active.get(peer_id)
        if conn is None:
            return None
        try:
            ip = ipaddress.ip_address(str(conn.link.address[0]).split("%")[0])
        except ValueError:
            return "direct"
        local = ip.is_private or ip.is_loopback or ip.is_link_local
        return "lan" if local else "direct"

    def network_status(self) -> dict[str, Any]:
        """What a status bar shows: addresses, peers online and nearby, DHT and NAT;
        and what file drop turned away (``file_drop``: docs/threat-model.md, "Budgets")."""
        status: dict[str, Any] = {
            "running": self.running,
            "addresses": list(self.addresses),
            "online": len(self._active),
            "nearby": sum(1 for p in self._nearby.values() if p.source == "mdns"),
            "mdns": self._mdns is not None,
            "dht": None,
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

    def history(
        self, contact: str, *, limit: int | None = None, before: str | None = None
    ) -> list[Message]:
        """The conversation in order: the newest ``limit`` messages, or with ``before``
        (a message id) the ``limit`` just before that message, to page back as the
        user scrolls up.  Each page costs the same however long the history is."""
        peer = self.store.find_contact(contact).peer_id
        return self.store.history(peer, limit=limit, before=before)

    def search(
        self, text: str, *, contact: str | None = None, limit: int = SEARCH_LIMIT
    ) -> list[Message]:
        """Messages containing every word of ``text`` (the last word may be the start
        of a word), newest first; only with ``contact`` when given.  Full-text search
        (SQLite FTS5) over the whole history."""
        peer = self.store.find_contact(contact).peer_id if contact else None
        return self.store.search(text, peer_id=peer, limit=min(limit, MAX_SEARCH_LIMIT))

    def send_message(self, contact: str, text: str) -> Message:
        """Store first (the outbox survives anything), then send if the contact is online."""
        return self.send_messages(contact, [text])[0]

    def send_messages(self, contact: str, texts: Iterable[str]) -> list[Message]:
        """Several messages to one contact, in order: all are checked first, then stored
        in the outbox in one transaction (durable when this returns), then sent.

        Raises ``NodeError`` naming the first text that cannot be a message (empty,
        too long) before anything is stored.
        """
        peer = self.store.find_contact(contact).peer_id
        bodies = []
        for n, text in enumerate(texts, 1):
            body = text.strip("\n")
            where = f"message {n}: " if n > 1 else ""
            if not body.strip():
                raise NodeError(f"{where}refusing to send an empty message")
            if len(body.encode("utf-8")) > chat.MAX_BODY_BYTES:
                raise NodeError(f"{where}message too long (limit {chat.MAX_BODY_BYTES} bytes)")
            bodies.append(body)
        if not bodies:
            raise NodeError("no message to send")
        now = self.clock()
        messages = self.store.queue_messages(peer, bodies, now=now)
        for message in messages:
            self._emit(MessageStateChanged(peer, message.id, "queued"))
        conn = self._active.get(peer)
        if conn is not None:
            self.delivery.send_new(conn, messages)
        return messages

    async def wait_for_delivery(self, message_id: str, timeout: float) -> str:
        """Wait until the message is delivered (or read); return its state then."""
        message = self.store.get_message(message_id)
        if message is None:
            raise NodeError(f"no message {message_id}")
        if message.state in ("delivered", "read"):
            return message.state
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            fut: asyncio.Future[str] = loop.create_future()
            self._state_waiters.setdefault(message_id, []).append(fut)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                state = await asyncio.wait_for(fut, remaining)
                if state in ("delivered", "read"):
                    return state
        message = self.store.get_message(message_id)
        return message.state if message is not None else "queued"

    def set_typing(self, contact: str, active: bool) -> None:
        conn = self._active.get(self.store.find_contact(contact).peer_id)
        if conn is not None:
            conn.send(chat.Typing(active))

    def mark_read(self, contact: str) -> int:
        peer = self.store.find_contact(contact)
        seq = self.store.mark_read_incoming(peer.peer_id, self.store.recv_seq(peer.peer_id))
        conn = self._active.get(peer.peer_id)
        if conn is not None and seq:
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

    def running_transfers(self) -> list[Transfer]:
        """Transfers moving bytes now (accepted, sending, receiving): what quitting
        this node would interrupt.  They resume from where they were once a node
        runs for this home again (or hand the node to a daemon: ``owner.hand_off``)."""
        return self.store.list_transfers(states=RUNNING_TRANSFER_STATES)

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
                        event = await asyncio.wait_for(anext(events), remaining)
                    except TimeoutError:
                        break
                    if (
                        isinstance(event, TransferStateChanged)
                        and event.transfer_id == transfer_id
                    ):
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
        self, peer_id: str, addresses: Iterable[str], *, source: str, name: str | None = None
    ) -> None:
        """A discovery source (mDNS, DHT) claims ``peer_id`` is reachable at ``addresses``.

        Nothing is trusted yet: a contact is dialled with its key as the expected
        peer, so a false claim ends in a key mismatch, not in a session.
        """
        if peer_id == self.peer_id:
            return
        addrs = tuple(dict.fromkeys(addresses))
        contact = self.store.get_contact(peer_id)
        if contact is not None:
            # Kept in memory only: a claim must not push the contact's proven
            # addresses out of its stored list.  An address is stored once a
            # session over it proved the key (``record_seen``).
            self._hints[peer_id] = addrs[:8]
            if peer_id not in self._active:
                state = self._dial.setdefault(peer_id, _DialState())
                state.next_at = 0.0
                state.index = 0
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
        self._conns.add(PeerConnection(link, self.identity, self))

    def _dial_now(self, peer_id: str, address: str) -> PeerConnection:
        assert self._endpoint is not None
        host, port = parse_address(address)
        link = self._endpoint.connect((host, port))
        conn = PeerConnection(link, self.identity, self, expected_peer=key_from_peer_id(peer_id))
        self._conns.add(conn)
        return conn

    async def _dial_loop(self) -> None:
        """Keep a session with every contact that has an address, backing off on failure."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            known: set[str] = set()
            for contact in self.store.list_contacts():
                self._maybe_dial(contact, now)
                self._maybe_resolve(contact, now)
                for address in (*contact.addresses, *self._hints.get(contact.peer_id, ())):
                    with contextlib.suppress(ValueError):
                        known.add(parse_address(address)[0])
            self._known_ips = known
            self.transfers.tick()
            self.delivery.tick()
            try:
                self.store.index_messages(limit=INDEX_PER_TICK)
            except StoreError as exc:
                log.warning("indexing messages for search failed: %s", exc)
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
            # races with the wake-up (a poke right before stop()), and stop() then
            # waits for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()

    def _maybe_resolve(self, contact: Contact, now: float) -> None:
        """Ask the DHT for the contact's signed record when its known addresses fail."""
        peer = contact.peer_id
        if self._dht is None or peer in self._active:
            self._dht_retry.pop(peer, None)
            return
        state = self._dial.get(peer)
        known = contact.addresses or self._hints.get(peer)
        if known and (state is None or state.attempts < DHT_AFTER_ATTEMPTS):
            return
        next_at, delay = self._dht_retry.get(peer, (0.0, DHT_RETRY_MIN))
        if now < next_at or peer in self._dht_resolving:
            return
        self._dht_retry[peer] = (now + delay, min(DHT_RETRY_MAX, delay * 2))
        self._dht_resolving.add(peer)
        self._spawn(self._resolve_contact(peer))

    async def _resolve_contact(self, peer_id: str) -> None:
        try:
            addresses = await self.dht_lookup(peer_id)
        except (NodeError, DhtError) as exc:
            log.info("DHT lookup of %s failed: %s", peer_id, exc)
            return
        finally:
            self._dht_resolving.discard(peer_id)
        if addresses and self.running:
            self.peer_discovered(peer_id, addresses, source="dht")

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
        peer = contact.peer_id
        candidates = tuple(dict.fromkeys((*self._hints.get(peer, ()), *contact.addresses)))
        if peer in self._active or not candidates:
            return
        state = self._dial.setdefault(peer, _DialState())
        if state.link is not None and not state.link.closed:
            return
        if now < state.next_at:
            return
        address = candidates[state.index % len(candidates)]
        state.index += 1
        state.attempts += 1
        delay = min(MAX_BACKOFF, 0.5 * 2 ** min(state.attempts, 8))
        state.next_at = now + delay * random.uniform(0.8, 1.2)
        try:
            state.link = self._dial_now(peer, address)
        except (OSError, ValueError) as exc:
            log.info("cannot dial %s at %s: %s", peer, address, exc)

    # ------------------------------------------------- PeerOwner callbacks
    def session_established(self, conn: PeerConnection) -> None:
        conn.send(chat.Hello(name=self.name, token=self._pending_token(conn.peer_id)))

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

    def stream_received(
        self, conn: PeerConnection, stream_id: int, data: bytes, end: bool
    ) -> None:
        if conn.peer_id is not None and self._active.get(conn.peer_id) is conn:
            self.transfers.stream_data(conn, stream_id, data, end)

    def connection_closed(self, conn: PeerConnection, reason: str) -> None:
        self._conns.discard(conn)
        self.transfers.connection_closed(conn)
        self.delivery.connection_closed(conn)
        peer = conn.peer_id
        if peer is None:
            return
        if self._requests.get(peer) is conn:
            del self._requests[peer]
        if self._active.get(peer) is conn:
            del self._active[peer]
            self._emit(PeerOffline(peer, reason))
            state = self._dial.setdefault(peer, _DialState())
            now = asyncio.get_running_loop().time()
            if conn.held_as_request:
                # We are only a pending request there: knocking again soon would just
                # resend the introduction.  Their accept dials us anyway.
                state.next_at = now + MAX_BACKOFF * random.uniform(1, 2)
            else:
                state.attempts = 0
                # The larger key waits a little, so both sides rarely dial at once.
                delay = 0.1 if self.identity.public_key < (conn.peer_key or b"") else 1.0
                state.next_at = now + delay * random.uniform(1, 2)
            self._poke()

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
        if isinstance(frame, chat.Hello):
            if self._active.get(peer) is not conn and self._requests.get(peer) is not conn:
                self._on_hello(conn, frame)
            return
        if self._active.get(peer) is conn:
            self._on_contact_frame(conn, peer, frame)
        elif self._requests.get(peer) is conn and isinstance(frame, chat.ChatMessage):
            # A stranger's words are kept as the request's preview, never as chat.
            self.store.add_request(
                peer, name=None, address=conn.address, preview=frame.body, now=self.clock()
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
                self.store.add_contact(peer, name, addresses=(conn.address,), now=now)
                self._emit(ContactAdded(peer, name))
        if self.store.get_contact(peer) is not None:
            self._activate(conn)
            return
        if len(self._requests) >= MAX_REQUEST_SESSIONS and peer not in self._requests:
            conn.close("too many pending contact requests")
            return
        request, new = self.store.add_request(
            peer, name=hello.name, address=conn.address, preview=None, now=now
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
            drop.close("duplicate connection")
            if keep is existing:
                self._active[peer] = existing
                return
        self._active[peer] = conn
        state = self._dial.setdefault(peer, _DialState())
        state.attempts = 0
        state.next_at = 0.0
        try:
            self.store.record_seen(peer, conn.address, now=self.clock())
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

    def _prefer(self, old: PeerConnection, new: PeerConnection) -> PeerConnection:
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
        now = self.clock()
        if isinstance(frame, chat.ChatMessage):
            self.delivery.on_message(conn, peer, frame)
        elif isinstance(frame, chat.Defer):
            self.delivery.on_defer(conn, peer, frame)
        elif isinstance(frame, chat.Ack):
            self.delivery.on_ack(peer, frame.seq)
        elif isinstance(frame, chat.Read):
            self.delivery.flush()  # the acks before it first: a receipt needs 'delivered'
            for message_id in self.store.mark_read_outgoing(peer, frame.seq, now):
                self._emit(MessageStateChanged(peer, message_id, "read"))
        elif isinstance(frame, chat.Gap):
            self.delivery.on_gap(conn, peer, frame.want)
        elif isinstance(frame, chat.Typing):
            self._emit(TypingChanged(peer, frame.active))
        elif isinstance(frame, _FILE_FRAMES):
            self.transfers.frame_received(peer, frame)


_FILE_FRAMES = (
    chat.FileOffer,
    chat.FileAccept,
    chat.FileDecline,
    chat.FileCancel,
    chat.FileProgress,
    chat.FileResult,
)


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


def _absolute(path: Path) -> Path:
    return path.expanduser().absolute()


"""File drop on the wire: offers on the session, bytes on a data channel.

The offer/accept/result frames travel on the contact's authenticated session
(``core/chat.py``); this module is that agreement, both directions.  The bytes
travel on a data channel chosen per attempt (``transfer_channels.py``; the
receiving end is ``transfer_receiver.py``, the disk side ``transfer_files.py``):

* a direct TCP connection to a port the receiver announces in its accept, when
  it can be reached (LAN, loopback): the kernel's TCP moves bulk data an order of
  magnitude faster than QUIC implemented in Python (docs/filedrop.md);
* otherwise, or when that connection is refused or dies before it is claimed, a
  unidirectional QUIC stream of the same session.

Either way the content is sealed under a key exported from the session
(``core/filedrop.py``), so the channel adds no trust: a stranger who connects to
the TCP port cannot produce a single record the receiver accepts.  Offers leave
without content hashes to peers that speak file drop 2 (their Hello says so):
the sender hashes while it sends and the hashes close the channel.
Progress lives on disk: the receiver's ``.part`` files hold only authenticated
bytes, so a restart resumes from their sizes.  The receiver drives retries: a
channel that ends early, fails or goes silent makes it ask again with a fresh
attempt while the session lives.

What a contact can make us store or do is budgeted here: offers per contact
(rate), files per offer, stored incoming transfers and file rows per contact and
in all, listings per page (docs/threat-model.md, "Budgets").

A database that cannot write (a full disk, an I/O error) is handled where it
happens, as for messages (``delivery.py``): the frame, the closed session or the
data channel that needed the write is dropped cleanly (files closed, nothing
half-published), the failure is reported (``StorageProblem``, ``storage_error``),
and the step is tried again from ``tick`` with a growing delay until it succeeds,
so a transfer carries on by itself once space returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from p2pchat.core import chat
from p2pchat.core.budget import RateBudget
from p2pchat.core.errors import LocalProtocolError
from p2pchat.core.events import NodeEvent, TransferOffered, TransferProgress, TransferStateChanged
from p2pchat.core.filedrop import (
    CHUNK_SIZE,
    KEY_LABEL,
    PAUSED,
    RESUMABLE_IN,
    RESUMABLE_OUT,
    RUNNING_STATES,
    VERSION,
    Sealer,
    UnsafePath,
    check_offer,
)
from p2pchat.net.peer import PeerConnection
from p2pchat.net.transfer_channels import (
    DataSender,
    Outgoing,
    QuicSender,
    Rate,
    TcpSender,
)
from p2pchat.net.transfer_files import (
    FOLDER_MODE,
    STAGING,
    TransferError,
    channel_version,
    choose_roots,
    collect,
    hash_file,
    hash_prefixes_of,
    make_folders,
    part_size,
    remove_staging,
    same_device,
    sealed_records,
    source_path,
)
from p2pchat.net.transfer_receiver import DataReceiver
from p2pchat.store import Store, StoreError, Transfer

__all__ = ["TERMINAL", "TransferError", "TransferManager", "TransferPolicy"]

log = logging.getLogger(__name__)

OFFER_TIMEOUT = 15 * 60.0
PREAMBLE_TIMEOUT = 5.0
DATA_IDLE_TIMEOUT = 30.0
MAX_ATTEMPTS = 5
DISK_MARGIN = 64 << 20
DEFAULT_MAX_INCOMING = 64 << 30

# Budgets of what a contact's offers make us store (docs/threat-model.md, "Budgets").
MAX_PENDING_OFFERS_PER_PEER = 16
MAX_PENDING_OFFERS = 64
"""Offers waiting for the user's answer, from all contacts together: what
``pending_offers`` lists whole, however many finished transfers a flood left."""
MAX_FILES_PER_OFFER = 1024
OFFER_BURST = 32
OFFER_RATE = 0.5
"""New offers per second a contact may make once its burst is spent, counting the
ones that are refused, declined or cancelled at once: an offer is work and rows."""
MAX_STORED_PER_CONTACT = 256
MAX_STORED_FILES_PER_CONTACT = 32_768
MAX_STORED = 4096
MAX_STORED_FILES = 262_144
# Listings: one page holds at most this many transfers and (about) file rows.
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
PAGE_FILES = 2048

TERMINAL = ("done", "declined", "cancelled", "failed")
# Steps a failed database write interrupted: tried again from ``tick``, the first
# time after 0.5 s, doubling to 4 s while writes keep failing (as for messages).
STORE_RETRY_MIN = 0.5
STORE_RETRY_MAX = 4.0
MAX_STORE_RETRIES = 256
"""Steps kept for a retry (one per transfer, the latest): beyond, the oldest is
dropped, and the sender's re-offer at the next session recovers that transfer."""


def hashes_at_end(conn: PeerConnection) -> bool:
    """Whether the peer on ``conn`` takes offers without hashes (file drop 2)."""
    return conn.hello is not None and conn.hello.files >= 2


class StorageHealth(Protocol):
    """Where database failures are reported (``delivery.Delivery``: one warning for
    the whole node, whichever part hit it)."""

    def storage_failed(self, exc: StoreError) -> None: ...

    def storage_ok(self) -> None: ...


@dataclass(slots=True)
class TransferPolicy:
    downloads: Path
    accept_from: frozenset[str] = frozenset()
    """Peer IDs whose offers are accepted without asking; ``"contacts"`` means all."""
    max_incoming: int = DEFAULT_MAX_INCOMING
    per_contact_max: dict[str, int] = field(default_factory=dict)
    offer_timeout: float = OFFER_TIMEOUT
    preamble_timeout: float = PREAMBLE_TIMEOUT
    """A TCP data connection must present its preamble this soon after it is accepted."""
    data_idle_timeout: float = DATA_IDLE_TIMEOUT
    """A claimed data channel (either carrier) that brings nothing for this long is
    dropped, and the receiver asks again with a fresh attempt."""


class TransferManager:
    """Both sides of every file transfer of one node."""

    def __init__(
        self,
        store: Store,
        policy: TransferPolicy,
        *,
        clock: Callable[[], float],
        emit: Callable[[NodeEvent], None],
        connection_for: Callable[[str], PeerConnection | None],
        storage: StorageHealth | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.policy = policy
        self.clock = clock
        self.emit = emit
        self.connection_for = connection_for
        self._server: asyncio.base_events.Server | None = None
        self.tcp_port = 0
        self._outgoing: dict[str, Outgoing] = {}
        self._offer_budget = RateBudget(rate=OFFER_RATE, burst=OFFER_BURST)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hashing: set[str] = set()
        """Outgoing transfers being hashed for a peer that speaks only file drop 1."""
        self.receiver = DataReceiver(self)
        self._retries: OrderedDict[str, Callable[[], None]] = OrderedDict()
        self._retry_at = 0.0
        self._retry_delay = STORE_RETRY_MIN
        self.counters = {
            "tcp_channels": 0,
            "quic_channels": 0,
            "tcp_refused": 0,
            "tcp_no_preamble": 0,
            "tcp_bad_preamble": 0,
            "idle_channels": 0,
            "tcp_fallbacks": 0,
            "offers_refused": 0,
            "transfers_pruned": 0,
            "store_errors": 0,
        }
        """What the node turned away or gave up, for ``Node.network_status()``:
        TCP connections over the unclaimed caps, without a preamble in time or with
        one of no expected attempt, claimed channels dropped for silence, sends
        that fell back to QUIC, offers refused by a budget, finished incoming
        transfers deleted to make room, steps a failed database write stopped."""

    def status(self) -> dict[str, int]:
        return {
            **self.counters,
            "tcp_unclaimed": self.receiver.gate.unclaimed,
            "store_retries_waiting": len(self._retries),
        }

    # ------------------------------------------------------------- storage failures
    @contextlib.contextmanager
    def guarded(
        self, transfer_id: str | None = None, retry: Callable[[], None] | None = None
    ) -> Iterator[None]:
        """A step that writes to the database: a ``StoreError`` stops here, is
        reported, and ``retry`` (the step again, for ``transfer_id``) runs from
        ``tick`` once writes may work again."""
        try:
            yield
        except StoreError as exc:
            self.store_failed(exc, transfer_id, retry)

    def store_failed(
        self,
        exc: StoreError,
        transfer_id: str | None = None,
        retry: Callable[[], None] | None = None,
    ) -> None:
        self.counters["store_errors"] += 1
        log.info("file drop: a database write failed (%s); retrying later", exc)
        if self.storage is not None:
            self.storage.storage_failed(exc)
        now = time.monotonic()
        if self._retry_at <= now:
            self._retry_at = now + self._retry_delay
            self._retry_delay = min(STORE_RETRY_MAX, self._retry_delay * 2)
        if transfer_id is None or retry is None:
            return
        self._retries.pop(transfer_id, None)
        self._retries[transfer_id] = retry
        while len(self._retries) > MAX_STORE_RETRIES:
            dropped, _ = self._retries.popitem(last=False)
            log.warning("file drop: gave up retrying %s (too many waiting)", dropped)

    def _run_retries(self) -> None:
        """Try the steps failed writes stopped, oldest first, until one fails again."""
        if not self._retries or time.monotonic() < self._retry_at:
            return
        failures = self.counters["store_errors"]
        for transfer_id in list(self._retries):
            retry = self._retries.pop(transfer_id, None)
            if retry is None:
                continue
            with self.guarded(transfer_id, retry):
                retry()
            if self.counters["store_errors"] != failures:
                return  # still failing: the rest waits for the next round
        self._retry_delay = STORE_RETRY_MIN
        if self.storage is not None:
            self.storage.storage_ok()

    # ------------------------------------------------------------- lifetime
    async def start(self, host: str) -> None:
        """Listen for direct TCP data channels on the node's address.

        Transfers that were moving when the last node of this home stopped (or
        died) are paused now: nothing moves them until their contact is back.
        """
        for direction in ("in", "out"):
            stale = self.store.transfer_ids(direction=direction, states=RUNNING_STATES)
            for t in self.store.get_transfers(stale):
                self.set_state(t, PAUSED, "the node was restarted")
        try:
            self._server = await asyncio.start_server(
                self.receiver.tcp_client, host=host, port=0, limit=4 * CHUNK_SIZE
            )
        except OSError as exc:
            log.warning("no direct TCP data channel (%s): transfers use QUIC", exc)
            return
        self.tcp_port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for out in self._outgoing.values():
            if out.task is not None:
                out.task.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.receiver.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def track(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Every task of file drop is tracked, cancelled by ``stop`` and has its
        exception looked at, so none ends as "exception was never retrieved"."""
        task = asyncio.ensure_future(coro)
        self.adopt(task)
        return task

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Track a task started elsewhere (the TCP server's per-connection tasks)."""
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("file drop task failed: %r", exc, exc_info=exc)

    def set_state(self, t: Transfer, state: str, error: str | None = None, **kw: Any) -> None:
        self.store.set_transfer_state(t.id, state, now=self.clock(), error=error)
        self.emit(TransferStateChanged(t.id, t.peer_id, t.direction, state, error, **kw))

    def _send(self, peer_id: str, frame: chat.ChatFrame) -> bool:
        conn = self.connection_for(peer_id)
        return conn.send(frame) if conn is not None else False

    # --------------------------------------------------------------- sender
    async def offer(
        self,
        peer_id: str,
        paths: list[Path],
        *,
        transfer_id: str | None = None,
        entries: list[tuple[str, int, bytes, str | None, int]] | None = None,
    ) -> Transfer:
        """Offer files: at once to a peer that speaks file drop 2 (the hashes travel
        at the end of the data), after hashing them (in a thread: large files take a
        while) to one that speaks only file drop 1.

        A group file drop passes the ``entries`` it hashed once for every member and
        the transfer id derived for each (``net/groups.py``)."""
        conn = self.connection_for(peer_id)
        if entries is None:
            # File drop 2: the offer leaves at once and the hashes follow the data; a
            # peer known to speak only 1 gets them first (``_send_offer``).
            hashes = conn is not None and not hashes_at_end(conn)
            entries = await asyncio.to_thread(collect, paths, hashes=hashes)
        if len(entries) > MAX_FILES_PER_OFFER:
            raise TransferError(
                f"too many files for one offer ({len(entries)}, at most {MAX_FILES_PER_OFFER})"
            )
        transfer_id = transfer_id or secrets.token_hex(16)
        frame = chat.FileOffer(
            transfer_id,
            tuple(chat.FileEntry(rel, size, h or None) for rel, size, h, _src, _t in entries),
        )
        try:
            chat.encode(frame)
        except LocalProtocolError as exc:
            raise TransferError(f"cannot offer these files: {exc}") from exc
        transfer = self.store.create_transfer(
            transfer_id,
            peer_id,
            direction="out",
            state="offered",
            files=[(rel, size, h, src) for rel, size, h, src, _t in entries],
            mtimes=[mtime for *_entry, mtime in entries],
            now=self.clock(),
        )
        self.emit(TransferStateChanged(transfer_id, peer_id, "out", "offered"))
        conn = self.connection_for(peer_id)
        if conn is not None:
            self._send_offer(conn, transfer)
        return transfer

    def _offer_frame(self, t: Transfer) -> chat.FileOffer:
        return chat.FileOffer(
            t.id, tuple(chat.FileEntry(f.path, f.size, f.hash or None) for f in t.files)
        )

    def _send_offer(self, conn: PeerConnection, t: Transfer) -> None:
        """Offer ``t`` on ``conn``: as it is if it carries its hashes or the peer
        speaks file drop 2, else once the files are hashed (a peer that only speaks
        file drop 1 would refuse an offer without hashes as invalid)."""
        if all(f.hash for f in t.files) or hashes_at_end(conn):
            conn.send(self._offer_frame(t))
        elif t.id not in self._hashing:
            self._hashing.add(t.id)
            self.track(self._hash_then_offer(conn, t))

    async def _hash_then_offer(self, conn: PeerConnection, t: Transfer) -> None:
        try:
            try:
                hashes = await asyncio.to_thread(
                    lambda: [hash_file(Path(source_path(f))) for f in t.files]
                )
            except (OSError, TransferError) as exc:
                why = f"cannot hash the files to offer: {exc}"
                with self.guarded(t.id, lambda: self.set_state(t, "failed", why)):
                    self.set_state(t, "failed", why)
                return
            with self.guarded():  # the next session hashes again
                fresh = self.store.get_transfer(t.id)
                if fresh is None or fresh.state not in RESUMABLE_OUT:
                    return
                self.store.set_transfer_files(
                    t.id, [(f.index, {"hash": h}) for f, h in zip(t.files, hashes, strict=True)]
                )
                fresh = self.store.get_transfer(t.id)
                if fresh is not None and self.connection_for(t.peer_id) is conn:
                    conn.send(self._offer_frame(fresh))
        finally:
            self._hashing.discard(t.id)

    def peer_online(self, conn: PeerConnection) -> None:
        """A session with the peer came up: re-offer what is unfinished (resume)."""
        peer = conn.peer_id
        assert peer is not None

        def again() -> None:
            if self.connection_for(peer) is conn:
                self.peer_online(conn)

        with self.guarded(f"online:{peer}", again):
            self._reoffer(conn, peer)

    def _reoffer(self, conn: PeerConnection, peer: str) -> None:
        unfinished = self.store.transfer_ids(
            direction="out", states=RESUMABLE_OUT, peer_id=peer
        )
        for t in self.store.get_transfers(unfinished):
            self._send_offer(conn, t)
        recent = self.store.transfer_ids(
            direction="out",
            states=("cancelled",),
            peer_id=peer,
            updated_after=self.clock() - 7 * 86400,
        )
        for t in self.store.get_transfers(recent):
            conn.send(chat.FileCancel(t.id, t.error or "cancelled by the sender"))

    def _on_accept(self, peer: str, frame: chat.FileAccept) -> None:
        t = self.store.get_transfer(frame.id)
        if t is None or t.peer_id != peer or t.direction != "out":
            return
        if t.state not in RESUMABLE_OUT:
            if t.state == "cancelled":
                self._send(peer, chat.FileCancel(t.id, t.error or "cancelled by the sender"))
            return
        files = {f.index: f for f in t.files}
        for index, offset in frame.offsets:
            if index not in files or offset > files[index].size:
                self._send(peer, chat.FileCancel(t.id, "invalid accept"))
                self.set_state(t, "failed", "the receiver sent an invalid accept")
                return
        old = self._outgoing.pop(t.id, None)
        if old is not None and old.task is not None:
            old.task.cancel()
        out = Outgoing(t.id, frame.attempt, peer=peer)
        self._outgoing[t.id] = out
        self.store.set_transfer_files(
            t.id,
            [
                (f.index, {"accepted": int(any(i == f.index for i, _ in frame.offsets))})
                for f in t.files
            ],
        )
        self.set_state(t, "sending")
        out.task = self.track(self._send_attempt(peer, t, frame, out))

    async def _open_channel(
        self, conn: PeerConnection, t: Transfer, accept: chat.FileAccept, out: Outgoing
    ) -> tuple[DataSender, Sealer]:
        """Direct TCP if the receiver claims it, else a QUIC stream of the session.

        The key is the attempt's either way; a fallback gets a fresh secretstream
        header (safe with one key), and the receiver takes whichever channel
        presents the attempt first.
        """
        tid = bytes.fromhex(t.id)
        key = conn.session.export_key(KEY_LABEL, tid + accept.attempt)
        version = channel_version(t)
        if accept.tcp_port and conn.path != "relayed":  # the address is the relay's
            sealer = Sealer(key, tid, accept.attempt, version)
            host = str(conn.link.address[0])
            tcp = await TcpSender.open(host, accept.tcp_port, sealer.preamble)
            if tcp is not None:
                return tcp, sealer
            self.counters["tcp_fallbacks"] += 1
        if conn.closed:
            raise ConnectionError("session closed")
        sealer = Sealer(key, tid, accept.attempt, version)
        quic = QuicSender(conn, out)
        await quic.put(sealer.preamble)
        return quic, sealer

    async def _send_attempt(
        self, peer: str, t: Transfer, accept: chat.FileAccept, out: Outgoing
    ) -> None:
        conn = self.connection_for(peer)
        if conn is None:
            return
        files = {f.index: f for f in t.files}
        out.total = sum(files[i].size - off for i, off in accept.offsets)
        rate = Rate()
        channel: DataSender | None = None
        try:
            prefixed = None
            if channel_version(t) != VERSION:
                prefixed = await asyncio.to_thread(hash_prefixes_of, files, accept.offsets)
            channel, sealer = await self._open_channel(conn, t, accept, out)
            log.info("sending %s via %s (%d bytes)", t.id, channel.via, out.total)
            async for record, length in sealed_records(
                sealer, files, accept.offsets, out.digests, prefixed
            ):
                await channel.put(record)
                out.sent += length
                if rate.due(out.sent) or length == 0:  # the FINAL record: always report
                    self.emit(TransferProgress(t.id, peer, "out", out.sent, out.total, rate.rate))
            await channel.finish()
        except TransferError as exc:
            self._send(peer, chat.FileCancel(t.id, str(exc)[:200]))
            why = str(exc)
            with self.guarded(t.id, lambda: self.set_state(t, "failed", why)):
                self.set_state(t, "failed", why)
        except OSError as exc:  # ConnectionError and TimeoutError included
            # The receiver notices too (end of channel, or its read deadline) and asks
            # again with a fresh attempt while the session lives.
            log.info("transfer %s attempt interrupted: %s", t.id, exc)
        finally:
            with self.guarded():  # only the byte count misses this attempt
                self.store.add_transfer_bytes(t.id, out.sent, now=self.clock())
            if channel is not None:
                await channel.close()

    def progress(self, transfer_id: str) -> tuple[int, int] | None:
        """(bytes moved, bytes to move) of the running attempt, if one runs."""
        out = self._outgoing.get(transfer_id)
        if out is not None:
            return out.sent, out.total
        return self.receiver.progress(transfer_id)

    def _on_progress(self, peer: str, frame: chat.FileProgress) -> None:
        out = self._outgoing.get(frame.id)
        if out is not None and out.attempt == frame.attempt:
            out.ack(frame.received)

    def _on_result(self, peer: str, frame: chat.FileResult) -> None:
        t = self.store.get_transfer(frame.id)
        if t is None or t.peer_id != peer or t.direction != "out" or t.state in TERMINAL:
            return
        out = self._outgoing.pop(t.id, None)
        if frame.ok:
            if out is not None and out.digests and channel_version(t) != VERSION:
                # The receiver verified what the last record said: the sender's record
                # of the transfer now shows the hashes too (it is over, so no re-offer
                # can change its form).
                self.store.set_transfer_files(
                    t.id, [(index, {"hash": h}) for index, h in out.digests.items()]
                )
            self.set_state(t, "done")
        else:
            self.set_state(t, "failed", frame.error or "the receiver could not verify the files")

    # ------------------------------------------------------------- receiver
    def _on_offer(self, peer: str, frame: chat.FileOffer) -> None:
        t = self.store.get_transfer(frame.id)
        if t is not None:
            if t.peer_id != peer or t.direction != "in":
                return
            self._answer_known(t)
            return
        # Every new offer spends from the contact's budget, whatever becomes of it:
        # an offer cancelled at once still cost us a check and rows.
        if not self._offer_budget.allow(peer, time.monotonic()):
            pace = self._offer_budget.describe()
            self._refuse(peer, frame, f"too many offers ({pace})", quiet=True)
            return
        reason = self._offer_refusal(peer, frame)
        if reason is not None:
            self._refuse(peer, frame, reason)
            return
        t = self.store.create_transfer(
            frame.id,
            peer,
            direction="in",
            state="pending",
            files=[(f.path, f.size, f.hash or b"", None) for f in frame.files],
            now=self.clock(),
        )
        self.emit(
            TransferOffered(t.id, peer, tuple((f.path, f.size) for f in frame.files), frame.total)
        )
        self._maybe_accept(t)

    def _maybe_accept(self, t: Transfer) -> None:
        """Accept a pending offer of a contact the user trusts with files."""
        if "contacts" in self.policy.accept_from or t.peer_id in self.policy.accept_from:
            try:
                self.accept(t.id)
            except TransferError as exc:
                self.decline(t.id, str(exc))

    def _offer_refusal(self, peer: str, frame: chat.FileOffer) -> str | None:
        """Why a new offer cannot be taken, or None (after making room for it)."""
        if len(frame.files) > MAX_FILES_PER_OFFER:
            count = len(frame.files)
            return f"too many files in one offer ({count}, at most {MAX_FILES_PER_OFFER})"
        try:
            check_offer(frame.files)
        except UnsafePath as exc:
            return f"unsafe file name: {exc}"
        limit = min(self.policy.max_incoming, self.policy.per_contact_max.get(peer, 1 << 62))
        if frame.total > limit:
            return f"too large ({frame.total} bytes, limit {limit})"
        pending, _ = self.store.transfer_usage(direction="in", peer_id=peer, states=["pending"])
        if pending >= MAX_PENDING_OFFERS_PER_PEER:
            return f"too many pending offers (at most {MAX_PENDING_OFFERS_PER_PEER})"
        pending, _ = self.store.transfer_usage(direction="in", states=["pending"])
        if pending >= MAX_PENDING_OFFERS:
            return f"too many offers waiting for an answer (at most {MAX_PENDING_OFFERS} in all)"
        return self._make_room(peer, len(frame.files))

    def _make_room(self, peer: str, files: int) -> str | None:
        """Keep stored incoming transfers within the contact's and the global budget:
        the least recently finished ones go first; unfinished ones are never deleted,
        so when they alone fill the budget the offer is refused."""
        for scope, max_transfers, max_files, whose in (
            (peer, MAX_STORED_PER_CONTACT, MAX_STORED_FILES_PER_CONTACT, "from you"),
            (None, MAX_STORED, MAX_STORED_FILES, "in all"),
        ):
            count, rows = self.store.transfer_usage(direction="in", peer_id=scope)
            over_transfers = count + 1 - max_transfers
            over_files = rows + files - max_files
            if over_transfers <= 0 and over_files <= 0:
                continue
            self.counters["transfers_pruned"] += self.store.prune_transfers(
                direction="in",
                states=TERMINAL,
                transfers=max(0, over_transfers),
                files=max(0, over_files),
                peer_id=scope,
            )
            count, rows = self.store.transfer_usage(direction="in", peer_id=scope)
            if count + 1 > max_transfers or rows + files > max_files:
                return (
                    f"too many unfinished transfers {whose} (at most {max_transfers} transfers"
                    f" and {max_files} files kept): finish or cancel some first"
                )
        return None

    def _refuse(
        self, peer: str, frame: chat.FileOffer, reason: str, *, quiet: bool = False
    ) -> None:
        self.counters["offers_refused"] += 1
        # Refusals beyond the rate budget are not logged one by one: a flood of
        # offers must not become a flood of log lines.
        (log.debug if quiet else log.warning)(
            "refused a file offer from %s: %s", peer, reason
        )
        self._send(peer, chat.FileDecline(frame.id, reason[:200]))

    def _answer_known(self, t: Transfer) -> None:
        """The sender re-offers after a reconnect: resume, or repeat our answer."""
        if t.state in RESUMABLE_IN:
            self.request_data(t)
        elif t.state == "pending":
            self._maybe_accept(t)  # stored, but a failed write stopped the acceptance
        elif t.state == "done":
            self._send(t.peer_id, chat.FileResult(t.id, True))
        elif t.state == "declined":
            self._send(t.peer_id, chat.FileDecline(t.id, t.error or "declined"))
        elif t.state == "cancelled":
            self._send(t.peer_id, chat.FileCancel(t.id, t.error or "cancelled by the receiver"))
        elif t.state == "failed":
            self._send(t.peer_id, chat.FileResult(t.id, False, (t.error or "failed")[:200]))

    def accept(
        self, transfer_id: str, *, only: list[int] | None = None, folder: Path | None = None
    ) -> Transfer:
        t = self._incoming_transfer(transfer_id)
        if t.state != "pending":
            raise TransferError(f"transfer {transfer_id} is {t.state}, not pending")
        target = (folder or self.policy.downloads).expanduser().resolve()
        target.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        chosen = set(range(len(t.files))) if only is None else set(only)
        if not chosen or not chosen <= set(range(len(t.files))):
            raise TransferError("choose at least one of the offered files")
        self._check_space(target, sum(f.size for f in t.files if f.index in chosen))
        staging = target / STAGING / t.id
        make_folders(target, staging)
        parts = check_offer(tuple(chat.FileEntry(f.path, f.size, f.hash) for f in t.files))
        roots = choose_roots(target, {p[0] for i, p in enumerate(parts) if i in chosen})
        updates = []
        for f, p in zip(t.files, parts, strict=True):
            final = target.joinpath(roots[p[0]], *p[1:])
            updates.append(
                (
                    f.index,
                    {
                        "accepted": int(f.index in chosen),
                        "part": str(staging / f"{f.index}.part"),
                        "final": str(final),
                    },
                )
            )
        self.store.set_transfer_files(t.id, updates)
        self.store.set_transfer_folder(t.id, str(target))
        t = self._incoming_transfer(transfer_id)
        self.set_state(t, "accepted")
        self.request_data(t)
        return t

    def _check_space(self, target: Path, need: int) -> None:
        """Room for ``need`` more bytes, after what accepted transfers still have to
        write on that file system and a margin kept free for everything else."""
        free = shutil.disk_usage(target).free
        reserved = 0
        devices: dict[str, bool] = {}
        for folder, part, size in self.store.running_incoming_files():
            if folder is not None:
                if folder not in devices:
                    devices[folder] = same_device(folder, target)
                if not devices[folder]:
                    continue
            have = 0
            if part is not None:
                with contextlib.suppress(OSError):
                    have = os.stat(part).st_size
            reserved += max(0, size - have)
        if need + DISK_MARGIN > free - reserved:
            promised = f", {reserved} of them promised to transfers under way" if reserved else ""
            raise TransferError(
                f"not enough disk space ({need} bytes needed plus {DISK_MARGIN >> 20} MiB kept"
                f" free; {free} bytes free{promised})"
            )

    def decline(self, transfer_id: str, reason: str = "declined") -> None:
        t = self._incoming_transfer(transfer_id)
        if t.state in TERMINAL:
            return
        self._send(t.peer_id, chat.FileDecline(t.id, reason[:200]))
        self.set_state(t, "declined", reason)
        self._drop_parts(t)

    def cancel(self, transfer_id: str, reason: str = "cancelled") -> None:
        t = self.store.get_transfer(transfer_id)
        if t is None:
            raise TransferError(f"no transfer {transfer_id}")
        if t.state in TERMINAL:
            return
        self._send(t.peer_id, chat.FileCancel(t.id, reason[:200]))
        self._stop_local(t)
        self.set_state(t, "cancelled", reason)

    def _stop_local(self, t: Transfer) -> None:
        out = self._outgoing.pop(t.id, None)
        if out is not None and out.task is not None:
            out.task.cancel()
        self.receiver.forget(t.id)
        if t.direction == "in":
            self._drop_parts(t)

    def _incoming_transfer(self, transfer_id: str) -> Transfer:
        t = self.store.get_transfer(transfer_id)
        if t is None or t.direction != "in":
            raise TransferError(f"no incoming transfer {transfer_id}")
        return t

    def request_data(self, t: Transfer) -> None:
        """Ask for what is missing, with a fresh attempt (and fresh keys)."""
        conn = self.connection_for(t.peer_id)
        if conn is None:
            return
        if t.attempts >= MAX_ATTEMPTS * 4:
            self.fail_incoming(t, "too many interrupted attempts")
            return
        plan = []
        for f in t.files:
            if f.accepted and not f.done:
                plan.append((f.index, min(part_size(f), f.size), f.size))
        attempt = secrets.token_bytes(16)
        # The write first: if it fails, no attempt waits for a channel never asked for.
        self.store.bump_transfer_attempts(t.id, now=self.clock())
        self.receiver.expect(t, conn, plan, attempt)
        # After repeated failures of the direct path, stay on the session's QUIC; a
        # punched session crossed a NAT that lets in nothing else (docs/nat.md), so a
        # TCP connection to our port could only time out, and through a relay the
        # address is the relay's.
        direct = t.attempts < 2 and conn.path not in ("punched", "relayed")
        port = self.tcp_port if direct else 0
        conn.send(chat.FileAccept(t.id, tuple((i, off) for i, off, _ in plan), attempt, port))

    def resume(self, transfer_id: str) -> None:
        """Ask again for an incoming transfer whose attempt a failed write ended,
        unless it has moved on meanwhile (a new attempt, a cancel, an offline peer)."""
        t = self.store.get_transfer(transfer_id)
        if t is None or t.direction != "in" or t.state not in RESUMABLE_IN:
            return
        if self.receiver.has_attempt(transfer_id) or self.connection_for(t.peer_id) is None:
            return
        self.request_data(t)

    def retry_bad_channel(self, t: Transfer, why: str) -> None:
        """A channel of ``t`` brought bad data: a fresh attempt, up to ``MAX_ATTEMPTS``."""
        if t.attempts >= MAX_ATTEMPTS:
            self.fail_incoming(t, f"data channel failed: {why}")
        else:
            self.request_data(t)

    def fail_incoming(self, t: Transfer, why: str) -> None:
        self._send(t.peer_id, chat.FileResult(t.id, False, why[:200]))
        self.set_state(t, "failed", why)
        self._drop_parts(t)

    def _drop_parts(self, t: Transfer) -> None:
        self.receiver.forget(t.id)
        fresh = self.store.get_transfer(t.id) or t
        for f in fresh.files:
            if f.part and not f.done:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f.part)
        remove_staging(fresh)

    # ------------------------------------------------------------- data
    def stream_data(self, conn: PeerConnection, stream_id: int, data: bytes, end: bool) -> None:
        """Bytes of a QUIC stream the peer opened (a data channel)."""
        self.receiver.stream_data(conn, stream_id, data, end)

    def connection_closed(self, conn: PeerConnection) -> None:
        self.receiver.connection_closed(conn)

    def peer_offline(self, peer_id: str, reason: str) -> None:
        """The contact's session ended: what was moving with them stops now and says
        so (``paused``, with the reason as its error) instead of showing its last
        rate until a data channel times out.  Both sides keep what they have and
        resume when a session is back (the sender re-offers, the receiver asks for
        the rest from its ``.part`` sizes).  A failed write leaves the states to a
        retry; the channels stop at once either way."""
        for transfer_id in [tid for tid, out in self._outgoing.items() if out.peer == peer_id]:
            out = self._outgoing.pop(transfer_id)
            if out.task is not None:
                out.task.cancel()  # its channel closes in the task's finally
        self.receiver.pause_peer(peer_id)

        def again() -> None:
            if self.connection_for(peer_id) is None:
                self._mark_paused(peer_id, reason)

        with self.guarded(f"offline:{peer_id}", again):
            self._mark_paused(peer_id, reason)

    def _mark_paused(self, peer_id: str, reason: str) -> None:
        for direction in ("in", "out"):
            ids = self.store.transfer_ids(
                direction=direction, states=RUNNING_STATES, peer_id=peer_id
            )
            for t in self.store.get_transfers(ids):
                self.set_state(t, PAUSED, reason)

    # ------------------------------------------------------------- frames
    def frame_received(self, peer: str, frame: chat.FileFrame) -> None:
        """A file frame from a contact; one a failed write stopped is handled again
        later (the latest frame of each transfer is kept), if the session that
        brought it still lives: a new session starts over with a re-offer."""
        conn = self.connection_for(peer)

        def again() -> None:
            if conn is not None and self.connection_for(peer) is conn:
                self.frame_received(peer, frame)

        with self.guarded(frame.id, again):
            self._frame_received(peer, frame)

    def _frame_received(self, peer: str, frame: chat.FileFrame) -> None:
        if isinstance(frame, chat.FileOffer):
            self._on_offer(peer, frame)
        elif isinstance(frame, chat.FileAccept):
            self._on_accept(peer, frame)
        elif isinstance(frame, chat.FileProgress):
            self._on_progress(peer, frame)
        elif isinstance(frame, chat.FileResult):
            self._on_result(peer, frame)
        elif isinstance(frame, (chat.FileDecline, chat.FileCancel)):
            t = self.store.get_transfer(frame.id)
            if t is None or t.peer_id != peer or t.state in TERMINAL:
                return
            self._stop_local(t)
            state = "declined" if isinstance(frame, chat.FileDecline) else "cancelled"
            self.set_state(t, state, frame.reason or state)

    def tick(self) -> None:
        """About once a second: steps failed writes stopped are tried again; pending
        offers nobody answered expire (the sender hears why)."""
        self._run_retries()
        with self.guarded():  # the next tick looks again
            expired = self.store.transfer_ids(
                direction="in",
                states=("pending",),
                created_before=self.clock() - self.policy.offer_timeout,
            )
            for transfer_id in expired:
                self.decline(transfer_id, "timeout: the offer was not answered")

    # ------------------------------------------------------------- listings
    def pending_offers(self, peer_id: str | None = None) -> list[Transfer]:
        """Every incoming offer waiting for an answer, newest first: not paged, since
        the offer budgets bound them (``MAX_PENDING_OFFERS`` in all, 16 per contact),
        so a flood of finished transfers never hides one."""
        return self.store.list_transfers(direction="in", states=["pending"], peer_id=peer_id)

    def page(
        self, peer_id: str | None, *, limit: int = PAGE_SIZE, before: str | None = None
    ) -> list[Transfer]:
        """Newest first, at most ``limit`` transfers (and at most ``PAGE_FILES`` file
        rows); the next page starts ``before`` the last id of this one."""
        if limit < 1:
            raise TransferError("limit must be at least 1")
        return self.store.list_transfers(
            peer_id=peer_id,
            limit=min(limit, MAX_PAGE_SIZE),
            before=before,
            max_files=PAGE_FILES,
        )

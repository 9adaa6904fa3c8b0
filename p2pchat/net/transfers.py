"""File drop on the wire: offers on the session, bytes on a data channel.

The offer/accept/result frames travel on the contact's authenticated session
(``core/chat.py``).  The bytes travel on a data channel chosen per attempt:

* a direct TCP connection to a port the receiver announces in its accept, when
  it can be reached (LAN, loopback): the kernel's TCP moves bulk data an order of
  magnitude faster than QUIC implemented in Python (docs/filedrop.md);
* otherwise a unidirectional QUIC stream of the same session.

Either way the content is sealed with secretstream under a key exported from
the session (``core/filedrop.py``), so the channel adds no trust: a stranger who
connects to the TCP port cannot produce a single record the receiver accepts.
Progress lives on disk: the receiver's ``.part`` files hold only authenticated
bytes, so a restart resumes from their sizes.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import logging
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from p2pchat.core import chat
from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError
from p2pchat.core.events import NodeEvent, TransferOffered, TransferProgress, TransferStateChanged
from p2pchat.core.filedrop import (
    CHUNK_SIZE,
    KEY_LABEL,
    PREAMBLE_SIZE,
    Opener,
    Sealer,
    UnsafePath,
    check_offer,
    new_hasher,
    parse_preamble,
)
from p2pchat.net.peer import PeerConnection
from p2pchat.store import Store, Transfer, TransferFile

log = logging.getLogger(__name__)

# Receiver -> sender progress every this many bytes; the QUIC path never has more
# than WINDOW unacknowledged bytes in flight (aioquic would buffer without limit).
PROGRESS_EVERY = 1 << 20
WINDOW = 8 << 20
OFFER_TIMEOUT = 15 * 60.0
TCP_CONNECT_TIMEOUT = 3.0
PREAMBLE_TIMEOUT = 10.0
MAX_UNCLAIMED_TCP = 16
MAX_ATTEMPTS = 5
DISK_MARGIN = 64 << 20
DEFAULT_MAX_INCOMING = 64 << 30
MAX_PENDING_OFFERS_PER_PEER = 16
EVENT_INTERVAL = 0.25
STAGING = ".p2pchat-incoming"

TERMINAL = ("done", "declined", "cancelled", "failed")


class TransferError(Exception):
    """A transfer request the user has to fix (missing file, unknown transfer...)."""


@dataclass(slots=True)
class TransferPolicy:
    downloads: Path
    accept_from: frozenset[str] = frozenset()
    """Peer IDs whose offers are accepted without asking; ``"contacts"`` means all."""
    max_incoming: int = DEFAULT_MAX_INCOMING
    per_contact_max: dict[str, int] = field(default_factory=dict)
    offer_timeout: float = OFFER_TIMEOUT


@dataclass(eq=False, slots=True)
class _Incoming:
    """One expected data channel (receiver side)."""

    transfer_id: str
    attempt: bytes
    conn: PeerConnection
    plan: list[tuple[int, int, int]]
    opener: Opener | None = None
    files: dict[int, BinaryIO] = field(default_factory=dict)
    hashers: dict[int, Any] = field(default_factory=dict)
    disk: _DiskQueue | None = None
    prepared: asyncio.Future[None] | None = None
    rate: _Rate = field(default_factory=lambda: _Rate())
    received: int = 0
    reported: int = 0
    started: float = 0.0
    via: str = ""


@dataclass(eq=False, slots=True)
class _Outgoing:
    transfer_id: str
    attempt: bytes
    acked: int = 0
    sent: int = 0
    total: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class _DiskQueue:
    """Disk writes and hashing on one worker thread, in order, a few records deep.

    The loop decrypts record n+1 while the thread writes and hashes record n
    (file writes, BLAKE3 and libsodium all release the GIL), which nearly doubles
    what one receiver moves on a two-core machine.
    """

    DEPTH = 8

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="p2pchat-disk")
        self._pending: collections.deque[asyncio.Future[None]] = collections.deque()

    async def submit(self, job: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        self._pending.append(loop.run_in_executor(self._pool, job))
        while len(self._pending) > self.DEPTH:
            await self._pending.popleft()

    async def drain(self) -> None:
        while self._pending:
            await self._pending.popleft()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


class _Rate:
    """Throttled progress events with a smoothed rate."""

    def __init__(self) -> None:
        self.last_t = time.monotonic()
        self.last_n = 0
        self.rate = 0.0

    def due(self, done: int) -> bool:
        now = time.monotonic()
        if now - self.last_t < EVENT_INTERVAL:
            return False
        self.rate = (done - self.last_n) / (now - self.last_t)
        self.last_t, self.last_n = now, done
        return True


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
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.emit = emit
        self.connection_for = connection_for
        self._server: asyncio.base_events.Server | None = None
        self.tcp_port = 0
        self._incoming: dict[tuple[str, bytes], _Incoming] = {}
        self._outgoing: dict[str, _Outgoing] = {}
        self._streams: dict[tuple[PeerConnection, int], _Incoming | None] = {}
        self._stream_buf: dict[tuple[PeerConnection, int], bytearray] = {}
        self._stream_queues: dict[
            tuple[PeerConnection, int], asyncio.Queue[tuple[bytes, bool]]
        ] = {}
        self._tcp_unclaimed = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------- lifetime
    async def start(self, host: str) -> None:
        """Listen for direct TCP data channels on the node's address."""
        try:
            self._server = await asyncio.start_server(
                self._tcp_client, host=host, port=0, limit=4 * CHUNK_SIZE
            )
        except OSError as exc:
            log.warning("no direct TCP data channel (%s): transfers use QUIC", exc)
            return
        self.tcp_port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for out in self._outgoing.values():
            if out.task is not None:
                out.task.cancel()
        for inc in list(self._incoming.values()):
            self._close_files(inc)
        self._incoming.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def _track(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _state(self, t: Transfer, state: str, error: str | None = None, **kw: Any) -> None:
        self.store.set_transfer_state(t.id, state, now=self.clock(), error=error)
        self.emit(TransferStateChanged(t.id, t.peer_id, t.direction, state, error, **kw))

    def _send(self, peer_id: str, frame: chat.ChatFrame) -> bool:
        conn = self.connection_for(peer_id)
        return conn.send(frame) if conn is not None else False

    # --------------------------------------------------------------- sender
    async def offer(self, peer_id: str, paths: list[Path]) -> Transfer:
        """Hash the files (in a thread: large files take a while) and offer them."""
        entries = await asyncio.to_thread(_collect, paths)
        if len(entries) > chat.MAX_OFFER_FILES:
            raise TransferError(f"too many files for one offer ({len(entries)})")
        transfer_id = secrets.token_hex(16)
        frame = chat.FileOffer(
            transfer_id, tuple(chat.FileEntry(rel, size, h) for rel, size, h, _src in entries)
        )
        try:
            chat.encode(frame)
        except LocalProtocolError as exc:
            raise TransferError(f"cannot offer these files: {exc}") from exc
        transfer = self.store.create_transfer(
            transfer_id, peer_id, direction="out", state="offered", files=entries, now=self.clock()
        )
        self.emit(TransferStateChanged(transfer_id, peer_id, "out", "offered"))
        self._send(peer_id, frame)
        return transfer

    def _offer_frame(self, t: Transfer) -> chat.FileOffer:
        return chat.FileOffer(t.id, tuple(chat.FileEntry(f.path, f.size, f.hash) for f in t.files))

    def peer_online(self, conn: PeerConnection) -> None:
        """A session with the peer came up: re-offer what is unfinished (resume)."""
        peer = conn.peer_id
        assert peer is not None
        for t in self.store.list_transfers(peer_id=peer, direction="out"):
            if t.state in ("offered", "accepted", "sending"):
                conn.send(self._offer_frame(t))
            elif t.state == "cancelled" and self.clock() - t.updated_at < 7 * 86400:
                conn.send(chat.FileCancel(t.id, t.error or "cancelled by the sender"))

    def _on_accept(self, peer: str, frame: chat.FileAccept) -> None:
        t = self.store.get_transfer(frame.id)
        if t is None or t.peer_id != peer or t.direction != "out":
            return
        if t.state not in ("offered", "accepted", "sending"):
            if t.state == "cancelled":
                self._send(peer, chat.FileCancel(t.id, t.error or "cancelled by the sender"))
            return
        files = {f.index: f for f in t.files}
        for index, offset in frame.offsets:
            if index not in files or offset > files[index].size:
                self._send(peer, chat.FileCancel(t.id, "invalid accept"))
                self._state(t, "failed", "the receiver sent an invalid accept")
                return
        old = self._outgoing.pop(t.id, None)
        if old is not None and old.task is not None:
            old.task.cancel()
        out = _Outgoing(t.id, frame.attempt)
        self._outgoing[t.id] = out
        self.store.set_transfer_files(
            t.id,
            [
                (f.index, {"accepted": int(any(i == f.index for i, _ in frame.offsets))})
                for f in t.files
            ],
        )
        self._state(t, "sending")
        out.task = self._track(self._send_attempt(peer, t, frame, out))

    async def _send_attempt(
        self, peer: str, t: Transfer, accept: chat.FileAccept, out: _Outgoing
    ) -> None:
        conn = self.connection_for(peer)
        if conn is None:
            return
        key = conn.session.export_key(KEY_LABEL, bytes.fromhex(t.id) + accept.attempt)
        sealer = Sealer(key, bytes.fromhex(t.id), accept.attempt)
        writer = await self._open_tcp(conn, accept.tcp_port) if accept.tcp_port else None
        via = "tcp" if writer is not None else "quic"
        stream_id = None if writer is not None else conn.open_uni_stream()
        files = {f.index: f for f in t.files}
        sent = 0
        rate = _Rate()
        total = sum(files[i].size - off for i, off in accept.offsets)
        out.total = total
        log.info("sending %s via %s (%d bytes)", t.id, via, total)

        async def put(data: bytes) -> None:
            nonlocal sent
            if writer is not None:
                writer.write(data)
                if writer.transport.get_write_buffer_size() > 4 * CHUNK_SIZE:
                    await writer.drain()
            else:
                assert stream_id is not None
                while sent - out.acked > WINDOW:
                    out.wake.clear()
                    await out.wake.wait()
                if conn.closed:
                    raise ConnectionError("session closed")
                conn.send_stream(stream_id, data)

        try:
            await put(sealer.preamble)
            async for record, length in _sealed_records(sealer, files, accept.offsets):
                await put(record)
                sent += length
                out.sent = sent
                if rate.due(sent) or length == 0:  # the FINAL record: always report the end
                    self.emit(TransferProgress(t.id, peer, "out", sent, total, rate.rate))
            if writer is not None:
                await writer.drain()
            else:
                assert stream_id is not None
                conn.send_stream(stream_id, b"", end=True)
        except TransferError as exc:
            self._send(peer, chat.FileCancel(t.id, str(exc)[:200]))
            self._state(t, "failed", str(exc))
        except (ConnectionError, OSError) as exc:
            log.info("transfer %s attempt interrupted: %s", t.id, exc)
        finally:
            self.store.add_transfer_bytes(t.id, sent, now=self.clock())
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _open_tcp(self, conn: PeerConnection, port: int) -> asyncio.StreamWriter | None:
        host = str(conn.link.address[0])
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), TCP_CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            log.info("direct TCP to %s:%d failed (%s): using QUIC", host, port, exc)
            return None
        return writer

    def progress(self, transfer_id: str) -> tuple[int, int] | None:
        """(bytes moved, bytes to move) of the running attempt, if one runs."""
        out = self._outgoing.get(transfer_id)
        if out is not None:
            return out.sent, out.total
        for (tid, _attempt), inc in self._incoming.items():
            if tid == transfer_id and inc.opener is not None:
                return inc.received, sum(size - off for _i, off, size in inc.plan)
        return None

    def _on_progress(self, peer: str, frame: chat.FileProgress) -> None:
        out = self._outgoing.get(frame.id)
        if out is not None and out.attempt == frame.attempt and frame.received > out.acked:
            out.acked = frame.received
            out.wake.set()

    def _on_result(self, peer: str, frame: chat.FileResult) -> None:
        t = self.store.get_transfer(frame.id)
        if t is None or t.peer_id != peer or t.direction != "out" or t.state in TERMINAL:
            return
        self._outgoing.pop(t.id, None)
        if frame.ok:
            self._state(t, "done")
        else:
            self._state(t, "failed", frame.error or "the receiver could not verify the files")

    # ------------------------------------------------------------- receiver
    def _on_offer(self, peer: str, frame: chat.FileOffer) -> None:
        t = self.store.get_transfer(frame.id)
        if t is not None:
            if t.peer_id != peer or t.direction != "in":
                return
            self._answer_known(t)
            return
        try:
            check_offer(frame.files)
        except UnsafePath as exc:
            self._refuse(peer, frame, f"unsafe file name: {exc}")
            return
        limit = min(self.policy.max_incoming, self.policy.per_contact_max.get(peer, 1 << 62))
        if frame.total > limit:
            self._refuse(peer, frame, f"too large ({frame.total} bytes, limit {limit})")
            return
        pending = self.store.list_transfers(peer_id=peer, direction="in", states=["pending"])
        if len(pending) >= MAX_PENDING_OFFERS_PER_PEER:
            self._refuse(peer, frame, "too many pending offers")
            return
        t = self.store.create_transfer(
            frame.id,
            peer,
            direction="in",
            state="pending",
            files=[(f.path, f.size, f.hash, None) for f in frame.files],
            now=self.clock(),
        )
        self.emit(
            TransferOffered(t.id, peer, tuple((f.path, f.size) for f in frame.files), frame.total)
        )
        if "contacts" in self.policy.accept_from or peer in self.policy.accept_from:
            try:
                self.accept(t.id)
            except TransferError as exc:
                self.decline(t.id, str(exc))

    def _refuse(self, peer: str, frame: chat.FileOffer, reason: str) -> None:
        log.warning("refused a file offer from %s: %s", peer, reason)
        self._send(peer, chat.FileDecline(frame.id, reason[:200]))

    def _answer_known(self, t: Transfer) -> None:
        """The sender re-offers after a reconnect: resume, or repeat our answer."""
        if t.state in ("accepted", "receiving"):
            self._request_data(t)
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
        target.mkdir(parents=True, exist_ok=True)
        chosen = set(range(len(t.files))) if only is None else set(only)
        if not chosen or not chosen <= set(range(len(t.files))):
            raise TransferError("choose at least one of the offered files")
        need = sum(f.size for f in t.files if f.index in chosen)
        free = shutil.disk_usage(target).free
        if need + DISK_MARGIN > free:
            raise TransferError(f"not enough disk space ({need} bytes needed, {free} free)")
        staging = target / STAGING / t.id
        staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        parts = check_offer(tuple(chat.FileEntry(f.path, f.size, f.hash) for f in t.files))
        roots = _choose_roots(target, {p[0] for i, p in enumerate(parts) if i in chosen})
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
        self._state(t, "accepted")
        self._request_data(t)
        return t

    def decline(self, transfer_id: str, reason: str = "declined") -> None:
        t = self._incoming_transfer(transfer_id)
        if t.state in TERMINAL:
            return
        self._send(t.peer_id, chat.FileDecline(t.id, reason[:200]))
        self._state(t, "declined", reason)
        self._drop_parts(t)

    def cancel(self, transfer_id: str, reason: str = "cancelled") -> None:
        t = self.store.get_transfer(transfer_id)
        if t is None:
            raise TransferError(f"no transfer {transfer_id}")
        if t.state in TERMINAL:
            return
        self._send(t.peer_id, chat.FileCancel(t.id, reason[:200]))
        self._stop_local(t)
        self._state(t, "cancelled", reason)

    def _stop_local(self, t: Transfer) -> None:
        out = self._outgoing.pop(t.id, None)
        if out is not None and out.task is not None:
            out.task.cancel()
        for key in [k for k in self._incoming if k[0] == t.id]:
            self._close_files(self._incoming.pop(key))
        if t.direction == "in":
            self._drop_parts(t)

    def _incoming_transfer(self, transfer_id: str) -> Transfer:
        t = self.store.get_transfer(transfer_id)
        if t is None or t.direction != "in":
            raise TransferError(f"no incoming transfer {transfer_id}")
        return t

    def _request_data(self, t: Transfer) -> None:
        """Ask for what is missing, with a fresh attempt (and fresh keys)."""
        conn = self.connection_for(t.peer_id)
        if conn is None:
            return
        if t.attempts >= MAX_ATTEMPTS * 4:
            self._fail_incoming(t, "too many interrupted attempts")
            return
        for key in [k for k in self._incoming if k[0] == t.id]:
            self._close_files(self._incoming.pop(key))
        plan = []
        for f in t.files:
            if f.accepted and not f.done:
                have = _part_size(f)
                plan.append((f.index, min(have, f.size), f.size))
        attempt = secrets.token_bytes(16)
        inc = _Incoming(t.id, attempt, conn, plan, started=time.monotonic())
        self._incoming[(t.id, attempt)] = inc
        self.store.bump_transfer_attempts(t.id, now=self.clock())
        # After repeated failures of the direct path, stay on the session's QUIC.
        port = self.tcp_port if t.attempts < 2 else 0
        conn.send(chat.FileAccept(t.id, tuple((i, off) for i, off, _ in plan), attempt, port))

    # ----------------------------------------------------------- data path
    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        inc: _Incoming | None = None
        self._tcp_unclaimed += 1
        try:
            if self._tcp_unclaimed > MAX_UNCLAIMED_TCP:
                return  # somebody is opening connections without a transfer to carry
            try:
                preamble = await asyncio.wait_for(
                    reader.readexactly(PREAMBLE_SIZE), PREAMBLE_TIMEOUT
                )
            finally:
                self._tcp_unclaimed -= 1
            inc = self._claim(preamble, "tcp")
            if inc is None:
                return
            while True:
                prefix = await reader.readexactly(4)
                sealed = await reader.readexactly(Opener.record_length(prefix))
                assert inc.opener is not None
                record = inc.opener.open_record(sealed)
                if not await self._store_record(inc, record.index, record.offset, record.data):
                    return
                if record.final:
                    await self._finish(inc)
                    return
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            if inc is not None:
                self._interrupted(inc, "the data connection ended early")
        except RemoteProtocolError as exc:
            if inc is not None:
                await self._channel_failed(inc, str(exc))
        except OSError as exc:
            if inc is not None:
                self._disk_failed(inc, exc)
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    def stream_data(self, conn: PeerConnection, stream_id: int, data: bytes, end: bool) -> None:
        """Bytes of a QUIC stream the peer opened for a transfer.

        Each stream gets one consumer task fed through a queue, so its records are
        handled strictly in order even while a disk write or a hash is awaited.
        """
        key = (conn, stream_id)
        if key not in self._streams:
            if sum(1 for c, _ in self._streams if c is conn) >= 4:
                conn.close("too many data streams")
                return
            self._streams[key] = None
            self._stream_buf[key] = bytearray()
        inc = self._streams[key]
        if inc is None:
            buf = self._stream_buf[key]
            buf += data
            if len(buf) < PREAMBLE_SIZE:
                if end:
                    self._forget_stream(key)
                return
            inc = self._claim(bytes(buf[:PREAMBLE_SIZE]), "quic", conn)
            if inc is None:
                self._forget_stream(key)
                return
            self._streams[key] = inc
            data = bytes(buf[PREAMBLE_SIZE:])
            del self._stream_buf[key]
            queue: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()
            self._stream_queues[key] = queue
            self._track(self._stream_consumer(key, inc, queue))
        self._stream_queues[key].put_nowait((data, end))

    async def _stream_consumer(
        self,
        key: tuple[PeerConnection, int],
        inc: _Incoming,
        queue: asyncio.Queue[tuple[bytes, bool]],
    ) -> None:
        try:
            while True:
                data, end = await queue.get()
                assert inc.opener is not None
                for record in inc.opener.feed(data):
                    if not await self._store_record(
                        inc, record.index, record.offset, record.data
                    ):
                        return
                    if record.final:
                        await self._finish(inc)
                        return
                if end:
                    self._interrupted(inc, "the data stream ended early")
                    return
        except RemoteProtocolError as exc:
            await self._channel_failed(inc, str(exc))
        except OSError as exc:
            self._disk_failed(inc, exc)
        finally:
            self._forget_stream(key)

    def _forget_stream(self, key: tuple[PeerConnection, int]) -> None:
        self._streams.pop(key, None)
        self._stream_buf.pop(key, None)
        self._stream_queues.pop(key, None)

    def connection_closed(self, conn: PeerConnection) -> None:
        for key in [k for k in self._streams if k[0] is conn]:
            queue = self._stream_queues.get(key)
            if queue is not None:
                queue.put_nowait((b"", True))  # its consumer reports the interruption
            else:
                self._forget_stream(key)

    def _claim(
        self, preamble: bytes, via: str, conn: PeerConnection | None = None
    ) -> _Incoming | None:
        try:
            p = parse_preamble(preamble)
        except RemoteProtocolError:
            return None
        inc = self._incoming.get((p.transfer_id.hex(), p.attempt))
        if inc is None or inc.opener is not None or (conn is not None and conn is not inc.conn):
            return None
        if inc.conn.closed:
            return None
        key = inc.conn.session.export_key(KEY_LABEL, p.transfer_id + p.attempt)
        try:
            inc.opener = Opener(key, p.header, inc.plan)
        except RemoteProtocolError:
            return None
        t = self.store.get_transfer(inc.transfer_id)
        if t is None or t.state not in ("accepted", "receiving"):
            return None
        inc.via = via
        self._open_files(inc, t)
        if t.state != "receiving":
            self._state(t, "receiving")
        return inc

    def _open_files(self, inc: _Incoming, t: Transfer) -> None:
        files = {f.index: f for f in t.files}
        for index, offset, _size in inc.plan:
            f = files[index]
            part = Path(_part(f))
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
            fh = os.fdopen(fd, "r+b")
            fh.truncate(offset)
            inc.files[index] = fh
            inc.hashers[index] = new_hasher()
        # What a resumed .part already holds is hashed on a thread before any new
        # record lands, so a large resume does not stall every session of the node.
        inc.prepared = asyncio.ensure_future(asyncio.to_thread(_hash_prefixes, inc))

    async def _store_record(
        self, inc: _Incoming, index: int, offset: int, data: bytes | memoryview
    ) -> bool:
        if inc.prepared is not None:
            await inc.prepared
            inc.prepared = None
        if data:
            fh = inc.files[index]
            hasher = inc.hashers[index]

            def job(fh: BinaryIO = fh, hasher: Any = hasher, data: Any = data) -> None:
                fh.write(data)
                hasher.update(data)

            if inc.disk is None:
                inc.disk = _DiskQueue()
            await inc.disk.submit(job)
            inc.received += len(data)
            size = next(s for i, _o, s in inc.plan if i == index)
            if offset + len(data) == size and not await self._complete_file(inc, index):
                return False
            if inc.received - inc.reported >= PROGRESS_EVERY:
                # The frame every MiB is flow control; the event is for people, so it
                # goes out at most every EVENT_INTERVAL, like the sender's.
                inc.reported = inc.received
                inc.conn.send(chat.FileProgress(inc.transfer_id, inc.attempt, inc.received))
                if inc.rate.due(inc.received):
                    total = sum(s - o for _i, o, s in inc.plan)
                    self.emit(
                        TransferProgress(
                            inc.transfer_id,
                            inc.conn.peer_id or "",
                            "in",
                            inc.received,
                            total,
                            inc.rate.rate,
                        )
                    )
        return True

    async def _complete_file(self, inc: _Incoming, index: int) -> bool:
        """Verify the hash before the file may take its final name."""
        if inc.disk is not None:
            await inc.disk.drain()
        fh = inc.files.pop(index)

        def settle(fh: BinaryIO = fh) -> None:
            fh.flush()
            os.fsync(fh.fileno())  # durable before it may take its final name
            fh.close()

        await asyncio.get_running_loop().run_in_executor(None, settle)
        t = self.store.get_transfer(inc.transfer_id)
        assert t is not None
        f = t.files[index]
        if inc.hashers.pop(index).digest() != f.hash:
            self._fail_incoming(t, f"{f.path}: content hash mismatch, file discarded")
            self._incoming.pop((inc.transfer_id, inc.attempt), None)
            self._close_files(inc)
            return False
        final = _publish(Path(_part(f)), Path(f.final or ""))
        self.store.set_transfer_files(t.id, [(index, {"done": 1, "final": str(final)})])
        return True

    async def _finish(self, inc: _Incoming) -> None:
        self._incoming.pop((inc.transfer_id, inc.attempt), None)
        t = self.store.get_transfer(inc.transfer_id)
        assert t is not None
        if inc.prepared is not None:
            await inc.prepared
            inc.prepared = None
        # Files that were complete before this attempt (or empty) still need verifying.
        for f in t.files:
            if f.accepted and not f.done:
                if f.size == 0:
                    Path(_part(f)).touch()
                if await asyncio.to_thread(_hash_file, Path(_part(f))) != f.hash:
                    self._fail_incoming(t, f"{f.path}: content hash mismatch, file discarded")
                    return
                final = _publish(Path(_part(f)), Path(f.final or ""))
                self.store.set_transfer_files(t.id, [(f.index, {"done": 1, "final": str(final)})])
        self.store.add_transfer_bytes(t.id, inc.received, now=self.clock())
        elapsed = max(time.monotonic() - inc.started, 1e-9)
        log.info(
            "received %s: %d bytes via %s, %.1f MB/s since the accept",
            t.id,
            inc.received,
            inc.via,
            inc.received / elapsed / 1e6,
        )
        t = self.store.get_transfer(t.id)
        assert t is not None
        self._state(t, "done", paths=tuple(f.final or "" for f in t.files if f.accepted))
        inc.conn.send(chat.FileResult(t.id, True))
        _remove_staging(t)

    def _interrupted(self, inc: _Incoming, why: str) -> None:
        """The channel died (peer restarted, link dropped): keep parts, resume later."""
        log.info("transfer %s interrupted: %s", inc.transfer_id, why)
        self.store.add_transfer_bytes(inc.transfer_id, inc.received, now=self.clock())
        self._incoming.pop((inc.transfer_id, inc.attempt), None)
        self._close_files(inc)

    async def _channel_failed(self, inc: _Incoming, why: str) -> None:
        """Bad data on the channel: nothing unauthenticated was written; retry fresh."""
        log.warning("transfer %s: data channel failed: %s", inc.transfer_id, why)
        self._interrupted(inc, why)
        t = self.store.get_transfer(inc.transfer_id)
        if t is None or t.state not in ("accepted", "receiving"):
            return
        if t.attempts >= MAX_ATTEMPTS:
            self._fail_incoming(t, f"data channel failed: {why}")
        else:
            self._request_data(t)

    def _disk_failed(self, inc: _Incoming, exc: OSError) -> None:
        """Disk full, folder gone, permissions: nothing the sender can fix by retrying."""
        log.error("transfer %s: cannot write: %s", inc.transfer_id, exc)
        self._incoming.pop((inc.transfer_id, inc.attempt), None)
        self._close_files(inc)
        t = self.store.get_transfer(inc.transfer_id)
        if t is not None and t.state not in TERMINAL:
            self._fail_incoming(t, f"cannot write the file: {exc.strerror or exc}")

    def _fail_incoming(self, t: Transfer, why: str) -> None:
        self._send(t.peer_id, chat.FileResult(t.id, False, why[:200]))
        self._state(t, "failed", why)
        self._drop_parts(t)

    def _close_files(self, inc: _Incoming) -> None:
        if inc.disk is not None:
            inc.disk.close()  # waits for queued writes: never close a file under them
            inc.disk = None
        handles = list(inc.files.values())
        inc.files.clear()

        def close(_: object = None) -> None:
            for fh in handles:
                with contextlib.suppress(OSError):
                    fh.close()

        if inc.prepared is not None and not inc.prepared.done():
            inc.prepared.add_done_callback(close)  # the hashing thread still reads them
        else:
            close()

    def _drop_parts(self, t: Transfer) -> None:
        for key in [k for k in self._incoming if k[0] == t.id]:
            self._close_files(self._incoming.pop(key))
        fresh = self.store.get_transfer(t.id) or t
        for f in fresh.files:
            if f.part and not f.done:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f.part)
        _remove_staging(fresh)

    # ------------------------------------------------------------- frames
    def frame_received(self, peer: str, frame: chat.FileFrame) -> None:
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
            self._state(t, state, frame.reason or state)

    def tick(self) -> None:
        """Pending offers nobody answered expire; the sender hears why."""
        now = self.clock()
        for t in self.store.list_transfers(direction="in", states=["pending"]):
            if now - t.created_at > self.policy.offer_timeout:
                self.decline(t.id, "timeout: the offer was not answered")


# --------------------------------------------------------------- file helpers
async def _sealed_records(
    sealer: Sealer, files: dict[int, TransferFile], offsets: tuple[tuple[int, int], ...]
) -> AsyncIterator[tuple[bytes, int]]:
    """Read and seal on a worker thread, a few records ahead of the socket.

    Yields (record, plaintext bytes); the last record is the FINAL one.  Reading
    and sealing release the GIL, so the loop keeps the socket busy meanwhile.
    """
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="p2pchat-read")
    pending: collections.deque[asyncio.Future[tuple[bytes, int]]] = collections.deque()
    handles: list[BinaryIO] = []

    def read_seal(fh: BinaryIO, index: int, position: int, want: int) -> tuple[bytes, int]:
        chunk = fh.read(want)
        if len(chunk) != want:
            raise TransferError("a file shrank while sending")
        return sealer.seal(index, position, chunk), want

    try:
        for index, offset in sorted(offsets):
            entry = files[index]
            source: BinaryIO = open(_source(entry), "rb")  # closed in finally
            handles.append(source)
            if os.fstat(source.fileno()).st_size != entry.size:
                raise TransferError(f"{entry.path} changed since it was offered")
            source.seek(offset)
            position = offset
            while position < entry.size:
                want = min(CHUNK_SIZE, entry.size - position)
                pending.append(loop.run_in_executor(pool, read_seal, source, index, position, want))
                position += want
                if len(pending) >= 4:
                    yield await pending.popleft()
        while pending:
            yield await pending.popleft()
        yield sealer.seal(0, 0, b"", final=True), 0
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        for handle in handles:
            handle.close()


def _collect(paths: list[Path]) -> list[tuple[str, int, bytes, str | None]]:
    """Files to offer: each path is a file, or a folder sent with its structure."""
    entries: list[tuple[str, int, bytes, str | None]] = []
    for path in paths:
        path = path.expanduser()
        if not path.exists():
            raise TransferError(f"{path}: no such file or folder")
        if path.is_dir():
            root = path.resolve()
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    full = Path(dirpath) / name
                    if full.is_symlink() or not full.is_file():
                        continue
                    rel = full.relative_to(root.parent).as_posix()
                    entries.append((rel, full.stat().st_size, _hash_file(full), str(full)))
        elif path.is_file():
            full = path.resolve()
            entries.append((full.name, full.stat().st_size, _hash_file(full), str(full)))
        else:
            raise TransferError(f"{path}: not a regular file or folder")
    if not entries:
        raise TransferError("nothing to send (empty folder?)")
    return entries


def _hash_prefixes(inc: _Incoming) -> None:
    """Feed each resumed file's hasher with what its .part already holds."""
    for index, offset, _size in inc.plan:
        fh, hasher = inc.files[index], inc.hashers[index]
        fh.seek(0)
        remaining = offset
        while remaining:
            block = fh.read(min(remaining, 4 << 20))
            if not block:
                break
            hasher.update(block)
            remaining -= len(block)
        fh.seek(offset)


def _hash_file(path: Path) -> bytes:
    hasher = new_hasher()
    with open(path, "rb") as fh:
        while block := fh.read(4 << 20):
            hasher.update(block)
    return hasher.digest()


def _source(entry: TransferFile) -> str:
    if entry.source is None:
        raise TransferError(f"{entry.path}: source file unknown")
    return entry.source


def _part(entry: TransferFile) -> str:
    if entry.part is None:
        raise TransferError(f"{entry.path}: no part file assigned")
    return entry.part


def _part_size(entry: TransferFile) -> int:
    try:
        return os.stat(_part(entry)).st_size
    except FileNotFoundError:
        return 0


def _with_suffix(path: Path, n: int) -> Path:
    if path.suffix and path.stem:
        return path.with_name(f"{path.stem} ({n}){path.suffix}")
    return path.with_name(f"{path.name} ({n})")


def _choose_roots(folder: Path, roots: set[str]) -> dict[str, str]:
    """Top-level names that clash with what is already there get " (1)", " (2)"..."""
    chosen: dict[str, str] = {}
    for root in sorted(roots):
        candidate = folder / root
        n = 0
        while candidate.exists() or candidate.name in chosen.values():
            n += 1
            candidate = _with_suffix(folder / root, n)
        chosen[root] = candidate.name
    return chosen


def _publish(part: Path, final: Path) -> Path:
    """Give a verified file its name, never replacing anything that exists."""
    final.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = final, 0
    while True:
        try:
            os.link(part, candidate)  # fails if the name exists: no silent overwrite
            break
        except FileExistsError:
            n += 1
            candidate = _with_suffix(final, n)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP):
                raise
            if candidate.exists():
                n += 1
                candidate = _with_suffix(final, n)
                continue
            os.rename(part, candidate)
            return candidate
    os.unlink(part)
    return candidate


def _remove_staging(t: Transfer) -> None:
    if t.folder:
        with contextlib.suppress(OSError):
            (Path(t.folder) / STAGING / t.id).rmdir()
        with contextlib.suppress(OSError):
            (Path(t.folder) / STAGING).rmdir()

"""File drop, receiving side: the data channels that bring a transfer's bytes.

``TransferManager`` (``transfers.py``) agrees on a transfer over the session and
asks for data with a fresh attempt; ``DataReceiver`` waits for that attempt's
channel on the TCP data port or on a QUIC stream of the session, opens the
sealed records, writes and hashes them on a worker thread, and publishes the
transfer whole after its final record.  Every path out of an attempt (done,
ended early, silent, bad data, disk error, superseded, a database write that
failed) goes through one of a few methods that release what it holds and tell the
manager.  A ``StoreError`` never leaves a channel's task or the QUIC event handler:
the attempt ends with its parts kept, and the manager asks again once the
database writes (``TransferManager.store_failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from p2pchat.core import chat
from p2pchat.core.errors import RemoteProtocolError
from p2pchat.core.events import NodeEvent, TransferProgress
from p2pchat.core.filedrop import (
    KEY_LABEL,
    PREAMBLE_SIZE,
    RESUMABLE_IN,
    VERSION,
    Opener,
    new_hasher,
    parse_preamble,
)
from p2pchat.net.peer import PeerConnection
from p2pchat.net.transfer_channels import CLAIMED, Rate, TcpGate, source_key
from p2pchat.net.transfer_files import (
    DiskQueue,
    channel_version,
    hash_file,
    hash_part_prefixes,
    hash_prefixes,
    part_path,
    publish_all,
    remove_staging,
    write_behind,
)
from p2pchat.store import Store, StoreError, Transfer

log = logging.getLogger(__name__)

# Receiver -> sender progress every this many bytes (flow control on QUIC).
PROGRESS_EVERY = 1 << 20
MAX_STREAMS_PER_CONNECTION = 4
MAX_QUEUED_STREAM_BYTES = 16 << 20
"""Bytes of one QUIC data stream waiting for its consumer.  An honest sender keeps at
most 8 MiB beyond the last progress report (``WINDOW``), and reports come every MiB
stored, so more than this means it ignores the window: the channel fails."""


@dataclass(eq=False, slots=True)
class Attempt:
    """One attempt of an incoming transfer: the data channel we expect, then receive."""

    transfer_id: str
    attempt: bytes
    conn: PeerConnection
    plan: list[tuple[int, int, int]]
    opener: Opener | None = None
    files: dict[int, BinaryIO] = field(default_factory=dict)
    hashers: dict[int, Any] = field(default_factory=dict)
    verified: set[int] = field(default_factory=set)
    """Files of this attempt already checked against their offered hash (version 1)."""
    digests: dict[int, bytes] = field(default_factory=dict)
    """Version 2: hashes of the files completed in this attempt, checked against the
    FINAL record's."""
    version: int = VERSION
    disk: DiskQueue | None = None
    prepared: asyncio.Future[None] | None = None
    early: asyncio.Future[dict[int, Any]] | None = None
    """What the .part files already hold, hashed from the moment the attempt is
    asked for, while the sender prepares (it hashes the same prefixes)."""
    rate: Rate = field(default_factory=lambda: Rate())
    received: int = 0
    reported: int = 0
    started: float = 0.0
    via: str = ""


class Deadlines(Protocol):
    @property
    def preamble_timeout(self) -> float: ...

    @property
    def data_idle_timeout(self) -> float: ...


class ReceiverHost(Protocol):
    """What the receiver needs from ``TransferManager``, which owns it (a protocol, so
    this module does not import the manager's)."""

    @property
    def store(self) -> Store: ...

    @property
    def policy(self) -> Deadlines: ...

    @property
    def counters(self) -> dict[str, int]: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def emit(self) -> Callable[[NodeEvent], None]: ...

    @property
    def connection_for(self) -> Callable[[str], PeerConnection | None]: ...

    def track(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    def adopt(self, task: asyncio.Task[Any]) -> None: ...

    def set_state(self, t: Transfer, state: str, error: str | None = None, **kw: Any) -> None: ...

    def request_data(self, t: Transfer) -> None: ...

    def retry_bad_channel(self, t: Transfer, why: str) -> None: ...

    def fail_incoming(self, t: Transfer, why: str) -> None: ...

    def resume(self, transfer_id: str) -> None: ...

    def store_failed(
        self,
        exc: StoreError,
        transfer_id: str | None = None,
        retry: Callable[[], None] | None = None,
    ) -> None: ...


class DataReceiver:
    """The data channels of every incoming transfer of one node."""

    def __init__(self, manager: ReceiverHost) -> None:
        self.manager = manager
        self.store = manager.store
        self.gate = TcpGate()
        self._incoming: dict[tuple[str, bytes], Attempt] = {}
        self._streams: dict[tuple[PeerConnection, int], Attempt | None] = {}
        self._stream_buf: dict[tuple[PeerConnection, int], bytearray] = {}
        self._stream_queues: dict[
            tuple[PeerConnection, int], asyncio.Queue[tuple[bytes | None, bool]]
        ] = {}
        self._stream_queued: dict[tuple[PeerConnection, int], int] = {}

    @property
    def policy(self) -> Deadlines:
        return self.manager.policy

    def expect(
        self,
        t: Transfer,
        conn: PeerConnection,
        plan: list[tuple[int, int, int]],
        attempt: bytes,
    ) -> None:
        """Wait for ``attempt`` of ``t``; earlier attempts of it are dropped.

        What the ``.part`` files already hold starts being hashed now, not when the
        channel arrives: the sender reads the same prefixes before it opens the
        channel, and a receiver that began only then would make the sender's first
        writes wait for it (a sender gives up after 30 s without progress).
        """
        self.forget(t.id)  # waits for the writes of earlier attempts
        inc = Attempt(t.id, attempt, conn, plan, started=time.monotonic())
        parts = {f.index: f.part for f in t.files if f.part}
        resumed = [(index, parts[index], offset) for index, offset, _ in plan if offset]
        if all(index in parts for index, _o, _s in plan) and resumed:
            inc.early = self.manager.track(asyncio.to_thread(hash_part_prefixes, resumed))
        self._incoming[(t.id, attempt)] = inc

    def forget(self, transfer_id: str) -> None:
        """Drop every attempt of a transfer (cancelled, failed, superseded)."""
        for key in [k for k in self._incoming if k[0] == transfer_id]:
            self._close_files(self._incoming.pop(key))

    def has_attempt(self, transfer_id: str) -> bool:
        return any(k[0] == transfer_id for k in self._incoming)

    def pause_peer(self, peer_id: str) -> None:
        """The contact went offline: end its transfers' attempts, keeping the parts
        (and counting what they brought) for the resume."""
        for key in [k for k, inc in self._incoming.items() if inc.conn.peer_id == peer_id]:
            inc = self._incoming.pop(key)
            self._close_files(inc)
            self._count_bytes(inc)

    def _count_bytes(self, inc: Attempt) -> None:
        """Add what an ended attempt brought to the transfer's byte count (statistics
        only: a failed write loses this attempt's share, nothing else)."""
        try:
            self.store.add_transfer_bytes(
                inc.transfer_id, inc.received, now=self.manager.clock()
            )
        except StoreError as exc:
            self.manager.store_failed(exc)

    def _store_failed(self, inc: Attempt, exc: StoreError) -> None:
        """A database write of this attempt failed: end it, keep its parts, and ask
        again with a fresh attempt once writes work (unless something newer has
        taken over meanwhile: ``TransferManager.resume``)."""
        if self._incoming.get((inc.transfer_id, inc.attempt)) is inc:
            del self._incoming[(inc.transfer_id, inc.attempt)]
        self._close_files(inc)
        tid = inc.transfer_id
        self.manager.store_failed(exc, tid, lambda: self.manager.resume(tid))

    def close(self) -> None:
        for inc in list(self._incoming.values()):
            self._close_files(inc)
        self._incoming.clear()

    def progress(self, transfer_id: str) -> tuple[int, int] | None:
        for (tid, _attempt), inc in self._incoming.items():
            if tid == transfer_id and inc.opener is not None:
                return inc.received, sum(size - off for _i, off, size in inc.plan)
        return None

    async def tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection to the TCP data port, from anyone."""
        task = asyncio.current_task()
        if task is not None:
            self.manager.adopt(task)
        try:
            inc = await self._tcp_claim(reader, writer)
            if inc is not None:
                writer.write(CLAIMED)
                await self._tcp_receive(inc, reader)
        except Exception:  # never let one connection's bug reach the node
            log.exception("TCP data connection failed")
        finally:
            writer.close()

    async def _tcp_claim(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Attempt | None:
        """The attempt this connection's preamble names, within the unclaimed caps
        and the preamble deadline; None closes the connection."""
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        with self.gate.admit(ip, expected=self._expects_channel_from(ip)) as admitted:
            if not admitted:
                self.manager.counters["tcp_refused"] += 1
                return None
            try:
                async with asyncio.timeout(self.policy.preamble_timeout):
                    preamble = await reader.readexactly(PREAMBLE_SIZE)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                self.manager.counters["tcp_no_preamble"] += 1
                return None
            inc = self._claim(preamble, "tcp")
            if inc is None:
                self.manager.counters["tcp_bad_preamble"] += 1
            return inc

    async def _tcp_receive(self, inc: Attempt, reader: asyncio.StreamReader) -> None:
        try:
            await self._tcp_records(inc, reader)
        except StoreError as exc:  # from any step, the handlers below included
            self._store_failed(inc, exc)

    async def _tcp_records(self, inc: Attempt, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                assert inc.opener is not None
                async with asyncio.timeout(self.policy.data_idle_timeout):
                    prefix = await reader.readexactly(4)
                    sealed = await reader.readexactly(inc.opener.record_length(prefix))
                record = inc.opener.open_record(sealed)
                if not await self._store_record(inc, record.index, record.offset, record.data):
                    return
                if record.final:
                    await self._finish(inc, record.hashes)
                    return
        except TimeoutError:
            self._went_silent(inc)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._interrupted(inc, "the data connection ended early")
        except RemoteProtocolError as exc:
            await self._channel_failed(inc, str(exc))
        except OSError as exc:
            self._disk_failed(inc, exc)

    def _expects_channel_from(self, ip: str) -> bool:
        """Whether a contact at this source has an attempt waiting for its channel."""
        key = source_key(ip)
        return any(
            inc.opener is None and source_key(str(inc.conn.link.address[0])) == key
            for inc in self._incoming.values()
        )

    def stream_data(self, conn: PeerConnection, stream_id: int, data: bytes, end: bool) -> None:
        """Bytes of a QUIC stream the peer opened for a transfer.

        Each stream gets one consumer task fed through a queue, so its records are
        handled strictly in order even while a disk write or a hash is awaited.
        """
        key = (conn, stream_id)
        if key not in self._streams:
            if sum(1 for c, _ in self._streams if c is conn) >= MAX_STREAMS_PER_CONNECTION:
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
            fresh: asyncio.Queue[tuple[bytes | None, bool]] = asyncio.Queue()
            self._stream_queues[key] = fresh
            self.manager.track(self._stream_consumer(key, inc, fresh))
        queue = self._stream_queues.get(key)
        if queue is None:
            return  # overrun: dropped until its consumer has stopped
        queued = self._stream_queued.get(key, 0) + len(data)
        if queued > MAX_QUEUED_STREAM_BYTES:
            del self._stream_queues[key]
            queue.put_nowait((None, True))  # its consumer fails the channel
            return
        self._stream_queued[key] = queued
        queue.put_nowait((data, end))

    async def _stream_consumer(
        self,
        key: tuple[PeerConnection, int],
        inc: Attempt,
        queue: asyncio.Queue[tuple[bytes | None, bool]],
    ) -> None:
        try:
            await self._stream_records(key, inc, queue)
        except StoreError as exc:  # from any step, the handlers below included
            self._store_failed(inc, exc)
        finally:
            self._forget_stream(key)

    async def _stream_records(
        self,
        key: tuple[PeerConnection, int],
        inc: Attempt,
        queue: asyncio.Queue[tuple[bytes | None, bool]],
    ) -> None:
        try:
            while True:
                async with asyncio.timeout(self.policy.data_idle_timeout):
                    data, end = await queue.get()
                if data is None:
                    raise RemoteProtocolError(
                        f"more than {MAX_QUEUED_STREAM_BYTES >> 20} MiB sent ahead of progress"
                    )
                self._stream_queued[key] = self._stream_queued.get(key, 0) - len(data)
                assert inc.opener is not None
                for record in inc.opener.feed(data):
                    if not await self._store_record(
                        inc, record.index, record.offset, record.data
                    ):
                        return
                    if record.final:
                        await self._finish(inc, record.hashes)
                        return
                if end:
                    self._interrupted(inc, "the data stream ended early")
                    return
        except TimeoutError:
            self._went_silent(inc)
        except RemoteProtocolError as exc:
            await self._channel_failed(inc, str(exc))
        except OSError as exc:
            self._disk_failed(inc, exc)

    def _forget_stream(self, key: tuple[PeerConnection, int]) -> None:
        self._streams.pop(key, None)
        self._stream_buf.pop(key, None)
        self._stream_queues.pop(key, None)
        self._stream_queued.pop(key, None)

    def connection_closed(self, conn: PeerConnection) -> None:
        for key in [k for k in self._streams if k[0] is conn]:
            queue = self._stream_queues.get(key)
            if queue is not None:
                queue.put_nowait((b"", True))  # its consumer reports the interruption
            else:
                self._forget_stream(key)

    def _claim(
        self, preamble: bytes, via: str, conn: PeerConnection | None = None
    ) -> Attempt | None:
        try:
            p = parse_preamble(preamble)
        except RemoteProtocolError:
            return None
        inc = self._incoming.get((p.transfer_id.hex(), p.attempt))
        if inc is None or inc.opener is not None or (conn is not None and conn is not inc.conn):
            return None
        if inc.conn.closed:
            return None
        try:
            t = self.store.get_transfer(inc.transfer_id)
        except StoreError as exc:
            self._store_failed(inc, exc)
            return None
        if t is None or t.state not in RESUMABLE_IN:
            return None
        if p.version != channel_version(t):  # the offer said where the hashes travel
            return None
        key = inc.conn.session.export_key(KEY_LABEL, p.transfer_id + p.attempt)
        try:
            inc.opener = Opener(key, p.header, inc.plan, p.version)
        except RemoteProtocolError:
            return None
        inc.version = p.version
        inc.via = via
        self.manager.counters[f"{via}_channels"] += 1
        try:
            self._open_files(inc, t)
        except OSError as exc:  # the folder went away, the disk is read-only...
            try:
                self._disk_failed(inc, exc)
            except StoreError as failed:
                self._store_failed(inc, failed)
            return None
        if t.state != "receiving":
            try:
                self.manager.set_state(t, "receiving")
            except StoreError as exc:  # this channel is turned away; a fresh one later
                self._store_failed(inc, exc)
                return None
        return inc

    def _open_files(self, inc: Attempt, t: Transfer) -> None:
        files = {f.index: f for f in t.files}
        jobs: list[tuple[BinaryIO, Any, int]] = []
        for index, offset, _size in inc.plan:
            fd = os.open(part_path(files[index]), os.O_RDWR | os.O_CREAT, 0o600)
            fh = os.fdopen(fd, "r+b")
            fh.truncate(offset)
            fh.seek(offset)
            inc.files[index] = fh
            inc.hashers[index] = new_hasher()
            jobs.append((fh, inc.hashers[index], offset))
        # What a resumed .part already holds is hashed on a thread before any new
        # record lands, so a large resume does not stall every session of the node
        # (started at ``expect``; whatever that could not do is done here).  The
        # thread gets its own list: tearing the attempt down cannot change it.
        early, inc.early = inc.early, None
        inc.prepared = self.manager.track(self._prepare(inc, jobs, early))

    async def _prepare(
        self,
        inc: Attempt,
        jobs: list[tuple[BinaryIO, Any, int]],
        early: asyncio.Future[dict[int, Any]] | None,
    ) -> None:
        if early is not None:
            done = await early
            indexes = [index for index, _offset, _size in inc.plan]
            for index, hasher in done.items():
                inc.hashers[index] = hasher
            jobs = [
                job
                for index, job in zip(indexes, jobs, strict=True)
                if job[2] and index not in done
            ]
        await asyncio.to_thread(hash_prefixes, jobs)

    def _is_current(self, inc: Attempt) -> bool:
        """Whether ``inc`` is still the attempt we wait for: a newer attempt, a
        cancel or a failure supersedes it, and its channel must then stop quietly."""
        return self._incoming.get((inc.transfer_id, inc.attempt)) is inc

    async def _store_record(
        self, inc: Attempt, index: int, offset: int, data: bytes | memoryview
    ) -> bool:
        """Write (and hash) one record; False ends the channel (superseded or failed).

        Every await may let the attempt be superseded, so it is checked again after
        each one before the attempt's files are touched.
        """
        if inc.prepared is not None:
            await inc.prepared
            inc.prepared = None
        if not self._is_current(inc):
            return False
        if data:
            fh = inc.files[index]
            hasher = inc.hashers[index]
            end = offset + len(data)

            def job(
                fh: BinaryIO = fh, hasher: Any = hasher, data: Any = data, end: int = end
            ) -> None:
                fh.write(data)
                hasher.update(data)
                write_behind(fh, end)

            if inc.disk is None:
                inc.disk = DiskQueue()
            await inc.disk.submit(job)
            if not self._is_current(inc):
                return False
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
                    self.manager.emit(
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

    async def _complete_file(self, inc: Attempt, index: int) -> bool:
        """The last byte of a file is in: make it durable and check its hash now (a
        mismatch ends the transfer early); its name waits for the whole transfer."""
        if inc.disk is not None:
            await inc.disk.drain()
        fh = inc.files.pop(index)

        def settle(fh: BinaryIO = fh) -> None:
            fh.flush()
            os.fsync(fh.fileno())  # durable before it may take its final name
            fh.close()

        await asyncio.get_running_loop().run_in_executor(None, settle)
        t = self.store.get_transfer(inc.transfer_id)
        if t is None or not self._is_current(inc):
            return False
        f = t.files[index]
        digest = inc.hashers.pop(index).digest()
        if inc.version != VERSION:
            inc.digests[index] = digest  # checked against the FINAL record's hash
            return True
        if digest != f.hash:
            self.manager.fail_incoming(t, f"{f.path}: content hash mismatch, file discarded")
            self._incoming.pop((inc.transfer_id, inc.attempt), None)
            self._close_files(inc)
            return False
        inc.verified.add(index)
        return True

    async def _finish(self, inc: Attempt, hashes: dict[int, bytes] | None) -> None:
        """The FINAL record arrived: verify what is not verified yet, then publish
        every file at once, so a transfer is either done and published or not.

        ``hashes`` are the FINAL record's (version 2; ``Opener`` made sure there is
        one for every file of the plan); in version 1 they came with the offer.
        Files completed in this attempt were hashed as they were written; the
        others (complete before this attempt, or empty) are hashed from disk now.
        The attempt stays current until it is done, so a disk error on the way
        (an ``OSError`` the caller hands to ``_disk_failed``) fails it cleanly.
        """
        if inc.prepared is not None:
            await inc.prepared
            inc.prepared = None
        t = self.store.get_transfer(inc.transfer_id)
        if t is None or t.folder is None:
            return
        ready: list[tuple[int, Path, Path]] = []
        known: dict[int, bytes] = {}
        for f in t.files:
            if not f.accepted or f.done:
                continue
            part = Path(part_path(f))
            want = f.hash if hashes is None else hashes.get(f.index)
            if f.index not in inc.verified:
                digest = inc.digests.get(f.index)
                if digest is None:
                    # Complete before this attempt (a resume), or empty.
                    if f.size == 0:
                        os.close(os.open(part, os.O_WRONLY | os.O_CREAT, 0o600))
                    held = inc.hashers.get(f.index)
                    if held is not None and (f.index, f.size, f.size) in inc.plan:
                        digest = held.digest()  # the prefix pass read the whole file
                    else:
                        digest = await asyncio.to_thread(hash_file, part)
                        if not self._is_current(inc):
                            return
                if digest != want:
                    self._incoming.pop((inc.transfer_id, inc.attempt), None)
                    why = f"{f.path}: content hash mismatch, file discarded"
                    self.manager.fail_incoming(t, why)
                    return
                known[f.index] = digest
            ready.append((f.index, part, Path(f.final or "")))
        if not self._is_current(inc):
            return
        # No await from here on: nothing can supersede the attempt while it publishes.
        finals = publish_all(Path(t.folder), [(part, final) for _i, part, final in ready])
        self._incoming.pop((inc.transfer_id, inc.attempt), None)
        self._close_files(inc)
        # A hash that came with the data is kept with the file, as an offered one is.
        done = [
            (index, {"done": 1, "final": str(final), **({"hash": known[index]} if hashes else {})})
            for (index, _part, _final), final in zip(ready, finals, strict=True)
        ]
        elapsed = max(time.monotonic() - inc.started, 1e-9)
        log.info(
            "received %s: %d bytes via %s, %.1f MB/s since the accept",
            t.id,
            inc.received,
            inc.via,
            inc.received / elapsed / 1e6,
        )
        tid = t.id

        def record() -> None:
            """The files are published: the database says so (again, after a failed
            write, unless the transfer ended otherwise meanwhile)."""
            t = self.store.get_transfer(tid)
            if t is None or t.state not in RESUMABLE_IN:
                return
            self.store.set_transfer_files(tid, done)
            self.store.add_transfer_bytes(tid, inc.received, now=self.manager.clock())
            t = self.store.get_transfer(tid)
            assert t is not None
            paths = tuple(f.final or "" for f in t.files if f.accepted)
            self.manager.set_state(t, "done", paths=paths)
            self._send(t.peer_id, chat.FileResult(tid, True))
            remove_staging(t)

        try:
            record()
        except StoreError as exc:
            self.manager.store_failed(exc, tid, record)

    def _send(self, peer_id: str, frame: chat.ChatFrame) -> None:
        conn = self.manager.connection_for(peer_id)
        if conn is not None:
            conn.send(frame)

    def _interrupted(self, inc: Attempt, why: str) -> None:
        """The channel died (peer restarted, link dropped, sender gave up): keep the
        parts, and if the session still lives ask again at once (a fresh attempt,
        within the attempt budget); otherwise the sender's re-offer resumes it."""
        if not self._is_current(inc):
            return  # superseded: whoever replaced it carries on
        log.info("transfer %s interrupted: %s", inc.transfer_id, why)
        self._incoming.pop((inc.transfer_id, inc.attempt), None)
        self._close_files(inc)
        self._count_bytes(inc)
        if inc.conn.closed or self.manager.connection_for(inc.conn.peer_id or "") is not inc.conn:
            return
        t = self.store.get_transfer(inc.transfer_id)
        if t is not None and t.state in RESUMABLE_IN:
            self.manager.request_data(t)

    def _went_silent(self, inc: Attempt) -> None:
        if self._is_current(inc):
            self.manager.counters["idle_channels"] += 1
        self._interrupted(
            inc, f"no data for {self.policy.data_idle_timeout:g} s on the {inc.via} channel"
        )

    async def _channel_failed(self, inc: Attempt, why: str) -> None:
        """Bad data on the channel: nothing unauthenticated was written; retry fresh."""
        if not self._is_current(inc):
            return
        log.warning("transfer %s: data channel failed: %s", inc.transfer_id, why)
        self._incoming.pop((inc.transfer_id, inc.attempt), None)
        self._close_files(inc)
        self._count_bytes(inc)
        t = self.store.get_transfer(inc.transfer_id)
        if t is None or t.state not in RESUMABLE_IN:
            return
        self.manager.retry_bad_channel(t, why)

    def _disk_failed(self, inc: Attempt, exc: OSError) -> None:
        """Disk full, folder gone, permissions: nothing the sender can fix by retrying."""
        if not self._is_current(inc):
            return
        log.error("transfer %s: cannot write: %s", inc.transfer_id, exc)
        self._incoming.pop((inc.transfer_id, inc.attempt), None)
        self._close_files(inc)
        t = self.store.get_transfer(inc.transfer_id)
        if t is not None and t.state in RESUMABLE_IN:
            self.manager.fail_incoming(t, f"cannot write the file: {exc.strerror or exc}")

    def _close_files(self, inc: Attempt) -> None:
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


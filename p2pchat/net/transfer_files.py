"""File drop on disk: reading and sealing what we send, writing, naming and
publishing what we receive.

Every function here touches the file system; the network side is in
``transfers.py`` and ``transfer_channels.py``.  Worker threads do the heavy
lifting (file I/O, BLAKE3 and libsodium release the GIL) so both cores work.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import os
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from p2pchat.core.filedrop import (
    CHUNK_SIZE,
    VERSION,
    VERSION_HASH_AT_END,
    Sealer,
    new_hasher,
    pack_hashes,
)
from p2pchat.store import Transfer, TransferFile

STAGING = ".p2pchat-incoming"
FOLDER_MODE = 0o700
"""Folders created for received files are private, like the files themselves (0600):
what a contact sent is the user's to share, and names alone can say a lot.  The user
can loosen them; we never make them more open than the umask allows either."""


class TransferError(Exception):
    """A transfer request the user has to fix (missing file, unknown transfer...)."""


def retrieve_exception(fut: asyncio.Future[Any]) -> None:
    """Done callback: mark a future's exception as seen.

    Whoever awaits the future still gets the exception; this only keeps a future
    nobody awaits any more (its attempt ended) from being reported as "exception
    was never retrieved".
    """
    if not fut.cancelled():
        fut.exception()


class DiskQueue:
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
        fut = loop.run_in_executor(self._pool, job)
        fut.add_done_callback(retrieve_exception)
        self._pending.append(fut)
        while len(self._pending) > self.DEPTH:
            await self._pending.popleft()

    async def drain(self) -> None:
        while self._pending:
            await self._pending.popleft()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._pending.clear()


WRITE_BEHIND = 32 << 20
"""Received bytes are handed to the kernel's writeback every this many bytes."""


def write_behind(fh: BinaryIO, end: int) -> None:
    """Start writing a received file out while it arrives (on the disk thread).

    Every ``WRITE_BEHIND`` bytes the pages written so far are flushed and advised
    away (``POSIX_FADV_DONTNEED``: on Linux it starts their writeback without
    waiting and drops them from the cache once clean), so the ``fsync`` that makes
    the finished file durable before it is named has only the tail left to write,
    instead of the whole file after the last byte (0.15 s per 256 MiB here), and a
    large transfer does not fill the page cache with dirty pages.
    """
    if end % WRITE_BEHIND > CHUNK_SIZE or not hasattr(os, "posix_fadvise"):
        return
    fh.flush()
    with contextlib.suppress(OSError):
        os.posix_fadvise(fh.fileno(), 0, end - end % WRITE_BEHIND, os.POSIX_FADV_DONTNEED)


async def sealed_records(
    sealer: Sealer,
    files: dict[int, TransferFile],
    offsets: tuple[tuple[int, int], ...],
    digests: dict[int, bytes] | None = None,
    prefixed: dict[int, Any] | None = None,
) -> AsyncIterator[tuple[bytes, int]]:
    """Read and seal on a worker thread, a few records ahead of the socket.

    Yields (record, plaintext bytes); the last record is the FINAL one.  Reading
    and sealing release the GIL, so the loop keeps the socket busy meanwhile.

    In version 2 (``sealer.version``) the same thread hashes what it reads: a file
    resumed at an offset has its prefix hashed first (read, not sent), a file the
    receiver already holds whole is read through, and the FINAL record carries
    every file's whole hash.  Each file is checked against the size and
    modification time it had when it was offered (``unchanged``) once its last
    byte is read, so a file changed while it was being sent fails the transfer
    instead of arriving as a mix of two versions under a hash of that mix.  The
    hashes sent are also put in ``digests``, if given.  ``prefixed`` holds hashers
    already fed with what the receiver holds (``hash_prefixes_of``), so the channel
    need not wait for that read.
    """
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="p2pchat-read")
    pending: collections.deque[asyncio.Future[tuple[bytes, int]]] = collections.deque()
    handles: list[BinaryIO] = []
    hashers: list[tuple[int, Any]] = []
    hash_at_end = sealer.version == VERSION_HASH_AT_END

    def read_seal(
        fh: BinaryIO, index: int, position: int, want: int, hasher: Any
    ) -> tuple[bytes, int]:
        chunk = fh.read(want)
        if len(chunk) != want:
            raise TransferError("a file shrank while sending")
        if hasher is not None:
            hasher.update(chunk)
        return sealer.seal(index, position, chunk), want

    def prefix(fh: BinaryIO, hasher: Any, offset: int) -> tuple[bytes, int]:
        hash_prefixes([(fh, hasher, offset)])
        return b"", 0

    def settled(fh: BinaryIO, entry: TransferFile, mtime: int) -> tuple[bytes, int]:
        unchanged(fh, entry, mtime)
        return b"", 0

    def submit(job: Callable[..., tuple[bytes, int]], *args: Any) -> None:
        fut = loop.run_in_executor(pool, job, *args)
        fut.add_done_callback(retrieve_exception)
        pending.append(fut)

    try:
        for index, offset in sorted(offsets):
            entry = files[index]
            source = open_source(entry)  # closed in finally
            handles.append(source)
            mtime = unchanged(source, entry, entry.mtime)
            hasher = new_hasher() if hash_at_end else None
            if hasher is not None and prefixed is not None:
                hasher = prefixed[index]
            if hasher is not None:
                hashers.append((index, hasher))
            if hasher is not None and prefixed is None and offset:
                submit(prefix, source, hasher, offset)  # reads the prefix, then seeks
            else:
                source.seek(offset)
            position = offset
            while position < entry.size:
                want = min(CHUNK_SIZE, entry.size - position)
                submit(read_seal, source, index, position, want, hasher)
                position += want
                while len(pending) >= 4:
                    record = await pending.popleft()
                    if record[0]:
                        yield record
            submit(settled, source, entry, mtime)
        while pending:
            record = await pending.popleft()
            if record[0]:
                yield record
        hashes = [(index, hasher.digest()) for index, hasher in hashers]
        if digests is not None:
            digests.update(hashes)
        yield sealer.seal(0, 0, pack_hashes(hashes) if hash_at_end else b"", final=True), 0
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        for handle in handles:
            handle.close()


def hash_prefixes_of(
    files: dict[int, TransferFile], offsets: tuple[tuple[int, int], ...]
) -> dict[int, Any]:
    """Hashers fed with the part of each file the receiver already holds (file drop
    2, on a worker thread before the data channel opens).

    Done before the channel rather than on it: the receiver drops a channel that
    brings nothing for 30 s, and the prefix of a large resumed file on a slow disk
    takes longer than that to read.
    """
    hashers: dict[int, Any] = {}
    for index, offset in sorted(offsets):
        entry = files[index]
        hasher = hashers[index] = new_hasher()
        if offset:
            with open_source(entry) as fh:
                unchanged(fh, entry, entry.mtime)
                hash_prefixes([(fh, hasher, offset)])
    return hashers


def channel_version(t: Transfer) -> int:
    """The data channel version of ``t``, the same on both sides: 1 when its offer
    carried the hashes (they are stored with it), 2 when they travel at the end."""
    return VERSION if all(f.hash for f in t.files) else VERSION_HASH_AT_END


def unchanged(fh: BinaryIO, entry: TransferFile, mtime: int | None) -> int:
    """Check that an open source file still has its offered size and ``mtime`` (the
    modification time in ns recorded at the offer, or at the start of this attempt
    when the offer did not record one); return the modification time it has."""
    st = os.fstat(fh.fileno())
    if st.st_size != entry.size or (mtime is not None and st.st_mtime_ns != mtime):
        raise TransferError(f"{entry.path} changed since it was offered")
    return st.st_mtime_ns


def collect(
    paths: list[Path], *, hashes: bool = True
) -> list[tuple[str, int, bytes, str | None, int]]:
    """Files to offer: each path is a file, or a folder sent with its structure.

    Each entry is (relative path, size, BLAKE3 or b"" without ``hashes``, source
    path, modification time in ns).  File drop 2 offers leave without hashes (the
    sender hashes while it sends); group drops and file drop 1 peers need them
    first."""
    entries: list[tuple[str, int, bytes, str | None, int]] = []

    def add(rel: str, full: Path) -> None:
        st = full.stat()
        digest = hash_file(full) if hashes else b""
        entries.append((rel, st.st_size, digest, str(full), st.st_mtime_ns))

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
                    add(full.relative_to(root.parent).as_posix(), full)
        elif path.is_file():
            full = path.resolve()
            add(full.name, full)
        else:
            raise TransferError(f"{path}: not a regular file or folder")
    if not entries:
        raise TransferError("nothing to send (empty folder?)")
    return entries


def hash_prefixes(jobs: list[tuple[BinaryIO, Any, int]]) -> None:
    """Feed each resumed file's hasher with what its .part already holds.

    ``jobs`` is a snapshot (handle, hasher, offset) taken on the loop, so the
    attempt may be torn down meanwhile without pulling anything from under the
    thread; its handles are closed only once this returns.
    """
    for fh, hasher, offset in jobs:
        fh.seek(0)
        remaining = offset
        while remaining:
            block = fh.read(min(remaining, 4 << 20))
            if not block:
                break
            hasher.update(block)
            remaining -= len(block)
        fh.seek(offset)


def hash_part_prefixes(parts: list[tuple[int, str, int]]) -> dict[int, Any]:
    """Hashers fed with the first ``offset`` bytes of each ``(index, .part, offset)``;
    a file that cannot be read whole is left out (hashed again once its channel
    is claimed)."""
    hashers: dict[int, Any] = {}
    for index, part, offset in parts:
        hasher = new_hasher()
        remaining = offset
        try:
            with open(part, "rb") as fh:
                while remaining and (block := fh.read(min(remaining, 4 << 20))):
                    hasher.update(block)
                    remaining -= len(block)
        except OSError:
            continue
        if not remaining:
            hashers[index] = hasher
    return hashers


def hash_file(path: Path) -> bytes:
    hasher = new_hasher()
    with open(path, "rb") as fh:
        while block := fh.read(4 << 20):
            hasher.update(block)
    return hasher.digest()


def open_source(entry: TransferFile) -> BinaryIO:
    """An offered file, opened to send: gone or unreadable is the sender's problem to
    report (the transfer fails), not a broken channel to retry."""
    try:
        return open(source_path(entry), "rb")
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise TransferError(f"{entry.path}: cannot read it any more ({exc.strerror})") from None


def source_path(entry: TransferFile) -> str:
    if entry.source is None:
        raise TransferError(f"{entry.path}: source file unknown")
    return entry.source


def part_path(entry: TransferFile) -> str:
    if entry.part is None:
        raise TransferError(f"{entry.path}: no part file assigned")
    return entry.part


def part_size(entry: TransferFile) -> int:
    try:
        return os.stat(part_path(entry)).st_size
    except FileNotFoundError:
        return 0


def name_key(name: str) -> str:
    """Names that are the same to a reader (Unicode normalisation, case) collide."""
    return unicodedata.normalize("NFC", name).casefold()


def with_suffix(path: Path, n: int) -> Path:
    if path.suffix and path.stem:
        return path.with_name(f"{path.stem} ({n}){path.suffix}")
    return path.with_name(f"{path.name} ({n})")


def choose_roots(folder: Path, roots: Iterable[str]) -> dict[str, str]:
    """Top-level names that clash with what is already there get " (1)", " (2)"...

    A clash is judged by ``name_key``: ``Café`` arriving next to a decomposed
    ``Café`` or a ``café`` is renamed, not put beside it.
    """
    try:
        taken = {name_key(name) for name in os.listdir(folder)}
    except FileNotFoundError:
        taken = set()
    chosen: dict[str, str] = {}
    for root in sorted(roots):
        candidate, n = root, 0
        while name_key(candidate) in taken:
            n += 1
            candidate = with_suffix(Path(root), n).name
        taken.add(name_key(candidate))
        chosen[root] = candidate
    return chosen


def make_folders(root: Path, folder: Path) -> None:
    """Create ``folder`` (inside ``root``, which exists) one private level at a time.

    ``Path.mkdir(parents=True)`` would create the intermediate levels with the
    default mode, whatever ``mode`` says.
    """
    current = root
    for part in folder.relative_to(root).parts:
        current = current / part
        with contextlib.suppress(FileExistsError):
            current.mkdir(mode=FOLDER_MODE)


def _take_name(part: Path, final: Path) -> tuple[Path, bool]:
    """Give ``part`` the name ``final`` or ``final (n)``, never replacing anything.

    Returns the name taken and whether it is a hard link (``part`` still exists)
    rather than a rename (file systems without hard links).
    """
    candidate, n = final, 0
    while True:
        try:
            os.link(part, candidate)  # fails if the name exists: no silent overwrite
            return candidate, True
        except FileExistsError:
            n += 1
            candidate = with_suffix(final, n)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP):
                raise
            if candidate.exists():
                n += 1
                candidate = with_suffix(final, n)
                continue
            os.rename(part, candidate)
            return candidate, False


def publish_all(root: Path, files: list[tuple[Path, Path]]) -> list[Path]:
    """Give every verified ``(part, final)`` its name, or, on an error, none of them.

    A transfer is published whole, after its last record: a transfer that fails
    never leaves some of its files published.
    """
    taken: list[tuple[Path, Path, bool]] = []
    try:
        for part, final in files:
            make_folders(root, final.parent)
            name, linked = _take_name(part, final)
            taken.append((part, name, linked))
    except OSError:
        for part, name, linked in reversed(taken):
            with contextlib.suppress(OSError):
                if linked:
                    os.unlink(name)  # the .part still holds the data
                else:
                    os.rename(name, part)
        raise
    for part, _name, linked in taken:
        if linked:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
    return [name for _part, name, _linked in taken]


def remove_staging(t: Transfer) -> None:
    if t.folder:
        with contextlib.suppress(OSError):
            (Path(t.folder) / STAGING / t.id).rmdir()
        with contextlib.suppress(OSError):
            (Path(t.folder) / STAGING).rmdir()


def same_device(a: str | Path, b: str | Path) -> bool:
    """Whether two existing paths live on one file system (missing: assume so)."""
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return True

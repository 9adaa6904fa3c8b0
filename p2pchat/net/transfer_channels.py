"""The carriers of file data: a direct TCP connection or a QUIC stream of the session.

What is sent on either is the sealed channel of ``core/filedrop.py``; this module
only moves bytes and makes sure neither side can be held forever:

* The receiver's TCP port is open to anyone.  Until a connection presents the
  preamble of an attempt the receiver expects, it is *unclaimed*: ``TcpGate``
  caps those per source address and in all, and releases a slot on every path
  (it is a context manager).  A few more slots are kept for the addresses of
  contacts the receiver has just asked for data, so strangers holding every
  ordinary slot cannot push a genuine channel onto the slower QUIC carrier.  A
  claimed connection is answered with one byte, ``CLAIMED``, so the sender knows
  its channel was taken.
* The sender falls back to a QUIC stream of the session, within the same
  attempt, when the TCP channel is refused, closed or unanswered before that byte
  arrives; and it gives up an attempt whose channel makes no progress for
  ``STALL_TIMEOUT`` (the receiver then asks again with a fresh attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from p2pchat.core.filedrop import CHUNK_SIZE
from p2pchat.net.peer import PeerConnection

log = logging.getLogger(__name__)

CLAIMED = b"\x01"
TCP_CONNECT_TIMEOUT = 3.0
CLAIM_TIMEOUT = 10.0
"""How long the sender waits for ``CLAIMED`` before it falls back to QUIC."""
STALL_TIMEOUT = 30.0
"""No byte taken by the receiver for this long ends an attempt (both carriers)."""
WINDOW = 8 << 20
"""The QUIC carrier never has more unacknowledged bytes in flight (aioquic would
buffer without limit)."""
MAX_UNCLAIMED_TCP = 16
EVENT_INTERVAL = 0.25
"""Progress events (for people) at most this often per attempt, on either side."""
MAX_UNCLAIMED_TCP_PER_SOURCE = 4
MAX_UNCLAIMED_TCP_RESERVE = 4
"""Unclaimed slots beyond the caps, only for the address of a contact whose data
channel we expect (the address of its session)."""


def source_key(ip: str) -> str:
    """What one source is: an IPv4 address, or an IPv6 /64 (one host's usual share)."""
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class Rate:
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


class TcpGate:
    """Slots for TCP data connections that have not presented a known preamble yet."""

    def __init__(
        self,
        total: int = MAX_UNCLAIMED_TCP,
        per_source: int = MAX_UNCLAIMED_TCP_PER_SOURCE,
        reserve: int = MAX_UNCLAIMED_TCP_RESERVE,
    ) -> None:
        self.total = total
        self.per_source = per_source
        self.reserve = reserve
        self.unclaimed = 0
        self.reserved = 0
        self._by_source: dict[str, int] = {}

    @contextlib.contextmanager
    def admit(self, ip: str, *, expected: bool = False) -> Iterator[bool]:
        """Yield whether the connection may wait for its preamble; the slot it took
        (if any) is given back however the ``with`` block ends.  An ``expected``
        source (a contact we asked for data) may use the reserve when the ordinary
        slots are taken."""
        key = source_key(ip)
        held = self._by_source.get(key, 0)
        spare = False
        if self.unclaimed - self.reserved >= self.total or held >= self.per_source:
            if not expected or self.reserved >= self.reserve:
                yield False
                return
            spare = True
        self.unclaimed += 1
        self.reserved += spare
        self._by_source[key] = held + 1
        try:
            yield True
        finally:
            self.unclaimed -= 1
            self.reserved -= spare
            left = self._by_source[key] - 1
            if left:
                self._by_source[key] = left
            else:
                del self._by_source[key]


@dataclass(eq=False, slots=True)
class Outgoing:
    """The running sending attempt of one transfer."""

    transfer_id: str
    attempt: bytes
    peer: str = ""
    acked: int = 0
    sent: int = 0
    total: int = 0
    digests: dict[int, bytes] = field(default_factory=dict)
    """File drop 2: the whole-file hashes this attempt sent in its last record."""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def ack(self, received: int) -> None:
        if received > self.acked:
            self.acked = received
            self.wake.set()


class DataSender(Protocol):
    via: str

    async def put(self, data: bytes) -> None: ...

    async def finish(self) -> None: ...

    async def close(self) -> None: ...


class TcpSender:
    """The direct carrier: a TCP connection the receiver has claimed."""

    via = "tcp"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(
        cls, host: str, port: int, preamble: bytes, *, claim_timeout: float = CLAIM_TIMEOUT
    ) -> TcpSender | None:
        """Connect, present the preamble and wait for ``CLAIMED``; None means "use QUIC"."""
        try:
            async with asyncio.timeout(TCP_CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:  # TimeoutError included
            log.info("direct TCP to %s:%d failed (%s): using QUIC", host, port, exc or "timeout")
            return None
        answer = b""
        try:
            writer.write(preamble)
            async with asyncio.timeout(claim_timeout):
                answer = await reader.read(1)
        except OSError as exc:
            log.info("direct TCP to %s:%d unanswered (%s): using QUIC", host, port, exc)
        if answer != CLAIMED:
            if not answer:
                log.info("direct TCP to %s:%d was turned away: using QUIC", host, port)
            writer.close()
            return None
        return cls(reader, writer)

    async def put(self, data: bytes) -> None:
        self._writer.write(data)
        if self._writer.transport.get_write_buffer_size() > 4 * CHUNK_SIZE:
            await self._drain()

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(STALL_TIMEOUT):
                await self._writer.drain()
        except TimeoutError:
            raise ConnectionError(f"the receiver took nothing for {STALL_TIMEOUT:g} s") from None

    async def finish(self) -> None:
        await self._drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


class QuicSender:
    """The fallback carrier: a unidirectional stream of the contact's session, paced
    by the receiver's progress reports so at most ``WINDOW`` bytes are unacknowledged."""

    via = "quic"

    def __init__(self, conn: PeerConnection, out: Outgoing) -> None:
        self._conn = conn
        self._out = out
        self._stream_id = conn.open_uni_stream()

    async def put(self, data: bytes) -> None:
        out = self._out
        while out.sent - out.acked > WINDOW:
            out.wake.clear()
            try:
                async with asyncio.timeout(STALL_TIMEOUT):
                    await out.wake.wait()
            except TimeoutError:
                raise ConnectionError(
                    f"the receiver acknowledged nothing for {STALL_TIMEOUT:g} s"
                ) from None
        if self._conn.closed:
            raise ConnectionError("session closed")
        self._conn.send_stream(self._stream_id, data)

    async def finish(self) -> None:
        if self._conn.closed:
            raise ConnectionError("session closed")
        self._conn.send_stream(self._stream_id, b"", end=True)

    async def close(self) -> None:
        return None

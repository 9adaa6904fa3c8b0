"""The hostile parties of issue 9, in one place: the attack tests (``tests/attacks``)
and the soak (``benchmarks/soak.py``) both drive real daemons with these.

* ``HostilePeer`` / ``HostileLink``: a stranger or a contact built on the package's
  own classes (``Endpoint``, ``SecureSession``, ``chat``), sending whatever it likes
  on a real QUIC connection: resend amplification (``pending_gap_pairs``), offer and
  cancel floods (``offer_cancel_flood``), messages past the daily quota
  (``message_flood``), reused message ids, hostile names (``BAD_HELLO_NAMES``).
* The TCP data port, from anyone: idle connections held open (``tcp_hold``),
  garbage preambles (``tcp_garbage``), many connections at once (``tcp_burst``).
* UDP floods from many source addresses: fake QUIC Initials (``InitialFlood``,
  also ``python -m tests.attacks.attackers quic-flood``) and KRPC queries from
  forged-looking sources (``KrpcFlood``).

Loopback is a whole /8, so a socket bound to 127.x.y.z is another host as far as
the victim's per-address budgets are concerned, as a spoofing attacker's packets
would be; nothing leaves the machine.  Every attacker counts what it did in a
``Counter`` the caller passes, so a soak can print it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack

from p2pchat.core import chat
from p2pchat.core.errors import RemoteProtocolError
from p2pchat.core.filedrop import PREAMBLE_SIZE
from p2pchat.core.session import HandshakeComplete, PayloadReceived, SecureSession
from p2pchat.dht.bencode import bencode
from p2pchat.identity import Identity, parse_address
from p2pchat.net.endpoint import Endpoint, QuicLink

Counts = collections.Counter[str]

# ------------------------------------------------------------ hostile sessions


class HostileLink:
    """One session a ``HostilePeer`` runs: the package's own ``SecureSession`` over a
    real QUIC connection, with the frames it carries under the caller's control.

    ``keep`` bounds what is remembered: every frame (the tests look them up), or only
    the last ``keep`` of them (a soak receiving resends for minutes); ``counts`` has
    how many of each kind arrived either way.
    """

    def __init__(
        self, peer: HostilePeer, link: QuicLink, session: SecureSession, keep: int | None = None
    ) -> None:
        self.peer = peer
        self.link = link
        self.session = session
        self.frames: collections.deque[chat.ChatFrame] = collections.deque(maxlen=keep)
        self.counts: Counts = collections.Counter()
        self.bytes_received = 0
        self.terminated: str | None = None
        self.handshake = asyncio.Event()
        self.ended = asyncio.Event()
        link.handler = self

    # LinkHandler
    def link_handshake_done(self, link: QuicLink) -> None:
        self.session.initiate()
        self._flush()

    def link_stream_data(self, link: QuicLink, stream_id: int, data: bytes, end: bool) -> None:
        if stream_id != 0:
            return
        self.bytes_received += len(data)
        self.session.receive_data(data)
        while (event := self.session.next_event()) is not None:
            if isinstance(event, PayloadReceived):
                for frame in chat.decode_frames(event.payload):  # (a bundle: several)
                    if not isinstance(frame, RemoteProtocolError):
                        self.frames.append(frame)
                        self.counts[type(frame).__name__] += 1
            elif isinstance(event, HandshakeComplete):
                self.handshake.set()
        self._flush()

    def link_terminated(self, link: QuicLink, reason: str) -> None:
        self.terminated = reason
        self.ended.set()

    def _flush(self) -> None:
        out = self.session.data_to_send()
        if out:
            self.link.send_stream(0, out)

    def send(self, frame: chat.ChatFrame | dict[str, Any]) -> None:
        """A frame as the package would encode it, or any map at all (unchecked)."""
        payload = (
            msgpack.packb(frame, use_bin_type=True)
            if isinstance(frame, dict)
            else chat.encode(frame)
        )
        self.session.send(payload)
        self._flush()

    def of(self, kind: type[chat.ChatFrame]) -> list[chat.ChatFrame]:
        return [f for f in self.frames if isinstance(f, kind)]

    @property
    def closed(self) -> bool:
        return self.terminated is not None

    def close(self) -> None:
        self.link.close("hostile peer done")


class HostilePeer:
    """A stranger or contact built on the package's own classes (``Endpoint``,
    ``SecureSession``, ``chat``), for attacks a genuine node would never make.

    ``host`` is the address it sends from (any 127.x.y.z: another host to the victim).
    """

    def __init__(self, identity: Identity | None = None, *, host: str = "127.0.0.1") -> None:
        self.identity = identity or Identity.generate()
        self.host = host
        self.endpoint: Endpoint | None = None

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    async def start(self) -> None:
        self.endpoint = Endpoint(self.identity)
        await self.endpoint.start(self.host, 0)

    async def connect(
        self,
        address: str,
        *,
        hello: chat.Hello | dict[str, Any] | None = None,
        timeout: float = 10.0,
        keep: int | None = None,
    ) -> HostileLink:
        """Dial ``address``, finish the session handshake, then send ``hello``."""
        assert self.endpoint is not None
        session = SecureSession(
            initiator=True, our_key=self.identity.public_key, sign=self.identity.sign
        )
        link = HostileLink(self, self.endpoint.connect(parse_address(address)), session, keep)
        try:
            async with asyncio.timeout(timeout):
                await link.handshake.wait()
        except TimeoutError:
            link.close()
            raise
        link.send(hello if hello is not None else chat.Hello(name="mallory"))
        return link

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None


BAD_HELLO_NAMES = (
    "M" * 300 + "\u202e\x1b[2J",  # too long, a bidi override, a terminal escape
    "\u2066\u2069\x00",  # nothing usable left
    "evil\x1b[31mred\nline",
    "zero\u200bwidth\u00ad",
)
"""Display names a peer may announce in its Hello (the wire is not checked by the
sender here): each must be repaired or dropped by the victim, never break a session."""


def bad_hello(index: int = 0) -> dict[str, Any]:
    """A raw Hello map carrying one of ``BAD_HELLO_NAMES``."""
    return {"t": "hello", "v": 1, "n": BAD_HELLO_NAMES[index % len(BAD_HELLO_NAMES)]}


def chat_message(seq: int, body: str, message_id: str | None = None) -> chat.ChatMessage:
    """A contact's message with consecutive ``seq`` (base 1), any id it likes."""
    return chat.ChatMessage(
        id=message_id or os.urandom(16).hex(), seq=seq, base=1, sent_at=1e9, body=body
    )


async def message_flood(
    link: HostileLink, first_seq: int, count: int, body: str, *, counts: Counts | None = None,
    yield_every: int = 16,
) -> int:  # fmt: skip
    """``count`` messages of ``body`` as fast as the link takes them; the next seq."""
    seq = first_seq
    for n in range(count):
        link.send(chat_message(seq, body))
        seq += 1
        if counts is not None:
            counts["quota_messages"] += 1
        if n % yield_every == yield_every - 1:
            await asyncio.sleep(0)
    return seq


async def pending_gap_pairs(
    link: HostileLink, pairs: int, *, pause: float = 0.005, counts: Counts | None = None
) -> None:
    """A ``pending`` frame, then a ``gap`` for everything: once, each pair made the
    victim resend its whole outbox to us, bypassing every limit (hole 2)."""
    for _ in range(pairs):
        link.send(chat.RequestPending())
        link.send(chat.Gap(1))
        if counts is not None:
            counts["pending_gap_pairs"] += 1
        await asyncio.sleep(pause)


def flood_files(count: int) -> tuple[chat.FileEntry, ...]:
    """``count`` one-byte files: the most rows an offer can make the victim store."""
    return tuple(chat.FileEntry(f"f{i:04d}", 1, bytes(32)) for i in range(count))


async def offer_cancel_flood(
    link: HostileLink, offers: int, files: Sequence[chat.FileEntry], *,
    yield_every: int = 8, pause: float = 0.01, counts: Counts | None = None,
) -> None:  # fmt: skip
    """Offer ``files`` and cancel at once, ``offers`` times, as fast as QUIC takes it:
    once every offer was stored, and listing them froze the node (hole 3)."""
    entries = tuple(files)
    for n in range(offers):
        tid = os.urandom(16).hex()
        link.send(chat.FileOffer(tid, entries))
        link.send(chat.FileCancel(tid, "never mind"))
        if counts is not None:
            counts["offers"] += 1
        if n % yield_every == yield_every - 1:
            await asyncio.sleep(pause)  # let the endpoint put it on the wire


# ------------------------------------------------------------ the TCP data port


async def _open(host: str, port: int, source: str | None) -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter
]:  # fmt: skip
    local = (source, 0) if source else None
    return await asyncio.open_connection(host, port, local_addr=local)


async def tcp_hold(
    host: str, port: int, *, source: str | None = None, counts: Counts | None = None,
    stop: asyncio.Event | None = None, reopen_after: float = 0.0,
) -> None:  # fmt: skip
    """Keep one idle connection to the data port open, reopening it each time the
    node closes it (at once, or ``reopen_after`` s later), until ``stop`` (or
    cancelled)."""
    counts = counts if counts is not None else collections.Counter()
    while stop is None or not stop.is_set():
        try:
            reader, writer = await _open(host, port, source)
        except OSError:
            counts["tcp_connect_failed"] += 1
            await asyncio.sleep(0.05)
            continue
        counts["tcp_held"] += 1
        try:
            read = asyncio.ensure_future(reader.read())
            waits: set[asyncio.Future[Any]] = {read}
            if stop is not None:
                waits.add(asyncio.ensure_future(stop.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if read.done() and not read.cancelled():
                counts["tcp_closed_by_victim"] += 1
        finally:
            writer.close()
        if reopen_after:
            await asyncio.sleep(reopen_after)


async def tcp_garbage(
    host: str, port: int, *, source: str | None = None, counts: Counts | None = None,
    timeout: float = 20.0,
) -> None:  # fmt: skip
    """One connection presenting a random preamble, held until the node closes it."""
    counts = counts if counts is not None else collections.Counter()
    try:
        reader, writer = await _open(host, port, source)
    except OSError:
        counts["tcp_connect_failed"] += 1
        return
    counts["tcp_garbage"] += 1
    try:
        writer.write(os.urandom(PREAMBLE_SIZE))
        await writer.drain()
        async with asyncio.timeout(timeout):
            await reader.read()
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


async def tcp_burst(
    host: str, port: int, count: int, *, source: str | None = None,
    counts: Counts | None = None,
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:  # fmt: skip
    """``count`` connections opened at once and left for the caller to close."""
    counts = counts if counts is not None else collections.Counter()
    opened = []
    for _ in range(count):
        try:
            opened.append(await _open(host, port, source))
        except OSError:
            counts["tcp_connect_failed"] += 1
            continue
        counts["tcp_burst"] += 1
    return opened


def listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (what a port scan of it would find), from
    ``/proc``: the data port of a node is ephemeral and announced only to contacts."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# ------------------------------------------------------------ UDP floods


class _Replies(asyncio.DatagramProtocol):
    def __init__(self, counts: Counts, key: str) -> None:
        self.counts = counts
        self.key = key

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.counts[self.key] += 1

    def error_received(self, exc: Exception) -> None:
        pass


async def _sockets(
    addresses: Iterable[str], counts: Counts, key: str
) -> list[asyncio.DatagramTransport]:
    loop = asyncio.get_running_loop()
    out = []
    for address in addresses:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Replies(counts, key), local_addr=(address, 0)
        )
        out.append(transport)
    return out


async def _paced(rate: float, send: Any, duration: float | None = None) -> int:
    """Call ``send(n)`` for ``rate`` items a second, evenly, until cancelled or
    ``duration`` is over; ``n`` is a running count.  After a stall (a busy machine)
    at most 50 ms worth is caught up at once, so the flood stays a flood, not bursts."""
    started = time.monotonic()
    sent = skipped = 0
    catch_up = max(1, int(rate * 0.05))
    while True:
        elapsed = time.monotonic() - started
        if duration is not None and elapsed >= duration:
            return sent
        due = int(elapsed * rate) - skipped
        if due - sent > catch_up:
            skipped += due - sent - catch_up
            due = sent + catch_up
        while sent < due:
            send(sent)
            sent += 1
        await asyncio.sleep(0.005)


def quic_initial(rng: random.Random | None = None) -> bytes:
    """A 1,200-byte QUIC v1 Initial with random connection IDs and a random payload:
    well-formed enough to reach a server's accept path, impossible to decrypt."""
    rand = rng.randbytes if rng is not None else os.urandom
    header = b"\xc3\x00\x00\x00\x01\x08" + rand(8) + b"\x08" + rand(8) + b"\x00"
    rest = 1200 - len(header) - 2
    return header + (0x4000 | rest).to_bytes(2, "big") + rand(rest)


class InitialFlood:
    """Fake QUIC Initials from ``ports`` source ports (spread over ``hosts``), paced
    evenly: before the admission gate each one built a server connection (hole 5)."""

    def __init__(
        self, ports: int = 64, hosts: Sequence[str] = ("127.0.0.1",),
        counts: Counts | None = None,
    ) -> None:  # fmt: skip
        self.ports = ports
        self.hosts = tuple(hosts)
        self.counts = counts if counts is not None else collections.Counter()
        self.rng = random.Random()
        self._socks: list[asyncio.DatagramTransport] = []

    async def open(self) -> None:
        addresses = [self.hosts[i % len(self.hosts)] for i in range(self.ports)]
        self._socks = await _sockets(addresses, self.counts, "initial_replies")

    async def run(self, targets: Sequence[str], rate: float, duration: float | None = None) -> int:
        """``rate`` Initials a second at each target; how many were sent."""
        addrs = [parse_address(t) for t in targets]

        def send(n: int) -> None:
            with contextlib.suppress(OSError):  # a full send queue drops, as a NIC would
                self._socks[n % len(self._socks)].sendto(
                    quic_initial(self.rng), addrs[n % len(addrs)]
                )
            self.counts["initials"] += 1

        return await _paced(rate * len(addrs), send, duration)

    def close(self) -> None:
        for s in self._socks:
            s.close()


class KrpcFlood:
    """``find_node`` queries from ``sources`` loopback addresses (127.P.i.1), each a
    distinct IP with a full per-IP bucket, as forged sources would be (hole 9)."""

    def __init__(self, sources: int = 256, prefix: str = "127.77", counts: Counts | None = None):
        self.addresses = [f"{prefix}.{i % 256}.{1 + i // 256}" for i in range(sources)]
        self.counts = counts if counts is not None else collections.Counter()
        self._socks: list[asyncio.DatagramTransport] = []

    async def open(self) -> None:
        self._socks = await _sockets(self.addresses, self.counts, "krpc_replies")

    def _send(self, sock: asyncio.DatagramTransport, target: tuple[str, int], n: int) -> None:
        query = {
            b"a": {b"id": os.urandom(20), b"target": os.urandom(20)},
            b"q": b"find_node",
            b"t": (n & 0xFFFF).to_bytes(2, "big"),
            b"y": b"q",
        }
        with contextlib.suppress(OSError):
            sock.sendto(bencode(query), target)
        self.counts["krpc_queries"] += 1

    async def burst(self, target: str, per_source: int) -> None:
        """``per_source`` queries from every source, round by round, at once."""
        addr = parse_address(target)
        for n in range(per_source):
            for sock in self._socks:
                self._send(sock, addr, n)
            await asyncio.sleep(0)

    async def run(self, targets: Sequence[str], rate: float, duration: float | None = None) -> int:
        """``rate`` queries a second at each target, the sources taking turns."""
        addrs = [parse_address(t) for t in targets]

        def send(n: int) -> None:
            sock = self._socks[(n // len(addrs)) % len(self._socks)]
            self._send(sock, addrs[n % len(addrs)], n)

        return await _paced(rate * len(addrs), send, duration)

    @property
    def replies(self) -> int:
        return self.counts["krpc_replies"]

    def close(self) -> None:
        for s in self._socks:
            s.close()


# ------------------------------------------------------------ command line


async def _quic_flood(target: str, rate: float, ports: int, duration: float) -> None:
    flood = InitialFlood(ports)
    await flood.open()
    print(json.dumps({"ready": target}), flush=True)
    started = time.monotonic()
    try:
        sent = await flood.run([target], rate, duration)
    finally:
        flood.close()
    print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - started, 2)}), flush=True)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.attacks.attackers")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("quic-flood", help="fake QUIC Initials at a target, paced evenly")
    p.add_argument("target")
    p.add_argument("--rate", type=float, default=2000.0)
    p.add_argument("--ports", type=int, default=64)
    p.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.cmd == "quic-flood":
        asyncio.run(_quic_flood(args.target, args.rate, args.ports, args.duration))


if __name__ == "__main__":
    main(sys.argv[1:])

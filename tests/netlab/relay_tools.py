"""Relays that misbehave, and peers that push, for the relay lab tests.

``python -m tests.netlab.relay_tools CMD ...`` inside a lab host; each prints JSON lines.

* ``hostile-relay --port P``: a real rendezvous and relay (``core/rendezvous.py`` and
  ``core/relay.py``, the node's own code) whose forwarding a test controls through
  stdin lines: ``honest``, ``drop P``, ``flip P``, ``replay P``, ``reorder P``
  (P a probability), ``blackhole`` (forward nothing) and ``starve N`` (forward only
  datagrams of at most N bytes: pings and acknowledgements pass, data does not).  It
  keeps answering registrations and keepalives whatever it does to the data, as a
  relay that wants to stay chosen would.  Each command is answered with the counters
  so far.
* ``push --relay HOST:PORT --rate BYTES --seconds S``: two identities register with
  the relay, open a channel between them and push full-size datagrams through it as
  fast as ``--rate`` allows; prints how much was sent and how much came out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import sys
import time
from typing import Any

from p2pchat.core import punch
from p2pchat.core import relay as wire
from p2pchat.core.punch import Addr, PunchError
from p2pchat.core.relay import RelayLimits, RelayServer
from p2pchat.core.rendezvous import RegistrationClient, RendezvousServer
from p2pchat.identity import Identity, verify_signature


def _emit(value: Any) -> None:
    print(json.dumps(value), flush=True)


def _split(target: str) -> Addr:
    host, _, port = target.rpartition(":")
    return host, int(port)


class HostileRelay(asyncio.DatagramProtocol):
    """The node's rendezvous and relay cores on a socket of their own, with a test's
    hand on every forwarded datagram."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.rendezvous = RendezvousServer(
            key=identity.public_key,
            sign=identity.sign,
            verify=verify_signature,
            may_register=lambda key: True,
        )
        self.relay = RelayServer(registration=self.rendezvous.registration, limits=RelayLimits())
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.mode = "honest"
        self.p = 0.0
        self.rng = random.Random()
        self.held: tuple[bytes, Addr] | None = None
        self.counts: dict[str, int] = {"forwarded": 0, "tampered": 0}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, addr: Addr) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        src = (str(addr[0]), int(addr[1]))
        now = self.loop.time()
        if not data or data[0] >= 0x40:
            return
        try:
            if data[0] == wire.Type.DATA:
                dest = self.relay.forward(data, src, now)
                if dest is not None:
                    self.tamper(data, dest)
                return
            if data[0] >= 0x30:
                self.relay.receive(wire.decode(data), src, now)
            else:
                self.rendezvous.receive(punch.decode(data), src, now)
        except PunchError:
            return
        for out, dest in self.rendezvous.datagrams_to_send() + self.relay.datagrams_to_send():
            self.send(out, dest)

    def tamper(self, data: bytes, dest: Addr) -> None:
        self.counts["forwarded"] += 1
        hit = self.rng.random() < self.p
        starved = self.mode == "starve" and len(data) > self.p
        if self.mode == "blackhole" or (self.mode == "drop" and hit) or starved:
            self.counts["tampered"] += 1
            return
        if self.mode == "flip" and hit:
            # A bit anywhere in what QUIC sent (the header and channel stay, so the
            # datagram does reach the peer).
            flipped = bytearray(data)
            i = self.rng.randrange(wire.DATA_HEADER, len(data))
            flipped[i] ^= 1 << self.rng.randrange(8)
            data = bytes(flipped)
            self.counts["tampered"] += 1
        elif self.mode == "replay" and hit:
            self.counts["tampered"] += 1
            later = self.rng.uniform(0.05, 0.5)
            self.loop.call_later(later, self.send, data, dest)
        elif self.mode == "reorder" and hit and self.held is None:
            self.counts["tampered"] += 1
            self.held = (data, dest)  # goes out after the next one
            return
        self.send(data, dest)
        if self.held is not None and self.mode == "reorder":
            held, self.held = self.held, None
            self.send(*held)

    def command(self, line: str) -> None:
        words = line.split()
        if not words:
            return
        self.mode = words[0]
        self.p = float(words[1]) if len(words) > 1 else 1.0
        if self.held is not None:
            self.send(*self.held)
            self.held = None
        _emit({"mode": self.mode, "p": self.p, **self.counts, "relay": self.relay.status()})

    async def expire(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            self.rendezvous.expire(now)
            self.relay.expire(now)
            for out, dest in self.relay.datagrams_to_send():
                self.send(out, dest)


async def hostile_relay(port: int) -> None:
    identity = Identity.generate()
    loop = asyncio.get_running_loop()
    _, relay = await loop.create_datagram_endpoint(
        lambda: HostileRelay(identity), local_addr=("0.0.0.0", port)
    )
    assert isinstance(relay, HostileRelay)
    expire = asyncio.ensure_future(relay.expire())
    _emit({"ready": port, "peer_id": identity.peer_id})
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            relay.command(line.decode())
    finally:
        expire.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expire


# ----------------------------------------------------------------------- a pusher
class _End:
    """One identity on one socket, registered with the relay by hand."""

    def __init__(self, relay: Addr) -> None:
        self.identity = Identity.generate()
        self.relay = relay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.settimeout(1.0)
        self.reg = RegistrationClient(
            our_key=self.identity.public_key,
            seed=self.identity.seed,
            sign=self.identity.sign,
            verify=verify_signature,
            addr=relay,
        )

    def flush(self) -> None:
        for data, dest in self.reg.datagrams_to_send():
            self.sock.sendto(data, dest)

    def register(self) -> None:
        self.reg.start(time.monotonic())
        deadline = time.monotonic() + 10
        while not self.reg.registered:
            if time.monotonic() > deadline:
                raise SystemExit("the relay did not register us")
            self.flush()
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                self.reg.on_timer(time.monotonic())
                continue
            with contextlib.suppress(PunchError):
                self.reg.receive(punch.decode(data), (addr[0], addr[1]), time.monotonic())
        self.flush()

    def keepalive(self) -> None:
        self.reg.on_timer(time.monotonic())
        self.flush()

    def recv_packet(self, timeout: float = 5.0) -> wire.Packet | None:
        """The next relay packet (registration traffic on the way is handled)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, _ = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            if data[0] < 0x30:
                with contextlib.suppress(PunchError):
                    self.reg.receive(punch.decode(data), self.relay, time.monotonic())
                continue
            with contextlib.suppress(PunchError):
                return wire.decode(data)
        return None


def push(relay: Addr, rate: float, seconds: float) -> None:
    a, b = _End(relay), _End(relay)
    a.register()
    b.register()
    channel = os.urandom(wire.CHANNEL_ID)
    me, them = a.identity.public_key, b.identity.public_key
    tag = wire.open_mac(a.reg.keepalive_key, me, them, channel)
    a.sock.sendto(wire.encode(wire.RelayOpen(me, them, channel, tag)), relay)
    offer = b.recv_packet()
    if not isinstance(offer, wire.RelayOffer):
        raise SystemExit(f"no offer: {offer!r}")
    answer = wire.answer_mac(b.reg.keepalive_key, them, channel, 0)
    b.sock.sendto(wire.encode(wire.RelayAnswer(them, channel, 0, answer)), relay)
    ready = a.recv_packet()
    if not isinstance(ready, wire.RelayReady) or ready.status != 0:
        raise SystemExit(f"no channel: {ready!r}")
    received = 0
    stop = False

    def count() -> None:
        nonlocal received
        b.sock.settimeout(0.2)
        while not stop:
            try:
                data, _ = b.sock.recvfrom(2048)
            except TimeoutError:
                continue
            if data[0] == wire.Type.DATA:
                received += len(data)

    import threading

    counter = threading.Thread(target=count)
    counter.start()
    _emit({"ready": True})
    datagram = wire.data_packet(channel, b"\x40" + os.urandom(1199))
    start = time.monotonic()
    sent = 0
    next_keepalive = start + 2.0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) // len(datagram) + 1
        while sent < due:
            with contextlib.suppress(OSError):
                a.sock.sendto(datagram, relay)
            sent += 1
        if time.monotonic() >= next_keepalive:
            a.keepalive()
            b.keepalive()
            next_keepalive += 2.0
        time.sleep(0.002)
    time.sleep(0.5)
    stop = True
    counter.join()
    _emit(
        {
            "sent": sent * len(datagram),
            "received": received,
            "seconds": round(time.monotonic() - start, 2),
        }
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="relay-tools")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("hostile-relay")
    p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("push")
    p.add_argument("--relay", required=True)
    p.add_argument("--rate", type=float, required=True, help="bytes per second")
    p.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    if args.cmd == "hostile-relay":
        asyncio.run(hostile_relay(args.port))
    else:
        push(_split(args.relay), args.rate, args.seconds)


if __name__ == "__main__":
    main(sys.argv[1:])

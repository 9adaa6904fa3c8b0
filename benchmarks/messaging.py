#!/usr/bin/env python3
"""Messaging benchmark: p2pchat 1:1 chat against a bare aioquic echo, in one run.

Usage (from the repository root)::

    python3 benchmarks/messaging.py [--messages N] [--rtt-samples M] [--rounds R]
                                    [--sweep] [--profile] [--trace]

``--trace`` runs only the two latency phases, with every stage of the path
time-stamped (``Tracer``), and prints the timeline of the median sample: where
a round trip spends its time and in which event-loop turn each step runs.

Everything runs in one process and one asyncio loop, and every socket is bound
to 127.0.0.1 and talks only to 127.0.0.1.  Both sides of each pair share that
loop, so every figure includes the work of the sender *and* the receiver.

p2pchat
    Two real ``Node`` objects, each in its own temporary home with a fresh
    identity, listening on loopback ports and contacts of each other.  Only
    alice knows bob's address, so exactly one connection is opened (no
    simultaneous open to settle while measuring).

    * round trip: alice sends a message, bob's event stream sees
      ``MessageReceived`` and bob sends a reply at once, alice's event stream
      sees the reply's ``MessageReceived``.  This is the full path twice:
      SQLite commits, sealing, QUIC, the receive window, acks.
    * delivery ack: ``send_message`` until alice's event stream sees
      ``MessageStateChanged(..., "delivered")`` for that message.  No reply
      comes, so bob's ack of a single message leaves after its delayed-ack
      wait (``delivery.ACK_WAIT``, 20 ms: docs/protocol.md, "Delayed acks"):
      this row shows that wait, not the work on the path.
    * throughput: alice sends N messages as fast as she can (yielding to the
      loop every 256, as the reference client does); rate until bob has seen
      all N ``MessageReceived`` events, and until alice has seen all N
      ``delivered`` events.
    * throughput, batched: the same with ``send_messages`` taking 256 messages
      a call (one outbox journal append per call, as ``p2pchat msg --lines`` sends).

aioquic reference
    ``aioquic.asyncio.serve`` on 127.0.0.1 with a throwaway self-signed
    certificate, ALPN "bench", and a client on one bidirectional stream.  Each
    message is a 4-byte big-endian length and a payload whose first byte says
    what the server does with it: ``E`` echo it back, ``C`` count it, ``F``
    answer with the count so far.

    * round trip: a 100-byte ``E`` message written and read back.
    * throughput: N ``C`` messages, then one ``F``; rate until the server has
      read all N, and until the client has the server's count back.  The
      server acknowledges once at the end (p2pchat acks every message).

p2pchat with a passphrase
    The same p2pchat measurements again with both homes protected by a
    passphrase, so both databases are SQLCipher-encrypted (docs/storage.md).
    The ratio printed is encrypted time over plain time (for throughput, plain
    rate over encrypted rate): what encryption at rest costs end to end.

The client is opened as ``aioquic.asyncio.connect`` opens it (a
``QuicConnectionProtocol`` on its own UDP socket), except that the socket is
bound to 127.0.0.1: ``connect`` itself binds the wildcard ``::``.

Ratios are slowdown factors, p2pchat time over aioquic time: for latency
``p2pchat ms / aioquic ms``, for throughput ``aioquic msg/s / p2pchat msg/s``.
Larger means p2pchat is slower; 1.0 would be parity.

The figures depend on the machine and its load (printed before and after);
nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime
import gc
import itertools
import math
import os
import platform
import pstats
import socket
import sqlite3
import ssl
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from p2pchat import node as node_module
from p2pchat.config import Paths, save_settings
from p2pchat.core.events import MessageReceived, MessageStateChanged, NodeEvent
from p2pchat.delivery import ACK_WAIT
from p2pchat.identity import create_identity
from p2pchat.node import EVENT_QUEUE_SIZE, Node

LOOPBACK = "127.0.0.1"
ALPN = "bench"
BODY_BYTES = 100
WARMUP = 50
# Senders yield to the loop after this many messages, so event subscribers
# keep up and the receiver can start working while the sender still sends.
CHUNK = 256
PHASE_TIMEOUT = 120.0
# Burst sizes for --sweep: p2pchat's cost per message depends on the burst size.
SWEEP = (250, 500, 1000, 2000, 4000, 10_000)
HEADER = struct.Struct(">I")
# --trace: called with True before each latency sample starts, False after it ended.
SAMPLE_HOOKS: list[Callable[[bool], None]] = []


# --------------------------------------------------------------------- helpers
def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def body(tag: str, i: int) -> str:
    """A 100-byte ASCII message body: tag, index, padding."""
    head = f"{tag} {i:08d} "
    return head + "x" * (BODY_BYTES - len(head))


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return percentile(values, 50)


@dataclass
class Latency:
    samples: list[float] = field(default_factory=list)  # seconds

    @property
    def p50_ms(self) -> float:
        return percentile(self.samples, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.samples, 99) * 1000


@dataclass
class Throughput:
    """One bulk run: seconds from the first send until each milestone."""

    messages: int
    queued: float  # the sender's loop finished
    received: float  # the receiver has all N
    confirmed: float  # the sender knows the receiver has all N
    cpu: float = 0.0  # process CPU seconds until confirmed (both sides: one process)

    def rate(self, elapsed: float) -> float:
        return self.messages / elapsed


@dataclass
class Results:
    rtt: Latency = field(default_factory=Latency)
    ack: Latency | None = None
    bulk: list[Throughput] = field(default_factory=list)
    sweep: list[Throughput] = field(default_factory=list)
    batched: list[Throughput] = field(default_factory=list)

    def rate(self, milestone: str, *, batched: bool = False) -> float:
        runs = self.batched if batched else self.bulk
        return median([run.rate(getattr(run, milestone)) for run in runs])


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------- p2pchat
PASSPHRASE = "benchmark passphrase"


def make_home(root: Path, name: str, passphrase: str | None = None) -> Paths:
    """A state folder with an identity (sealed when given a passphrase, and then with
    an encrypted database) and a loopback listen address."""
    paths = Paths(root / name)
    paths.ensure()
    create_identity(paths.identity, passphrase)
    save_settings(paths, {"name": name, "listen": f"{LOOPBACK}:{free_udp_port()}"})
    return paths


class Tap:
    """Consumes a node's event stream and hands each event to the current handler."""

    def __init__(self, node: Node) -> None:
        self.handler: Callable[[NodeEvent], None] | None = None
        self.on_event: Callable[[NodeEvent], None] | None = None  # --trace
        self._task = asyncio.ensure_future(self._run(node))

    async def _run(self, node: Node) -> None:
        async for event in node.events():
            if self.on_event is not None:
                self.on_event(event)
            if self.handler is not None:
                self.handler(event)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def chat_pair(passphrase: str | None = None) -> AsyncIterator[tuple[Node, Node, Tap, Tap]]:
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        root = Path(tmp)
        alice = Node(make_home(root, "alice", passphrase), passphrase=passphrase)
        bob = Node(make_home(root, "bob", passphrase), passphrase=passphrase)
        if alice.database_encrypted != (passphrase is not None):
            raise RuntimeError("the homes are not encrypted as asked")
        try:
            await alice.start()
            await bob.start()
            tap_a, tap_b = Tap(alice), Tap(bob)
            await asyncio.sleep(0)  # let both taps subscribe
            # Only alice dials: bob learns her address from the session itself.
            bob.add_contact(alice.peer_id, name="alice")
            alice.add_contact(bob.peer_id, name="bob", addresses=bob.addresses)
            await wait_until(lambda: alice.is_online(bob.peer_id) and bob.is_online(alice.peer_id))
            try:
                yield alice, bob, tap_a, tap_b
            finally:
                await tap_a.close()
                await tap_b.close()
        finally:
            await alice.stop()
            await bob.stop()


async def chat_round_trips(alice: Node, bob: Node, tap_a: Tap, tap_b: Tap, count: int) -> Latency:
    loop = asyncio.get_running_loop()
    alice_id, bob_id = alice.peer_id, bob.peer_id
    waiter: asyncio.Future[float] | None = None

    def on_bob(event: NodeEvent) -> None:
        if isinstance(event, MessageReceived) and event.body.startswith("ping"):
            bob.send_message(alice_id, "pong" + event.body[4:])

    def on_alice(event: NodeEvent) -> None:
        if isinstance(event, MessageReceived) and waiter is not None and not waiter.done():
            waiter.set_result(time.perf_counter())

    tap_a.handler, tap_b.handler = on_alice, on_bob
    result = Latency()
    try:
        for i in range(WARMUP + count):
            waiter = loop.create_future()
            for hook in SAMPLE_HOOKS:
                hook(True)
            start = time.perf_counter()
            alice.send_message(bob_id, body("ping", i))
            end = await asyncio.wait_for(waiter, PHASE_TIMEOUT)
            for hook in SAMPLE_HOOKS:
                hook(False)
            if i >= WARMUP:
                result.samples.append(end - start)
    finally:
        tap_a.handler = tap_b.handler = None
    return result


async def chat_ack_round_trips(alice: Node, bob: Node, tap_a: Tap, count: int) -> Latency:
    loop = asyncio.get_running_loop()
    bob_id = bob.peer_id
    pending: str | None = None
    waiter: asyncio.Future[float] | None = None

    def on_alice(event: NodeEvent) -> None:
        if (
            isinstance(event, MessageStateChanged)
            and event.state == "delivered"
            and event.message_id == pending
            and waiter is not None
            and not waiter.done()
        ):
            waiter.set_result(time.perf_counter())

    tap_a.handler = on_alice
    result = Latency()
    try:
        for i in range(WARMUP + count):
            waiter = loop.create_future()
            for hook in SAMPLE_HOOKS:
                hook(True)
            start = time.perf_counter()
            pending = alice.send_message(bob_id, body("probe", i)).id
            end = await asyncio.wait_for(waiter, PHASE_TIMEOUT)
            for hook in SAMPLE_HOOKS:
                hook(False)
            if i >= WARMUP:
                result.samples.append(end - start)
    finally:
        tap_a.handler = None
    return result


async def chat_bulk(
    alice: Node, bob: Node, tap_a: Tap, tap_b: Tap, n: int, *, batched: bool = False
) -> Throughput:
    """N messages, each through ``send_message`` (each durable in the outbox on return),
    or with ``batched`` through ``send_messages`` in chunks of ``CHUNK`` (one outbox
    journal append per chunk: what ``p2pchat msg --lines`` does)."""
    loop = asyncio.get_running_loop()
    received_all: asyncio.Future[float] = loop.create_future()
    delivered_all: asyncio.Future[float] = loop.create_future()
    alice_id, bob_id = alice.peer_id, bob.peer_id
    counts = {"received": 0, "delivered": 0}
    recv_before = bob.store.recv_seq(alice_id)

    def on_bob(event: NodeEvent) -> None:
        if isinstance(event, MessageReceived) and event.body.startswith("bulk"):
            counts["received"] += 1
            if counts["received"] == n:
                received_all.set_result(time.perf_counter())

    def on_alice(event: NodeEvent) -> None:
        # Earlier phases are fully delivered, so every "delivered" now is a bulk message.
        if isinstance(event, MessageStateChanged) and event.state == "delivered":
            counts["delivered"] += 1
            if counts["delivered"] == n:
                delivered_all.set_result(time.perf_counter())

    tap_a.handler, tap_b.handler = on_alice, on_bob
    try:
        cpu_start = time.process_time()
        start = time.perf_counter()
        if batched:
            for first in range(0, n, CHUNK):
                texts = [body("bulk", i) for i in range(first, min(n, first + CHUNK))]
                alice.send_messages(bob_id, texts)
                await asyncio.sleep(0)
        else:
            for i in range(n):
                alice.send_message(bob_id, body("bulk", i))
                if i % CHUNK == CHUNK - 1:
                    await asyncio.sleep(0)
        queued = time.perf_counter()
        received = await asyncio.wait_for(received_all, PHASE_TIMEOUT)
        confirmed = await asyncio.wait_for(delivered_all, PHASE_TIMEOUT)
        cpu = time.process_time() - cpu_start
    finally:
        tap_a.handler = tap_b.handler = None
    if bob.store.recv_seq(alice_id) != recv_before + n or alice.store.outbox(bob_id):
        raise RuntimeError("bulk run did not end with every message stored and acknowledged")
    return Throughput(n, queued - start, received - start, confirmed - start, cpu)


async def bench_p2pchat(
    args: argparse.Namespace, profiler: cProfile.Profile | None, passphrase: str | None = None
) -> Results:
    results = Results()
    async with chat_pair(passphrase) as (alice, bob, tap_a, tap_b):
        gc.collect()
        results.rtt = await chat_round_trips(alice, bob, tap_a, tap_b, args.rtt_samples)
        gc.collect()
        results.ack = await chat_ack_round_trips(alice, bob, tap_a, args.rtt_samples)
        await chat_bulk(alice, bob, tap_a, tap_b, min(args.messages, 500))  # warm-up
        for _ in range(args.rounds):
            gc.collect()
            results.bulk.append(await chat_bulk(alice, bob, tap_a, tap_b, args.messages))
        for _ in range(args.rounds):
            gc.collect()
            results.batched.append(
                await chat_bulk(alice, bob, tap_a, tap_b, args.messages, batched=True)
            )
        for n in SWEEP if args.sweep else ():
            gc.collect()
            results.sweep.append(await chat_bulk(alice, bob, tap_a, tap_b, n))
        if profiler is not None:
            gc.collect()
            profiler.enable()
            await chat_bulk(alice, bob, tap_a, tap_b, args.messages)
            profiler.disable()
    return results


# ------------------------------------------------------------------- tracing
class Tracer:
    """Stage timestamps (``perf_counter``) along the message path of both nodes, and
    the event-loop turn each one happened in, for ``--trace``.

    It wraps the methods each stage runs through on the two nodes (and the loop's
    ``_run_once`` and selector, to count turns and time spent blocked in ``select``),
    so it measures the code as it is; the wrappers cost a few µs per stage.
    """

    def __init__(self) -> None:
        self.marks: list[tuple[float, int, str, str]] = []
        self.turn = 0
        self.enabled = False

    def sampler(self) -> Callable[[bool], None]:
        """A ``SAMPLE_HOOKS`` entry: each sample's marks become one entry of ``samples``."""
        self.samples: list[list[tuple[float, int, str, str]]] = []

        def cut(start: bool) -> None:
            if start:
                self.marks = []
                self.enabled = True
            else:
                self.mark("bench", "sample end (the measuring task woke up)")
                self.enabled = False
                self.samples.append(self.marks)

        return cut

    def mark(self, who: str, label: str) -> None:
        if self.enabled:
            self.marks.append((time.perf_counter(), self.turn, who, label))

    def wrap(self, owner: object, name: str, who: str | Callable[..., str], label: str) -> None:
        """Record ``label`` (``{}`` filled with the first argument's type) before and
        ``label + " done"`` after ``owner.name`` runs."""
        inner = getattr(owner, name)
        tracer = self

        def wrapper(*args: object, **kwargs: object) -> object:
            if not tracer.enabled:
                return inner(*args, **kwargs)
            whom = who if isinstance(who, str) else who(*args)
            text = label.format(type(args[-1]).__name__ if args else "")
            tracer.mark(whom, text)
            try:
                return inner(*args, **kwargs)
            finally:
                tracer.mark(whom, text + " done")

        setattr(owner, name, wrapper)

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        run_once = loop._run_once  # type: ignore[attr-defined]
        selector = loop._selector  # type: ignore[attr-defined]
        select = selector.select
        tracer = self

        def counted() -> None:
            tracer.turn += 1
            run_once()

        def timed_select(timeout: float | None = None) -> object:
            start = time.perf_counter()
            ready = select(timeout)
            waited = time.perf_counter() - start
            if waited > 50e-6:
                tracer.mark("loop", f"blocked in select {waited * 1e6:.0f} µs (timeout {timeout})")
            return ready

        loop._run_once = counted  # type: ignore[attr-defined]
        selector.select = timed_select

    def attach_node(self, node: Node, who: str) -> None:
        endpoint = node._endpoint
        assert endpoint is not None
        self.wrap(node, "send_message", who, "send_message")
        # A node's store holds the message journal: queueing a message, or storing the
        # text messages received in a turn, is one append to it, no commit.
        self.wrap(node.store, "queue_message", who, "outbox journal append")
        self.wrap(node.store, "receive_messages", who, "inbox journal append")
        self.wrap(node.store, "batch", who, "group commit")
        self.wrap(node.delivery, "flush", who, "flush")
        self.wrap(node.delivery, "_flush_turn", who, "receive turn")
        self.wrap(node, "_emit", who, "emit {}")
        self.wrap(node.delivery, "_emit", who, "emit {}")
        self.wrap(node, "frame_received", who, "frame {}")
        self.wrap(endpoint, "sendto", who, "sendto")
        self.wrap(endpoint, "_receive", who, "datagram in")


def attach_classes(tracer: Tracer, names: dict[object, str]) -> None:
    """Class-level wrappers for objects created per connection (links, sessions)."""
    from p2pchat.net import endpoint as endpoint_module
    from p2pchat.net import peer as peer_module

    tracer.wrap(
        peer_module.PeerConnection, "send",
        lambda conn, frame: names.get(conn.link.endpoint, "?"), "seal+write {}",
    )  # fmt: skip
    tracer.wrap(
        endpoint_module.QuicLink, "_on_timer",
        lambda link: names.get(link.endpoint, "?"), "QUIC/keepalive timer",
    )  # fmt: skip
    tracer.wrap(
        endpoint_module.QuicLink, "_scheduled_transmit",
        lambda link: names.get(link.endpoint, "?"), "scheduled transmit",
    )  # fmt: skip


async def trace_round_trips(count: int) -> None:
    """``count`` traced round trips and delivery acks: the timeline of the median one,
    and the median time of each stage from the start."""
    loop = asyncio.get_running_loop()
    tracer = Tracer()
    tracer.attach_loop(loop)
    async with chat_pair() as (alice, bob, tap_a, tap_b):
        assert alice._endpoint is not None and bob._endpoint is not None
        names: dict[object, str] = {alice._endpoint: "alice", bob._endpoint: "bob"}
        attach_classes(tracer, names)
        tracer.attach_node(alice, "alice")
        tracer.attach_node(bob, "bob")
        tap_a.on_event = lambda event: tracer.mark("alice", f"consumed {type(event).__name__}")
        tap_b.on_event = lambda event: tracer.mark("bob", f"consumed {type(event).__name__}")
        for title in ("round trip", "delivery ack"):
            cut = tracer.sampler()
            SAMPLE_HOOKS.append(cut)
            try:
                if title == "round trip":
                    await chat_round_trips(alice, bob, tap_a, tap_b, count)
                else:
                    await chat_ack_round_trips(alice, bob, tap_a, count)
            finally:
                SAMPLE_HOOKS.remove(cut)
            await asyncio.sleep(0.2)  # timers of the last sample (sent marks) run out
            print_trace(title, tracer.samples[WARMUP:])


def print_trace(title: str, samples: list[list[tuple[float, int, str, str]]]) -> None:
    def span(sample: list[tuple[float, int, str, str]]) -> float:
        ends = [t for t, _turn, _who, label in sample if label.startswith("sample end")]
        return ends[0] - sample[0][0]

    samples = [s for s in samples if s and any(m[3].startswith("sample end") for m in s)]
    ordered = sorted(samples, key=span)
    typical = ordered[len(ordered) // 2]
    # Median offset of each (who, label, occurrence) over every sample that has it.
    offsets: dict[tuple[str, str, int], list[float]] = {}
    for sample in samples:
        seen: dict[tuple[str, str], int] = {}
        t0 = sample[0][0]
        for t, _turn, who, label in sample:
            n = seen.get((who, label), 0)
            seen[(who, label)] = n + 1
            offsets.setdefault((who, label, n), []).append(t - t0)
    print(f"\n{title}: {len(samples)} traced samples, median {span(typical) * 1e6:.0f} µs")
    print(f"{'µs':>8} {'median':>8} {'turn':>5}  {'node':<6} stage")
    seen = {}
    t0, turn0 = typical[0][0], typical[0][1]
    for t, turn, who, label in typical:
        n = seen.get((who, label), 0)
        seen[(who, label)] = n + 1
        values = offsets.get((who, label, n), [])
        med = f"{median(values) * 1e6:8.0f}" if len(values) > len(samples) // 2 else " " * 8
        print(f"{(t - t0) * 1e6:8.0f} {med} {turn - turn0:>5}  {who:<6} {label}")
    print_stage_breakdown(samples, span)


# Where a traced sample's time goes: each stage's own time (a stage inside another is
# not counted twice), by the stage's first word(s).
STAGE_CATEGORIES = (
    ("outbox journal append", "sender's outbox write (send_message)"),
    ("inbox journal append", "receiver's store (window, journal append)"),
    ("receive turn", "receive turn: acks owed, events"),
    ("send_message", "send_message, the rest"),
    ("flush", "group commit and its bookkeeping"),
    ("group commit", "group commit and its bookkeeping"),
    ("seal+write", "encode + seal + QUIC stream write"),
    ("scheduled transmit", "QUIC packets out (seal at transmit, aioquic, sendto)"),
    ("sendto", "QUIC packets out (seal at transmit, aioquic, sendto)"),
    ("QUIC/keepalive timer", "QUIC timers (ACK-only packets, probes, pings)"),
    ("datagram in", "QUIC packets in (aioquic, open, decode)"),
    ("frame", "frame dispatch (node, delivery)"),
    ("emit", "events emitted"),
)
IDLE = "blocked in select (waiting for a timer or a packet)"
BETWEEN = "loop turns, task switches, event consumers"


def stage_times(sample: list[tuple[float, int, str, str]]) -> dict[str, float]:
    """Own time per category of one sample, plus counts of datagrams, commits, turns."""
    totals: dict[str, float] = {}
    stack: list[str] = []
    for (t, _turn, _who, label), (t_next, _n, _w, _l) in itertools.pairwise(sample):
        if label.startswith("blocked in select"):
            waited = float(label.split()[3]) * 1e-6
            totals[IDLE] = totals.get(IDLE, 0.0) + waited
            totals[BETWEEN] = totals.get(BETWEEN, 0.0) - waited
        elif label.endswith(" done"):
            if stack:
                stack.pop()
        else:
            category = next((c for key, c in STAGE_CATEGORIES if label.startswith(key)), None)
            if category is not None:
                stack.append(category)
        where = stack[-1] if stack else BETWEEN
        totals[where] = totals.get(where, 0.0) + (t_next - t)
    labels = [label for _t, _turn, _who, label in sample]
    totals["datagrams"] = sum(label == "sendto" for label in labels)
    totals["journal appends"] = sum(label.endswith("journal append") for label in labels)
    totals["group commits"] = sum(label == "group commit" for label in labels)
    totals["loop turns"] = sample[-1][1] - sample[0][1]
    return totals


def print_stage_breakdown(
    samples: list[list[tuple[float, int, str, str]]],
    span: Callable[[list[tuple[float, int, str, str]]], float],
) -> None:
    """Mean own time per category over the middle half of the samples (by span): the
    typical round trip, without the tails a loaded machine adds."""
    ordered = sorted(samples, key=span)
    middle = ordered[len(ordered) // 4 : len(ordered) - len(ordered) // 4] or ordered
    per_sample = [stage_times(s) for s in middle]
    keys = sorted({k for times in per_sample for k in times})
    counts = ("datagrams", "journal appends", "group commits", "loop turns")
    heading = "where the time goes (own time; middle half of the samples)"
    print(f"\n  {heading:<56}{'µs':>8}{'share':>8}")
    total = sum(span(s) for s in middle) / len(middle)
    samples = middle
    rows = [(k, sum(t.get(k, 0.0) for t in per_sample) / len(samples)) for k in keys]
    for key, mean in sorted(rows, key=lambda row: -row[1]):
        if key not in counts:
            print(f"  {key:<56}{mean * 1e6:>8.0f}{100 * mean / total:>7.0f}%")
    print(f"  {'total (mean span)':<56}{total * 1e6:>8.0f}")
    print("  " + ", ".join(f"{mean:.1f} {key}" for key, mean in rows if key in counts))


# ---------------------------------------------------------- aioquic reference
def write_certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class BenchServer:
    """Serves the echo/count protocol on every stream a client opens."""

    def __init__(self) -> None:
        self.count = 0
        self.finished_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def stream_handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = await reader.readexactly(HEADER.size)
                payload = await reader.readexactly(HEADER.unpack(header)[0])
                kind = payload[:1]
                if kind == b"E":
                    writer.write(header + payload)
                elif kind == b"C":
                    self.count += 1
                elif kind == b"F":
                    self.finished_at = time.perf_counter()
                    writer.write(HEADER.pack(4) + HEADER.pack(self.count))
                    self.count = 0

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def connect_loopback(
    port: int, configuration: QuicConfiguration
) -> AsyncIterator[QuicConnectionProtocol]:
    """``aioquic.asyncio.connect`` with the client socket bound to 127.0.0.1."""
    loop = asyncio.get_running_loop()
    connection = QuicConnection(configuration=configuration)
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: QuicConnectionProtocol(connection), local_addr=(LOOPBACK, 0)
    )
    try:
        protocol.connect((LOOPBACK, port))
        await asyncio.wait_for(protocol.wait_connected(), 10)
        yield protocol
    finally:
        protocol.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(protocol.wait_closed(), 5)
        transport.close()


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(HEADER.size)
    return await reader.readexactly(HEADER.unpack(header)[0])


async def quic_round_trips(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int
) -> Latency:
    result = Latency()
    for i in range(WARMUP + count):
        message = frame(b"E" + body("echo", i).encode()[1:])
        start = time.perf_counter()
        writer.write(message)
        await asyncio.wait_for(read_frame(reader), PHASE_TIMEOUT)
        end = time.perf_counter()
        if i >= WARMUP:
            result.samples.append(end - start)
    return result


async def quic_bulk(
    server: BenchServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
) -> Throughput:
    cpu_start = time.process_time()
    start = time.perf_counter()
    for i in range(n):
        writer.write(frame(b"C" + body("bulk", i).encode()[1:]))
        if i % CHUNK == CHUNK - 1:
            await asyncio.sleep(0)
    writer.write(frame(b"F"))
    queued = time.perf_counter()
    reply = await asyncio.wait_for(read_frame(reader), PHASE_TIMEOUT)
    confirmed = time.perf_counter()
    cpu = time.process_time() - cpu_start
    if HEADER.unpack(reply)[0] != n:
        raise RuntimeError(f"server counted {HEADER.unpack(reply)[0]} of {n} messages")
    return Throughput(n, queued - start, server.finished_at - start, confirmed - start, cpu)


async def bench_aioquic(args: argparse.Namespace, profiler: cProfile.Profile | None) -> Results:
    results = Results()
    with tempfile.TemporaryDirectory(prefix="aioquic-bench-") as tmp:
        cert_path, key_path = write_certificate(Path(tmp))
        server_config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
        server_config.load_cert_chain(cert_path, key_path)
        client_config = QuicConfiguration(
            is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE, server_name="bench"
        )
        handler = BenchServer()
        port = free_udp_port()
        quic_server = await serve(
            LOOPBACK, port, configuration=server_config, stream_handler=handler.stream_handler
        )
        try:
            async with connect_loopback(port, client_config) as client:
                reader, writer = await client.create_stream()
                gc.collect()
                results.rtt = await quic_round_trips(reader, writer, args.rtt_samples)
                await quic_bulk(handler, reader, writer, min(args.messages, 500))  # warm-up
                for _ in range(args.rounds):
                    gc.collect()
                    results.bulk.append(await quic_bulk(handler, reader, writer, args.messages))
                for n in SWEEP if args.sweep else ():
                    gc.collect()
                    results.sweep.append(await quic_bulk(handler, reader, writer, n))
                if profiler is not None:
                    gc.collect()
                    profiler.enable()
                    await quic_bulk(handler, reader, writer, args.messages)
                    profiler.disable()
        finally:
            quic_server.close()
            await handler.close()
    return results


# ------------------------------------------------------------------ profiling
CATEGORIES = (
    ("SQLite (store/ + sqlite3)", ("p2pchat/store/", "sqlite3.")),
    ("NaCl sealing/opening", ("nacl/", "_sodium")),
    ("msgpack + frame checks (chat.py)", ("msgpack", "p2pchat/core/chat.py")),
    ("aioquic (QUIC + packet protection)", ("aioquic/", "_buffer", "_crypto", ".aead.AESGCM")),
    ("other p2pchat code", ("p2pchat/",)),
    ("asyncio loop + UDP syscalls", ("asyncio/", "selectors", "socket")),
)


def profile_breakdown(profiler: cProfile.Profile) -> list[tuple[str, float]]:
    """Own time (tottime) per layer; the shares matter, cProfile inflates the total."""
    stats = pstats.Stats(profiler)
    totals: dict[str, float] = {}
    for (filename, _line, func), row in stats.stats.items():
        where = f"{filename} {func}"
        label = next(
            (name for name, keys in CATEGORIES if any(k in where for k in keys)), "everything else"
        )
        totals[label] = totals.get(label, 0.0) + row[2]
    return sorted(totals.items(), key=lambda item: -item[1])


def print_profile(title: str, profiler: cProfile.Profile, n: int) -> None:
    breakdown = profile_breakdown(profiler)
    total = sum(seconds for _, seconds in breakdown)
    print(f"\n{title} (cProfile own time, one bulk run of {n:,} messages)")
    for label, seconds in breakdown:
        print(f"  {label:<38} {seconds / n * 1e6:8.1f} µs/msg  {100 * seconds / total:5.1f} %")
    print(f"  {'total':<38} {total / n * 1e6:8.1f} µs/msg")


# -------------------------------------------------------------------- report
def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def print_report(args: argparse.Namespace, chat: Results, quic: Results) -> None:
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    print()
    print(f"date       {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"python     {platform.python_version()} ({platform.python_implementation()})")
    print(
        f"packages   aioquic {package_version('aioquic')}, pynacl {package_version('pynacl')},"
        f" msgpack {package_version('msgpack')}, cryptography {package_version('cryptography')},"
        f" SQLite {sqlite3.sqlite_version}"
    )
    print(
        f"machine    {platform.system()} {platform.machine()}, {cpu_model()},"
        f" {cpus} CPUs ({usable} usable)"
    )
    print(
        f"workload   {BODY_BYTES}-byte messages; {args.rtt_samples} round trips after {WARMUP}"
        f" warm-up; bulk {args.messages:,} messages x {args.rounds} rounds (median)"
    )
    print(
        "ratio      slowdown = p2pchat time / aioquic time  (throughput: aioquic rate / p2pchat"
        " rate)"
    )
    print()
    assert chat.ack is not None
    wait = f"{ACK_WAIT * 1000:.0f} ms"
    rows = [
        ("round trip p50 (ms)", chat.rtt.p50_ms, quic.rtt.p50_ms, "p2pchat: message + reply"),
        ("round trip p99 (ms)", chat.rtt.p99_ms, quic.rtt.p99_ms, "aioquic: echo"),
        ("delivery ack p50 (ms)", chat.ack.p50_ms, quic.rtt.p50_ms, "send -> 'delivered' with"),
        ("delivery ack p99 (ms)", chat.ack.p99_ms, quic.rtt.p99_ms, f"no reply: {wait} ack wait"),
    ]
    header = f"{'':<26}{'p2pchat':>12}{'aioquic':>12}{'slowdown':>10}  note"
    print(header)
    print("-" * (len(header) + 26))
    for label, ours, ref, note in rows:
        print(f"{label:<26}{ours:>12.3f}{ref:>12.3f}{ours / ref:>9.1f}x  {note}")
    for label, milestone, note in (
        ("received (msg/s)", "received", "receiver has all N"),
        ("confirmed (msg/s)", "confirmed", "sender knows (acks)"),
    ):
        ours, ref = chat.rate(milestone), quic.rate(milestone)
        print(f"{label:<26}{ours:>12,.0f}{ref:>12,.0f}{ref / ours:>9.1f}x  {note}")
    # CPU time of the process until confirmed: both sides' work per message, which a
    # loaded machine stretches less than the rates (another process's turn is not in it).
    ours, ref = (median([r.cpu / r.messages * 1e6 for r in res.bulk]) for res in (chat, quic))
    print(f"{'CPU per message (µs)':<26}{ours:>12.1f}{ref:>12.1f}{ours / ref:>9.1f}x  both sides")
    if chat.batched:
        for label, milestone in (
            ("received, batched (msg/s)", "received"),
            ("confirmed, batched", "confirmed"),
        ):
            ours, ref = chat.rate(milestone, batched=True), quic.rate(milestone)
            print(
                f"{label:<26}{ours:>12,.0f}{ref:>12,.0f}{ref / ours:>9.1f}x"
                f"  send_messages, {CHUNK} a call"
            )
    print()
    for name, res in (("p2pchat", chat), ("aioquic", quic)):
        runs = ", ".join(f"{r.rate(r.received):,.0f}/{r.rate(r.confirmed):,.0f}" for r in res.bulk)
        send_loop = median([r.queued for r in res.bulk]) / args.messages * 1e6
        cpu = ", ".join(f"{r.cpu / r.messages * 1e6:.0f}" for r in res.bulk)
        print(
            f"{name} bulk rounds (received/confirmed msg/s): {runs};"
            f" send loop {send_loop:.0f} µs/msg; CPU µs/msg {cpu}"
        )
    if chat.batched:
        runs = ", ".join(
            f"{r.rate(r.received):,.0f}/{r.rate(r.confirmed):,.0f}" for r in chat.batched
        )
        print(f"p2pchat batched rounds (received/confirmed msg/s): {runs}")


def print_encryption(plain: Results, sealed: Results) -> None:
    """What encryption at rest costs end to end: the same runs with SQLCipher databases."""
    assert plain.ack is not None and sealed.ack is not None
    print("\nencryption at rest: p2pchat with a passphrase (SQLCipher) against without")
    header = f"{'':<26}{'plain':>12}{'encrypted':>12}{'ratio':>10}"
    print(header)
    print("-" * len(header))
    for label, ours, base in (
        ("round trip p50 (ms)", sealed.rtt.p50_ms, plain.rtt.p50_ms),
        ("round trip p99 (ms)", sealed.rtt.p99_ms, plain.rtt.p99_ms),
        ("delivery ack p50 (ms)", sealed.ack.p50_ms, plain.ack.p50_ms),
        ("delivery ack p99 (ms)", sealed.ack.p99_ms, plain.ack.p99_ms),
    ):
        print(f"{label:<26}{base:>12.3f}{ours:>12.3f}{ours / base:>9.2f}x")
    for label, milestone in (("received (msg/s)", "received"), ("confirmed (msg/s)", "confirmed")):
        ours, base = sealed.rate(milestone), plain.rate(milestone)
        print(f"{label:<26}{base:>12,.0f}{ours:>12,.0f}{base / ours:>9.2f}x")
    runs = ", ".join(f"{r.rate(r.received):,.0f}/{r.rate(r.confirmed):,.0f}" for r in sealed.bulk)
    print(f"encrypted bulk rounds (received/confirmed msg/s): {runs}")
    print(
        f"ratio: encrypted time / plain time (throughput: plain rate / encrypted rate);"
        f" SQLCipher {sqlcipher_version()}"
    )


def sqlcipher_version() -> str:
    import sqlcipher3

    with contextlib.closing(sqlcipher3.connect(":memory:")) as db:
        return str(db.execute("PRAGMA cipher_version").fetchone()[0])


def print_sweep(chat: Results, quic: Results) -> None:
    print("\nburst size sweep (one round per size; until the receiver has all N)")
    columns = ("N", 6), ("p2pchat msg/s", 15), ("µs/msg", 9), ("aioquic msg/s", 15), ("µs/msg", 9)
    print("".join(f"{title:>{width}}" for title, width in columns) + f"{'slowdown':>10}")
    for ours, ref in zip(chat.sweep, quic.sweep, strict=True):
        rate, ref_rate = ours.rate(ours.received), ref.rate(ref.received)
        print(
            f"{ours.messages:>6}{rate:>15,.0f}{1e6 / rate:>9.0f}"
            f"{ref_rate:>15,.0f}{1e6 / ref_rate:>9.1f}{ref_rate / rate:>9.0f}x"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="p2pchat 1:1 messaging against a bare aioquic echo, on 127.0.0.1.",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=2000,
        metavar="N",
        help="messages per bulk throughput round (default 2000)",
    )
    parser.add_argument(
        "--rtt-samples",
        type=int,
        default=1000,
        metavar="M",
        help="measured round trips per latency figure, after a warm-up of 50 (default 1000)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        metavar="R",
        help="bulk rounds per side; the median rate is reported (default 5)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help=f"also run one bulk round per burst size {', '.join(map(str, SWEEP))} on each side",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="only trace the stages of round trips and delivery acks (--rtt-samples of each)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the timed runs, profile one more bulk round per side with cProfile",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.messages <= EVENT_QUEUE_SIZE:
        parser.error(f"--messages must be between 1 and {EVENT_QUEUE_SIZE}")
    if args.rtt_samples < 1 or args.rounds < 1:
        parser.error("--rtt-samples and --rounds must be positive")
    return args


async def main_async(args: argparse.Namespace) -> None:
    # One flush can now announce a whole burst at once (10,000 "delivered" events); the
    # taps must see every event, so their queues hold more than a node's default.
    node_module.EVENT_QUEUE_SIZE = 8 * max(SWEEP)
    if args.trace:
        print(f"load average before: {load_average()}", flush=True)
        await trace_round_trips(args.rtt_samples)
        print(f"\nload average after: {load_average()}")
        return
    print(f"load average before: {load_average()}", flush=True)
    chat_profiler = cProfile.Profile() if args.profile else None
    quic_profiler = cProfile.Profile() if args.profile else None
    print("p2pchat: two nodes on 127.0.0.1 ...", flush=True)
    chat = await bench_p2pchat(args, chat_profiler)
    print("p2pchat with passphrases (encrypted databases) ...", flush=True)
    sealed = await bench_p2pchat(args, None, PASSPHRASE)
    print("aioquic: echo server and client on 127.0.0.1 ...", flush=True)
    quic = await bench_aioquic(args, quic_profiler)
    print_report(args, chat, quic)
    print_encryption(chat, sealed)
    if args.sweep:
        print_sweep(chat, quic)
    if chat_profiler is not None and quic_profiler is not None:
        print_profile("p2pchat", chat_profiler, args.messages)
        print_profile("aioquic reference", quic_profiler, args.messages)
    print(f"\nload average after: {load_average()}")


def load_average() -> str:
    """The machine's load (1, 5, 15 minutes): these figures mean little under load."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Soak: two daemons chat and swap files while a third party attacks them with every
hole of issue 9 at once.

Usage (from the repository root)::

    python3 benchmarks/soak.py                 # 10 minutes
    python3 benchmarks/soak.py --minutes 1     # tests/attacks/test_soak.py runs ~0.75

Victims
    Two real ``p2pchat daemon`` processes, alice and bob, on 127.0.0.1, each the
    other's DHT bootstrap (a private swarm: both serve KRPC), ``--no-mdns``, contacts
    of each other, each accepting the other's files without asking (and no one
    else's).  Their daily message quota per contact is set to 64 KiB (or more, so the
    honest traffic of the run fits in a third of it) so the quota attack passes it
    within seconds.

Honest traffic, both ways, for the whole run
    Messages at ``--msg-rate`` per second in each direction, each numbered, through
    the control socket (``send``); arrivals are watched on each daemon's event
    stream.  Files of ``--file-mib`` MiB, one after the other in each direction
    (``send_files``, ``wait_transfer``), each checked by SHA-256 on the receiving
    side and deleted.

The attacker (a third process, this script with ``--attack``), all at once, for the
whole run, from its own loopback addresses (each 127.x.y.z is another host to the
victims), using ``tests/attacks/attackers.py``:

* TCP data port (found the way a port scan would): 24 idle connections held from 8
  addresses (reopened as the victim closes them), garbage preambles at
  ``--garbage-rate``, 40 connections at once every 15 s (hole 1);
* a hostile contact asking for resends: ``pending`` then ``gap`` pairs at
  ``--gap-rate`` while it never acknowledges the 40 x 8 kB messages each victim
  has queued for it (hole 2);
* a hostile contact offering files and cancelling at once: 40 one-file offers at
  once, then ``--offer-files`` files at ``--offer-rate`` (hole 3);
* fake QUIC Initials at ``--initial-rate`` per victim from 64 source ports (hole 5);
* a hostile contact and strangers announcing bad names: every contact session's
  Hello carries one, and a stranger with one connects every 3 s (hole 6);
* a hostile contact reusing the ids of the honest messages (learned from the
  harness as they are sent), towards both victims (hole 7);
* KRPC ``find_node`` queries at ``--krpc-rate`` per victim from 256 source
  addresses (hole 9);
* a hostile contact sending 16 kB messages past the daily quota (then one every
  0.5 s, restarting where each ``defer`` says) (hole 3, messages).

Every ``--report-every`` seconds (60) it prints messages sent / received / late
(sent over 30 s ago and not received) / duplicated, files sent / verified /
failed, each victim's RSS and CPU, the attacker's counts, what the victims turned
away, and the load average.  After the run, with the attack still on, it waits for
what is in flight (at most ``--drain`` s), stops the attacker, then checks: no
message lost or duplicated (both histories), every message acknowledged, every
file verified, each victim's RSS peak within ``--rss-growth-mib`` of its start,
both daemons alive with no error in their logs, and every attack having reached
the victims (their refusal counters moved).  Exit status 0 only if all hold.

Timing depends on the machine and on what else runs on it: the load average is
printed next to every figure.  Needs Linux (``/proc`` for RSS, CPU and the port
scan).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(0, str(ROOT))

from p2pchat.atrest import open_home  # noqa: E402
from p2pchat.config import Paths, load_settings, save_settings  # noqa: E402
from p2pchat.core import chat  # noqa: E402
from p2pchat.identity import create_identity, load_identity  # noqa: E402
from p2pchat.net.control import ControlClient  # noqa: E402
from tests.attacks.attackers import (  # noqa: E402
    Counts,
    HostileLink,
    HostilePeer,
    InitialFlood,
    KrpcFlood,
    bad_hello,
    chat_message,
    flood_files,
    listening_tcp_ports,
    offer_cancel_flood,
    pending_gap_pairs,
    tcp_burst,
    tcp_garbage,
    tcp_hold,
)
from tests.daemons import DhtDaemon, cli_env, make_home, rss_kib, wait_for_control  # noqa: E402

MiB = 1 << 20
LATE_AFTER = 30.0
"""A message not received this long after it was sent counts as late (not yet lost:
the run ends with a drain and a check of both histories)."""
QUEUED_FOR_RESENDER = 40
RESENDER_BODY = 8000
ROLES = ("resender", "offerer", "quota", "reuser")
ATTACKS = ("tcp", *ROLES, "initials", "names", "krpc")
QUOTA_BODY = 16_000
OFFER_BURST = 40
"""Offers the offer flood opens with: more than a contact's burst (32)."""
STRANGER_EVERY = 3.0
BURST_EVERY = 15.0
HOLDS = 24
TCP_SOURCES = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ victims


class SoakDaemon(DhtDaemon):
    """A DHT daemon whose output goes to a log file (read after the run), so a long
    run never blocks on a full pipe."""

    def __init__(
        self, home: Path, listen: str, extra: list[str], log: Path, verbose: bool = False
    ) -> None:
        env = cli_env(
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        )
        super().__init__(home, listen, extra=extra, env=env)
        self.log = log
        self.name = home.name
        self.verbose = verbose

    def argv(self) -> list[str]:
        argv = super().argv()
        return [*argv[:3], "-v", *argv[3:]] if self.verbose else argv

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            return subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT, env=self.env)

    async def start(self) -> None:
        self.proc = self._spawn()  # type: ignore[assignment]
        self.client = await wait_for_control(
            self.paths, self.proc, output=lambda: self.log.read_text(errors="replace")
        )

    async def stop(self) -> str:
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        return self.log.read_text(errors="replace")

    async def connect(self) -> ControlClient:
        """A control connection of its own (one per task: calls do not interleave)."""
        client = ControlClient(self.paths.control_socket, timeout=60)
        await client.connect()
        return client

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def udp_socket(port: int) -> tuple[int, int]:
    """(bytes waiting in the receive queue, datagrams dropped) of the UDP socket bound
    to 127.0.0.1:``port``: whether the node keeps up with what reaches it."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[4].split(":")[1], 16), int(fields[12])
    return 0, 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


@dataclass
class Usage:
    """RSS and CPU samples of one process."""

    pid: int
    udp_port: int = 0
    start_rss: int = 0
    peak_rss: int = 0
    rss: int = 0
    cpu: float = 0.0
    cpu_mark: tuple[float, float] = (0.0, 0.0)

    def sample(self) -> None:
        self.rss = rss_kib(self.pid)
        self.peak_rss = max(self.peak_rss, self.rss)

    def begin(self) -> None:
        self.sample()
        self.start_rss = self.peak_rss = self.rss
        self.cpu_mark = (time.monotonic(), cpu_seconds(self.pid))

    def cpu_percent(self) -> float:
        """Share of one core since the last call."""
        now, used = time.monotonic(), cpu_seconds(self.pid)
        then, before = self.cpu_mark
        self.cpu_mark = (now, used)
        return 100.0 * (used - before) / max(now - then, 1e-6)


# ------------------------------------------------------------------ honest traffic


@dataclass
class Direction:
    """One way of the honest traffic: src's messages and files to dst."""

    src: SoakDaemon
    dst: SoakDaemon
    sent: dict[int, float] = field(default_factory=dict)  # n -> when sent
    ids: dict[int, str] = field(default_factory=dict)
    received: collections.Counter[int] = field(default_factory=collections.Counter)
    acked: set[str] = field(default_factory=set)
    send_errors: int = 0
    files_sent: int = 0
    files_verified: int = 0
    files_failed: list[str] = field(default_factory=list)
    file_busy: bool = False
    current: str | None = None  # the transfer under way
    progress: str = ""

    @property
    def label(self) -> str:
        return f"{self.src.name}->{self.dst.name}"

    def body(self, n: int) -> str:
        return f"soak {self.label} {n:06d} " + "." * 80

    def late(self, now: float) -> int:
        return sum(
            1 for n, at in self.sent.items() if n not in self.received and now - at > LATE_AFTER
        )

    def in_flight(self) -> int:
        return sum(1 for n in self.sent if n not in self.received)

    def duplicated(self) -> int:
        return sum(c - 1 for c in self.received.values() if c > 1)


def parse_number(body: str, label: str) -> int | None:
    prefix = f"soak {label} "
    if not body.startswith(prefix):
        return None
    try:
        return int(body[len(prefix) : len(prefix) + 6])
    except ValueError:
        return None


async def watch_events(
    victim: SoakDaemon, incoming: Direction, outgoing: Direction, ready: asyncio.Event
) -> None:
    """Count honest arrivals (``MessageReceived``) and acknowledgements on the victim;
    ``ready`` once subscribed (before any message is sent)."""
    reader, writer = await asyncio.open_unix_connection(
        str(victim.paths.control_socket), limit=1 << 24
    )
    try:
        writer.write(b'{"op": "events"}\n')
        await writer.drain()
        await reader.readline()  # {"ok": true, "result": "streaming"}
        ready.set()
        while line := await reader.readline():
            event = json.loads(line)
            kind = event.get("type")
            if kind == "MessageReceived":
                n = parse_number(event.get("body", ""), incoming.label)
                if n is not None:
                    incoming.received[n] += 1
            elif kind == "MessageStateChanged" and event.get("state") in ("delivered", "read"):
                outgoing.acked.add(event.get("message_id", ""))
    finally:
        writer.close()


async def send_messages(
    way: Direction, rate: float, stop: asyncio.Event, reuse: asyncio.Queue[str]
) -> None:
    client = await way.src.connect()
    try:
        n = 0
        started = time.monotonic()
        while not stop.is_set():
            due = started + n / rate
            if (wait := due - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await stop.wait()
                continue
            try:
                reply = await client.call("send", {"contact": way.dst.name, "text": way.body(n)})
            except Exception as exc:  # counted and reported: a refused send is a failure
                way.send_errors += 1
                print(f"  ! {way.label} send {n} failed: {exc}", flush=True)
                await asyncio.sleep(1)
                client = await way.src.connect()
                continue
            way.sent[n] = time.monotonic()
            way.ids[n] = reply["message"]["id"]
            with contextlib.suppress(asyncio.QueueFull):
                reuse.put_nowait(reply["message"]["id"])
            n += 1
    finally:
        await client.close()


async def send_files(
    way: Direction, size: int, pause: float, timeout: float, folder: Path, stop: asyncio.Event
) -> None:
    src, dst = await way.src.connect(), await way.dst.connect()
    try:
        n = 0
        while not stop.is_set():
            path = folder / f"{way.src.name}-{n:04d}.bin"
            digest = await asyncio.to_thread(random_file, path, size)
            way.file_busy = True
            try:
                t = await src.call("send_files", {"contact": way.dst.name, "paths": [str(path)]})
                way.files_sent += 1
                way.current = t["id"]
                state = await src.call(
                    "wait_transfer", {"id": t["id"], "timeout": timeout}, timeout=timeout + 30
                )
                if state != "done":
                    error = (await src.call("transfer", {"id": t["id"]})).get("error")
                    way.files_failed.append(f"{path.name}: {state} ({error})")
                else:
                    got = await dst.call("transfer", {"id": t["id"]})
                    final = Path(got["files"][0]["final"])
                    if await asyncio.to_thread(take_digest, final) == digest:
                        way.files_verified += 1
                    else:
                        way.files_failed.append(f"{path.name}: received content differs")
            finally:
                way.file_busy = False
                way.current = None
                await asyncio.to_thread(path.unlink, missing_ok=True)
            n += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stop.wait()
    finally:
        await src.close()
        await dst.close()


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; their SHA-256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def take_digest(path: Path) -> str:
    """SHA-256 of a received file, which is then deleted (a long run keeps no copies)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        path.unlink()


# ------------------------------------------------------------------ the attacker


@dataclass
class Victim:
    name: str
    udp: str
    tcp: int


async def _contact_session(
    peer: HostilePeer, victim: Victim, index: int, counts: Counts, act: Any, role: str
) -> None:
    """Keep a hostile contact's session to ``victim`` up (bad name in its Hello) and
    run ``act(link)`` on it; reconnect whenever the victim closes it."""
    while True:
        try:
            link = await peer.connect(victim.udp, hello=bad_hello(index), keep=64, timeout=20)
        except (TimeoutError, OSError, ConnectionError):
            counts[f"{role}_connect_failed"] += 1
            await asyncio.sleep(1.0)
            continue
        counts[f"{role}_sessions"] += 1
        task = asyncio.ensure_future(act(link))
        ended = asyncio.ensure_future(link.ended.wait())
        try:
            await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            link.close()
        counts[f"{role}_sessions_lost"] += 1
        await asyncio.sleep(0.5)


async def _strangers(victim: Victim, counts: Counts) -> None:
    """A fresh key with a bad name connects every few seconds, then goes."""
    n = 0
    while True:
        n += 1
        stranger = HostilePeer(host=f"127.56.{(n // 250) % 250}.{n % 250 + 1}")
        try:
            await stranger.start()
            link = await stranger.connect(victim.udp, hello=bad_hello(n), keep=8, timeout=10)
            for _ in range(50):
                if link.counts["RequestPending"] or link.closed:
                    break
                await asyncio.sleep(0.1)
            counts["strangers_pending" if link.counts["RequestPending"] else "strangers_other"] += 1
            link.close()
        except (TimeoutError, OSError, ConnectionError):
            counts["strangers_failed"] += 1
        finally:
            await asyncio.sleep(0.2)
            stranger.close()
        await asyncio.sleep(STRANGER_EVERY)


async def _tcp_attacks(victim: Victim, rate: float, counts: Counts) -> None:
    host = victim.udp.rsplit(":", 1)[0]
    sources = [f"127.88.{k}.1" for k in range(TCP_SOURCES)]
    tasks = [
        asyncio.ensure_future(
            tcp_hold(
                host,
                victim.tcp,
                source=sources[i % TCP_SOURCES],
                counts=counts,
                reopen_after=0.1,
            )
        )
        for i in range(HOLDS)
    ]
    garbage: set[asyncio.Task[None]] = set()

    async def bursts() -> None:
        while True:
            opened = []
            for source in sources:  # 40 in all, from every source at once
                opened += await tcp_burst(
                    host, victim.tcp, 40 // TCP_SOURCES, source=source, counts=counts
                )
            await asyncio.sleep(2.0)
            for _r, w in opened:
                w.close()
            await asyncio.sleep(BURST_EVERY - 2.0)

    tasks.append(asyncio.ensure_future(bursts()))
    try:
        n = 0
        started = time.monotonic()
        while True:
            due = started + n / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if len(garbage) < 64:  # bounded: a garbage connection waits for its close
                task = asyncio.ensure_future(
                    tcp_garbage(host, victim.tcp, source=sources[n % TCP_SOURCES], counts=counts)
                )
                garbage.add(task)
                task.add_done_callback(garbage.discard)
            n += 1
    finally:
        for t in [*tasks, *garbage]:
            t.cancel()
        await asyncio.gather(*tasks, *garbage, return_exceptions=True)


async def attack(spec: dict[str, Any]) -> None:
    """The third party: see the module docstring.  Reads ids to reuse on stdin (one
    per line), prints its counts as JSON every ``status_every`` s, stops at EOF."""
    counts: Counts = collections.Counter()
    victims = [Victim(**v) for v in spec["victims"]]
    rates = spec["rates"]
    loop = asyncio.get_running_loop()
    peers = {
        role: HostilePeer(load_identity(Path(spec["identities"][role])), host=f"127.55.0.{i + 1}")
        for i, role in enumerate(ROLES)
    }
    for peer in peers.values():
        await peer.start()
    links: dict[tuple[str, str], HostileLink] = {}
    reuse: dict[str, asyncio.Queue[str]] = {v.name: asyncio.Queue(10_000) for v in victims}
    files = flood_files(rates["offer_files"])

    def acts(victim: Victim) -> dict[str, Any]:
        async def resender(link: HostileLink) -> None:
            links[("resender", victim.name)] = link
            while True:
                await pending_gap_pairs(link, 1, pause=1.0 / rates["gap"], counts=counts)

        async def offerer(link: HostileLink) -> None:
            # Past the offer budget at once with tiny offers (they get through even
            # a congested link), then larger ones at the set pace.
            await offer_cancel_flood(link, OFFER_BURST, flood_files(1), counts=counts)
            while True:
                await offer_cancel_flood(link, 1, files, counts=counts)
                await asyncio.sleep(1.0 / rates["offer"])

        seqs = {"quota": 1, "reuser": 1}

        async def quota(link: HostileLink) -> None:
            # Past the quota at once, then one message every 0.5 s, from where the
            # victim's last `defer` says (as a sender retrying would).
            burst = spec["quota_bytes"] // QUOTA_BODY + 8
            sent = 0
            while True:
                defers = link.of(chat.Defer)
                if defers:
                    last = defers[-1]
                    assert isinstance(last, chat.Defer)
                    seqs["quota"] = min(seqs["quota"], last.seq)
                    link.frames.clear()
                link.send(chat_message(seqs["quota"], "q" * QUOTA_BODY))
                counts["quota_messages"] += 1
                seqs["quota"] += 1
                sent += 1
                await asyncio.sleep(0.01 if sent < burst else 0.5)

        async def reuser(link: HostileLink) -> None:
            queue = reuse[victim.name]
            while True:
                message_id = await queue.get()
                link.send(chat_message(seqs["reuser"], "an id seen elsewhere", message_id))
                counts["reused_ids"] += 1
                seqs["reuser"] += 1

        return {"resender": resender, "offerer": offerer, "quota": quota, "reuser": reuser}

    initials = InitialFlood(64, hosts=[f"127.99.0.{i}" for i in range(1, 5)], counts=counts)
    krpc = KrpcFlood(256, counts=counts)
    tasks: list[asyncio.Future[Any]] = []
    chosen = set(spec["attacks"])
    targets = [v.udp for v in victims]
    if "initials" in chosen:
        await initials.open()
        tasks.append(asyncio.ensure_future(initials.run(targets, rates["initial"])))
    if "krpc" in chosen:
        await krpc.open()
        tasks.append(asyncio.ensure_future(krpc.run(targets, rates["krpc"])))
    for v in victims:
        if "tcp" in chosen:
            tasks.append(asyncio.ensure_future(_tcp_attacks(v, rates["garbage"], counts)))
        if "names" in chosen:
            tasks.append(asyncio.ensure_future(_strangers(v, counts)))
        for i, (role, act) in enumerate(acts(v).items()):
            if role in chosen:
                tasks.append(
                    asyncio.ensure_future(_contact_session(peers[role], v, i, counts, act, role))
                )

    def status() -> dict[str, Any]:
        out = dict(counts)
        out["resent_bytes_received"] = sum(
            link.bytes_received for (role, _v), link in links.items() if role == "resender"
        )
        out["tasks_failed"] = [
            repr(t.exception())
            for t in tasks
            if t.done() and not t.cancelled() and t.exception() is not None
        ]
        return out

    async def feed() -> None:
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            message_id = line.decode().strip()
            for q in reuse.values():
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait(message_id)

    print(json.dumps({"ready": True}), flush=True)
    feeding = asyncio.ensure_future(feed())
    try:
        while not feeding.done():
            await asyncio.wait({feeding}, timeout=spec["status_every"])
            print(json.dumps({"status": status()}), flush=True)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        initials.close()
        krpc.close()
        for peer in peers.values():
            peer.close()
        print(json.dumps({"final": status()}), flush=True)


# ------------------------------------------------------------------ the harness


@dataclass
class Options:
    minutes: float
    msg_rate: float
    file_mib: float
    file_pause: float
    initial_rate: float
    krpc_rate: float
    garbage_rate: float
    gap_rate: float
    offer_rate: float
    offer_files: int
    report_every: float
    drain: float
    rss_growth_mib: float
    keep: bool
    json_out: Path | None
    no_attack: bool
    verbose_daemons: bool
    attacks: list[str]


def prepare(root: Path, quota: int) -> tuple[dict[str, Paths], dict[str, Path]]:
    """Homes for alice and bob, contacts of each other and of the attacker's four keys
    (their names are not theirs to choose), and the messages queued for the resender."""
    homes = {name: make_home(root, name) for name in ("alice", "bob")}
    for name in homes:
        (root / f"{name}-outbox").mkdir()
    keys = {}
    for role in ROLES:
        keys[role] = root / "attacker" / f"{role}.key"
        keys[role].parent.mkdir(parents=True, exist_ok=True)
        create_identity(keys[role])
    listen = {name: json.loads(p.settings.read_text())["listen"] for name, p in homes.items()}
    ids = {name: load_identity(p.identity).peer_id for name, p in homes.items()}
    for name, paths in homes.items():
        settings = load_settings(paths)
        settings["max_message_bytes_per_day"] = quota
        save_settings(paths, settings)
        other = "bob" if name == "alice" else "alice"
        _identity, store = open_home(paths)
        try:
            now = time.time()
            store.add_contact(ids[other], other, addresses=[listen[other]], now=now)
            for role, key in keys.items():
                store.add_contact(load_identity(key).peer_id, role, now=now)
            resender = load_identity(keys["resender"]).peer_id
            for i in range(QUEUED_FOR_RESENDER):
                store.queue_message(resender, f"{i} " + "r" * RESENDER_BODY, now=now)
        finally:
            store.close()
    return homes, keys


async def contacts_online(d: SoakDaemon, names: set[str]) -> bool:
    assert d.client is not None
    contacts = await d.client.call("contacts", {})
    return names <= {c["name"] for c in contacts if c["online"]}


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.2)


def kib_mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


TURNED_AWAY = (
    ("file_drop", "tcp_refused"),
    ("file_drop", "tcp_no_preamble"),
    ("file_drop", "tcp_bad_preamble"),
    ("file_drop", "tcp_fallbacks"),
    ("file_drop", "offers_refused"),
    ("messages", "gaps_refused"),
    ("messages", "resends_waiting_for_budget"),
    ("messages", "resent_bytes"),
    ("messages", "refused_quota"),
    ("messages", "dropped_while_refusing"),
    ("handshakes", "retry_sent"),
    ("handshakes", "initial_undecryptable"),
    ("handshakes", "refused_source_cap"),
    ("handshakes", "refused_pool_full"),
    ("dht", "dropped_budget_unverified"),
    ("dht", "replies_unverified"),
)


async def file_progress(way: Direction, client: ControlClient) -> None:
    """How far the receiver is with the file under way (shown in the report)."""
    way.progress = ""
    if way.current is not None:
        done = await client.call("progress", {"id": way.current})
        got = f"{done[0] / MiB:.1f}/{done[1] / MiB:.1f} MiB" if done else "no channel"
        way.progress = f" (now: {got})"


async def victim_counters(d: SoakDaemon, client: ControlClient) -> dict[str, int]:
    status = await client.call("network_status", {})
    dht = (await client.call("dht_status", {}))["stats"]
    out = {}
    for section, key in TURNED_AWAY:
        source = dht if section == "dht" else (status.get(section) or {})
        value = source.get(key, 0)
        out[key] = int(value) if isinstance(value, (int, float)) else 0
    return out


ATTACKER_KEYS = (
    "initials",
    "krpc_queries",
    "krpc_replies",
    "tcp_held",
    "tcp_garbage",
    "tcp_burst",
    "offers",
    "pending_gap_pairs",
    "resent_bytes_received",
    "quota_messages",
    "reused_ids",
    "strangers_pending",
)


def report(
    t: float,
    ways: list[Direction],
    usage: dict[str, Usage],
    attacker: dict[str, Any],
    counters: dict[str, dict[str, int]],
) -> dict[str, Any]:
    now = time.monotonic()
    row: dict[str, Any] = {"t": round(t, 1), "load": os.getloadavg()}
    print(f"[{int(t // 60):2d}:{int(t % 60):02d}] load {load()}", flush=True)
    for w in ways:
        got = sum(1 for n in w.sent if n in w.received)
        figures = {
            "sent": len(w.sent),
            "received": got,
            "in_flight": w.in_flight(),
            "late": w.late(now),
            "duplicated": w.duplicated(),
            "send_errors": w.send_errors,
            "files_sent": w.files_sent,
            "files_verified": w.files_verified,
            "files_failed": len(w.files_failed),
        }
        row[w.label] = figures
        print(
            f"  {w.label:10s} messages sent {figures['sent']:6d} received {got:6d}"
            f" in flight {figures['in_flight']:4d} late {figures['late']:4d}"
            f" duplicated {figures['duplicated']}"
            f" | files sent {w.files_sent:4d} verified {w.files_verified:4d}"
            f" failed {len(w.files_failed)}{w.progress}",
            flush=True,
        )
    for name, u in usage.items():
        cpu = u.cpu_percent()
        row[name] = {"rss_mib": u.rss / 1024, "peak_mib": u.peak_rss / 1024, "cpu": cpu}
        udp = ""
        if u.udp_port:
            queued, drops = udp_socket(u.udp_port)
            row[name].update(udp_queue=queued, udp_drops=drops)
            udp = f", UDP queue {queued / 1024:.0f} KiB, {drops:,} dropped"
        print(
            f"  {name:10s} RSS {kib_mib(u.rss)} MiB (start {kib_mib(u.start_rss)},"
            f" peak {kib_mib(u.peak_rss)}) CPU {cpu:.0f}%{udp}",
            flush=True,
        )
    row["attacker"] = {k: attacker.get(k, 0) for k in ATTACKER_KEYS}
    sessions = {
        role: "/".join(
            str(attacker.get(f"{role}_{what}", 0))
            for what in ("sessions", "sessions_lost", "connect_failed")
        )
        for role in ROLES
    }
    row["attacker"]["sessions"] = sessions
    print(
        "  attacker   " + ", ".join(f"{k} {attacker.get(k, 0):,}" for k in ATTACKER_KEYS)
        + "; contact sessions opened/lost/failed "
        + ", ".join(f"{r} {v}" for r, v in sessions.items()),
        flush=True,
    )
    for name, c in counters.items():
        row[f"{name}_turned_away"] = c
        print(f"  {name:10s} turned away: " + ", ".join(f"{k} {v:,}" for k, v in c.items()))
    return row


async def run(opts: Options) -> int:
    duration = opts.minutes * 60
    honest_bytes = opts.msg_rate * duration * 120
    quota = max(64 * 1024, int(3 * honest_bytes))
    failures: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="p2pchat-soak-"))
    print(
        f"soak: {opts.minutes:g} min on {platform.node()} ({os.cpu_count()} cores,"
        f" Python {platform.python_version()}, {platform.platform()}), load {load()}",
        flush=True,
    )
    print(f"  state in {tmp}; daily quota per contact {quota:,} bytes", flush=True)
    homes, keys = prepare(tmp, quota)
    listen = {name: json.loads(p.settings.read_text())["listen"] for name, p in homes.items()}
    downloads = {name: tmp / f"{name}-downloads" for name in homes}
    daemons = {
        name: SoakDaemon(
            paths.home,
            listen[name],
            [
                "--bootstrap",
                listen["bob" if name == "alice" else "alice"],
                "--downloads",
                str(downloads[name]),
                "--accept-files-from",
                "bob" if name == "alice" else "alice",
            ],
            tmp / f"{name}.log",
            opts.verbose_daemons,
        )
        for name, paths in homes.items()
    }
    alice, bob = daemons["alice"], daemons["bob"]
    attacker: asyncio.subprocess.Process | None = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        await asyncio.gather(*(d.start() for d in daemons.values()))
        await until(lambda: contacts_online(alice, {"bob"}), 60, "alice and bob to connect")
        await until(lambda: contacts_online(bob, {"alice"}), 60, "alice and bob to connect")
        victims = []
        for name, d in daemons.items():
            ports = listening_tcp_ports(d.pid)
            if len(ports) != 1:
                raise RuntimeError(f"{name}: expected one TCP data port, found {sorted(ports)}")
            victims.append({"name": name, "udp": listen[name], "tcp": ports.pop()})
        spec = {
            "victims": victims,
            "identities": {role: str(path) for role, path in keys.items()},
            "rates": {
                "initial": opts.initial_rate,
                "krpc": opts.krpc_rate,
                "garbage": opts.garbage_rate,
                "gap": opts.gap_rate,
                "offer": opts.offer_rate,
                "offer_files": opts.offer_files,
            },
            "quota_bytes": quota,
            "status_every": 2.0,
            "attacks": [] if opts.no_attack else opts.attacks,
        }
        spec_path = tmp / "attack.json"
        spec_path.write_text(json.dumps(spec))
        usage = {
            name: Usage(d.pid, int(listen[name].rsplit(":", 1)[1])) for name, d in daemons.items()
        }
        for u in usage.values():
            u.begin()
        print(
            "  before the attack: "
            + ", ".join(f"{n} RSS {kib_mib(u.rss)} MiB" for n, u in usage.items())
            + f"; TCP data ports {', '.join(str(v['tcp']) for v in victims)}",
            flush=True,
        )
        attacker = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "--attack",
            str(spec_path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=alice.env,
        )
        assert attacker.stdout is not None and attacker.stdin is not None
        first = json.loads(await attacker.stdout.readline() or b"{}")
        if not first.get("ready"):
            raise RuntimeError("the attacker did not start")
        attack_status: dict[str, Any] = {}
        attack_final: dict[str, Any] = {}
        attacker_usage = Usage(attacker.pid)
        attacker_usage.begin()

        async def read_attacker() -> None:
            assert attacker is not None and attacker.stdout is not None
            while line := await attacker.stdout.readline():
                doc = json.loads(line)
                if "status" in doc:
                    attack_status.update(doc["status"])
                if "final" in doc:
                    attack_final.update(doc["final"])

        ways = [Direction(alice, bob), Direction(bob, alice)]
        reuse: asyncio.Queue[str] = asyncio.Queue(10_000)

        async def forward_ids() -> None:
            assert attacker is not None and attacker.stdin is not None
            while True:
                message_id = await reuse.get()
                attacker.stdin.write(message_id.encode() + b"\n")
                await attacker.stdin.drain()

        stop = asyncio.Event()
        tasks += [
            asyncio.ensure_future(read_attacker()),
            asyncio.ensure_future(forward_ids()),
        ]
        watching = [asyncio.Event(), asyncio.Event()]
        tasks += [
            asyncio.ensure_future(watch_events(bob, ways[0], ways[1], watching[0])),
            asyncio.ensure_future(watch_events(alice, ways[1], ways[0], watching[1])),
        ]
        async with asyncio.timeout(30):
            for event in watching:
                await event.wait()
        senders = [
            asyncio.ensure_future(send_messages(w, opts.msg_rate, stop, reuse)) for w in ways
        ]
        senders += [
            asyncio.ensure_future(
                send_files(
                    w,
                    int(opts.file_mib * MiB),
                    opts.file_pause,
                    max(120.0, opts.drain),
                    tmp / f"{w.src.name}-outbox",
                    stop,
                )
            )
            for w in ways
        ]
        clients = {name: await d.connect() for name, d in daemons.items()}
        rows = []
        started = time.monotonic()
        next_report = started + opts.report_every
        usage["attacker"] = attacker_usage

        async def sample_until(deadline: float) -> None:
            while time.monotonic() < deadline:
                for name, d in daemons.items():
                    if d.proc is None or d.proc.poll() is not None:
                        raise RuntimeError(f"{name} died (see {d.log})")
                for u in usage.values():
                    u.sample()
                for s in senders:
                    if s.done() and not s.cancelled() and s.exception() is not None:
                        raise RuntimeError(f"honest traffic failed: {s.exception()!r}")
                await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

        async def one_report() -> None:
            for w in ways:
                await file_progress(w, clients[w.dst.name])
            counters = {n: await victim_counters(d, clients[n]) for n, d in daemons.items()}
            rows.append(report(time.monotonic() - started, ways, usage, attack_status, counters))

        end = started + duration
        while True:
            await sample_until(min(next_report, end))
            if time.monotonic() >= end:
                break
            await one_report()
            next_report += opts.report_every
        await one_report()
        # Drain, with the attack still on: what was sent must arrive.
        stop.set()
        print(f"  run over; draining (at most {opts.drain:g} s, the attack goes on)", flush=True)
        drained = time.monotonic()

        def settled() -> bool:
            for w in ways:
                if w.in_flight() or w.file_busy or any(w.ids[n] not in w.acked for n in w.sent):
                    return False
            return all(s.done() for s in senders)

        while not settled() and time.monotonic() - drained < opts.drain:
            await sample_until(time.monotonic() + 1.0)
        print(f"  drained in {time.monotonic() - drained:.1f} s", flush=True)
        await one_report()
        for s in senders:
            s.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        # Stop the attacker and read its last counts.
        attacker.stdin.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await tasks[0]
                await attacker.wait()
        final = attack_final or attack_status
        counters = {n: await victim_counters(d, clients[n]) for n, d in daemons.items()}
        for c in clients.values():
            await c.close()

        # ---------------------------------------------------------- verdicts
        for w in ways:
            assert w.dst.client is not None and w.src.client is not None
            theirs = await w.dst.client.call("history", {"contact": w.src.name}, timeout=60)
            seen = collections.Counter(
                n
                for m in theirs
                if m["direction"] == "in"
                if (n := parse_number(m["body"], w.label)) is not None
            )
            lost = [n for n in w.sent if seen[n] == 0]
            dups = {n: c for n, c in seen.items() if c > 1}
            extra = [n for n in seen if n not in w.sent]
            mine = await w.src.client.call("history", {"contact": w.dst.name}, timeout=60)
            unacked = [
                m["id"]
                for m in mine
                if m["direction"] == "out" and m["state"] not in ("delivered", "read")
            ]
            print(
                f"  {w.label}: {len(w.sent)} sent, {sum(seen.values())} stored, lost {len(lost)},"
                f" duplicated {sum(c - 1 for c in dups.values())}, unacknowledged {len(unacked)};"
                f" files {w.files_sent} sent, {w.files_verified} verified,"
                f" {len(w.files_failed)} failed",
                flush=True,
            )
            if lost:
                failures.append(f"{w.label}: {len(lost)} messages lost (first {lost[:5]})")
            if dups or extra:
                failures.append(f"{w.label}: duplicated {dups or ''} unknown {extra[:5]}")
            if unacked:
                failures.append(f"{w.label}: {len(unacked)} messages never acknowledged")
            if w.send_errors:
                failures.append(f"{w.label}: {w.send_errors} sends refused")
            if w.files_failed or w.files_verified != w.files_sent or not w.files_sent:
                failures.append(
                    f"{w.label}: files {w.files_sent} sent, {w.files_verified} verified,"
                    f" failed {w.files_failed[:3]}"
                )
            if not w.sent:
                failures.append(f"{w.label}: no message was sent")
        for name, u in usage.items():
            if name == "attacker":
                continue
            growth = (u.peak_rss - u.start_rss) / 1024
            print(
                f"  {name}: RSS start {kib_mib(u.start_rss)} MiB, peak {kib_mib(u.peak_rss)} MiB"
                f" (+{growth:.1f}), end {kib_mib(u.rss)} MiB",
                flush=True,
            )
            if growth > opts.rss_growth_mib:
                failures.append(
                    f"{name}: RSS grew by {growth:.1f} MiB (bound {opts.rss_growth_mib:g})"
                )
        print("  attacker final: " + json.dumps({k: final.get(k, 0) for k in ATTACKER_KEYS}))
        if final.get("tasks_failed"):
            failures.append(f"attacker tasks failed: {final['tasks_failed']}")
        if set(opts.attacks) == set(ATTACKS) and not opts.no_attack:
            failures += reached(final, counters)
        for name, d in daemons.items() if set(opts.attacks) == set(ATTACKS) else ():
            requests = await d.call("requests")
            if not requests or any(len(r["name"] or "") > 64 for r in requests):
                failures.append(f"{name}: bad-name strangers left no (repaired) request")
            reused = await d.call("history", contact="reuser")
            if not reused:
                failures.append(f"{name}: no message of the id reuser was stored")
        summary = {
            "minutes": opts.minutes,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
            "rows": rows,
            "victims_turned_away": counters,
            "attacker": final,
            "rss": {
                n: {
                    "start_mib": u.start_rss / 1024,
                    "peak_mib": u.peak_rss / 1024,
                    "end_mib": u.rss / 1024,
                }
                for n, u in usage.items()
            },
            "failures": failures,
        }
    except Exception as exc:
        failures.append(f"the soak could not run: {exc!r}")
        summary = {"failures": failures}
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if attacker is not None and attacker.returncode is None:
            attacker.kill()
            await attacker.wait()
        for d in daemons.values():
            await d.stop()
    for name, d in daemons.items():
        text = d.log.read_text(errors="replace") if d.log.exists() else ""
        errors = [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]
        warnings = sum(1 for line in text.splitlines() if " WARNING " in line)
        print(f"  {name}'s log: {len(errors)} errors, {warnings} warnings ({d.log})")
        if errors:
            failures.append(f"{name}'s log has {len(errors)} errors, first: {errors[0][:300]}")
    if opts.json_out is not None:
        opts.json_out.write_text(json.dumps(summary, indent=1))
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), flush=True)
        print(f"  (state kept in {tmp})")
        return 1
    print(f"OK: nothing lost or duplicated, every file verified, RSS bounded; load {load()}")
    if not opts.keep:
        await asyncio.to_thread(shutil.rmtree, tmp, ignore_errors=True)
    return 0


def reached(attacker: dict[str, Any], counters: dict[str, dict[str, int]]) -> list[str]:
    """Every attack must have reached both victims: a soak that attacked nothing
    would prove nothing."""
    failures = []
    for key in (
        "initials",
        "krpc_queries",
        "tcp_held",
        "tcp_garbage",
        "tcp_burst",
        "offers",
        "pending_gap_pairs",
        "quota_messages",
        "reused_ids",
        "strangers_pending",
    ):
        if not attacker.get(key):
            failures.append(f"attacker: no {key}")
    for name, c in counters.items():
        checks = {
            "TCP data port": c["tcp_refused"] + c["tcp_no_preamble"] + c["tcp_bad_preamble"],
            "offer budget": c["offers_refused"],
            "resend budget": c["gaps_refused"] + c["resends_waiting_for_budget"],
            "daily quota": c["refused_quota"],
            "Initial flood": c["retry_sent"] + c["initial_undecryptable"],
            "KRPC reply budget": c["dropped_budget_unverified"],
        }
        for what, value in checks.items():
            if not value:
                failures.append(f"{name}: the {what} was never reached")
    return failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--msg-rate", type=float, default=4.0, help="messages/s each way (4)")
    p.add_argument("--file-mib", type=float, default=2.0, help="size of each file (2 MiB)")
    p.add_argument("--file-pause", type=float, default=1.0, help="s between files (1)")
    p.add_argument("--initial-rate", type=float, default=2000.0, help="Initials/s per victim")
    p.add_argument("--krpc-rate", type=float, default=500.0, help="KRPC queries/s per victim")
    p.add_argument("--garbage-rate", type=float, default=10.0, help="garbage preambles/s")
    p.add_argument("--gap-rate", type=float, default=20.0, help="pending+gap pairs/s")
    p.add_argument("--offer-rate", type=float, default=4.0, help="offers+cancels/s per victim")
    p.add_argument("--offer-files", type=int, default=100, help="files per hostile offer")
    p.add_argument("--report-every", type=float, default=60.0, help="s between reports (60)")
    p.add_argument("--drain", type=float, default=120.0, help="s to wait for what is in flight")
    p.add_argument("--rss-growth-mib", type=float, default=100.0, help="RSS bound over start")
    p.add_argument("--keep", action="store_true", help="keep the state folder")
    p.add_argument("--no-attack", action="store_true", help="the honest traffic alone")
    p.add_argument(
        "--attacks",
        type=lambda text: [a for a in text.split(",") if a],
        default=list(ATTACKS),
        help=f"which attacks (default all: {','.join(ATTACKS)})",
    )
    p.add_argument("--verbose-daemons", action="store_true", help="daemons log at INFO")
    p.add_argument("--json", dest="json_out", type=Path, help="write the figures here")
    p.add_argument("--attack", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.attack is not None:
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            asyncio.run(attack(json.loads(args.attack.read_text())))
        return
    opts = Options(**{k: v for k, v in vars(args).items() if k != "attack"})
    sys.exit(asyncio.run(run(opts)))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""File drop benchmark: p2pchat against bare aioquic and magic-wormhole, on one path, in one run.

Usage (from the repository root, root needed for the veth path)::

    pip install -e '.[bench]'        # magic-wormhole, its mailbox server and transit relay
    python3 benchmarks/filedrop.py [--sizes 256,4096] [--repeat 3] [--paths loopback,veth]
                                   [--skip wormhole,aioquic,p2pchat,inprocess]

A random file of each size (``--sizes``, MiB, default 256; ``--size-mib N`` is one
size) is moved from a sender to a receiver by each contender, and every received
file's SHA-256 is checked against the original.  Contenders are set up once per
path, then each size runs in turn; rounds are interleaved (contender 1, 2, 3, then
again), so a change in machine load hits every contender alike.  With ``--repeat N``
each table shows the median and the best of the N runs.  Rows of the p2pchat
daemons carry both daemons' peak resident memory (``VmHWM``) for that size: it is
reset (``/proc/PID/clear_refs``) before the first run of each size.

Paths
    loopback  Everything on 127.0.0.1.  Always available.
    veth      Two network namespaces made for this run (``p2pb-<tag>-a`` and
              ``-b``) joined by a veth pair with MTU 1500 and a /30 out of
              10.250.0.0/16, a LAN-like path with real packet sizes.  The
              sender runs in ``a``; the receiver (and wormhole's mailbox server
              and transit relay) in ``b``.  Needs root and iproute2; the
              namespaces are deleted on every exit path, failures included.

Traffic goes to 127.0.0.1 or to the namespace addresses and nowhere else:
every address is checked before a process is started, and magic-wormhole is
always given ``--relay-url`` and ``--transit-helper`` for the local servers
(checked in this script and again in the child before wormhole is imported),
so it never reaches its public defaults.

Contenders
    magic-wormhole
        ``wormhole send --code N-bench-TAG FILE`` and ``wormhole receive
        --accept-file -o DIR N-bench-TAG``, against a local mailbox server
        (``twist wormhole-mailbox``) and a local transit relay (``twist
        transitrelay``).  Wormhole advertises every address of the machine as
        a direct-connection hint; the child that runs it replaces that list
        with the one address of its own side (127.0.0.1, or its namespace
        address), so the peers connect only there.  Time: from starting the
        sender process until the receiver process exits with the file in place.
    aioquic
        The ceiling for a QUIC-only design: ``aioquic.asyncio.serve`` and a
        client in two processes, a throwaway self-signed certificate, ALPN
        "bench", one bidirectional stream carrying the file's bytes; the server
        writes them to a file and answers with the byte count when the stream
        ends.  Measured with aioquic's defaults (1200-byte datagrams, 1 MiB
        flow-control windows, Reno) and with ``max_datagram_size=1452``.  The
        client keeps at most 4 MiB unacknowledged in aioquic's send buffer
        (aioquic has no write back-pressure of its own).  Time: from the start
        of the QUIC handshake until the server's acknowledgement arrives; the
        processes' start-up is not counted.
    p2pchat
        The project's file drop between two real nodes, each in its own home
        with a fresh identity, contacts of each other, the receiver accepting
        files from contacts without asking.
        * daemons: ``p2pchat daemon --listen ... --no-mdns --no-dht --downloads
          DIR --accept-files-from contacts`` on each side, and ``p2pchat send
          CONTACT FILE --wait`` from the sender's home (it talks to the
          sender's daemon over the control socket).  Time: from starting
          ``send`` until it exits and the file is in the receiver's downloads
          folder, so it includes the CLI's start-up (printed under the table,
          with the time a 1 KiB file takes through ``send --wait`` and through
          the control socket: the fixed cost before the bytes move).
        * in-process (loopback only; ``--skip inprocess`` leaves it out): two
          ``Node`` objects in this process's event loop, ``offer_files`` then
          ``wait_transfer``.  Both sides share one process and one core here,
          unlike every other row.
        If the file drop is missing from this checkout, the row says why
        ("not available (AttributeError: ...)") and the other contenders run.

The p2pchat file drop moves its bytes over a direct TCP connection when the
receiver can be reached, and over the session's QUIC connection otherwise
(``p2pchat/net/transfers.py``); the aioquic rows bound what any QUIC-only
path in Python can do on this machine, so they are the reference for the
fallback, not for the TCP channel.

MB/s is 10**6 bytes per second, MiB/s 2**20.  "vs wormhole" and "vs aioquic"
divide a row's median MB/s by magic-wormhole's and by aioquic's (default
settings) median MB/s: 2.00x means twice as fast.  Hashing the received file
is not part of any time.  Files live under ``--tmpdir`` (default: the system
temp folder; ``/dev/shm`` takes the disk out of the figures).

The wormhole packages install into the project's environment without conflicts
(``pip install -e '.[bench]'``).  Should that ever change, put them in a
separate virtual environment (outside the repository, so linters and git leave
it alone) and point the benchmark at its interpreter, which then runs the
wormhole clients and servers while everything else stays in this one::

    python3 -m venv ~/.venvs/wormhole
    ~/.venvs/wormhole/bin/pip install magic-wormhole \\
        magic-wormhole-mailbox-server magic-wormhole-transit-relay
    python3 benchmarks/filedrop.py --wormhole-python ~/.venvs/wormhole/bin/python

The script re-runs itself for the processes it starts (``_aioquic-server``,
``_aioquic-client``, ``_wormhole``: hidden sub-commands, not for direct use);
per-process logs go to the scratch folder (``--keep`` keeps it).  It exits 1
if a contender failed, 0 otherwise (a contender that is not available here is
not a failure).  It is not part of the test suite: the figures depend on the
machine and its load, and nothing is asserted except that every transfer
arrived intact.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import inspect
import ipaddress
import itertools
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from _netns import NETNS_NETWORK, NetnsError, NetnsPair, netns_unavailable

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
LOOPBACK = "127.0.0.1"
ALPN = "bench"
MB = 1_000_000
MIB = 1 << 20
READ_CHUNK = 256 * 1024
# The aioquic client stops writing while this much is unacknowledged.
SEND_BACKLOG = 4 * MIB
ACK = struct.Struct(">Q")
CONTENDER_KEYS = ("wormhole", "aioquic", "p2pchat", "inprocess")
PATH_KEYS = ("loopback", "veth")
TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".download", ".incomplete")


class Unavailable(Exception):
    """A contender cannot run here; the report says why and the others go on."""


# ----------------------------------------------------------------- addresses
def check_host(host: str, allowed: set[str]) -> str:
    """``host`` if it is 127.0.0.1 or a namespace address of this run; refuse anything else."""
    ip = ipaddress.ip_address(host)
    if host not in allowed or not (ip == ipaddress.ip_address(LOOPBACK) or ip in NETNS_NETWORK):
        raise SystemExit(
            f"refusing to use {host}: only 127.0.0.1 and this run's namespace addresses"
        )
    return host


def wormhole_argv_problems(argv: Sequence[str], allowed: set[str]) -> list[str]:
    """What is wrong with a wormhole command line; empty if it only uses local servers.

    Both ``--relay-url`` and ``--transit-helper`` must be given, before the
    sub-command, and name allowed hosts; Tor options are refused.
    """
    problems: list[str] = []
    command = next((i for i, arg in enumerate(argv) if arg in ("send", "receive")), None)
    if command is None:
        return ["no send/receive sub-command"]
    head = list(argv[:command])
    values: dict[str, str] = {}
    for flag in ("--relay-url", "--transit-helper"):
        found = [
            head[i + 1] if arg == flag and i + 1 < len(head) else arg.partition("=")[2]
            for i, arg in enumerate(head)
            if arg == flag or arg.startswith(flag + "=")
        ]
        if len(found) != 1 or not found[0]:
            problems.append(f"{flag} must be given exactly once before {argv[command]!r}")
        else:
            values[flag] = found[0]
    if any(arg.startswith(("--relay-url", "--transit-helper")) for arg in argv[command:]):
        problems.append("--relay-url/--transit-helper after the sub-command")
    if any(arg.startswith(("--tor", "--launch-tor")) for arg in argv):
        problems.append("Tor options are not allowed")
    relay = values.get("--relay-url")
    if relay is not None:
        parts = urlsplit(relay)
        if (
            parts.scheme != "ws"
            or parts.hostname not in allowed
            or parts.port is None
            or parts.path != "/v1"
        ):
            problems.append(f"--relay-url {relay!r} is not ws://<local address>:PORT/v1")
    helper = values.get("--transit-helper")
    if helper is not None:
        match = re.fullmatch(r"tcp:([0-9.]+):(\d+)", helper)
        if match is None or match.group(1) not in allowed:
            problems.append(f"--transit-helper {helper!r} is not tcp:<local address>:PORT")
    for host in allowed:
        ip = ipaddress.ip_address(host)
        if not (ip == ipaddress.ip_address(LOOPBACK) or ip in NETNS_NETWORK):
            problems.append(f"{host} is neither 127.0.0.1 nor a namespace address")
    return problems


# --------------------------------------------------------------- processes
class Children:
    """Every process a path starts; whatever still runs at the end is stopped by its PID."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[asyncio.subprocess.Process] = []
        self._log_files: list[IO[bytes]] = []
        self._names = itertools.count()

    def log_path(self, name: str) -> Path:
        return self.logs / f"{next(self._names):03d}-{name}.log"

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        stdin: int = asyncio.subprocess.DEVNULL,
        stdout: int | Path = asyncio.subprocess.PIPE,
        stderr: int | Path = asyncio.subprocess.PIPE,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> asyncio.subprocess.Process:
        """Start ``argv``; a :class:`Path` for stdout or stderr appends that stream to a file."""
        streams: list[int | IO[bytes]] = []
        for stream in (stdout, stderr):
            if isinstance(stream, Path):
                sink = _open_log(stream)
                self._log_files.append(sink)
                streams.append(sink)
            else:
                streams.append(stream)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=streams[0], stderr=streams[1], env=env, cwd=cwd
        )
        self.procs.append(proc)
        return proc

    async def stop(self, proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(p) for p in self.procs), return_exceptions=True)
        for sink in self._log_files:
            sink.close()
        self._log_files.clear()


def _open_log(path: Path) -> IO[bytes]:
    return path.open("ab")


async def run_checked(
    children: Children, argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None
) -> str:
    """Run to completion; return stdout, or raise with the output if it failed."""
    proc = await children.spawn(argv, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        await children.stop(proc)
        raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(argv)}") from None
    if proc.returncode != 0:
        raise RuntimeError(
            f"exit {proc.returncode}: {' '.join(argv)}\n{out.decode(errors='replace')}"
            f"{err.decode(errors='replace')}"
        )
    return out.decode()


def tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join("    " + line for line in text)
    return ""


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def tcp_listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` (in whatever network namespace it is) has a TCP listener on port."""
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            listening = len(fields) > 3 and fields[3] == "0A"  # TCP_LISTEN
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


async def wait_listening(proc: asyncio.subprocess.Process, port: int, what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while not tcp_listening(proc.pid, port):
        if proc.returncode is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} is not listening on port {port} after 30 s:\n{tail(log)}")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- payload
@dataclass(frozen=True)
class Payload:
    path: Path
    size: int
    sha256: str


def make_payload(folder: Path, size_mib: int) -> Payload:
    path = folder / f"payload-{size_mib}MiB.bin"
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size_mib):
            block = os.urandom(MIB)
            digest.update(block)
            f.write(block)
    return Payload(path, size_mib * MIB, digest.hexdigest())


def check_copy(received: Path, payload: Payload) -> None:
    """The received file must be byte-identical to the payload (size, then SHA-256)."""
    size = received.stat().st_size
    if size != payload.size:
        raise RuntimeError(f"{received}: {size:,} bytes, expected {payload.size:,}")
    with received.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != payload.sha256:
        raise RuntimeError(f"{received}: SHA-256 {digest[:16]}… differs from the payload's")


async def verify(received: Path, payload: Payload) -> None:
    await asyncio.to_thread(check_copy, received, payload)


def find_received(folder: Path, payload: Payload) -> Path | None:
    """A finished file of the payload's size under ``folder`` (temporary names skipped)."""
    if not folder.exists():
        return None
    for path in sorted(folder.rglob("*")):
        if (
            path.is_file()
            and not path.name.endswith(TEMP_SUFFIXES)
            and path.stat().st_size == payload.size
        ):
            return path
    return None


async def wait_received(folder: Path, payload: Payload, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while (found := find_received(folder, payload)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no complete {payload.size:,}-byte file in {folder}")
        await asyncio.sleep(0.01)
    return found


def clear_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


# -------------------------------------------------------------------- paths
@dataclass
class PathEnv:
    """Where the two sides run: addresses, namespaces, scratch folder and child processes."""

    name: str
    description: str
    work: Path
    sender_addr: str
    receiver_addr: str
    children: Children
    timeout: float
    net: NetnsPair | None = None

    @property
    def allowed(self) -> set[str]:
        return {self.sender_addr, self.receiver_addr}

    def prefix(self, side: str) -> list[str]:
        """``ip netns exec NS`` for side "a" (sender) or "b" (receiver); nothing on loopback."""
        return self.net.prefix(side) if self.net is not None else []

    def addr(self, side: str) -> str:
        return check_host(self.sender_addr if side == "a" else self.receiver_addr, self.allowed)

    def port(self, kind: int, fixed: int) -> int:
        """A fresh namespace has every port free; on loopback ask the kernel for one."""
        return fixed if self.net is not None else free_port(kind)


# --------------------------------------------------------------- contenders
class Contender:
    key = ""
    label = ""

    def __init__(self, env: PathEnv) -> None:
        self.env = env

    async def setup(self) -> None:
        """Start servers/daemons; raise :class:`Unavailable` if this contender cannot run."""

    async def run(self, payload: Payload, index: int) -> float:
        """Move the payload once, verify it arrived intact; return the seconds it took."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop what ``setup`` started (the path also stops every child at the end)."""

    def notes(self) -> list[str]:
        return []

    def reset_peak(self) -> None:
        """Start a new peak-memory window (before the runs of one file size)."""

    def peak(self) -> tuple[float | None, float | None] | None:
        """Peak RSS in MiB of the long-lived (sender, receiver) processes since
        ``reset_peak``, if the contender has such processes."""
        return None


# ......................................................... magic-wormhole
class Wormhole(Contender):
    key = "wormhole"

    def __init__(self, env: PathEnv, python: str) -> None:
        super().__init__(env)
        self.python = python
        self.label = "magic-wormhole"
        self.folder = env.work / "wormhole"
        self.tag = secrets.token_hex(3)
        self.relay_url = ""
        self.transit_helper = ""
        self.channels: list[str] = []

    async def setup(self) -> None:
        try:
            probe = await asyncio.create_subprocess_exec(
                self.python, "-c",
                "import twisted, wormhole, wormhole_mailbox_server, wormhole_transit_relay\n"
                "from importlib.metadata import version; print(version('magic-wormhole'))",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            raise Unavailable(f"cannot run {self.python}: {exc}") from exc
        out, err = await probe.communicate()
        if probe.returncode == 0:
            self.label = f"magic-wormhole {out.decode().strip()}"
        else:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise Unavailable(
                f"{last[0]} (pip install -e '.[bench]', or --wormhole-python for a venv)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        host = self.env.addr("b")
        mailbox_port = self.env.port(socket.SOCK_STREAM, 4000)
        relay_port = self.env.port(socket.SOCK_STREAM, 4001)
        self.relay_url = f"ws://{host}:{mailbox_port}/v1"
        self.transit_helper = f"tcp:{host}:{relay_port}"
        twist = [
            *self.env.prefix("b"), self.python, "-m", "twisted",
            "--log-format=text", "--log-file=-",
        ]  # fmt: skip
        children = self.env.children
        for name, plugin, port in (
            ("mailbox", ["wormhole-mailbox", f"--channel-db={self.folder / 'relay.sqlite'}"],
             mailbox_port),
            ("transit-relay", ["transitrelay"], relay_port),
        ):  # fmt: skip
            log = children.log_path(f"wormhole-{name}")
            proc = await children.spawn(
                [*twist, *plugin, f"--port=tcp:{port}:interface={host}"],
                stdout=log,
                stderr=log,
                cwd=self.folder,
            )
            await wait_listening(proc, port, f"wormhole {name}", log)

    def argv(self, side: str, *command: str) -> list[str]:
        wormhole_args = [
            "--relay-url", self.relay_url, "--transit-helper", self.transit_helper, *command,
        ]  # fmt: skip
        problems = wormhole_argv_problems(wormhole_args, self.env.allowed)
        if problems:
            raise SystemExit("refusing to run wormhole: " + "; ".join(problems))
        allow = [arg for host in sorted(self.env.allowed) for arg in ("--allow", host)]
        return [
            *self.env.prefix(side), self.python, str(SCRIPT), "_wormhole",
            "--hint", self.env.addr(side), *allow, "--", *wormhole_args,
        ]  # fmt: skip

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORMHOLE_")}
        env["WORMHOLE_RELAY_URL"] = self.relay_url
        env["WORMHOLE_TRANSIT_HELPER"] = self.transit_helper
        env["PYTHONPATH"] = str(SCRIPT.parent)
        return env

    async def run(self, payload: Payload, index: int) -> float:
        code = f"{7 + index}-bench-{self.tag}"
        outdir = self.folder / f"received-{index}"
        clear_folder(outdir)
        children, env = self.env.children, self.child_env()
        send_argv = self.argv("a", "send", "--hide-progress", "--no-qr", "--code", code,
                              str(payload.path))  # fmt: skip
        receive_argv = self.argv("b", "receive", "--hide-progress", "--accept-file",
                                 "-o", str(outdir), code)  # fmt: skip
        send_log = children.log_path(f"wormhole-send-{index}")
        receive_log = children.log_path(f"wormhole-receive-{index}")
        start = time.perf_counter()
        sender = await children.spawn(send_argv, stdout=send_log, stderr=send_log, env=env)
        receiver = await children.spawn(
            receive_argv, stdout=receive_log, stderr=receive_log, env=env
        )
        try:
            await asyncio.wait_for(receiver.wait(), self.env.timeout)
            elapsed = time.perf_counter() - start
            await asyncio.wait_for(sender.wait(), 30)
        except TimeoutError:
            raise RuntimeError("wormhole transfer timed out") from None
        finally:
            await children.stop(sender)
            await children.stop(receiver)
        if receiver.returncode != 0 or sender.returncode != 0:
            raise RuntimeError(
                f"wormhole send exited {sender.returncode}, receive {receiver.returncode}:\n"
                f"{tail(send_log)}\n{tail(receive_log)}"
            )
        received = find_received(outdir, payload)
        if received is None:
            raise RuntimeError(f"wormhole receive left no complete file in {outdir}")
        # "Receiving (->tcp:HOST:PORT).." for a direct connection, "(->relay:...)" via the relay.
        with contextlib.suppress(OSError):
            found = re.search(r"Receiving \(->([^)]*)\)", receive_log.read_text(errors="replace"))
            self.channels.append(found.group(1) if found else "?")
        await verify(received, payload)
        shutil.rmtree(outdir, ignore_errors=True)
        return elapsed

    def notes(self) -> list[str]:
        if not self.channels:
            return []
        return [f"magic-wormhole data connection per run: {', '.join(self.channels)}"]


# ................................................................ aioquic
class Aioquic(Contender):
    key = "aioquic"

    def __init__(self, env: PathEnv, max_datagram_size: int | None) -> None:
        super().__init__(env)
        self.max_datagram_size = max_datagram_size
        if max_datagram_size is None:
            self.label = f"aioquic {package_version('aioquic')} (defaults: 1200 B datagrams)"
        else:
            self.label = f"aioquic (max_datagram_size={max_datagram_size})"
        self.folder = env.work / f"aioquic-{max_datagram_size or 'default'}"
        self.server: asyncio.subprocess.Process | None = None
        self.log = Path(os.devnull)
        self.port = 0

    def _size_args(self) -> list[str]:
        if self.max_datagram_size is None:
            return []
        return ["--max-datagram-size", str(self.max_datagram_size)]

    async def setup(self) -> None:
        try:
            import aioquic  # noqa: F401
        except ImportError as exc:
            raise Unavailable(f"ImportError: {exc}") from exc
        self.folder.mkdir(parents=True, exist_ok=True)
        cert, key = write_certificate(self.folder)
        self.log = self.env.children.log_path(f"aioquic-server-{self.max_datagram_size or 0}")
        self.server = await self.env.children.spawn(
            [
                *self.env.prefix("b"), sys.executable, str(SCRIPT), "_aioquic-server",
                "--host", self.env.addr("b"), "--port", "0", "--out", str(self.folder),
                "--cert", str(cert), "--key", str(key), *self._size_args(),
            ],
            stdin=asyncio.subprocess.PIPE,
            stderr=self.log,
        )  # fmt: skip
        line = await self._server_line(30)
        if not line.startswith("ready "):
            raise RuntimeError(f"aioquic server did not start: {line!r}")
        self.port = int(line.split()[1])

    async def _server_line(self, timeout: float) -> str:
        assert self.server is not None and self.server.stdout is not None
        raw = await asyncio.wait_for(self.server.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError(f"aioquic server exited:\n{tail(self.log)}")
        return raw.decode().strip()

    async def run(self, payload: Payload, index: int) -> float:
        client = await self.env.children.spawn(
            [
                *self.env.prefix("a"), sys.executable, str(SCRIPT), "_aioquic-client",
                "--host", self.env.addr("b"), "--port", str(self.port),
                "--bind", self.env.addr("a"), "--file", str(payload.path),
                "--timeout", str(self.env.timeout), *self._size_args(),
            ],
            stdin=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert client.stdin is not None and client.stdout is not None
        try:
            ready = await asyncio.wait_for(client.stdout.readline(), 30)
            if ready.strip() != b"ready":
                raise RuntimeError(f"aioquic client did not start: {ready!r}")
            client.stdin.write(b"go\n")
            await client.stdin.drain()
            raw = await asyncio.wait_for(client.stdout.readline(), self.env.timeout + 10)
            await asyncio.wait_for(client.wait(), 30)
        finally:
            await self.env.children.stop(client)
        if client.returncode != 0 or not raw:
            err = await client.stderr.read() if client.stderr is not None else b""
            raise RuntimeError(f"aioquic client failed: {err.decode(errors='replace')}")
        result = json.loads(raw)
        stored = json.loads(await self._server_line(30))
        if "error" in stored:
            raise RuntimeError(f"aioquic server: {stored['error']}")
        if result["acked"] != payload.size:
            raise RuntimeError(f"aioquic server acknowledged {result['acked']:,} bytes")
        received = Path(stored["path"])
        await verify(received, payload)
        await asyncio.to_thread(received.unlink)
        return float(result["seconds"])


# ................................................................ p2pchat
def p2pchat_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("P2PCHAT_HOME", "P2PCHAT_PASSPHRASE")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def p2pchat_cli_support() -> str | None:
    """None if this checkout's CLI has the file drop, else why not."""
    try:
        from p2pchat.cli import build_parser
    except ImportError as exc:
        return f"ImportError: {exc}"
    parser = build_parser()
    commands = next(
        (a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {}
    )
    if "send" not in commands:
        return "AttributeError: the CLI has no `send` command"
    for command, needed in (
        ("send", {"--wait"}),
        ("daemon", {"--downloads", "--accept-files-from"}),
    ):
        options = {opt for action in commands[command]._actions for opt in action.option_strings}
        if missing := sorted(needed - options):
            return f"AttributeError: `p2pchat {command}` has no {', '.join(missing)}"
    return None


def p2pchat_unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(f"file drop not available ({type(exc).__name__}: {exc})")


class P2pchatPair:
    """Two homes, ``alice`` (sender) and ``bob`` (receiver), contacts of each other."""

    def __init__(self, env: PathEnv, folder: Path, ports: tuple[int, int]) -> None:
        self.env = env
        self.folder = folder
        self.ports = dict(zip("ab", ports, strict=True))
        self.homes = {"a": folder / "alice", "b": folder / "bob"}
        self.downloads = {"a": folder / "downloads-alice", "b": folder / "downloads-bob"}
        self.listen: dict[str, str] = {}

    def cli(self, side: str, *args: str) -> list[str]:
        return [
            *self.env.prefix(side), sys.executable, "-m", "p2pchat",
            "--home", str(self.homes[side]), *args,
        ]  # fmt: skip

    async def create(self) -> None:
        """``init`` both homes, then each adds the other (alice with bob's address)."""
        ids: dict[str, str] = {}
        for side, name in (("a", "alice"), ("b", "bob")):
            self.downloads[side].mkdir(parents=True, exist_ok=True)
            port = self.env.port(socket.SOCK_DGRAM, self.ports[side])
            self.listen[side] = f"{self.env.addr(side)}:{port}"
            out = await run_checked(
                self.env.children,
                self.cli(side, "init", "--name", name, "--listen", self.listen[side], "--json"),
                timeout=60,
                env=p2pchat_env(),
            )
            ids[side] = json.loads(out)["peer_id"]
        await run_checked(
            self.env.children,
            self.cli("a", "add", ids["b"], "--name", "bob", "--addr", self.listen["b"]),
            timeout=60,
            env=p2pchat_env(),
        )
        await run_checked(
            self.env.children, self.cli("b", "add", ids["a"], "--name", "alice"),
            timeout=60, env=p2pchat_env(),
        )  # fmt: skip


class P2pchatDaemons(Contender):
    key = "p2pchat"
    label = "p2pchat daemons (CLI send --wait)"

    def __init__(self, env: PathEnv) -> None:
        super().__init__(env)
        self.pair = P2pchatPair(env, env.work / "p2pchat-daemons", (7001, 7002))
        self.daemons: list[asyncio.subprocess.Process] = []
        self.cli_seconds: float | None = None
        self.fixed: dict[str, float] = {}
        self.phases: dict[str, float] = {}

    async def setup(self) -> None:
        reason = p2pchat_cli_support()
        if reason is not None:
            raise Unavailable(f"file drop not available ({reason})")
        from p2pchat.config import Paths
        from p2pchat.net.control import ControlClient

        await self.pair.create()
        logs: list[Path] = []
        for side in ("b", "a"):
            argv = self.pair.cli(
                side, "daemon", "--listen", self.pair.listen[side], "--no-mdns", "--no-dht",
                "--downloads", str(self.pair.downloads[side]), "--accept-files-from", "contacts",
            )  # fmt: skip
            log = self.env.children.log_path(f"p2pchat-daemon-{side}")
            logs.append(log)
            proc = await self.env.children.spawn(argv, stdout=log, stderr=log, env=p2pchat_env())
            self.daemons.append(proc)
        clients = {side: ControlClient(Paths(self.pair.homes[side]).control_socket)
                   for side in ("a", "b")}  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            for client in clients.values():
                while True:
                    try:
                        await client.connect()
                        break
                    except OSError:
                        if any(p.returncode is not None for p in self.daemons):
                            output = "\n".join(tail(log) for log in logs)
                            raise RuntimeError(f"a p2pchat daemon exited:\n{output}") from None
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.05)
            # Wait for the session: the timed part is the transfer, not the dial.
            while True:
                contacts = await clients["a"].call("contacts", {})
                if any(c["name"] == "bob" and c["online"] for c in contacts):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("alice's daemon did not see bob online within 30 s")
                await asyncio.sleep(0.05)
        finally:
            for client in clients.values():
                with contextlib.suppress(Exception):
                    await client.close()
        # What every CLI command pays before it does anything: start-up and one control call.
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            await run_checked(
                self.env.children, self.pair.cli("a", "contacts", "--json"),
                timeout=60, env=p2pchat_env(),
            )  # fmt: skip
            samples.append(time.perf_counter() - start)
        self.cli_seconds = statistics.median(samples)
        await self._fixed_costs()

    async def _fixed_costs(self) -> None:
        """Where ``send --wait`` spends its time before the bytes: a 1 KiB file through
        the CLI (start-up, control calls, offer, accept, data channel, result) and the
        same through the daemon's control socket, without the CLI's start-up."""
        from p2pchat.config import Paths
        from p2pchat.net.control import ControlClient

        tiny = self.env.work / "tiny.bin"
        tiny.write_bytes(os.urandom(1024))
        inbox = self.pair.downloads["b"]
        cli, api = [], []
        phases: dict[str, list[float]] = {}
        client = ControlClient(Paths(self.pair.homes["a"]).control_socket)
        await client.connect()
        streams = {side: EventStream(Paths(self.pair.homes[side]).control_socket)
                   for side in ("a", "b")}  # fmt: skip
        try:
            for stream in streams.values():
                await stream.open()
            for _ in range(5):
                start = time.perf_counter()
                await run_checked(
                    self.env.children, self.pair.cli("a", "send", "bob", str(tiny), "--wait"),
                    timeout=60, env=p2pchat_env(),
                )  # fmt: skip
                cli.append(time.perf_counter() - start)
                clear_folder(inbox)
                for stream in streams.values():
                    stream.seen.clear()
                start = time.perf_counter()
                t = await client.call("send_files", {"contact": "bob", "paths": [str(tiny)]})
                state = await client.call("wait_transfer", {"id": t["id"], "timeout": 30})
                api.append(time.perf_counter() - start)
                if state != "done":
                    raise RuntimeError(f"a 1 KiB transfer ended {state!r}")
                await asyncio.sleep(0.05)  # the receiver's last events
                for name, seconds in transfer_phases(streams, t["id"], start).items():
                    phases.setdefault(name, []).append(seconds)
                clear_folder(inbox)
        finally:
            await client.close()
            for stream in streams.values():
                await stream.close()
        self.fixed = {"cli": statistics.median(cli), "api": statistics.median(api)}
        self.phases = {name: statistics.median(values) for name, values in phases.items()}

    def reset_peak(self) -> None:
        for proc in self.daemons:
            reset_peak_rss(proc.pid)

    def peak(self) -> tuple[float | None, float | None] | None:
        receiver, sender = (peak_rss_mib(proc.pid) for proc in self.daemons)
        return sender, receiver

    async def run(self, payload: Payload, index: int) -> float:
        inbox = self.pair.downloads["b"]
        clear_folder(inbox)
        start = time.perf_counter()
        await run_checked(
            self.env.children,
            self.pair.cli("a", "send", "bob", str(payload.path), "--wait"),
            timeout=self.env.timeout,
            env=p2pchat_env(),
        )
        received = await wait_received(inbox, payload, 10)
        elapsed = time.perf_counter() - start
        await verify(received, payload)
        clear_folder(inbox)
        return elapsed

    async def close(self) -> None:
        for proc in self.daemons:
            await self.env.children.stop(proc)

    def notes(self) -> list[str]:
        if self.cli_seconds is None:
            return []
        notes = [
            f"p2pchat daemons: includes the CLI's start-up; `p2pchat contacts --json` takes"
            f" {self.cli_seconds:.2f} s here"
        ]
        if self.fixed:
            notes.append(
                f"p2pchat daemons: a 1 KiB file takes {self.fixed['cli']:.3f} s through"
                f" `send --wait` and {self.fixed['api']:.3f} s through the control socket"
                " (offer, accept, data channel, result: no CLI start-up), medians of 5"
            )
        if self.phases:
            steps = ", ".join(
                f"{name} {ms * 1000:.1f} ms"
                for name, ms in sorted(self.phases.items(), key=lambda item: item[1])
            )
            notes.append(
                f"p2pchat daemons: 1 KiB through the control socket, from the call: {steps}"
            )
        return notes


class EventStream:
    """A daemon's event stream (the control socket's ``events``), each event kept
    with the time it arrived here."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(str(self.path), limit=1 << 22)
        self._writer.write(b'{"op": "events"}\n')
        await reader.readline()  # {"ok": true, "result": "streaming"}
        self._task = asyncio.ensure_future(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            self.seen.append((time.perf_counter(), json.loads(line)))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def transfer_phases(
    streams: dict[str, EventStream], transfer_id: str, start: float
) -> dict[str, float]:
    """When each step of one transfer showed up, in seconds after ``start``: the
    sender's offer stored, the receiver's offer stored, accepted and receiving, the
    sender's accept arrived (``sending``), the receiver done, the sender done."""
    wanted = {
        ("a", "TransferStateChanged", "offered"): "offer stored",
        ("b", "TransferOffered", None): "offer received",
        ("b", "TransferStateChanged", "accepted"): "accepted",
        ("a", "TransferStateChanged", "sending"): "sender has the accept",
        ("b", "TransferStateChanged", "receiving"): "channel claimed",
        ("b", "TransferStateChanged", "done"): "verified and named",
        ("a", "TransferStateChanged", "done"): "sender done",
    }
    found: dict[str, float] = {}
    for side, stream in streams.items():
        for at, event in stream.seen:
            if event.get("transfer_id") != transfer_id:
                continue
            name = wanted.get((side, event.get("type"), event.get("state")))
            if name is not None and name not in found:
                found[name] = at - start
    return dict(sorted(found.items(), key=lambda item: item[1]))


def reset_peak_rss(pid: int) -> None:
    """Reset a process's peak resident memory (``VmHWM``) to its current RSS (Linux
    ``clear_refs``), so each file size gets its own peak."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_mib(pid: int) -> float | None:
    """A process's peak resident memory (Linux ``/proc``), None where unreadable."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


class P2pchatInProcess(Contender):
    key = "p2pchat"
    label = "p2pchat in-process (Node API, 1 process)"

    def __init__(self, env: PathEnv) -> None:
        super().__init__(env)
        self.pair = P2pchatPair(env, env.work / "p2pchat-nodes", (7011, 7012))
        self.nodes: dict[str, Any] = {}

    async def setup(self) -> None:
        try:
            from p2pchat.config import Paths
            from p2pchat.node import Node

            for attr in ("offer_files", "wait_transfer"):
                if not hasattr(Node, attr):
                    raise AttributeError(f"Node has no {attr}")
        except (ImportError, AttributeError) as exc:
            raise p2pchat_unavailable(exc) from exc
        await self.pair.create()
        bob = self.nodes["b"] = Node(Paths(self.pair.homes["b"]))
        alice = self.nodes["a"] = Node(Paths(self.pair.homes["a"]))
        try:
            await bob.start(
                listen=self.pair.listen["b"],
                downloads=self.pair.downloads["b"],
                accept_files_from=["contacts"],
            )
        except TypeError as exc:  # a start() without the file drop's keywords
            raise p2pchat_unavailable(exc) from exc
        await alice.start(listen=self.pair.listen["a"])
        deadline = time.monotonic() + 30
        while not (alice.is_online(bob.peer_id) and bob.is_online(alice.peer_id)):
            if time.monotonic() > deadline:
                raise RuntimeError("the two nodes did not connect within 30 s")
            await asyncio.sleep(0.02)

    async def run(self, payload: Payload, index: int) -> float:
        alice = self.nodes["a"]
        inbox = self.pair.downloads["b"]
        clear_folder(inbox)
        start = time.perf_counter()
        transfer = alice.offer_files("bob", [payload.path])
        if inspect.isawaitable(transfer):
            transfer = await transfer
        state = await alice.wait_transfer(transfer.id, timeout=self.env.timeout)
        if state != "done":
            raise RuntimeError(f"transfer ended {state!r}")
        received = await wait_received(inbox, payload, 10)
        elapsed = time.perf_counter() - start
        await verify(received, payload)
        clear_folder(inbox)
        return elapsed

    async def close(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                await node.stop()


# ------------------------------------------------------------- the runner
@dataclass
class Outcome:
    contender: Contender
    payload: Payload
    seconds: list[float] = field(default_factory=list)
    error: str | None = None
    unavailable: str | None = None
    peak: tuple[float | None, float | None] | None = None

    def median_seconds(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


def build_contenders(env: PathEnv, args: argparse.Namespace) -> list[Contender]:
    contenders: list[Contender] = []
    if "wormhole" not in args.skip:
        contenders.append(Wormhole(env, args.wormhole_python))
    if "aioquic" not in args.skip:
        contenders.append(Aioquic(env, None))
        contenders.append(Aioquic(env, 1452))
    if "p2pchat" not in args.skip:
        contenders.append(P2pchatDaemons(env))
        if env.net is None and "inprocess" not in args.skip:
            contenders.append(P2pchatInProcess(env))
    return contenders


async def run_path(
    env: PathEnv, payloads: list[Payload], args: argparse.Namespace
) -> list[Outcome]:
    """Set every contender up once, then for each file size run them in turn
    (interleaved, ``--repeat`` rounds); one outcome per contender and size."""
    contenders = build_contenders(env, args)
    outcomes = {(id(c), p.path): Outcome(c, p) for p in payloads for c in contenders}
    failed: dict[int, str] = {}
    unavailable: dict[int, str] = {}
    try:
        for contender in contenders:
            print(f"[{env.name}] setting up {contender.label} ...", flush=True)
            try:
                await contender.setup()
            except Unavailable as exc:
                unavailable[id(contender)] = str(exc)
                print(f"[{env.name}] {contender.key}: {exc}", flush=True)
            except Exception as exc:
                failed[id(contender)] = f"setup failed: {type(exc).__name__}: {exc}"
                print(f"[{env.name}] {contender.label}: {failed[id(contender)]}", flush=True)
        for payload in payloads:
            size = f"{payload.size // MIB} MiB"
            for contender in contenders:
                contender.reset_peak()
            for index in range(args.repeat):
                for contender in contenders:
                    outcome = outcomes[(id(contender), payload.path)]
                    if id(contender) in unavailable or id(contender) in failed:
                        continue
                    try:
                        seconds = await contender.run(payload, index)
                    except Exception as exc:
                        failed[id(contender)] = (
                            f"{size} run {index + 1} failed: {type(exc).__name__}: {exc}"
                        )
                        outcome.error = failed[id(contender)]
                        print(f"[{env.name}] {contender.label}: {outcome.error}", flush=True)
                        continue
                    outcome.seconds.append(seconds)
                    print(
                        f"[{env.name}] {size} run {index + 1}/{args.repeat} {contender.label}:"
                        f" {seconds:.3f} s, {payload.size / MB / seconds:.1f} MB/s (SHA-256 ok)",
                        flush=True,
                    )
            for contender in contenders:
                outcomes[(id(contender), payload.path)].peak = contender.peak()
    finally:
        for contender in contenders:
            with contextlib.suppress(Exception):
                await contender.close()
        await env.children.stop_all()
    for outcome in outcomes.values():
        key = id(outcome.contender)
        outcome.unavailable = unavailable.get(key)
        if not outcome.seconds and outcome.error is None and key in failed:
            outcome.error = failed[key]
    return list(outcomes.values())


# --------------------------------------------------------------- reporting
def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def print_header(args: argparse.Namespace, payloads: list[Payload]) -> None:
    cpus = os.cpu_count()
    print()
    print(f"date       {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"python     {platform.python_version()} ({platform.python_implementation()})")
    print(
        f"packages   aioquic {package_version('aioquic')}, p2pchat {package_version('p2pchat')},"
        f" magic-wormhole {package_version('magic-wormhole')},"
        f" twisted {package_version('twisted')}"
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine    {platform.system()} {platform.release()} {platform.machine()}, {cpus} CPUs,"
        f" load average {load} at the end"
    )
    sizes = ", ".join(f"{p.size:,} bytes ({p.size // MIB} MiB)" for p in payloads)
    print(
        f"payloads   {sizes} of random data in {payloads[0].path.parent};"
        f" {args.repeat} run(s) per contender and size"
    )


def short(error: str) -> str:
    """First and last line of a (multi-line) error, for the table; the log has the rest."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} … {lines[-1]}"


def print_table(env: PathEnv, outcomes: list[Outcome], keep: bool) -> None:
    def median_rate(payload: Payload, key: str, label_part: str = "") -> float | None:
        for o in outcomes:
            if (
                o.payload is payload
                and o.contender.key == key
                and label_part in o.contender.label
                and o.seconds
            ):
                return payload.size / statistics.median(o.seconds)
        return None

    print()
    print(f"== {env.name}: {env.description} ==")
    header = (
        f"{'size':>9} {'contender':<42}{'MB/s':>8}{'MiB/s':>8}{'seconds':>9}{'best MB/s':>11}"
        f"{'vs wormhole':>13}{'vs aioquic':>12}  peak RSS sender/receiver"
    )
    print(header)
    print("-" * len(header))
    for o in outcomes:
        payload = o.payload
        label = o.contender.label
        size = f"{payload.size // MIB} MiB"
        if o.unavailable is not None:
            print(f"{size:>9} {label:<42}  {o.contender.key}: {o.unavailable}")
            continue
        if not o.seconds:
            print(f"{size:>9} {label:<42}  {short(o.error or 'no run')}")
            continue
        wormhole_rate = median_rate(payload, "wormhole")
        aioquic_rate = median_rate(payload, "aioquic", "defaults")
        seconds = statistics.median(o.seconds)
        rate = payload.size / seconds
        best = payload.size / min(o.seconds)
        ratios = [
            f"{rate / ref:>{width - 1}.2f}x" if ref else f"{'-':>{width}}"
            for ref, width in ((wormhole_rate, 13), (aioquic_rate, 12))
        ]
        peak = ""
        if o.peak is not None:
            peak = "  " + " / ".join("?" if v is None else f"{v:.0f} MiB" for v in o.peak)
        print(
            f"{size:>9} {label:<42}{rate / MB:>8.1f}{rate / MIB:>8.1f}{seconds:>9.3f}"
            f"{best / MB:>11.1f}" + "".join(ratios) + peak
        )
        if o.error is not None:
            print(f"{'':>9} {'':<42}  (then {short(o.error)})")
    print()
    noted: set[int] = set()
    for o in outcomes:
        if len(o.seconds) > 1:
            runs = ", ".join(f"{s:.3f}" for s in o.seconds)
            print(f"runs (s)   {o.payload.size // MIB} MiB, {o.contender.label}: {runs}")
        if id(o.contender) not in noted:
            noted.add(id(o.contender))
            for note in o.contender.notes():
                print(f"note       {note}")
    if keep:
        print(f"logs       {env.children.logs}")


# ------------------------------------------------------------------- main
def parse_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown)} (choose from {', '.join(allowed)})"
        )
    return items


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Move a random file with p2pchat, bare aioquic and magic-wormhole; "
        "print MB/s and ratios per network path."
    )
    parser.add_argument(
        "--size-mib", type=int, default=None, metavar="N", help="one file size in MiB"
    )
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",") if x.strip()], default=None,
        metavar="LIST", help="file sizes in MiB, comma-separated, e.g. 256,4096 (default 256)",
    )  # fmt: skip
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="N",
        help="runs per contender and path; the table shows median and best (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--paths", type=lambda s: parse_list(s, PATH_KEYS, "path"), default=list(PATH_KEYS),
        metavar="LIST", help="comma-separated: loopback,veth (default both; veth needs root)",
    )  # fmt: skip
    parser.add_argument(
        "--skip", type=lambda s: parse_list(s, CONTENDER_KEYS, "contender"), default=[],
        metavar="LIST",
        help="comma-separated contenders to leave out: wormhole,aioquic,p2pchat,inprocess",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S",
        help="give up on one transfer after S seconds (default 120 + 1 s per MiB)",
    )  # fmt: skip
    parser.add_argument(
        "--tmpdir", type=Path, default=None, metavar="DIR",
        help="where the payload and received files go (default: the system temp folder)",
    )  # fmt: skip
    parser.add_argument(
        "--wormhole-python", default=sys.executable, metavar="PYTHON",
        help="interpreter that has magic-wormhole and its servers (default: this one)",
    )  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch folder (logs) after the run"
    )
    args = parser.parse_args(argv)
    if args.size_mib is not None and args.sizes is not None:
        parser.error("give --size-mib or --sizes, not both")
    args.sizes = args.sizes or [args.size_mib or 256]
    if min(args.sizes) < 1 or args.repeat < 1:
        parser.error("sizes and --repeat must be positive")
    if args.timeout is None:
        args.timeout = 120.0 + max(args.sizes)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every finally (processes, namespaces) runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    scratch = Path(tempfile.mkdtemp(prefix="p2pb-filedrop-", dir=args.tmpdir))
    results: list[tuple[PathEnv, list[Outcome]]] = []
    try:
        payloads = []
        for size_mib in args.sizes:
            print(f"writing {size_mib} MiB of random data to {scratch} ...", flush=True)
            payloads.append(make_payload(scratch, size_mib))
        for name in args.paths:
            work = scratch / name
            (work / "logs").mkdir(parents=True)
            children = Children(work / "logs")
            if name == "loopback":
                env = PathEnv(
                    name, "127.0.0.1 to 127.0.0.1", work, LOOPBACK, LOOPBACK, children,
                    args.timeout,
                )  # fmt: skip
                results.append((env, asyncio.run(run_path(env, payloads, args))))
                continue
            reason = netns_unavailable()
            if reason is not None:
                print(f"[veth] skipped: {reason}", flush=True)
                continue
            try:
                with NetnsPair(mtu=1500) as net:
                    env = PathEnv(
                        name,
                        f"{net.addr_a} ({net.ns_a}) to {net.addr_b} ({net.ns_b}), veth MTU"
                        f" {net.mtu}",
                        work, net.addr_a, net.addr_b, children, args.timeout, net,
                    )  # fmt: skip
                    results.append((env, asyncio.run(run_path(env, payloads, args))))
            except NetnsError as exc:
                print(f"[veth] skipped: {exc}", flush=True)
        print_header(args, payloads)
        for env, outcomes in results:
            print_table(env, outcomes, args.keep)
    except KeyboardInterrupt:
        print("\ninterrupted: child processes and namespaces are cleaned up", flush=True)
        return 130
    finally:
        if args.keep:
            print(f"scratch folder kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    failed = any(o.error for _, outcomes in results for o in outcomes)
    return 1 if failed else 0


# ------------------------------------------------ hidden child sub-commands
def write_certificate(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

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


def _open_write(path: Path) -> IO[bytes]:
    return path.open("wb")


def _open_read(path: Path) -> IO[bytes]:
    return path.open("rb", buffering=0)


async def aioquic_server(args: argparse.Namespace) -> None:
    """Serve one file per stream: store the bytes, answer with their count at the end."""
    from aioquic.asyncio import serve
    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    config.load_cert_chain(args.cert, args.key)
    if args.max_datagram_size:
        config.max_datagram_size = args.max_datagram_size
    numbers = itertools.count()
    tasks: set[asyncio.Task[None]] = set()

    async def receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = Path(args.out) / f"received-{next(numbers)}.bin"
        total = 0
        try:
            with _open_write(path) as f:
                while chunk := await reader.read(MIB):
                    f.write(chunk)
                    total += len(chunk)
            writer.write(ACK.pack(total))
            writer.write_eof()
            print(json.dumps({"path": str(path), "bytes": total}), flush=True)
        except Exception as exc:
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(receive(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await serve(args.host, args.port, configuration=config, stream_handler=on_stream)
    port = server._transport.get_extra_info("sockname")[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {port}", flush=True)
    await stop.wait()
    server.close()


async def aioquic_client(args: argparse.Namespace) -> dict[str, float]:
    """Send the file on one stream; seconds from the handshake's start to the server's ack."""
    from aioquic.asyncio import QuicConnectionProtocol
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    class Paced(QuicConnectionProtocol):
        """Signals after each transmit, i.e. after every datagram received and timer fired."""

        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.progress = asyncio.Event()

        def transmit(self) -> None:
            super().transmit()
            self.progress.set()

    config = QuicConfiguration(
        is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE, server_name="bench"
    )
    if args.max_datagram_size:
        config.max_datagram_size = args.max_datagram_size
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    connection = QuicConnection(configuration=config)
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: Paced(connection), local_addr=(args.bind, 0)
    )
    try:
        protocol.connect((args.host, args.port))
        await asyncio.wait_for(protocol.wait_connected(), 10)
        reader, writer = await protocol.create_stream()
        stream_id = writer.get_extra_info("stream_id")
        sent = 0
        with _open_read(Path(args.file)) as f:
            while chunk := f.read(READ_CHUNK):
                writer.write(chunk)
                sent += len(chunk)
                # aioquic buffers without limit: wait while too much is in flight or queued.
                sender = connection._streams[stream_id].sender
                while sender._buffer_stop - sender._buffer_start > SEND_BACKLOG:
                    protocol.progress.clear()
                    await protocol.progress.wait()
        writer.write_eof()
        (acked,) = ACK.unpack(await reader.readexactly(ACK.size))
        elapsed = time.perf_counter() - start
    finally:
        protocol.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(protocol.wait_closed(), 5)
        transport.close()
    return {"seconds": elapsed, "sent": sent, "acked": acked}


def child_main(argv: list[str]) -> int:
    """The hidden sub-commands this script runs as its own child processes."""
    command, rest = argv[0], argv[1:]
    if command == "_wormhole":
        return wormhole_child(rest)
    parser = argparse.ArgumentParser(prog=f"filedrop.py {command}")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-datagram-size", type=int, default=None)
    if command == "_aioquic-server":
        parser.add_argument("--out", required=True)
        parser.add_argument("--cert", required=True)
        parser.add_argument("--key", required=True)
        asyncio.run(aioquic_server(parser.parse_args(rest)))
        return 0
    if command == "_aioquic-client":
        parser.add_argument("--bind", required=True)
        parser.add_argument("--file", required=True)
        parser.add_argument("--timeout", type=float, default=600.0)
        args = parser.parse_args(rest)
        print("ready", flush=True)  # imports are done; the parent starts the clock with "go"
        if sys.stdin.readline().strip() != "go":
            return 1
        result = asyncio.run(asyncio.wait_for(aioquic_client(args), args.timeout))
        print(json.dumps(result), flush=True)
        return 0
    print(f"unknown sub-command {command}", file=sys.stderr)
    return 2


def wormhole_child(argv: list[str]) -> int:
    """Run the wormhole CLI with local servers only and one direct-connection hint."""
    parser = argparse.ArgumentParser(prog="filedrop.py _wormhole")
    parser.add_argument("--hint", required=True, help="the only address offered for transit")
    parser.add_argument("--allow", action="append", required=True, help="a host it may reach")
    parser.add_argument("wormhole_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    wormhole_args = list(args.wormhole_args)
    if wormhole_args[:1] == ["--"]:
        del wormhole_args[0]
    allowed = set(args.allow)
    problems = wormhole_argv_problems(wormhole_args, allowed)
    if args.hint not in allowed:
        problems.append(f"hint {args.hint} is not an allowed host")
    if problems:
        print("refusing to run wormhole: " + "; ".join(problems), file=sys.stderr)
        return 2
    import wormhole.ipaddrs
    from wormhole.cli.cli import wormhole as wormhole_cli

    # Wormhole offers every address `ip addr` lists; offer only this side's own.
    wormhole.ipaddrs.find_addresses = lambda: [args.hint]
    wormhole_cli.main(args=wormhole_args, prog_name="wormhole")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        sys.exit(child_main(sys.argv[1:]))
    sys.exit(main())

"""Run real ``p2pchat`` processes for tests that kill and restart them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgpack

from p2pchat.config import Paths, save_settings
from p2pchat.core import chat
from p2pchat.core.errors import RemoteProtocolError
from p2pchat.core.session import HandshakeComplete, PayloadReceived, SecureSession
from p2pchat.identity import Identity, create_identity, load_identity, parse_address
from p2pchat.net.control import ControlClient
from p2pchat.net.endpoint import Endpoint, QuicLink

T = TypeVar("T")


async def until(
    check: Callable[[], Awaitable[T]], timeout: float = 20.0, what: str = "the condition"
) -> T:
    """Poll an async check until it returns something truthy (a liveness bound, not a
    speed target)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


class ControlledDaemon(Protocol):
    async def call(self, op: str, **args: Any) -> Any: ...


async def delivered(sender: ControlledDaemon, contact: str, body: str) -> bool:
    """``sender``'s message ``body`` to ``contact`` is delivered (or read)."""
    history = await sender.call("history", contact=contact)
    return any(m["body"] == body and m["state"] in ("delivered", "read") for m in history)


async def path_of(daemon: ControlledDaemon, peer_id: str) -> str | None:
    """The path (``lan``, ``direct``, ``punched``, ``relayed``) of the daemon's live
    session with a peer, or None while it has none."""
    for c in await daemon.call("contacts"):
        if c["peer_id"] == peer_id and c["online"]:
            return str(c["path"])
    return None


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_home(root: Path, name: str) -> Paths:
    """A state folder with a fresh identity, a display name and a loopback port."""
    paths = Paths(root / name)
    paths.ensure()
    create_identity(paths.identity)
    save_settings(paths, {"name": name, "listen": f"127.0.0.1:{free_udp_port()}"})
    return paths


def rss_kib(pid: int) -> int:
    """Resident memory of a process (Linux ``/proc``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("P2PCHAT_HOME", None)
    env.pop("P2PCHAT_PASSPHRASE", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(
    home: Path, *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pchat", "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        input=input,
        timeout=120,
    )


async def wait_for_control(
    paths: Paths,
    proc: subprocess.Popen[str],
    *,
    output: Callable[[], str],
    timeout: float = 30,
) -> ControlClient:
    """Wait until a freshly started daemon answers on its control socket."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited early ({proc.returncode}): {output()}")
        try:
            client = ControlClient(paths.control_socket)
            await client.connect()
            await client.call("info", {})
            return client
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


class Daemon:
    """``p2pchat daemon`` in a child process, driven through its control socket."""

    def __init__(
        self,
        home: Path,
        listen: str,
        *,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.paths = Paths(home)
        self.listen = listen
        self.extra = extra or []
        self.env = env  # None: cli_env()
        self.proc: subprocess.Popen[str] | None = None
        self.client: ControlClient | None = None

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "p2pchat", "--home", str(self.paths.home),
            "daemon", "--listen", self.listen, "--no-mdns", "--no-dht",
            *self.extra,
        ]  # fmt: skip

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env or cli_env(),
        )
        proc = self.proc
        self.client = await wait_for_control(
            self.paths, proc, output=lambda: proc.stdout.read() if proc.stdout else ""
        )

    async def call(self, op: str, **args: Any) -> Any:
        assert self.client is not None
        return await self.client.call(op, args)

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash or power loss."""
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None

    async def stop(self) -> str:
        if self.client is not None:
            await self.client.close()
            self.client = None
        out = ""
        if self.proc is not None:
            self.proc.terminate()
            try:
                out, _ = self.proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
            self.proc = None
        return out


class DhtDaemon(Daemon):
    """``p2pchat daemon`` with the DHT on (``Daemon`` always passes ``--no-dht``); name
    the bootstrap in ``extra``."""

    def argv(self) -> list[str]:
        return [a for a in super().argv() if a != "--no-dht"]

    @property
    def peer_id(self) -> str:
        return load_identity(self.paths.identity).peer_id

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class HostileLink:
    """One session a ``HostilePeer`` runs: the package's own ``SecureSession`` over a
    real QUIC connection, with the frames it carries under the test's control."""

    def __init__(self, peer: HostilePeer, link: QuicLink, session: SecureSession) -> None:
        self.peer = peer
        self.link = link
        self.session = session
        self.frames: list[chat.ChatFrame] = []
        self.bytes_received = 0
        self.terminated: str | None = None
        self.handshake = asyncio.Event()
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
                with contextlib.suppress(RemoteProtocolError):
                    self.frames.append(chat.decode(event.payload))
            elif isinstance(event, HandshakeComplete):
                self.handshake.set()
        self._flush()

    def link_terminated(self, link: QuicLink, reason: str) -> None:
        self.terminated = reason

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

    def close(self) -> None:
        self.link.close("hostile peer done")


class HostilePeer:
    """A stranger or contact built on the package's own classes (``Endpoint``,
    ``SecureSession``, ``chat``), for attacks a genuine node would never make."""

    def __init__(self, identity: Identity | None = None) -> None:
        self.identity = identity or Identity.generate()
        self.endpoint: Endpoint | None = None

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    async def start(self) -> None:
        self.endpoint = Endpoint(self.identity)
        await self.endpoint.start("127.0.0.1", 0)

    async def connect(
        self,
        address: str,
        *,
        hello: chat.Hello | dict[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> HostileLink:
        """Dial ``address``, finish the session handshake, then send ``hello``."""
        assert self.endpoint is not None
        session = SecureSession(
            initiator=True, our_key=self.identity.public_key, sign=self.identity.sign
        )
        link = HostileLink(self, self.endpoint.connect(parse_address(address)), session)
        await asyncio.wait_for(link.handshake.wait(), timeout)
        link.send(hello if hello is not None else chat.Hello(name="mallory"))
        return link

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None

"""Run real ``p2pchat`` processes for tests that kill and restart them."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from p2pchat.config import Paths, save_settings
from p2pchat.identity import create_identity, load_identity
from p2pchat.net.control import ControlClient

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

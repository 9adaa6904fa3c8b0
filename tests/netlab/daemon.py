"""``p2pchat daemon`` inside a lab host, driven from outside through its control socket.

Namespaces share the file system, so the control socket in the home folder is
reachable from the test process; only the daemon's network is the host's.
Output goes to a file (a pipe nobody drains could block a chatty daemon).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from p2pchat.config import Paths
from p2pchat.identity import load_identity
from p2pchat.net.control import ControlClient

from ..daemons import cli_env, wait_for_control
from .lab import Host


class NsDaemon:
    """A real daemon process in ``host``'s namespace; mDNS on unless ``mdns=False``,
    the DHT off unless ``dht=True`` (then name the bootstrap in ``extra``)."""

    def __init__(
        self,
        host: Host,
        home: Path,
        *,
        listen: str = "0.0.0.0:4001",
        mdns: bool = True,
        dht: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.paths = Paths(home)
        self.listen = listen
        self.mdns = mdns
        self.dht = dht
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.client: ControlClient | None = None
        self.log_path = home / "daemon.log"
        self.started_at: float | None = None

    @property
    def peer_id(self) -> str:
        return load_identity(self.paths.identity).peer_id

    async def start(self, timeout: float = 30) -> None:
        argv = [
            sys.executable, "-m", "p2pchat", "-v", "--home", str(self.paths.home),
            "daemon", "--listen", self.listen,
        ]  # fmt: skip
        if not self.dht:
            argv.append("--no-dht")
        if not self.mdns:
            argv.append("--no-mdns")
        argv.extend(self.extra)
        log = self.log_path.open("a", encoding="utf-8")
        self.started_at = time.monotonic()
        try:
            self.proc = self.host.popen(argv, stdout=log, stderr=subprocess.STDOUT, env=cli_env())
        finally:
            log.close()
        self.client = await wait_for_control(
            self.paths, self.proc, output=self.output, timeout=timeout
        )

    async def call(self, op: str, **args: Any) -> Any:
        assert self.client is not None, "daemon not started"
        return await self.client.call(op, args)

    def output(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    async def stop(self) -> None:
        """SIGTERM: the daemon shuts down properly (and says goodbye on mDNS)."""
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.proc is not None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    async def kill(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

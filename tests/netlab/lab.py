"""Network namespaces, veth pairs and bridges for tests that need a real network.

Everything a lab creates lives inside network namespaces named
``p2pt-<pid>-<token>-<role>``: interfaces are created directly inside their
namespaces (never in the machine's own), so nothing a test sends can reach a
real interface, and two runs (parallel or crashed) never share a name.  The pid
in the name lets :func:`sweep_stale` tell the leftovers of a dead run from the
namespaces of a run still going.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .topologies import Lan, NatMode, TwoNats

PREFIX = "p2pt-"
REPO_ROOT = Path(__file__).resolve().parents[2]


class LabError(Exception):
    """A lab command failed; carries the command and what it printed."""


_availability: str | bool | None = False  # False = not probed yet


def unavailable_reason(*, need_nft: bool = False) -> str | None:
    """Why lab tests cannot run here, or None when they can.

    Root and ``ip`` are not enough inside some containers (no CAP_SYS_ADMIN, or
    a read-only /run), so the probe creates and deletes a real namespace.
    """
    global _availability
    if os.name != "posix" or not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network lab needs root (ip netns)"
    if shutil.which("ip") is None:
        return "network lab needs iproute2 (`ip`)"
    if need_nft and shutil.which("nft") is None:
        return "NAT lab needs nftables (`nft`): apt-get install nftables"
    if _availability is False:
        probe = f"{PREFIX}{os.getpid()}-probe"
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if made.returncode != 0:
            _availability = f"cannot create network namespaces: {made.stderr.strip()}"
        else:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
            _availability = None
    return _availability if isinstance(_availability, str) else None


def list_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _owner_alive(name: str) -> bool:
    parts = name[len(PREFIX) :].split("-")
    if not parts or not parts[0].isdigit():
        return False
    pid = int(parts[0])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(ns: str) -> None:
    """Processes still inside one of our namespaces keep it (and its veths) alive."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


_swept = False


def prepare() -> None:
    """Once per test process: clear what crashed runs left behind."""
    global _swept
    if not _swept:
        _swept = True
        sweep_stale()


def sweep_stale() -> list[str]:
    """Remove ``p2pt-*`` namespaces whose creating test run has died; return their names."""
    removed = []
    for ns in list_namespaces():
        if ns.startswith(PREFIX) and not _owner_alive(ns):
            _kill_namespace_processes(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            removed.append(ns)
    return removed


@dataclass
class Host:
    """One namespace with one interface into a segment, as a machine on a network."""

    lab: Lab
    ns: str
    ifname: str
    address: str
    prefix: int = 24
    gateway: str | None = None

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return self.lab.run(self.ns, *argv, check=check, timeout=timeout)

    def python(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -m tests.netlab.tools ...`` (or any module) inside this host."""
        return self.lab.run(self.ns, sys.executable, *args, check=check, timeout=timeout)

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        return self.lab.popen(self.ns, argv, **kwargs)

    def tool(self, *args: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Run one of ``tests.netlab.tools`` here to completion; its JSON lines."""
        result = self.python("-m", "tests.netlab.tools", *args, timeout=timeout)
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def start_tool(self, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        """Start a long-running tool; returns once it printed its first (ready) line."""
        proc = self.popen(
            [sys.executable, "-m", "tests.netlab.tools", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise LabError(f"tool {args[0]} in {self.ns} exited: {err.strip()}")
        ready: dict[str, Any] = json.loads(line)
        return proc, ready

    def link_down(self) -> None:
        self.lab.set_link(self.ns, self.ifname, up=False)

    def link_up(self) -> None:
        self.lab.set_link(self.ns, self.ifname, up=True)

    def add_address(self, cidr: str) -> None:
        self.lab.ip(self.ns, "addr", "add", cidr, "dev", self.ifname)

    def del_address(self, cidr: str) -> None:
        self.lab.ip(self.ns, "addr", "del", cidr, "dev", self.ifname)


@dataclass
class Lab:
    """Owns every namespace and process a test makes; ``close`` removes them all."""

    token: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    closed: bool = False

    @property
    def run_id(self) -> str:
        return f"{PREFIX}{os.getpid()}-{self.token}"

    # ---------------------------------------------------------------- build
    def netns(self, role: str) -> str:
        """A fresh namespace with loopback up (mDNS and local sockets need ``lo``)."""
        name = f"{self.run_id}-{role}"
        self._cmd(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.ip(name, "link", "set", "lo", "up")
        return name

    def ip(self, ns: str, *args: str) -> None:
        self._cmd(["ip", "-n", ns, *args])

    def veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        """A cable between two namespaces; both ends are born inside them."""
        self._cmd(
            ["ip", "link", "add", name_a, "netns", ns_a, "type", "veth",
             "peer", "name", name_b, "netns", ns_b]
        )  # fmt: skip
        self.ip(ns_a, "link", "set", name_a, "up")
        self.ip(ns_b, "link", "set", name_b, "up")

    def bridge(self, ns: str, name: str = "br0") -> None:
        """A switch; snooping off so link-local multicast (mDNS) always floods."""
        self.ip(ns, "link", "add", name, "type", "bridge", "mcast_snooping", "0")
        self.ip(ns, "link", "set", name, "up")

    def plug(
        self, switch_ns: str, port: str, host_ns: str, ifname: str, bridge: str = "br0"
    ) -> None:
        self.veth(switch_ns, port, host_ns, ifname)
        self.ip(switch_ns, "link", "set", port, "master", bridge)

    def set_link(self, ns: str, dev: str, *, up: bool) -> None:
        self.ip(ns, "link", "set", dev, "up" if up else "down")

    def sysctl(self, ns: str, key: str, value: str) -> None:
        # /proc/sys/net is per network namespace: written from inside it.
        path = "/proc/sys/" + key.replace(".", "/")
        self.run(ns, "sh", "-c", f"echo {value} > {path}")

    def host(
        self,
        role: str,
        switch_ns: str,
        cidr: str,
        *,
        gateway: str | None = None,
        ifname: str = "eth0",
    ) -> Host:
        """A namespace plugged into ``switch_ns``'s bridge with address ``cidr``."""
        iface = ipaddress.ip_interface(cidr)
        ns = self.netns(role)
        self.plug(switch_ns, f"p-{role}"[:15], ns, ifname)
        self.ip(ns, "addr", "add", cidr, "dev", ifname)
        if gateway is not None:
            self.ip(ns, "route", "add", "default", "via", gateway)
        return Host(self, ns, ifname, str(iface.ip), iface.network.prefixlen, gateway)

    def lan(self, n: int, *, subnet: int = 0, role: str | None = None) -> Lan:
        from .topologies import build_lan

        return build_lan(self, n, subnet=subnet, role=role)

    def two_nats(self, mode: NatMode, *, hosts_per_lan: int = 1) -> TwoNats:
        from .topologies import build_two_nats

        return build_two_nats(self, mode, hosts_per_lan=hosts_per_lan)

    # -------------------------------------------------------------- execute
    def argv(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(
        self,
        ns: str,
        *argv: str,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return self._cmd(self.argv(ns, *argv), check=check, timeout=timeout, input=input)

    def popen(self, ns: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start a process inside ``ns``; teardown kills it if the test did not."""
        kwargs.setdefault("cwd", str(REPO_ROOT))
        kwargs.setdefault("text", True)
        proc: subprocess.Popen[str] = subprocess.Popen(self.argv(ns, *argv), **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def _cmd(
        self,
        argv: list[str],
        *,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(REPO_ROOT),
            input=input,
        )
        if check and result.returncode != 0:
            raise LabError(
                f"{' '.join(argv)} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    # ------------------------------------------------------------- teardown
    def close(self) -> None:
        """Kill our processes, then delete our namespaces (their veths and bridges go too)."""
        if self.closed:
            return
        self.closed = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for ns in reversed(self.namespaces):
            _kill_namespace_processes(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def open_lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()

"""Two network namespaces joined by a veth pair, for benchmarks on a LAN-like path.

Nothing here touches the machine's own interfaces: both ends of the veth pair
are created directly inside the two new namespaces, the addresses live only
there (a /30 out of 10.250.0.0/16), and deleting the namespaces removes the
pair.  Names carry a random tag (``p2pb-<tag>-a``), so concurrent runs do not
collide, and :meth:`NetnsPair.close` runs on every exit path of the ``with``
block.  Needs root and iproute2's ``ip``.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import time
from types import TracebackType

# Every namespace address comes from here; the benchmark refuses any other target.
NETNS_NETWORK = ipaddress.ip_network("10.250.0.0/16")


class NetnsError(RuntimeError):
    """The namespaces could not be set up (not root, no ``ip``, no kernel support...)."""


def netns_unavailable() -> str | None:
    """Why a namespace pair cannot be made here, or None if it can be tried."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    return None


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


class NetnsPair:
    """Namespaces ``a`` (sender side) and ``b`` (receiver side) on one veth link.

    ``addr_a``/``addr_b`` are the two ends of a /30; each namespace also has
    its own ``lo`` up.  IPv6 link-local addresses are not generated on the
    veth, so the link carries nothing but the benchmark's own traffic.
    """

    def __init__(self, mtu: int = 1500) -> None:
        tag = secrets.token_hex(3)
        self.mtu = mtu
        self.ns_a = f"p2pb-{tag}-a"
        self.ns_b = f"p2pb-{tag}-b"
        self.dev_a = f"p2pb{tag}a"  # interface names: at most 15 characters
        self.dev_b = f"p2pb{tag}b"
        subnet = secrets.randbelow(256)
        self.addr_a = f"10.250.{subnet}.1"
        self.addr_b = f"10.250.{subnet}.2"
        self._created: list[str] = []

    # ------------------------------------------------------------------ life
    def open(self) -> NetnsPair:
        reason = netns_unavailable()
        if reason is not None:
            raise NetnsError(reason)
        try:
            for ns in (self.ns_a, self.ns_b):
                _ip("netns", "add", ns)
                self._created.append(ns)
            # Both ends are born inside their namespaces: the host never sees the link.
            _ip(
                "link", "add", "name", self.dev_a, "mtu", str(self.mtu), "netns", self.ns_a,
                "type", "veth",
                "peer", "name", self.dev_b, "mtu", str(self.mtu), "netns", self.ns_b,
            )  # fmt: skip
            for ns, dev, addr in (
                (self.ns_a, self.dev_a, self.addr_a),
                (self.ns_b, self.dev_b, self.addr_b),
            ):
                _ip("-n", ns, "link", "set", "dev", dev, "addrgenmode", "none")
                _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
                _ip("-n", ns, "link", "set", "dev", "lo", "up")
                _ip("-n", ns, "link", "set", "dev", dev, "up")
            self._check()
        except BaseException:
            self.close()
            raise
        return self

    def _check(self) -> None:
        """The peer's address must route over the veth, and nowhere else."""
        for ns, dev, peer in (
            (self.ns_a, self.dev_a, self.addr_b),
            (self.ns_b, self.dev_b, self.addr_a),
        ):
            route = _ip("-n", ns, "route", "get", peer)
            if f"dev {dev}" not in route:
                raise NetnsError(f"{peer} does not route over {dev} in {ns}: {route.strip()}")
            links = _ip("-n", ns, "-o", "link", "show").splitlines()
            names = {line.split(":")[1].strip().split("@")[0] for line in links if ":" in line}
            if names != {"lo", dev}:
                raise NetnsError(f"unexpected interfaces in {ns}: {sorted(names)}")

    def close(self) -> list[str]:
        """Stop what still runs in the namespaces, delete them; return any problems."""
        problems: list[str] = []
        for ns in self._created:
            problems.extend(_stop_processes_in(ns))
        for ns in reversed(self._created):
            try:
                _ip("netns", "delete", ns)
            except (NetnsError, OSError, subprocess.SubprocessError) as exc:
                problems.append(str(exc))
        self._created.clear()
        return problems

    def __enter__(self) -> NetnsPair:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for problem in self.close():
            print(f"netns cleanup: {problem}", flush=True)

    # ------------------------------------------------------------------- use
    def prefix(self, side: str) -> list[str]:
        """Command prefix that runs a program inside namespace ``a`` or ``b``."""
        return ["ip", "netns", "exec", self.ns_a if side == "a" else self.ns_b]

    def address(self, side: str) -> str:
        return self.addr_a if side == "a" else self.addr_b


def _pids_in(ns: str) -> list[int]:
    try:
        out = _ip("netns", "pids", ns)
    except (NetnsError, OSError, subprocess.SubprocessError):
        return []
    return [int(word) for word in out.split() if word.isdigit()]


def _stop_processes_in(ns: str) -> list[str]:
    """SIGTERM, then SIGKILL, each process still running in namespace ``ns``.

    Only this run's children live there: the namespace was created by it.
    """
    pids = _pids_in(ns)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = _pids_in(ns)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    return [f"killed leftover process {pid} in {ns}" for pid in pids]


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass

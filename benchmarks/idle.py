#!/usr/bin/env python3
"""Idle cost: CPU and memory of a node that has 50 contacts online and nothing to do.

Usage (from the repository root)::

    python3 benchmarks/idle.py [--contacts 50] [--seconds 60] [--skew 0.02] [--profile FILE]

The measured node is a ``p2pchat daemon`` in its own process (``--no-mdns --no-dht``,
a fresh home on 127.0.0.1).  Its contacts are ``Node`` objects in this process, each
with its own home and UDP socket on 127.0.0.1, added on both sides, with an address on
one side only: the daemon dials every other contact, the others dial the daemon, so
it is the dialling side of 25 connections and the accepting side of 25 in every run
(the two sides' keepalive work differs).  The run waits until the daemon reports
every contact online, lets it settle for 5 s, then reads
the daemon's CPU time (``/proc/PID/stat``: user + system) at the start and the end
of ``--seconds`` and its resident memory (``VmRSS`` at the end, ``VmHWM`` the peak,
and how much ``VmRSS`` grew over the window: state kept per keepalive shows there).
CPU % is CPU seconds over wall seconds (100 % = one core busy).  Keepalives are what
an idle node spends on: a PING every 2 s on each connection it dialled, all in one
wake-up (``net/quic.py``), and the ACKs of the contacts' PINGs on the others, plus the
dial loop's one-second tick.  Each contact reads a clock off by up to ``--skew``
(default 20 ms, ``skew_contact_clocks``), as contacts on other machines do, so their
PINGs reach the daemon a little out of step with its own; ``--skew 0`` leaves them on
this machine's clock, exactly in step (the figures before 2026-11-30 13:00 UTC were
measured so, with keepalives on a 0.5 s grid of the monotonic clock, which flatters
the daemon: its contacts' PINGs came in its own wake-ups), and ``--skew 2`` spreads
them over the whole cycle, as between machines whose clocks nobody sets.  Wake-ups are
the daemon's voluntary context switches (``/proc/PID/status``, every thread) over
the same window: each is the process going to sleep in ``epoll_wait`` (or another
blocking call) and being woken again.

``--strace SECONDS`` counts the daemon's system calls (``strace -c -f``) for that
long after the measured window.  ``--profile FILE`` profiles the daemon's CPU time
(``cProfile`` with ``time.process_time``) over the measured window only and writes
the stats to FILE (read it with ``pstats``); its CPU figure then includes the
profiler's overhead.

Traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pchat.net.endpoint import Endpoint
from p2pchat.node import Node
from tests.daemons import Daemon, free_udp_port, make_home

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime


def status(pid: int) -> dict[str, int]:
    """Memory (KiB) and voluntary context switches of the process and its threads."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    out["wakeups"] = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                out["wakeups"] += int(line.split()[1])
    return out


# Runs ``python -m p2pchat ARGS`` with a CPU-time cProfile that SIGUSR1 switches on
# and SIGUSR2 switches off and writes out, so the profile covers the idle window only.
PROFILE_BOOT = """
import cProfile, runpy, signal, sys, time
out = sys.argv[1]
sys.argv = ["p2pchat", *sys.argv[2:]]
prof = cProfile.Profile(time.process_time)
signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
signal.signal(signal.SIGUSR2, lambda *_: (prof.disable(), prof.dump_stats(out)))
runpy.run_module("p2pchat", run_name="__main__", alter_sys=True)
"""


class ProfiledDaemon(Daemon):
    """The daemon under a CPU-time cProfile of the measured window (``PROFILE_BOOT``)."""

    def __init__(self, home: Path, listen: str, profile: Path) -> None:
        super().__init__(home, listen)
        self.profile = profile

    def argv(self) -> list[str]:
        argv = super().argv()
        assert argv[1:3] == ["-m", "p2pchat"]
        return [argv[0], "-c", PROFILE_BOOT, str(self.profile), *argv[3:]]


async def count_syscalls(pid: int, seconds: float) -> None:
    """``strace -c -f`` on the daemon (after the CPU window: tracing slows it down)."""
    proc = await asyncio.create_subprocess_exec(
        "strace", "-c", "-f", "-p", str(pid),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    await asyncio.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    out, _ = await proc.communicate()
    print(f"\nsystem calls of the daemon over {seconds:g} s (strace -c -f):")
    print(out.decode(errors="replace"))


def skew_contact_clocks(skew: float) -> None:
    """Each contact's wall clock off by up to ``skew`` seconds, as on other machines.

    Keepalives fall due on whole multiples of a grid and cycle of wall-clock time
    (``QuicLink._keepalive_at``), so the contacts in this process, which read this
    machine's clock, would ping exactly in step with the daemon, which contacts on
    other machines do not: their clocks are off by milliseconds when NTP keeps them,
    by anything when nothing does.  So in this process only, each contact's endpoint
    reads a clock off by its own random amount within ``skew``.  The daemon is not
    touched.
    """
    original = Endpoint.wall_offset
    offsets: dict[Endpoint, float] = {}

    def skewed(endpoint: Endpoint) -> float:
        return original(endpoint) + offsets.setdefault(endpoint, random.uniform(-skew, skew))

    setattr(Endpoint, "wall_offset", skewed)  # noqa: B010 - patched in this process only


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--profile", type=Path, metavar="FILE", help="cProfile the daemon")
    parser.add_argument(
        "--strace", type=float, default=0, metavar="SECONDS",
        help="after the measurement, count the daemon's system calls for this long",
    )  # fmt: skip
    parser.add_argument(
        "--skew", type=float, default=0.02, metavar="SECONDS",
        help="each contact's clock is off by up to this much, as on a machine of its own "
        "(0: the contacts ping in step with the daemon; 2 or more: clocks nobody sets)",
    )  # fmt: skip
    opts = parser.parse_args()
    if opts.skew:
        skew_contact_clocks(opts.skew)
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores; "
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory(prefix="p2pchat-idle-bench-") as tmp:
        root = Path(tmp)
        home, listen = make_home(root, "idle").home, f"127.0.0.1:{free_udp_port()}"
        daemon = (
            Daemon(home, listen)
            if opts.profile is None
            else ProfiledDaemon(home, listen, opts.profile.resolve())
        )
        await daemon.start()
        nodes: list[Node] = []
        try:
            info = await daemon.call("info")
            for n in range(opts.contacts):
                node = Node(make_home(root, f"c{n:02d}"))
                await node.start()
                nodes.append(node)
                # Half the connections dialled by the daemon, half by the contact: a
                # side learns no address of the other, so only one side dials (each
                # side's keepalive role and cost is the same in every run).
                daemon_dials = n % 2 == 0
                node.add_contact(
                    info["peer_id"], name="idle", addresses=[] if daemon_dials else [daemon.listen]
                )
                await daemon.call(
                    "add", ref=node.peer_id, name=f"c{n:02d}",
                    addresses=list(node.addresses) if daemon_dials else [],
                )  # fmt: skip
            deadline = time.monotonic() + 120
            while (await daemon.call("network_status"))["online"] < opts.contacts:
                if time.monotonic() > deadline:
                    raise RuntimeError("not every contact came online within 120 s")
                await asyncio.sleep(0.5)
            await asyncio.sleep(5)
            assert daemon.proc is not None
            pid = daemon.proc.pid
            if opts.profile is not None:
                os.kill(pid, signal.SIGUSR1)
            mem0 = status(pid)
            started, woken0 = time.monotonic(), mem0["wakeups"]
            user0, sys0 = cpu_seconds(pid)
            await asyncio.sleep(opts.seconds)
            if opts.profile is not None:
                os.kill(pid, signal.SIGUSR2)
            wall, (user1, sys1) = time.monotonic() - started, cpu_seconds(pid)
            user, system = user1 - user0, sys1 - sys0
            cpu = user + system
            mem = status(pid)
            grown = mem["VmRSS"] - mem0["VmRSS"]
            online = (await daemon.call("network_status"))["online"]
            print(
                f"\nidle node with {online} of {opts.contacts} contacts online, {wall:.0f} s:\n"
                f"  CPU  {cpu:.2f} s = {100 * cpu / wall:.2f} % of one core "
                f"(user {100 * user / wall:.2f} %, system {100 * system / wall:.2f} %)\n"
                f"  RSS  {mem['VmRSS'] / 1024:.1f} MiB now, {mem['VmHWM'] / 1024:.1f} MiB peak, "
                f"{grown:+d} KiB over the window ({grown / 1024 * 3600 / wall:+.1f} MiB an hour)\n"
                f"  wake-ups  {(mem['wakeups'] - woken0) / wall:.1f} a second"
            )
            if opts.strace:
                await count_syscalls(pid, opts.strace)
        finally:
            for node in nodes:
                await node.stop()
            await daemon.stop()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())

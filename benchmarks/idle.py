#!/usr/bin/env python3
"""Idle cost: CPU and memory of a node that has 50 contacts online and nothing to do.

Usage (from the repository root)::

    python3 benchmarks/idle.py [--contacts 50] [--seconds 60]

The measured node is a ``p2pchat daemon`` in its own process (``--no-mdns --no-dht``,
a fresh home on 127.0.0.1).  Its contacts are ``Node`` objects in this process, each
with its own home and UDP socket on 127.0.0.1, added on both sides; the run waits
until the daemon reports every contact online, lets it settle for 5 s, then reads
the daemon's CPU time (``/proc/PID/stat``: user + system) at the start and the end
of ``--seconds`` and its resident memory (``VmRSS`` at the end, ``VmHWM`` the peak).
CPU % is CPU seconds over wall seconds (100 % = one core busy).  Keepalives are what
an idle node spends on: a PING after 1 s of silence on each connection
(``net/quic.py``) and the answers to the contacts' PINGs, plus the dial loop's
one-second tick.

Traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pchat.node import Node
from tests.daemons import Daemon, free_udp_port, make_home

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    opts = parser.parse_args()
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores; "
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory(prefix="p2pchat-idle-bench-") as tmp:
        root = Path(tmp)
        daemon = Daemon(make_home(root, "idle").home, f"127.0.0.1:{free_udp_port()}")
        await daemon.start()
        nodes: list[Node] = []
        try:
            info = await daemon.call("info")
            for n in range(opts.contacts):
                node = Node(make_home(root, f"c{n:02d}"))
                await node.start()
                nodes.append(node)
                node.add_contact(info["peer_id"], name="idle", addresses=[daemon.listen])
                await daemon.call(
                    "add", ref=node.peer_id, name=f"c{n:02d}", addresses=list(node.addresses)
                )
            deadline = time.monotonic() + 120
            while (await daemon.call("network_status"))["online"] < opts.contacts:
                if time.monotonic() > deadline:
                    raise RuntimeError("not every contact came online within 120 s")
                await asyncio.sleep(0.5)
            await asyncio.sleep(5)
            assert daemon.proc is not None
            pid = daemon.proc.pid
            started, cpu0 = time.monotonic(), cpu_seconds(pid)
            await asyncio.sleep(opts.seconds)
            wall, cpu = time.monotonic() - started, cpu_seconds(pid) - cpu0
            online = (await daemon.call("network_status"))["online"]
            mem = memory_kib(pid)
            print(
                f"\nidle node with {online} of {opts.contacts} contacts online, {wall:.0f} s:\n"
                f"  CPU  {cpu:.2f} s = {100 * cpu / wall:.2f} % of one core\n"
                f"  RSS  {mem['VmRSS'] / 1024:.1f} MiB now, {mem['VmHWM'] / 1024:.1f} MiB peak"
            )
        finally:
            for node in nodes:
                await node.stop()
            await daemon.stop()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())

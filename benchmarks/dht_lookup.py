#!/usr/bin/env python3
"""DHT lookup-by-ID time in a real swarm: how long finding a peer's record takes.

Usage (from the repository root)::

    python3 benchmarks/dht_lookup.py [--nodes 20] [--lookups 100] [--dead 0 5] [--same-ip]

Starts N ``DhtService`` nodes in this process, each on its own UDP socket on loopback
(by default each on its own address 127.0.1.x, as nodes on a network have; with
``--same-ip`` all on 127.0.0.1), bootstrapped from the first one. Once every node's
last put reached every node that could hold it, random nodes look up random other
nodes' records by peer ID (``DhtService.lookup_record``: a full BEP 44 ``get`` lookup
over real UDP) and the time
from the call to the parsed record is measured. ``--dead K`` kills K nodes (their sockets
closed, still in everyone's routing table) right before measuring, so lookups meet dead
contacts (each value given builds a fresh swarm). Nothing leaves the machine.

``benchmarks/connect.py`` imports :func:`measure` for its DHT section.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pchat.identity import Identity
from p2pchat.net.dht import DhtOptions, DhtService
from p2pchat.net.endpoint import Endpoint

__all__ = ["LookupTimes", "measure"]


@dataclass(frozen=True)
class LookupTimes:
    nodes: int
    dead: int
    lookups: int
    found: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    build_s: float


@dataclass
class _Member:
    identity: Identity
    endpoint: Endpoint
    dht: DhtService


async def _start(host: str, bootstrap: tuple[str, ...]) -> _Member:
    identity = Identity.generate()
    endpoint = Endpoint(identity)
    await endpoint.start(host, 0)
    dht = DhtService(endpoint, identity, DhtOptions(bootstrap=bootstrap))
    await dht.start()
    return _Member(identity, endpoint, dht)


async def _stop(member: _Member) -> None:
    await member.dht.stop()
    member.endpoint.close()


def _fully_published(member: _Member) -> bool:
    """The last put reached every node that could hold it (the republish policy's goal)."""
    record = member.dht.status()["record"]
    return bool(record["stored"]) and record["stored"] >= record["reach"]


async def _published(members: list[_Member], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        waiting = [m for m in members if not _fully_published(m)]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(waiting)} nodes did not publish within {timeout} s")
        await asyncio.sleep(0.1)


async def measure(
    nodes: int = 20,
    lookups: int = 100,
    *,
    dead: int = 0,
    same_ip: bool = False,
    seed: int = 1,
) -> LookupTimes:
    """Build a swarm of ``nodes``, kill ``dead`` of them, time ``lookups`` record lookups."""
    rng = random.Random(seed)
    started = time.perf_counter()
    members: list[_Member] = []
    try:
        first = await _start("127.0.0.1" if same_ip else "127.0.1.1", ())
        members.append(first)
        boot = (first.dht.status()["listen"],)
        for i in range(1, nodes):
            members.append(await _start("127.0.0.1" if same_ip else f"127.0.1.{i + 1}", boot))
        await _published(members, timeout=60 + nodes)
        build = time.perf_counter() - started
        victims = rng.sample(members[1:], dead) if dead else []
        for victim in victims:
            await _stop(victim)
        live = [m for m in members if m not in victims]
        times: list[float] = []
        found = 0
        loop = asyncio.get_running_loop()
        for _ in range(lookups):
            asker, target = rng.sample(live, 2)
            t0 = loop.time()
            record = await asker.dht.lookup_record(target.identity.peer_id, timeout=30)
            times.append((loop.time() - t0) * 1000)
            found += record is not None
        times.sort()
        return LookupTimes(
            nodes=nodes,
            dead=dead,
            lookups=lookups,
            found=found,
            p50_ms=statistics.median(times),
            p95_ms=times[min(len(times) - 1, int(0.95 * len(times)))],
            max_ms=times[-1],
            build_s=build,
        )
    finally:
        for member in members:
            if member.dht.running:
                await _stop(member)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--lookups", type=int, default=100)
    parser.add_argument("--dead", type=int, nargs="+", default=[0])
    parser.add_argument("--same-ip", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"date       {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"python     {platform.python_version()} ({platform.python_implementation()})")
    print(f"swarm      {args.nodes} DhtService nodes in one process, one UDP socket each on")
    where = "127.0.0.1" if args.same_ip else "127.0.1.x"
    print(f"           {where}, seed {args.seed}")
    print(f"{'dead':>5} {'lookups':>8} {'found':>6} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}")
    for dead in args.dead:
        r = asyncio.run(
            measure(args.nodes, args.lookups, dead=dead, same_ip=args.same_ip, seed=args.seed)
        )
        print(
            f"{r.dead:>5} {r.lookups:>8} {r.found:>6} {r.p50_ms:>7.0f} {r.p95_ms:>7.0f} "
            f"{r.max_ms:>7.0f}",
            flush=True,
        )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine    {platform.system()} {platform.release()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load} at the end"
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Presence benchmark: how fast a vanished peer is noticed, and what liveness costs.

Usage (from the repository root)::

    python3 benchmarks/presence.py [--runs N] [--idle S]

Everything binds 127.0.0.1 and talks only to 127.0.0.1.

* offline after SIGKILL: a ``p2pchat daemon`` (its own process, ``--no-mdns
  --no-dht``) and a ``Node`` in this process are contacts and online; the
  daemon is SIGKILLed (no goodbye leaves it) and the time until this node emits
  ``PeerOffline`` is measured, ``--runs`` times (a fresh daemon each time).
* owner gone: a view attached to a daemon (``RemoteNode``) and its event stream;
  the daemon is SIGKILLed and the time until the stream yields
  ``NodeConnectionLost`` is measured, ``--runs`` times.
* idle cost: two nodes in this process, connected and idle for ``--idle``
  seconds; the UDP datagrams both endpoints send are counted (keepalive pings
  and their ACKs), per connection and second.

The figures depend on the machine and its load; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pchat.core.events import NodeConnectionLost, PeerOffline
from p2pchat.net.endpoint import Endpoint
from p2pchat.net.quic import KEEPALIVE_INTERVAL, LIVENESS_TIMEOUT
from p2pchat.node import Node
from p2pchat.remote import RemoteNode
from tests.daemons import Daemon, free_udp_port, make_home


async def until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("condition not met in time")
        await asyncio.sleep(0.005)


async def offline_after_kill(root: Path, run: int) -> float:
    me = Node(make_home(root, f"me{run}"))
    await me.start()
    daemon = Daemon(make_home(root, f"peer{run}").home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    events = me.events()
    try:
        info = await daemon.call("info")
        me.add_contact(info["peer_id"], name="peer", addresses=[daemon.listen])
        await daemon.call("add", ref=me.peer_id, name="me", addresses=list(me.addresses))
        await until(lambda: me.is_online(info["peer_id"]))
        await asyncio.sleep(2.5)  # idle a while: the keepalive rhythm is established
        killed = time.monotonic()
        await daemon.kill()
        async with asyncio.timeout(60):
            async for event in events:
                if isinstance(event, PeerOffline) and event.peer_id == info["peer_id"]:
                    return time.monotonic() - killed
        raise RuntimeError("event stream ended")
    finally:
        await events.aclose()
        await daemon.stop()
        await me.stop()


async def owner_gone(root: Path, run: int) -> float:
    daemon = Daemon(make_home(root, f"owner{run}").home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    view = RemoteNode(daemon.paths)
    await view.start()
    events = view.events()
    first = asyncio.ensure_future(anext(events))
    try:
        await asyncio.sleep(0.5)  # the stream is connected and idle
        killed = time.monotonic()
        await daemon.kill()
        async with asyncio.timeout(30):
            event = await first
            while not isinstance(event, NodeConnectionLost):
                event = await anext(events)
        return time.monotonic() - killed
    finally:
        first.cancel()
        await events.aclose()
        await view.stop()
        await daemon.stop()


async def idle_cost(root: Path, seconds: float) -> float:
    a = Node(make_home(root, "idle-a"))
    b = Node(make_home(root, "idle-b"))
    await a.start()
    await b.start()
    sent = [0]
    original = Endpoint.sendto

    def counting(self: Endpoint, data: bytes, address: Any, **kw: Any) -> None:
        sent[0] += 1
        original(self, data, address, **kw)

    try:
        a.add_contact(b.peer_id, name="b", addresses=b.addresses)
        b.add_contact(a.peer_id, name="a", addresses=a.addresses)
        await until(lambda: a.is_online(b.peer_id) and b.is_online(a.peer_id))
        await asyncio.sleep(3)  # the handshake's and the first messages' packets are over
        Endpoint.sendto = counting  # type: ignore[method-assign]
        await asyncio.sleep(seconds)
    finally:
        Endpoint.sendto = original  # type: ignore[method-assign]
        await a.stop()
        await b.stop()
    return sent[0] / seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()
    print(
        f"keepalive {KEEPALIVE_INTERVAL:g} s, liveness timeout {LIVENESS_TIMEOUT:g} s",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        times = []
        for run in range(args.runs):
            times.append(await offline_after_kill(root, run))
            print(f"  run {run + 1}: {times[-1]:.2f} s", flush=True)
        print(
            f"offline after SIGKILL ({args.runs} runs): median {statistics.median(times):.2f} s,"
            f" min {min(times):.2f} s, max {max(times):.2f} s"
        )
        gone = [await owner_gone(root, run) for run in range(args.runs)]
        print(
            f"attached view sees its owner SIGKILLed ({args.runs} runs):"
            f" median {statistics.median(gone) * 1000:.1f} ms, max {max(gone) * 1000:.1f} ms"
        )
        rate = await idle_cost(root, args.idle)
        print(f"idle connection: {rate:.2f} datagrams/s for the pair (both directions)")


if __name__ == "__main__":
    asyncio.run(main())

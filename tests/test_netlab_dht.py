"""The DHT between real daemons on non-loopback addresses, in network namespaces.

Loopback hides what goes wrong on a real network: every node there has the same IP,
and loopback bootstrap addresses make a private swarm. Here the hosts have addresses
on the lab's internet segment (198.51.100.0/24, TEST-NET-2, which exists only inside
the lab's namespaces), so the bootstrap is a "public" node and every rule for a public
swarm applies.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from .conftest import make_home
from .daemons import delivered, until
from .netlab import Lab, unavailable_reason
from .netlab.daemon import NsDaemon
from .netlab.topologies import INTERNET, PUBLIC_ADDRESS

REASON = unavailable_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.timeout(180)]

PORT = 4001


async def test_swarm_of_three_on_public_addresses_finds_peers_by_id(
    lab: Lab, tmp_path: Path
) -> None:
    """A public bootstrap and two hosts without NAT, everyone bound to 0.0.0.0, contacts
    added by peer ID alone: each node learns its address from the named bootstrap,
    publishes it, and the other finds it."""
    internet = lab.netns("inet-sw")
    lab.bridge(internet)
    hosts = {
        name: lab.host(name, internet, f"{address}/24")
        for name, address in (
            ("boot", PUBLIC_ADDRESS),
            ("alice", f"{INTERNET}.11"),
            ("bob", f"{INTERNET}.12"),
        )
    }
    daemons = {
        name: NsDaemon(
            host,
            make_home(tmp_path, name).home,
            listen=f"0.0.0.0:{PORT}",
            mdns=False,
            dht=True,
            extra=("--bootstrap", f"{PUBLIC_ADDRESS}:{PORT}"),
        )
        for name, host in hosts.items()
    }
    boot, alice, bob = daemons["boot"], daemons["alice"], daemons["bob"]
    try:
        await boot.start()
        await asyncio.gather(alice.start(), bob.start())

        async def published(d: NsDaemon) -> dict[str, Any] | None:
            status: dict[str, Any] = await d.call("dht_status")
            record = status["record"]
            return status if record["published_at"] and record["stored"] else None

        for name in ("alice", "bob"):
            status = await until(lambda n=name: published(daemons[n]), 30, f"{name} published")
            own = f"{hosts[name].address}:{PORT}"
            # The bootstrap the user named saw our own address and port: no NAT.
            assert status["reflexive"][0]["address"] == own
            assert status["reflexive"][0]["trusted"] is True
            assert status["nat"] == "none"
            assert own in status["record"]["addresses"]
        # Bob's record, looked up by Alice through the bootstrap's storage.
        found = await alice.call("dht_lookup", peer=bob.peer_id)
        assert f"{hosts['bob'].address}:{PORT}" in found["addresses"]

        # Peer IDs only: no invite, no address.
        await alice.call("add", ref=bob.peer_id, name="bob", addresses=[])
        await alice.call("send", contact="bob", text="found you by ID", wait=0)
        await until(lambda: bob.call("requests"), 60, "Bob to see Alice's request")
        await bob.call("accept", ref=alice.peer_id, name="alice")
        await until(lambda: delivered(alice, "bob", "found you by ID"), 60, "delivery to Bob")
        await bob.call("send", contact="alice", text="and you", wait=0)
        await until(lambda: delivered(bob, "alice", "and you"), 60, "delivery to Alice")
        bodies = [m["body"] for m in await alice.call("history", contact="bob")]
        assert bodies == ["found you by ID", "and you"]
        # Each told the other, in its Hello, where it sees the other's packets come from.
        status = await alice.call("dht_status")
        seen_by_bob = status["observations"][bob.peer_id]
        assert seen_by_bob["address"] == f"{hosts['alice'].address}:{PORT}"
        # Bob reports as a contact; on public addresses he may also be one of Alice's
        # rendezvous nodes, whose registration reports the same thing (the later wins).
        rendezvous = {r["peer_id"] for r in status["rendezvous"]}
        assert seen_by_bob["source"] == "contact" or (
            seen_by_bob["source"] == "rendezvous" and bob.peer_id in rendezvous
        ), (seen_by_bob, rendezvous)
    finally:
        for d in daemons.values():
            await d.stop()

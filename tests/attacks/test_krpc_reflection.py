"""Issue 9, hole 9: KRPC reflection through forged source addresses.

The per-IP rate limit (20/s, burst 40) does nothing against queries whose source
addresses are forged: each forged address is a new IP with a full bucket, so a serving
node answered ~3,000 queries per second, every reply several times the query's size,
aimed wherever the attacker liked. Replies to sources that never answered one of our
queries now share one global budget (``DhtConfig.unverified_reply_rate`` / ``_burst``),
and nodes that did answer keep a separate share.

Loopback is a whole /8, so 256 sockets on 127.77.i.1 are 256 distinct source IPs, as a
forger's packets would be; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pchat.dht.core import DhtConfig
from tests.daemons import DhtDaemon, free_udp_port, make_home, run_cli, until

from .attackers import KrpcFlood

SOURCES = 256
QUERIES_PER_SOURCE = 30  # under the per-IP burst of 40: only a global budget stops them
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[tuple[DhtDaemon, DhtDaemon]]:
    boot_port = free_udp_port()
    bootstrap = ["--bootstrap", f"127.0.0.1:{boot_port}"]
    boot = DhtDaemon(make_home(tmp_path, "boot").home, f"127.0.0.1:{boot_port}", extra=bootstrap)
    alice = DhtDaemon(
        make_home(tmp_path, "alice").home, f"127.0.0.1:{free_udp_port()}", extra=bootstrap
    )
    try:
        await boot.start()
        await alice.start()
        yield boot, alice
    finally:
        await alice.stop()
        await boot.stop()


async def test_forged_sources_share_one_reply_budget(
    swarm: tuple[DhtDaemon, DhtDaemon],
) -> None:
    boot, alice = swarm

    async def alice_published() -> bool:
        status = await alice.call("dht_status")
        return status["record"]["published_at"] is not None

    await until(alice_published)
    flood = KrpcFlood(SOURCES)
    await flood.open()
    config = DhtConfig()
    started = time.monotonic()
    try:
        await flood.burst(boot.listen, QUERIES_PER_SOURCE)
        # Meanwhile a node that proved its address (Alice answered Boot's queries) is
        # still served: her lookup of her own record goes through Boot.
        found = await alice.call("dht_lookup", peer=alice.peer_id)
        await asyncio.sleep(1.0)
        elapsed = time.monotonic() - started
    finally:
        flood.close()
    sent = SOURCES * QUERIES_PER_SOURCE
    replies = flood.replies
    bound = config.unverified_reply_burst + config.unverified_reply_rate * elapsed
    assert replies <= bound, (replies, bound, elapsed)
    assert found["addresses"] == [alice.listen]
    status = json.loads(run_cli(boot.paths.home, "dht", "status", "--json").stdout)
    stats = status["stats"]
    assert stats["dropped_budget_unverified"] >= sent - bound
    assert stats["replies_verified"] >= 1
    assert status["budgets"]["unverified"]["rate"] == config.unverified_reply_rate
    assert boot.alive and alice.alive


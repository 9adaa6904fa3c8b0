"""Two people behind home routers reach each other directly: the NAT matrix.

One lab for the whole module (building it and starting a dozen daemons is the slow
part): a public host running two relaying daemons (the DHT bootstrap and rendezvous,
two of them so every node sees its mapping from two observers), and one daemon per
site behind every kind of router the issue names.  Each test then makes one pair of
daemons contacts by peer ID alone (no invite, no address) and checks that messages
go both ways on a direct or punched path.

Site kinds (``tests/netlab/topologies.py``): ``none`` (a public address, no
filtering), ``preserving`` (endpoint-independent, keeps the port), ``changing``
(endpoint-independent, another port), ``random`` (endpoint-dependent random ports),
``hairpin`` (two hosts behind one router, no mDNS), ``double`` (two routers).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from .conftest import make_home
from .daemons import delivered, path_of, until
from .netlab import Lab, list_namespaces, prepare, unavailable_reason
from .netlab.daemon import NsDaemon
from .netlab.topologies import (
    MATRIX_PAIRS,
    MATRIX_SITES,
    PUBLIC_ADDRESS,
    Internet,
    SiteKind,
    build_internet,
)

REASON = unavailable_reason(need_nft=True)
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(240),
]

PORT = 4001
SITES: dict[str, SiteKind] = {
    **MATRIX_SITES,
    "h": "hairpin",
    "d1": "double",
    "m1": "preserving",
}
NAT_OF = {
    "none": "none",
    "preserving": "endpoint-independent",
    "changing": "endpoint-independent",
    "hairpin": "endpoint-independent",
    "double": "endpoint-independent",
    "random": "endpoint-dependent",
}
BOOTSTRAP = (f"{PUBLIC_ADDRESS}:{PORT}", f"{PUBLIC_ADDRESS}:{PORT + 1}")


class World:
    def __init__(self, lab: Lab, net: Internet, daemons: dict[str, NsDaemon]) -> None:
        self.lab = lab
        self.net = net
        self.daemons = daemons


def _daemon(host: Any, home: Path, *extra: str, port: int = PORT) -> NsDaemon:
    bootstrap = [arg for entry in BOOTSTRAP for arg in ("--bootstrap", entry)]
    return NsDaemon(
        host,
        home,
        listen=f"0.0.0.0:{port}",
        mdns=False,
        dht=True,
        extra=(*bootstrap, *extra),
    )


async def _ready(d: NsDaemon, nat: str) -> bool:
    net = (await d.call("network_status"))["reachability"]
    registered = [r for r in net["registrations"] if r["state"] == "registered"]
    if len(registered) < 2 or net["nat"] != nat:
        return False
    dht = await d.call("dht_status")
    record = dht["record"]
    return bool(record["stored"]) and record["nat"] == nat and len(dht["rendezvous"]) == 2


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    if shutil.which("nft") is None:
        pytest.skip("NAT lab needs nftables")
    prepare()
    root = tmp_path_factory.mktemp("punchlab")
    lab = Lab()
    daemons: dict[str, NsDaemon] = {}
    try:
        net = build_internet(lab, SITES, port=PORT)
        daemons["pub"] = _daemon(net.public, make_home(root, "pub").home, "--relay")
        daemons["pub2"] = _daemon(
            net.public, make_home(root, "pub2").home, "--relay", port=PORT + 1
        )
        for name, site in net.sites.items():
            for i, host in enumerate(site.hosts, start=1):
                key = name if len(site.hosts) == 1 else f"{name}{i}"
                daemons[key] = _daemon(host, make_home(root, key).home)
        await daemons["pub"].start(timeout=90)
        await daemons["pub2"].start(timeout=90)
        # A few at a time: a dozen interpreters starting at once on a busy 2-core
        # machine can take longer than a control-socket timeout.
        sites = [d for k, d in daemons.items() if not k.startswith("pub")]
        for batch in range(0, len(sites), 3):
            await asyncio.gather(*(d.start(timeout=90) for d in sites[batch : batch + 3]))
        for key, d in daemons.items():
            if key.startswith("pub"):
                continue
            kind = NAT_OF[SITES[key.rstrip("12") if key.startswith("h") else key]]
            await until(lambda d=d, kind=kind: _ready(d, kind), 60, f"{key} ready ({kind})")
        yield World(lab, net, daemons)
    finally:
        for d in daemons.values():
            await d.stop()
        lab.close()
        assert [ns for ns in list_namespaces() if ns.startswith(lab.run_id)] == []


async def befriend_and_talk(world: World, x: str, y: str, timeout: float = 45) -> tuple[str, str]:
    a, b = world.daemons[x], world.daemons[y]
    await a.call("add", ref=b.peer_id, name=y)
    await b.call("add", ref=a.peer_id, name=x)
    await a.call("send", contact=y, text=f"{x} to {y}", wait=0)
    await b.call("send", contact=x, text=f"{y} to {x}", wait=0)
    await until(lambda: delivered(a, y, f"{x} to {y}"), timeout, f"{x} -> {y}")
    await until(lambda: delivered(b, x, f"{y} to {x}"), timeout, f"{y} -> {x}")
    pa = await until(lambda: path_of(a, b.peer_id), 10, "path")
    pb = await until(lambda: path_of(b, a.peer_id), 10, "path")
    return pa, pb


PAIRS = list(MATRIX_PAIRS.values())


async def test_every_node_knows_its_nat(world: World) -> None:
    for key, d in world.daemons.items():
        if key.startswith("pub"):
            continue
        net = (await d.call("network_status"))["reachability"]
        site = world.net.sites[key.rstrip("12") if key.startswith("h") else key]
        assert net["nat"] == NAT_OF[site.kind], (key, net)
        if site.kind == "changing":
            assert all(a.endswith(f":{PORT + 20000}") for a in net["reflexive"]), net


@pytest.mark.parametrize(("x", "y"), PAIRS, ids=[f"{SITES[x]}-{SITES[y]}" for x, y in PAIRS])
async def test_pair_talks_directly(world: World, x: str, y: str) -> None:
    pa, pb = await befriend_and_talk(world, x, y)
    if {SITES[x], SITES[y]} == {"none"}:
        assert pa == pb == "direct", (pa, pb)
        return
    assert pa in ("direct", "punched") and pb in ("direct", "punched"), (pa, pb)
    if "none" not in {SITES[x], SITES[y]}:
        # Both behind NATs: nothing but a punch opens a path.
        assert pa == pb == "punched", (pa, pb)


async def test_two_hosts_behind_one_router_meet_on_their_lan(world: World) -> None:
    pa, pb = await befriend_and_talk(world, "h1", "h2")
    assert pa == pb == "lan", (pa, pb)


async def test_double_nat(world: World) -> None:
    pa, pb = await befriend_and_talk(world, "d1", "p2")
    assert pa == pb == "punched", (pa, pb)


async def test_address_change_reconnects_within_ten_seconds_and_loses_nothing(
    world: World,
) -> None:
    """The router in front of m1 gets another public address (its old mappings die with
    the old one).  m1's keepalives reach its rendezvous nodes from the new address, m1
    learns it moved, drops the dead sessions and punches again; messages written by
    either side meanwhile are delivered once."""
    await befriend_and_talk(world, "m1", "c2")
    m1, c2 = world.daemons["m1"], world.daemons["c2"]
    router = world.net.sites["m1"].router
    assert router is not None
    old = router.wan_address
    new = old.rsplit(".", 1)[0] + ".210"
    router.renumber(new)
    moved_at = time.monotonic()
    bodies = [f"during the move {i}" for i in range(3)]
    for body in bodies:
        await m1.call("send", contact="c2", text=f"m1: {body}", wait=0)
        await c2.call("send", contact="m1", text=f"c2: {body}", wait=0)

    async def all_delivered() -> bool:
        for sender, contact, prefix in ((m1, "c2", "m1"), (c2, "m1", "c2")):
            for body in bodies:
                if not await delivered(sender, contact, f"{prefix}: {body}"):
                    return False
        return True

    await until(all_delivered, 30, "delivery after the address change")
    took = time.monotonic() - moved_at
    print(f"reconnected and delivered {took:.1f} s after the address change")
    assert took <= 10.0, f"took {took:.1f} s"
    net = (await m1.call("network_status"))["reachability"]
    assert all(a.startswith(f"{new}:") for a in net["reflexive"]), net["reflexive"]
    for receiver, contact, prefix in ((c2, "m1", "m1"), (m1, "c2", "c2")):
        got = [m["body"] for m in await receiver.call("history", contact=contact)]
        for body in bodies:
            assert got.count(f"{prefix}: {body}") == 1, got

"""When no hole can be punched, a relay carries the ciphertext: the relay lab.

One lab for the module: a public host running two relaying daemons (``--relay``,
the DHT bootstrap of everyone, as a group's always-on nodes would be) and two hostile
relays (``tests/netlab/relay_tools.py``: the node's own rendezvous and relay code
with a test's hand on every forwarded datagram), and four sites behind
endpoint-dependent (random-port) NATs, where no punch can work.  Pairs become
contacts by peer ID alone (no invite, no address) and must talk through a relay:

* r1 x r2: messages both ways and a file, ``path: relayed``; the relay they use is
  killed mid-conversation (the other one takes over, nothing lost); a peer pushing
  through the relay is held to its budget while r1 and r2 keep theirs; and last, r2's
  router turns port-preserving and the pair moves to a punched path.
* r3 x r4: their rendezvous nodes are the two hostile relays; the first drops, flips
  bits in, replays and reorders what it forwards, then forwards nothing; the second
  then passes pings and acknowledgements but no data.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio

from .conftest import make_home
from .daemons import delivered, rss_kib, until
from .netlab import Lab, list_namespaces, prepare, unavailable_reason
from .netlab.daemon import NsDaemon
from .netlab.topologies import PUBLIC_ADDRESS, Internet, SiteKind, build_internet

REASON = unavailable_reason(need_nft=True)
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(300),
]

T = TypeVar("T")
PORT = 4001
HOSTILE_PORTS = (PORT + 2, PORT + 3)
SITES: dict[str, SiteKind] = {"r1": "random", "r2": "random", "r3": "random", "r4": "random"}
BOOTSTRAP = (f"{PUBLIC_ADDRESS}:{PORT}", f"{PUBLIC_ADDRESS}:{PORT + 1}")
#: The public relays' budgets: small, so a pusher meets them without loading the machine.
PEER_RATE = 256 * 1024
RELAY_BUDGETS = ("--relay-peer-rate", str(PEER_RATE), "--relay-rate", str(8 * PEER_RATE))
MiB = 1024 * 1024


class World:
    def __init__(self, lab: Lab, net: Internet, root: Path) -> None:
        self.lab = lab
        self.net = net
        self.root = root
        self.daemons: dict[str, NsDaemon] = {}
        self.hostile: list[tuple[subprocess.Popen[str], str]] = []

    def hostile_id(self, which: int) -> str:
        return self.hostile[which][1]

    def hostile_mode(self, which: int, line: str) -> dict[str, Any]:
        proc = self.hostile[which][0]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        answer: dict[str, Any] = json.loads(proc.stdout.readline())
        return answer


def _daemon(world: World, key: str, host: Any, *extra: str, port: int = PORT) -> NsDaemon:
    home = make_home(world.root, key).home
    (home / "downloads").mkdir(exist_ok=True)
    bootstrap = [arg for entry in BOOTSTRAP for arg in ("--bootstrap", entry)]
    d = NsDaemon(
        host,
        home,
        listen=f"0.0.0.0:{port}",
        mdns=False,
        dht=True,
        extra=(
            *bootstrap,
            "--downloads", str(home / "downloads"), "--accept-files-from", "contacts",
            *extra,
        ),
    )  # fmt: skip
    world.daemons[key] = d
    return d


async def _ready(d: NsDaemon) -> bool:
    net = (await d.call("network_status"))["reachability"]
    registered = [r for r in net["registrations"] if r["state"] == "registered"]
    if len(registered) < 2 or net["nat"] != "endpoint-dependent":
        return False
    dht = await d.call("dht_status")
    return bool(dht["record"]["stored"]) and len(dht["rendezvous"]) == 2


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    if shutil.which("nft") is None:
        pytest.skip("NAT lab needs nftables")
    prepare()
    lab = Lab()
    w = World(lab, build_internet(lab, SITES, port=PORT), tmp_path_factory.mktemp("relaylab"))
    try:
        public = w.net.public
        for port in HOSTILE_PORTS:
            proc = public.popen(
                [sys.executable, "-m", "tests.netlab.relay_tools", "hostile-relay",
                 "--port", str(port)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            assert proc.stdout is not None
            w.hostile.append((proc, json.loads(proc.stdout.readline())["peer_id"]))
        _daemon(w, "pub", public, "--relay", *RELAY_BUDGETS)
        _daemon(w, "pub2", public, "--relay", *RELAY_BUDGETS, port=PORT + 1)
        await w.daemons["pub"].start(timeout=90)
        await w.daemons["pub2"].start(timeout=90)
        hostile = [
            arg
            for (_, peer), port in zip(w.hostile, HOSTILE_PORTS, strict=True)
            for arg in ("--rendezvous", f"{peer}@{PUBLIC_ADDRESS}:{port}")
        ]
        for name, site in w.net.sites.items():
            _daemon(w, name, site.host, *(hostile if name in ("r3", "r4") else ()))
        await asyncio.gather(*(w.daemons[n].start(timeout=90) for n in ("r1", "r2")))
        await asyncio.gather(*(w.daemons[n].start(timeout=90) for n in ("r3", "r4")))
        for name in SITES:
            d = w.daemons[name]
            await until(lambda d=d: _ready(d), 60, f"{name} registered, NAT measured")
        yield w
    finally:
        for d in w.daemons.values():
            await d.stop()
        lab.close()
        assert [ns for ns in list_namespaces() if ns.startswith(lab.run_id)] == []


# ----------------------------------------------------------------------- helpers
async def history(d: NsDaemon, contact: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await d.call("history", contact=contact)
    return result


async def all_delivered(sender: NsDaemon, contact: str, bodies: list[str]) -> bool:
    return all([await delivered(sender, contact, body) for body in bodies])


async def contact_view(d: NsDaemon, peer_id: str) -> dict[str, Any] | None:
    for c in await d.call("contacts"):
        if c["peer_id"] == peer_id and c["online"]:
            return dict(c)
    return None


async def talk(world: World, x: str, y: str, tag: str, n: int = 3, timeout: float = 60) -> None:
    """``n`` messages each way; every one delivered, each exactly once."""
    a, b = world.daemons[x], world.daemons[y]
    ab = [f"{tag} {x}>{y} {i}" for i in range(n)]
    ba = [f"{tag} {y}>{x} {i}" for i in range(n)]
    for body_ab, body_ba in zip(ab, ba, strict=True):
        await a.call("send", contact=y, text=body_ab, wait=0)
        await b.call("send", contact=x, text=body_ba, wait=0)
    await until(lambda: all_delivered(a, y, ab), timeout, f"{tag}: {x} -> {y}")
    await until(lambda: all_delivered(b, x, ba), timeout, f"{tag}: {y} -> {x}")
    for receiver, contact, bodies in ((b, x, ab), (a, y, ba)):
        got = [m["body"] for m in await history(receiver, contact) if m["direction"] == "in"]
        for body in bodies:
            assert got.count(body) == 1, (body, got)


async def befriend(world: World, x: str, y: str) -> None:
    a, b = world.daemons[x], world.daemons[y]
    await a.call("add", ref=b.peer_id, name=y)
    await b.call("add", ref=a.peer_id, name=x)


async def start_file(world: World, x: str, y: str, size: int) -> tuple[str, Path]:
    """Offer a random file from x to y (accepted by itself); its transfer id and path."""
    name = f"{x}-to-{y}-{size}.bin"
    src = world.root / "files" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(os.urandom(size))
    t = await world.daemons[x].call("send_files", contact=y, paths=[str(src)])
    return str(t["id"]), src


async def file_arrives(
    world: World, x: str, y: str, tid: str, src: Path, timeout: float = 120
) -> dict[str, Any]:
    """The transfer is done and the file arrived byte for byte; the transfer's view."""
    a, b = world.daemons[x], world.daemons[y]

    async def done() -> dict[str, Any] | None:
        view: dict[str, Any] = await a.call("transfer", id=tid)
        assert view["state"] not in ("failed", "declined", "cancelled"), view
        return view if view["state"] == "done" else None

    view = await until(done, timeout, f"file {src.name}")
    assert (b.paths.home / "downloads" / src.name).read_bytes() == src.read_bytes()
    return view


async def send_file(world: World, x: str, y: str, size: int, timeout: float = 120) -> None:
    """A random file from x to y, verified byte for byte."""
    tid, src = await start_file(world, x, y, size)
    await file_arrives(world, x, y, tid, src, timeout)


async def relay_status(d: NsDaemon) -> Any:
    return (await d.call("network_status"))["reachability"]["relaying"]


# ----------------------------------------------------------------------- tests
async def test_random_pair_talks_and_drops_a_file_through_a_relay(world: World) -> None:
    await befriend(world, "r1", "r2")
    await talk(world, "r1", "r2", "hello")
    pub_ids = {world.daemons["pub"].peer_id, world.daemons["pub2"].peer_id}
    for x, y in (("r1", "r2"), ("r2", "r1")):
        view = await contact_view(world.daemons[x], world.daemons[y].peer_id)
        assert view is not None and view["path"] == "relayed", view
        assert view["via"] in pub_ids, view
    await send_file(world, "r1", "r2", 2 * MiB)
    await send_file(world, "r2", "r1", 512 * 1024)
    via = (await contact_view(world.daemons["r1"], world.daemons["r2"].peer_id) or {})["via"]
    relay = "pub" if via == world.daemons["pub"].peer_id else "pub2"
    serving = (await relay_status(world.daemons[relay]))["serving"]
    assert serving["forwarded_bytes"] > 2 * MiB and serving["channels"] >= 1, serving


async def test_a_relay_killed_mid_conversation_is_replaced_and_nothing_is_lost(
    world: World,
) -> None:
    r1, r2 = world.daemons["r1"], world.daemons["r2"]
    await talk(world, "r1", "r2", "before")
    via = (await contact_view(r1, r2.peer_id) or {})["via"]
    name = "pub" if via == world.daemons["pub"].peer_id else "pub2"
    other = "pub2" if name == "pub" else "pub"
    # A file on its way (at the relay's 256 KiB/s it takes a while) when the relay dies.
    tid, src = await start_file(world, "r1", "r2", 3 * MiB)

    async def moving() -> bool:
        progress = (await r1.call("transfer", id=tid))["progress"]
        return bool(progress and progress[0] >= 512 * 1024)

    await until(moving, 60, "the file under way")
    killed = world.daemons[name]
    await killed.kill()
    killed_at = time.monotonic()
    # Both keep writing while their relay is gone.
    await talk(world, "r1", "r2", "during", n=5, timeout=90)
    took = time.monotonic() - killed_at
    print(f"delivered through the other relay {took:.1f} s after the kill")
    view = await contact_view(r1, r2.peer_id)
    assert view is not None and view["path"] == "relayed"
    assert view["via"] == world.daemons[other].peer_id, view
    # The file resumes from what had arrived, through the other relay: a second attempt,
    # and no byte received twice.
    await file_arrives(world, "r1", "r2", tid, src)
    received = await r2.call("transfer", id=tid)
    print(f"receiver: {received['attempts']} attempts, {received['bytes_moved']} bytes")
    assert received["attempts"] >= 2, received
    assert received["bytes_moved"] == 3 * MiB, received
    # Back for the tests that follow (same home: same key and port).
    await killed.start(timeout=90)


async def test_a_peer_pushing_through_a_relay_is_held_to_its_budget(world: World) -> None:
    r1, r2 = world.daemons["r1"], world.daemons["r2"]
    await talk(world, "r1", "r2", "before the push")
    via = (await contact_view(r1, r2.peer_id) or {})["via"]
    name = "pub" if via == world.daemons["pub"].peer_id else "pub2"
    relay = world.daemons[name]
    port = PORT if name == "pub" else PORT + 1
    assert relay.proc is not None
    rss_before = rss_kib(relay.proc.pid)
    seconds = 10.0
    pusher = world.net.sites["r3"].host.popen(
        [sys.executable, "-m", "tests.netlab.relay_tools", "push",
         "--relay", f"{PUBLIC_ADDRESS}:{port}", "--rate", str(8 * PEER_RATE),
         "--seconds", str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert pusher.stdout is not None
    ready = pusher.stdout.readline()
    assert ready, pusher.stderr.read() if pusher.stderr else ""
    # Meanwhile r1 and r2 keep talking and move a file through the same relay.
    await talk(world, "r1", "r2", "during the push", n=5)
    await send_file(world, "r1", "r2", 1 * MiB, timeout=60)
    out, _ = await asyncio.to_thread(pusher.communicate, timeout=60)
    result = json.loads(out.splitlines()[-1])
    print(f"pusher: {result}")
    # What came out is the node's budget: its rate for the time, plus the burst.
    assert result["sent"] > 4 * result["received"], result
    assert result["received"] <= PEER_RATE * (result["seconds"] + 2) + 2 * PEER_RATE, result
    serving = (await relay_status(relay))["serving"]
    assert serving["dropped_peer_rate"] > 0, serving
    growth = rss_kib(relay.proc.pid) - rss_before
    print(f"relay RSS grew by {growth} KiB")
    assert growth < 20 * 1024, "the relay buffers nothing"


async def test_a_hostile_relay_can_delay_but_not_forge_and_is_left_when_it_fails(
    world: World,
) -> None:
    r3, r4 = world.daemons["r3"], world.daemons["r4"]
    first, second = world.hostile_id(0), world.hostile_id(1)
    await befriend(world, "r3", "r4")
    await talk(world, "r3", "r4", "honest")
    view = await contact_view(r3, r4.peer_id)
    assert view is not None and view["path"] == "relayed" and view["via"] == first, view
    for mode in ("drop 0.2", "flip 0.2", "replay 0.3", "reorder 0.3"):
        world.hostile_mode(0, mode)
        await talk(world, "r3", "r4", mode)
    world.hostile_mode(0, "flip 0.05")
    await send_file(world, "r3", "r4", 1 * MiB, timeout=90)  # arrives identical
    counts = world.hostile_mode(0, "honest")
    assert counts["tampered"] > 50, counts
    # Whatever it did, nothing it made up got through: the histories hold exactly the
    # messages written, once each, in order.
    for receiver, contact, sender in ((r4, "r3", "r3"), (r3, "r4", "r4")):
        got = [m["body"] for m in await history(receiver, contact) if m["direction"] == "in"]
        assert len(got) == len(set(got)) and all(b.split()[-2].startswith(sender) for b in got)
    # A relay that forwards nothing: the session dies of silence, the peers go through
    # the other relay, and what they wrote meanwhile arrives.
    world.hostile_mode(0, "blackhole")
    await talk(world, "r3", "r4", "after the blackhole", timeout=90)
    view = await contact_view(r3, r4.peer_id)
    assert view is not None and view["path"] == "relayed" and view["via"] == second, view
    # A relay that forwards pings and acknowledgements but no data: the stalled session
    # is closed, the relay tried last, and the messages go through the first relay,
    # honest again.
    world.hostile_mode(0, "honest")
    world.hostile_mode(1, "starve 90")
    await talk(world, "r3", "r4", "after the starving", timeout=90)
    view = await contact_view(r3, r4.peer_id)
    assert view is not None and view["path"] == "relayed" and view["via"] == first, view
    world.hostile_mode(1, "honest")
    using = [(await relay_status(d))["using"] for d in (r3, r4)]
    assert sum(u.get("channels_went_silent", 0) for u in using) >= 1, using  # the blackhole
    assert sum(u.get("channels_stalled", 0) for u in using) >= 1, using  # the starving


async def test_a_relayed_pair_whose_nat_becomes_punchable_moves_to_a_direct_path(
    world: World,
) -> None:
    r1, r2 = world.daemons["r1"], world.daemons["r2"]
    await talk(world, "r1", "r2", "relayed still")
    assert (await contact_view(r1, r2.peer_id) or {})["path"] == "relayed"
    router = world.net.sites["r2"].router
    assert router is not None
    # r2's router now keeps ports (endpoint-independent), as after a firmware change;
    # like a reboot, it forgets its old mappings.
    router.set_nat("preserving")
    switched = time.monotonic()
    bodies = [f"while moving {i}" for i in range(4)]
    for body in bodies:
        await r1.call("send", contact="r2", text=f"r1 {body}", wait=0)
        await r2.call("send", contact="r1", text=f"r2 {body}", wait=0)
        await asyncio.sleep(1.0)

    async def direct() -> bool:
        views = [await contact_view(r1, r2.peer_id), await contact_view(r2, r1.peer_id)]
        return all(v is not None and v["path"] in ("punched", "direct") for v in views)

    await until(direct, 45, "a direct path")
    took = time.monotonic() - switched
    print(f"on a punched path {took:.1f} s after the router changed")
    assert took <= 30.0, f"took {took:.1f} s"
    await until(lambda: all_delivered(r1, "r2", [f"r1 {b}" for b in bodies]), 30, "r1's messages")
    await until(lambda: all_delivered(r2, "r1", [f"r2 {b}" for b in bodies]), 30, "r2's messages")
    for receiver, contact, prefix in ((r2, "r1", "r1"), (r1, "r2", "r2")):
        got = [m["body"] for m in await history(receiver, contact)]
        for body in bodies:
            assert got.count(f"{prefix} {body}") == 1, got

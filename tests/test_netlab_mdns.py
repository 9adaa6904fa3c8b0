"""LAN discovery end to end: real daemons in network namespaces on one bridge.

mDNS multicasts on every interface it binds, so these tests run daemons only
inside lab namespaces (the rest of the suite uses ``--no-mdns``).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from p2pchat.identity import Identity

from .conftest import make_home
from .daemons import run_cli, until
from .netlab import Host, Lab, unavailable_reason
from .netlab.daemon import NsDaemon

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

async def nearby(daemon: NsDaemon) -> dict[str, dict[str, Any]]:
    return {p["peer_id"]: p for p in await daemon.call("nearby")}


def daemon(host: Host, tmp_path: Path, name: str, **kwargs: Any) -> NsDaemon:
    return NsDaemon(host, make_home(tmp_path, name).home, **kwargs)


async def test_contacts_find_each_other_and_talk_within_five_seconds(
    lab: Lab, tmp_path: Path
) -> None:
    lan = lab.lan(2)
    # Alice listens on every address (the interface address is announced), Bob on
    # one address and port, discovery bound to one interface.
    alice = daemon(lan.hosts[0], tmp_path, "alice")
    bob = daemon(
        lan.hosts[1], tmp_path, "bob", listen="10.77.0.12:4999", extra=("--mdns-interface", "eth0")
    )
    ida, idb = alice.peer_id, bob.peer_id
    typo = lan.hosts[0].python(
        "-m", "p2pchat", "--home", str(make_home(tmp_path, "typo").home),
        "daemon", "--listen", "0.0.0.0:4002", "--mdns-interface", "etth0", check=False,
    )  # fmt: skip
    assert typo.returncode == 1 and "etth0" in typo.stderr, "a mistyped interface is an error"
    await asyncio.gather(alice.start(), bob.start())
    # The bound is on discovery and delivery once both nodes run; how long a daemon takes
    # to start (interpreter and imports) depends on the machine and is not measured here.
    started = time.monotonic()
    try:
        # Bare IDs: no address anywhere, the LAN has to supply it.
        await alice.call("add", ref=idb, name="bob")
        await bob.call("add", ref=ida, name="alice")
        sent = await alice.call("send", contact="bob", text="found you", wait=10)
        first = time.monotonic() - started
        back = await bob.call("send", contact="alice", text="found you too", wait=10)
        both = time.monotonic() - started
        print(f"\nboth running to delivered: {first:.2f}s (both directions {both:.2f}s)")
        assert sent["state"] == "delivered" and back["state"] == "delivered"
        assert first < 5.0, f"discovery and first delivery took {first:.2f}s"
        (bob_seen,) = await alice.call("contacts")
        assert "10.77.0.12:4999" in bob_seen["addresses"] and bob_seen["online"]
        seen_by_bob = await until(lambda: _has(bob, {ida}), 5, "alice in bob's nearby list")
        assert seen_by_bob[ida]["addresses"] == ["10.77.0.11:4001"]
        assert [m["body"] for m in await bob.call("history", contact="alice")] == [
            "found you",
            "found you too",
        ]
    finally:
        await asyncio.gather(alice.stop(), bob.stop())


async def test_strangers_show_up_nearby_and_leave(lab: Lab, tmp_path: Path) -> None:
    lan = lab.lan(3)
    alice = daemon(lan.hosts[0], tmp_path, "alice")
    carol = daemon(lan.hosts[1], tmp_path, "carol", extra=("--mdns-share-name",))
    dave = daemon(lan.hosts[2], tmp_path, "dave", extra=("--mdns-hidden",))
    await asyncio.gather(alice.start(), carol.start(), dave.start())
    idc, idd, ida = carol.peer_id, dave.peer_id, alice.peer_id
    try:

        async def carol_nearby() -> dict[str, Any] | None:
            return (await nearby(alice)).get(idc)

        entry = await until(carol_nearby, 10, "carol in alice's nearby list")
        assert entry == entry | {
            "name": "carol",  # she chose to share it
            "addresses": ["10.77.0.12:4001"],
            "source": "mdns",
            "is_contact": False,
        }
        # Dave browses without announcing: he sees everyone, nobody sees him.
        seen_by_dave = await until(
            lambda: _has(dave, {ida, idc}), 10, "alice and carol in dave's list"
        )
        assert seen_by_dave[ida]["name"] is None, "names stay private unless shared"
        assert idd not in await nearby(alice) and idd not in await nearby(carol)
        # The CLI shows the same list (over the control socket of the running node).
        cli = run_cli(alice.paths.home, "nearby", "--json")
        assert cli.returncode == 0, cli.stderr
        assert idc in {p["peer_id"] for p in json.loads(cli.stdout)}
        # A new address on carol's interface is announced by the periodic check.
        carol.host.add_address("10.77.0.112/24")

        async def new_address() -> bool:
            peer = (await nearby(alice)).get(idc)
            return peer is not None and "10.77.0.112:4001" in peer["addresses"]

        await until(new_address, 25, "carol's new address to be announced")
        # Carol stops: her goodbye removes her at once.
        await carol.stop()
        await until(lambda: _gone(alice, idc), 5, "carol to leave alice's nearby list")
        assert idc not in await nearby(dave)
    finally:
        await asyncio.gather(alice.stop(), carol.stop(), dave.stop())
    assert "Traceback" not in alice.output()


async def _has(d: NsDaemon, ids: set[str]) -> dict[str, dict[str, Any]] | None:
    seen = await nearby(d)
    return seen if ids <= set(seen) else None


async def _gone(d: NsDaemon, peer_id: str) -> bool:
    return peer_id not in await nearby(d)


async def offline(d: NsDaemon) -> bool:
    return not any(c["online"] for c in await d.call("contacts"))


async def online(d: NsDaemon) -> bool:
    contacts = await d.call("contacts")
    return bool(contacts) and all(c["online"] for c in contacts)


async def all_delivered(d: NsDaemon, contact: str) -> bool:
    out = [m for m in await d.call("history", contact=contact) if m["direction"] == "out"]
    return all(m["state"] in ("delivered", "read") for m in out)


@pytest.mark.timeout(150)
async def test_link_flap_queues_then_delivers(lab: Lab, tmp_path: Path) -> None:
    lan = lab.lan(2)
    alice = daemon(lan.hosts[0], tmp_path, "alice")
    bob = daemon(lan.hosts[1], tmp_path, "bob")
    await asyncio.gather(alice.start(), bob.start())
    try:
        await alice.call("add", ref=bob.peer_id, name="bob")
        await bob.call("add", ref=alice.peer_id, name="alice")
        await until(lambda: online(alice), 10, "alice and bob to connect")
        bob.host.link_down()
        down = time.monotonic()
        # In flight when the cable went: sent into a connection that is dying.
        await alice.call("send", contact="bob", text="a1 (link just went)")
        await until(lambda: offline(alice), 40, "alice to notice bob is gone")
        await until(lambda: offline(bob), 40, "bob to notice alice is gone")
        noticed = time.monotonic() - down
        queued = [
            await alice.call("send", contact="bob", text="a2 (queued)"),
            await bob.call("send", contact="alice", text="b1 (queued)"),
            await alice.call("send", contact="bob", text="a3 (queued)"),
        ]
        assert {q["state"] for q in queued} == {"queued"}
        bob.host.link_up()
        up = time.monotonic()
        await until(lambda: all_delivered(alice, "bob"), 60, "alice's queue to drain")
        await until(lambda: all_delivered(bob, "alice"), 60, "bob's queue to drain")
        print(f"\noffline noticed after {noticed:.1f}s; delivered {time.monotonic() - up:.1f}s "
              "after the link came back")  # fmt: skip
        assert await online(alice) and await online(bob)
        got = [
            m["body"] for m in await bob.call("history", contact="alice") if m["direction"] == "in"
        ]
        assert got == ["a1 (link just went)", "a2 (queued)", "a3 (queued)"]
        got = [
            m["body"] for m in await alice.call("history", contact="bob") if m["direction"] == "in"
        ]
        assert got == ["b1 (queued)"]
    finally:
        await asyncio.gather(alice.stop(), bob.stop())


def hostile_services(bob_id: str, liar: str, stranger: str) -> list[dict[str, Any]]:
    """What a hostile host on the LAN announces; only the last two pass validation."""
    invalid = [Identity.generate().peer_id for _ in range(4)]

    def txt(peer: str, **extra: Any) -> list[list[Any]]:
        fields = {"id": peer, "v": "1", "port": "4001", **extra}
        return [[k, v] for k, v in fields.items()]

    at_liar = {"port": 4001, "addresses": [liar]}
    return [
        {"instance": "huge", **at_liar,
         "txt": txt(invalid[0]) + [[f"pad{i}", "x" * 240] for i in range(30)]},
        {"instance": "port-words", **at_liar, "txt": txt(invalid[1], port="http")},
        {"instance": "port-range", **at_liar, "txt": txt(invalid[1], port="70000")},
        {"instance": "version-2", **at_liar, "txt": txt(invalid[1], v="2")},
        {"instance": "no-id", **at_liar, "txt": [["v", "1"], ["port", "4001"]]},
        {"instance": "id-flag", **at_liar, "txt": [["id", None], ["v", "1"], ["port", "4001"]]},
        {"instance": "id-junk", **at_liar, "txt": txt("not-a-peer-id")},
        {"instance": "id-number", **at_liar, "txt": txt("123")},
        {"instance": "id-upper", **at_liar, "txt": txt(invalid[2].upper())},
        {"instance": "raw-junk", **at_liar, "raw_txt": "ff01696402763d31"},
        {"instance": "off-link", "port": 4001, "addresses": ["192.0.2.1"],
         "txt": txt(invalid[3])},
        {"instance": "loopback", "port": 4001, "addresses": ["127.0.0.1"],
         "txt": txt(invalid[3])},
        # A false claim to be Bob, under Bob's own instance name, at the liar's node.
        {"instance": bob_id, "server": "liar", **at_liar, "txt": txt(bob_id)},
        # A stranger with a terminal escape in its name.
        {"instance": "stranger", **at_liar, "txt": txt(stranger, name="x\u001b[2Jwiped\n")},
    ]  # fmt: skip


@pytest.mark.timeout(150)
async def test_hostile_announcements(lab: Lab, tmp_path: Path) -> None:
    lan = lab.lan(3)
    alice_host, bob_host, liar_host = lan.hosts
    alice = daemon(alice_host, tmp_path, "alice")
    bob = daemon(bob_host, tmp_path, "bob")
    # The liar runs a real node (its own key) where it claims Bob lives.
    liar = daemon(liar_host, tmp_path, "liar", mdns=False)
    stranger = Identity.generate().peer_id
    idb = bob.peer_id
    spec = tmp_path / "hostile.json"
    services = hostile_services(idb, liar_host.address, stranger)
    spec.write_text(json.dumps(services))
    await asyncio.gather(alice.start(), liar.start())
    try:
        announcer, ready = liar_host.start_tool(
            "mdns-announce", str(spec), "--interface", liar_host.address
        )
        assert ready == {"registered": len(services)}
        liar_host.tool("mdns-raw", "--interface", liar_host.address)
        await alice.call("add", ref=idb, name="bob")  # a contact, not running yet
        seen = await until(lambda: _has(alice, {idb, stranger}), 15, "the two valid claims")
        # Resolution of the incomplete ones times out after 3 s: give them that long.
        await asyncio.sleep(4)
        seen = await nearby(alice)
        assert set(seen) == {idb, stranger}, "every invalid announcement is ignored"
        assert seen[stranger]["is_contact"] is False
        assert seen[stranger]["name"] is not None and seen[stranger]["name"].isprintable()
        assert seen[idb]["addresses"] == [f"{liar_host.address}:4001"]
        # Alice dials "Bob" at the liar's address, and the handshake unmasks it.
        await until(
            lambda: _logged(alice, "instead of contact"), 20, "a key mismatch on alice's side"
        )
        assert (await liar.call("info"))["online"] == []
        assert await liar.call("requests") == [], "the liar never got a session"
        assert (await alice.call("info"))["online"] == []
        # Now the real Bob arrives (the liar holds his instance name: he renames).
        await bob.start()
        await bob.call("add", ref=alice.peer_id, name="alice")
        sent = await alice.call("send", contact="bob", text="is it really you?", wait=30)
        assert sent["state"] == "delivered"
        info = await alice.call("info")
        assert info["online"] == [idb]

        async def both_claims() -> bool:
            addresses = (await nearby(alice))[idb]["addresses"]
            return f"{bob_host.address}:4001" in addresses

        await until(both_claims, 10, "bob's own announcement next to the false one")
        await until(lambda: _logged(bob, "announced on the LAN"), 10, "bob's announcement")
        assert f"as {idb}-2._p2pchat._udp.local." in bob.output(), "the squatter made him rename"
        assert f"{liar_host.address}:4001" in (await nearby(alice))[idb]["addresses"]
        assert [m["body"] for m in await bob.call("history", contact="alice")] == [
            "is it really you?"
        ]
        announcer.terminate()
        await until(lambda: _gone(alice, stranger), 10, "the stranger's goodbye")
    finally:
        await asyncio.gather(alice.stop(), bob.stop(), liar.stop())
    log = alice.output()
    assert "Traceback" not in log and "mDNS task failed" not in log


async def _logged(d: NsDaemon, text: str) -> bool:
    return text in d.output()

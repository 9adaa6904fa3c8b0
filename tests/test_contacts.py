"""Contact management between real nodes: remove, block, unblock, mute.

Real nodes over real QUIC on 127.0.0.1; the DHT part uses a private swarm of real
daemons; the CLI part runs real ``p2pchat`` processes against a running daemon.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from p2pchat.core.events import BlockChanged, ContactChanged, ContactRemoved, PeerOffline
from p2pchat.identity import Identity
from p2pchat.net.peer import PeerConnection
from p2pchat.store import UnknownContact

from .conftest import EventLog, StartNode, free_udp_port, friends, make_home, wait_until
from .daemons import Daemon, run_cli
from .test_dht_net import Swarm, published, swarm, until

__all__ = ["swarm"]  # the fixture, imported for the DHT test below


async def test_remove_keeps_history_and_the_peer_becomes_a_stranger(
    start_node: StartNode,
) -> None:
    a, b = await friends(start_node)
    log = EventLog(a)
    try:
        sent = b.send_message("alice", "before")
        assert await b.wait_for_delivery(sent.id, 20) == "delivered"
        removed = a.remove_contact("bob")
        assert removed.peer_id == b.peer_id
        await wait_until(lambda: any(isinstance(e, ContactRemoved) for e in log.events))
        assert a.contacts() == []
        with pytest.raises(UnknownContact):
            a.history("bob")
        assert [m.body for m in a.store.history(b.peer_id)] == ["before"]  # kept
        await wait_until(lambda: not b.is_online(a.peer_id))
        # Bob still has Alice: he reconnects and now only knocks.
        b.send_message("alice", "after removal")
        await wait_until(
            lambda: (
                [(r.peer_id, r.preview) for r in a.requests()] == [(b.peer_id, "after removal")]
            ),
            timeout=30,
        )
    finally:
        await log.close()


async def test_block_refuses_sessions_and_requests_and_unblock_restores(
    start_node: StartNode,
) -> None:
    a, b = await friends(start_node)
    log = EventLog(a)
    try:
        a.block("bob")
        await wait_until(lambda: not a.is_online(b.peer_id) and not b.is_online(a.peer_id))
        await wait_until(lambda: any(isinstance(e, BlockChanged) for e in log.events))
        [view] = a.contacts()
        assert view.blocked and view.name == "bob"
        assert [p.peer_id for p in a.blocked()] == [b.peer_id]
        queued = b.send_message("alice", "are you there?")
        # Bob keeps dialling (he does not know); every session is refused at once.
        online_before = len(log.of(PeerOffline))
        assert b._dialer is not None
        dialer = b._dialer
        await wait_until(lambda: dialer.failures(a.peer_id) >= 2, timeout=30)
        assert not a.is_online(b.peer_id) and a.requests() == []
        assert len(log.of(PeerOffline)) == online_before  # never came online
        assert b.store.get_message(queued.id).state == "queued"  # type: ignore[union-attr]
        assert a.history("bob") == []

        a.unblock("bob")
        assert a.blocked() == []
        assert await b.wait_for_delivery(queued.id, 40) == "delivered"
        assert a.history("bob")[-1].body == "are you there?"
    finally:
        await log.close()


async def test_a_block_ends_a_session_still_waiting_for_the_peers_hello(
    start_node: StartNode,
) -> None:
    """Both sides dial at once, so a second session may have authenticated and still
    wait for the peer's Hello when the user blocks: that session ends too, it does
    not become the active one a moment later."""
    a, b = await friends(start_node)
    established = a.session_established

    def block_midway(conn: PeerConnection) -> None:
        established(conn)  # our Hello leaves; theirs is on its way
        if not a.is_blocked(b.peer_id):
            a.block("bob")

    a.session_established = block_midway  # type: ignore[method-assign]
    a._active[b.peer_id].close("test: a new session")
    await wait_until(lambda: a.is_blocked(b.peer_id))
    await asyncio.sleep(1.5)  # the peer's Hello has long arrived
    assert not a.is_online(b.peer_id)
    await wait_until(lambda: not b.is_online(a.peer_id))


async def test_blocking_a_stranger_drops_the_request_and_later_knocks(
    start_node: StartNode,
) -> None:
    a = await start_node("alice")
    b = await start_node("bob")
    b.add_contact(a.peer_id, name="alice", addresses=a.addresses)
    b.send_message("alice", "let me in")
    await wait_until(lambda: [r.peer_id for r in a.requests()] == [b.peer_id])
    a.block(b.peer_id[:10])  # a request is found by an ID prefix like a contact
    assert a.requests() == []
    assert a.contacts() == []
    # Bob, a pending requester, would wait long before knocking again: a restart
    # makes him dial at once, and the session he gets is refused.
    await b.stop()
    b = await start_node("bob")
    b.send_message("alice", "please")

    assert b._dialer is not None
    dialer = b._dialer
    await wait_until(lambda: dialer.failures(a.peer_id) >= 1, timeout=30)
    assert a.requests() == [] and not b.is_online(a.peer_id)
    assert [x.name for x in a.blocked()] == ["bob"]  # the name it knocked with


async def test_mute_is_a_flag_every_view_reads(start_node: StartNode) -> None:
    a, _ = await friends(start_node)
    log = EventLog(a)
    try:
        assert a.set_muted("bob").muted
        assert [c.muted for c in a.contacts()] == [True]
        await wait_until(lambda: any(isinstance(e, ContactChanged) for e in log.events))
        assert not a.set_muted("bob", False).muted
    finally:
        await log.close()


async def test_a_blocked_contact_is_never_looked_up(swarm: Swarm) -> None:
    """Blocked first, then added by bare ID: the DHT would find Bob (see
    test_dht_net); blocked, Alice never resolves nor dials him, until unblocked."""
    _boot, alice, bob = swarm
    await until(lambda: published(bob))  # Bob's record is there to be found
    await alice.call("block", ref=bob.peer_id)
    await alice.call("add", ref=bob.peer_id, name="bob", addresses=[])
    await alice.call("send", contact="bob", text="hello?", wait=0)
    # Unblocked, the first lookup starts at once and the retries come after 5 s
    # and 10 s (test_dht_net sees Bob knocked within seconds).
    for _ in range(3):
        assert await bob.call("requests") == []
        nearby = await alice.call("nearby")
        assert bob.peer_id not in [p["peer_id"] for p in nearby]
        await asyncio.sleep(5)
    await alice.call("unblock", ref="bob")
    await until(lambda: bob.call("requests"), timeout=60)


async def test_contact_commands_through_the_cli(tmp_path: Path, start_node: StartNode) -> None:
    home = make_home(tmp_path, "alice")
    daemon = Daemon(home.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    bob = await start_node("bob")
    carol = await start_node("carol")
    try:
        for peer, name in ((bob, "bob"), (carol, "carol")):
            await daemon.call("add", ref=peer.peer_id, name=name, addresses=list(peer.addresses))

        def cli(*args: str) -> str:
            result = run_cli(home.home, *args)
            assert result.returncode == 0, result.stderr
            return result.stdout

        assert cli("mute", "bob").strip() == f"muted bob ({bob.peer_id})"
        contacts = {c["name"]: c for c in json.loads(cli("contacts", "--json"))}
        assert contacts["bob"]["muted"] is True and contacts["carol"]["muted"] is False
        assert "muted" in cli("contacts")
        assert json.loads(cli("unmute", "bob", "--json"))["muted"] is False
        blocked = json.loads(cli("block", "carol", "--json"))
        assert blocked["peer_id"] == carol.peer_id and blocked["name"] == "carol"
        assert [b["peer_id"] for b in json.loads(cli("blocked", "--json"))] == [carol.peer_id]
        assert "carol" in cli("blocked")
        assert json.loads(cli("contacts", "--json"))[1]["blocked"] is True
        assert cli("unblock", "carol").startswith("unblocked carol")
        assert cli("blocked").strip() == "nobody is blocked"
        assert cli("remove", "bob").startswith("removed bob")
        assert [c["name"] for c in json.loads(cli("contacts", "--json"))] == ["carol"]
        missing = run_cli(home.home, "remove", "nobody")
        assert missing.returncode == 5
        stranger = run_cli(home.home, "unblock", "nobody")
        assert stranger.returncode == 5
    finally:
        await daemon.stop()


async def test_the_ips_of_contacts_follow_their_addresses_and_hints(
    start_node: StartNode,
) -> None:
    """The endpoint lets handshakes from contacts' IPs use its reserve.  The dial
    loop parses that set again only when a contact or a hint changed (an idle tick
    compares the store's cached contacts by identity), and a change shows at the
    next tick.  (Loopback addresses only: the node dials them.)"""
    node = await start_node("alice")
    stranger, other = Identity.generate().peer_id, Identity.generate().peer_id
    node.add_contact(stranger, name="s", addresses=["127.0.0.7:4000"])
    await wait_until(lambda: "127.0.0.7" in node._known_ips, timeout=10)
    node.peer_discovered(stranger, ["127.0.0.9:5000"], source="dht")
    await wait_until(lambda: "127.0.0.9" in node._known_ips, timeout=10)
    node.add_contact(other, name="o", addresses=["127.0.0.4:6000"])
    await wait_until(lambda: "127.0.0.4" in node._known_ips, timeout=10)
    assert {"127.0.0.7", "127.0.0.9"} <= node._known_ips
    node.remove_contact(stranger)
    await wait_until(lambda: "127.0.0.7" not in node._known_ips, timeout=10)
    assert "127.0.0.9" not in node._known_ips

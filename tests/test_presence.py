"""Presence and delivery tell the truth: a SIGKILLed peer drops offline within
seconds, what was only "sent" to it is queued again, a transfer it was sending is
paused, and messages sent through any path reach every view.

A real daemon (killed with SIGKILL, so no goodbye reaches anyone) against a real
node in this process, over real QUIC on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from p2pchat.core.events import (
    AwaitingAcceptance,
    MessageSent,
    MessageStateChanged,
    PeerOffline,
    TransferStateChanged,
)
from p2pchat.identity import Identity
from p2pchat.node import Node
from p2pchat.owner import start_owned

from .conftest import EventLog, StartNode, free_udp_port, friends, make_home, wait_until
from .daemons import Daemon, run_cli

MiB = 1 << 20


async def befriend_daemon(node: Node, daemon: Daemon) -> str:
    info = await daemon.call("info")
    node.add_contact(info["peer_id"], name="dave", addresses=[daemon.listen])
    await daemon.call("add", ref=node.peer_id, name="me", addresses=list(node.addresses))
    await wait_until(lambda: node.is_online(info["peer_id"]), timeout=30)
    return str(info["peer_id"])


async def test_sigkilled_peer_goes_offline_and_sent_goes_back_to_queued(
    start_node: StartNode, tmp_path: Path
) -> None:
    me = await start_node("me")
    daemon = Daemon(make_home(tmp_path, "dave").home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    log = EventLog(me)
    try:
        dave = await befriend_daemon(me, daemon)
        await daemon.kill()
        killed = time.monotonic()
        # Sent into the dead session: QUIC takes it, nobody will ever ack it.
        message = me.send_message("dave", "are you there?")
        assert message.state == "sent"
        await wait_until(lambda: not me.is_online(dave), timeout=15)
        # The liveness bound is ~3.5 s after the last packet heard (target: 5 s,
        # measured in benchmarks/presence.py); this is only a generous guard.
        assert time.monotonic() - killed < 10
        # The log reads the node's event stream in a task of its own: it may be a
        # loop turn or two behind ``is_online``.
        await wait_until(lambda: bool(log.of(PeerOffline)), timeout=5)
        offline = [e for e in log.of(PeerOffline) if isinstance(e, PeerOffline)]
        assert [e.peer_id for e in offline] == [dave]
        assert me.store.get_message(message.id).state == "queued"  # type: ignore[union-attr]

        def states() -> list[str]:
            return [
                e.state
                for e in log.of(MessageStateChanged)
                if isinstance(e, MessageStateChanged) and e.message_id == message.id
            ]

        await wait_until(lambda: len(states()) >= 2, timeout=5)
        assert states() == ["sent", "queued"]  # (MessageSent says it starts queued)
    finally:
        await log.close()
        await daemon.stop()


async def test_transfer_from_a_vanished_sender_is_paused_then_resumes(
    start_node: StartNode, tmp_path: Path
) -> None:
    me = await start_node("me")
    me.transfers.policy.downloads = tmp_path / "downloads"
    me.transfers.policy.accept_from = frozenset({"contacts"})
    home = make_home(tmp_path, "dave")
    daemon = Daemon(home.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    log = EventLog(me)
    src = tmp_path / "src" / "big.bin"
    src.parent.mkdir()
    with open(src, "wb") as fh:  # sparse: cheap to make, real bytes to move
        fh.truncate(64 * MiB)
    try:
        dave = await befriend_daemon(me, daemon)
        t = await daemon.call("send_files", contact="me", paths=[str(src)])
        parts = tmp_path / "downloads"

        def part_size() -> int:
            return sum(p.stat().st_size for p in parts.rglob("*.part"))

        await wait_until(lambda: part_size() >= 4 * MiB, timeout=60, interval=0.002)
        await daemon.kill()
        killed = time.monotonic()

        def paused() -> bool:
            got = me.store.get_transfer(t["id"])
            return got is not None and got.state == "paused"

        await wait_until(paused, timeout=15)
        assert time.monotonic() - killed < 10

        def changes() -> list[TransferStateChanged]:
            return [
                e
                for e in log.of(TransferStateChanged)
                if isinstance(e, TransferStateChanged) and e.transfer_id == t["id"]
            ]

        await wait_until(lambda: changes()[-1].state == "paused")
        assert "dave" in (changes()[-1].error or "")
        assert me.running_transfers() == []
        # The sender comes back: the transfer resumes and completes.
        daemon = Daemon(home.home, daemon.listen)
        await daemon.start()
        assert await me.wait_transfer(t["id"], 240) == "done"
        assert dave == (await daemon.call("info"))["peer_id"]
    finally:
        await log.close()
        await daemon.stop()


async def test_a_message_sent_from_the_cli_reaches_the_owning_view(tmp_path: Path) -> None:
    """Defect 4: `p2pchat msg` while the app runs the node; the app must see it."""
    home = make_home(tmp_path, "me")
    node = Node(home)
    await start_owned(node)
    log = EventLog(node)
    try:
        bob_id = Identity.generate().peer_id
        node.add_contact(bob_id, name="bob")
        result = await asyncio.to_thread(
            run_cli, home.home, "msg", "bob", "from the CLI", "--wait", "0"
        )
        assert result.returncode == 0, result.stderr
        sent = [e for e in log.of(MessageSent) if isinstance(e, MessageSent)]
        assert [(e.peer_id, e.body) for e in sent] == [(bob_id, "from the CLI")]
        assert [m.body for m in node.history("bob")] == ["from the CLI"]
    finally:
        await log.close()
        await node.stop()


async def test_msg_to_someone_who_has_not_accepted_returns_at_once(
    start_node: StartNode, tmp_path: Path
) -> None:
    alice = await start_node("alice")
    bob = await start_node("bob")
    log = EventLog(bob)
    try:
        bob.add_contact(alice.peer_id, name="alice", addresses=alice.addresses)
        message = bob.send_message("alice", "hi alice")
        began = time.monotonic()
        state = await bob.wait_for_delivery(message.id, 30)
        assert state == "queued" and bob.awaiting_acceptance(alice.peer_id)
        assert time.monotonic() - began < 15  # not the whole wait
        await wait_until(lambda: any(isinstance(e, AwaitingAcceptance) for e in log.events))
        assert [c.awaiting_acceptance for c in bob.contacts()] == [True]
        alice.accept_request("bob")
        # Their accept asks for what we held back; that ends the waiting by itself.
        await wait_until(lambda: not bob.awaiting_acceptance(alice.peer_id))
        assert await bob.wait_for_delivery(message.id, 30) == "delivered"
    finally:
        await log.close()


@pytest.mark.parametrize("stall", [5.0, 3.2])
async def test_a_stalled_loop_is_not_a_dead_peer(start_node: StartNode, stall: float) -> None:
    """Liveness judges the peer, not our own loop: after a stall of the loop both
    nodes run in, the silence is ours, and nobody is declared offline.  A stall a
    little shorter than the accepting side's keepalive interval plus what came
    before it, its timer fires less late than that interval and yet past the
    liveness deadline: still our silence, not the peer's."""
    a, b = await friends(start_node)
    logs = [EventLog(a), EventLog(b)]
    try:
        await asyncio.sleep(0.5)
        time.sleep(stall)  # noqa: ASYNC251 - the point: nothing on this loop runs meanwhile
        await asyncio.sleep(3)
        assert a.is_online(b.peer_id) and b.is_online(a.peer_id)
        assert not logs[0].of(PeerOffline) and not logs[1].of(PeerOffline)
    finally:
        for log in logs:
            await log.close()

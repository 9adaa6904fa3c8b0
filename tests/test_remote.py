"""Attaching to a running daemon: the same Node API over the control socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from p2pchat.core.events import MessageReceived, NodeEvent, PeerOnline
from p2pchat.core.group.errors import GroupError, UnknownGroup
from p2pchat.core.group.events import GroupMessageReceived
from p2pchat.remote import RemoteError, RemoteNode
from p2pchat.store import UnknownContact

from .conftest import StartNode, free_udp_port, make_home, wait_until
from .daemons import Daemon


async def test_remote_node_mirrors_the_daemon(start_node: StartNode, tmp_path: Path) -> None:
    home = make_home(tmp_path, "alice")
    daemon = Daemon(home.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    bob = await start_node("bob")
    remote = RemoteNode(home)
    await remote.start()
    seen: list[NodeEvent] = []

    async def watch() -> None:
        async for event in remote.events():
            seen.append(event)

    watcher = asyncio.ensure_future(watch())
    try:
        # The session must come up after the subscription for its PeerOnline to be seen.
        async with asyncio.timeout(20):
            await remote.streaming.wait()
        assert remote.peer_id == (await daemon.call("info"))["peer_id"]
        assert len(remote.identity.fingerprint) == 39
        remote.add_contact(bob.peer_id, name="bob", addresses=bob.addresses)
        bob.add_contact(remote.peer_id, name="alice", addresses=[daemon.listen])
        await wait_until(lambda: remote.is_online(bob.peer_id), timeout=20)
        assert any(isinstance(e, PeerOnline) for e in seen)
        sent = remote.send_message("bob", "from the attached app")
        assert sent.body == "from the attached app"
        await wait_until(lambda: [m.body for m in bob.history("alice")] == [sent.body])
        bob.send_message("alice", "hello back")
        await wait_until(
            lambda: any(isinstance(e, MessageReceived) and e.body == "hello back" for e in seen)
        )
        contacts = remote.contacts()
        assert [c.name for c in contacts] == ["bob"] and contacts[0].addresses
        history = remote.history("bob")
        assert [m.direction for m in history] == ["out", "in"]
        assert remote.mark_read("bob") == 1
        assert len(remote.safety_number("bob").split()) == 12
        assert remote.verify_contact("bob").verified
        with pytest.raises(UnknownContact):
            remote.history("nobody")
        # An offer waiting for an answer, as the app lists it (whole, not paged).
        offered = tmp_path / "offered.txt"
        offered.write_text("for alice")
        offer = await bob.offer_files("alice", [offered])
        await wait_until(lambda: [t.id for t in remote.pending_offers()] == [offer.id])
        [pending] = remote.pending_offers("bob")
        assert pending.state == "pending" and pending.files[0].path == "offered.txt"
        assert remote.pending_offers(bob.peer_id) == [pending]
        remote.update_settings(theme="textual-light")
        assert remote.settings["theme"] == "textual-light"
        # What the app remembers between runs goes into the owner's database.
        assert remote.view_state("conversation") is None
        remote.set_view_state("conversation", bob.peer_id)
        assert remote.view_state("conversation") == bob.peer_id
        with pytest.raises(RemoteError):
            remote.set_view_state("", "x")
        remote.set_view_state("conversation", None)
        assert remote.view_state("conversation") is None
    finally:
        watcher.cancel()
        await remote.stop()
        await daemon.stop()


async def test_remote_node_groups(start_node: StartNode, tmp_path: Path) -> None:
    """The app's group calls and group events, attached to a daemon."""
    home = make_home(tmp_path, "alice")
    daemon = Daemon(home.home, f"127.0.0.1:{free_udp_port()}")
    await daemon.start()
    bob = await start_node("bob")
    remote = RemoteNode(home)
    await remote.start()
    seen: list[NodeEvent] = []

    async def watch() -> None:
        async for event in remote.events():
            seen.append(event)

    watcher = asyncio.ensure_future(watch())
    try:
        remote.add_contact(bob.peer_id, name="bob", addresses=bob.addresses)
        bob.add_contact(remote.peer_id, name="alice", addresses=[daemon.listen])
        # Bob's side: the event stream may connect after the session came up.
        await wait_until(lambda: bob.is_online(remote.peer_id), timeout=20)
        bob.groups.create("[b]club[/b]", ["alice"])
        await wait_until(lambda: len(remote.groups.invites()) == 1)
        (invite,) = remote.groups.invites()
        assert invite.name == "[b]club[/b]" and invite.status == "invited"
        joined = remote.groups.accept(invite.group_id)
        assert joined.status == "joined" and joined.members == 2
        bob.groups.send(invite.group_id, "hello, group")
        await wait_until(lambda: any(isinstance(e, GroupMessageReceived) for e in seen))
        got = next(e for e in seen if isinstance(e, GroupMessageReceived))
        assert got.message.text == "hello, group" and got.message.author_name == "bob"
        assert remote.groups.get(invite.group_id).unread == 1
        remote.groups.mark_read(invite.group_id)
        assert remote.groups.get(invite.group_id).unread == 0
        mine = remote.groups.send(invite.group_id, "hello back")
        assert mine.mine and mine.members == 2
        gid = invite.group_id
        await wait_until(lambda: "hello back" in [m.text for m in bob.groups.history(gid)])
        members = remote.groups.members(invite.group_id)
        assert sorted((m.role, m.is_me) for m in members) == [("admin", False), ("member", True)]
        assert [m.text for m in remote.groups.history(invite.group_id)] == [
            "hello, group", "hello back",
        ]  # fmt: skip
        with pytest.raises(UnknownGroup):
            remote.groups.get("no such group")
        with pytest.raises(GroupError):
            remote.groups.remove_member(invite.group_id, bob.peer_id)  # not an admin
        assert remote.groups.leave(invite.group_id).status == "left"
    finally:
        watcher.cancel()
        await remote.stop()
        await daemon.stop()

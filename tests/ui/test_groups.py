"""Groups in the app, driven with Pilot against real nodes on 127.0.0.1: the invitation
in the list, joining, per-message authors, delivery counts, unread counts, the member
list with presence, and create / invite / remove / leave from the message box."""

from __future__ import annotations

from pathlib import Path

from p2pchat.remote import RemoteNode
from p2pchat.ui.screens.groups import GroupInviteScreen, GroupMembersScreen
from p2pchat.ui.screens.main import MainScreen
from p2pchat.ui.widgets import Composer
from p2pchat.ui.widgets.group_rows import GROUP, GROUP_INVITE

from ..conftest import StartNode, make_home, wait_until
from .conftest import app_for, main_screen, press, showing, until
from .test_attach import attached_pair
from .test_flows import befriend, sidebar_rows
from .test_hostile import screen_lines


def group_row(screen: MainScreen, name: str) -> str:
    """The list row of group ``name`` ("" while the list has not caught up)."""
    for row in sidebar_rows(screen):
        if row.split("\n", 1)[0].startswith(("# ", "? # ")) and f"# {name}" in row:
            return row
    return ""


def shown(screen: MainScreen) -> list[tuple[str, str, str | None]]:
    """(author, body, delivery) of every message row of the open conversation."""
    return [
        (item.line.author, item.line.body, item.line.delivery)
        for item in screen.conversation.message_items()
    ]


async def submit(pilot: object, composer: Composer, text: str) -> None:
    """Type ``text`` in the message box and press Enter there."""
    composer.focus()
    composer.load_text(text)
    await pilot.press("enter")  # type: ignore[attr-defined]


async def test_group_invitation_conversation_members_and_unread(
    tmp_path: Path, start_node: StartNode
) -> None:
    bob = await start_node("bob")
    carol = await start_node("carol")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        befriend(node, bob)
        befriend(bob, carol)  # carol is bob's contact, not alice's
        await until(pilot, lambda: node.is_online(bob.peer_id) and bob.is_online(carol.peer_id))
        gid = bob.groups.create("book club", ["alice", "carol"]).group_id
        await wait_until(lambda: any(g.group_id == gid for g in carol.groups.invites()))
        carol.groups.accept(gid)
        # The invitation: a row under "Group invitations"; Enter opens the dialog.
        await until(pilot, lambda: group_row(main, "book club").startswith("? # "), 30)
        assert "invited by bob" in group_row(main, "book club")
        main.contact_list.focus()
        main.contact_list.highlighted = main.contact_list.get_option_index(GROUP_INVITE + gid)
        await pilot.press("enter")
        await until(pilot, lambda: showing(app, GroupInviteScreen))
        await press(pilot, "#accept")
        await until(pilot, lambda: main.groups.open_id == gid and main.current is None)
        await until(pilot, lambda: "3 members" in group_row(main, "book club"))
        # Messages from bob and from carol (who is not alice's contact) with authors.
        bob.groups.send(gid, "first chapter?")
        await until(pilot, lambda: ("bob", "first chapter?", None) in shown(main), 30)
        carol.groups.send(gid, "yes please")
        await until(pilot, lambda: any(b == "yes please" for _, b, _ in shown(main)), 30)
        carol_author = next(a for a, b, _ in shown(main) if b == "yes please")
        assert carol_author == carol.peer_id[:8]  # not a contact: the start of its ID
        # Ours: delivery is how many members hold it, 1/3 (us) up to 3/3.
        composer = main.query_one(Composer)
        await submit(pilot, composer, "see you thursday")
        await until(pilot, lambda: ("alice", "see you thursday", "3/3") in shown(main), 30)
        assert "✓ 3/3" in "\n".join(screen_lines(app))
        header = str(main.conversation.query_one("#conv-header").render())
        assert "book club" in header and "3 members" in header
        # The member list, with presence.
        await submit(pilot, composer, "/members")
        await until(pilot, lambda: showing(app, GroupMembersScreen))
        members = "\n".join(screen_lines(app))
        assert "Members of book club" in members and "3 members" in members
        assert "● bob  admin" in members and "alice" in members and "not a contact" in members
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)
        # Another conversation open: the group counts unread messages in the list.
        main.open_conversation(bob.peer_id)
        await until(pilot, lambda: main.groups.open_id is None)
        bob.groups.send(gid, "also bring snacks")
        await until(pilot, lambda: "book club  1 " in group_row(main, "book club"), 30)
        await until(pilot, lambda: f"group:{gid}" in main.notices.notices)
        main.contact_list.highlighted = main.contact_list.get_option_index(GROUP + gid)
        await until(pilot, lambda: main.groups.open_id == gid)
        await until(pilot, lambda: any(b == "also bring snacks" for _, b, _ in shown(main)))
        await until(pilot, lambda: node.groups.get(gid).unread == 0)
        await until(pilot, lambda: " 1 " not in group_row(main, "book club").split("\n")[0])


async def test_create_invite_remove_and_leave_from_the_message_box(
    tmp_path: Path, start_node: StartNode
) -> None:
    bob = await start_node("bob")
    dave = await start_node("dave")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        befriend(node, bob)
        befriend(node, dave)
        await until(pilot, lambda: node.is_online(bob.peer_id) and node.is_online(dave.peer_id))
        composer = main.query_one(Composer)
        await submit(pilot, composer, "/group create hikers")
        await until(pilot, lambda: main.groups.open_id is not None)
        gid = main.groups.open_id
        assert gid is not None and node.groups.get(gid).role == "admin"
        await until(pilot, lambda: "1 member · 0 online" in group_row(main, "hikers"))
        await submit(pilot, composer, "/invite bob")
        await submit(pilot, composer, "/invite dave")
        for peer in (bob, dave):
            await wait_until(lambda p=peer: any(g.group_id == gid for g in p.groups.invites()))
            peer.groups.accept(gid)
        await until(pilot, lambda: "3 members" in group_row(main, "hikers"), 30)
        await submit(pilot, composer, "/remove dave")
        await wait_until(lambda: dave.groups.get(gid).status == "removed", timeout=30)
        await until(pilot, lambda: "2 members" in group_row(main, "hikers"))
        await wait_until(lambda: bob.groups.get(gid).members == 2, timeout=30)
        await submit(pilot, composer, "/leave")
        await until(pilot, lambda: "you left" in group_row(main, "hikers"))
        await wait_until(lambda: bob.groups.get(gid).members == 1, timeout=30)
        assert "you left this group" in main.conversation.banner_text
        # Outside a group /remove and /invite keep their contact meaning.
        main.open_conversation(bob.peer_id)
        await until(pilot, lambda: main.groups.open_id is None and main.current == bob.peer_id)
        await submit(pilot, composer, "/leave")
        await until(pilot, lambda: composer.text == "")
        assert node.groups.get(gid).status == "left"


async def test_groups_in_an_app_attached_to_a_daemon(
    tmp_path: Path, start_node: StartNode
) -> None:
    """The same group screens when the daemon owns the node: the invitation, joining,
    messages both ways and delivery, all through the control socket."""
    daemon, bob, _ = await attached_pair(start_node, tmp_path)
    app = app_for(daemon.paths)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            main = await main_screen(pilot)
            assert isinstance(app.node, RemoteNode)
            gid = bob.groups.create("choir", ["alice"]).group_id
            await until(pilot, lambda: group_row(main, "choir").startswith("? # "), 30)
            main.groups.show_invite(gid)
            await until(pilot, lambda: showing(app, GroupInviteScreen))
            await press(pilot, "#accept")
            await until(pilot, lambda: main.groups.open_id == gid)
            bob.groups.send(gid, "warm-up at six")
            await until(pilot, lambda: ("bob", "warm-up at six", None) in shown(main), 30)
            await submit(pilot, main.query_one(Composer), "on my way")
            await until(pilot, lambda: ("alice", "on my way", "2/2") in shown(main), 30)
            assert "on my way" in [m.text for m in bob.groups.history(gid)]
    finally:
        await daemon.stop()


async def test_a_declined_invitation_leaves_the_list_and_the_group(
    tmp_path: Path, start_node: StartNode
) -> None:
    bob = await start_node("bob")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        befriend(node, bob)
        await until(pilot, lambda: node.is_online(bob.peer_id))
        gid = bob.groups.create("chess", ["alice"]).group_id
        assert bob.groups.get(gid).members == 2
        await until(pilot, lambda: group_row(main, "chess").startswith("? # "), 30)
        assert f"ginvite:{gid}" in main.notices.notices
        main.groups.notice_clicked("groupinvite", gid)  # what a click on its notice does
        await until(pilot, lambda: showing(app, GroupInviteScreen))
        await press(pilot, "#decline")
        await until(pilot, lambda: app.screen is main and group_row(main, "chess") == "")
        assert node.groups.get(gid).status == "declined"
        # Declining signs a leave: the group learns it.
        await wait_until(lambda: bob.groups.get(gid).members == 1, timeout=30)

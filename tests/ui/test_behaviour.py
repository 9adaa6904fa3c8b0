"""The app's smaller promises: quitting says what it does, a restart reopens the
conversation, the verify and help screens open safely, commands stay private,
folders are confirmed with their size, stalled transfers and ticks tell the truth."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from textual.containers import VerticalScroll
from textual.widgets import Button, Static

from p2pchat.core.events import (
    MessageReceived,
    MessageStateChanged,
    TransferProgress,
    TypingChanged,
)
from p2pchat.identity import Identity
from p2pchat.net.control import ControlClient
from p2pchat.owner import answers
from p2pchat.store import Store
from p2pchat.ui.files import TransferInfo, status_text
from p2pchat.ui.messages import NodeEventArrived
from p2pchat.ui.screens.files import ConfirmSendScreen, FilePickerScreen
from p2pchat.ui.screens.help import HelpScreen
from p2pchat.ui.screens.quit import QuitScreen
from p2pchat.ui.screens.verify import VerifyScreen
from p2pchat.ui.widgets import TransferCard

from ..conftest import EventLog, StartNode, make_home
from ..daemons import Daemon, cli_env, free_udp_port
from .conftest import app_for, main_screen, showing, until
from .test_flows import befriend, chatting, row_for, type_text, widget_text


def test_a_renamed_duplicate_is_named_on_the_card() -> None:
    info = TransferInfo(
        transfer_id="ab" * 16,
        peer_id="p",
        direction="in",
        state="done",
        files=(("small.txt", 10),),
        total=10,
        done=10,
        created_at=0.0,
        folder="/srv/in",
        saved=("/srv/in/small (1).txt",),
    )
    assert "as small (1).txt (the name was taken)" in status_text(info, "bob")


async def test_restart_reopens_the_conversation_that_was_open(tmp_path: Path) -> None:
    paths = make_home(tmp_path, "alice")
    bob, carol = Identity.generate().peer_id, Identity.generate().peer_id
    app = app_for(paths)
    async with app.run_test(size=(100, 30)) as pilot:
        main = await main_screen(pilot)
        node = main.node
        node.add_contact(bob, name="bob")
        node.add_contact(carol, name="carol")
        node.send_message("bob", "bob is the most recent")
        main.open_conversation(carol)
        await pilot.press("ctrl+q", "enter")
    again = app_for(paths)
    async with again.run_test(size=(100, 30)) as pilot:
        main = await main_screen(pilot)
        assert main.current == carol  # not bob, at the top of the list


async def test_quit_says_it_takes_you_offline_and_can_hand_the_node_to_a_daemon(
    tmp_path: Path,
) -> None:
    paths = make_home(tmp_path, "alice")
    app = app_for(paths)
    async with app.run_test(size=(100, 30)) as pilot:
        main = await main_screen(pilot)
        await pilot.press("ctrl+q")
        await until(pilot, lambda: showing(app, QuitScreen))
        text = " ".join(str(s.content) for s in app.screen.query(Static))
        assert "takes you offline" in text
        await pilot.press("escape")  # stay
        await until(pilot, lambda: app.screen is main)
        assert app.node is not None and app.node.running
        await pilot.press("ctrl+q")
        await until(pilot, lambda: showing(app, QuitScreen))
        await pilot.click("#background")
        await until(pilot, lambda: app._exit_renderables or app.return_code is not None, 60)
    try:
        assert await answers(paths)  # a daemon runs the node now
    finally:
        client = ControlClient(paths.control_socket)
        await client.connect()
        try:
            await client.call("shutdown", {})
        finally:
            await client.close()
        for _ in range(100):
            if not await answers(paths):
                break
            await asyncio.sleep(0.1)


async def test_verify_opens_on_close_and_help_at_the_top(tmp_path: Path) -> None:
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(60, 20)) as pilot:
        main = await main_screen(pilot)
        bob = Identity.generate().peer_id
        main.node.add_contact(bob, name="bob")
        await until(pilot, lambda: main.current == bob)
        await pilot.press("f2")
        await until(pilot, lambda: showing(app, VerifyScreen))
        focused = app.focused
        assert isinstance(focused, Button) and focused.id == "close"
        toggle = app.screen.query_one("#toggle", Button)
        assert toggle.region.bottom <= 20 and app.screen.find_widget(toggle)  # in view at 60x20
        await pilot.press("enter")  # one Enter closes; it does not verify
        await until(pilot, lambda: app.screen is main)
        assert not main.node.find_contact(bob).verified
        await pilot.press("f1")
        await until(pilot, lambda: showing(app, HelpScreen))
        await pilot.pause()
        card = app.screen.query_one("#help-card", VerticalScroll)
        assert card.scroll_y == 0
        keys = str(app.screen.query_one("#help-keys", Static).content)
        assert "Add contact" in keys
        for internal in ("Select all", "Delete to", "Cursor", "Undo"):
            assert internal.lower() not in keys.lower()


async def test_commands_are_not_typing(tmp_path: Path, start_node: StartNode) -> None:
    bob = await start_node("bob")
    log = EventLog(bob)
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(100, 30)) as pilot:
        main = await main_screen(pilot)
        node = main.node
        befriend(node, bob)
        await until(pilot, lambda: node.is_online(bob.peer_id) and bob.is_online(node.peer_id))
        await until(pilot, lambda: main.current == bob.peer_id)
        await type_text(pilot, "/rename Robert")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await until(pilot, lambda: node.find_contact(bob.peer_id).name == "Robert")
        await type_text(pilot, "hi")  # a message is typing
        await until(pilot, lambda: bool(log.of(TypingChanged)))
        starts = [e for e in log.of(TypingChanged) if isinstance(e, TypingChanged) and e.active]
        assert len(starts) == 1
    await log.close()


async def test_sending_a_folder_asks_with_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    for n in range(3):
        (home / "docs" / f"f{n}.bin").write_bytes(b"x" * 1024 * 512)
    monkeypatch.setenv("HOME", str(home))
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 36)) as pilot:
        main = await main_screen(pilot)
        bob = Identity.generate().peer_id
        main.node.add_contact(bob, name="bob")
        await until(pilot, lambda: main.current == bob)
        await pilot.press("ctrl+o")
        await until(pilot, lambda: showing(app, FilePickerScreen))
        await pilot.click("#send-folder")  # the home folder: asks first
        await until(pilot, lambda: showing(app, ConfirmSendScreen))
        size = app.screen.query_one("#confirm-size", Static)
        await until(pilot, lambda: "In all: 3 files, 1.5 MiB" in str(size.content))
        await pilot.click("#no")
        await until(pilot, lambda: showing(app, FilePickerScreen))
        assert main.node.list_transfers() == []


async def test_ticks_follow_the_node_back_to_queued_and_stalls_are_said(
    tmp_path: Path,
) -> None:
    paths = make_home(tmp_path, "alice")
    bob = Identity.generate().peer_id
    app = app_for(paths)
    async with app.run_test(size=(120, 36)) as pilot:
        main = await main_screen(pilot)
        node = main.node
        node.add_contact(bob, name="bob")
        await until(pilot, lambda: main.current == bob)
        message = node.send_message("bob", "are you there?")
        await until(pilot, lambda: len(main.conversation.message_items()) == 1)
        item = main.conversation.message_items()[0]
        for state in ("sent", "queued"):
            main.post_message(NodeEventArrived(MessageStateChanged(bob, message.id, state)))
            await until(pilot, lambda s=state: item.state == s)  # type: ignore[misc]
        transfer_id = "ef" * 16
        with Store(paths.database) as store:
            store.create_transfer(
                transfer_id,
                bob,
                direction="in",
                state="pending",
                files=[("big.iso", 100 << 20, bytes(32), None)],
                now=node.clock(),
            )
            store.set_transfer_state(transfer_id, "receiving", now=node.clock())
        main.open_conversation(bob, reload=True)
        event = TransferProgress(transfer_id, bob, "in", 10 << 20, 100 << 20, 50e6)
        main.post_message(NodeEventArrived(event))
        card = main.conversation.card(transfer_id)
        assert isinstance(card, TransferCard)
        await until(pilot, lambda: "MiB/s" in card.status)
        await until(pilot, lambda: card.status.startswith("stalled"), 15)
        assert "/s" not in card.status and "left" not in card.status


async def test_a_message_sent_with_the_cli_appears_in_the_open_conversation(
    tmp_path: Path,
) -> None:
    paths = make_home(tmp_path, "alice")
    bob = Identity.generate().peer_id
    app = app_for(paths)
    async with app.run_test(size=(100, 30)) as pilot:
        main = await main_screen(pilot)
        main.node.add_contact(bob, name="bob")
        await until(pilot, lambda: main.current == bob)
        # `p2pchat msg` reaches the app's node over its control socket.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "p2pchat", "--home", str(paths.home),
            "msg", "bob", "written in a shell", "--wait", "0",
            env=cli_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out
        await until(
            pilot,
            lambda: (
                [i.line.body for i in main.conversation.message_items()] == ["written in a shell"]
            ),
        )


async def test_a_killed_contact_goes_offline_and_its_ticks_go_back_to_queued(
    tmp_path: Path,
) -> None:
    bob = Daemon(make_home(tmp_path, "bob").home, f"127.0.0.1:{free_udp_port()}")
    await bob.start()
    app = app_for(make_home(tmp_path, "alice"))
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            main = await main_screen(pilot)
            node = main.node
            info = await bob.call("info")
            node.add_contact(info["peer_id"], name="bob", addresses=[bob.listen])
            await bob.call("add", ref=node.invite(), name="alice")
            await until(pilot, lambda: row_for(main, "bob").startswith("●"), 30)
            await bob.kill()
            loop = asyncio.get_running_loop()
            killed = loop.time()
            await type_text(pilot, "are you still there?")
            await pilot.press("enter")
            await until(pilot, lambda: len(main.conversation.message_items()) == 1)
            item = main.conversation.message_items()[0]
            await until(pilot, lambda: row_for(main, "bob").startswith("○"), 15)
            offline_after = loop.time() - killed
            await until(pilot, lambda: item.state == "queued", 15)
            assert "are you still there? …" in widget_text(item)
            assert offline_after < 10, f"shown offline only after {offline_after:.1f} s"
    finally:
        await bob.stop()


async def test_mute_block_unblock_and_remove_from_the_app(tmp_path: Path) -> None:
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 36)) as pilot:
        main = await main_screen(pilot)
        node = main.node
        bob, carol = Identity.generate().peer_id, Identity.generate().peer_id
        node.add_contact(carol, name="carol")
        node.add_contact(bob, name="bob")
        main.open_conversation(bob)
        await type_text(pilot, "/mute")
        await pilot.press("enter")
        await until(pilot, lambda: node.find_contact(bob).muted)
        await until(pilot, lambda: "muted" in row_for(main, "bob"))
        main.open_conversation(carol)
        event = MessageReceived(bob, "m1", 1, "psst", node.clock(), node.clock())
        main.post_message(NodeEventArrived(event))
        await pilot.pause(0.4)
        assert f"msg:{bob}" not in main.notices.notices  # muted: no notice
        titles = [title for title, _, _ in app.palette_commands()]
        assert "Mute carol" in titles and "Block carol" in titles and "Remove carol" in titles
        main.open_conversation(bob)
        await type_text(pilot, "/block")
        await pilot.press("enter")
        await until(pilot, lambda: [b.peer_id for b in node.blocked()] == [bob])
        await until(pilot, lambda: "blocked" in row_for(main, "bob"))
        assert "Unblock bob" in [title for title, _, _ in app.palette_commands()]
        await type_text(pilot, "/unblock bob")
        await pilot.press("enter")
        await until(pilot, lambda: node.blocked() == [])
        await type_text(pilot, "/remove")
        await pilot.press("enter")
        await until(pilot, lambda: row_for(main, "bob") == "")
        assert main.current == carol
        assert [c.peer_id for c in node.contacts()] == [carol]


async def test_reply_edit_and_delete_show_on_both_sides(
    tmp_path: Path, start_node: StartNode
) -> None:
    bob = await start_node("bob")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 36)) as pilot:
        main = await main_screen(pilot)
        await chatting(pilot, main, bob)
        bob.send_message("alice", "lunch at noon?")
        await until(pilot, lambda: len(main.conversation.message_items()) == 1)
        await type_text(pilot, "/reply sure, see you there")
        await pilot.press("enter")
        await until(pilot, lambda: len(main.conversation.message_items()) == 2)
        reply = main.conversation.message_items()[-1]
        assert "↪ bob: lunch at noon?" in widget_text(reply)

        def bobs_copy() -> list[tuple[str, str | None, bool, bool]]:
            return [
                (m.body, m.reply_to, m.edited_at is not None, m.deleted_at is not None)
                for m in bob.history("alice")
                if m.direction == "in"
            ]

        await until(pilot, lambda: bobs_copy()[-1:][0][1] is not None if bobs_copy() else False)
        await type_text(pilot, "/edit sure, see you at 12:15")
        await pilot.press("enter")
        await until(pilot, lambda: "(edited)" in widget_text(reply))
        assert "sure, see you at 12:15" in widget_text(reply)
        await until(pilot, lambda: bobs_copy()[-1][:1] == ("sure, see you at 12:15",))
        assert bobs_copy()[-1][2]  # edited on bob's side too
        await type_text(pilot, "/delete")
        await pilot.press("enter")
        await until(pilot, lambda: "message deleted" in widget_text(reply))
        await until(pilot, lambda: bobs_copy()[-1][3])  # a tombstone on bob's side
        # Bob edits and deletes his own: the app shows both.
        theirs = main.conversation.message_items()[0]
        original = next(m for m in bob.history("alice") if m.direction == "out")
        bob.edit_message(original.id, "lunch at 1?")
        await until(pilot, lambda: "lunch at 1? (edited)" in widget_text(theirs))
        bob.delete_message(original.id)
        await until(pilot, lambda: "message deleted" in widget_text(theirs))

"""Everyday chat features, driven with Pilot against real nodes: any message can be
selected (its full date and time shown) and replied to, edited, deleted or have its
link opened; a line marks where unread messages start; scrolled up, new messages are
counted below and Ctrl+End jumps to them; older history pages in as the user scrolls
up; /search finds a message anywhere and shows it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from p2pchat.identity import Identity
from p2pchat.node import Node
from p2pchat.ui import files as files_module
from p2pchat.ui.screens.confirm import ChoiceScreen
from p2pchat.ui.screens.search import SearchScreen
from p2pchat.ui.widgets.conversation import HistoryEdge, MessageItem, UnreadMarker

from ..conftest import StartNode, make_home
from ..history import fill_history, history_body
from .conftest import app_for, main_screen, recording_opener, showing, until
from .test_flows import befriend, chatting, type_text, widget_text


def unread_count(node: Node, contact: str) -> int:
    return sum(m.direction == "in" and m.state == "delivered" for m in node.history(contact))


async def test_any_message_can_be_replied_to_edited_and_deleted(
    tmp_path: Path, start_node: StartNode
) -> None:
    bob = await start_node("bob")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 36)) as pilot:
        main = await main_screen(pilot)
        node = main.node
        await chatting(pilot, main, bob)
        view = main.conversation
        first = bob.send_message("alice", "first from bob")
        await until(pilot, lambda: len(view.message_items()) == 1)
        mine = node.send_message("bob", "my older one")
        view.add_line(main.chat.line(mine, "bob"))
        bob.send_message("alice", "latest from bob")
        await until(pilot, lambda: len(view.message_items()) == 3)
        # Ctrl+Up selects the newest message; Up goes to older ones.
        await pilot.press("ctrl+up")
        await until(pilot, lambda: isinstance(view.selected, MessageItem))
        assert view.timeline.has_focus
        assert isinstance(view.selected, MessageItem)
        assert view.selected.line.body == "latest from bob"
        await pilot.press("up", "up")
        await until(pilot, lambda: getattr(view.selected, "line", None) is not None)
        selected = view.selected
        assert isinstance(selected, MessageItem) and selected.line.body == "first from bob"
        # Its full date and time, and what the keys do.
        detail = view.detail_text
        assert re.match(r"\w{3} \d{1,2} \w{3} \d{4}, \d\d:\d\d:\d\d \S+", detail), detail
        assert "r reply" in detail and "e edit" not in detail  # not ours to edit
        # r: the message box answers that message (not the latest).
        await pilot.press("r")
        await until(pilot, lambda: main.composer.has_focus)
        assert main.composer.context is not None and main.composer.context.kind == "reply"
        await type_text(pilot, "answering the first")
        await pilot.press("enter")
        await until(
            pilot,
            lambda: any(
                m.body == "answering the first" and m.reply_to == first.id
                for m in bob.history("alice")
            ),
        )
        assert main.composer.context is None
        reply = view.message_items()[-1]
        assert "↪ bob: first from bob" in widget_text(reply)
        # e on an older message of ours: its text in the box, Enter changes it for both.
        await pilot.press("ctrl+up")
        await until(pilot, lambda: view.selected is reply)
        await pilot.press("up", "up")
        await until(
            pilot, lambda: getattr(view.selected, "line", None) == view.message(mine.id).line
        )  # type: ignore[union-attr]
        assert "e edit" in view.detail_text and "d delete" in view.detail_text
        await pilot.press("e")
        await until(pilot, lambda: main.composer.text == "my older one")
        main.composer.load_text("my older one, edited")
        await pilot.press("enter")
        await until(pilot, lambda: "(edited)" in widget_text(view.message(mine.id)))  # type: ignore[arg-type]
        await until(
            pilot,
            lambda: any(m.body == "my older one, edited" for m in bob.history("alice")),
        )
        # Escape drops an edit without changing anything.
        await pilot.press("ctrl+up", "up", "up")
        await until(pilot, lambda: view.selected is view.message(mine.id))
        await pilot.press("e")
        await until(pilot, lambda: main.composer.context is not None)
        await pilot.press("escape")
        await until(pilot, lambda: main.composer.context is None and main.composer.text == "")
        # d asks first, then deletes it for both sides.
        await pilot.press("ctrl+up", "up", "up")
        await until(pilot, lambda: view.selected is view.message(mine.id))
        await pilot.press("d")
        await until(pilot, lambda: showing(app, ChoiceScreen))
        await pilot.press("enter")  # "Delete for both"
        await until(pilot, lambda: app.screen is main)
        await until(pilot, lambda: "message deleted" in widget_text(view.message(mine.id)))  # type: ignore[arg-type]
        await until(
            pilot,
            lambda: any(
                m.deleted_at is not None for m in bob.history("alice") if m.direction == "in"
            ),
        )
        # Escape goes back to the message box and the selection ends.
        await pilot.press("ctrl+up", "escape")
        await until(pilot, lambda: main.composer.has_focus and view.selected is None)
        assert view.detail_text == ""


async def test_a_link_in_a_message_opens(
    tmp_path: Path, start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "opened"
    monkeypatch.setattr(files_module, "opener_argv", recording_opener(marker))
    bob = await start_node("bob")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 36)) as pilot:
        main = await main_screen(pilot)
        await chatting(pilot, main, bob)
        view = main.conversation
        bob.send_message("alice", "the doc: https://example.org/doc?id=1.")
        await until(pilot, lambda: len(view.message_items()) == 1)
        await pilot.press("ctrl+up")
        await until(pilot, lambda: "o open link" in view.detail_text)
        await pilot.press("o")
        await until(pilot, lambda: marker.exists())
        assert marker.read_text() == "https://example.org/doc?id=1"
        # Several links: a list to pick from (shown literally), then the one picked.
        marker.unlink()
        bob.send_message("alice", "[red]a[/] http://a.example/ or https://b.example/x")
        await until(pilot, lambda: len(view.message_items()) == 2)
        await pilot.press("down")  # the newer one
        await until(pilot, lambda: "open a link (2)" in view.detail_text)
        await pilot.press("o")
        await until(pilot, lambda: showing(app, ChoiceScreen))
        await pilot.press("down", "enter")
        await until(pilot, lambda: marker.exists())
        assert marker.read_text() == "https://b.example/x"


async def test_unread_line_new_messages_below_and_jump_to_latest(
    tmp_path: Path, start_node: StartNode
) -> None:
    bob = await start_node("bob")
    paths = make_home(tmp_path, "alice")
    app = app_for(paths)
    async with app.run_test(size=(100, 30)) as pilot:
        main = await main_screen(pilot)
        node = main.node
        befriend(node, bob)
        for i in range(40):  # enough to scroll
            node.send_message("bob", history_body(i))
        carol = Identity.generate().peer_id
        node.add_contact(carol, name="carol")  # open while bob writes
        main.open_conversation(carol)
        await until(pilot, lambda: node.is_online(bob.peer_id) and bob.is_online(node.peer_id))
        for i in range(3):
            bob.send_message("alice", f"unread {i}")
        await until(pilot, lambda: unread_count(node, "bob") == 3)
        main.open_conversation(bob.peer_id)
        view = main.conversation
        await until(pilot, lambda: view.unread_marker is not None)
        marker = view.unread_marker
        assert isinstance(marker, UnreadMarker)
        rows = list(view.timeline.children)
        after = rows[rows.index(marker) + 1]
        assert isinstance(after, MessageItem) and after.line.body == "unread 0"
        assert "new messages" in widget_text(marker)
        # Scrolled up, arriving messages are counted below instead of pulling the view.
        view.timeline.scroll_home(animate=False)
        await until(pilot, lambda: view.timeline.scroll_y == 0 and not view.timeline.following)
        bob.send_message("alice", "while you read old ones")
        await until(pilot, lambda: "1 new message below" in view.below_text)
        assert view.timeline.scroll_y < view.timeline.max_scroll_y
        bob.send_message("alice", "and another")
        await until(pilot, lambda: "2 new messages below" in view.below_text)
        # Ctrl+End: the newest message in view, the line gone.
        await pilot.press("ctrl+end")
        await until(pilot, lambda: view.below_text == "" and view.timeline.following)
        await until(pilot, lambda: view.timeline.scroll_y >= view.timeline.max_scroll_y)
        assert main.composer.has_focus
        newest = view.message_items()[-1]
        assert newest.line.body == "and another" and newest.region.height > 0


async def test_older_history_pages_in_while_scrolling_up(tmp_path: Path) -> None:
    paths = make_home(tmp_path, "alice")
    app = app_for(paths, network=False)
    bob = Identity.generate().peer_id
    async with app.run_test(size=(100, 30)) as pilot:
        main = await main_screen(pilot)
        node = main.node
        node.add_contact(bob, name="bob")
        fill_history(node.store, bob, 520)
        main.open_conversation(bob, reload=True)
        view = main.conversation
        await until(pilot, lambda: len(view.message_items()) == 300)
        await until(pilot, lambda: bool(view.timeline.query(HistoryEdge)))
        edge = view.timeline.query_one(HistoryEdge)  # a visible sign there is more
        assert "older messages" in str(edge.render())
        top = view.message_items()[0]
        assert top.line.body == history_body(220)
        await until(pilot, lambda: view.timeline.scroll_y > 0)  # opened at the newest
        view.timeline.scroll_home(animate=False)
        await until(pilot, lambda: len(view.message_items()) == 400)
        # The rows being read stay where they were: the old first one is still on screen.
        await until(pilot, lambda: view.timeline.scroll_y > 0)
        await until(
            pilot,
            lambda: top.region.height > 0 and view.timeline.region.contains_region(top.region),
        )
        view.timeline.scroll_home(animate=False)
        await until(pilot, lambda: len(view.message_items()) == 500)
        # The page keeps the reader's place after a refresh: only a move from there to
        # the top asks for the next page (scrolling "home" while already at 0 is none).
        await until(pilot, lambda: view.timeline.scroll_y > 0)
        view.timeline.scroll_home(animate=False)
        await until(pilot, lambda: len(view.message_items()) == 520)
        shown = [c for c in view.timeline.children if isinstance(c, MessageItem)]
        assert [item.line.body for item in shown] == [history_body(i) for i in range(520)]
        await until(pilot, lambda: not view.timeline.query(HistoryEdge))
        assert not view.has_more
        # Up on the first message asks for more as well (nothing left here) and stays.
        await pilot.press("ctrl+up", "home", "up")
        await until(pilot, lambda: view.selected is shown[0])
        # Jumping to the latest reads the conversation afresh at its usual size.
        await pilot.press("ctrl+end")
        await until(pilot, lambda: len(view.message_items()) == 300)


async def test_search_finds_a_message_and_shows_it(tmp_path: Path) -> None:
    paths = make_home(tmp_path, "alice")
    app = app_for(paths, network=False)
    bob, carol = Identity.generate().peer_id, Identity.generate().peer_id
    async with app.run_test(size=(100, 30)) as pilot:
        main = await main_screen(pilot)
        node = main.node
        node.add_contact(bob, name="bob")
        node.add_contact(carol, name="carol")
        fill_history(node.store, bob, 700)
        node.send_message("carol", "the zeppelin lands at dawn")
        main.open_conversation(carol)
        await type_text(pilot, "/search zeppelin")
        await pilot.press("enter")
        await until(pilot, lambda: showing(app, SearchScreen))
        screen = app.screen
        assert isinstance(screen, SearchScreen)
        await until(pilot, lambda: len(screen.results) == 1)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)
        # A message far back in bob's history (beyond what the pane first shows).
        wanted = history_body(7)
        await type_text(pilot, f"/search {wanted.split()[0]}")
        await pilot.press("enter")
        await until(pilot, lambda: showing(app, SearchScreen))
        screen = app.screen
        assert isinstance(screen, SearchScreen)
        await until(pilot, lambda: bool(screen.results))
        index = next(i for i, m in enumerate(screen.results) if m.body == wanted)
        await pilot.press(*["down"] * index, "enter")
        await until(pilot, lambda: app.screen is main and main.current == bob)
        await until(pilot, lambda: getattr(view_selected(main), "body", None) == wanted)
        assert main.conversation.timeline.has_focus


def view_selected(main: object) -> object:
    selected = main.conversation.selected  # type: ignore[attr-defined]
    return selected.line if isinstance(selected, MessageItem) else None

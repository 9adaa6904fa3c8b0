"""Text that peers control is shown literally everywhere: never markup, never control bytes.

The walk below puts hostile strings in every field a peer (or the LAN, or an
error reply) can fill: a contact's display name, message bodies, a contact
request's name, preview and address, a nearby peer's name, file names of
offers and received files, transfer errors, the address of a key mismatch.
It then opens every screen and modal of the app and checks, on each, that

- nothing raised (a ``MarkupError`` once closed the app for good);
- no string containing a hostile marker was ever handed to a markup parser
  (Textual's or Rich's), whether or not the parse happened to succeed;
- the hostile text is on screen as typed (``[red]EVIL[/]`` with its brackets);
- no control, format or surrogate character is in anything the screen draws.
"""

from __future__ import annotations

import sqlite3
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import rich.markup
import textual.markup
from hypothesis import given
from hypothesis import strategies as st
from textual import events
from textual.app import App
from textual.command import CommandPalette
from textual.content import Content
from textual.pilot import Pilot
from textual.widgets import Input

from p2pchat.config import Paths, load_settings, save_settings
from p2pchat.core.events import (
    ContactRequestReceived,
    MessageReceived,
    PeerKeyMismatch,
    TransferOffered,
    TransferStateChanged,
    TypingChanged,
)
from p2pchat.store import Store
from p2pchat.ui.app import ChatApp
from p2pchat.ui.desktop import notifier_command
from p2pchat.ui.messages import NodeEventArrived
from p2pchat.ui.safe import MAX_MARKS, clean, literal, one_line
from p2pchat.ui.screens.confirm import ChoiceScreen
from p2pchat.ui.screens.contacts import AddContactScreen, RequestScreen
from p2pchat.ui.screens.files import (
    ConfirmSendScreen,
    FilePickerScreen,
    FolderPickerScreen,
    OfferScreen,
    TransfersScreen,
)
from p2pchat.ui.screens.help import HelpScreen
from p2pchat.ui.screens.search import SearchScreen
from p2pchat.ui.screens.setup import (
    FatalScreen,
    FirstRunScreen,
    InviteScreen,
    NodeBusyScreen,
    PassphraseScreen,
)
from p2pchat.ui.screens.verify import VerifyScreen
from p2pchat.ui.widgets import Composer, ErrorLine
from p2pchat.ui.widgets.sidebar import NEARBY, REQUEST

from .conftest import fixed_home, main_screen, showing, until, write_fixed_identity
from .scene import NOW, frozen_clock

MARK = "EVIL"
MARKUP = "[red]EVIL[/] [link=file:///etc/passwd][reverse]EVIL[/][/link] [@click=app.quit]EVIL[/]"
MARKUP_2 = "[$text]EVIL[/] [ bold]EVIL [/] [/link] [#f00 on red]EVIL ["
ANSI = "\x1b[31mEVIL\x1b[0m \x1b]52;c;aGk=\x07 \x1b]0;EVIL\x07 \x9b2J\x00\x08\rEVIL"
BIDI = "\u202egnp.exe\u202c \u2066EVIL\u2069 \u200f\u061c"
ZERO_WIDTH = "E\u200bV\u200dI\ufeffL\u2060\u00ad \U000e0041tag"
ZALGO = "Z" + "\u0300\u0301\u0302" * 30 + "algo"
LONG = "N" * 10_000
# A display name with all of it; the visible part starts with the markup.
HOSTILE_NAME = f"{MARKUP} {ANSI} {BIDI} {ZERO_WIDTH} {ZALGO} {LONG}"
# Links are offered to open: their text is peer text like the rest.
LINKS = "https://a.example/\x1b[31mEVIL https://b.example/[red]EVIL[/]"
BODIES = ("x" + LONG, MARKUP, MARKUP_2, ANSI, BIDI, ZERO_WIDTH, ZALGO, LINKS)
FILE_NAMES = ("[red]EVIL[/].txt", "\x1b[31mEVIL\x1b[0m.bin", "\u202egnp.exe", "E\u200bVIL.doc")
# On disk ("/" cannot be in a file name): what a received file may be called.
DISK_NAMES = ("[red]EVIL.txt", "[@click=app.quit]EVIL", "\x1b[31mEVIL\x1b[0m.bin", "\u202egnp.exe")

# What must be on screen, verbatim, wherever the hostile data is shown.
LITERAL = "[red]EVIL[/]"

OFFER_ID = "e5" * 16
DONE_ID = "f6" * 16
FAILED_ID = "a7" * 16


# ------------------------------------------------------------------ the rule
def test_clean_shows_controls_and_drops_invisible_characters() -> None:
    assert clean("a\x1b[31mb") == "a␛[31mb"
    assert clean("\x00\x07\x7f\x9b") == "␀␇␡\ufffd"
    assert clean("\u202egnp.exe\u202c") == "gnp.exe"
    assert clean("E\u200bV\u200dI\ufeffL") == "EVIL"
    assert clean("a\r\nb\tc\u2028d") == "a b c d"
    assert clean("a\r\nb\tc\u2028d", multiline=True) == "a\nb    c\nd"
    assert clean(MARKUP) == MARKUP  # brackets are text: the widgets must not parse them
    assert clean("Z" + "\u0300" * 50) == "Z" + "\u0300" * MAX_MARKS
    assert clean(LONG, limit=20) == "N" * 19 + "…"
    assert one_line(" a \n\n b ", 10) == "a b"


@given(st.text(max_size=200))
def test_clean_output_has_no_control_or_format_characters(text: str) -> None:
    for multiline in (False, True):
        shown = clean(text, multiline=multiline)
        bad = [
            ch
            for ch in shown
            if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")
            and not (multiline and ch == "\n")
        ]
        assert not bad
        assert clean(shown, multiline=multiline) == shown  # idempotent
        content = literal(text, multiline=multiline)
        assert content.plain == shown and not content.spans


@given(st.text(alphabet="[]/$@=#\\ abc", max_size=40))
def test_literal_is_never_markup(text: str) -> None:
    assert Content.from_markup(literal(text)).plain == text


def test_desktop_notification_arguments_are_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = tmp_path / "notify-send"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "linux")
    command = notifier_command(HOSTILE_NAME, ANSI + " <b>bold</b> " + BIDI)
    assert command is not None
    assert command[-1].startswith("␛[31mEVIL␛[0m") and "&lt;b&gt;bold&lt;/b&gt;" in command[-1]
    for arg in command:
        assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in arg)


# ------------------------------------------------------------------ helpers
class MarkupSpy:
    """Every string given to a markup parser while the app runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.parsed: list[str] = []
        textual_parse = textual.markup.to_content
        rich_parse = rich.markup.render

        def spy_textual(markup: str, *args: Any, **kwargs: Any) -> Any:
            self.parsed.append(markup)
            return textual_parse(markup, *args, **kwargs)

        def spy_rich(markup: str, *args: Any, **kwargs: Any) -> Any:
            self.parsed.append(markup)
            return rich_parse(markup, *args, **kwargs)

        monkeypatch.setattr(textual.markup, "to_content", spy_textual)
        monkeypatch.setattr(rich.markup, "render", spy_rich)

    def check(self) -> None:
        leaked = [text for text in self.parsed if MARK in text or "\x1b" in text]
        assert not leaked, f"peer text parsed as markup: {leaked[:3]!r}"


def screen_lines(app: App[Any]) -> list[str]:
    """What the top screen draws, line by line (modals include what they cover)."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def check_screen(app: App[Any], *expected: str) -> str:
    """No control or invisible characters drawn; every ``expected`` text on screen."""
    strips = app.screen._compositor.render_strips()
    for strip in strips:
        for segment in strip:
            assert segment.control is None
            bad = [
                hex(ord(ch))
                for ch in segment.text
                if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")
            ]
            assert not bad, f"{bad} drawn in {segment.text!r}"
    text = "\n".join(strip.text for strip in strips)
    for wanted in expected:
        assert wanted in text, f"{wanted!r} is not on screen:\n{text}"
    return text


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.pause()
    await pilot.pause(0.2)  # the main screen's flush interval
    await pilot.pause()


def hostile_home(root: Path) -> tuple[Paths, dict[str, str]]:
    """A home whose contact, request, messages and transfers carry hostile text.

    Rows are written with SQL where the store would refuse a value (a 10,000
    character name): the screen must cope with whatever is in the database.
    """
    paths, _me = fixed_home(root, "alice", 0x11, "127.0.0.1:47480")
    settings = load_settings(paths)
    settings["name"] = "me [red]EVIL[/]"
    save_settings(paths, settings)
    ids = {
        name: write_fixed_identity(Paths(root / f"peer-{name}"), bytes([seed]) * 32)
        for name, seed in (("dave", 0x12), ("erin", 0x13), ("frank", 0x14), ("gina", 0x15))
    }
    dave, erin, frank = ids["dave"], ids["erin"], ids["frank"]
    store = Store(paths.database)
    try:
        store.add_contact(dave, "dave", addresses=("127.0.0.1:47481",), now=NOW - 3600)
        store.add_contact(erin, "erin", addresses=("127.0.0.1:47482",), now=NOW - 7200)
        for seq, body in enumerate(BODIES, start=1):
            store.receive_message(
                dave,
                message_id=f"in-{seq}",
                seq=seq,
                base=1,
                body=body,
                sent_at=NOW - 600 + seq,
                now=NOW - 600 + seq,
            )
            store.queue_message(dave, body, now=NOW - 500 + seq)
        store.add_request(
            frank, name="frank", address="127.0.0.1:47483", preview="hello", now=NOW - 60
        )
        hash_ = bytes(32)
        store.create_transfer(
            DONE_ID,
            dave,
            direction="in",
            state="pending",
            files=[(name, 1000, hash_, None) for name in FILE_NAMES],
            now=NOW - 400,
        )
        store.set_transfer_folder(DONE_ID, str(root / "Downloads" / "[red]EVIL[/]"))
        store.set_transfer_state(DONE_ID, "done", now=NOW - 390)
        store.create_transfer(
            FAILED_ID,
            dave,
            direction="out",
            state="offered",
            files=[(FILE_NAMES[0], 2000, hash_, str(root / "x"))],
            now=NOW - 300,
        )
        store.set_transfer_state(FAILED_ID, "failed", now=NOW - 290, error=MARKUP + ANSI)
    finally:
        store.close()
    with sqlite3.connect(paths.database) as db:
        db.execute("UPDATE contacts SET name = ? WHERE peer_id = ?", (HOSTILE_NAME, dave))
        db.execute(
            "UPDATE requests SET name = ?, preview = ?, address = ? WHERE peer_id = ?",
            (HOSTILE_NAME, MARKUP + ANSI + BIDI, MARKUP + ANSI, frank),
        )
    return paths, ids


def hostile_files(home: Path) -> list[Path]:
    home.mkdir(parents=True, exist_ok=True)
    made = []
    for name in DISK_NAMES:
        path = home / name
        path.write_bytes(b"x" * 1234)
        made.append(path)
    (home / "[red]EVIL folder").mkdir()
    return made


# --------------------------------------------------------------------- walk
async def test_every_screen_shows_hostile_peer_text_literally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, ids = hostile_home(tmp_path)
    dave, erin, frank, gina = ids["dave"], ids["erin"], ids["frank"], ids["gina"]
    home = tmp_path / "home"
    dropped = hostile_files(home)
    monkeypatch.setenv("HOME", str(home))
    spy = MarkupSpy(monkeypatch)
    app = ChatApp(paths, clock=frozen_clock, network=False)
    async with app.run_test(size=(120, 36)) as pilot:
        main = await main_screen(pilot)
        node = main.node
        main.open_conversation(dave)
        node.peer_discovered(gina, ["127.0.0.1:47484"], source="mdns", name=MARKUP + ANSI)
        await settle(pilot)
        text = check_screen(app, LITERAL, "␛[31mEVIL␛[0m", "gnp.exe", "EVIL")
        assert "[$text]EVIL[/] [ bold]EVIL [/]" in text
        for piece in MARKUP.split(" "):  # a message body; it wraps at its spaces
            assert piece in text
        placeholder = main.composer.placeholder
        assert isinstance(placeholder, Content) and LITERAL in placeholder.plain

        # Events carry peer text too: typing, a key mismatch, messages from
        # another contact (a notification), a request, a failed transfer.
        for event in (
            TypingChanged(dave, True),
            PeerKeyMismatch(dave, MARKUP + ANSI),
            MessageReceived(erin, "ev-1", 1, MARKUP + ANSI, NOW, NOW),
            ContactRequestReceived(frank, HOSTILE_NAME, MARKUP + ANSI),
            TransferStateChanged(FAILED_ID, dave, "out", "failed", MARKUP + ANSI),
        ):
            main.post_message(NodeEventArrived(event))
        await settle(pilot)
        check_screen(app, LITERAL, "is typing…")
        assert MARKUP in main.conversation.banner_text

        # /rename with markup: the name is shown as typed, not in red.
        await pilot.press(*"/rename Ally [red]x[/]")
        await pilot.press("enter")
        await settle(pilot)
        check_screen(app, "Ally [red]x[/]")
        with sqlite3.connect(paths.database) as db:
            db.execute("UPDATE contacts SET name = ? WHERE peer_id = ?", (HOSTILE_NAME, dave))
        main.open_conversation(dave, reload=True)
        main.refresh_sidebar()
        await settle(pilot)

        # Every modal, with the hostile contact, request and nearby peer.
        await pilot.press("f2")
        await until(pilot, lambda: showing(app, VerifyScreen))
        await settle(pilot)
        check_screen(app, LITERAL)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)

        main.show_request(frank)
        await until(pilot, lambda: showing(app, RequestScreen))
        await settle(pilot)
        check_screen(app, LITERAL, "␛[31mEVIL")
        assert app.screen.query_one("#request-name", Input).value.startswith(LITERAL)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)

        main.contact_list.highlighted = main.contact_list.get_option_index(NEARBY + gina)
        main.contact_list.focus()
        await pilot.press("enter")
        await until(pilot, lambda: showing(app, AddContactScreen))
        await settle(pilot)
        check_screen(app)
        assert app.screen.query_one("#add-name", Input).value.startswith(LITERAL)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)

        await pilot.press("f1")
        await until(pilot, lambda: showing(app, HelpScreen))
        await settle(pilot)
        check_screen(app)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)

        # Every row selected in turn: its details line, then what its keys open.
        main.composer.focus()
        await pilot.press("ctrl+up")
        view = main.conversation
        await until(pilot, lambda: view.selected is not None)
        for _ in range(len(view.selectable())):
            await settle(pilot)
            check_screen(app)
            await pilot.press("up")
        theirs = {i.line.body: i for i in view.message_items() if not i.line.outgoing}
        ours = {i.line.body: i for i in view.message_items() if i.line.outgoing}
        view.select(theirs[MARKUP], focus=True)
        await pilot.press("r")
        await until(pilot, lambda: main.composer.context is not None)
        await settle(pilot)
        check_screen(app, "Replying to [red]EVIL[/]")
        await pilot.press("escape")
        await until(pilot, lambda: main.composer.context is None)
        view.select(ours[MARKUP], focus=True)
        await pilot.press("d")
        await until(pilot, lambda: showing(app, ChoiceScreen))
        await settle(pilot)
        check_screen(app, LITERAL)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)
        view.select(theirs[LINKS], focus=True)
        await pilot.press("o")
        await until(pilot, lambda: showing(app, ChoiceScreen))
        await settle(pilot)
        check_screen(app, "https://b.example/[red]EVIL[/]", "https://a.example/")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)
        main.composer.focus()
        await pilot.press(*"/search EVIL")
        await pilot.press("enter")
        await until(pilot, lambda: showing(app, SearchScreen))
        search = app.screen
        assert isinstance(search, SearchScreen)
        await until(pilot, lambda: bool(search.results))
        await settle(pilot)
        check_screen(app, LITERAL)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)

        main.composer.focus()
        await pilot.press("ctrl+o")
        await until(pilot, lambda: showing(app, FilePickerScreen))
        await settle(pilot)
        picker = app.screen
        assert isinstance(picker, FilePickerScreen)
        picker.file_tree.focus()
        for _ in range(len(DISK_NAMES) + 2):
            await pilot.press("down")
        await settle(pilot)
        check_screen(app, "[red]EVIL.txt", "␛[31mEVIL␛[0m.bin", "[red]EVIL folder", "[@click")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)

        main.composer.focus()
        app.post_message(events.Paste(" ".join(f"'{p}'" for p in dropped)))
        await until(pilot, lambda: showing(app, ConfirmSendScreen))
        await settle(pilot)
        check_screen(app, "[red]EVIL.txt")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)

        main.composer.clear()
        with Store(paths.database) as store:
            store.create_transfer(
                OFFER_ID,
                dave,
                direction="in",
                state="pending",
                files=[(name, 1000, bytes(32), None) for name in FILE_NAMES],
                now=NOW,
            )
        files = tuple((name, 1000) for name in FILE_NAMES)
        main.post_message(NodeEventArrived(TransferOffered(OFFER_ID, dave, files, 4000)))
        await until(pilot, lambda: showing(app, OfferScreen))
        await settle(pilot)
        check_screen(app, LITERAL, "␛[31mEVIL␛[0m.bin")
        await pilot.click("#save-as")
        await until(pilot, lambda: showing(app, FolderPickerScreen))
        await settle(pilot)
        check_screen(app, "[red]EVIL folder")
        await pilot.press("escape")
        await until(pilot, lambda: showing(app, OfferScreen))
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)

        await pilot.press("f3")
        await until(pilot, lambda: showing(app, TransfersScreen))
        await settle(pilot)
        check_screen(app, LITERAL, "␛[31mEVIL␛[0m")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)

        await pilot.press("ctrl+p")
        await until(pilot, lambda: showing(app, CommandPalette))
        await settle(pilot)
        check_screen(app, LITERAL)
        await pilot.press(*"EVIL")
        await pilot.pause(0.5)
        check_screen(app, "Open conversation: [")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)
        await settle(pilot)
        check_screen(app, LITERAL)
    spy.check()
    assert app.return_code in (None, 0)


async def test_setup_screens_show_hostile_text_literally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """First run with a hostile name of one's own; the screens that quote errors and paths."""
    spy = MarkupSpy(monkeypatch)
    home = Paths(tmp_path / "[red]EVIL[/] home")
    app = ChatApp(home, clock=frozen_clock, network=False)
    async with app.run_test(size=(100, 36)) as pilot:
        await until(pilot, lambda: showing(app, FirstRunScreen))
        name_field = app.screen.query_one("#name", Input)
        name_field.value = MARKUP + ANSI  # pasted: the field shows, never passes, the escapes
        await settle(pilot)
        assert "\x1b" not in name_field.value and "␛[31mEVIL" in name_field.value
        check_screen(app)
        name_field.value = "[red]EVIL[/] x"  # markup is just text to the name rule
        name_field.focus()
        await pilot.press("enter", "enter", "enter")
        await until(pilot, lambda: showing(app, InviteScreen), 30)
        await settle(pilot)
        check_screen(app, "You are [red]EVIL[/]")
        await pilot.press("enter")
        main = await main_screen(pilot)
        await settle(pilot)
        check_screen(app, LITERAL)
        for screen in (
            FatalScreen(MARKUP, HOSTILE_NAME),
            NodeBusyScreen(str(home.home), HOSTILE_NAME),
        ):
            app.push_screen(screen)
            await until(pilot, lambda s=screen: app.screen is s)  # type: ignore[misc]
            await settle(pilot)
            check_screen(app, LITERAL)
            app.pop_screen()
            await until(pilot, lambda: app.screen is main)

        async def never(secret: str) -> Any:
            raise ValueError(MARKUP + ANSI)

        unlock = PassphraseScreen(str(home.home), never, error=MARKUP + ANSI)
        app.push_screen(unlock)
        await until(pilot, lambda: app.screen is unlock)
        await settle(pilot)
        check_screen(app, LITERAL)
        await pilot.press(*"pw", "enter")
        error = unlock.query_one("#unlock-error", ErrorLine)
        await until(pilot, lambda: "Cannot open" in error.text)
        check_screen(app, LITERAL)
    spy.check()


async def test_a_contact_whose_name_is_markup_can_talk_to_us(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 1 as it was found: a real peer named with markup asks, is accepted, writes."""
    from p2pchat.node import Node

    from ..conftest import free_udp_port, make_home, wait_until

    spy = MarkupSpy(monkeypatch)
    dave = Node(make_home(tmp_path, "dave"))
    dave.set_name("[link=file:///etc/passwd][reverse]EVIL[/][/link] gnp.exe")
    await dave.start(listen=f"127.0.0.1:{free_udp_port()}")
    alice_paths = make_home(tmp_path, "alice")
    try:
        listen = f"127.0.0.1:{free_udp_port()}"
        app = ChatApp(alice_paths, listen=listen)
        async with app.run_test(size=(120, 36)) as pilot:
            main = await main_screen(pilot)
            node = app.node
            assert node is not None
            dave.add_contact(node.invite(), name="alice")
            dave.send_message("alice", "knock knock [red]x[/]")
            await until(pilot, lambda: dave.peer_id in main.contact_list.request_ids, 30)
            main.contact_list.focus()
            main.contact_list.highlighted = main.contact_list.get_option_index(
                REQUEST + dave.peer_id
            )
            await pilot.press("enter")
            await until(pilot, lambda: showing(app, RequestScreen))
            await pilot.click("#accept")
            await until(pilot, lambda: main.current == dave.peer_id)
            await until(pilot, lambda: "knock knock [red]x[/]" in "\n".join(screen_lines(app)))
            await settle(pilot)
            check_screen(app, "[link=file:///etc/passwd][reverse]EVIL[/][/link]")
            dave.send_message("alice", "again")
            await until(pilot, lambda: "again" in "\n".join(screen_lines(app)), 30)
            await wait_until(lambda: node.is_online(dave.peer_id))
        # Dave is at the top of the list now: starting again opens his conversation.
        app = ChatApp(alice_paths, listen=listen)
        async with app.run_test(size=(120, 36)) as pilot:
            main = await main_screen(pilot)
            main.composer.focus()
            await settle(pilot)
            check_screen(app, "[link=file:///etc/passwd][reverse]EVIL[/][/link]")
            assert isinstance(main.query_one(Composer).placeholder, Content)
    finally:
        await dave.stop()
    spy.check()


async def test_groups_show_hostile_names_and_messages_literally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group named with markup, by a contact whose name is hostile, whose messages are
    hostile: the list, the invitation, the conversation, the member list, the notice and
    the palette show all of it as typed."""
    from p2pchat.node import Node
    from p2pchat.ui.screens.groups import GroupInviteScreen, GroupMembersScreen
    from p2pchat.ui.widgets.group_rows import GROUP_INVITE

    from ..conftest import free_udp_port, make_home

    spy = MarkupSpy(monkeypatch)
    bob = Node(make_home(tmp_path, "bob"))
    await bob.start(listen=f"127.0.0.1:{free_udp_port()}")
    try:
        app = ChatApp(make_home(tmp_path, "alice"), listen=f"127.0.0.1:{free_udp_port()}")
        async with app.run_test(size=(120, 36)) as pilot:
            main = await main_screen(pilot)
            node = app.node
            assert node is not None
            node.add_contact(bob.peer_id, name="bob", addresses=bob.addresses)
            bob.add_contact(node.peer_id, name="alice", addresses=node.addresses)
            with sqlite3.connect(node.paths.database) as db:
                db.execute(
                    "UPDATE contacts SET name = ? WHERE peer_id = ?", (HOSTILE_NAME, bob.peer_id)
                )
            await until(pilot, lambda: node.is_online(bob.peer_id), 30)
            gid = bob.groups.create(MARKUP[:60], ["alice"]).group_id
            await until(pilot, lambda: gid in main.contact_list.group_ids, 30)
            await settle(pilot)
            check_screen(app, "[red]EVIL[/] [link=")
            main.contact_list.focus()
            main.contact_list.highlighted = main.contact_list.get_option_index(
                GROUP_INVITE + gid
            )
            await pilot.press("enter")
            await until(pilot, lambda: showing(app, GroupInviteScreen))
            await settle(pilot)
            check_screen(app, "Invitation to the group [red]EVIL[/]", LITERAL)
            await pilot.click("#accept")
            await until(pilot, lambda: main.groups.open_id == gid)
            # (group messages refuse NUL at both ends; every other control stays)
            bob.groups.send(gid, f"{MARKUP} {ANSI.replace(chr(0), '')} {BIDI}")
            await until(pilot, lambda: len(main.conversation.message_items()) == 1, 30)
            await settle(pilot)
            check_screen(app, LITERAL, "␛[31mEVIL␛[0m", "gnp.exe")
            composer = main.query_one(Composer)
            composer.focus()
            composer.load_text("/members")
            await pilot.press("enter")
            await until(pilot, lambda: showing(app, GroupMembersScreen))
            await settle(pilot)
            check_screen(app, "Members of [red]EVIL[/]", LITERAL)
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is main)
            # Elsewhere: the group's news is a notice naming the group and the author.
            main.open_conversation(bob.peer_id)
            bob.groups.send(gid, MARKUP_2)
            await until(pilot, lambda: f"group:{gid}" in main.notices.notices, 30)
            await settle(pilot)
            check_screen(app, "[$text]EVIL[/]")
            await pilot.press("ctrl+p")
            await until(pilot, lambda: showing(app, CommandPalette))
            await pilot.press(*"group")
            await pilot.pause(0.5)
            check_screen(app, "Open group: [red]EVIL[/]")
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is main)
    finally:
        await bob.stop()
    spy.check()

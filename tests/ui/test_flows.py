"""The app driven with Pilot, against real nodes talking QUIC on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

from textual import events
from textual.app import App
from textual.geometry import Region
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Digits, Input, Static, TextArea

from p2pchat.config import Paths, load_settings, save_settings
from p2pchat.core.events import TypingChanged
from p2pchat.identity import (
    Identity,
    Invite,
    PassphraseRequired,
    create_identity,
    key_from_peer_id,
    load_identity,
    safety_number,
)
from p2pchat.node import Node
from p2pchat.ui.screens.contacts import AddContactScreen, RequestScreen
from p2pchat.ui.screens.files import OfferScreen
from p2pchat.ui.screens.help import HelpScreen
from p2pchat.ui.screens.main import MainScreen
from p2pchat.ui.screens.setup import FirstRunScreen, InviteScreen, NodeBusyScreen, PassphraseScreen
from p2pchat.ui.screens.verify import VerifyScreen
from p2pchat.ui.widgets import Composer, MessageItem
from p2pchat.ui.widgets.sidebar import REQUEST

from ..conftest import EventLog, StartNode, free_udp_port, make_home, wait_until
from .conftest import app_for, main_screen, showing, until

Notes = list[tuple[str, str, str]]


def record_notifications(app: App[object]) -> Notes:
    """(title, message, severity) of every notification the app shows."""
    seen: Notes = []
    original = app.notify

    def notify(
        message: str,
        *,
        title: str = "",
        severity: str = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        seen.append((title, message, severity))
        original(message, title=title, severity=severity, timeout=timeout, markup=markup)  # type: ignore[arg-type]

    app.notify = notify  # type: ignore[method-assign]
    return seen


def widget_text(widget: Widget) -> str:
    """What the widget shows on screen, as plain text."""
    width, height = widget.size
    lines = widget.render_lines(Region(0, 0, width, height))
    return "\n".join(strip.text.rstrip() for strip in lines)


def sidebar_rows(screen: MainScreen) -> list[str]:
    rows: list[str] = []
    for option in screen.contact_list.options:
        prompt = option.prompt
        rows.append(getattr(prompt, "plain", str(prompt)))
    return rows


def row_for(screen: MainScreen, name: str) -> str:
    """The list row of contact ``name`` ("" while the list has not caught up yet)."""
    for row in sidebar_rows(screen):
        first = row.split("\n", 1)[0]
        if f" {name}" in first:
            return row
    return ""


def bodies(screen: MainScreen) -> list[str]:
    return [item.line.body for item in screen.conversation.message_items()]


async def type_text(pilot: object, text: str) -> None:
    await pilot.press(*text)  # type: ignore[attr-defined]


def befriend(a: Node, b: Node) -> None:
    a.add_contact(b.peer_id, name=b.name, addresses=b.addresses)
    b.add_contact(a.peer_id, name=a.name, addresses=a.addresses)


async def chatting(pilot: Pilot[object], main: MainScreen, peer: Node) -> None:
    """``peer`` and the app's node become contacts; both online, the peer's conversation open."""
    node = main.node
    befriend(node, peer)
    await until(pilot, lambda: node.is_online(peer.peer_id) and peer.is_online(node.peer_id))
    await until(pilot, lambda: main.current == peer.peer_id)


# --------------------------------------------------------------- first run
async def test_first_run_creates_identity_shows_invite_then_main(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "carol")
    app = app_for(paths)
    async with app.run_test(size=(100, 36)) as pilot:
        await until(pilot, lambda: showing(app, FirstRunScreen))
        await type_text(pilot, "carol")
        await pilot.press("enter", "enter", "enter")  # name, passphrase, again: create
        await until(pilot, lambda: showing(app, InviteScreen))
        assert paths.identity.exists()
        assert load_settings(paths)["name"] == "carol"
        node = app.node
        assert node is not None and node.running
        shown = app.screen.query_one("#invite-text", TextArea).text
        assert shown == node.invite()
        invite = Invite.decode(shown)
        assert invite.peer_id == load_identity(paths.identity).peer_id
        assert invite.name == "carol" and invite.addresses == node.addresses
        await pilot.click("#copy")
        assert app.clipboard == shown
        await pilot.click("#done")
        main = await main_screen(pilot)
        status = str(main.query_one("#status", Static).content)
        assert "carol" in status and node.addresses[0] in status


async def test_first_run_with_passphrase_seals_the_key(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "dora")
    app = app_for(paths)
    async with app.run_test(size=(100, 36)) as pilot:
        await until(pilot, lambda: showing(app, FirstRunScreen))
        await type_text(pilot, "dora")
        await pilot.press("enter")
        await type_text(pilot, "s3cret")
        await pilot.press("enter")
        await type_text(pilot, "s3creX")
        await pilot.press("enter")
        error = app.screen.query_one("#setup-error", Static)
        await until(pilot, lambda: "differ" in str(error.content))
        assert not paths.identity.exists()
        app.screen.query_one("#passphrase2", Input).value = "s3cret"
        await pilot.click("#create")
        await until(pilot, lambda: showing(app, InviteScreen))
    try:
        load_identity(paths.identity)
    except PassphraseRequired:
        pass
    else:
        raise AssertionError("the key file was written in the clear")
    assert load_identity(paths.identity, "s3cret").peer_id


async def test_sealed_identity_asks_for_the_passphrase(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "erin")
    paths.ensure()
    identity = create_identity(paths.identity, "open sesame")
    save_settings(paths, {"name": "erin"})
    app = app_for(paths)
    async with app.run_test(size=(100, 36)) as pilot:
        await until(pilot, lambda: showing(app, PassphraseScreen))
        await type_text(pilot, "wrong")
        await pilot.press("enter")
        error = app.screen.query_one("#unlock-error", Static)
        await until(pilot, lambda: "Wrong passphrase" in str(error.content))
        await type_text(pilot, "open sesame")
        await pilot.press("enter")
        await main_screen(pilot)
        assert app.node is not None and app.node.peer_id == identity.peer_id


async def test_running_daemon_is_explained_and_history_stays_readable(
    tmp_path: Path,
) -> None:
    paths = make_home(tmp_path, "alice")
    daemon = Node(paths)
    await daemon.start()
    bob = Identity.generate().peer_id
    daemon.add_contact(bob, name="bob")
    daemon.send_message("bob", "written by the daemon")
    try:
        app = app_for(paths)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: showing(app, NodeBusyScreen))
            text = " ".join(str(s.content) for s in app.screen.query(Static))
            assert "already running" in text and "control socket" in text
            await pilot.click("#read-only")
            main = await main_screen(pilot)
            assert bodies(main) == ["written by the daemon"]
            assert main.composer.disabled
            assert "read-only" in str(main.query_one("#status", Static).content)
    finally:
        await daemon.stop()


# ------------------------------------------------------------- contacts
async def test_add_contact_by_pasting_the_peers_invite(
    tmp_path: Path, start_node: StartNode
) -> None:
    bob = await start_node("bob")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        await pilot.press("ctrl+n")
        await until(pilot, lambda: showing(app, AddContactScreen))
        modal = app.screen
        assert modal.query_one("#my-invite", TextArea).text == node.invite()
        field = modal.query_one("#add-ref", Input)
        app.post_message(events.Paste(bob.invite()))  # the field has focus
        await until(pilot, lambda: field.value == bob.invite())
        await pilot.click("#add")
        await until(pilot, lambda: app.screen is main and main.current == bob.peer_id)
        assert node.find_contact(bob.peer_id).name == "bob"
        # Bob sees a knock (he never added Alice); once he accepts, she sees him online.
        await wait_until(lambda: any(r.peer_id == node.peer_id for r in bob.requests()))
        bob.accept_request(node.peer_id)
        await until(pilot, lambda: row_for(main, "bob").startswith("●"))
        assert "online" in str(main.conversation.query_one("#conv-header", Static).content)


async def test_incoming_contact_request_is_accepted_from_the_list(
    tmp_path: Path, start_node: StartNode
) -> None:
    bob = await start_node("bob")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        toasts = record_notifications(app)
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        bob.add_contact(node.invite(), name="alice")
        sent = bob.send_message("alice", "hi, it's bob")
        await until(pilot, lambda: bob.peer_id in main.contact_list.request_ids)
        await until(pilot, lambda: f"req:{bob.peer_id}" in main.notices.notices)
        assert toasts == []  # news goes to the notices, not to toasts
        await until(pilot, lambda: "hi, it's bob" in "".join(sidebar_rows(main)))
        contact_list = main.contact_list
        contact_list.focus()
        contact_list.highlighted = contact_list.get_option_index(REQUEST + bob.peer_id)
        await pilot.press("enter")
        await until(pilot, lambda: showing(app, RequestScreen))
        details = str(app.screen.query_one("#request-details", Static).content)
        assert bob.peer_id in details and "hi, it's bob" in details
        await pilot.click("#accept")
        await until(pilot, lambda: main.current == bob.peer_id)
        await until(pilot, lambda: bodies(main) == ["hi, it's bob"])
        assert main.contact_list.request_ids == []
        assert await bob.wait_for_delivery(sent.id, 10) in ("delivered", "read")


# ------------------------------------------------------------ messaging
async def test_ticks_go_from_queued_to_delivered_to_read(tmp_path: Path) -> None:
    alice_paths = make_home(tmp_path, "alice")
    bob = Node(make_home(tmp_path, "bob"))
    alice_id = load_identity(alice_paths.identity).peer_id
    alice_listen = f"127.0.0.1:{free_udp_port()}"
    bob.add_contact(alice_id, name="alice", addresses=[alice_listen])
    app = app_for(alice_paths, listen=alice_listen)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            main = await main_screen(pilot)
            node = app.node
            assert node is not None
            node.add_contact(bob.peer_id, name="bob", addresses=bob.addresses)
            await until(pilot, lambda: main.current == bob.peer_id)
            await type_text(pilot, "hi bob")
            await pilot.press("enter")
            await until(pilot, lambda: bodies(main) == ["hi bob"])
            item = main.conversation.message_items()[0]
            assert item.state == "queued"  # Bob's node is not running yet
            assert "hi bob …" in widget_text(item)
            await bob.start()
            await until(pilot, lambda: item.state == "delivered", 40)
            assert "hi bob ✓✓" in widget_text(item)
            assert not item.has_class("-read")
            bob.mark_read("alice")
            await until(pilot, lambda: item.state == "read")
            assert item.has_class("-read")
            read_style = item.get_component_rich_style("message--tick-read")
            plain_style = item.get_component_rich_style("message--tick")
            assert read_style.color != plain_style.color
    finally:
        await bob.stop()


async def test_received_message_appears_counts_unread_and_is_marked_read(
    tmp_path: Path, start_node: StartNode
) -> None:
    bob = await start_node("bob")
    carol = Identity.generate().peer_id
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        notes = record_notifications(app)
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        node.add_contact(carol, name="carol")
        befriend(node, bob)
        await until(pilot, lambda: node.is_online(bob.peer_id) and bob.is_online(node.peer_id))
        main.open_conversation(carol)
        sent = bob.send_message("alice", "are you there?")
        await until(pilot, lambda: "bob  1 " in row_for(main, "bob"))
        key = f"msg:{bob.peer_id}"
        await until(pilot, lambda: key in main.notices.notices)
        assert main.notices.notices[key].text == "are you there?" and notes == []
        await wait_until(lambda: bob.store.get_message(sent.id).state == "delivered")  # type: ignore[union-attr]
        # Bob's conversation is the most recent, so it sits above Carol's.
        await pilot.press("alt+up")
        assert main.current == bob.peer_id
        await until(pilot, lambda: bodies(main) == ["are you there?"])
        await wait_until(lambda: bob.store.get_message(sent.id).state == "read")  # type: ignore[union-attr]
        await until(pilot, lambda: row_for(main, "bob").startswith("● bob\n"))
        # With the conversation open, new messages are appended and read at once.
        second = bob.send_message("alice", "good")
        await until(pilot, lambda: bodies(main) == ["are you there?", "good"])
        await wait_until(lambda: bob.store.get_message(second.id).state == "read")  # type: ignore[union-attr]


async def test_typing_indicator_both_ways(tmp_path: Path, start_node: StartNode) -> None:
    bob = await start_node("bob")
    log_b = EventLog(bob)
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        befriend(node, bob)
        await until(pilot, lambda: node.is_online(bob.peer_id) and bob.is_online(node.peer_id))
        await until(pilot, lambda: main.current == bob.peer_id)
        bob.set_typing("alice", True)
        await until(pilot, lambda: main.conversation.typing_text == "bob is typing…")
        bob.set_typing("alice", False)
        await until(pilot, lambda: main.conversation.typing_text == "")
        await type_text(pilot, "hel")
        await wait_until(
            lambda: any(isinstance(e, TypingChanged) and e.active for e in log_b.events)
        )
        starts = [e for e in log_b.events if isinstance(e, TypingChanged) and e.active]
        assert len(starts) == 1  # throttled: one signal for a burst of keys
        await pilot.press("l", "o", "enter")
        await wait_until(
            lambda: any(isinstance(e, TypingChanged) and not e.active for e in log_b.events)
        )
    await log_b.close()


async def test_key_mismatch_raises_a_loud_warning(tmp_path: Path, start_node: StartNode) -> None:
    mallory = await start_node("mallory")
    bob = Identity.generate().peer_id
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        toasts = record_notifications(app)
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        node.add_contact(bob, name="bob", addresses=mallory.addresses)
        await until(pilot, lambda: main.current == bob)
        await until(pilot, lambda: "different key" in main.conversation.banner_text, 30)
        assert mallory.addresses[0] in main.conversation.banner_text
        notice = main.notices.notices[f"mismatch:{bob}"]
        assert notice.severity == "error" and notice.title == "Key mismatch" and toasts == []
        await until(pilot, lambda: "⚠" in row_for(main, "bob"))


# ---------------------------------------------------------------- verify
async def test_verify_shows_the_safety_number_and_marks_verified(
    tmp_path: Path, start_node: StartNode
) -> None:
    bob = await start_node("bob")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        befriend(node, bob)
        await until(pilot, lambda: main.current == bob.peer_id)
        await pilot.press("f2")
        await until(pilot, lambda: showing(app, VerifyScreen))
        modal = app.screen
        expected = safety_number(node.identity.public_key, key_from_peer_id(bob.peer_id))
        assert expected == bob.safety_number("alice")
        large = " ".join(d.value for d in modal.query(Digits))
        assert large == expected  # 120 columns: big digits
        small = str(modal.query_one("#sn-small", Static).content).split()
        assert " ".join(small) == expected
        fp = " ".join(str(modal.query_one("#verify-my-fp", Static).content).split())
        assert fp == node.identity.fingerprint
        await pilot.click("#toggle")
        assert node.find_contact(bob.peer_id).verified
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)
        await until(pilot, lambda: "✔" in row_for(main, "bob").split("\n")[0])
        assert "verified" in str(main.conversation.query_one("#conv-header", Static).content)


# --------------------------------------------------------- composer, keys
async def test_slash_commands_and_input_history(tmp_path: Path, start_node: StartNode) -> None:
    bob = await start_node("bob")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        notes = record_notifications(app)
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        composer = main.query_one(Composer)
        composer.load_text(f"/add {bob.invite()} bobby")
        await pilot.press("enter")
        await until(pilot, lambda: main.current == bob.peer_id)
        assert node.find_contact(bob.peer_id).name == "bobby"
        await type_text(pilot, "/rename Robert")
        await pilot.press("enter")
        await until(pilot, lambda: node.find_contact(bob.peer_id).name == "Robert")
        await type_text(pilot, "/nick Alicia")
        await pilot.press("enter")
        await until(pilot, lambda: node.name == "Alicia")
        assert load_settings(node.paths)["name"] == "Alicia"
        await type_text(pilot, "/frobnicate")
        await pilot.press("enter")
        await until(pilot, lambda: any("unknown command" in m for _, m, _ in notes))
        assert composer.text == "/frobnicate"  # kept, to fix or to send with "//"
        composer.clear()
        await type_text(pilot, "/foo bar")
        await pilot.press("enter")
        await until(pilot, lambda: any("unknown command /foo" in m for _, m, _ in notes))
        assert composer.text == "/foo bar"
        composer.clear()
        await type_text(pilot, "//slash")
        await pilot.press("enter")
        await until(pilot, lambda: bodies(main)[-1:] == ["/slash"])
        await type_text(pilot, "one")
        await pilot.press("enter")
        await type_text(pilot, "draft")
        await pilot.press("up")
        assert composer.text == "one"
        await pilot.press("up")
        assert composer.text == "//slash"
        await pilot.press("down", "down")
        assert composer.text == "draft"
        composer.clear()
        await pilot.press("ctrl+j")
        assert composer.text == "\n"
        composer.clear()
        await type_text(pilot, "/help")
        await pilot.press("enter")
        await until(pilot, lambda: showing(app, HelpScreen))
        help_text = str(app.screen.query_one("#help-commands", Static).content)
        assert "/verify" in help_text and "/accept" in help_text
        keys_text = str(app.screen.query_one("#help-keys", Static).content)
        assert "Add contact" in keys_text
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)


async def test_theme_toggle_and_keymap_come_from_settings(tmp_path: Path) -> None:
    paths = make_home(tmp_path, "alice")
    settings = load_settings(paths)
    settings["keys"] = {"add_contact": "ctrl+b"}
    save_settings(paths, settings)
    app = app_for(paths)
    async with app.run_test(size=(100, 30)) as pilot:
        await main_screen(pilot)
        assert app.current_theme.dark
        await pilot.press("ctrl+t")
        assert not app.current_theme.dark
        await until(pilot, lambda: load_settings(paths).get("theme") == "textual-light")
        await pilot.press("ctrl+b")
        await until(pilot, lambda: showing(app, AddContactScreen))
    app2 = app_for(paths)
    async with app2.run_test(size=(100, 30)) as pilot:
        await main_screen(pilot)
        assert app2.theme == "textual-light"


async def test_quitting_stops_the_node_and_frees_the_home(tmp_path: Path) -> None:
    paths = make_home(tmp_path, "alice")
    app = app_for(paths)
    async with app.run_test(size=(100, 30)) as pilot:
        await main_screen(pilot)
        node = app.node
        assert node is not None and node.running
        await pilot.press("ctrl+q", "enter")
        await until(pilot, lambda: not node.running)
    again = Node(paths)
    await again.start(listen=f"127.0.0.1:{free_udp_port()}")
    await again.stop()


def test_message_item_is_a_conversation_item() -> None:
    """Transfer cards will reuse the timeline through this base class."""
    from p2pchat.ui.widgets import ConversationItem

    assert issubclass(MessageItem, ConversationItem)


async def test_command_palette_offers_the_screen_actions(
    tmp_path: Path, start_node: StartNode
) -> None:
    bob = await start_node("bob")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        node.add_contact(bob.peer_id, name="bob", addresses=bob.addresses)
        await until(pilot, lambda: main.current == bob.peer_id)
        titles = [title for title, _, _ in app.palette_commands()]
        assert "Add contact" in titles and "Verify bob" in titles
        assert "Open conversation: bob" in titles and "Toggle bell (now off)" in titles
        await pilot.press("ctrl+p")
        await type_text(pilot, "verify bob")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: showing(app, VerifyScreen))


async def test_pasted_path_without_a_conversation_stays_text(tmp_path: Path) -> None:
    """File drop needs a contact to send to: without one, a pasted path is just text."""
    dropped = tmp_path / "photo.jpg"
    dropped.write_bytes(b"\xff\xd8")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(100, 30)) as pilot:
        main = await main_screen(pilot)
        composer = main.query_one(Composer)
        assert composer.intercept_paths
        app.post_message(events.Paste(str(dropped)))  # as the terminal delivers it
        await until(pilot, lambda: composer.text == str(dropped))
        assert app.screen is main


async def test_decline_command_then_a_file_offer_asks(
    tmp_path: Path, start_node: StartNode
) -> None:
    bob = await start_node("bob")
    carol = await start_node("carol")
    app = app_for(make_home(tmp_path, "alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        main = await main_screen(pilot)
        node = app.node
        assert node is not None
        carol.add_contact(node.invite(), name="alice")
        carol.send_message("alice", "let me in")
        await until(pilot, lambda: carol.peer_id in main.contact_list.request_ids)
        await type_text(pilot, "/decline")
        await pilot.press("enter")
        await until(pilot, lambda: main.contact_list.request_ids == [])
        assert node.requests() == []
        befriend(node, bob)
        await until(pilot, lambda: node.is_online(bob.peer_id) and bob.is_online(node.peer_id))
        report = tmp_path / "report.pdf"
        report.write_bytes(b"%PDF" + b"0" * 2000)
        await until(pilot, lambda: main.current == bob.peer_id)
        await bob.offer_files("alice", [report])
        # Bob's conversation is open: the offer asks at once (tests/ui/test_filedrop.py).
        await until(pilot, lambda: showing(app, OfferScreen))
        assert "report.pdf" in str(app.screen.query_one("#offer-list", Static).render())

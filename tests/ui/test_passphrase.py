"""The passphrase screen, driven with Pilot: set, a wrong current one, remove."""

from __future__ import annotations

import json
from pathlib import Path

from textual.widgets import Button, Input, Static

from p2pchat.identity import Identity, is_sealed
from p2pchat.node import Node
from p2pchat.store import database_is_plaintext
from p2pchat.ui.screens.passphrase import PassphraseSettingsScreen
from p2pchat.ui.state import legacy_path

from ..conftest import make_home
from ..test_atrest import leaks, sealed_home
from .conftest import app_for, main_screen, press, until
from .test_flows import record_notifications

BOB = "b2" * 16


async def test_set_then_remove_from_the_palette(tmp_path: Path) -> None:
    paths = make_home(tmp_path, "alice")
    app = app_for(paths)
    notes = record_notifications(app)
    async with app.run_test(size=(100, 40)) as pilot:
        await main_screen(pilot)
        node = app.node
        assert node is not None
        node.store.queue_message(BOB, "kept across both changes", now=1.0)

        async def open_screen() -> PassphraseSettingsScreen:
            [entry] = [c for c in app.palette_commands() if c[0] == "Passphrase…"]
            app.call_later(entry[2])
            await until(pilot, lambda: isinstance(app.screen, PassphraseSettingsScreen))
            screen = app.screen
            assert isinstance(screen, PassphraseSettingsScreen)
            return screen

        screen = await open_screen()
        assert not screen.query("#pass-current")
        screen.query_one("#pass-new", Input).value = "tui secret"
        screen.query_one("#pass-repeat", Input).value = "tui secreX"
        await press(pilot, "#set")
        error = screen.query_one("#pass-error", Static)
        await until(pilot, lambda: "differ" in str(error.content))
        screen.query_one("#pass-repeat", Input).value = "tui secret"
        await press(pilot, "#set")
        await until(pilot, lambda: not isinstance(app.screen, PassphraseSettingsScreen))
        await until(pilot, lambda: any("encrypted in" in n for _, n, _ in notes))
        assert is_sealed(paths.identity) and database_is_plaintext(paths.database) is False
        # The app's node goes on, now on the encrypted database.
        assert [m.body for m in node.store.outbox(BOB)] == ["kept across both changes"]

        screen = await open_screen()
        assert screen.query_one("#remove", Button)
        screen.query_one("#pass-current", Input).value = "not it"
        await press(pilot, "#remove")
        error = screen.query_one("#pass-error", Static)
        await until(pilot, lambda: "wrong" in str(error.content))
        assert is_sealed(paths.identity)
        screen.query_one("#pass-current", Input).value = "tui secret"
        await press(pilot, "#remove")
        await until(pilot, lambda: any("decrypted in" in n for _, n, _ in notes))
        assert not is_sealed(paths.identity) and database_is_plaintext(paths.database)
        assert [m.body for m in node.store.outbox(BOB)] == ["kept across both changes"]


async def test_the_open_conversation_is_kept_encrypted_not_in_a_file(tmp_path: Path) -> None:
    """Which conversation was open names a contact: in a home with a passphrase it is
    kept inside the encrypted database, and the file older versions kept it in (in
    clear) is moved there and deleted."""
    paths = sealed_home(tmp_path, "alice")
    bob, carol = Identity.generate().peer_id, Identity.generate().peer_id
    # A home an older version used: contacts, and the open conversation in a file.
    node = Node(paths, passphrase="correct horse")
    try:
        node.add_contact(bob, name="bob")
        node.add_contact(carol, name="carol")
        node.send_message("bob", "bob is the most recent")
    finally:
        node.store.close()
    legacy = legacy_path(paths)
    legacy.write_text(json.dumps({"conversation": carol}), encoding="utf-8")
    again = app_for(paths, passphrase="correct horse", network=False)
    async with again.run_test(size=(100, 30)) as pilot:
        main = await main_screen(pilot)
        assert main.current == carol  # not bob, at the top of the list
        assert not legacy.exists()
        main.open_conversation(bob)
        await pilot.press("ctrl+q")
    third = app_for(paths, passphrase="correct horse", network=False)
    async with third.run_test(size=(100, 30)) as pilot:
        main = await main_screen(pilot)
        assert main.current == bob
        await pilot.press("ctrl+q")
    assert leaks(paths.home, {"bob": bob.encode(), "carol": carol.encode()}) == []

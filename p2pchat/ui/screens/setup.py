"""Screens shown before the main one: first run, unlock, and the ways starting can fail."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Center, Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, LoadingIndicator, Static, TextArea

from p2pchat.config import Paths, load_settings, save_settings
from p2pchat.identity import WrongPassphrase, create_identity
from p2pchat.names import MAX_NAME_CHARS, InvalidName, normalise_name
from p2pchat.node import Node
from p2pchat.ui.format import fingerprint_rows
from p2pchat.ui.safe import literal, shown_name
from p2pchat.ui.widgets.error_line import ErrorLine
from p2pchat.ui.widgets.invite import copy_invite
from p2pchat.ui.widgets.plain_input import PlainInput


@dataclass(frozen=True, slots=True)
class FirstRunResult:
    name: str
    passphrase: str | None


class FirstRunScreen(Screen[FirstRunResult | None]):
    """Choose a name and an optional passphrase; the identity is created here."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "quit_setup", "Quit", show=True)]

    def __init__(self, paths: Paths) -> None:
        super().__init__()
        self.paths = paths

    def compose(self) -> ComposeResult:
        with Center(), Vertical(id="setup-card", classes="card"):
            yield Static("Welcome to p2pchat", classes="card-title")
            yield Static(
                "Your identity is a key created on this computer. Pick the name your "
                "contacts will see; you can change it later with /nick.",
                classes="card-text",
            )
            yield Label("Display name")
            yield PlainInput(placeholder="e.g. alice", id="name", max_length=MAX_NAME_CHARS)
            yield Label("Passphrase (optional)")
            yield Input(password=True, id="passphrase", placeholder="leave empty for none")
            yield Label("Passphrase again")
            yield Input(password=True, id="passphrase2")
            yield Static(
                "Without a passphrase the key is protected only by file permissions. "
                "With one, p2pchat asks for it at every start; it cannot be recovered.",
                classes="card-hint",
            )
            yield ErrorLine("", id="setup-error")
            yield LoadingIndicator(id="setup-busy")
            with Horizontal(classes="buttons"):
                yield Button("Create identity", id="create", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#setup-busy").display = False
        self.query_one("#name", Input).focus()

    @on(Input.Submitted)
    def _next_field(self, event: Input.Submitted) -> None:
        order = ["name", "passphrase", "passphrase2"]
        current = event.input.id or ""
        if current in order[:-1]:
            self.query_one(f"#{order[order.index(current) + 1]}", Input).focus()
        else:
            self._create()

    @on(Button.Pressed, "#create")
    def _create_pressed(self) -> None:
        self._create()

    def _error(self, text: str) -> None:
        self.query_one("#setup-error", ErrorLine).show(text)

    def _create(self) -> None:
        typed = self.query_one("#name", Input).value
        first = self.query_one("#passphrase", Input).value
        second = self.query_one("#passphrase2", Input).value
        try:
            # The one rule for names (p2pchat/names.py), with its reason when it refuses.
            name = normalise_name(typed) if typed.strip() else ""
        except InvalidName as exc:
            self._error(f"{exc}.")
            self.query_one("#name", Input).focus()
            return
        if not name:
            self._error("Choose a display name.")
            self.query_one("#name", Input).focus()
            return
        if first != second:
            self._error("The two passphrases differ.")
            self.query_one("#passphrase2", Input).focus()
            return
        self._error("")
        self._create_identity(name, first or None)

    @work(exclusive=True, group="setup")
    async def _create_identity(self, name: str, passphrase: str | None) -> None:
        self.query_one("#setup-busy").display = True
        self.query_one("#create", Button).disabled = True
        try:
            # Sealing runs Argon2id (about a second, a few hundred MB): keep the UI alive.
            await asyncio.to_thread(self._write_identity, name, passphrase)
        except (OSError, ValueError) as exc:
            self._error(f"Cannot create the identity: {exc}")
            self.query_one("#setup-busy").display = False
            self.query_one("#create", Button).disabled = False
            return
        self.dismiss(FirstRunResult(name, passphrase))

    def _write_identity(self, name: str, passphrase: str | None) -> None:
        self.paths.ensure()
        create_identity(self.paths.identity, passphrase)
        settings = load_settings(self.paths)
        settings["name"] = name
        save_settings(self.paths, settings)

    def action_quit_setup(self) -> None:
        self.dismiss(None)


class InviteScreen(Screen[None]):
    """Right after the identity exists: the one thing to hand to a friend."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "copy", "Copy invite"),
        Binding("escape,enter", "done", "Continue"),
    ]

    def __init__(self, name: str, invite: str, fingerprint: str) -> None:
        super().__init__()
        self.display_name = name
        self.invite = invite
        self.fingerprint = fingerprint

    def compose(self) -> ComposeResult:
        with Center(), Vertical(id="invite-card", classes="card"):
            yield Static(literal(f"You are {shown_name(self.display_name)}"), classes="card-title")
            yield Static(
                "Send this invite to a friend (any channel will do: it carries no secret). "
                "When they add it, you will see their contact request.",
                classes="card-text",
            )
            invite = TextArea(self.invite, read_only=True, soft_wrap=True, id="invite-text")
            yield invite
            yield Label("Your fingerprint")
            yield Static(
                "\n".join(fingerprint_rows(self.fingerprint)), id="invite-fp", markup=False
            )
            with Horizontal(classes="buttons"):
                yield Button("Copy invite", id="copy", compact=True)
                yield Button("Continue", id="done", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#done", Button).focus()

    @on(Button.Pressed, "#copy")
    def action_copy(self) -> None:
        copy_invite(self, self.invite, self.query_one("#invite-text", TextArea))

    @on(Button.Pressed, "#done")
    def action_done(self) -> None:
        self.dismiss(None)


class PassphraseScreen(Screen[Node | None]):
    """Unlock a sealed identity; a wrong passphrase is said here, not by a crash."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "quit_unlock", "Quit")]

    def __init__(
        self, home: str, unlock: Callable[[str], Awaitable[Node]], error: str | None = None
    ) -> None:
        super().__init__()
        self.home = home
        self.unlock = unlock
        self.first_error = error

    def compose(self) -> ComposeResult:
        with Center(), Vertical(id="unlock-card", classes="card"):
            yield Static("Unlock your identity", classes="card-title")
            yield Static(
                literal(f"The key in {self.home} is protected by a passphrase."),
                classes="card-text",
            )
            yield Input(password=True, id="unlock-passphrase", placeholder="passphrase")
            yield ErrorLine(self.first_error or "", id="unlock-error")
            yield LoadingIndicator(id="unlock-busy")
            with Horizontal(classes="buttons"):
                yield Button("Quit", id="quit", compact=True)
                yield Button("Unlock", id="unlock", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#unlock-busy").display = False
        self.query_one("#unlock-passphrase", Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#unlock")
    def _submit(self) -> None:
        self._try(self.query_one("#unlock-passphrase", Input).value)

    @on(Button.Pressed, "#quit")
    def action_quit_unlock(self) -> None:
        self.dismiss(None)

    @work(exclusive=True, group="unlock")
    async def _try(self, passphrase: str) -> None:
        field = self.query_one("#unlock-passphrase", Input)
        busy = self.query_one("#unlock-busy")
        busy.display = True
        field.disabled = True
        try:
            node = await self.unlock(passphrase)
        except WrongPassphrase:
            self.query_one("#unlock-error", ErrorLine).show("Wrong passphrase, try again.")
            field.value = ""
            return
        except Exception as exc:  # a damaged key file, an unreadable store: say so, stay up
            self.query_one("#unlock-error", ErrorLine).show(f"Cannot open the identity: {exc}")
            return
        finally:
            busy.display = False
            field.disabled = False
            field.focus()
        self.dismiss(node)


class NodeBusyScreen(Screen[str]):
    """Another process (a ``p2pchat daemon``) already runs the node for this home."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "choose('quit')", "Quit")]

    def __init__(self, home: str, detail: str) -> None:
        super().__init__()
        self.home = home
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Center(), Vertical(id="busy-card", classes="card"):
            yield Static("p2pchat is already running for this home", classes="card-title")
            yield Static(literal(self.detail, multiline=True), classes="card-text")
            yield Static(
                "Only one node can own an identity at a time, and the process that owns "
                "it did not answer on its control socket (it may be stopped or shutting "
                "down). Try again in a moment, stop that process, or read your history "
                "without sending.",
                classes="card-text",
            )
            with Horizontal(classes="buttons"):
                yield Button("Read history only", id="read-only", compact=True)
                yield Button("Try again", id="retry", compact=True)
                yield Button("Quit", id="quit", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#quit", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or "quit")

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)


class FatalScreen(Screen[None]):
    """Something the user must fix outside the app (a damaged key file, say)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,enter", "close", "Quit")]

    def __init__(self, title: str, detail: str) -> None:
        super().__init__()
        self.title_text = title
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Center(), Vertical(id="fatal-card", classes="card"):
            yield Static(literal(self.title_text), classes="card-title")
            with VerticalScroll(id="fatal-detail"):
                yield Static(literal(self.detail, multiline=True), classes="card-text")
            with Horizontal(classes="buttons"):
                yield Button("Quit", id="quit", variant="error", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#quit", Button).focus()

    @on(Button.Pressed, "#quit")
    def action_close(self) -> None:
        self.dismiss(None)


class StartingScreen(Screen[None]):
    """What shows while the key is unlocked and the network comes up."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def compose(self) -> ComposeResult:
        with Center(), Vertical(id="starting-card", classes="card"):
            yield Static("p2pchat", classes="card-title")
            yield Static(literal(self.text), id="starting-text", classes="card-text")
            yield LoadingIndicator()

    def say(self, text: str) -> None:
        self.text = text
        for label in self.query("#starting-text").results(Static):
            label.update(literal(text))

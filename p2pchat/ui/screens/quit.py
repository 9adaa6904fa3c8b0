"""Ctrl+Q: say what quitting does before doing it.

Quitting an app that runs the node takes the user offline and interrupts
running transfers; quitting an app attached to a daemon does neither.  The
dialog says which, and offers to keep the node running as a daemon
("stay reachable in the background", ``owner.hand_off``).  Enter (or Ctrl+Q
again) quits, so the old habit still works in two keys.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from p2pchat.ui.safe import literal

QuitChoice = Literal["quit", "background"]


class QuitScreen(ModalScreen[QuitChoice | None]):
    """Dismisses with ``"quit"``, ``"background"`` (own node only) or None (stay)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "stay", "Cancel"),
        Binding("ctrl+q", "quit_now", "Quit", priority=True),
    ]

    def __init__(self, *, owns_node: bool, running_transfers: int) -> None:
        super().__init__()
        self.owns_node = owns_node
        self.running_transfers = running_transfers

    def explanation(self) -> str:
        if self.owns_node:
            text = (
                "This app runs your node: quitting takes you offline. Contacts see you "
                "offline, and what they send waits on their side until p2pchat runs again."
            )
        else:
            text = (
                "This app is attached to a p2pchat daemon, which keeps running: you stay "
                "online and reachable after quitting."
            )
        count = self.running_transfers
        if count:
            files = f"{count} file transfer{'s are' if count != 1 else ' is'} running"
            if self.owns_node:
                text += f"\n\n{files}: quitting pauses it; it resumes when p2pchat runs again."
            else:
                text += f"\n\n{files}; the daemon carries on with it."
        return text

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-card", classes="modal-card"):
            yield Static("Quit p2pchat?", classes="card-title")
            yield Static(literal(self.explanation(), multiline=True), classes="card-text")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="stay", compact=True)
                if self.owns_node:
                    yield Button("Stay reachable in the background", id="background", compact=True)
                yield Button("Quit", id="quit", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one("#quit", Button).focus()

    @on(Button.Pressed, "#quit")
    def action_quit_now(self) -> None:
        self.dismiss("quit")

    @on(Button.Pressed, "#background")
    def _background(self) -> None:
        self.dismiss("background")

    @on(Button.Pressed, "#stay")
    def action_stay(self) -> None:
        self.dismiss(None)

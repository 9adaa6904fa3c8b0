"""Keys and slash commands, generated from the live bindings and the command table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from p2pchat.ui.commands import COMMANDS
from p2pchat.ui.widgets.composer import NEWLINE_KEYS

EDITING_KEYS: tuple[tuple[str, str], ...] = (
    ("enter", "send the message"),
    (" / ".join(sorted(NEWLINE_KEYS)), "new line in the message"),
    ("up / down", "recall earlier messages (on the first / last line)"),
    ("pageup / pagedown", "scroll the conversation"),
    ("tab / shift+tab", "move between the list, the messages and the message box"),
    ("//text", "send a message that starts with '/'"),
)

# In the messages (Ctrl+Up from the message box, Shift+Tab, or a click).
MESSAGE_KEYS: tuple[tuple[str, str], ...] = (
    ("up / down", "select an older / newer message (older ones load at the top)"),
    ("r", "reply to the selected message"),
    ("e / d", "edit / delete it, if it is yours (for both sides)"),
    ("o", "open its link (a file card: its folder)"),
    ("enter", "open a received file (on its card)"),
    ("end / escape", "jump to the latest / back to the message box"),
)


class HelpScreen(ModalScreen[None]):
    """Shown with F1 or /help; the keys listed are the ones in force (keymap applied)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,f1,q", "close", "Close")]

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-card", classes="modal-card"):
            yield Static("Keys", classes="card-subtitle")
            yield Static(_table([*self.keys, *EDITING_KEYS]), id="help-keys")
            yield Static("In the messages", classes="card-subtitle")
            yield Static(_table(MESSAGE_KEYS), id="help-message-keys")
            yield Static("Commands", classes="card-subtitle")
            yield Static(_table([(c.usage, c.summary) for c in COMMANDS]), id="help-commands")
            with Horizontal(classes="buttons"):
                yield Button("Close", id="close", compact=True)

    def on_mount(self) -> None:
        # The list itself has the focus: it opens at the top and the arrows scroll it
        # (focusing Close, at the bottom, scrolled it to the end).
        card = self.query_one("#help-card", VerticalScroll)
        card.can_focus = True
        card.focus()
        card.scroll_home(animate=False)

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(None)


def _table(rows: Sequence[tuple[str, str]]) -> Content:
    width = max((len(left) for left, _ in rows), default=0) + 2
    lines = [
        Content.assemble((left.ljust(width), "bold $text-accent"), (right, ""))
        for left, right in rows
    ]
    return Content("\n").join(lines)

"""Set, change or remove the passphrase that encrypts the key and the history.

Opened from the command palette.  The node that owns the database does the work
(``Node.change_passphrase``, or the daemon's through ``RemoteNode``), so the app
keeps running; this screen only collects the passphrases and says what happened.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Input, Label, LoadingIndicator, Static

from p2pchat.identity import IdentityError, WrongPassphrase, is_sealed
from p2pchat.node import Node, NodeError
from p2pchat.store import StoreError
from p2pchat.ui.palette import PaletteCommand
from p2pchat.ui.screens.guard import GuardedModal
from p2pchat.ui.widgets.error_line import ErrorLine

_EXPLAIN_PLAIN = (
    "Your key and your history (messages, contacts, transfers) are stored without "
    "encryption: anyone who gets this disk can read them and act as you. A passphrase "
    "encrypts both; p2pchat then asks for it at every start. It cannot be recovered."
)
_EXPLAIN_SEALED = (
    "Your key and your history are encrypted under your passphrase. Changing it re-seals "
    "the key; removing it decrypts the history back to a plain file."
)


class PassphraseSettingsScreen(GuardedModal[str | None]):
    """Dismisses with what was done (for a notification), or None when closed."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Close")]
    DEFAULT_CSS = """
    #passphrase-card { padding-bottom: 1; }
    #passphrase-busy { height: 1; }
    """

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node
        self.sealed = is_sealed(node.paths.identity)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="passphrase-card", classes="modal-card"):
            yield Static("Passphrase", classes="card-title")
            yield Static(_EXPLAIN_SEALED if self.sealed else _EXPLAIN_PLAIN, classes="card-text")
            if self.sealed:
                yield Label("Current passphrase")
                yield Input(password=True, id="pass-current")
            yield Label("New passphrase" + (" (leave empty to remove)" if self.sealed else ""))
            yield Input(password=True, id="pass-new")
            yield Label("New passphrase again")
            yield Input(password=True, id="pass-repeat")
            yield ErrorLine("", id="pass-error")
            yield LoadingIndicator(id="passphrase-busy")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel", compact=True)
                if self.sealed:
                    yield Button("Remove", id="remove", variant="error", compact=True)
                    yield Button("Change", id="change", variant="primary", compact=True)
                else:
                    yield Button("Set passphrase", id="set", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one("#passphrase-busy").display = False
        self.query_one("#pass-current" if self.sealed else "#pass-new", Input).focus()

    def _value(self, field: str) -> str:
        return self.query_one(f"#{field}", Input).value

    def _error(self, text: str) -> None:
        self.query_one("#pass-error", ErrorLine).show(text)

    @on(Input.Submitted)
    def _next_field(self, event: Input.Submitted) -> None:
        order = [i.id for i in self.query(Input)]
        current = order.index(event.input.id)
        if current + 1 < len(order):
            self.query_one(f"#{order[current + 1]}", Input).focus()
        else:
            self._submit("change" if self.sealed else "set")

    @on(Button.Pressed, "#set")
    @on(Button.Pressed, "#change")
    @on(Button.Pressed, "#remove")
    def _pressed(self, event: Button.Pressed) -> None:
        self._submit(event.button.id or "")

    def _submit(self, action: str) -> None:
        old = self._value("pass-current") if self.sealed else None
        new: str | None = self._value("pass-new")
        if action == "remove":
            new = None
        elif not new:
            self._error("Type the new passphrase twice.")
            self.query_one("#pass-new", Input).focus()
            return
        elif new != self._value("pass-repeat"):
            self._error("The two new passphrases differ.")
            self.query_one("#pass-repeat", Input).focus()
            return
        if self.sealed and not old:
            self._error("Type your current passphrase first.")
            self.query_one("#pass-current", Input).focus()
            return
        self._error("")
        self._change(old, new)

    @work(exclusive=True, group="passphrase")
    async def _change(self, old: str | None, new: str | None) -> None:
        busy = self.query_one("#passphrase-busy")
        buttons = list(self.query(Button))
        busy.display = True
        for button in buttons:
            button.disabled = True
        try:
            # Argon2id and, when encryption is switched, a copy of the whole history.
            change = await self.node.change_passphrase(old, new)
        except WrongPassphrase:
            self._error("The current passphrase is wrong.")
            self.query_one("#pass-current", Input).value = ""
            return
        except (IdentityError, NodeError, StoreError, ValueError, OSError) as exc:
            self._error(str(exc))
            return
        finally:
            busy.display = False
            for button in buttons:
                button.disabled = False
        self.dismiss(change.describe())

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


def passphrase_command(app: App[Any], node: Node) -> PaletteCommand:
    """The palette entry that opens this screen and reports the result."""

    def done(summary: str | None) -> None:
        if summary:
            app.notify(summary[0].upper() + summary[1:] + ".", title="Passphrase", timeout=8)

    def open_screen() -> None:
        app.push_screen(PassphraseSettingsScreen(node), done)

    return (
        "Passphrase…",
        "Set, change or remove the passphrase that encrypts your key and history",
        open_screen,
    )

"""Safety number comparison: the one step that rules out a man in the middle."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Button, Digits, Static

from p2pchat.node import Node
from p2pchat.store import Contact
from p2pchat.ui.format import fingerprint_of, fingerprint_rows, safety_rows
from p2pchat.ui.safe import literal, shown_name
from p2pchat.ui.screens.guard import GuardedModal

# Groups per row, large digits or small, at every width: two people comparing
# their screens read the same rows.
SAFETY_PER_ROW = 3


class VerifyScreen(GuardedModal[bool]):
    """Safety number in large groups beside the contact's name and fingerprint.

    Wide terminals get big three-line digits (easier to read out across a
    room); narrow ones the same groups in bold text.  Dismisses with whether
    the contact is verified now.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("v", "toggle_verified", "Mark verified"),
    ]

    def __init__(self, node: Node, contact: Contact) -> None:
        super().__init__()
        self.node = node
        self.contact = contact
        self.number = node.safety_number(contact.peer_id)
        self.verified = contact.verified
        self.contact_name = shown_name(contact.name, contact.peer_id[:8])

    def compose(self) -> ComposeResult:
        with Vertical(id="verify-card", classes="modal-card"):
            # The details scroll on a short terminal; the buttons stay in view.
            with VerticalScroll(id="verify-body"):
                yield from self._details()
            with Horizontal(classes="buttons", id="verify-buttons"):
                yield Button("Close", id="close", compact=True)
                yield Button("", id="toggle", variant="success", compact=True)

    def _details(self) -> ComposeResult:
        c = self.contact
        me = self.node.info()
        shown = self.contact_name
        yield Static(literal(f"Verify {shown}"), classes="card-title")
        yield Static(
            literal(
                f"Compare this number with the one {shown} sees on their screen, in person "
                "or on a call you trust. If all twelve groups match, nobody sits between you."
            ),
            classes="card-text",
        )
        rows = safety_rows(self.number, SAFETY_PER_ROW)
        with Horizontal(id="verify-columns"):
            with Vertical(id="safety-panel"):
                yield Static("Safety number", classes="panel-title")
                with Vertical(id="sn-large"):
                    for row in rows:
                        yield Digits(row, classes="sn-digits")
                yield Static(
                    "\n".join(row.replace(" ", "  ") for row in rows), id="sn-small", markup=False
                )
            with Vertical(id="identity-panel"):
                yield Static(literal(shown), classes="panel-title")
                yield Static(
                    "\n".join(fingerprint_rows(fingerprint_of(c.peer_id))),
                    id="verify-their-fp",
                    markup=False,
                )
                yield Static(c.peer_id, id="verify-their-id", markup=False)
                yield Static("You", classes="panel-title")
                yield Static(
                    "\n".join(fingerprint_rows(str(me["fingerprint"]))),
                    id="verify-my-fp",
                    markup=False,
                )
        yield Static(id="verify-status")

    def on_mount(self) -> None:
        self._show_status()
        # Not the verify button: one Enter typed for something else must not verify.
        self.query_one("#close", Button).focus()

    def _show_status(self) -> None:
        status = self.query_one("#verify-status", Static)
        toggle = self.query_one("#toggle", Button)
        if self.verified:
            status.update(
                Content.assemble(("✔ ", "$success bold"), (f"{self.contact_name} is verified", ""))
            )
            toggle.label = "Remove verification"
            toggle.variant = "default"
        else:
            status.update(Content.styled("Not verified yet", "$text-muted"))
            toggle.label = "Numbers match: mark verified"
            toggle.variant = "success"

    @on(Button.Pressed, "#toggle")
    def action_toggle_verified(self) -> None:
        contact = self.node.verify_contact(self.contact.peer_id, not self.verified)
        self.verified = contact.verified
        self._show_status()

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(self.verified)

"""Modals that change who is a contact: adding one, answering a request."""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, Static, TextArea

from p2pchat.node import Node, NodeError
from p2pchat.remote import OwnerUnavailable
from p2pchat.store import ContactRequest, StoreError
from p2pchat.ui.format import fingerprint_of, relative_time, short_id
from p2pchat.ui.safe import clean, literal, one_line, shown_name
from p2pchat.ui.screens.guard import GuardedModal
from p2pchat.ui.widgets.error_line import ErrorLine
from p2pchat.ui.widgets.invite import copy_invite
from p2pchat.ui.widgets.plain_input import PlainInput


class AddContactScreen(GuardedModal[str | None]):
    """Paste an invite or an ID; my own invite sits beside it to hand out in return.

    Dismisses with the new contact's peer ID.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Close")]

    def __init__(self, node: Node, *, ref: str = "", name: str = "") -> None:
        super().__init__()
        self.node = node
        self.ref = clean(ref)
        self.contact_name = one_line(name, 64)  # a nearby peer's claim
        try:
            self.invite = node.invite()
        except (ValueError, NodeError) as exc:  # a hand-edited name the invite format refuses
            self.invite = f"No invite: {exc}"

    def compose(self) -> ComposeResult:
        info = self.node.info()
        with VerticalScroll(id="add-card", classes="modal-card"):
            yield Static("Add a contact", classes="card-title")
            yield Label("Their invite or peer ID")
            yield PlainInput(self.ref, placeholder="p2pchat:… or a 52-character ID", id="add-ref")
            yield Label("Name (optional, only you see it)")
            yield PlainInput(self.contact_name, placeholder="taken from the invite", id="add-name")
            yield ErrorLine("", id="add-error")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel", compact=True)
                yield Button("Add contact", id="add", variant="primary", compact=True)
            yield Static("Your invite", classes="card-subtitle")
            yield TextArea(self.invite, read_only=True, soft_wrap=True, id="my-invite")
            yield Static(f"Fingerprint  {info['fingerprint']}", id="my-fingerprint", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("One-time invite", id="one-time", compact=True)
                yield Button("Copy invite", id="copy", compact=True)

    def on_mount(self) -> None:
        target = "#add-name" if self.ref else "#add-ref"
        self.query_one(target, Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#add")
    def _add(self) -> None:
        ref = self.query_one("#add-ref", Input).value.strip()
        name = self.query_one("#add-name", Input).value.strip() or None
        error = self.query_one("#add-error", ErrorLine)
        if not ref:
            error.show("Paste an invite (p2pchat:…) or a peer ID.")
            self.query_one("#add-ref", Input).focus()
            return
        try:
            contact = self.node.add_contact(ref, name=name)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except (ValueError, NodeError, StoreError) as exc:
            error.show(str(exc))
            return
        self.dismiss(contact.peer_id)

    @on(Button.Pressed, "#copy")
    def _copy(self) -> None:
        copy_invite(self, self.invite, self.query_one("#my-invite", TextArea))

    @on(Button.Pressed, "#one-time")
    def _one_time(self) -> None:
        """A single-use invite: whoever redeems it becomes a contact without an accept."""
        self.invite = self.node.invite(one_time=True)
        self.query_one("#my-invite", TextArea).load_text(self.invite)
        self.notify("One-time invite created: it works once, for 7 days", timeout=4)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class RequestScreen(GuardedModal[str | None]):
    """A stranger's key knocked: show what they claim and let the user decide.

    Dismisses with ``"accept"``, ``"decline"`` or ``None`` (decide later); the
    decision is carried out here so errors show in place.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "later", "Later")]

    def __init__(self, node: Node, request: ContactRequest, *, tz: dt.tzinfo | None = None) -> None:
        super().__init__()
        self.node = node
        self.request = request
        self.tz = tz

    def compose(self) -> ComposeResult:
        r = self.request
        claimed = shown_name(r.name, short_id(r.peer_id))
        with Vertical(id="request-card", classes="modal-card"):
            yield Static(literal(f"Contact request from {claimed}"), classes="card-title")
            yield Static(
                "The name is what they chose and proves nothing; the key below is what "
                "you would be talking to. Verify it after accepting.",
                classes="card-text",
            )
            yield Static(literal(self._details(), multiline=True), id="request-details")
            yield Label("Name to save them under")
            yield PlainInput(shown_name(r.name), id="request-name")
            yield ErrorLine("", id="request-error")
            with Horizontal(classes="buttons"):
                yield Button("Later", id="later", compact=True)
                yield Button("Decline", id="decline", variant="error", compact=True)
                yield Button("Accept", id="accept", variant="success", compact=True)

    def _details(self) -> str:
        r = self.request
        now = self.node.clock()
        lines = [
            f"Peer ID      {r.peer_id}",
            f"Fingerprint  {fingerprint_of(r.peer_id)}",
            f"From         {one_line(r.address or 'unknown address', 80)}",
            f"First seen   {relative_time(r.first_seen, now, self.tz)}"
            f" ({r.attempts} attempt{'s' if r.attempts != 1 else ''})",
        ]
        if r.preview:
            lines.append(f"Says         “{one_line(r.preview, 160)}”")
        return "\n".join(lines)

    def on_mount(self) -> None:
        self.query_one("#accept", Button).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#accept")
    def _accept(self) -> None:
        name = self.query_one("#request-name", Input).value.strip() or None
        try:
            self.node.accept_request(self.request.peer_id, name=name)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except (ValueError, NodeError, StoreError) as exc:
            self.query_one("#request-error", ErrorLine).show(str(exc))
            return
        self.dismiss("accept")

    @on(Button.Pressed, "#decline")
    def _decline(self) -> None:
        try:
            self.node.decline_request(self.request.peer_id)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except (NodeError, StoreError) as exc:
            self.query_one("#request-error", ErrorLine).show(str(exc))
            return
        self.dismiss("decline")

    @on(Button.Pressed, "#later")
    def action_later(self) -> None:
        self.dismiss(None)

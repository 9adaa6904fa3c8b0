"""Modals about groups: answering an invitation, and the member list with presence.

Group names, inviters' and members' names are peer text: every one reaches the
screen through ``literal``/``shown_name`` (``ui/safe.py``), never as markup.
"""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Button, Static

from p2pchat.core.group.errors import GroupError
from p2pchat.core.group.events import GroupMemberView, GroupView
from p2pchat.node import Node, NodeError
from p2pchat.remote import OwnerUnavailable
from p2pchat.store import StoreError
from p2pchat.ui.format import short_id
from p2pchat.ui.safe import NAME_LIMIT, literal, one_line, shown_name
from p2pchat.ui.screens.guard import GuardedModal
from p2pchat.ui.widgets.error_line import ErrorLine

MAX_LISTED = 200


class GroupInviteScreen(GuardedModal[str | None]):
    """A contact added us to a group: join it, decline, or decide later.

    Dismisses with ``"accept"``, ``"decline"`` or ``None``; the answer is carried out
    here so an error shows in place.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "later", "Later")]

    def __init__(self, node: Node, group: GroupView, inviter: str) -> None:
        super().__init__()
        self.node = node
        self.group = group
        self.inviter = inviter

    def compose(self) -> ComposeResult:
        g = self.group
        name = shown_name(g.name, short_id(g.group_id))
        with Vertical(id="group-invite-card", classes="modal-card"):
            yield Static(literal(f"Invitation to the group {name}"), classes="card-title")
            yield Static(
                literal(
                    f"{self.inviter} added you. Joining shows you the group's messages and "
                    f"its {g.members} members, and them yours; members who are not your "
                    "contacts can reach you for this group only.",
                    multiline=True,
                ),
                id="group-invite-details",
                classes="card-text",
            )
            yield ErrorLine("", id="group-invite-error")
            with Horizontal(classes="buttons"):
                yield Button("Later", id="later", compact=True)
                yield Button("Decline", id="decline", variant="error", compact=True)
                yield Button("Join", id="accept", variant="success", compact=True)

    def on_mount(self) -> None:
        self.query_one("#accept", Button).focus()

    def _answer(self, choice: str) -> None:
        try:
            if choice == "accept":
                self.node.groups.accept(self.group.group_id)
            else:
                self.node.groups.decline(self.group.group_id)
        except OwnerUnavailable:
            raise  # the screen's guard tells the app (screens/guard.py)
        except (GroupError, NodeError, StoreError) as exc:
            self.query_one("#group-invite-error", ErrorLine).show(str(exc))
            return
        self.dismiss(choice)

    @on(Button.Pressed, "#accept")
    def _accept(self) -> None:
        self._answer("accept")

    @on(Button.Pressed, "#decline")
    def _decline(self) -> None:
        self._answer("decline")

    @on(Button.Pressed, "#later")
    def action_later(self) -> None:
        self.dismiss(None)


def member_row(m: GroupMemberView) -> Content:
    """``● alice  admin`` (``○`` offline; ``you`` for ourselves)."""
    if m.is_me:
        dot = ("● ", "$success")
    else:
        dot = ("● ", "$success") if m.online else ("○ ", "$text-muted")
    parts: list[str | tuple[str, str]] = [dot, (shown_name(m.name, short_id(m.peer_id)), "bold")]
    if m.role == "admin":
        parts.append(("  admin", "$accent"))
    if m.is_me:
        parts.append(("  you", "$text-muted"))
    elif not m.is_contact:
        parts.append(("  not a contact", "$text-muted"))
    parts.append((f"  {short_id(m.peer_id, 12)}", "$text-muted"))
    return Content.assemble(*parts)


class GroupMembersScreen(GuardedModal[None]):
    """Who is in a group, who of them we have a session with now, and who is admin."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, group: GroupView, members: list[GroupMemberView]) -> None:
        super().__init__()
        self.group = group
        # Online first, then by name: who can be reached now is what the list is for.
        self.members = sorted(
            members, key=lambda m: (not (m.online or m.is_me), one_line(m.name, NAME_LIMIT))
        )

    def compose(self) -> ComposeResult:
        g = self.group
        name = shown_name(g.name, short_id(g.group_id))
        online = sum(1 for m in self.members if m.online and not m.is_me)
        with Vertical(id="group-members-card", classes="modal-card"):
            yield Static(literal(f"Members of {name}"), classes="card-title")
            yield Static(
                f"{len(self.members)} members · {online} online now",
                classes="card-text",
                markup=False,
            )
            with VerticalScroll(id="group-members"):
                for m in self.members[:MAX_LISTED]:
                    yield Static(member_row(m), classes="group-member")
                if len(self.members) > MAX_LISTED:
                    more = len(self.members) - MAX_LISTED
                    yield Static(f"… and {more} more", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Close", id="close", compact=True)

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(None)

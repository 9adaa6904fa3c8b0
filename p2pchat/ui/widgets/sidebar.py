"""The left-hand list: contacts, groups, then pending requests and group invitations,
then nearby strangers.

One ``OptionList`` rather than three widgets so the cursor moves through all
sections with the same keys; section titles are disabled options the cursor
skips.  Highlighting a contact opens its conversation at once (as in gomuks
and weechat's buffer list), and so does highlighting a group; requests, group
invitations and nearby peers need Enter, because opening them asks a question.
Groups come from their own refresh (:meth:`ContactList.set_groups`): the list
keeps the last contacts and groups it was given and redraws from both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from textual import on
from textual.content import Content
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option, OptionDoesNotExist

from p2pchat.ui.format import relative_time, short_id
from p2pchat.ui.safe import one_line
from p2pchat.ui.widgets.group_rows import (
    GROUP,
    GROUP_INVITE,
    GroupEntry,
    group_prompt,
    invite_prompt,
)

CONTACT = "c:"
REQUEST = "r:"
NEARBY = "n:"
HEADING = "h:"
# Rows are two short lines; longer text would wrap under the marker column.
NAME_CHARS = 18
PREVIEW_CHARS = 20


@dataclass(frozen=True, slots=True)
class ContactEntry:
    peer_id: str
    name: str
    verified: bool
    online: bool
    unread: int
    last_activity: float | None
    warning: bool = False
    route: str | None = None
    """"lan", "direct", "punched" or "relayed" while online (how the session runs)."""
    rtt_ms: float | None = None
    muted: bool = False
    blocked: bool = False
    last_seen: float | None = None
    """When a session with them last ran (what the header's "last seen" says too)."""


@dataclass(frozen=True, slots=True)
class RequestEntry:
    peer_id: str
    name: str | None
    preview: str | None


@dataclass(frozen=True, slots=True)
class NearbyEntry:
    peer_id: str
    name: str | None
    source: str
    proven: bool = False


@dataclass(frozen=True, slots=True)
class _Shown:
    """What the list was last given by the contact side (redrawn with new groups)."""

    contacts: Sequence[ContactEntry]
    requests: Sequence[RequestEntry]
    nearby: Sequence[NearbyEntry]
    now: float
    current: str | None


class ContactList(OptionList):
    """Contacts with presence, unread counts and last activity."""

    DEFAULT_CSS = """
    ContactList { height: 1fr; border: none; padding: 0; }
    """

    class ContactHighlighted(Message):
        def __init__(self, peer_id: str) -> None:
            super().__init__()
            self.peer_id = peer_id

    class RequestSelected(Message):
        def __init__(self, peer_id: str) -> None:
            super().__init__()
            self.peer_id = peer_id

    class NearbySelected(Message):
        def __init__(self, peer_id: str) -> None:
            super().__init__()
            self.peer_id = peer_id

    class GroupHighlighted(Message):
        def __init__(self, group_id: str) -> None:
            super().__init__()
            self.group_id = group_id

    class GroupInviteSelected(Message):
        def __init__(self, group_id: str) -> None:
            super().__init__()
            self.group_id = group_id

    def __init__(self, *, tz: dt.tzinfo | None, id: str | None = None) -> None:
        super().__init__(id=id)
        self.tz = tz
        self.contact_ids: list[str] = []
        self.request_ids: list[str] = []
        self.group_ids: list[str] = []
        self._groups: list[GroupEntry] = []
        self._open_group: str | None = None
        self._shown: _Shown | None = None

    # ------------------------------------------------------------- content
    def show(
        self,
        contacts: Sequence[ContactEntry],
        requests: Sequence[RequestEntry],
        nearby: Sequence[NearbyEntry],
        *,
        now: float,
        current: str | None,
    ) -> None:
        """Rebuild the list, keeping the cursor on the same entry."""
        self._shown = _Shown(contacts, requests, nearby, now, current)
        keep = self.highlighted_option.id if self.highlighted_option is not None else None
        if current is not None and (keep is None or keep.startswith(CONTACT)):
            # The open conversation wins over a contact row the cursor was left on: it
            # was opened some other way (palette, notification) before its row existed.
            keep = CONTACT + current
        elif self._open_group is not None and (keep is None or keep.startswith(GROUP)):
            keep = GROUP + self._open_group
        options: list[Option] = [
            _heading("Contacts", len(contacts)),
        ]
        options += [Option(self._contact_prompt(c, now), id=CONTACT + c.peer_id) for c in contacts]
        if not contacts:
            options.append(
                Option(Content.styled("  none yet: Ctrl+N", "$text-muted"), disabled=True)
            )
        groups = [g for g in self._groups if g.status != "invited"]
        invites = [g for g in self._groups if g.status == "invited"]
        if groups:
            options.append(_heading("Groups", len(groups)))
            options += [Option(group_prompt(g), id=GROUP + g.group_id) for g in groups]
        if requests:
            options.append(_heading("Requests", len(requests)))
            options += [Option(_request_prompt(r), id=REQUEST + r.peer_id) for r in requests]
        if invites:
            options.append(_heading("Group invitations", len(invites)))
            options += [Option(invite_prompt(g), id=GROUP_INVITE + g.group_id) for g in invites]
        if nearby:
            options.append(_heading("Nearby", len(nearby)))
            options += [Option(_nearby_prompt(n), id=NEARBY + n.peer_id) for n in nearby]
        self.contact_ids = [c.peer_id for c in contacts]
        self.request_ids = [r.peer_id for r in requests]
        self.group_ids = [g.group_id for g in self._groups]
        self.set_options(options)
        if keep is not None:
            self._highlight_id(keep)

    def set_groups(self, groups: Sequence[GroupEntry], *, open_group: str | None) -> None:
        """The groups and invitations to list (``open_group``: the one on screen)."""
        self._groups = list(groups)
        self._open_group = open_group
        shown = self._shown
        if shown is not None:
            current = None if open_group is not None else shown.current
            self.show(shown.contacts, shown.requests, shown.nearby, now=shown.now, current=current)

    def _contact_prompt(self, c: ContactEntry, now: float) -> Content:
        dot = ("● ", "$success") if c.online else ("○ ", "$text-muted")
        parts: list[str | tuple[str, str]] = [dot, (one_line(c.name, NAME_CHARS), "bold")]
        if c.verified:
            parts.append((" ✔", "$success"))
        if c.warning:
            parts.append((" ⚠", "$error bold"))
        if c.unread:
            parts.append((" ", ""))
            parts.append((f" {c.unread} ", "$text on $accent bold"))
        if c.online:
            presence = "online" + path_words(c.route, c.rtt_ms)
        else:
            # The same words as the conversation header, from the same fact.
            presence = f"seen {relative_time(c.last_seen, now, self.tz)}"
        if c.blocked:
            presence = "blocked"
        elif c.muted:
            presence += " · muted"
        second = ("\n  " + presence, "$text-muted")
        return Content.assemble(*parts, second)

    def _highlight_id(self, option_id: str) -> None:
        try:
            self.highlighted = self.get_option_index(option_id)
        except OptionDoesNotExist:
            return  # the entry went away; leave the cursor where it is

    def select_contact(self, peer_id: str) -> None:
        self._open_group = None
        self._highlight_id(CONTACT + peer_id)

    def select_group(self, group_id: str) -> None:
        self._open_group = group_id
        self._highlight_id(GROUP + group_id)

    def step_contact(self, delta: int, current: str | None) -> str | None:
        """The contact ``delta`` rows from ``current`` (wrapping), for Alt+Up/Down."""
        if not self.contact_ids:
            return None
        if current not in self.contact_ids:
            return self.contact_ids[0]
        index = (self.contact_ids.index(current) + delta) % len(self.contact_ids)
        return self.contact_ids[index]

    # ------------------------------------------------------------- events
    @on(OptionList.OptionHighlighted)
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        option_id = event.option_id or ""
        if option_id.startswith(CONTACT):
            event.stop()
            self.post_message(self.ContactHighlighted(option_id[len(CONTACT) :]))
        elif option_id.startswith(GROUP):
            event.stop()
            self.post_message(self.GroupHighlighted(option_id[len(GROUP) :]))

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        option_id = event.option_id or ""
        event.stop()
        if option_id.startswith(REQUEST):
            self.post_message(self.RequestSelected(option_id[len(REQUEST) :]))
        elif option_id.startswith(NEARBY):
            self.post_message(self.NearbySelected(option_id[len(NEARBY) :]))
        elif option_id.startswith(CONTACT):
            self.post_message(self.ContactHighlighted(option_id[len(CONTACT) :]))
        elif option_id.startswith(GROUP_INVITE):
            self.post_message(self.GroupInviteSelected(option_id[len(GROUP_INVITE) :]))
        elif option_id.startswith(GROUP):
            self.post_message(self.GroupHighlighted(option_id[len(GROUP) :]))


PATH_WORDS = {"lan": "LAN", "direct": "direct", "punched": "punched", "relayed": "relayed"}


def path_words(path: str | None, rtt_ms: float | None, via: str | None = None) -> str:
    """`` · LAN · 3 ms``: how the session runs, for the list and the header; the
    header also names the relay of a relayed session (``via``, its peer ID, shortened)."""
    words = ""
    if path:
        words += f" · {PATH_WORDS.get(path, one_line(path, 12))}"
    if path == "relayed" and via:
        words += f" via {one_line(short_id(via), 8)}"
    if rtt_ms is not None:
        words += f" · {rtt_ms:.0f} ms"
    return words


def _heading(title: str, count: int) -> Option:
    return Option(
        Content.assemble((title.upper(), "bold $text-primary"), (f"  {count}", "$text-muted")),
        id=HEADING + title,
        disabled=True,
    )


def _request_prompt(r: RequestEntry) -> Content:
    name = one_line(r.name, NAME_CHARS) if r.name else short_id(r.peer_id)
    preview = one_line(r.preview, PREVIEW_CHARS) if r.preview else "wants to add you"
    return Content.assemble(
        ("? ", "$warning bold"), (name, "bold"), ("\n  " + preview, "$text-muted")
    )


def _nearby_prompt(n: NearbyEntry) -> Content:
    name = one_line(n.name, NAME_CHARS) if n.name else short_id(n.peer_id)
    # Until a session proves it, the ID is only what the announcement claimed.
    proof = "" if n.proven else ", unproven"
    source = one_line(n.source, PREVIEW_CHARS)
    return Content.assemble(("+ ", "$text-muted"), name, (f"\n  {source}{proof}", "$text-muted"))

"""The left-hand list: contacts, then pending requests, then nearby strangers.

One ``OptionList`` rather than three widgets so the cursor moves through all
sections with the same keys; section titles are disabled options the cursor
skips.  Highlighting a contact opens its conversation at once (as in gomuks
and weechat's buffer list); requests and nearby peers need Enter, because
opening them asks a question.
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

    def __init__(self, *, tz: dt.tzinfo | None, id: str | None = None) -> None:
        super().__init__(id=id)
        self.tz = tz
        self.contact_ids: list[str] = []
        self.request_ids: list[str] = []

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
        keep = self.highlighted_option.id if self.highlighted_option is not None else None
        if current is not None and (keep is None or keep.startswith(CONTACT)):
            # The open conversation wins over a contact row the cursor was left on: it
            # was opened some other way (palette, notification) before its row existed.
            keep = CONTACT + current
        options: list[Option] = [
            _heading("Contacts", len(contacts)),
        ]
        options += [Option(self._contact_prompt(c, now), id=CONTACT + c.peer_id) for c in contacts]
        if not contacts:
            options.append(
                Option(Content.styled("  none yet: Ctrl+N", "$text-muted"), disabled=True)
            )
        if requests:
            options.append(_heading("Requests", len(requests)))
            options += [Option(_request_prompt(r), id=REQUEST + r.peer_id) for r in requests]
        if nearby:
            options.append(_heading("Nearby", len(nearby)))
            options += [Option(_nearby_prompt(n), id=NEARBY + n.peer_id) for n in nearby]
        self.contact_ids = [c.peer_id for c in contacts]
        self.request_ids = [r.peer_id for r in requests]
        self.set_options(options)
        if keep is not None:
            self._highlight_id(keep)

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
        self._highlight_id(CONTACT + peer_id)

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

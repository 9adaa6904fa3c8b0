"""``/search TEXT``: messages from every conversation that contain the words.

The node does the searching (``Node.search``: SQLite FTS5 over the whole
history, newest first, the last word may be the start of a word); this shows
the results, one line each (when, who, the words), and dismisses with the one
picked so the main screen can open its conversation with it selected.  Every
name and body is peer text, shown through ``literal``.
"""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from p2pchat.node import Node, NodeError
from p2pchat.remote import OwnerUnavailable
from p2pchat.store import Message, StoreError
from p2pchat.ui.format import clock_time, day_label, day_of, short_id
from p2pchat.ui.safe import one_line, shown_name
from p2pchat.ui.screens.guard import GuardedModal

RESULTS = 100


class SearchScreen(GuardedModal[Message | None]):
    """Type words, Enter searches; pick a result (Enter or a click) to go to it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    DEFAULT_CSS = """
    SearchScreen #search-results { height: auto; max-height: 20; margin: 1 0; border: none; }
    SearchScreen #search-status { color: $text-muted; margin: 1 0 0 0; }
    """

    def __init__(self, node: Node, text: str, *, today: dt.date, tz: dt.tzinfo | None) -> None:
        super().__init__()
        self.node = node
        self.text = text
        self.today = today
        self.tz = tz
        self.results: list[Message] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-card"):
            yield Static("Search messages", classes="card-title")
            yield Input(self.text, placeholder="words to find", id="search-input")
            yield Static("", id="search-status", markup=False)
            yield OptionList(id="search-results")

    def on_mount(self) -> None:
        if self.text.strip():
            self.search(self.text)
        else:
            self.query_one(Input).focus()

    @on(Input.Submitted, "#search-input")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.search(event.value)

    def search(self, text: str) -> None:
        status = self.query_one("#search-status", Static)
        options = self.query_one(OptionList)
        options.clear_options()
        self.results = []
        try:
            self.results = self.node.search(text, limit=RESULTS)
        except OwnerUnavailable:
            raise
        except (NodeError, StoreError, ValueError) as exc:
            status.update(str(exc))
            return
        if not self.results:
            status.update(f"Nothing found for {one_line(text, 60)}")
            self.query_one(Input).focus()
            return
        count = len(self.results)
        more = " (the newest)" if count >= RESULTS else ""
        status.update(f"{count} message{'s' if count != 1 else ''}{more}, newest first")
        options.add_options(Option(self.row(m), id=str(i)) for i, m in enumerate(self.results))
        options.highlighted = 0
        options.focus()

    def row(self, m: Message) -> Content:
        at = m.received_at if m.direction == "in" and m.received_at else m.created_at
        when = f"{day_label(day_of(at, self.tz), self.today)} {clock_time(at, self.tz)}"
        try:
            contact = self.node.find_contact(m.peer_id)
            name = shown_name(contact.name, short_id(m.peer_id))
        except (NodeError, StoreError):
            name = short_id(m.peer_id)
        who = f"you → {name}" if m.direction == "out" else name
        return Content.assemble(
            (when, "$text-muted"), "  ", (one_line(who, 30), "bold"), "  ", one_line(m.body, 200)
        )

    @on(OptionList.OptionSelected, "#search-results")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.results[int(event.option.id or 0)])

    def action_close(self) -> None:
        self.dismiss(None)

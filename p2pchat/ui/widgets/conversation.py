"""The right-hand pane: one conversation, newest at the bottom.

Every row is a :class:`ConversationItem` so kinds other than text messages
(file transfer cards) slot into the same timeline: subclass it, give it a
timestamp, and pass it to :meth:`ConversationView.show` (merged by time with
the messages) or :meth:`ConversationView.add_item` (at the bottom); day
separators and trimming then work for it unchanged.  Items with a
``transfer_id`` (cards) can be found again with :meth:`ConversationView.card`.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from rich.console import RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.events import Resize
from textual.widget import Widget
from textual.widgets import Static

from p2pchat.core.events import MessageState
from p2pchat.ui.format import (
    STATE_LABELS,
    TICKS,
    advance_state,
    clock_time,
    day_label,
    day_of,
)
from p2pchat.ui.safe import clean, literal, one_line, shown_name

AUTHOR_WIDTH = 10
NARROW_AUTHOR_WIDTH = 7
# Rows narrower than this give the text the room rather than the names.
NARROW_ROW = 70


def author_width(row_width: int) -> int:
    return AUTHOR_WIDTH if row_width >= NARROW_ROW else NARROW_AUTHOR_WIDTH


# A peer that stops typing without saying so should not look busy forever; peers
# repeat "typing" every few seconds while they type.
TYPING_TTL = 8.0
# A conversation pane with thousands of widgets makes every layout slow; older
# history stays in the store (``p2pchat history`` shows it all).
MAX_ITEMS = 400


@dataclass(frozen=True, slots=True)
class ChatLine:
    """What one message row needs, whether it came from history or from an event."""

    message_id: str
    outgoing: bool
    author: str
    body: str
    at: float
    state: MessageState
    quote: str | None = None
    """The first words of the message this one replies to (with its author)."""
    edited: bool = False
    deleted: bool = False
    delivery: str | None = None
    """Group messages of ours: how many members hold it ("3/5"), shown after the
    tick instead of the 1:1 states."""


class ConversationItem(Widget):
    """A row of the timeline; ``at`` decides which day separator it sits under."""

    DEFAULT_CSS = """
    ConversationItem { height: auto; }
    """

    def __init__(self, at: float, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.at = at
        # The author column's width, known before the first layout (the view
        # sets it) so that a new row is measured once: asking for ``self.size``
        # while rendering costs a map of the whole screen for an unplaced row.
        self.author_width = AUTHOR_WIDTH

    def on_resize(self, event: Resize) -> None:
        width = author_width(event.size.width)
        if width != self.author_width:
            self.author_width = width
            self.author_width_changed()

    def author_width_changed(self) -> None:
        """The row became narrow or wide (a terminal resize): redraw, maybe taller."""
        self.refresh(layout=True)

    @property
    def transfer_id(self) -> str | None:
        """Cards of file transfers name theirs; other rows have none."""
        return None


class MessageItem(ConversationItem):
    """One message: time, author, body, and for our own messages the delivery ticks."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "message--time",
        "message--author-in",
        "message--author-out",
        "message--tick",
        "message--tick-read",
    }

    DEFAULT_CSS = """
    MessageItem { height: auto; padding: 0 1; }
    MessageItem > .message--time { color: $text-muted; }
    MessageItem > .message--author-in { color: $text-secondary; text-style: bold; }
    MessageItem > .message--author-out { color: $text-primary; text-style: bold; }
    MessageItem > .message--tick { color: $text-muted; }
    MessageItem > .message--tick-read { color: $accent; text-style: bold; }
    """

    def __init__(self, line: ChatLine, tz: dt.tzinfo | None) -> None:
        super().__init__(line.at)
        self.line = line
        self.tz = tz
        # Cleaned once: render runs on every repaint.
        self._body = clean(line.body, multiline=True)
        self._author = shown_name(line.author)
        self.set_class(line.outgoing, "-outgoing")
        self._apply_state_class()

    def change(self, *, body: str | None = None, deleted: bool = False) -> None:
        """The message was edited (``body``) or deleted, on either side."""
        if deleted:
            self.line = replace(self.line, body="", deleted=True, quote=None)
        elif body is not None:
            self.line = replace(self.line, body=body, edited=True)
        self._body = clean(self.line.body, multiline=True)
        self.refresh(layout=True)

    @property
    def state(self) -> MessageState:
        return self.line.state

    def set_delivery(self, delivery: str) -> None:
        if delivery != self.line.delivery:
            self.line = replace(self.line, delivery=delivery)
            self.refresh(layout=True)

    def set_state(self, state: MessageState) -> None:
        new = advance_state(self.line.state, state)
        if new != self.line.state:
            self.line = replace(self.line, state=new)
            self._apply_state_class()
            self.refresh(layout=True)

    def _apply_state_class(self) -> None:
        for state in STATE_LABELS:
            self.set_class(state == self.line.state, f"-{state}")

    def render(self) -> RenderableType:
        line = self.line
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(width=5, no_wrap=True)
        # Narrow panes give the text the room rather than the names.
        grid.add_column(width=self.author_width, justify="right", no_wrap=True, overflow="ellipsis")
        grid.add_column(ratio=1, overflow="fold")
        author_class = "message--author-out" if line.outgoing else "message--author-in"
        if line.deleted:
            body = Text("message deleted", style="italic")
            body.stylize(self.get_component_rich_style("message--time"))
        else:
            body = Text(self._body)
            if line.edited:
                body.append(" (edited)", style=self.get_component_rich_style("message--time"))
        if line.quote:
            quote = Text("↪ " + one_line(line.quote, 80) + "\n")
            quote.stylize(self.get_component_rich_style("message--time"))
            body = quote + body
        if line.delivery is not None:
            body.append(" ")
            body.append("✓ " + line.delivery, style=self.get_component_rich_style("message--tick"))
        elif line.outgoing and not line.deleted:
            tick_class = "message--tick-read" if line.state == "read" else "message--tick"
            body.append(" ")
            body.append(TICKS[line.state], style=self.get_component_rich_style(tick_class))
        grid.add_row(
            Text(
                clock_time(line.at, self.tz),
                style=self.get_component_rich_style("message--time"),
            ),
            Text(self._author, style=self.get_component_rich_style(author_class)),
            body,
        )
        return grid


class DaySeparator(ConversationItem):
    DEFAULT_CSS = """
    DaySeparator { height: 1; color: $text-muted; padding: 0 1; }
    """

    def __init__(self, at: float, label: str) -> None:
        super().__init__(at)
        self.label = label

    def render(self) -> RenderableType:
        return Rule(Text(self.label, style=self.rich_style), style=self.rich_style)


class Timeline(VerticalScroll):
    """The scrolling part; replaced whole when another conversation opens.

    Swapping the container (rather than emptying it) lets the new rows mount
    at once: removal in Textual completes later, and rows of the old and the
    new conversation may share IDs when the same conversation is reloaded.
    """

    DEFAULT_CSS = """
    Timeline { height: 1fr; scrollbar-size-vertical: 1; }
    Timeline > .conv-empty { color: $text-muted; padding: 1 2; }
    """

    def __init__(self, *children: Widget) -> None:
        super().__init__(*children)
        self.can_focus = False

    def on_mount(self) -> None:
        self.scroll_end(animate=False, immediate=True)
        self.anchor()


class ConversationView(Vertical):
    """Header, warning banner, the scrolling timeline and the typing line."""

    DEFAULT_CSS = """
    ConversationView { height: 1fr; }
    ConversationView > #conv-header { height: 1; padding: 0 1; background: $panel; }
    ConversationView > #conv-banner {
        display: none; height: auto; padding: 0 1;
        background: $error; color: $text; text-style: bold;
    }
    ConversationView > #conv-banner.-visible { display: block; }
    ConversationView > #conv-typing { height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, *, tz: dt.tzinfo | None, id: str | None = None) -> None:
        super().__init__(id=id)
        self.tz = tz
        self.peer_id: str | None = None
        self._today: dt.date | None = None
        self._timeline = Timeline()
        self._messages: dict[str, MessageItem] = {}
        self._cards: dict[str, ConversationItem] = {}
        self._last: ConversationItem | None = None
        self._empty_hint = False
        # Messages that arrived since the last flush (mounted together: each row
        # added lays the whole pane out again).
        self._pending: list[ChatLine] = []
        # Who is typing, by peer: (name, until) on the monotonic clock.  A peer that
        # stops without saying so (crash, lost link) stops showing at ``until``.
        self._typing: dict[str, tuple[str, float]] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="conv-header", markup=False)
        yield Static(id="conv-banner", markup=False)
        yield self._timeline
        yield Static(id="conv-typing", markup=False)

    @property
    def timeline(self) -> Timeline:
        return self._timeline

    def _replace_timeline(self, children: list[Widget]) -> None:
        old = self._timeline
        self._timeline = Timeline(*children)
        self.mount(self._timeline, after=old)
        old.remove()

    # ------------------------------------------------------------ content
    def show_placeholder(self, text: Content | str) -> None:
        self.peer_id = None
        self._pending = []
        self.set_header("")
        self.set_banner(None)
        self.set_typing(None)
        self._messages = {}
        self._cards = {}
        self._last = None
        self._empty_hint = True
        shown = text if isinstance(text, Content) else literal(text, multiline=True)
        self._replace_timeline([Static(shown, classes="conv-empty")])

    def show(
        self,
        peer_id: str,
        header: Content | str,
        lines: Iterable[ChatLine],
        *,
        today: dt.date,
        empty_hint: str,
        cards: Sequence[ConversationItem] = (),
    ) -> None:
        """Replace the timeline with ``lines`` (oldest first) and ``cards``, merged by time."""
        self.peer_id = peer_id
        self._today = today
        self._pending = []  # the history being shown has them
        self.set_header(header)
        self._show_typing()
        rows: list[ConversationItem] = list(
            heapq.merge(
                (MessageItem(line, self.tz) for line in lines),
                sorted(cards, key=lambda card: card.at),
                key=lambda item: item.at,
            )
        )[-MAX_ITEMS:]
        items: list[Widget] = []
        messages: dict[str, MessageItem] = {}
        found: dict[str, ConversationItem] = {}
        last_day: dt.date | None = None
        self._last = None
        width = self.row_author_width()
        for item in rows:
            item.author_width = width
            day = day_of(item.at, self.tz)
            if day != last_day:
                items.append(DaySeparator(item.at, day_label(day, today)))
                last_day = day
            if isinstance(item, MessageItem):
                messages[item.line.message_id] = item
            elif item.transfer_id is not None:
                found[item.transfer_id] = item
            items.append(item)
            self._last = item
        self._empty_hint = not items
        if not items:
            items.append(Static(literal(empty_hint), classes="conv-empty"))
        self._messages = messages
        self._cards = found
        self._replace_timeline(items)

    def add_item(self, item: ConversationItem) -> None:
        """Append a row at the bottom, under a new day separator if the day changed."""
        self.add_items([item])

    def queue_line(self, line: ChatLine) -> None:
        """An arriving message: drawn at the next :meth:`flush_pending` (or before any
        other row is added, so rows keep the order in which things happened)."""
        self._pending.append(line)

    def flush_pending(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            self.add_lines(lines)

    def add_items(self, items: Sequence[ConversationItem]) -> None:
        """Append rows in one mount: the pane is laid out once for the lot."""
        if not items:
            return
        if self._pending:
            self.flush_pending()
        timeline = self._timeline
        if self._empty_hint:
            self._empty_hint = False
            for empty in timeline.query(".conv-empty"):
                empty.remove()
        width = self.row_author_width()
        new: list[Widget] = []
        for item in items:
            day = day_of(item.at, self.tz)
            last = self._last
            if last is None or day_of(last.at, self.tz) != day:
                today = self._today if self._today is not None else day
                new.append(DaySeparator(item.at, day_label(day, max(today, day))))
            item.author_width = width
            new.append(item)
            self._last = item
            if item.transfer_id is not None:
                self._cards[item.transfer_id] = item
        timeline.mount_all(new)
        self._trim()

    def row_author_width(self) -> int:
        """The author column for rows of this pane (rows lose the padding and scrollbar)."""
        return author_width(self.size.width - 3) if self.size.width else AUTHOR_WIDTH

    def remove_item(self, item: ConversationItem) -> None:
        """Take a row out (a placeholder whose real card arrived)."""
        if item.transfer_id is not None and self._cards.get(item.transfer_id) is item:
            del self._cards[item.transfer_id]
        if item.parent is self._timeline:
            item.remove()

    def card(self, transfer_id: str) -> ConversationItem | None:
        return self._cards.get(transfer_id)

    def cards(self) -> list[ConversationItem]:
        return list(self._cards.values())

    def add_line(self, line: ChatLine) -> None:
        self.add_lines([line])

    def add_lines(self, lines: Iterable[ChatLine]) -> None:
        """New messages at the bottom (those already shown are skipped)."""
        items: list[ConversationItem] = []
        for line in lines:
            if line.message_id in self._messages:
                continue
            item = MessageItem(line, self.tz)
            self._messages[line.message_id] = item
            items.append(item)
        self.add_items(items)

    def has_message(self, message_id: str) -> bool:
        return message_id in self._messages

    def change_message(
        self, message_id: str, *, body: str | None = None, deleted: bool = False
    ) -> None:
        item = self._messages.get(message_id)
        if item is not None:
            item.change(body=body, deleted=deleted)

    def set_state(self, message_id: str, state: MessageState) -> None:
        item = self._messages.get(message_id)
        if item is not None:
            item.set_state(state)

    def set_delivery(self, message_id: str, delivery: str) -> None:
        """A group message of ours reached more members ("4/5")."""
        item = self._messages.get(message_id)
        if item is not None:
            item.set_delivery(delivery)

    def message_items(self) -> list[MessageItem]:
        return list(self._messages.values())

    def _trim(self) -> None:
        children = list(self._timeline.children)
        excess = len(children) - MAX_ITEMS
        if excess > 0:
            dropped = children[:excess]
            for child in dropped:
                if isinstance(child, MessageItem):
                    self._messages.pop(child.line.message_id, None)
                elif isinstance(child, ConversationItem) and child.transfer_id is not None:
                    self._cards.pop(child.transfer_id, None)
            self._timeline.remove_children(dropped)

    # ------------------------------------------------------------- chrome
    def set_header(self, header: Content | str) -> None:
        """``header`` is Content built from cleaned parts, or plain text shown as it is."""
        shown = header if isinstance(header, Content) else literal(header)
        self.query_one("#conv-header", Static).update(shown)

    def set_banner(self, text: str | None) -> None:
        banner = self.query_one("#conv-banner", Static)
        banner.update(literal(text or "", multiline=True))
        banner.set_class(bool(text), "-visible")

    @property
    def banner_text(self) -> str:
        banner = self.query_one("#conv-banner", Static)
        return str(banner.content) if banner.has_class("-visible") else ""

    # ------------------------------------------------------------- typing
    def peer_typing(self, peer_id: str, name: str, active: bool, now: float) -> None:
        """``name`` types (or stopped) in the conversation with ``peer_id``."""
        if active:
            self._typing[peer_id] = (name, now + TYPING_TTL)
        else:
            self._typing.pop(peer_id, None)
        self._show_typing()

    def expire_typing(self, now: float) -> None:
        expired = [peer for peer, (_, until) in self._typing.items() if until <= now]
        for peer in expired:
            del self._typing[peer]
        if expired:
            self._show_typing()

    def forget_typing(self) -> None:
        self._typing.clear()
        self._show_typing()

    def _show_typing(self) -> None:
        shown = self._typing.get(self.peer_id or "")
        self.set_typing(f"{shown[0]} is typing…" if shown else None)

    def set_typing(self, text: str | None) -> None:
        # Called for every incoming message: the line is one row high whatever it
        # says, so an unchanged text costs nothing and a new one only a repaint.
        typing = self.query_one("#conv-typing", Static)
        shown = literal(text or "", limit=200)
        if typing.content != shown:
            typing.update(shown, layout=False)

    @property
    def typing_text(self) -> str:
        return str(self.query_one("#conv-typing", Static).content)

"""The right-hand pane: one conversation, newest at the bottom.

Every row is a :class:`ConversationItem` so kinds other than text messages
(file transfer cards) slot into the same timeline: subclass it, give it a
timestamp, and pass it to :meth:`ConversationView.show` (merged by time with
the messages) or :meth:`ConversationView.add_item` (at the bottom); day
separators and trimming then work for it unchanged.  Items with a
``transfer_id`` (cards) can be found again with :meth:`ConversationView.card`.

The view also keeps what only it can know: which row is selected (the
timeline takes the focus, arrows move the selection, letters ask the screen
to act on it), whether the user scrolled away from the newest row (new rows
are then counted in a "new messages below" line instead of pulling the view
down), where the unread messages start, and whether older history exists
above the first row (loaded a page at a time as the user scrolls up).
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
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.events import Resize
from textual.message import Message
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
    full_time,
)
from p2pchat.ui.links import find_links
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
# A conversation pane with thousands of widgets makes every layout slow: while the
# user follows the newest rows, rows beyond this many are dropped from the top (they
# are paged in again on scrolling up).  Paging older history in is not trimmed.
MAX_ITEMS = 400
# Refreshes a page of older history may take to be laid out before the pane keeps the
# user's place anyway (``prepend_lines``).
KEEP_PLACE_TRIES = 50


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

    def on_click(self, event: events.Click) -> None:
        view = next((a for a in self.ancestors if isinstance(a, ConversationView)), None)
        if view is not None:
            view.select(self, focus=True)

    @property
    def links(self) -> list[str]:
        return [] if self.line.deleted else find_links(self.line.body)

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


class UnreadMarker(ConversationItem):
    """The line above the first message that arrived while the user was away."""

    DEFAULT_CSS = """
    UnreadMarker { height: 1; color: $text-accent; padding: 0 1; }
    """

    def render(self) -> RenderableType:
        return Rule(Text("new messages", style=self.rich_style), style=self.rich_style)


class HistoryEdge(Static):
    """The first row while older messages exist in the store than the pane shows."""

    DEFAULT_CSS = """
    HistoryEdge { height: 1; color: $text-muted; padding: 0 1; text-align: center; }
    HistoryEdge:hover { color: $text; }
    """

    def on_click(self, event: events.Click) -> None:
        event.stop()
        self.post_message(ConversationView.OlderWanted())


class Timeline(VerticalScroll):
    """The scrolling part; replaced whole when another conversation opens.

    Swapping the container (rather than emptying it) lets the new rows mount
    at once: removal in Textual completes later, and rows of the old and the
    new conversation may share IDs when the same conversation is reloaded.

    It takes the focus to select rows (``Ctrl+Up`` from the message box, a
    click, or ``Shift+Tab``): its keys move the selection and act on it.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "step(-1)", "Older", show=False),
        Binding("down,j", "step(1)", "Newer", show=False),
        Binding("home", "first", "First", show=False),
        Binding("end", "latest", "Latest", show=False),
        Binding("escape", "leave", "Back to the message box", show=False),
        Binding("r", "act('reply')", "Reply", show=False),
        Binding("e", "act('edit')", "Edit", show=False),
        Binding("d,delete", "act('delete')", "Delete", show=False),
        Binding("o", "act('open_link')", "Open link", show=False),
        Binding("enter", "act('open')", "Open", show=False),
    ]

    DEFAULT_CSS = """
    Timeline { height: 1fr; scrollbar-size-vertical: 1; }
    Timeline > .conv-empty { color: $text-muted; padding: 1 2; }
    """

    def __init__(self, *children: Widget) -> None:
        super().__init__(*children)
        self.can_focus = True

    def on_mount(self) -> None:
        self.scroll_end(animate=False, immediate=True)
        self.anchor()

    @property
    def following(self) -> bool:
        """The view stays on the newest row: the user did not scroll away (Textual
        releases the anchor when the user scrolls, and restores it at the end)."""
        return not self._anchor_released

    @property
    def view(self) -> ConversationView | None:
        parent = self.parent
        return parent if isinstance(parent, ConversationView) else None

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        view = self.view
        if view is not None:
            view.scrolled(self)

    def on_blur(self) -> None:
        # Focus that leaves for a dialog (delete? which link?) comes back: the
        # selection stays for it.
        view = self.view
        if view is not None and self.app.screen is self.screen:
            view.detail_shown(False)

    def on_focus(self) -> None:
        view = self.view
        if view is not None:
            if view.selected is None:
                view.step(0)
            view.detail_shown(True)

    def action_step(self, delta: int) -> None:
        if self.view is not None:
            self.view.step(delta)

    def action_first(self) -> None:
        if self.view is not None:
            self.view.select_first()

    def action_latest(self) -> None:
        self.post_message(ConversationView.LatestWanted())

    def action_leave(self) -> None:
        self.post_message(ConversationView.Left())

    def action_act(self, action: str) -> None:
        view = self.view
        if view is not None and view.selected is not None:
            self.post_message(ConversationView.Acted(action, view.selected))


class ConversationView(Vertical):
    """Header, warning banner, the scrolling timeline, the "new messages below" line,
    the selected row's details and the typing line."""

    DEFAULT_CSS = """
    ConversationView { height: 1fr; }
    ConversationView > #conv-header { height: 1; padding: 0 1; background: $panel; }
    ConversationView > #conv-banner {
        display: none; height: auto; padding: 0 1;
        background: $error; color: $text; text-style: bold;
    }
    ConversationView > #conv-banner.-visible { display: block; }
    ConversationView > #conv-below {
        display: none; height: 1; padding: 0 1; background: $accent 30%; text-style: bold;
    }
    ConversationView > #conv-below.-visible { display: block; }
    ConversationView > #conv-detail {
        display: none; height: auto; max-height: 3; padding: 0 1; background: $panel;
    }
    ConversationView > #conv-detail.-visible { display: block; }
    ConversationView > #conv-typing { height: 1; padding: 0 1; color: $text-muted; }
    ConversationView ConversationItem.-selected { background: $boost; }
    ConversationView Timeline:focus ConversationItem.-selected { background: $primary 30%; }
    """

    class Acted(Message):
        """A key asked for ``action`` on the selected row: ``reply``, ``edit``,
        ``delete``, ``open_link``, ``open`` (a card's file, or a message's link)
        or ``open_folder``."""

        def __init__(self, action: str, item: ConversationItem) -> None:
            super().__init__()
            self.action = action
            self.item = item

    class Left(Message):
        """Escape in the timeline: back to the message box."""

    class LatestWanted(Message):
        """Jump to the newest message (End in the timeline, a click on "below")."""

    class OlderWanted(Message):
        """The user reached the top while older history exists: load a page."""

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
        self.selected: ConversationItem | None = None
        self._marker: UnreadMarker | None = None
        self._mark_next = False
        # Rows added while the user was scrolled away from the newest one.
        self.below = 0
        # Older history exists in the store above the first row; cards older than
        # the first message shown wait here to be merged in with their page.
        self.has_more = False
        self.older_requested = False
        self._held_cards: list[ConversationItem] = []
        self.paged = False
        """Pages of older history were added (the pane is beyond its usual size)."""

    def compose(self) -> ComposeResult:
        yield Static(id="conv-header", markup=False)
        yield Static(id="conv-banner", markup=False)
        yield self._timeline
        yield Static(id="conv-below", markup=False)
        yield Static(id="conv-detail", markup=False)
        yield Static(id="conv-typing", markup=False)

    @property
    def timeline(self) -> Timeline:
        return self._timeline

    def _replace_timeline(self, children: list[Widget]) -> None:
        old = self._timeline
        focused = old.has_focus
        self._timeline = Timeline(*children)
        self.mount(self._timeline, after=old)
        old.remove()
        if focused:
            self._timeline.focus()

    def _reset(self) -> None:
        self._pending = []
        self._messages = {}
        self._cards = {}
        self._last = None
        self.selected = None
        self._marker = None
        self._mark_next = False
        self.has_more = False
        self.older_requested = False
        self._held_cards = []
        self.paged = False
        self._set_below(0)
        self._show_detail()

    # ------------------------------------------------------------ content
    def show_placeholder(self, text: Content | str) -> None:
        self.peer_id = None
        self._reset()
        self.set_header("")
        self.set_banner(None)
        self.set_typing(None)
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
        unread_from: str | None = None,
        has_more: bool = False,
        paged: bool = False,
    ) -> None:
        """Replace the timeline with ``lines`` (oldest first) and ``cards``, merged by time.

        ``unread_from``: the first unread message, under a "new messages" line.
        ``has_more``: older messages exist than ``lines``; cards older than the
        first line wait for the page that reaches them.  ``paged``: ``lines`` hold
        pages of older history (shown whole, beyond the usual size).
        """
        self.peer_id = peer_id
        self._today = today
        self._reset()
        self.has_more = has_more
        self.set_header(header)
        self._show_typing()
        messages_in = [MessageItem(line, self.tz) for line in lines]
        shown_cards = sorted(cards, key=lambda card: card.at)
        if has_more and messages_in:
            first = messages_in[0].at
            self._held_cards = [c for c in shown_cards if c.at < first]
            shown_cards = [c for c in shown_cards if c.at >= first]
        rows: list[ConversationItem] = list(
            heapq.merge(messages_in, shown_cards, key=lambda item: item.at)
        )
        self.paged = paged
        if len(rows) > MAX_ITEMS and not paged:
            rows = rows[-MAX_ITEMS:]
            self.has_more = True
        items = self._rows(rows, unread_from=unread_from)
        self._empty_hint = not items
        if not items:
            items.append(Static(literal(empty_hint), classes="conv-empty"))
        self._replace_timeline(self._edge() + items)

    def _rows(
        self, rows: Sequence[ConversationItem], *, unread_from: str | None = None
    ) -> list[Widget]:
        """``rows`` (in time order) with day separators, registered with the view."""
        items: list[Widget] = []
        last_day: dt.date | None = None
        today = self._today
        width = self.row_author_width()
        for item in rows:
            item.author_width = width
            day = day_of(item.at, self.tz)
            if day != last_day:
                items.append(DaySeparator(item.at, day_label(day, max(today or day, day))))
                last_day = day
            if isinstance(item, MessageItem):
                self._messages[item.line.message_id] = item
                if item.line.message_id == unread_from and self._marker is None:
                    self._marker = UnreadMarker(item.at)
                    items.append(self._marker)
            elif item.transfer_id is not None:
                self._cards[item.transfer_id] = item
            items.append(item)
            if self._last is None or item.at >= self._last.at:
                self._last = item
        return items

    def _edge(self) -> list[Widget]:
        if not self.has_more:
            return []
        return [HistoryEdge("↑ older messages: scroll up to load them", classes="conv-edge")]

    @property
    def is_group(self) -> bool:
        return (self.peer_id or "").startswith("group:")

    @property
    def oldest_message_id(self) -> str | None:
        for child in self._timeline.children:
            if isinstance(child, MessageItem):
                return child.line.message_id
        return None

    def prepend_lines(self, lines: Sequence[ChatLine], *, has_more: bool) -> None:
        """A page of older history (oldest first) above the first row; the rows the
        user was reading stay where they were on screen."""
        self.older_requested = False
        timeline = self._timeline
        for edge in timeline.query(HistoryEdge):
            edge.remove()
        fresh = [
            MessageItem(line, self.tz) for line in lines if line.message_id not in self._messages
        ]
        if fresh:
            first = fresh[0].at
            cards = [c for c in self._held_cards if c.at >= first]
            self._held_cards = [c for c in self._held_cards if c.at < first]
        else:
            cards, self._held_cards = self._held_cards, []
        self.has_more = has_more
        rows: list[ConversationItem] = list(heapq.merge(fresh, cards, key=lambda item: item.at))
        items = self._rows(rows)
        if not items:
            return
        self.paged = True
        if self._empty_hint:
            self._empty_hint = False
            for empty in timeline.query(".conv-empty"):
                empty.remove()
        # The old first day separator repeats the new last one's day: drop it.
        first_row = next((c for c in timeline.children if isinstance(c, ConversationItem)), None)
        if isinstance(first_row, DaySeparator) and day_of(first_row.at, self.tz) == day_of(
            rows[-1].at, self.tz
        ):
            first_row.remove()
        before_height = timeline.virtual_size.height
        before_y = timeline.scroll_y
        items = self._edge() + items
        if first_row is not None and first_row.parent is timeline:
            timeline.mount_all(items, before=first_row)
        elif timeline.children:
            timeline.mount_all(items, before=0)
        else:
            timeline.mount_all(items)

        def keep_place(tries: int = KEEP_PLACE_TRIES) -> None:
            grown = timeline.virtual_size.height - before_height
            if grown <= 0 and tries > 0:
                # Not laid out yet (a busy machine can take more than one refresh to
                # mount a page): scrolling now would leave the user at the top, where
                # the next page is asked for at once instead of where they read.
                timeline.call_after_refresh(keep_place, tries - 1)
                return
            timeline.scroll_to(y=before_y + grown, animate=False, immediate=True)

        timeline.call_after_refresh(keep_place)

    def add_item(self, item: ConversationItem) -> None:
        """Append a row at the bottom, under a new day separator if the day changed."""
        self.add_items([item])

    def queue_line(self, line: ChatLine, *, unread: bool = False) -> None:
        """An arriving message: drawn at the next :meth:`flush_pending` (or before any
        other row is added, so rows keep the order in which things happened).
        ``unread``: the user is not looking; if no "new messages" line is up, one
        goes above this message."""
        if unread and self._marker is None and not self._pending:
            self._mark_next = True
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
        following = timeline.following
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
            if self._mark_next and isinstance(item, MessageItem):
                self._mark_next = False
                self._marker = UnreadMarker(item.at)
                new.append(self._marker)
            item.author_width = width
            new.append(item)
            self._last = item
            if item.transfer_id is not None:
                self._cards[item.transfer_id] = item
        timeline.mount_all(new)
        if following:
            self._trim()
        else:
            self._set_below(self.below + sum(isinstance(i, MessageItem) for i in items))

    def row_author_width(self) -> int:
        """The author column for rows of this pane (rows lose the padding and scrollbar)."""
        return author_width(self.size.width - 3) if self.size.width else AUTHOR_WIDTH

    def remove_item(self, item: ConversationItem) -> None:
        """Take a row out (a placeholder whose real card arrived)."""
        if item.transfer_id is not None and self._cards.get(item.transfer_id) is item:
            del self._cards[item.transfer_id]
        if item is self.selected:
            self.select(None)
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

    def message(self, message_id: str) -> MessageItem | None:
        return self._messages.get(message_id)

    def change_message(
        self, message_id: str, *, body: str | None = None, deleted: bool = False
    ) -> None:
        item = self._messages.get(message_id)
        if item is not None:
            item.change(body=body, deleted=deleted)
            if item is self.selected:
                self._show_detail()

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

    @property
    def unread_marker(self) -> UnreadMarker | None:
        return self._marker if self._marker is not None and self._marker.parent else None

    def _trim(self) -> None:
        rows = [c for c in self._timeline.children if isinstance(c, ConversationItem)]
        excess = len(rows) - MAX_ITEMS
        if excess > 0:
            dropped = rows[:excess]
            for child in dropped:
                if isinstance(child, MessageItem):
                    self._messages.pop(child.line.message_id, None)
                elif child.transfer_id is not None:
                    self._cards.pop(child.transfer_id, None)
                if child is self.selected:
                    self.selected = None
            self._timeline.remove_children(dropped)
            if not self.has_more:
                self.has_more = True
                self._timeline.mount_all(self._edge(), before=0)

    # ---------------------------------------------------------- scrolling
    def scrolled(self, timeline: Timeline) -> None:
        """The timeline moved: at the newest row the "below" count is done with; at
        the top, older history is asked for."""
        if timeline is not self._timeline:
            return
        if self.below and timeline.scroll_y >= timeline.max_scroll_y:
            self._set_below(0)
        if (
            self.has_more
            and not self.older_requested
            and timeline.max_scroll_y > 0
            and timeline.scroll_y <= 0
        ):
            self.older_requested = True
            self.post_message(self.OlderWanted())

    def _set_below(self, count: int) -> None:
        self.below = count
        line = self.query_one("#conv-below", Static)
        if count:
            noun = "message" if count == 1 else "messages"
            line.update(f"↓ {count} new {noun} below (Ctrl+End: jump to the latest)")
        line.set_class(bool(count), "-visible")

    def on_click(self, event: events.Click) -> None:
        if event.widget is not None and event.widget.id == "conv-below":
            event.stop()
            self.post_message(self.LatestWanted())

    def scroll_to_latest(self) -> None:
        self.select(None)
        self._timeline.scroll_end(animate=False, immediate=True)
        self._set_below(0)

    # ---------------------------------------------------------- selection
    def selectable(self) -> list[ConversationItem]:
        return [
            c
            for c in self._timeline.children
            if isinstance(c, MessageItem)
            or (isinstance(c, ConversationItem) and c.transfer_id is not None)
        ]

    def step(self, delta: int) -> None:
        """Move the selection ``delta`` rows (0: keep it, or select the newest row);
        past the first row, older history is asked for."""
        rows = self.selectable()
        if not rows:
            return
        if self.selected not in rows:
            self.select(rows[-1])
            return
        assert self.selected is not None
        index = rows.index(self.selected) + delta
        if index < 0:
            if self.has_more and not self.older_requested:
                self.older_requested = True
                self.post_message(self.OlderWanted())
            self._timeline.scroll_home(animate=False)
            index = 0
        self.select(rows[min(index, len(rows) - 1)])

    def select_first(self) -> None:
        rows = self.selectable()
        if rows:
            self.select(rows[0])

    def select(self, item: ConversationItem | None, *, focus: bool = False) -> None:
        if self.selected is not None and self.selected is not item:
            self.selected.remove_class("-selected")
        self.selected = item
        if item is not None:
            item.add_class("-selected")
            item.scroll_visible(animate=False, immediate=True)
            if focus:
                self._timeline.focus()
        self._show_detail()

    def detail_shown(self, focused: bool) -> None:
        if not focused:
            self.select(None)
        self._show_detail()

    def _show_detail(self) -> None:
        detail = self.query_one("#conv-detail", Static)
        item = self.selected
        if item is None:
            detail.set_class(False, "-visible")
            return
        detail.update(self.describe(item))
        detail.set_class(True, "-visible")

    def describe(self, item: ConversationItem) -> Content:
        """The selected row's full date and time, and what its keys do."""
        parts: list[str | tuple[str, str]] = [(full_time(item.at, self.tz), "bold")]
        keys: list[str] = []
        if isinstance(item, MessageItem):
            line = item.line
            if line.delivery is not None:
                parts.append(f" · held by {line.delivery}")
            elif line.outgoing:
                parts.append(f" · {STATE_LABELS[line.state]}")
            if line.edited:
                parts.append(" · edited")
            if line.deleted:
                parts.append(" · deleted")
            elif not self.is_group:  # groups have no replies, edits or deletions yet
                keys.append("r reply")
                if line.outgoing:
                    keys += ["e edit", "d delete"]
                found = item.links
                if found:
                    keys.append(
                        "o open link" if len(found) == 1 else f"o open a link ({len(found)})"
                    )
        else:
            keys += ["Enter open the file", "o its folder"]
        keys += ["↑↓ select", "Esc back"]
        parts.append((" · " + " · ".join(keys), "$text-muted"))
        return Content.assemble(*parts)

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

    @property
    def below_text(self) -> str:
        line = self.query_one("#conv-below", Static)
        return str(line.content) if line.has_class("-visible") else ""

    @property
    def detail_text(self) -> str:
        detail = self.query_one("#conv-detail", Static)
        return str(detail.content) if detail.has_class("-visible") else ""

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

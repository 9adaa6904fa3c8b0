"""Transfer cards: one file transfer, in the conversation's timeline or the transfers panel.

A card is a :class:`ConversationItem` placed by the transfer's creation time
among the messages.  It shows the names and size, a progress bar while bytes
move (mounted only then: a hidden ``ProgressBar`` still runs its timer), the
state with speed and time left, and the buttons that make sense in that state.
The card does not talk to the node: its buttons post :class:`TransferCard.Action`
and the screen carries them out.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.events import Resize
from textual.message import Message
from textual.widgets import Button, ProgressBar, Static

from p2pchat.core.events import TransferProgress
from p2pchat.ui.files import OPEN_HINT, RateMeter, TransferInfo, overall_done, status_text
from p2pchat.ui.format import clock_time, human_size
from p2pchat.ui.safe import clean, literal, one_line, shown_name
from p2pchat.ui.widgets.conversation import ConversationItem

STATE_CLASSES = (
    "-pending",
    "-moving",
    "-done",
    "-stopped",
    "-failed",
    "-stalled",
)


# Seconds without bytes before a moving transfer is called stalled.
STALL_AFTER = 5.0


def card_id(transfer_id: str) -> str:
    return f"transfer-{transfer_id}"


class _Status(Static):
    """The status line; its "open folder" hint is also a link for the mouse."""

    def __init__(self, *, classes: str) -> None:
        super().__init__(classes=classes)
        # Kept from resize events: asking for ``self.size`` of a row scrolled out
        # of view makes the compositor map the whole screen.
        self._shape = (0, 0)

    def on_resize(self, event: Resize) -> None:
        self._shape = (event.size.width, event.size.height)

    def show(self, text: str) -> None:
        text = clean(text, multiline=True)  # names, file names and error words of peers
        if text.endswith(OPEN_HINT):
            head = text[: -len(OPEN_HINT)]
            content = Content.from_markup(f"$head[@click=open_folder]{OPEN_HINT}[/]", head=head)
        else:
            content = Content(text)
        # Progress redraws this line several times a second: while it keeps its
        # height, repaint it alone instead of laying out the whole conversation.
        width, height = self._shape
        same_height = bool(width) and content.get_height(self.styles.get_rules(), width) == height
        self.update(content, layout=not same_height)

    def action_open_folder(self) -> None:
        for ancestor in self.ancestors:
            if isinstance(ancestor, TransferCard):
                ancestor.action_open_folder()
                return


def _state_class(info: TransferInfo) -> str:
    if info.state == "done":
        return "-done"
    if info.state == "failed":
        return "-failed"
    if info.state in ("declined", "cancelled"):
        return "-stopped"
    if info.state == "paused":
        return "-stalled"
    if info.moving:
        return "-moving"
    return "-pending"


class TransferCard(ConversationItem):
    """Names, size, progress, state and the actions of one transfer."""

    can_focus = True

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("o", "open_folder", "Open folder", show=False),
        Binding("enter", "open_file", "Open file", show=False),
    ]

    DEFAULT_CSS = """
    TransferCard { layout: horizontal; height: auto; padding: 0 1; margin: 0 0 0 0; }
    TransferCard > .tc-time { width: 5; color: $text-muted; }
    TransferCard > .tc-author {
        width: 10; margin: 0 1; color: $text-secondary; text-style: bold;
        content-align-horizontal: right; text-wrap: nowrap; text-overflow: ellipsis;
    }
    TransferCard.-outgoing > .tc-author { color: $text-primary; }
    TransferCard > .tc-body {
        width: 1fr; height: auto; padding: 0 0 0 1;
        border-left: outer $primary 50%;
    }
    TransferCard.-pending > .tc-body { border-left: outer $warning; }
    TransferCard.-moving > .tc-body { border-left: outer $primary; }
    TransferCard.-done > .tc-body { border-left: outer $success; }
    TransferCard.-stopped > .tc-body { border-left: outer $panel-lighten-2; }
    TransferCard.-failed > .tc-body { border-left: outer $error; }
    TransferCard.-stalled > .tc-body { border-left: outer $warning; }
    TransferCard:focus > .tc-body { background: $boost; }
    TransferCard .tc-title { height: auto; }
    TransferCard .tc-bar { height: auto; }
    TransferCard .tc-bar ProgressBar { width: 1fr; }
    TransferCard .tc-bar Bar { width: 1fr; }
    TransferCard .tc-foot { height: auto; }
    TransferCard .tc-status { width: 1fr; height: auto; color: $text-muted; }
    TransferCard.-done .tc-status { color: $text-success; }
    TransferCard.-failed .tc-status { color: $text-error; }
    TransferCard.-pending .tc-status { color: $text-warning; }
    TransferCard .tc-foot Button { margin: 0 0 0 1; min-width: 8; }
    """

    class Action(Message):
        """A button (or key) of the card asks for ``action`` on its transfer:
        ``accept``, ``decline``, ``save_as``, ``cancel``, ``open`` (the folder) or
        ``open_file``."""

        def __init__(self, card: TransferCard, action: str) -> None:
            super().__init__()
            self.card = card
            self.action = action

        @property
        def transfer_id(self) -> str:
            return self.card.info.transfer_id

        @property
        def control(self) -> TransferCard:
            return self.card

    def __init__(
        self,
        info: TransferInfo,
        *,
        author: str,
        peer_name: str,
        tz: dt.tzinfo | None,
        time_text: str | None = None,
        with_peer: bool = False,
        rate: float | None = None,
    ) -> None:
        super().__init__(info.created_at, id=card_id(info.transfer_id))
        self.info = info
        self.author = shown_name(author)
        self.peer_name = shown_name(peer_name)
        self.tz = tz
        self.time_text = time_text
        self.with_peer = with_peer
        self.rate = rate
        self._ready = False
        # When bytes last moved (monotonic), and how long ago once that is a stall.
        self._moved_at = time.monotonic()
        self.stalled_for: float | None = None
        self.set_class(not info.incoming, "-outgoing")
        self.add_class(_state_class(info))

    @property
    def transfer_id(self) -> str:
        return self.info.transfer_id

    # ------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        info = self.info
        yield Static(self.time_text or clock_time(info.created_at, self.tz), classes="tc-time")
        author = Static(literal(self.author), classes="tc-author")
        author.styles.width = self.author_width
        yield author
        with Vertical(classes="tc-body"):
            yield Static(self._title(), classes="tc-title")
            with Horizontal(classes="tc-bar"):
                if info.moving:
                    yield self._bar()
            with Horizontal(classes="tc-foot"):
                yield _Status(classes="tc-status")
                # Shown or hidden from the start: a row that changes height after its
                # first layout moves whatever a scroll position was computed for.
                for button in (
                    Button("Accept", id="tc-accept", variant="success", compact=True),
                    Button("Decline", id="tc-decline", variant="error", compact=True),
                    Button("Save as…", id="tc-save-as", compact=True),
                    Button("Cancel", id="tc-cancel", compact=True),
                    Button("Open", id="tc-open-file", variant="primary", compact=True),
                ):
                    button.display = self._button_shown(button.id or "")
                    yield button

    def on_mount(self) -> None:
        # Updates that came before the children existed only changed ``info``.
        self._ready = True
        self._show_buttons()
        self.query_one(".tc-title", Static).update(self._title())
        self._sync_bar()
        self.query_one(".tc-status", _Status).show(self._status())

    def author_width_changed(self) -> None:
        self.query_one(".tc-author", Static).styles.width = self.author_width

    def _bar(self) -> ProgressBar:
        bar = ProgressBar(total=self.info.total, show_eta=False, classes="tc-progress")
        bar.progress = self.info.done
        return bar

    def _title(self) -> Content:
        info = self.info
        arrow = ("↓ ", "$text-secondary bold") if info.incoming else ("↑ ", "$text-primary bold")
        parts: list[str | tuple[str, str]] = [
            arrow,
            (one_line(info.title, 120), "bold"),
            (f" · {human_size(info.total)}", "$text-muted"),
        ]
        if len(info.files) > 1 and not info.title.endswith("files)"):
            parts.append((f" · {len(info.files)} files", "$text-muted"))
        if self.with_peer:
            where = "from" if info.incoming else "to"
            parts.append((f" · {where} {self.peer_name}", "$text-muted"))
        return Content.assemble(*parts)

    def _status(self) -> str:
        return status_text(self.info, self.peer_name, self.rate, self.stalled_for)

    def check_stall(self, now: float) -> None:
        """Once a second: a moving transfer with no bytes for a while says "stalled"
        (its sender vanished, or the link broke) instead of a speed it no longer has."""
        idle = now - self._moved_at
        stalled = idle if self.info.moving and idle >= STALL_AFTER else None
        if (stalled is None) == (self.stalled_for is None) and (
            stalled is None or int(stalled) == int(self.stalled_for or 0)
        ):
            return
        self.stalled_for = stalled
        self.set_class(stalled is not None, "-stalled")
        if self._ready:
            self.query_one(".tc-status", _Status).show(self._status())

    def _button_shown(self, button_id: str) -> bool:
        info = self.info
        if button_id in ("tc-accept", "tc-decline", "tc-save-as"):
            return info.awaiting_answer
        if button_id == "tc-cancel":
            return info.cancellable
        return info.incoming and info.state == "done" and bool(info.saved)

    def _show_buttons(self) -> None:
        for button in self.query(".tc-foot Button").results(Button):
            button.display = self._button_shown(button.id or "")

    # ------------------------------------------------------------ updates
    def update_info(self, info: TransferInfo) -> None:
        """A new state (or a fresh read of the store)."""
        old = self.info
        self.info = info
        if (info.state, info.done) != (old.state, old.done):
            self._moved_at = time.monotonic()
            self.stalled_for = None
        if info.state != old.state:
            self.remove_class(*STATE_CLASSES)
            self.add_class(_state_class(info))
            if info.finished:
                self.rate = None
        if not self._ready:
            return
        if info.state != old.state:
            self._show_buttons()
        if (info.files, info.total) != (old.files, old.total):
            self.query_one(".tc-title", Static).update(self._title())
        self._sync_bar()
        self.query_one(".tc-status", _Status).show(self._status())

    def set_progress(self, attempt_done: int, attempt_total: int, rate: float | None) -> None:
        """The running attempt's bytes (a resumed attempt moves only what was missing)
        and the smoothed speed; redraws only what changed."""
        info = self.info
        done = overall_done(info.total, attempt_done, attempt_total)
        if info.finished or (done == info.done and rate == self.rate):
            return
        if done != info.done:
            self._moved_at = time.monotonic()
            self.stalled_for = None
            self.remove_class("-stalled")
        self.rate = rate
        self.info = replace(info, done=done)
        if not self._ready:
            return
        self._sync_bar()
        self.query_one(".tc-status", _Status).show(self._status())

    def _sync_bar(self) -> None:
        holder = self.query_one(".tc-bar", Horizontal)
        bars = list(holder.query(ProgressBar))
        if not self.info.moving:
            if bars:
                holder.remove_children()
            return
        if not bars:
            holder.mount(self._bar())
            return
        bar = bars[0]
        if bar.total != self.info.total:
            bar.total = self.info.total
        bar.progress = self.info.done

    @property
    def status(self) -> str:
        """The status line as shown (tests and the panel read it)."""
        return self._status()

    @property
    def progress_bar(self) -> ProgressBar | None:
        bars = list(self.query(ProgressBar))
        return bars[0] if bars else None

    # ------------------------------------------------------------ actions
    @on(Button.Pressed, "#tc-accept")
    def _accept(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.Action(self, "accept"))

    @on(Button.Pressed, "#tc-decline")
    def _decline(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.Action(self, "decline"))

    @on(Button.Pressed, "#tc-save-as")
    def _save_as(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.Action(self, "save_as"))

    @on(Button.Pressed, "#tc-cancel")
    def _cancel(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.Action(self, "cancel"))

    @on(Button.Pressed, "#tc-open-file")
    def _open_file(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_open_file()

    def action_open_folder(self) -> None:
        if self.info.incoming and self.info.state == "done":
            self.post_message(self.Action(self, "open"))

    def action_open_file(self) -> None:
        if self.info.incoming and self.info.state == "done":
            self.post_message(self.Action(self, "open_file"))


class PreparingCard(ConversationItem):
    """Stands where an outgoing card will be while the files are read and hashed."""

    DEFAULT_CSS = """
    PreparingCard { layout: horizontal; height: auto; padding: 0 1; }
    PreparingCard > .tc-time { width: 5; color: $text-muted; }
    PreparingCard > .tc-author {
        width: 10; margin: 0 1; color: $text-primary; text-style: bold;
        content-align-horizontal: right; text-wrap: nowrap; text-overflow: ellipsis;
    }
    PreparingCard > .tc-body {
        width: 1fr; height: auto; padding: 0 0 0 1; color: $text-muted;
        border-left: outer $panel-lighten-2;
    }
    """

    def __init__(self, at: float, *, author: str, what: str, tz: dt.tzinfo | None) -> None:
        super().__init__(at)
        self.author = shown_name(author)
        self.what = what
        self.tz = tz

    def compose(self) -> ComposeResult:
        yield Static(clock_time(self.at, self.tz), classes="tc-time")
        author = Static(literal(self.author), classes="tc-author")
        author.styles.width = self.author_width
        yield author
        yield Static(
            Content.assemble(
                ("↑ ", "$text-primary bold"),
                (one_line(self.what, 120), "bold"),
                ("\npreparing… (reading and hashing the files)", "$text-muted"),
            ),
            classes="tc-body",
        )

    def author_width_changed(self) -> None:
        self.query_one(".tc-author", Static).styles.width = self.author_width


class ProgressBoard:
    """The latest progress of every moving transfer, for the cards to draw.

    Progress events only record figures here (the receiving node reports every
    MiB, hundreds of times a second on loopback); the screen's periodic flush
    takes what is :meth:`due` and redraws those cards, so a fast transfer costs a
    few redraws a second whatever rate the node reports at.  Speeds are smoothed
    (``RateMeter``) so the number does not flicker.
    """

    def __init__(self) -> None:
        self._meters: dict[str, RateMeter] = {}
        self.rates: dict[str, float] = {}
        self._due: dict[str, tuple[int, int]] = {}
        self._last: dict[str, tuple[int, int]] = {}

    def record(self, event: TransferProgress, now: float) -> None:
        meter = self._meters.setdefault(event.transfer_id, RateMeter())
        self.rates[event.transfer_id] = meter.update(event.rate, now)
        self._due[event.transfer_id] = self._last[event.transfer_id] = (event.done, event.total)

    def due(self) -> dict[str, tuple[int, int]]:
        """What changed since the last call: transfer id to (done, total) of its attempt."""
        due, self._due = self._due, {}
        return due

    def last(self, transfer_id: str) -> tuple[int, int] | None:
        return self._last.get(transfer_id)

    def rate(self, transfer_id: str) -> float | None:
        return self.rates.get(transfer_id)

    def forget(self, transfer_id: str) -> None:
        """The transfer ended: nothing more to draw for it."""
        for table in (self._meters, self.rates, self._due, self._last):
            table.pop(transfer_id, None)

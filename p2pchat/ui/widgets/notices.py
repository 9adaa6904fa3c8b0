"""Calm notifications: one notice per subject, updated in place, drawn at a bounded rate.

Textual's toasts are one per call, sit on top of whatever screen is in front
(help, a dialog) and cannot be updated.  A contact who sends 500 messages
would make 500 of them.  Here a notice has a *key* (``msg:PEER``,
``offer:ID``...): posting the same key again updates its text and count and
keeps it up a little longer instead of stacking a new one.  The tray belongs
to the main screen, so dialogs and help cover it like the rest of that screen.

Posting only records the notice; :meth:`NoticeTray.flush` (called by the
screen's periodic flush) mounts, updates and expires cards, so a burst costs a
few redraws a second whatever its size.  A click on a notice posts
:class:`NoticeTray.Activated` with the notice's ``target`` for the screen to
open.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Static

from p2pchat.ui.safe import one_line

Severity = Literal["information", "warning", "error"]

# Cards shown at once; the rest are counted on one line.
SHOWN = 3
DEFAULT_TIMEOUT = 8.0


@dataclass(slots=True)
class Notice:
    key: str
    title: str
    text: str
    severity: Severity
    expires_at: float
    count: int = 1
    target: str | None = None
    """What a click opens (the screen decides what the string means)."""

    def content(self) -> Content:
        title = one_line(self.title, 48)
        parts: list[str | tuple[str, str]] = [(title, "bold")]
        if self.count > 1:
            parts.append((f"  {self.count} new", "$text-accent bold"))
        parts.append(("\n" + one_line(self.text, 160), ""))
        return Content.assemble(*parts)


class NoticeCard(Static):
    """One notice; a click activates it."""

    DEFAULT_CSS = """
    NoticeCard {
        width: 50; max-width: 100%; height: auto; padding: 0 1; margin: 0 0 1 0;
        background: $panel-lighten-1; border-left: outer $success;
        visibility: visible;
    }
    NoticeCard.-warning { border-left: outer $warning; }
    NoticeCard.-error { border-left: outer $error; }
    NoticeCard:hover { background: $panel-lighten-2; }
    """

    def __init__(self, notice: Notice) -> None:
        super().__init__(notice.content())
        self.key = notice.key
        self.target = notice.target
        self.set_class(True, f"-{notice.severity}")

    def show(self, notice: Notice) -> None:
        self.target = notice.target
        for severity in ("information", "warning", "error"):
            self.set_class(severity == notice.severity, f"-{severity}")
        self.update(notice.content())

    def on_click(self, event: events.Click) -> None:
        event.stop()
        tray = self.parent
        if isinstance(tray, NoticeTray):
            tray.activate(self.key)


class NoticeTray(Vertical):
    """The stack of notices at the top right of the main screen, over the oldest lines
    of the conversation rather than the newest."""

    DEFAULT_CSS = """
    NoticeTray {
        layer: notices; dock: top; width: 1fr; height: auto; max-height: 70%;
        align: right top; visibility: hidden; margin: 1 1 0 0;
    }
    NoticeTray > .notices-more {
        width: 50; max-width: 100%; height: 1; padding: 0 1;
        color: $text-muted; background: $panel; visibility: visible;
    }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = set()

    class Activated(Message):
        """The user clicked a notice."""

        def __init__(self, key: str, target: str | None) -> None:
            super().__init__()
            self.key = key
            self.target = target

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, id: str | None = None):
        super().__init__(id=id)
        self.clock = clock
        # Newest last: dicts keep insertion order, and a re-posted key moves to the end.
        self.notices: dict[str, Notice] = {}
        self._dirty = False

    def compose(self) -> ComposeResult:
        yield from ()

    # ----------------------------------------------------------- the model
    def post(
        self,
        key: str,
        title: str,
        text: str,
        *,
        severity: Severity = "information",
        timeout: float = DEFAULT_TIMEOUT,
        target: str | None = None,
        count: int | None = None,
    ) -> bool:
        """Show or update the notice ``key``; True if it is new (not an update).

        ``count`` sets the "N new" figure (the screen knows the unread count);
        by default each post of the same key adds one.
        """
        now = self.clock()
        notice = self.notices.pop(key, None)
        new = notice is None
        if notice is None:
            notice = Notice(key, title, text, severity, now + timeout, 1, target)
        else:
            notice.title, notice.text, notice.severity = title, text, severity
            notice.target = target
            notice.count += 1
            notice.expires_at = max(notice.expires_at, now + timeout)
        if count is not None:
            notice.count = count
        self.notices[key] = notice
        self._dirty = True
        return new

    def set_count(self, key: str, count: int) -> None:
        notice = self.notices.get(key)
        if notice is not None and notice.count != count:
            notice.count = count
            self._dirty = True

    def drop(self, key: str) -> None:
        if self.notices.pop(key, None) is not None:
            self._dirty = True

    def drop_where(self, predicate: Callable[[Notice], bool]) -> None:
        for key in [k for k, n in self.notices.items() if predicate(n)]:
            self.drop(key)

    def activate(self, key: str) -> None:
        notice = self.notices.get(key)
        if notice is not None:
            self.drop(key)
            self.flush()
            self.post_message(self.Activated(key, notice.target))

    @property
    def keys(self) -> list[str]:
        """Keys of the notices up now, oldest first."""
        return list(self.notices)

    # ---------------------------------------------------------- the screen
    def flush(self) -> None:
        """Expire what is due and bring the cards in line with the notices."""
        now = self.clock()
        for key in [k for k, n in self.notices.items() if n.expires_at <= now]:
            del self.notices[key]
            self._dirty = True
        if not self._dirty or not self.is_mounted:
            return
        self._dirty = False
        shown = list(self.notices.values())[-SHOWN:]
        hidden = len(self.notices) - len(shown)
        cards = [child for child in self.children if isinstance(child, NoticeCard)]
        more = [c for c in self.children if isinstance(c, Static) and c.has_class("notices-more")]
        same = [c.key for c in cards] == [n.key for n in shown] and bool(more) == bool(hidden)
        if same:
            # The usual case in a burst: the same notices with new counts and text.
            for card, notice in zip(cards, shown, strict=True):
                card.show(notice)
            for line in more:
                line.update(f"+{hidden} more")
        else:
            self.remove_children()
            new: list[Static] = []
            if hidden:
                new.append(Static(f"+{hidden} more", classes="notices-more", markup=False))
            new += [NoticeCard(notice) for notice in shown]
            if new:
                self.mount_all(new)
        self.display = bool(self.notices)

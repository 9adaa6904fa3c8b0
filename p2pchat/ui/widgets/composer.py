"""The message input: multi-line, Enter sends, with shell-like history.

Enter cannot mean "newline" in a chat box, and terminals disagree about which
modified Enter they can report: Ctrl+J (a plain line feed) reaches every
terminal, Alt+Enter almost every one, and Shift+Enter only those that speak
the kitty keyboard protocol (kitty, WezTerm, foot, Ghostty, recent iTerm2).
All three insert a newline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from textual import events
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.message import Message
from textual.widgets import TextArea

from p2pchat.ui.files import pasted_paths
from p2pchat.ui.format import InputHistory
from p2pchat.ui.safe import one_line

NEWLINE_KEYS = frozenset({"ctrl+j", "shift+enter", "alt+enter"})


@dataclass(frozen=True, slots=True)
class ComposeContext:
    """What Enter does with the text besides sending it: answer a message, or
    replace the text of one of ours."""

    kind: Literal["reply", "edit"]
    message_id: str
    about: str
    """Who and what the message said (peer text: shown cleaned, one line)."""


class Composer(TextArea):
    """Where messages and slash commands are typed."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("pageup", "scroll_conversation(-1)", "Scroll up", show=False),
        Binding("pagedown", "scroll_conversation(1)", "Scroll down", show=False),
    ]

    DEFAULT_CSS = """
    Composer {
        height: auto;
        min-height: 3;
        max-height: 10;
        border: round $primary 40%;
        padding: 0 1;
    }
    Composer:focus { border: round $primary; }
    Composer:disabled { border: round $panel; }
    """

    class Submitted(Message):
        """The user pressed Enter on a non-blank text."""

        def __init__(self, composer: Composer, text: str) -> None:
            super().__init__()
            self.composer = composer
            self.text = text

        @property
        def control(self) -> Composer:
            return self.composer

    class Typed(Message):
        """The user changed the text by typing or pasting (not by sending or recalling)."""

    class PathPasted(Message):
        """A paste named existing files or folders (a drag and drop, in most terminals).

        Sent instead of inserting the text while ``intercept_paths`` is on: the
        handler decides (offer the files, or :meth:`Composer.insert` the
        ``text`` as typed after all).
        """

        def __init__(self, composer: Composer, paths: list[Path], text: str) -> None:
            super().__init__()
            self.composer = composer
            self.paths = paths
            self.text = text

        @property
        def path(self) -> Path:
            return self.paths[0]

        @property
        def control(self) -> Composer:
            return self.composer

    class ScrollRequested(Message):
        """Page Up/Down in the composer scroll the conversation, as in IRC clients."""

        def __init__(self, direction: int) -> None:
            super().__init__()
            self.direction = direction

    def __init__(self, *, id: str | None = None, placeholder: str = "") -> None:
        super().__init__(
            id=id,
            soft_wrap=True,
            tab_behavior="focus",
            show_line_numbers=False,
            highlight_cursor_line=False,
            placeholder=placeholder,
        )
        self.sent_history = InputHistory()
        self.context: ComposeContext | None = None
        # Off: a pasted path is just text.  The main screen turns it on and
        # answers PathPasted (file drop).
        self.intercept_paths = False

    def set_context(self, context: ComposeContext | None) -> None:
        """Reply to or edit a message with the next Enter (None: a plain message again);
        the box's title says which, and Escape drops it."""
        self.context = context
        if context is None:
            self.border_title = None
            return
        verb = "Replying to" if context.kind == "reply" else "Editing"
        self.border_title = Content.assemble(
            (f"{verb} ", "bold"), one_line(context.about, 60), (" · Esc cancels", "dim")
        )

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "escape" and self.context is not None:
            event.stop()
            event.prevent_default()
            if self.context.kind == "edit":
                self.clear()
            self.set_context(None)
            return
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.submit()
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            self.post_message(self.Typed())
            return
        if event.is_printable and not self.read_only:
            self.post_message(self.Typed())
        # TextArea's own handler runs next (Textual calls each class's handler).

    async def _on_paste(self, event: events.Paste) -> None:
        if self.intercept_paths and not self.read_only:
            paths = pasted_paths(event.text)
            if paths:
                # Not inserted: TextArea's own handler must not run.
                event.stop()
                event.prevent_default()
                self.post_message(self.PathPasted(self, paths, event.text))
                return
        self.post_message(self.Typed())
        # TextArea's own handler inserts the text next.

    def submit(self) -> None:
        text = self.text
        if not text.strip():
            return
        self.sent_history.add(text)
        self.clear()
        self.post_message(self.Submitted(self, text))

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self.cursor_location[0] == 0:
            recalled = self.sent_history.previous(self.text)
            if recalled is not None:
                self._recall(recalled, at_end=False)
            return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        if not select and self.sent_history.browsing and self.cursor_at_last_line:
            recalled = self.sent_history.next()
            if recalled is not None:
                self._recall(recalled, at_end=True)
            return
        super().action_cursor_down(select)

    def _recall(self, text: str, *, at_end: bool) -> None:
        self.load_text(text)
        self.move_cursor(self.document.end if at_end else (0, len(self.document[0])))

    def action_scroll_conversation(self, direction: int) -> None:
        self.post_message(self.ScrollRequested(direction))

"""A small dialog that asks one question and offers a few answers as a list.

Used where an action on a message needs a word from the user first: delete
for both sides, or which of a message's links to open.  The answers are an
``OptionList`` rather than buttons because some of them are peer text (a
link): options are shown as Content built by ``literal``, never as markup,
and a long one wraps instead of widening the dialog.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from p2pchat.ui.safe import literal

# What the dialog shows of the text it asks about (a message body).
TEXT_LIMIT = 400


class ChoiceScreen(ModalScreen[str | None]):
    """Dismisses with the id of the answer picked, or None (Escape)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    DEFAULT_CSS = """
    ChoiceScreen #choice-list { height: auto; max-height: 12; margin: 1 0; border: none; }
    ChoiceScreen .card-text { max-height: 8; }
    """

    def __init__(self, title: str, text: str, choices: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.text = text
        self.choices = list(choices)

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-card"):
            yield Static(literal(self.title_text), classes="card-title")
            if self.text:
                yield Static(
                    literal(self.text, multiline=True, limit=TEXT_LIMIT), classes="card-text"
                )
            yield OptionList(
                *(
                    Option(literal(label, limit=300), id=str(i))
                    for i, (_, label) in enumerate(self.choices)
                ),
                id="choice-list",
            )

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = 0
        options.focus()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.choices[int(event.option.id or 0)][0])

    def action_cancel(self) -> None:
        self.dismiss(None)

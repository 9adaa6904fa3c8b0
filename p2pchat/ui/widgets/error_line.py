"""An inline error that takes no room until there is something to say."""

from __future__ import annotations

from textual.widgets import Static

from p2pchat.ui.safe import literal


class ErrorLine(Static):
    """Forms on small terminals cannot spare a blank line for an error that may never come."""

    DEFAULT_CSS = """
    ErrorLine { color: $error; height: auto; display: none; }
    ErrorLine.-shown { display: block; }
    """

    def __init__(self, text: str = "", *, id: str | None = None) -> None:
        super().__init__(literal(text, multiline=True), id=id)
        self.set_class(bool(text), "-shown")

    def show(self, text: str) -> None:
        """``text`` is shown literally: errors quote names and words that peers chose."""
        self.update(literal(text, multiline=True))
        self.set_class(bool(text), "-shown")

    @property
    def text(self) -> str:
        return str(self.content) if self.has_class("-shown") else ""

"""An inline error that takes no room until there is something to say."""

from __future__ import annotations

from textual.widgets import Static


class ErrorLine(Static):
    """Forms on small terminals cannot spare a blank line for an error that may never come."""

    DEFAULT_CSS = """
    ErrorLine { color: $error; height: auto; display: none; }
    ErrorLine.-shown { display: block; }
    """

    def __init__(self, text: str = "", *, id: str | None = None) -> None:
        super().__init__(text, id=id, markup=False)
        self.set_class(bool(text), "-shown")

    def show(self, text: str) -> None:
        self.update(text)
        self.set_class(bool(text), "-shown")

    @property
    def text(self) -> str:
        return str(self.content) if self.has_class("-shown") else ""

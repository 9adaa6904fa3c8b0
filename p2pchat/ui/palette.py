"""Command palette (Ctrl+P): every action of the current screen, searchable."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.screen import Screen

PaletteCommand = tuple[str, str, Callable[[], object]]


@runtime_checkable
class HasPaletteCommands(Protocol):
    def palette_commands(self, screen: Screen[Any]) -> Iterator[PaletteCommand]: ...


class ChatCommands(Provider):
    """Asks the app for its commands each time, so they follow contacts and screens.

    ``self.screen`` is the screen the palette was opened from (the palette is
    itself a screen, so ``app.screen`` would be the palette).
    """

    def _commands(self) -> list[PaletteCommand]:
        app = self.app
        if isinstance(app, HasPaletteCommands):
            return list(app.palette_commands(self.screen))
        return []

    async def discover(self) -> Hits:
        for title, help_text, callback in self._commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, text=title, help=help_text)

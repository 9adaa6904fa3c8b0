"""Command palette (Ctrl+P): every action of the current screen, searchable."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, cast, runtime_checkable

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content
from textual.fuzzy import Matcher
from textual.screen import Screen

from p2pchat.ui.safe import literal, one_line

PaletteCommand = tuple[str, str, Callable[[], object]]


@runtime_checkable
class HasPaletteCommands(Protocol):
    def palette_commands(self, screen: Screen[Any]) -> Iterator[PaletteCommand]: ...


def highlight(matcher: Matcher, title: str) -> Content:
    """``title`` with the matched letters marked, as literal Content.

    ``Matcher.highlight`` parses its argument as markup, and titles carry
    contacts' names and file names: those would be read as styles and actions.
    """
    content = Content(title)
    score, offsets = matcher.fuzzy_search.match(matcher.query, title)
    if score:
        for offset in offsets:
            if not title[offset].isspace():
                content = content.stylize(matcher.match_style, offset, offset + 1)
    return content


def _help(text: str) -> str:
    """Help text as the palette wants it.

    The palette reads ``help`` with ``Content.from_markup``, which hands a
    Content back unchanged: giving it one keeps outside text literal.
    """
    return cast(str, literal(one_line(text, 120)))


class ChatCommands(Provider):
    """Asks the app for its commands each time, so they follow contacts and screens.

    ``self.screen`` is the screen the palette was opened from (the palette is
    itself a screen, so ``app.screen`` would be the palette).
    """

    def _commands(self) -> list[PaletteCommand]:
        app = self.app
        if isinstance(app, HasPaletteCommands):
            return [
                (one_line(title, 100), help_text, callback)
                for title, help_text, callback in app.palette_commands(self.screen)
            ]
        return []

    async def discover(self) -> Hits:
        for title, help_text, callback in self._commands():
            yield DiscoveryHit(Content(title), callback, text=title, help=_help(help_text))

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(
                    score,
                    highlight(matcher, title),
                    callback,
                    text=title,
                    help=_help(help_text),
                )

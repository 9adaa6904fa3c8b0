"""Text from outside the app, made safe to put on screen: the one rule, used everywhere.

Peers choose display names, message bodies, file names, request previews,
nearby names and the words of their error replies; the DHT and the LAN add
more.  None of it may steer the terminal or the app:

- **No markup.**  Textual parses ``str`` as markup in many places (``Static``,
  ``Label``, placeholders, palette entries, notifications): ``[red]``,
  ``[@click=app.quit]`` or a stray ``[/]`` in a name would restyle the screen,
  run actions or raise ``MarkupError`` (which once closed the app for good).
  Peer text therefore only ever reaches a widget as :class:`~textual.content.Content`
  built by :func:`literal` (Content is never parsed), or as the value of a
  plain-text field.  Textual's own ``escape()`` is not used: it misses
  ``[$var]`` and ``[ style]`` forms.
- **No control bytes, no invisible reordering or hiding, bounded**: the rule
  in ``p2pchat/plain.py`` (``clean``, ``one_line``), which the CLI uses too.
"""

from __future__ import annotations

from textual.content import Content

# The control-character rule is shared with the CLI (p2pchat/plain.py); this module
# adds what only Textual needs: text as Content, never parsed as markup.
from p2pchat.plain import ELLIPSIS, MAX_MARKS, clean, one_line

__all__ = ["ELLIPSIS", "MAX_MARKS", "NAME_LIMIT", "clean", "literal", "one_line", "shown_name"]

# Rows of lists, headers, titles: what a display name may take on screen.
NAME_LIMIT = 64


def shown_name(text: str | None, fallback: str = "", *, limit: int = NAME_LIMIT) -> str:
    """A display name as shown anywhere: one line, bounded, never empty if ``fallback`` is not."""
    shown = one_line(text or "", limit)
    return shown or fallback


def literal(
    text: str, style: str = "", *, multiline: bool = False, limit: int | None = None
) -> Content:
    """``text`` as Content that is never parsed as markup, cleaned by :func:`clean`."""
    plain = clean(text, multiline=multiline, limit=limit)
    return Content.styled(plain, style) if style else Content(plain)

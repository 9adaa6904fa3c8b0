"""Text from outside (peers, the DHT, the LAN), made safe to show in a terminal.

The one rule for every view, the app's widgets and the CLI's lines alike:

- **No control bytes.**  C0/C1 controls (ESC starts every terminal escape
  sequence, OSC 8 links and OSC 52 clipboard writes included) are shown as
  visible symbols (``␛``), so the reader sees that something odd was sent
  instead of the terminal acting on it.
- **No invisible reordering or hiding.**  Format characters (bidi overrides
  and isolates, zero-width spaces and joiners, tag characters, soft hyphens)
  are dropped: a right-to-left override would show ``exe.png`` for
  ``gnp.exe``, and zero-width characters make two names that look the same.
- **Bounded.**  Runs of combining marks are capped (a "Zalgo" name would
  otherwise paint over the rows above and below it) and callers give a length
  limit for anything that sits in a row.

Markup is the app's own concern (``ui/safe.py`` never lets peer text be parsed
as markup); a terminal shows ``[red]`` as the characters it is.

Hand-written because no library does this for a terminal: ``rich`` and Textual
strip only bell, backspace, vertical tab, form feed and carriage return, and
leave ESC, C1 and format characters in place.
"""

from __future__ import annotations

import unicodedata

__all__ = ["ELLIPSIS", "MAX_MARKS", "clean", "one_line"]

# More combining marks on one character than any script needs.
MAX_MARKS = 4
ELLIPSIS = "…"

_DEL = "\x7f"


def _control_picture(ch: str) -> str:
    """``␛`` for ESC, ``␀`` for NUL...: the Unicode symbol for a C0 control, else ``�``."""
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)
    if ch == _DEL:
        return "\u2421"
    return "\ufffd"


def clean(text: str, *, multiline: bool = False, limit: int | None = None) -> str:
    """Plain text that shows as what it is, whatever ``text`` contains.

    Line breaks are kept only when ``multiline`` (a message body); otherwise
    they and tabs become spaces.  ``limit`` cuts to that many characters,
    ending in ``…``.  The result still has to go into a widget as literal
    text (:func:`literal`), never as markup.
    """
    if not isinstance(text, str):
        text = str(text)
    if limit is not None and len(text) > limit * 4 + 16:
        # Cut before cleaning: a 10 MB string should not be walked to show 40 characters.
        text = text[: limit * 4 + 16]
    if not (text.isascii() and text.isprintable()):
        text = _clean_chars(text, multiline)
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 1)] + ELLIPSIS
    return text


def _clean_chars(text: str, multiline: bool) -> str:
    newline = "\n" if multiline else " "
    tab = "    " if multiline else " "
    out: list[str] = []
    marks = 0
    for ch in text.replace("\r\n", "\n"):
        if ch == "\n" or ch == "\r":
            out.append(newline)
            marks = 0
            continue
        if ch == "\t":
            out.append(tab)
            marks = 0
            continue
        category = unicodedata.category(ch)
        if category == "Cc":
            out.append(_control_picture(ch))
            marks = 0
        elif category in ("Zl", "Zp"):
            out.append(newline)
            marks = 0
        elif category == "Cf":
            continue
        elif category == "Cs":
            out.append("\ufffd")
            marks = 0
        elif category in ("Mn", "Me"):
            marks += 1
            if marks <= MAX_MARKS:
                out.append(ch)
        else:
            out.append(ch)
            marks = 0
    return "".join(out)


def one_line(text: str, limit: int = 80) -> str:
    """A one-line preview (list rows, titles, notifications): whitespace runs become one space."""
    flat = " ".join(clean(text, limit=limit * 4 + 16).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + ELLIPSIS

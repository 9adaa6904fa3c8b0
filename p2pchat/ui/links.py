"""Links in message text, for "open link" on a selected message.

Only ``http://`` and ``https://`` links are offered: a message is peer text,
and other schemes (``file:``, ``javascript:``, custom handlers that start
programs) are not something a contact should be able to have opened with one
key.  The link is handed to the desktop's opener as one argument, never
through a shell.  The pattern is hand-written (the standard library has none):
a scheme, then everything up to whitespace, quotes or angle brackets, less the
punctuation that ends a sentence and a closing bracket that has no opening one
inside the link.
"""

from __future__ import annotations

import re

LINK = re.compile(r"https?://[^\s<>\"'`\x00-\x1f\x7f]+", re.IGNORECASE)
TRAILING = ".,;:!?"
PAIRS = {")": "(", "]": "[", "}": "{"}
# More than this many links in one message are not offered (and a long body is
# not scanned past this many characters).
MAX_LINKS = 20
MAX_SCAN = 20_000
MAX_LINK = 2048


def _trim(link: str) -> str:
    while link:
        last = link[-1]
        if last in TRAILING:
            link = link[:-1]
        elif last in PAIRS and link.count(last) > link.count(PAIRS[last]):
            link = link[:-1]
        else:
            break
    return link


def find_links(text: str) -> list[str]:
    """The web links in ``text``, in order, without repeats."""
    found: list[str] = []
    for match in LINK.finditer(text[:MAX_SCAN]):
        link = _trim(match.group(0))
        host = link.split("://", 1)[1]
        if not host or host.startswith("/") or len(link) > MAX_LINK or link in found:
            continue
        found.append(link)
        if len(found) >= MAX_LINKS:
            break
    return found

"""Copying an invite: never claim a copy that may not have happened.

The app can only ask the terminal to put text on the clipboard (OSC 52), and
no terminal says whether it did: many ignore the request (macOS Terminal, some
multiplexers without ``set-clipboard``).  So the app says it asked, and selects
the invite on screen so it can be copied by hand in one step.
"""

from __future__ import annotations

from textual.widget import Widget
from textual.widgets import TextArea


def copy_invite(where: Widget, invite: str, shown: TextArea) -> None:
    where.app.copy_to_clipboard(invite)
    shown.focus()
    shown.select_all()
    where.notify(
        "Asked the terminal to copy the invite (it does not say whether it did). If "
        "pasting gives nothing, the invite is selected above: copy it with your "
        "terminal's own copy key.",
        timeout=8,
    )

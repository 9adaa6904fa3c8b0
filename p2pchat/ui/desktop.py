"""Optional desktop notifications, for when the terminal is not in view.

Off unless ``settings["desktop_notifications"]`` is true.  Uses the desktop's own
tool (``notify-send`` on Linux desktops, ``osascript`` on macOS) so no library is
needed; where neither exists this quietly does nothing, the in-app notification and
the bell remain.
"""

from __future__ import annotations

import asyncio
import html
import shutil
import sys

from p2pchat.ui.safe import one_line


def notifier_command(title: str, body: str) -> list[str] | None:
    """The command that shows one notification here, or None if there is no tool.

    Both texts usually come from peers: control and format characters go (see
    ``safe.py``), and for ``notify-send`` the body is escaped, since most
    notification daemons read it as HTML-like markup (``<a href>``, ``<img>``).
    """
    title, body = one_line(title, 80), one_line(body, 200)
    if sys.platform == "darwin" and shutil.which("osascript"):
        script = f"display notification {_quote(body)} with title {_quote(title)}"
        return ["osascript", "-e", script]
    if shutil.which("notify-send"):
        return ["notify-send", "--app-name=p2pchat", "--", title, html.escape(body, quote=False)]
    return None


def _quote(text: str) -> str:
    """An AppleScript string literal: peers choose this text, so escape everything."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped + '"'


async def notify_desktop(title: str, body: str) -> bool:
    """Show a desktop notification; True if a notifier ran successfully."""
    command = notifier_command(title, body)
    if command is None:
        return False
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(proc.wait(), 5) == 0
    except (OSError, TimeoutError):
        return False

"""Terminal UI (Textual).  Talks to the node only through ``p2pchat.node.Node``.

The CLI runs :func:`run` when ``p2pchat`` is started without a command.
"""

from __future__ import annotations

import logging
from typing import Any

from p2pchat.config import Paths

__all__ = ["run"]


def run(
    paths: Paths,
    *,
    passphrase: str | None = None,
    listen: str | None = None,
    **start_options: Any,
) -> int:
    """Run the app for the home ``paths``; return the process exit code.

    ``start_options`` are passed to ``Node.start`` (``mdns=``, ``dht=``,
    ``downloads=``...), so the UI node can discover and be found like a daemon.

    While the app owns the terminal, log records go to Textual's log (visible
    with ``textual console``) instead of stderr, where they would tear the
    screen apart.
    """
    from textual.logging import TextualHandler

    from p2pchat.ui.app import ChatApp

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [TextualHandler()]
    try:
        app = ChatApp(paths, passphrase=passphrase, listen=listen, start_options=start_options)
        app.run()
    finally:
        root.handlers = saved
    return app.return_code or 0

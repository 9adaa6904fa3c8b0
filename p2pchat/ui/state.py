"""What the app remembers between runs: which conversation was open.

A restart opens that conversation again rather than the contact at the top of
the list (a message once went to the wrong person that way).  The value names
a contact, so it lives in the node's database (``Node.view_state``), which a
home with a passphrase keeps encrypted, and an attached app reaches it through
the owner like everything else.  Older versions kept it in ``ui-state.json`` in
the home, in clear: the first run that finds that file moves its value into
the database and deletes it.  Losing this value costs a click, never data, so
a failing read or write is ignored (except a node that went away, which the
screen's guard reports).
"""

from __future__ import annotations

import json
from pathlib import Path

from p2pchat.config import Paths
from p2pchat.node import Node, NodeError
from p2pchat.remote import OwnerUnavailable
from p2pchat.store import StoreError

CONVERSATION = "conversation"
LEGACY_FILE = "ui-state.json"


def legacy_path(paths: Paths) -> Path:
    return paths.home / LEGACY_FILE


def _legacy_conversation(paths: Paths) -> str | None:
    try:
        data = json.loads(legacy_path(paths).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get(CONVERSATION) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def migrate_legacy(node: Node) -> None:
    """Move the conversation an older version kept in ``ui-state.json`` into the
    database (unless the database already has one), then delete the file."""
    path = legacy_path(node.paths)
    if not path.exists():
        return
    value = _legacy_conversation(node.paths)
    if value is not None and node.view_state(CONVERSATION) is None:
        node.set_view_state(CONVERSATION, value)
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)


def last_conversation(node: Node) -> str | None:
    """The peer ID of the conversation open when the app last ran, if known."""
    try:
        migrate_legacy(node)
        return node.view_state(CONVERSATION)
    except OwnerUnavailable:
        raise
    except (NodeError, StoreError, OSError):
        return None


def save_conversation(node: Node, peer_id: str) -> None:
    try:
        node.set_view_state(CONVERSATION, peer_id)
    except OwnerUnavailable:
        raise
    except (NodeError, StoreError):
        return

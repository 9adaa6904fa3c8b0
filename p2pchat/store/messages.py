"""What the parts of the store that handle messages share: one message read back
by its conversation and id (outgoing edits and deletes, incoming changes).
"""

from __future__ import annotations

import sqlite3

from p2pchat.store.database import StoreBase
from p2pchat.store.records import _MESSAGE_COLUMNS, Message, _message


class MessageRows(StoreBase):
    """Message lookups shared by the outgoing and incoming halves."""

    @staticmethod
    def _get_message(db: sqlite3.Connection, peer_id: str, message_id: str) -> Message:
        row = db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer_id = ? AND id = ?",
            (peer_id, message_id),
        ).fetchone()
        assert row is not None
        return _message(row)

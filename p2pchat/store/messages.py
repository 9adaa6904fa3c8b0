"""What the parts of the store that handle messages share: how a message id is made,
and one message read back by its conversation and id (outgoing edits and deletes,
incoming changes).
"""

from __future__ import annotations

import os
import sqlite3

from p2pchat.store.database import StoreBase
from p2pchat.store.records import _MESSAGE_COLUMNS, Message, _message

_TIME_MASK = (1 << 48) - 1


def id_head(now: float) -> str:
    """The first 12 hex digits of the ids of messages made at ``now``: the time in
    milliseconds (48 bits, as UUIDv7 has it)."""
    return f"{int(max(now, 0.0) * 1000) & _TIME_MASK:012x}"


def new_message_id(now: float, head: str | None = None) -> str:
    """A fresh message id: 32 lowercase hex digits, the time then 80 random bits.

    Time first, so that ids made one after another sort together: the unique index on
    ``(peer_id, id)`` then grows at its end, like every other index of ``messages``,
    instead of taking each new id at a random place, which dirtied one page of it
    per message in every commit (docs/performance.md, "Time-ordered message ids").
    The random part alone keeps ids unique; it is also what people see and type
    (the last 8 digits, ``#1a2b3c4d``), as the first ones are the same for every
    message of a day."""
    return (head or id_head(now)) + os.urandom(10).hex()


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

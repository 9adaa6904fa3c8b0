"""Reading a conversation back: pages of history and lookups by message id."""

from __future__ import annotations

from typing import Any

from p2pchat.store.database import StoreBase
from p2pchat.store.errors import StoreError
from p2pchat.store.records import _MAX_POS, _MESSAGE_COLUMNS, Message, _message


class HistoryMixin(StoreBase):
    """Conversation history and message lookups."""

    def history(
        self, peer_id: str, *, limit: int | None = None, before: str | None = None
    ) -> list[Message]:
        """Both directions in the order they were stored, which is the order shown:
        the newest ``limit`` messages, or the ``limit`` stored just before the message
        ``before`` (an id of this conversation), for paging back through a long history
        at the same cost per page however long it is.

        Ordering by the peer's ``sent_at`` would let a skewed clock reshuffle
        a conversation the user already read.
        """
        if limit is not None and limit <= 0:
            return []
        with self._read() as db:
            upper = None
            if before is not None:
                found = db.execute(
                    "SELECT pos FROM messages WHERE peer_id = ? AND id = ?", (peer_id, before)
                ).fetchone()
                if found is None:
                    raise StoreError(f"no message {before!r} in this conversation")
                upper = int(found[0])
            if limit is None:
                rows = db.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                    " WHERE peer_id = ? AND kind = 'text' AND pos < ? ORDER BY pos",
                    (peer_id, upper if upper is not None else _MAX_POS),
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM ("
                    f" SELECT pos, {_MESSAGE_COLUMNS} FROM messages"
                    " WHERE peer_id = ? AND kind = 'text' AND pos < ?"
                    " ORDER BY pos DESC LIMIT ?) ORDER BY pos",
                    (peer_id, upper if upper is not None else _MAX_POS, limit),
                ).fetchall()
        return [_message(row) for row in rows]

    def message_ids(self, ending: str, *, peer_id: str | None = None, limit: int = 2) -> list[str]:
        """Ids of text messages that end with ``ending`` (to resolve what a user typed:
        the end of an id is what is shown, ``new_message_id`` says why; ``limit`` 2 is
        enough to tell unique from ambiguous).  No index holds the ends of ids, so this
        reads the conversation's ids (or every id): a few ms per 10,000 messages."""
        if not ending or not all(c in "0123456789abcdef" for c in ending):
            return []
        query = "SELECT DISTINCT id FROM messages WHERE kind = 'text' AND substr(id, ?) = ?"
        params: list[Any] = [-len(ending), ending]
        if peer_id is not None:
            query += " AND peer_id = ?"
            params.append(peer_id)
        with self._read() as db:
            return [r[0] for r in db.execute(query + " LIMIT ?", (*params, limit))]

    def get_message(self, message_id: str, *, peer_id: str | None = None) -> Message | None:
        """A message by id.  Ids are unique per conversation; without ``peer_id`` our
        own outgoing message wins (its id was drawn here, so it names one message),
        then the earliest stored incoming one."""
        with self._read() as db:
            if peer_id is not None:
                row = db.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer_id = ? AND id = ?",
                    (peer_id, message_id),
                ).fetchone()
            else:
                row = db.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?"
                    " ORDER BY direction = 'out' DESC, pos LIMIT 1",
                    (message_id,),
                ).fetchone()
        return None if row is None else _message(row)

"""Full-text search over message bodies (SQLite FTS5).

New rows are indexed in batches (at the node's tick and before every search,
up to ``fts_position``) rather than by a trigger, so a message's commit never
pays for the index's pages (see the migration that creates ``messages_fts``).
"""

from __future__ import annotations

from p2pchat.store.database import StoreBase
from p2pchat.store.records import _JOINED_MESSAGE_COLUMNS, Message, _message


def _search_words(text: str) -> list[str]:
    """The words of a search, for quoting into an FTS5 query (a quote inside a word is
    doubled, FTS5's own escape); at most 16, each at most 64 characters."""
    return [w[:64].replace('"', '""') for w in text.split()][:16]


class SearchMixin(StoreBase):
    """The FTS5 index and queries on it."""

    def index_messages(self, *, limit: int | None = None, chunk: int = 20_000) -> int:
        """Add messages stored since the last call to the full-text index, oldest first,
        at most ``limit`` (all when None), ``chunk`` per transaction so other writers
        wait briefly.  Returns how many were indexed."""
        with self._read() as db:
            behind = db.execute(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE pos > (SELECT pos FROM fts_position))"
            ).fetchone()[0]
        if not behind:
            return 0  # nothing new: no write transaction (the node asks every second)
        done = 0
        while limit is None or done < limit:
            step = chunk if limit is None else min(chunk, limit - done)
            with self._write() as db:
                start = int(db.execute("SELECT pos FROM fts_position").fetchone()[0])
                last = db.execute(
                    "SELECT max(pos), count(*) FROM (SELECT pos FROM messages WHERE pos > ?"
                    " ORDER BY pos LIMIT ?)",
                    (start, step),
                ).fetchone()
                if last[0] is None:
                    return done
                db.execute(
                    "INSERT INTO messages_fts (rowid, body)"
                    " SELECT pos, body FROM messages WHERE pos > ? AND pos <= ?",
                    (start, int(last[0])),
                )
                db.execute("UPDATE fts_position SET pos = ?", (int(last[0]),))
            done += int(last[1])
        return done

    def search(
        self, text: str, *, peer_id: str | None = None, limit: int = 50
    ) -> list[Message]:
        """Messages whose body has every word of ``text`` (the last one as a prefix),
        newest first, at most ``limit``; only with ``peer_id`` when given.

        Words are matched by SQLite FTS5's unicode61 tokenizer: case and diacritics
        do not matter, punctuation separates words.  ``text`` is never parsed as an
        FTS5 query: each word is quoted, so no input is a syntax error.
        """
        words = _search_words(text)
        if not words or limit <= 0:
            return []
        query = " ".join(f'"{w}"' for w in words[:-1]) + f' "{words[-1]}"*'
        self.index_messages()
        with self._read() as db:
            if peer_id is None:
                rows = db.execute(
                    f"SELECT {_JOINED_MESSAGE_COLUMNS}"
                    " FROM messages_fts f JOIN messages m ON m.pos = f.rowid"
                    " WHERE messages_fts MATCH ? AND m.kind = 'text' ORDER BY f.rowid DESC"
                    " LIMIT ?",
                    (query.strip(), limit),
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT {_JOINED_MESSAGE_COLUMNS}"
                    " FROM messages_fts f JOIN messages m ON m.pos = f.rowid"
                    " WHERE messages_fts MATCH ? AND m.peer_id = ? AND m.kind = 'text'"
                    " ORDER BY f.rowid DESC"
                    " LIMIT ?",
                    (query.strip(), peer_id, limit),
                ).fetchall()
        return [_message(row) for row in rows]

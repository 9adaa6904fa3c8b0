"""Outgoing messages: numbering and queueing (texts, edits, deletes), the outbox
the node sends from, and the sent/delivered/read marks the peer's acks bring.

A node's store queues texts through the outbox journal (``database.py``,
``journal.py``): numbered from counters in memory (``Sending``), made durable with
one append, folded into these tables by the next transaction.  Edits, deletes and
retries under a caller's message id are rare and read rows first: they stay SQL
transactions, numbered by the journal's holder only (``_numbering``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from p2pchat.store.database import Sending
from p2pchat.store.errors import StoreError
from p2pchat.store.messages import MessageRows, id_head, new_message_id
from p2pchat.store.records import (
    _JOINED_MESSAGE_COLUMNS,
    _MESSAGE_COLUMNS,
    Message,
    MessageKind,
    _message,
)


class OutboxMixin(MessageRows):
    """Our messages, from queueing to read."""

    def queue_message(
        self,
        peer_id: str,
        body: str,
        *,
        now: float,
        message_id: str | None = None,
        reply_to: str | None = None,
    ) -> Message:
        """Number, store and enqueue a message in one transaction.

        Passing the same ``message_id`` again returns the stored message instead
        of sending it twice, so a caller unsure whether a call went through
        (it was killed around it) can simply retry.
        """
        if not peer_id:
            raise ValueError("peer_id must not be empty")
        if message_id is None and self._holds_journal():
            return self._journal_queue(peer_id, [body], now, reply_to)[0]
        if message_id is None:  # a fresh id names no stored message
            with self._numbering(), self._write() as db:
                return self._queue(db, peer_id, new_message_id(now), body, now, reply_to=reply_to)
        mid = message_id
        with self._numbering(), self._write() as db:
            row = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer_id = ? AND id = ?",
                (peer_id, mid),
            ).fetchone()
            if row is not None:
                existing = _message(row)
                if existing.direction == "out":
                    return existing
                raise StoreError(f"message id {mid!r} is already used by another message")
            return self._queue(db, peer_id, mid, body, now, reply_to=reply_to)

    def _queue(
        self,
        db: sqlite3.Connection,
        peer_id: str,
        mid: str,
        body: str,
        now: float,
        *,
        reply_to: str | None = None,
        kind: MessageKind = "text",
        target: str | None = None,
    ) -> Message:
        seq = int(
            db.execute(
                "INSERT INTO conversations (peer_id, send_seq) VALUES (?, 1)"
                " ON CONFLICT (peer_id) DO UPDATE SET send_seq = send_seq + 1"
                " RETURNING send_seq",
                (peer_id,),
            ).fetchall()[0][0]
        )
        self._numbered(peer_id, seq)
        db.execute(
            "INSERT INTO messages (id, peer_id, direction, seq, body, created_at,"
            " received_at, state, updated_at, reply_to, kind, target)"
            " VALUES (?, ?, 'out', ?, ?, ?, NULL, 'queued', ?, ?, ?, ?)",
            (mid, peer_id, seq, body, now, now, reply_to, kind, target),
        )
        db.execute(
            "INSERT INTO outbox (message_id, peer_id, seq) VALUES (?, ?, ?)",
            (mid, peer_id, seq),
        )
        return Message(
            mid, peer_id, "out", seq, body, now, None, "queued", now,
            reply_to=reply_to, kind=kind, target=target,
        )  # fmt: skip

    def _journal_queue(
        self, peer_id: str, bodies: Sequence[str], now: float, reply_to: str | None
    ) -> list[Message]:
        """Number from memory, append to the journal (one write), return: no SQL
        statement once the conversation's counters are loaded."""
        with self._lock:
            sending = self._sending_state(peer_id)
            first = sending.send_seq + 1
            head = id_head(now)
            messages = [
                Message(new_message_id(now, head), peer_id, "out", seq, body, now, None,
                        "queued", now, reply_to)
                for seq, body in enumerate(bodies, first)
            ]  # fmt: skip
            self._journal_append(messages)
            sending.send_seq += len(messages)
        return messages

    def _sending_state(self, peer_id: str) -> Sending:
        """The conversation's outgoing counters, read once, then kept in memory."""
        sending = self._sending.get(peer_id)
        if sending is None:
            self.fold()  # the counters must include every journaled message: raises
            with self._read() as db:
                row = db.execute(
                    "SELECT (SELECT send_seq FROM conversations WHERE peer_id = ?1),"
                    " (SELECT min(seq) FROM outbox WHERE peer_id = ?1)",
                    (peer_id,),
                ).fetchone()
            send_seq = int(row[0] or 0)
            base = send_seq + 1 if row[1] is None else int(row[1])
            sending = self._sending[peer_id] = Sending(send_seq, base)
        return sending

    def _numbered(self, peer_id: str, seq: int) -> None:
        """A message numbered in SQL: the counters in memory follow."""
        sending = self._sending.get(peer_id)
        if sending is not None:
            sending.send_seq = seq

    @staticmethod
    def _own_text(db: sqlite3.Connection, message_id: str) -> Message:
        """One of our messages (their ids were drawn here: one id, one message)."""
        row = db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?"
            " ORDER BY direction = 'out' DESC LIMIT 1",
            (message_id,),
        ).fetchone()
        if row is None:
            raise StoreError(f"no message {message_id}")
        message = _message(row)
        if message.kind != "text" or message.direction != "out":
            raise StoreError("only your own messages can be edited or deleted")
        if message.deleted_at is not None:
            raise StoreError("that message was deleted")
        return message

    def edit_message(self, message_id: str, body: str, *, now: float) -> tuple[Message, Message]:
        """Change the text of one of our messages and queue the edit for the peer,
        in one transaction; returns (the message as it is now, the edit row)."""
        with self._numbering(), self._write() as db:
            message = self._own_text(db, message_id)
            db.execute(
                "UPDATE messages SET body = ?, edited_at = ?, updated_at = ?"
                " WHERE peer_id = ? AND id = ?",
                (body, now, now, message.peer_id, message_id),
            )
            edit = self._queue(
                db, message.peer_id, new_message_id(now), body, now,
                kind="edit", target=message_id,
            )  # fmt: skip
            changed = self._get_message(db, message.peer_id, message_id)
        return changed, edit

    def delete_message(self, message_id: str, *, now: float) -> tuple[Message, Message]:
        """Delete one of our messages for both sides: it becomes a tombstone (empty
        body), and so does every edit of it still stored here, then the deletion is
        queued for the peer.  Returns (the tombstone, the delete row)."""
        with self._numbering(), self._write() as db:
            message = self._own_text(db, message_id)
            db.execute(
                "UPDATE messages SET body = '', deleted_at = ?, updated_at = ?"
                " WHERE peer_id = ? AND id = ?",
                (now, now, message.peer_id, message_id),
            )
            # An edit not yet acknowledged would still carry the old words to the
            # peer: it becomes a deletion too (applying one twice is harmless).
            db.execute(
                "UPDATE messages SET body = '', kind = 'delete' WHERE peer_id = ? AND target = ?",
                (message.peer_id, message_id),
            )
            delete = self._queue(
                db, message.peer_id, new_message_id(now), "", now,
                kind="delete", target=message_id,
            )  # fmt: skip
            changed = self._get_message(db, message.peer_id, message_id)
        return changed, delete

    def queue_messages(self, peer_id: str, bodies: Sequence[str], *, now: float) -> list[Message]:
        """Number, store and enqueue several messages in order, in one transaction and
        a fixed number of statements (the rows go in with ``executemany``); through
        the journal, one write for them all."""
        if not peer_id:
            raise ValueError("peer_id must not be empty")
        if not bodies:
            return []
        if self._holds_journal():
            return self._journal_queue(peer_id, bodies, now, None)
        with self._numbering(), self._write() as db:
            last = int(
                db.execute(
                    "INSERT INTO conversations (peer_id, send_seq) VALUES (?1, ?2)"
                    " ON CONFLICT (peer_id) DO UPDATE SET send_seq = send_seq + ?2"
                    " RETURNING send_seq",
                    (peer_id, len(bodies)),
                ).fetchall()[0][0]
            )
            first = last - len(bodies) + 1
            head = id_head(now)
            messages = [
                Message(new_message_id(now, head), peer_id, "out", seq, body, now, None,
                        "queued", now)
                for seq, body in enumerate(bodies, first)
            ]  # fmt: skip
            db.executemany(
                "INSERT INTO messages (id, peer_id, direction, seq, body, created_at,"
                " received_at, state, updated_at)"
                " VALUES (?, ?, 'out', ?, ?, ?, NULL, 'queued', ?)",
                [(m.id, peer_id, m.seq, m.body, now, now) for m in messages],
            )
            db.executemany(
                "INSERT INTO outbox (message_id, peer_id, seq) VALUES (?, ?, ?)",
                [(m.id, peer_id, m.seq) for m in messages],
            )
        return messages

    def outbox(self, peer_id: str, *, from_seq: int = 0, limit: int | None = None) -> list[Message]:
        """Unacknowledged messages in ``seq`` order, the order they must be sent in:
        those from ``from_seq`` on, at most ``limit`` (so a resend reads what it can
        send now, not the whole outbox)."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_JOINED_MESSAGE_COLUMNS}"
                " FROM outbox o JOIN messages m ON m.peer_id = o.peer_id AND m.id = o.message_id"
                " WHERE o.peer_id = ? AND o.seq >= ? ORDER BY o.seq LIMIT ?",
                (peer_id, from_seq, -1 if limit is None else limit),
            ).fetchall()
        return [_message(row) for row in rows]

    def outbox_peers(self) -> list[str]:
        with self._read() as db:
            rows = db.execute("SELECT DISTINCT peer_id FROM outbox ORDER BY peer_id").fetchall()
        return [row[0] for row in rows]

    @staticmethod
    def _send_seq(db: sqlite3.Connection, peer_id: str) -> int:
        row = db.execute(
            "SELECT send_seq FROM conversations WHERE peer_id = ?", (peer_id,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def outbox_base(self, peer_id: str) -> int:
        """The ``base`` to put on outgoing messages (see ``p2pchat.core.window``)."""
        if self._keeps_journal and self._journal.owned:
            return self._sending_state(peer_id).base
        with self._read() as db:
            row = db.execute(
                "SELECT coalesce("
                " (SELECT min(seq) FROM outbox WHERE peer_id = ?1),"
                " (SELECT send_seq FROM conversations WHERE peer_id = ?1) + 1,"
                " 1)",
                (peer_id,),
            ).fetchone()
        return int(row[0])

    def send_seq(self, peer_id: str) -> int:
        """The highest ``seq`` assigned to an outgoing message (0 if none)."""
        with self._read() as db:
            return self._send_seq(db, peer_id)

    @staticmethod
    def _changed_ids(rows: list[Any]) -> list[str]:
        """Ids of changed messages in ``seq`` order; edit and delete rows are
        bookkeeping nobody shows, so their state changes are not reported."""
        return [row[0] for row in sorted(rows, key=lambda row: row[1]) if row[2] == "text"]

    def mark_sent(self, peer_id: str, upto_seq: int, now: float, *, from_seq: int = 0) -> list[str]:
        """Count a transmission of outbox messages ``from_seq..upto_seq``; returns ids
        now 'sent'.  Bounded below so that sending one new message does not touch
        every older unacknowledged row (a burst would otherwise cost O(n^2)).

        Messages journaled since the last commit are marked in memory: their rows are
        written at the end of the transaction, as they are then (``_unfolded``)."""
        with self._write(defer=True) as db:
            unfolded = self._unfolded.get(peer_id, [])
            rows: list[Any] = []
            if not unfolded or from_seq < unfolded[0].entry.seq:  # some are in the tables
                db.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_attempt = ?"
                    " WHERE peer_id = ? AND seq BETWEEN ? AND ?",
                    (now, peer_id, from_seq, upto_seq),
                )
                rows = db.execute(
                    "UPDATE messages SET state = 'sent', updated_at = ?"
                    " WHERE peer_id = ? AND direction = 'out' AND seq BETWEEN ? AND ?"
                    " AND state = 'queued' RETURNING id, seq, kind",
                    (now, peer_id, from_seq, upto_seq),
                ).fetchall()
            db.execute(
                "UPDATE conversations SET sent_seq = max(sent_seq, min(?, send_seq))"
                " WHERE peer_id = ?",
                (upto_seq, peer_id),
            )
            for row in unfolded:
                seq = row.entry.seq
                if seq < from_seq:
                    continue
                if seq > upto_seq:
                    break
                row.attempts += 1
                row.last_attempt = now
                if row.state == "queued":
                    row.state = "sent"
                    row.updated_at = now
                    rows.append((row.entry.id, seq, "text"))
        return self._changed_ids(rows)

    def requeue_sent(self, peer_id: str, now: float) -> list[str]:
        """Unacknowledged messages go back from 'sent' to 'queued'; returns their ids.

        For when the session that carried them died, or the peer answered that we
        are not its contact yet: "sent" would claim they are on their way when they
        are only waiting in the outbox for the next session.
        """
        with self._write() as db:
            rows = db.execute(
                "UPDATE messages SET state = 'queued', updated_at = ?"
                " WHERE peer_id = ? AND direction = 'out' AND state = 'sent'"
                " RETURNING id, seq, kind",
                (now, peer_id),
            ).fetchall()
        return self._changed_ids(rows)

    def ack_outgoing(self, peer_id: str, upto_seq: int, now: float) -> list[str]:
        """Apply a cumulative delivery ack; returns ids that became 'delivered'.

        An ack beyond the highest ``seq`` ever transmitted (``mark_sent``) is ignored
        entirely: it is either a bug or a peer lying, and honouring any part of it
        would let a peer claim delivery of messages it never received.

        Messages journaled since the last commit are acknowledged in memory: their
        rows go in as 'delivered' at the end of the transaction, without an outbox row.
        """
        with self._write(defer=True) as db:
            row = db.execute(
                "SELECT sent_seq FROM conversations WHERE peer_id = ?", (peer_id,)
            ).fetchone()
            if upto_seq < 1 or row is None or upto_seq > int(row[0]):
                return []
            unfolded = self._unfolded.get(peer_id, [])
            sending = self._sending.get(peer_id)
            rows: list[Any] = []
            if not (unfolded and sending is not None and sending.base >= unfolded[0].entry.seq):
                # Some unacknowledged messages are in the tables.  Everything below the
                # outbox's lowest seq was acknowledged before: start there, so an ack
                # costs what it acknowledges, not the whole history.
                rows = db.execute(
                    "UPDATE messages SET state = 'delivered', updated_at = ?1"
                    " WHERE peer_id = ?2 AND direction = 'out' AND seq <= ?3"
                    " AND seq >= (SELECT coalesce(min(seq), ?3 + 1) FROM outbox WHERE peer_id = ?2)"
                    " AND state IN ('queued', 'sent') RETURNING id, seq, kind",
                    (now, peer_id, upto_seq),
                ).fetchall()
                db.execute(
                    "DELETE FROM outbox WHERE peer_id = ? AND seq <= ?", (peer_id, upto_seq)
                )
            for folded in unfolded:
                if folded.entry.seq > upto_seq:
                    break
                if folded.state != "delivered":
                    folded.state = "delivered"
                    folded.updated_at = now
                    rows.append((folded.entry.id, folded.entry.seq, "text"))
            if sending is not None:  # the outbox is always a run of seqs: cut its start
                sending.base = max(sending.base, min(upto_seq, sending.send_seq) + 1)
        return self._changed_ids(rows)

    def mark_read_outgoing(self, peer_id: str, upto_seq: int, now: float) -> list[str]:
        """Apply the peer's read receipt; returns ids that became 'read'.

        Only messages already 'delivered' move: a receipt that outruns its ack
        does not skip the delivery step, and one beyond ``send_seq`` is ignored
        like a lying ack.
        """
        with self._write() as db:
            if upto_seq < 1 or upto_seq > self._send_seq(db, peer_id):
                return []
            db.execute(
                "UPDATE conversations SET peer_read_seq = max(peer_read_seq, ?) WHERE peer_id = ?",
                (upto_seq, peer_id),
            )
            rows = db.execute(
                "UPDATE messages INDEXED BY messages_unread_out SET state = 'read', updated_at = ?"
                " WHERE peer_id = ? AND direction = 'out' AND state = 'delivered' AND seq <= ?"
                " RETURNING id, seq, kind",
                (now, peer_id, upto_seq),
            ).fetchall()
        return self._changed_ids(rows)

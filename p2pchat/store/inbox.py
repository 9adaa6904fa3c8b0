"""Incoming messages: the receive window (exactly once, in order), the daily
quota of a contact's bytes, edits and deletes from the peer, and read marks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from p2pchat.core.events import MessageState
from p2pchat.core.window import Verdict, classify_incoming
from p2pchat.store.messages import MessageRows
from p2pchat.store.records import (
    _INCOMING_KINDS,
    _MESSAGE_COLUMNS,
    IncomingMessage,
    Message,
    MessageKind,
    ReceiveResult,
    _message,
)

_InboxRow = tuple[str, str, int, str, float, float, str, float, str | None, str, str | None]
"""The parameters of one received message's INSERT, in its column order."""


@dataclass(slots=True)
class _Window:
    """A contact's receive window and day's intake while a burst is decided, message
    by message, the same way whether the burst is journaled or committed."""

    recv_seq: int
    intake: int
    known: set[str]
    """Ids this conversation holds already (ids are unique per conversation, whatever
    the direction), and those accepted so far in this burst."""
    quota: int | None
    retry_at: float

    def admit(self, frame: IncomingMessage) -> ReceiveResult | None:
        """None when ``frame`` is accepted (the window, intake and ids move on), else
        its refusal; a ``quota`` refusal ends the burst.  The common case (the next
        seq, an id not seen) is decided without a call: this runs once per message."""
        message_id = frame.id
        seq = frame.seq
        known = self.known
        if seq != self.recv_seq + 1 or message_id in known:
            verdict: Verdict = (
                "duplicate"
                if message_id in known
                else classify_incoming(seq, frame.base, self.recv_seq)
            )
            if verdict != "accept":
                return ReceiveResult(verdict, None, self.recv_seq)
        body = frame.body
        size = len(body) if body.isascii() else len(body.encode("utf-8"))
        if self.quota is not None and self.intake + size > self.quota:
            return ReceiveResult("quota", None, self.recv_seq, self.retry_at)
        self.intake += size
        self.recv_seq = seq
        known.add(message_id)
        return None

    def accepted(
        self, frames: Sequence[IncomingMessage], refused: Callable[[ReceiveResult], None]
    ) -> Iterator[IncomingMessage]:
        """The frames of a burst this window accepts, in order; each refusal goes to
        ``refused`` in its place, and one over the quota ends the burst."""
        admit = self.admit
        for frame in frames:
            result = admit(frame)
            if result is None:
                yield frame
                continue
            refused(result)
            if result.verdict == "quota":
                return


class InboxMixin(MessageRows):
    """Messages from peers, from arrival to read."""

    def receive_message(
        self,
        peer_id: str,
        *,
        message_id: str,
        seq: int,
        base: int,
        body: str,
        sent_at: float,
        now: float,
        daily_quota: int | None = None,
        reply_to: str | None = None,
        kind: MessageKind = "text",
        target: str | None = None,
    ) -> ReceiveResult:
        """Apply the receive window and store the message in one transaction.

        Reading ``recv_seq`` and storing under the same write lock is what makes
        two racing sessions (or two processes) unable to both accept one seq.
        A ``message_id`` this peer already used is a duplicate whatever its seq
        says; another peer's ids do not matter (ids are unique per conversation).

        ``daily_quota`` bounds the UTF-8 bytes of message bodies stored from this
        peer per UTC day (``intake``); a message over it is refused, not stored.

        An ``edit`` or ``delete`` is applied in the same transaction, and only to
        a message this peer wrote to us that is not deleted; its own row keeps no
        text (the changed message has it, or nothing does).
        """
        size = len(body.encode("utf-8"))
        day = int(now // 86400)
        with self._write() as db:
            row = db.execute(
                "SELECT recv_seq FROM conversations WHERE peer_id = ?", (peer_id,)
            ).fetchone()
            recv_seq = 0 if row is None else int(row[0])
            known = db.execute(
                "SELECT 1 FROM messages WHERE peer_id = ? AND id = ?", (peer_id, message_id)
            ).fetchone()
            verdict: Verdict = (
                "duplicate" if known is not None else classify_incoming(seq, base, recv_seq)
            )
            if verdict != "accept":
                return ReceiveResult(verdict, None, recv_seq)
            if daily_quota is not None:
                used = db.execute(
                    "SELECT bytes FROM intake WHERE peer_id = ? AND day = ?", (peer_id, day)
                ).fetchone()
                if (0 if used is None else int(used[0])) + size > daily_quota:
                    return ReceiveResult("quota", None, recv_seq, retry_at=(day + 1) * 86400.0)
            db.execute("DELETE FROM intake WHERE peer_id = ? AND day < ?", (peer_id, day))
            db.execute(
                "INSERT INTO intake (peer_id, day, bytes, messages) VALUES (?, ?, ?, 1)"
                " ON CONFLICT (peer_id, day) DO UPDATE"
                " SET bytes = bytes + excluded.bytes, messages = messages + 1",
                (peer_id, day, size),
            )
            changed: Message | None = None
            if kind != "text":
                changed = self._apply_change(db, peer_id, kind, target, body, now)
                body = ""
            db.execute(
                "INSERT INTO messages (id, peer_id, direction, seq, body, created_at,"
                " received_at, state, updated_at, reply_to, kind, target)"
                " VALUES (?, ?, 'in', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id, peer_id, seq, body, sent_at, now,
                    # Bookkeeping rows are never unread.
                    "delivered" if kind == "text" else "read",
                    now, reply_to, kind, target,
                ),
            )  # fmt: skip
            db.execute(
                "INSERT INTO conversations (peer_id, recv_seq) VALUES (?, ?)"
                " ON CONFLICT (peer_id) DO UPDATE SET recv_seq = excluded.recv_seq",
                (peer_id, seq),
            )
        message = Message(
            message_id, peer_id, "in", seq, body, sent_at, now,
            "delivered" if kind == "text" else "read", now,
            reply_to=reply_to, kind=kind, target=target,
        )  # fmt: skip
        return ReceiveResult("accept", message, seq, changed=changed)

    def _apply_change(
        self,
        db: sqlite3.Connection,
        peer_id: str,
        kind: MessageKind,
        target: str | None,
        body: str,
        now: float,
    ) -> Message | None:
        """An incoming edit or delete of ``target``; None if refused."""
        row = db.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE peer_id = ? AND id = ?",
            (peer_id, target),
        ).fetchone()
        if row is None:
            return None
        original = _message(row)
        if (
            original.peer_id != peer_id
            or original.direction != "in"
            or original.kind != "text"
            or original.deleted_at is not None
        ):
            return None
        if kind == "edit":
            db.execute(
                "UPDATE messages SET body = ?, edited_at = ?, updated_at = ?"
                " WHERE peer_id = ? AND id = ?",
                (body, now, now, peer_id, target),
            )
        else:
            db.execute(
                "UPDATE messages SET body = '', deleted_at = ?, updated_at = ?"
                " WHERE peer_id = ? AND id = ?",
                (now, now, peer_id, target),
            )
        return self._get_message(db, peer_id, original.id)

    def receive_messages(
        self,
        peer_id: str,
        frames: Sequence[IncomingMessage],
        *,
        now: float,
        daily_quota: int | None = None,
    ) -> list[ReceiveResult]:
        """``receive_message`` for several messages of one contact, in order, in one
        transaction and a fixed number of statements: the receive window is read once
        and applied here message by message, and the accepted rows go in together.

        Stops after a message over the daily quota (its result is the last one): the
        contact is told to wait, and what it sent after that is not looked at.

        A node's store (the journal's holder) takes text messages without a
        transaction: accepted ones are made durable by one journal append and folded
        into the tables by the next commit (``_receive_journaled``).
        """
        if not frames:
            return []
        if self.journals_receipts and all(
            f.kind not in _INCOMING_KINDS and f.target is None for f in frames
        ):
            return self._receive_journaled(peer_id, frames, now=now, daily_quota=daily_quota)
        day = int(now // 86400)
        results: list[ReceiveResult] = []
        with self._write(defer=True) as db:
            row = db.execute(
                "SELECT recv_seq FROM conversations WHERE peer_id = ?", (peer_id,)
            ).fetchone()
            recv_seq = 0 if row is None else int(row[0])
            # Messages folded by this transaction have no row yet; their ids are
            # taken too (ids are unique per conversation, whatever the direction).
            known = {row.entry.id for row in self._unfolded_rows if row.entry.peer_id == peer_id}
            # Only a message above the window can be accepted, so only its id needs
            # looking up: a resent one (``seq <= recv_seq``) is a duplicate whatever
            # its id, and a burst of them (a reconnect's resend) costs no lookup.
            ids = list(dict.fromkeys([f.id for f in frames if f.seq > recv_seq]))
            if ids:
                known.update(self._stored_ids(peer_id, ids))
            used = db.execute(
                "SELECT bytes FROM intake WHERE peer_id = ? AND day = ?", (peer_id, day)
            ).fetchone()
            window = _Window(
                recv_seq, 0 if used is None else int(used[0]), known, daily_quota,
                (day + 1) * 86400.0,
            )  # fmt: skip
            # Accepted rows not inserted yet, built as the INSERT takes them.
            pending: list[_InboxRow] = []
            count = 0
            # The loop below runs once per message of a burst: names bound once,
            # positional arguments (``Message`` and ``ReceiveResult`` use
            # ``quick_init``).
            append = results.append
            pend = pending.append
            kinds = _INCOMING_KINDS

            def insert_pending() -> None:
                # Our messages queued before these arrived keep the lower ``pos``.
                self._insert_unfolded(db)
                db.executemany(
                    "INSERT INTO messages (id, peer_id, direction, seq, body, created_at,"
                    " received_at, state, updated_at, reply_to, kind, target)"
                    " VALUES (?, ?, 'in', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    pending,
                )
                pending.clear()

            for frame in window.accepted(frames, append):
                count += 1
                message_id, seq, body = frame.id, frame.seq, frame.body
                kind = kinds.get(frame.kind, "text")
                changed: Message | None = None
                state: MessageState = "delivered"
                if kind != "text":
                    # Its target may be earlier in this batch: that one goes in first.
                    insert_pending()
                    changed = self._apply_change(db, peer_id, kind, frame.target, body, now)
                    body = ""  # the changed message has the text, or nothing does
                    state = "read"  # bookkeeping rows are never unread
                sent_at, reply_to, target = frame.sent_at, frame.reply_to, frame.target
                pend((message_id, peer_id, seq, body, sent_at, now, state, now,
                      reply_to, kind, target))  # fmt: skip
                message = Message(
                    message_id, peer_id, "in", seq, body, sent_at, now, state, now,
                    reply_to, None, None, kind, target,
                )  # fmt: skip
                append(ReceiveResult("accept", message, seq, None, changed))
            if count:
                insert_pending()
                db.execute("DELETE FROM intake WHERE peer_id = ? AND day < ?", (peer_id, day))
                db.execute(
                    "INSERT INTO intake (peer_id, day, bytes, messages) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (peer_id, day) DO UPDATE"
                    " SET bytes = excluded.bytes, messages = messages + excluded.messages",
                    (peer_id, day, window.intake, count),
                )
                db.execute(
                    "INSERT INTO conversations (peer_id, recv_seq) VALUES (?, ?)"
                    " ON CONFLICT (peer_id) DO UPDATE SET recv_seq = excluded.recv_seq",
                    (peer_id, window.recv_seq),
                )
        return results

    def _receive_journaled(
        self,
        peer_id: str,
        frames: Sequence[IncomingMessage],
        *,
        now: float,
        daily_quota: int | None,
    ) -> list[ReceiveResult]:
        """``receive_messages`` for text messages, decided against the window and intake
        in memory (``_receiving_state``: the tables plus what is pending) and made
        durable by one journal append; nothing is accepted if the append fails.

        The same decisions as the transaction below, in the same order: what a commit
        made durable before, the append makes durable now (a crash of the process
        loses neither), and the next commit writes the rows, the window and the
        intake as the transaction would have."""
        day = int(now // 86400)
        results: list[ReceiveResult] = []
        with self._lock:
            state = self._receiving_state(peer_id, day)
            recv_seq = state.recv_seq
            top, pending = state.top_id, state.ids
            ids = list(
                dict.fromkeys(
                    [
                        f.id
                        for f in frames
                        if f.seq > recv_seq and f.id <= top and f.id not in pending
                    ]
                )
            )
            known = self._stored_ids(peer_id, ids) if ids else set()
            known.update(pending)
            window = _Window(recv_seq, state.intake, known, daily_quota, (day + 1) * 86400.0)
            accepted: list[Message] = []
            append = results.append
            keep = accepted.append
            for frame in window.accepted(frames, append):
                seq = frame.seq
                message = Message(
                    frame.id, peer_id, "in", seq, frame.body, frame.sent_at, now, "delivered",
                    now, frame.reply_to, None, None, "text", None,
                )  # fmt: skip
                keep(message)
                append(ReceiveResult("accept", message, seq, None, None))
            if accepted:
                self._journal_append(accepted)
        return results

    def intake_today(self, peer_id: str, *, now: float) -> tuple[int, int]:
        """(bytes, messages) stored from ``peer_id`` this UTC day."""
        with self._read() as db:
            row = db.execute(
                "SELECT bytes, messages FROM intake WHERE peer_id = ? AND day = ?",
                (peer_id, int(now // 86400)),
            ).fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def recv_seq(self, peer_id: str) -> int:
        with self._read() as db:
            row = db.execute(
                "SELECT recv_seq FROM conversations WHERE peer_id = ?", (peer_id,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def mark_read_incoming(self, peer_id: str, upto_seq: int, *, now: float | None = None) -> int:
        """Advance our read marker (never backwards, never past what we hold).

        ``now`` stamps ``updated_at`` on the messages that change; without it
        their timestamps are left alone.
        """
        with self._write() as db:
            row = db.execute(
                "SELECT recv_seq, my_read_seq FROM conversations WHERE peer_id = ?", (peer_id,)
            ).fetchone()
            if row is None:
                return 0
            recv_seq, my_read_seq = int(row[0]), int(row[1])
            new_read_seq = max(my_read_seq, min(upto_seq, recv_seq))
            if new_read_seq != my_read_seq:
                db.execute(
                    "UPDATE conversations SET my_read_seq = ? WHERE peer_id = ?",
                    (new_read_seq, peer_id),
                )
            db.execute(
                "UPDATE messages INDEXED BY messages_unread_in"
                " SET state = 'read', updated_at = coalesce(?, updated_at)"
                " WHERE peer_id = ? AND direction = 'in' AND state = 'delivered' AND seq <= ?",
                (now, peer_id, new_read_seq),
            )
        return new_read_seq

    def unread_count(self, peer_id: str) -> int:
        with self._read() as db:
            row = db.execute(
                "SELECT count(*) FROM messages INDEXED BY messages_unread_in"
                " WHERE peer_id = ? AND direction = 'in' AND state = 'delivered'",
                (peer_id,),
            ).fetchone()
        return int(row[0])

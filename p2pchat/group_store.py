"""Group state in the node's SQLite database (tables: ``store.MIGRATIONS``, step 4).

Operations and messages are kept exactly as received (their signed bytes), so a restart
re-verifies nothing it does not have to and hands peers the same bytes.  Everything a
received batch changes (new rows, rows now shown, rows dropped, the replica's counters)
is written in one transaction, like the 1:1 store, so a SIGKILL between two calls leaves
the database matching a replica rebuilt from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from p2pchat.core.group.messages import GroupMessage
from p2pchat.core.group.ops import Op, WireOp
from p2pchat.core.group.ranges import SeqSet
from p2pchat.store import Store

GroupStatus = Literal["invited", "joined", "left", "removed", "declined"]
MessageRef = tuple[bytes, int]

_MESSAGE_COLUMNS = (
    "author, seq, id, clock, sent_at, received_at, kind, header, sig, content, shown"
)
_ROWS_PER_RANGE = 4096


@dataclass(frozen=True, slots=True)
class GroupRow:
    id: bytes
    name: str
    status: GroupStatus
    inviter: str | None
    created_at: float
    updated_at: float
    read_clock: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One group message row: the signed parts plus when it arrived and whether it is
    shown (a message waiting for an earlier one of its author is stored, not shown)."""

    group_id: bytes
    author: bytes
    seq: int
    id: str
    clock: int
    sent_at: float
    received_at: float
    kind: str
    header: bytes
    signature: bytes
    content: bytes
    shown: bool

    @property
    def wire(self) -> tuple[bytes, bytes, bytes]:
        return (self.header, self.signature, self.content)

    @property
    def size(self) -> int:
        return len(self.header) + len(self.signature) + len(self.content)


def _group(row: Sequence[Any]) -> GroupRow:
    return GroupRow(
        id=bytes(row[0]),
        name=row[1],
        status=cast(GroupStatus, row[2]),
        inviter=row[3],
        created_at=row[4],
        updated_at=row[5],
        read_clock=row[6],
    )


def _message(group_id: bytes, row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(
        group_id=group_id,
        author=bytes(row[0]),
        seq=row[1],
        id=row[2],
        clock=row[3],
        sent_at=row[4],
        received_at=row[5],
        kind=row[6],
        header=bytes(row[7]),
        signature=bytes(row[8]),
        content=bytes(row[9]),
        shown=bool(row[10]),
    )


class GroupStore:
    """Group queries on the node's ``Store`` (same connection, same transactions)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------- groups
    def upsert_group(
        self,
        group_id: bytes,
        *,
        name: str,
        status: GroupStatus,
        inviter: str | None,
        now: float,
    ) -> GroupRow:
        with self.store._write() as db:
            db.execute(
                "INSERT INTO groups (id, name, status, inviter, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "name = excluded.name, status = excluded.status, "
                "inviter = COALESCE(excluded.inviter, groups.inviter), "
                "updated_at = excluded.updated_at",
                (group_id, name, status, inviter, now, now),
            )
            row = db.execute(
                "SELECT id, name, status, inviter, created_at, updated_at, read_clock "
                "FROM groups WHERE id = ?",
                (group_id,),
            ).fetchone()
        return _group(row)

    def set_name(self, group_id: bytes, name: str) -> None:
        with self.store._write() as db:
            db.execute("UPDATE groups SET name = ? WHERE id = ?", (name, group_id))

    def get(self, group_id: bytes) -> GroupRow | None:
        with self.store._read() as db:
            row = db.execute(
                "SELECT id, name, status, inviter, created_at, updated_at, read_clock "
                "FROM groups WHERE id = ?",
                (group_id,),
            ).fetchone()
        return None if row is None else _group(row)

    def rows(self) -> list[GroupRow]:
        with self.store._read() as db:
            rows = db.execute(
                "SELECT id, name, status, inviter, created_at, updated_at, read_clock "
                "FROM groups ORDER BY created_at, id"
            ).fetchall()
        return [_group(r) for r in rows]

    def delete(self, group_id: bytes) -> None:
        """Forget a group entirely (a declined or expired invitation)."""
        with self.store._write() as db:
            for table in ("group_marks", "group_authors", "group_messages", "group_ops"):
                db.execute(f"DELETE FROM {table} WHERE group_id = ?", (group_id,))
            db.execute("DELETE FROM groups WHERE id = ?", (group_id,))

    # ---------------------------------------------------------- operations
    def add_ops(self, group_id: bytes, ops: Iterable[Op]) -> None:
        """Append operations (parents first); ones already stored are kept as they are."""
        with self.store._write() as db:
            pos = db.execute(
                "SELECT COALESCE(MAX(pos), 0) FROM group_ops WHERE group_id = ?", (group_id,)
            ).fetchone()[0]
            for op in ops:
                pos += 1
                db.execute(
                    "INSERT OR IGNORE INTO group_ops (group_id, pos, id, body, sig) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (group_id, pos, op.id, op.body, op.signature),
                )

    def ops(self, group_id: bytes) -> list[WireOp]:
        with self.store._read() as db:
            rows = db.execute(
                "SELECT body, sig FROM group_ops WHERE group_id = ? ORDER BY pos",
                (group_id,),
            ).fetchall()
        return [(bytes(b), bytes(s)) for b, s in rows]

    # ------------------------------------------------------------ messages
    def apply(
        self,
        group_id: bytes,
        *,
        new: Sequence[tuple[GroupMessage, bool]] = (),
        shown: Iterable[MessageRef] = (),
        dropped: Iterable[MessageRef] = (),
        counters: dict[bytes, tuple[int, int, int]] | None = None,
        now: float,
    ) -> None:
        """One batch in one transaction: new rows (with whether each is shown at once),
        rows now shown, rows to delete, and per author (shown, shown_clock, floor)."""
        with self.store._write() as db:
            for m, is_shown in new:
                db.execute(
                    f"INSERT OR IGNORE INTO group_messages (group_id, {_MESSAGE_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        group_id, m.author, m.seq, m.id, m.clock, m.at, now, m.kind,
                        m.header, m.signature, m.content, int(is_shown),
                    ),
                )
            for author, seq in shown:
                db.execute(
                    "UPDATE group_messages SET shown = 1 "
                    "WHERE group_id = ? AND author = ? AND seq = ?",
                    (group_id, author, seq),
                )
            for author, seq in dropped:
                db.execute(
                    "DELETE FROM group_messages WHERE group_id = ? AND author = ? AND seq = ?",
                    (group_id, author, seq),
                )
            for author, (s, clock, floor) in (counters or {}).items():
                db.execute(
                    "INSERT INTO group_authors (group_id, author, shown, shown_clock, floor) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (group_id, author) DO UPDATE SET "
                    "shown = excluded.shown, shown_clock = excluded.shown_clock, "
                    "floor = excluded.floor",
                    (group_id, author, s, clock, floor),
                )

    def authors(self, group_id: bytes) -> dict[bytes, tuple[int, int, int, dict[int, int]]]:
        """Per author: (shown, shown_clock, floor, waiting seq -> clock)."""
        out: dict[bytes, tuple[int, int, int, dict[int, int]]] = {}
        with self.store._read() as db:
            for author, s, clock, floor in db.execute(
                "SELECT author, shown, shown_clock, floor FROM group_authors WHERE group_id = ?",
                (group_id,),
            ):
                out[bytes(author)] = (s, clock, floor, {})
            for author, seq, clock in db.execute(
                "SELECT author, seq, clock FROM group_messages WHERE group_id = ? AND shown = 0",
                (group_id,),
            ):
                key = bytes(author)
                if key not in out:
                    out[key] = (0, 0, 0, {})
                out[key][3][seq] = clock
        return out

    def select(
        self, group_id: bytes, wants: Sequence[tuple[bytes, SeqSet]], budget: int
    ) -> tuple[list[StoredMessage], bool]:
        """Held messages among ``wants`` in clock order, up to ``budget`` bytes (at least
        one).  Returns them and whether some wanted ones were left for later."""
        found: list[StoredMessage] = []
        with self.store._read() as db:
            for author, seqs in wants:
                for lo, hi in seqs.ranges:
                    rows = db.execute(
                        f"SELECT {_MESSAGE_COLUMNS} FROM group_messages "
                        "WHERE group_id = ? AND author = ? AND seq BETWEEN ? AND ? "
                        "ORDER BY seq LIMIT ?",
                        (group_id, author, lo, hi, _ROWS_PER_RANGE),
                    ).fetchall()
                    found.extend(_message(group_id, r) for r in rows)
        found.sort(key=lambda m: (m.clock, m.author, m.seq))
        chosen: list[StoredMessage] = []
        spent = 0
        for m in found:
            if chosen and spent + m.size > budget:
                return chosen, True
            chosen.append(m)
            spent += m.size
        truncated = any(
            len(seqs) > _ROWS_PER_RANGE for _, seqs in wants
        )  # a range had more rows than one query takes
        return chosen, truncated

    def message(self, group_id: bytes, author: bytes, seq: int) -> StoredMessage | None:
        with self.store._read() as db:
            row = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM group_messages "
                "WHERE group_id = ? AND author = ? AND seq = ?",
                (group_id, author, seq),
            ).fetchone()
        return None if row is None else _message(group_id, row)

    def by_id(self, group_id: bytes, message_id: str) -> StoredMessage | None:
        with self.store._read() as db:
            row = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM group_messages WHERE group_id = ? AND id = ?",
                (group_id, message_id),
            ).fetchone()
        return None if row is None else _message(group_id, row)

    def of_kind(self, group_id: bytes, author: bytes, kind: str) -> list[StoredMessage]:
        """An author's shown messages of one kind (``files``: its file drops)."""
        with self.store._read() as db:
            rows = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM group_messages "
                "WHERE group_id = ? AND author = ? AND kind = ? AND shown = 1",
                (group_id, author, kind),
            ).fetchall()
        return [_message(group_id, r) for r in rows]

    def messages(self, group_id: bytes, refs: Iterable[MessageRef]) -> list[StoredMessage]:
        out = []
        for author, seq in refs:
            m = self.message(group_id, author, seq)
            if m is not None:
                out.append(m)
        return out

    def history(self, group_id: bytes, *, limit: int | None = None) -> list[StoredMessage]:
        """Shown messages in display order (clock, author, seq); the newest ``limit``."""
        with self.store._read() as db:
            rows = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM group_messages "
                "WHERE group_id = ? AND shown = 1 "
                "ORDER BY clock DESC, author DESC, seq DESC LIMIT ?",
                (group_id, -1 if limit is None else limit),
            ).fetchall()
        return [_message(group_id, r) for r in reversed(rows)]

    def unread(self, group_id: bytes, me: bytes) -> int:
        with self.store._read() as db:
            return int(
                db.execute(
                    "SELECT COUNT(*) FROM group_messages m JOIN groups g ON g.id = m.group_id "
                    "WHERE m.group_id = ? AND m.shown = 1 AND m.author != ? "
                    "AND m.clock > g.read_clock",
                    (group_id, me),
                ).fetchone()[0]
            )

    def mark_read(self, group_id: bytes) -> int:
        with self.store._write() as db:
            top = db.execute(
                "SELECT COALESCE(MAX(clock), 0) FROM group_messages "
                "WHERE group_id = ? AND shown = 1",
                (group_id,),
            ).fetchone()[0]
            db.execute(
                "UPDATE groups SET read_clock = MAX(read_clock, ?) WHERE id = ?",
                (top, group_id),
            )
        return int(top)

    def usage(self, group_id: bytes) -> tuple[int, int]:
        """(messages, bytes) stored for a group."""
        with self.store._read() as db:
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(header) + LENGTH(content) + 64), 0) "
                "FROM group_messages WHERE group_id = ?",
                (group_id,),
            ).fetchone()
        return int(count), int(size)

    def prune(self, group_id: bytes, *, keep: int, max_bytes: int) -> dict[bytes, int]:
        """Delete the oldest shown messages until at most ``keep`` messages and
        ``max_bytes`` remain; returns, per author, the highest seq deleted."""
        dropped: dict[bytes, int] = {}
        with self.store._write() as db:
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(header) + LENGTH(content) + 64), 0) "
                "FROM group_messages WHERE group_id = ?",
                (group_id,),
            ).fetchone()
            if count <= keep and size <= max_bytes:
                return dropped
            rows = db.execute(
                "SELECT author, seq, LENGTH(header) + LENGTH(content) + 64 FROM group_messages "
                "WHERE group_id = ? AND shown = 1 ORDER BY clock, author, seq",
                (group_id,),
            )
            doomed: list[tuple[bytes, int]] = []
            for author, seq, length in rows:
                if count <= keep and size <= max_bytes:
                    break
                doomed.append((bytes(author), seq))
                count -= 1
                size -= length
            for author, seq in doomed:
                db.execute(
                    "DELETE FROM group_messages WHERE group_id = ? AND author = ? AND seq = ?",
                    (group_id, author, seq),
                )
                dropped[author] = max(dropped.get(author, 0), seq)
            for author, seq in dropped.items():
                db.execute(
                    "UPDATE group_authors SET floor = MAX(floor, MIN(?, shown)) "
                    "WHERE group_id = ? AND author = ?",
                    (seq, group_id, author),
                )
        return dropped

    # --------------------------------------------------------------- marks
    def save_marks(self, group_id: bytes, marks: dict[bytes, dict[bytes, int]]) -> None:
        with self.store._write() as db:
            for member, per_author in marks.items():
                for author, upto in per_author.items():
                    db.execute(
                        "INSERT INTO group_marks (group_id, member, author, upto) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (group_id, member, author) "
                        "DO UPDATE SET upto = MAX(upto, excluded.upto)",
                        (group_id, member, author, upto),
                    )

    def marks(self, group_id: bytes) -> dict[bytes, dict[bytes, int]]:
        out: dict[bytes, dict[bytes, int]] = {}
        with self.store._read() as db:
            for member, author, upto in db.execute(
                "SELECT member, author, upto FROM group_marks WHERE group_id = ?", (group_id,)
            ):
                out.setdefault(bytes(member), {})[bytes(author)] = upto
        return out

    # --------------------------------------------------------------- hints
    def hints(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        with self.store._read() as db:
            for peer, raw in db.execute("SELECT peer_id, addresses FROM group_hints"):
                try:
                    value = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(value, list):
                    out[peer] = tuple(a for a in value if isinstance(a, str))
        return out

    def save_hint(self, peer_id: str, addresses: Sequence[str], *, now: float) -> None:
        with self.store._write() as db:
            db.execute(
                "INSERT INTO group_hints (peer_id, addresses, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (peer_id) DO UPDATE SET addresses = excluded.addresses, "
                "updated_at = excluded.updated_at",
                (peer_id, json.dumps(list(addresses)), now),
            )

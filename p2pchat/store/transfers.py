"""File-drop transfers: one row per transfer and its files, with their state,
bytes done and attempts, so a transfer resumes after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from p2pchat.store.database import StoreBase
from p2pchat.store.errors import StoreError
from p2pchat.store.records import Transfer, TransferFile


def _transfer_filter(
    direction: str | None, states: Sequence[str] | None, peer_id: str | None
) -> tuple[list[str], list[Any]]:
    """WHERE clauses (joined with AND by the caller) and their parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    if direction is not None:
        clauses.append("direction = ?")
        params.append(direction)
    if states is not None:
        clauses.append(f"state IN ({', '.join('?' for _ in states)})")
        params.extend(states)
    if peer_id is not None:
        clauses.append("peer_id = ?")
        params.append(peer_id)
    return clauses, params


class TransfersMixin(StoreBase):
    """File-drop transfer rows."""

    def create_transfer(
        self,
        transfer_id: str,
        peer_id: str,
        *,
        direction: str,
        state: str,
        files: Sequence[tuple[str, int, bytes, str | None]],
        now: float,
        folder: str | None = None,
        mtimes: Sequence[int | None] | None = None,
    ) -> Transfer:
        """``files``: (relative path, size, hash or b"" while unknown, local source path
        or None); ``mtimes``: the sources' modification times (ns), if known."""
        times = list(mtimes) if mtimes is not None else [None] * len(files)
        with self._write() as db:
            db.execute(
                "INSERT INTO transfers (id, peer_id, direction, state, created_at, updated_at,"
                " folder, file_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (transfer_id, peer_id, direction, state, now, now, folder, len(files)),
            )
            db.executemany(
                "INSERT INTO transfer_files (transfer_id, idx, path, size, hash, source, mtime)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (transfer_id, i, p, size, h, src, mtime)
                    for i, ((p, size, h, src), mtime) in enumerate(zip(files, times, strict=True))
                ],
            )
        transfer = self.get_transfer(transfer_id)
        assert transfer is not None
        return transfer

    def get_transfer(self, transfer_id: str) -> Transfer | None:
        found = self.get_transfers([transfer_id])
        return found[0] if found else None

    def get_transfers(self, ids: Sequence[str]) -> list[Transfer]:
        """Whole transfers (with their files) in the order of ``ids``; two queries."""
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        with self._read() as db:
            rows = db.execute(
                "SELECT id, peer_id, direction, state, created_at, updated_at, error,"
                f" bytes_moved, attempts, folder FROM transfers WHERE id IN ({marks})",
                list(ids),
            ).fetchall()
            files = db.execute(
                "SELECT transfer_id, idx, path, size, hash, source, part, final, accepted, done,"
                f" mtime FROM transfer_files WHERE transfer_id IN ({marks})"
                " ORDER BY transfer_id, idx",
                list(ids),
            ).fetchall()
        entries: dict[str, list[TransferFile]] = {}
        for f in files:
            entries.setdefault(f[0], []).append(
                TransferFile(
                    f[1], f[2], f[3], bytes(f[4]), f[5], f[6], f[7], bool(f[8]), bool(f[9]), f[10]
                )
            )
        by_id = {
            row[0]: Transfer(
                id=row[0],
                peer_id=row[1],
                direction=row[2],
                state=row[3],
                created_at=row[4],
                updated_at=row[5],
                error=row[6],
                bytes_moved=row[7],
                attempts=row[8],
                folder=row[9],
                files=tuple(entries.get(row[0], ())),
            )
            for row in rows
        }
        return [by_id[i] for i in ids if i in by_id]

    def list_transfers(
        self,
        *,
        peer_id: str | None = None,
        direction: str | None = None,
        states: Sequence[str] | None = None,
        limit: int | None = None,
        before: str | None = None,
        max_files: int | None = None,
    ) -> list[Transfer]:
        """Newest first.  ``before``: only transfers older than that one (the next page).

        ``limit`` bounds the transfers and ``max_files`` the file rows a page loads
        (a page always holds at least one transfer), so a listing costs the same
        whatever the database holds.
        """
        clauses, params = _transfer_filter(direction, states, peer_id)
        with self._read() as db:
            if before is not None:
                row = db.execute(
                    "SELECT created_at, id FROM transfers WHERE id = ?", (before,)
                ).fetchone()
                if row is None:
                    raise StoreError(f"no transfer {before}")
                clauses.append("(created_at, id) < (?, ?)")
                params.extend(row)
            query = "SELECT id, file_count FROM transfers"
            if clauses:
                query += " WHERE " + " AND ".join(clauses)
            query += " ORDER BY created_at DESC, id DESC"
            if limit is not None:
                query += " LIMIT ?"
                params.append(limit)
            ids: list[str] = []
            files = 0
            for transfer_id, count in db.execute(query, params):
                if max_files is not None and ids and files + count > max_files:
                    break
                ids.append(transfer_id)
                files += count
        return self.get_transfers(ids)

    def find_transfer_ids(self, prefix: str, *, limit: int = 2) -> list[str]:
        """Ids starting with ``prefix`` (ids are lowercase hex), through the primary key."""
        prefix = prefix.lower()
        with self._read() as db:
            return [
                r[0]
                for r in db.execute(
                    "SELECT id FROM transfers WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                    (prefix, prefix + "\U0010ffff", limit),
                )
            ]

    def transfer_ids(
        self,
        *,
        direction: str,
        states: Sequence[str],
        peer_id: str | None = None,
        created_before: float | None = None,
        updated_after: float | None = None,
    ) -> list[str]:
        """Ids of transfers in some states (oldest first), for sweeps that need no rows."""
        clauses, params = _transfer_filter(direction, states, peer_id)
        if created_before is not None:
            clauses.append("created_at < ?")
            params.append(created_before)
        if updated_after is not None:
            clauses.append("updated_at > ?")
            params.append(updated_after)
        query = "SELECT id FROM transfers WHERE " + " AND ".join(clauses)
        with self._read() as db:
            return [r[0] for r in db.execute(query + " ORDER BY created_at", params)]

    def transfer_usage(
        self, *, direction: str, peer_id: str | None = None, states: Sequence[str] | None = None
    ) -> tuple[int, int]:
        """(transfers, file rows) stored for one peer, or for everyone."""
        clauses, params = _transfer_filter(direction, states, peer_id)
        query = "SELECT COUNT(*), COALESCE(SUM(file_count), 0) FROM transfers WHERE "
        query += " AND ".join(clauses)
        with self._read() as db:
            count, files = db.execute(query, params).fetchone()
        return int(count), int(files)

    def prune_transfers(
        self,
        *,
        direction: str,
        states: Sequence[str],
        transfers: int,
        files: int,
        peer_id: str | None = None,
    ) -> int:
        """Delete the least recently updated transfers in ``states`` until at least
        ``transfers`` transfers and ``files`` file rows are gone (or none are left).

        Returns how many transfers were deleted.
        """
        clauses, params = _transfer_filter(direction, states, peer_id)
        query = "SELECT id, file_count FROM transfers WHERE " + " AND ".join(clauses)
        query += " ORDER BY updated_at LIMIT 512"
        doomed: list[str] = []
        with self._write() as db:
            freed_rows = freed_files = 0
            for transfer_id, count in db.execute(query, params).fetchall():
                if freed_rows >= transfers and freed_files >= files:
                    break
                doomed.append(transfer_id)
                freed_rows += 1
                freed_files += count
            db.executemany("DELETE FROM transfers WHERE id = ?", [(i,) for i in doomed])
        return len(doomed)

    def running_incoming_files(self) -> list[tuple[str | None, str | None, int]]:
        """(folder, part file, size) of every accepted, unfinished incoming file of
        a transfer still under way: what the disk has been promised."""
        with self._read() as db:
            return [
                (r[0], r[1], int(r[2]))
                for r in db.execute(
                    "SELECT t.folder, f.part, f.size FROM transfers t"
                    " JOIN transfer_files f ON f.transfer_id = t.id"
                    " WHERE t.direction = 'in' AND t.state IN ('accepted', 'receiving', 'paused')"
                    " AND f.accepted = 1 AND f.done = 0"
                )
            ]

    def set_transfer_state(
        self, transfer_id: str, state: str, *, now: float, error: str | None = None
    ) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE transfers SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                (state, error, now, transfer_id),
            )

    def add_transfer_bytes(self, transfer_id: str, count: int, *, now: float) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE transfers SET bytes_moved = bytes_moved + ?, updated_at = ? WHERE id = ?",
                (count, now, transfer_id),
            )

    def set_transfer_folder(self, transfer_id: str, folder: str) -> None:
        with self._write() as db:
            db.execute("UPDATE transfers SET folder = ? WHERE id = ?", (folder, transfer_id))

    def bump_transfer_attempts(self, transfer_id: str, *, now: float) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE transfers SET attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (now, transfer_id),
            )

    def set_transfer_files(
        self,
        transfer_id: str,
        updates: Sequence[tuple[int, dict[str, Any]]],
    ) -> None:
        """Per-file updates of ``part``, ``final``, ``accepted``, ``done`` or ``hash``
        (known late in file drop 2)."""
        allowed = {"part", "final", "accepted", "done", "hash"}
        with self._write() as db:
            for index, fields in updates:
                if not fields.keys() <= allowed:
                    raise ValueError(f"cannot update {set(fields) - allowed}")
                sets = ", ".join(f"{k} = ?" for k in fields)
                db.execute(
                    f"UPDATE transfer_files SET {sets} WHERE transfer_id = ? AND idx = ?",
                    (*fields.values(), transfer_id, index),
                )

"""Small state beside the conversations: network hints, pending and invite tokens,
and the views' saved state.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from p2pchat.store.database import StoreBase
from p2pchat.store.records import DEFAULT_INVITE_TTL


class SettingsMixin(StoreBase):
    """Network hints, tokens and view state."""

    def add_network_hints(
        self, kind: str, values: Sequence[str], *, now: float, keep: int = 4
    ) -> None:
        """Remember relay or bootstrap hints (the newest ``keep`` of each kind)."""
        if kind not in ("relay", "bootstrap"):
            raise ValueError(f"unknown hint kind {kind!r}")
        with self._write() as db:
            for value in values:
                db.execute(
                    "INSERT OR REPLACE INTO network_hints (kind, value, added_at)"
                    " VALUES (?, ?, ?)",
                    (kind, value, now),
                )
            db.execute(
                "DELETE FROM network_hints WHERE kind = ? AND value NOT IN ("
                " SELECT value FROM network_hints WHERE kind = ?"
                " ORDER BY added_at DESC, value LIMIT ?)",
                (kind, kind, keep),
            )

    def network_hints(self, kind: str) -> list[str]:
        """Relay or bootstrap hints from invites, newest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT value FROM network_hints WHERE kind = ? ORDER BY added_at DESC, value",
                (kind,),
            ).fetchall()
        return [str(row[0]) for row in rows]

    def save_pending_token(self, peer_id: str, token: str) -> None:
        """Remember the token of a peer's invite until our Hello has presented it."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO pending_tokens (peer_id, token) VALUES (?, ?)",
                (peer_id, token),
            )

    def pending_token(self, peer_id: str) -> str | None:
        with self._read() as db:
            row = db.execute(
                "SELECT token FROM pending_tokens WHERE peer_id = ?", (peer_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def view_state(self, key: str) -> str | None:
        with self._read() as db:
            row = db.execute("SELECT value FROM view_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_view_state(self, key: str, value: str | None) -> None:
        """Set (or with None forget) one value a view remembers between runs."""
        with self._write() as db:
            if value is None:
                db.execute("DELETE FROM view_state WHERE key = ?", (key,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO view_state (key, value) VALUES (?, ?)", (key, value)
                )

    def drop_pending_token(self, peer_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM pending_tokens WHERE peer_id = ?", (peer_id,))

    def create_invite_token(self, *, now: float, ttl: float = DEFAULT_INVITE_TTL) -> str:
        """Issue a single-use token; expired unused ones are purged on the way."""
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        token = secrets.token_urlsafe(16)
        with self._write() as db:
            db.execute(
                "DELETE FROM invite_tokens WHERE used_at IS NULL AND expires_at <= ?", (now,)
            )
            db.execute(
                "INSERT INTO invite_tokens (token, created_at, expires_at) VALUES (?, ?, ?)",
                (token, now, now + ttl),
            )
        return token

    def redeem_invite_token(self, token: str, peer_id: str, *, now: float) -> bool:
        """True exactly once per valid token; the check and the marking are one UPDATE."""
        with self._write() as db:
            updated = db.execute(
                "UPDATE invite_tokens SET used_at = ?, used_by = ?"
                " WHERE token = ? AND used_at IS NULL AND expires_at > ?",
                (now, peer_id, token, now),
            ).rowcount
        return updated == 1

"""Contact requests: strangers who reached us, bounded in number and in what
they may store (name, address, preview), until the user accepts or declines.
"""

from __future__ import annotations

import sqlite3

from p2pchat.names import repair_name
from p2pchat.store.contacts import ContactsMixin, resolve_ref
from p2pchat.store.errors import UnknownContact
from p2pchat.store.records import (
    _REQUEST_COLUMNS,
    MAX_ADDRESS_CHARS,
    MAX_PENDING_REQUESTS,
    MAX_PREVIEW_CHARS,
    Contact,
    ContactRequest,
    _clip,
    _request,
)


class RequestsMixin(ContactsMixin):
    """Contact requests; accepting one adds a contact."""

    @staticmethod
    def _get_request(db: sqlite3.Connection, peer_id: str) -> ContactRequest | None:
        row = db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE peer_id = ?", (peer_id,)
        ).fetchone()
        return None if row is None else _request(row)

    def add_request(
        self,
        peer_id: str,
        *,
        name: str | None,
        address: str | None,
        preview: str | None,
        now: float,
    ) -> tuple[ContactRequest, bool]:
        """Record a knock from a stranger; the bool says whether to notify the user.

        Only a brand-new row notifies: a pending request was already shown and
        a declined peer must not be able to pester.  Pending rows are capped,
        evicting the stalest, so a flood of fresh keys cannot grow the file
        without bound.

        A peer that is already a contact is not a request: nothing is stored
        and the returned request is a transient view with ``attempts == 0``.
        """
        if not peer_id:
            raise ValueError("peer_id must not be empty")
        name = repair_name(name)
        address = _clip(address, MAX_ADDRESS_CHARS)
        preview = _clip(preview, MAX_PREVIEW_CHARS)
        with self._write() as db:
            if self._get_contact(db, peer_id) is not None:
                transient = ContactRequest(peer_id, name, address, preview, now, now, 0, "pending")
                return transient, False
            existing = self._get_request(db, peer_id)
            if existing is None:
                pending = int(
                    db.execute("SELECT count(*) FROM requests WHERE state = 'pending'").fetchone()[
                        0
                    ]
                )
                excess = pending - MAX_PENDING_REQUESTS + 1
                if excess > 0:
                    db.execute(
                        "DELETE FROM requests WHERE peer_id IN ("
                        " SELECT peer_id FROM requests WHERE state = 'pending'"
                        " ORDER BY last_seen, first_seen, peer_id LIMIT ?)",
                        (excess,),
                    )
                db.execute(
                    "INSERT INTO requests (peer_id, name, address, preview, first_seen,"
                    " last_seen, attempts, state) VALUES (?, ?, ?, ?, ?, ?, 1, 'pending')",
                    (peer_id, name, address, preview, now, now),
                )
                created = True
            elif existing.state == "declined":
                db.execute(
                    "UPDATE requests SET last_seen = ?, attempts = attempts + 1 WHERE peer_id = ?",
                    (now, peer_id),
                )
                created = False
            else:
                db.execute(
                    "UPDATE requests SET last_seen = ?, attempts = attempts + 1,"
                    " name = coalesce(?, name), address = coalesce(?, address),"
                    " preview = coalesce(preview, ?) WHERE peer_id = ?",
                    (now, name, address, preview, peer_id),
                )
                created = False
            stored = self._get_request(db, peer_id)
            assert stored is not None  # written in this very transaction
            return stored, created

    def list_requests(self) -> list[ContactRequest]:
        """Pending requests, most recently active first."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE state = 'pending'"
                " ORDER BY last_seen DESC, peer_id"
            ).fetchall()
        return [_request(row) for row in rows]

    def get_request(self, peer_id: str) -> ContactRequest | None:
        with self._read() as db:
            return self._get_request(db, peer_id)

    def find_request(self, ref: str) -> ContactRequest:
        """Resolve a pending request the way ``find_contact`` resolves contacts."""
        return resolve_ref(
            ref, self.list_requests(), lambda r: r.peer_id, lambda r: r.name, "contact request"
        )

    def accept_request(self, peer_id: str, *, name: str | None, now: float) -> Contact:
        """Turn a request (pending or declined) into a contact.

        An explicit ``name`` must be free (``ContactExists``); the name the
        stranger announced is only a suggestion and is suffixed with the peer id
        when it collides, so accepting never fails on someone else's choice.
        """
        with self._write() as db:
            request = self._get_request(db, peer_id)
            if request is None:
                raise UnknownContact(f"no contact request from {peer_id}")
            return self._upsert_contact(
                db,
                peer_id,
                name,
                derived_name=request.name,
                strict_name=True,
                addresses=[request.address] if request.address else [],
                now=now,
                verified=False,
            )

    def decline_request(self, peer_id: str) -> None:
        with self._write() as db:
            updated = db.execute(
                "UPDATE requests SET state = 'declined' WHERE peer_id = ?", (peer_id,)
            ).rowcount
            if updated == 0:
                raise UnknownContact(f"no contact request from {peer_id}")

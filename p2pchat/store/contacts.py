"""Contacts: names (unique, case-insensitively), addresses, verification, muting,
blocking, and the lookup rule that turns what a user typed into one peer.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar, cast

from p2pchat.names import MAX_NAME_CHARS, normalise_name, repair_name
from p2pchat.store.database import StoreBase
from p2pchat.store.errors import AmbiguousContact, ContactExists, UnknownContact
from p2pchat.store.records import (
    _CONTACT_COLUMNS,
    MAX_ADDRESS_CHARS,
    MAX_ADDRESSES,
    MIN_ID_PREFIX,
    BlockedPeer,
    Contact,
    _clip,
    _contact,
)

_T = TypeVar("_T")
MAX_RESOLVED_REFS = 256
"""Contact references ``contact_id`` remembers (what users and scripts typed)."""


def _default_name(peer_id: str) -> str:
    return f"peer-{peer_id[:8]}"


def _normalise_addresses(addresses: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for address in addresses:
        address = address.strip()
        if address and address not in seen and len(address) <= MAX_ADDRESS_CHARS:
            seen.append(address)
    return seen[:MAX_ADDRESSES]


def resolve_ref(
    ref: str,
    items: Sequence[_T],
    peer_id: Callable[[_T], str],
    name: Callable[[_T], str | None],
    what: str,
) -> _T:
    """The lookup rule shared by contacts and requests, most specific first.

    Each stage either finds exactly one match, reports ambiguity, or falls
    through; a longer prefix never silently picks a different peer than the
    user could see listed.
    """
    ref = ref.strip()
    if not ref:
        raise UnknownContact(f"no {what} matches an empty reference")
    for item in items:
        if peer_id(item) == ref:
            return item
    folded = ref.casefold()

    def label(item: _T) -> str:
        item_name = name(item)
        short = peer_id(item)[:12]
        return f"{item_name} ({short})" if item_name else short

    stages: list[list[_T]] = [
        [item for item in items if (name(item) or "").casefold() == folded],
    ]
    if len(ref) >= MIN_ID_PREFIX:
        stages.append([item for item in items if peer_id(item).casefold().startswith(folded)])
    stages.append([item for item in items if (name(item) or "").casefold().startswith(folded)])
    for matches in stages:
        if len(matches) == 1:
            return matches[0]
        if matches:
            labels = sorted(label(item) for item in matches)
            raise AmbiguousContact(
                f"{ref!r} matches several {what}s: {', '.join(labels)}; "
                "type more of the name or peer id",
                [peer_id(item) for item in matches],
            )
    raise UnknownContact(f"no {what} matches {ref!r}")


def _version(db: sqlite3.Connection) -> tuple[int, int]:
    """Changes as one connection sees them: the rows it changed itself (which counts
    every statement, even one rolled back later) and ``PRAGMA data_version``, which
    moves when another connection commits."""
    return db.total_changes, int(db.execute("PRAGMA data_version").fetchone()[0])


class ContactsMixin(StoreBase):
    """Contacts and blocked peers."""

    _contacts_read: tuple[sqlite3.Connection, tuple[int, int], tuple[Contact, ...]] | None = None
    """The last ``list_contacts`` answer, with the connection and the database's
    version (``_version``) when it was read."""

    @staticmethod
    def _get_contact(db: sqlite3.Connection, peer_id: str) -> Contact | None:
        row = db.execute(
            f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE peer_id = ?", (peer_id,)
        ).fetchone()
        return None if row is None else _contact(row)

    @staticmethod
    def _require_contact(db: sqlite3.Connection, peer_id: str) -> Contact:
        contact = ContactsMixin._get_contact(db, peer_id)
        if contact is None:
            raise UnknownContact(f"{peer_id} is not a contact")
        return contact

    @staticmethod
    def _name_owner(db: sqlite3.Connection, name: str, peer_id: str) -> str | None:
        folded = name.casefold()
        for other_id, other_name in db.execute(
            "SELECT peer_id, name FROM contacts WHERE peer_id != ?", (peer_id,)
        ):
            if other_name.casefold() == folded:
                return cast(str, other_id)
        return None

    @staticmethod
    def _check_name_free(db: sqlite3.Connection, name: str, peer_id: str) -> None:
        owner = ContactsMixin._name_owner(db, name, peer_id)
        if owner is not None:
            raise ContactExists(f"a contact named {name!r} already exists ({owner[:12]})")

    @staticmethod
    def _free_name(db: sqlite3.Connection, wanted: str, peer_id: str) -> str:
        """A name chosen for the user (from a request or the peer id) must not fail."""
        candidates = [wanted]
        for width in (6, 12, len(peer_id)):
            suffix = f"-{peer_id[:width]}"
            candidates.append(wanted[: MAX_NAME_CHARS - len(suffix)] + suffix)
        for candidate in candidates:
            candidate = candidate[:MAX_NAME_CHARS]
            if ContactsMixin._name_owner(db, candidate, peer_id) is None:
                return candidate
        return peer_id[:MAX_NAME_CHARS]

    def _upsert_contact(
        self,
        db: sqlite3.Connection,
        peer_id: str,
        name: str | None,
        *,
        derived_name: str | None,
        strict_name: bool,
        addresses: Iterable[str],
        now: float,
        verified: bool,
    ) -> Contact:
        if not peer_id:
            raise ValueError("peer_id must not be empty")
        self._contacts_changed()
        existing = self._get_contact(db, peer_id)
        new_addresses = list(addresses)
        final_name: str | None = None
        if name is not None:
            final_name = normalise_name(name)
            if strict_name:
                self._check_name_free(db, final_name, peer_id)
            else:
                final_name = self._free_name(db, final_name, peer_id)
        if existing is None:
            if final_name is None:
                wanted = repair_name(derived_name) or _default_name(peer_id)
                final_name = self._free_name(db, wanted, peer_id)
            db.execute(
                "INSERT INTO contacts (peer_id, name, verified, added_at, addresses)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    peer_id,
                    final_name,
                    int(verified),
                    now,
                    json.dumps(_normalise_addresses(new_addresses)),
                ),
            )
        else:
            merged = _normalise_addresses([*new_addresses, *existing.addresses])
            db.execute(
                "UPDATE contacts SET name = ?, verified = ?, addresses = ? WHERE peer_id = ?",
                (
                    final_name or existing.name,
                    int(existing.verified or verified),
                    json.dumps(merged),
                    peer_id,
                ),
            )
        db.execute("DELETE FROM requests WHERE peer_id = ?", (peer_id,))
        return self._require_contact(db, peer_id)

    def add_contact(
        self,
        peer_id: str,
        name: str | None,
        *,
        addresses: Iterable[str] = (),
        now: float,
        verified: bool = False,
    ) -> Contact:
        """Add or refresh a contact; adding twice is how an invite re-teaches addresses.

        The node passes names that peers announce, so a name already used by
        another contact is suffixed with the peer id rather than refused; the
        returned contact carries the final name.  New addresses go first (they
        come from the freshest invite); ``verified`` only ever goes up here,
        lowering it takes an explicit ``set_verified``.
        """
        with self._write() as db:
            return self._upsert_contact(
                db,
                peer_id,
                name,
                derived_name=None,
                strict_name=False,
                addresses=addresses,
                now=now,
                verified=verified,
            )

    def get_contact(self, peer_id: str) -> Contact | None:
        with self._read() as db:
            return self._get_contact(db, peer_id)

    def list_contacts(self) -> list[Contact]:
        """Every contact, by name.

        The node's dial loop asks every second; an idle node's database does not
        change, so the rows are read (and their addresses parsed) again only after a
        write.  Not kept inside a transaction, which could still roll back.
        """
        with self._read() as db:
            version = _version(db)
            read = self._contacts_read
            if read is not None and read[0] is db and read[1] == version:
                return list(read[2])
            rows = db.execute(
                f"SELECT {_CONTACT_COLUMNS} FROM contacts ORDER BY name COLLATE NOCASE, peer_id"
            ).fetchall()
            contacts = tuple(_contact(row) for row in rows)
            self._contacts_read = None if db.in_transaction else (db, version, contacts)
        return list(contacts)

    def remove_contact(self, peer_id: str) -> None:
        """Forget the contact but keep history, counters and queued messages.

        Keeping the counters is what lets the peer be re-added later without
        the two sides disagreeing about sequence numbers.
        """
        self._contacts_changed()
        with self._write() as db:
            if db.execute("DELETE FROM contacts WHERE peer_id = ?", (peer_id,)).rowcount == 0:
                raise UnknownContact(f"{peer_id} is not a contact")

    def set_muted(self, peer_id: str, muted: bool) -> Contact:
        with self._write() as db:
            self._require_contact(db, peer_id)
            db.execute("UPDATE contacts SET muted = ? WHERE peer_id = ?", (int(muted), peer_id))
            return self._require_contact(db, peer_id)

    def block(self, peer_id: str, *, name: str | None, now: float) -> BlockedPeer:
        """Put a key on the block list (contact or not); its pending request goes.

        Blocking keeps a contact's row, history and counters (unblocking brings
        them back as they were); ``name`` is remembered for the list.
        """
        if not peer_id:
            raise ValueError("peer_id must not be empty")
        name = _clip(name, MAX_NAME_CHARS)
        with self._write() as db:
            db.execute(
                "INSERT INTO blocked (peer_id, name, blocked_at) VALUES (?, ?, ?)"
                " ON CONFLICT (peer_id) DO UPDATE SET name = coalesce(excluded.name, name)",
                (peer_id, name, now),
            )
            db.execute("DELETE FROM requests WHERE peer_id = ?", (peer_id,))
            row = db.execute(
                "SELECT peer_id, name, blocked_at FROM blocked WHERE peer_id = ?", (peer_id,)
            ).fetchone()
        return BlockedPeer(row[0], row[1], row[2])

    def unblock(self, peer_id: str) -> None:
        with self._write() as db:
            if db.execute("DELETE FROM blocked WHERE peer_id = ?", (peer_id,)).rowcount == 0:
                raise UnknownContact(f"{peer_id} is not blocked")

    def is_blocked(self, peer_id: str) -> bool:
        with self._read() as db:
            found = db.execute("SELECT 1 FROM blocked WHERE peer_id = ?", (peer_id,)).fetchone()
        return found is not None

    def list_blocked(self) -> list[BlockedPeer]:
        """The block list, most recently blocked first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT peer_id, name, blocked_at FROM blocked ORDER BY blocked_at DESC, peer_id"
            ).fetchall()
        return [BlockedPeer(r[0], r[1], r[2]) for r in rows]

    def rename_contact(self, peer_id: str, name: str) -> Contact:
        self._contacts_changed()
        with self._write() as db:
            self._require_contact(db, peer_id)
            cleaned = normalise_name(name)
            self._check_name_free(db, cleaned, peer_id)
            db.execute("UPDATE contacts SET name = ? WHERE peer_id = ?", (cleaned, peer_id))
            return self._require_contact(db, peer_id)

    def repair_names(self) -> list[tuple[str, str | None, str | None]]:
        """Bring names stored by older versions under the name rule (``p2pchat.names``).

        Those versions stored whatever was typed or announced, and a name with a
        control character or over the length limit broke every session that
        carried it.  Returns ``(peer_id, old, new)`` for each contact or request
        changed; a read-only pass when nothing needs repair.
        """
        self._contacts_changed()
        with self._read() as db:
            contacts = db.execute("SELECT peer_id, name FROM contacts").fetchall()
            requests = db.execute(
                "SELECT peer_id, name FROM requests WHERE name IS NOT NULL"
            ).fetchall()
        bad_contacts = [(p, n) for p, n in contacts if repair_name(n) != n]
        bad_requests = [(p, n) for p, n in requests if repair_name(n) != n]
        if not bad_contacts and not bad_requests:
            return []
        changed: list[tuple[str, str | None, str | None]] = []
        with self._write() as db:
            for peer_id, old in bad_contacts:
                new = self._free_name(db, repair_name(old) or _default_name(peer_id), peer_id)
                db.execute("UPDATE contacts SET name = ? WHERE peer_id = ?", (new, peer_id))
                changed.append((peer_id, old, new))
            for peer_id, old in bad_requests:
                fixed = repair_name(old)
                db.execute("UPDATE requests SET name = ? WHERE peer_id = ?", (fixed, peer_id))
                changed.append((peer_id, old, fixed))
        return changed

    def set_verified(self, peer_id: str, verified: bool) -> Contact:
        with self._write() as db:
            self._require_contact(db, peer_id)
            db.execute(
                "UPDATE contacts SET verified = ? WHERE peer_id = ?", (int(verified), peer_id)
            )
            return self._require_contact(db, peer_id)

    def set_addresses(self, peer_id: str, addresses: Iterable[str]) -> Contact:
        with self._write() as db:
            self._require_contact(db, peer_id)
            db.execute(
                "UPDATE contacts SET addresses = ? WHERE peer_id = ?",
                (json.dumps(_normalise_addresses(addresses)), peer_id),
            )
            return self._require_contact(db, peer_id)

    def record_seen(self, peer_id: str, address: str, now: float) -> Contact | None:
        """Remember where a contact was last reachable; a no-op for strangers.

        The node calls this on every authenticated connection, including from
        peers that are only knocking, so it must not raise for non-contacts.
        """
        with self._write() as db:
            contact = self._get_contact(db, peer_id)
            if contact is None:
                return None
            addresses = list(contact.addresses)
            address = address.strip()
            if address and address not in addresses and len(address) <= MAX_ADDRESS_CHARS:
                addresses.insert(0, address)
            db.execute(
                "UPDATE contacts SET last_seen = ?, last_address = ?, addresses = ?"
                " WHERE peer_id = ?",
                (now, address or None, json.dumps(addresses[:MAX_ADDRESSES]), peer_id),
            )
            return self._require_contact(db, peer_id)

    def contact_id(self, ref: str) -> str:
        """The peer ID of the contact ``ref`` names (as for :meth:`find_contact`),
        answered from memory when this ``ref`` was resolved before, so sending a
        message reads no row.  Every change of who is a contact or of a name made
        through this store forgets what was resolved (``_contacts_changed``); such a
        change by another process is not seen until then (a node's contacts change
        through the node)."""
        peer_id = self._contact_refs.get(ref)
        if peer_id is None:
            peer_id = self.find_contact(ref).peer_id
            if len(self._contact_refs) >= MAX_RESOLVED_REFS:
                self._contact_refs.clear()
            self._contact_refs[ref] = peer_id
        return peer_id

    def _contacts_changed(self) -> None:
        self._contact_refs.clear()

    def find_contact(self, ref: str) -> Contact:
        """Resolve what a user typed: peer id, name, id prefix (>= 4 chars), name prefix."""
        exact = self.get_contact(ref)  # a whole peer ID: one indexed read, not the list
        if exact is not None:
            return exact
        return resolve_ref(
            ref, self.list_contacts(), lambda c: c.peer_id, lambda c: c.name, "contact"
        )

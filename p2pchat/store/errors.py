"""What the store raises: every failure of the local database is a ``StoreError``.

Kept apart so that the modules of the store (and callers) share one hierarchy
without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence


class StoreError(Exception):
    """The local database cannot do what was asked."""


class DatabaseBusy(StoreError):
    """Another process holds the database in a way that excludes this request."""


class DatabaseKeyError(StoreError):
    """The database cannot be read with the key given (or without one)."""


class UnknownContact(StoreError):
    """No contact (or contact request) matches the given reference."""


class AmbiguousContact(StoreError):
    """Several contacts match a reference; the caller should ask for more characters."""

    def __init__(self, message: str, candidates: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.candidates: tuple[str, ...] = tuple(candidates)


class ContactExists(StoreError):
    """Another contact already uses the name the user chose.

    Names are unique (case-insensitively) so that ``find_contact`` by name is
    never ambiguous and the contact list never shows two indistinguishable rows.
    Only names typed by the user are refused; names that arrive from peers
    (invites, hellos, requests) are suffixed instead, because a stranger's
    choice of name must not make adding them fail.
    """

"""The node's local state: contacts, conversations, outbox, requests and invites.

Everything lives in one SQLite file, and every method that writes is exactly one
transaction, durable when it returns (``database`` says why and how).

Sequence numbers live in ``conversations`` rather than in ``contacts``: removing
a contact and adding it again, or talking to a peer that is not (yet) a
contact, must never restart numbering at 1, because the peer's receive window
would then treat new messages as duplicates and the ``(peer_id, direction,
seq)`` uniqueness would reject them.  Removing a contact therefore keeps its
history, its counters and its queued messages.

The store is one class, :class:`Store`, composed of one part per responsibility
(each a module of this package): ``database`` opens the file and runs
transactions, ``schema`` holds the migrations, ``contacts`` and ``requests`` the
people, ``outbox``, ``inbox``, ``history`` and ``search`` the messages,
``transfers`` the file drops and ``settings`` the small state beside them.  They
share one connection and one lock, so a ``Store.batch`` spans all of them.
"""

from __future__ import annotations

from p2pchat.store.contacts import ContactsMixin, resolve_ref
from p2pchat.store.database import (
    DB_ERRORS,
    LOCK_WAIT,
    Reopen,
    StoreLock,
    database_is_plaintext,
    open_database,
    pending_rekey_marker,
)
from p2pchat.store.errors import (
    AmbiguousContact,
    ContactExists,
    DatabaseBusy,
    DatabaseKeyError,
    StoreError,
    UnknownContact,
)
from p2pchat.store.history import HistoryMixin
from p2pchat.store.inbox import InboxMixin
from p2pchat.store.outbox import OutboxMixin
from p2pchat.store.records import (
    DEFAULT_INVITE_TTL,
    MAX_ADDRESS_CHARS,
    MAX_ADDRESSES,
    MAX_PENDING_REQUESTS,
    MAX_PREVIEW_CHARS,
    MIN_ID_PREFIX,
    BlockedPeer,
    Contact,
    ContactRequest,
    Direction,
    IncomingMessage,
    Message,
    MessageKind,
    ReceiveResult,
    RequestState,
    Transfer,
    TransferFile,
)
from p2pchat.store.requests import RequestsMixin
from p2pchat.store.schema import MIGRATIONS
from p2pchat.store.search import SearchMixin
from p2pchat.store.settings import SettingsMixin
from p2pchat.store.transfers import TransfersMixin

__all__ = [
    "DB_ERRORS",
    "DEFAULT_INVITE_TTL",
    "LOCK_WAIT",
    "MAX_ADDRESSES",
    "MAX_ADDRESS_CHARS",
    "MAX_PENDING_REQUESTS",
    "MAX_PREVIEW_CHARS",
    "MIGRATIONS",
    "MIN_ID_PREFIX",
    "AmbiguousContact",
    "BlockedPeer",
    "Contact",
    "ContactExists",
    "ContactRequest",
    "DatabaseBusy",
    "DatabaseKeyError",
    "Direction",
    "IncomingMessage",
    "Message",
    "MessageKind",
    "ReceiveResult",
    "Reopen",
    "RequestState",
    "Store",
    "StoreError",
    "StoreLock",
    "Transfer",
    "TransferFile",
    "UnknownContact",
    "database_is_plaintext",
    "open_database",
    "pending_rekey_marker",
    "resolve_ref",
]


class Store(
    RequestsMixin,
    ContactsMixin,
    OutboxMixin,
    InboxMixin,
    HistoryMixin,
    SearchMixin,
    TransfersMixin,
    SettingsMixin,
):
    """One connection to the node's database; safe to share between threads.

    ``key`` is the SQLCipher key of an encrypted database (None: plain SQLite).
    ``lock`` is a :class:`StoreLock` the caller already holds shared; the store
    then owns it.  Without one the store takes its own.
    """

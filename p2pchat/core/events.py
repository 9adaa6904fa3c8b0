"""Events the node emits to its users (CLI, UI, control socket).

Frozen dataclasses so a consumer can keep, compare and pass them across tasks
without fearing that the node mutates them later.  Those made for every message
of a burst are built through ``quick_init`` (``core/frozen.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from p2pchat.core.frozen import quick_init

MessageState = Literal["queued", "sent", "delivered", "read"]


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """Base class of everything ``Node.events()`` yields."""


@dataclass(frozen=True, slots=True)
class NodeStarted(NodeEvent):
    peer_id: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodeStopped(NodeEvent):
    pass


@dataclass(frozen=True, slots=True)
class NodeConnectionLost(NodeEvent):
    """An attached view's owner went away (its control socket closed).

    Only ``RemoteNode.events()`` yields it, as its last event: every later call
    on that ``RemoteNode`` raises ``OwnerGone``; ``RemoteNode.take_over`` starts
    the node here or attaches to whoever owns it now.
    """

    reason: str


@quick_init
@dataclass(frozen=True, slots=True)
class MessageReceived(NodeEvent):
    peer_id: str
    message_id: str
    seq: int
    body: str
    sent_at: float
    received_at: float
    reply_to: str | None = None
    """The message this one answers; its text is looked up here (``Node.get_message``)."""


@quick_init
@dataclass(frozen=True, slots=True)
class MessageSent(NodeEvent):
    """A message of ours was stored (state ``queued``), whoever asked for it: this
    view, another view attached to the same node, or ``p2pchat msg`` over the
    control socket.  Every view adds it unless it already shows ``message_id``.
    It is the message's first state: no ``MessageStateChanged(..., "queued")``
    follows it (one event fewer per message in a burst)."""

    peer_id: str
    message_id: str
    seq: int
    body: str
    created_at: float
    reply_to: str | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class MessageEdited(NodeEvent):
    """A message's text changed: ours (``direction`` ``out``, edited through any
    view) or the contact's (``in``).  ``body`` is the whole new text."""

    peer_id: str
    message_id: str
    direction: str
    body: str
    edited_at: float


@quick_init
@dataclass(frozen=True, slots=True)
class MessageDeleted(NodeEvent):
    """A message was deleted for both sides: views show a tombstone, no text."""

    peer_id: str
    message_id: str
    direction: str
    deleted_at: float


@dataclass(frozen=True, slots=True)
class AwaitingAcceptance(NodeEvent):
    """The contact's node answered that we are not its contact yet: our messages
    stay queued until they accept our request (then they go out by themselves).
    ``ContactView.awaiting_acceptance`` says the same until the session ends."""

    peer_id: str


@quick_init
@dataclass(frozen=True, slots=True)
class MessageStateChanged(NodeEvent):
    """``queued`` -> ``sent`` -> ``delivered`` -> ``read``.  A message starts ``queued``
    (``MessageSent`` says so); ``queued`` is reported only when a ``sent`` message goes
    back to it, because the session that carried it died before the contact
    acknowledged it (it is sent again on the next session)."""

    peer_id: str
    message_id: str
    state: MessageState


@dataclass(frozen=True, slots=True)
class PeerOnline(NodeEvent):
    peer_id: str
    address: str


@dataclass(frozen=True, slots=True)
class PeerOffline(NodeEvent):
    peer_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class TypingChanged(NodeEvent):
    peer_id: str
    active: bool


@dataclass(frozen=True, slots=True)
class ContactRequestReceived(NodeEvent):
    """An authenticated key that is not a contact knocked: the only thing a
    stranger can make appear in the UI."""

    peer_id: str
    name: str | None
    preview: str | None


@dataclass(frozen=True, slots=True)
class ContactAdded(NodeEvent):
    peer_id: str
    name: str


@dataclass(frozen=True, slots=True)
class PeerKeyMismatch(NodeEvent):
    """A dialled address answered with another key than the contact's."""

    peer_id: str
    address: str


@dataclass(frozen=True, slots=True)
class NearbyPeerFound(NodeEvent):
    """A peer announced itself nearby (LAN).  Its ID is only a claim until a
    session proves the key; non-contacts can be added with one request."""

    peer_id: str
    name: str | None
    addresses: tuple[str, ...]
    source: str


@dataclass(frozen=True, slots=True)
class NearbyPeerLost(NodeEvent):
    peer_id: str
    source: str


@dataclass(frozen=True, slots=True)
class ContactRemoved(NodeEvent):
    """The contact was removed (its history stays; it can knock again as a stranger)."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class BlockChanged(NodeEvent):
    """A key was put on the block list (no sessions, no requests, no lookups) or
    taken off it.  It may be a contact (``ContactView.blocked``) or a stranger."""

    peer_id: str
    blocked: bool


@dataclass(frozen=True, slots=True)
class ContactChanged(NodeEvent):
    """A contact's stored details changed (name, verified or muted flag, addresses)."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class TransferOffered(NodeEvent):
    """A contact offers files; nothing is written until it is accepted."""

    transfer_id: str
    peer_id: str
    files: tuple[tuple[str, int], ...]
    total: int


@dataclass(frozen=True, slots=True)
class TransferProgress(NodeEvent):
    transfer_id: str
    peer_id: str
    direction: str
    done: int
    total: int
    rate: float
    """Bytes per second over the last interval."""


@dataclass(frozen=True, slots=True)
class TransferStateChanged(NodeEvent):
    """States: offered, pending, accepted, sending, receiving, paused, done,
    declined, cancelled, failed.  ``paused``: the contact went offline (or the node
    restarted) mid-transfer, ``error`` says why; it resumes by itself when the
    contact is back.  ``paths`` are the published files when done (receiver)."""

    transfer_id: str
    peer_id: str
    direction: str
    state: str
    error: str | None = None
    paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryDeferred(NodeEvent):
    """The contact's node refused our messages for now: its database failed
    (``why == "storage"``) or we used up our daily allowance there (``"quota"``).
    They stay queued and go out again at ``retry_at`` (wall clock); nothing is lost.
    ``reason`` comes from the contact's node: render it literally."""

    peer_id: str
    why: str
    reason: str
    retry_at: float


@dataclass(frozen=True, slots=True)
class IncomingDeferred(NodeEvent):
    """We refused a contact's messages for now (our database failed, or the contact
    used up its daily allowance); the contact keeps them queued and retries."""

    peer_id: str
    why: str
    reason: str


@dataclass(frozen=True, slots=True)
class StorageProblem(NodeEvent):
    """The local database failed (disk full, I/O error): ``error`` says how.  None
    once writes succeed again.  Incoming messages wait at their senders meanwhile."""

    error: str | None

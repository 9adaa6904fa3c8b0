"""What the node tells its users about groups: events and read-only views.

Everything here is a frozen dataclass with plain fields (ids as text), so the UI, the
control socket and the CLI can keep, compare and print them.  A group id is its 64-hex
text form; people's identities are peer IDs.  Strings that came from other members
(group names, message texts, file paths) are theirs: render them literally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from p2pchat.core.events import NodeEvent

GroupStatusName = Literal["invited", "joined", "left", "removed", "declined"]


@dataclass(frozen=True, slots=True)
class GroupView:
    """A group as the contact list shows it.

    ``status``: ``joined`` (a member taking part), ``invited`` (an invitation waiting
    for accept or decline), ``left``, ``removed`` (history stays readable), ``declined``.
    ``online``: members (other than us) with a live session now.  ``unread``: shown
    messages from others newer than what ``mark_read`` last covered.
    """

    group_id: str
    name: str
    status: GroupStatusName
    role: str | None
    members: int
    online: int
    unread: int
    inviter: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class GroupMemberView:
    """One member, for the member list: ``name`` is the contact name if the member is
    a contact, else the first characters of the peer ID (members choose no names that
    others see); ``online`` is a live session with that member."""

    peer_id: str
    name: str
    role: str
    online: bool
    is_contact: bool
    is_me: bool


@dataclass(frozen=True, slots=True)
class GroupMessageView:
    """One shown message, in display order (``clock``, author, seq).

    ``kind`` is ``text`` (``text`` holds it), ``files`` (``files`` lists
    ``(path, size)`` and ``transfer_id`` is the transfer that brings them to us, if
    any), or another kind this version cannot show (``text`` is None).
    ``delivered``: how many current members are known to hold it (us included),
    of ``members``: the group's current size.
    """

    group_id: str
    message_id: str
    author: str
    author_name: str
    seq: int
    clock: int
    sent_at: float
    received_at: float
    kind: str
    text: str | None
    files: tuple[tuple[str, int], ...]
    transfer_id: str | None
    mine: bool
    delivered: int
    members: int


@dataclass(frozen=True, slots=True)
class GroupInviteReceived(NodeEvent):
    """A contact added us to a group: accept or decline it (``Node.groups``)."""

    group_id: str
    name: str
    inviter: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GroupChanged(NodeEvent):
    """A group's name, members, roles or our status changed: re-read it."""

    group_id: str
    status: GroupStatusName


@dataclass(frozen=True, slots=True)
class GroupMessageReceived(NodeEvent):
    """A message can now be shown (in its author's order, exactly once).  Messages that
    arrive late sort into the history by ``clock``: the history is the reference order,
    the events are the order of arrival."""

    message: GroupMessageView


@dataclass(frozen=True, slots=True)
class GroupDeliveryChanged(NodeEvent):
    """More members are known to hold one of our messages."""

    group_id: str
    message_id: str
    delivered: int
    members: int


@dataclass(frozen=True, slots=True)
class GroupMemberOnline(NodeEvent):
    """A session with a fellow member came up (``online``) or went (not)."""

    peer_id: str
    online: bool

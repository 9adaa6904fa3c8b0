"""Groups on a running node: replicas, sessions with fellow members, sync, invitations.

``Node.groups`` is this service.  It keeps one ``GroupReplica`` (``core/group``) per
group, stores what they accept (``group_store.py``), and speaks the ``g…`` frames over
the node's sessions: a contact's active session, or a *group session* with a member who
is not a contact.  A group session carries group frames and the file drops of group
messages, nothing else: no contact request, no 1:1 chat.

Sessions: a member we need and have no session with is dialled like a contact (same
backoff), at addresses other members told us (``gpeers``), found on the LAN, or in the
DHT.  Our Hello on such a dial names the groups we believe we share, so the other side
admits the session without a contact request even before it has heard that we were
added (it then expects our operations to prove it, within ``TENTATIVE_TIMEOUT``).

When a session with a member comes up, both sides send their summaries; each answers
the other's with what it lacks (see docs/groups.md).  A new message is pushed to online
members and relayed past the author's fan-out; acknowledgements feed the delivery count.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import msgpack

from p2pchat.core import chat
from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError
from p2pchat.core.events import NodeEvent
from p2pchat.core.group import codec
from p2pchat.core.group.errors import GroupError, UnknownGroup
from p2pchat.core.group.events import (
    GroupChanged,
    GroupDeliveryChanged,
    GroupInviteReceived,
    GroupMemberOnline,
    GroupMemberView,
    GroupMessageReceived,
    GroupMessageView,
    GroupView,
)
from p2pchat.core.group.frames import (
    GroupEnd,
    GroupFrame,
    GroupHave,
    GroupInvite,
    GroupMessages,
    GroupOps,
    GroupPeers,
    GroupSummary,
    message_frames,
    op_frames,
)
from p2pchat.core.group.messages import MAX_CONTENT_BYTES, GroupMessage
from p2pchat.core.group.ops import Op
from p2pchat.core.group.ranges import SeqSet
from p2pchat.core.group.replica import GroupLimits, GroupReplica, SyncPlan, prefixes
from p2pchat.group_store import GroupRow, GroupStatus, GroupStore, StoredMessage
from p2pchat.identity import (
    Identity,
    InvalidPeerId,
    key_from_peer_id,
    parse_address,
    peer_id_from_key,
)
from p2pchat.names import normalise_name
from p2pchat.net.dial import Dialer, Route
from p2pchat.net.peer import MAX_BAD_FRAMES, PeerConnection
from p2pchat.net.transfer_files import collect
from p2pchat.net.transfers import TransferManager
from p2pchat.store import AmbiguousContact, Store, Transfer, UnknownContact


class GroupHost(Protocol):
    """What the service uses of the node that owns it (``Node``; net/ never imports it)."""

    @property
    def identity(self) -> Identity: ...

    @property
    def store(self) -> Store: ...

    @property
    def settings(self) -> dict[str, Any]: ...

    @property
    def transfers(self) -> TransferManager: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def _active(self) -> Mapping[str, PeerConnection]: ...

    @property
    def _nearby(self) -> Mapping[str, NearbyClaim]: ...

    @property
    def _dht(self) -> object | None: ...

    @property
    def name(self) -> str: ...

    def _emit(self, event: NodeEvent) -> None: ...

    def is_blocked(self, peer_id: str) -> bool: ...

    def _poke(self) -> None: ...

    def _spawn(self, coro: Any) -> None: ...

    def _prefer(self, old: PeerConnection, new: PeerConnection) -> PeerConnection: ...

    @property
    def _dialer(self) -> Dialer | None: ...

    async def dht_lookup(self, ref: str) -> list[str]: ...

    def events(self) -> AsyncGenerator[NodeEvent, None]: ...


class NearbyClaim(Protocol):
    @property
    def addresses(self) -> tuple[str, ...]: ...

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGES = 20_000
"""Messages kept per group (``group_max_messages`` in settings.json); oldest go first."""
DEFAULT_MAX_BYTES = 64 << 20
"""Bytes of messages kept per group (``group_max_bytes``)."""
MAX_INVITES = 32
"""Invitations waiting for an answer; the oldest is forgotten beyond this."""
MAX_GROUP_SESSIONS = 64
"""Sessions (and dials) with members who are not contacts, over all groups."""
MAX_GROUP_DIALS = 4
"""Dial attempts to members running at once.  Joining a big group would otherwise
start a handshake with every member in the same instant: each costs a key exchange
and signatures on both sides, and a burst of them delays every session's keepalives
(the 20-member benchmark fell into a storm of timeouts and redials without this)."""
FIRST_DIAL_HOLD = 2.0
"""Of two members who never synced and both need a session, the one with the larger key
waits this long (times 1 to 2) before its first dial, so the other's usually arrives
alone: one handshake per pair instead of two that race and one of which is thrown away."""
MAX_TENTATIVE = 16
TENTATIVE_TIMEOUT = 15.0
"""A session admitted on its Hello alone must prove membership within this time."""
DHT_RETRY_MIN = 5.0
DHT_RETRY_MAX = 3600.0
MARKS_EVERY = 5.0
MAX_HINTS = 8
HINTS_EVERY = 10.0
MAX_DELIVERY_EVENTS = 256
FILES_KIND = "files"


@dataclass(slots=True)
class _Lookup:
    """DHT lookups of one member's record: when the next may start, and the back-off."""

    next_at: float = 0.0
    delay: float = DHT_RETRY_MIN


def transfer_id_for(message_id: str, member: bytes) -> str:
    """The transfer that brings the files of group message ``message_id`` to ``member``:
    derived, so the receiver can tell which signed message an offer belongs to."""
    digest = hashlib.blake2b(
        bytes.fromhex(message_id) + member, digest_size=16, person=b"p2pchat-grp-file"
    )
    return digest.hexdigest()


def encode_files(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    return cast(bytes, msgpack.packb([[p, s, h] for p, s, h in entries], use_bin_type=True))


def decode_files(content: bytes) -> list[tuple[str, int, bytes]]:
    """The ``[path, size, blake3]`` list of a ``files`` message (RemoteProtocolError if
    it is not one)."""
    err = RemoteProtocolError
    items = codec.as_list(
        codec.unpack(content, err, max_bin=4096, max_array=chat.MAX_OFFER_FILES),
        err,
        "file list",
        min_len=1,
        max_len=chat.MAX_OFFER_FILES,
    )
    out = []
    for item in items:
        path, size, digest = codec.as_list(item, err, "file entry", min_len=3, max_len=3)
        if type(path) is not str or not path:
            raise err("file path must be a non-empty string")
        out.append(
            (path, codec.as_int(size, err, "file size"), codec.as_bytes(digest, err, "hash", 32))
        )
    return out


class GroupService:
    """Every group of one node.  Public methods are the group part of the Node API."""

    def __init__(self, node: GroupHost) -> None:
        self.node = node
        self.db = GroupStore(node.store)
        self.me = node.identity.public_key
        self.limits = GroupLimits()
        self._replicas: dict[bytes, GroupReplica] = {}
        self._rows: dict[bytes, GroupRow] = {}
        self._sessions: dict[str, PeerConnection] = {}
        self._tentative: dict[PeerConnection, float] = {}
        self._lookups: dict[str, _Lookup] = {}
        self._hints: dict[str, tuple[str, ...]] = self.db.hints()
        self._heard: set[tuple[bytes, bytes]] = set()
        self._ids: dict[bytes, str] = {}
        self._dirty_marks: set[bytes] = set()
        self._marks_at = 0.0
        self._resolving: set[str] = set()
        self._held: set[str] = set()
        self._hinted: dict[tuple[PeerConnection, bytes], float] = {}
        self._usage: dict[bytes, tuple[int, int]] = {}
        self._load()

    # ------------------------------------------------------------ loading
    def _load(self) -> None:
        for row in self.db.rows():
            try:
                replica = GroupReplica.from_ops(
                    row.id, self.db.ops(row.id), self.me, self.node.identity.sign,
                    limits=self.limits, trusted=True,
                )
            except RemoteProtocolError as exc:
                if row.status != "invited":
                    log.error("group %s cannot be loaded: %s", row.id.hex(), exc)
                self._rows[row.id] = row
                continue
            for author, (shown, clock, floor, pending) in self.db.authors(row.id).items():
                replica.restore_author(
                    author, shown=shown, shown_clock=clock, floor=floor, pending=pending
                )
            for member, marks in self.db.marks(row.id).items():
                replica.restore_peer(member, marks)
            self._replicas[row.id] = replica
            self._rows[row.id] = row

    @property
    def max_messages(self) -> int:
        value = self.node.settings.get("group_max_messages")
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return cast(int, value) if ok else DEFAULT_MAX_MESSAGES

    @property
    def max_bytes(self) -> int:
        value = self.node.settings.get("group_max_bytes")
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return cast(int, value) if ok else DEFAULT_MAX_BYTES

    # ------------------------------------------------------------ helpers
    def _pid(self, key: bytes) -> str:
        pid = self._ids.get(key)
        if pid is None:
            pid = self._ids[key] = peer_id_from_key(key)
        return pid

    def _now(self) -> float:
        return self.node.clock()

    def _mono(self) -> float:
        return asyncio.get_running_loop().time()

    def session(self, peer_id: str) -> PeerConnection | None:
        """The session that carries group frames to ``peer_id`` (contact or group)."""
        return self.node._active.get(peer_id) or self._sessions.get(peer_id)

    def owns(self, conn: PeerConnection) -> bool:
        """``conn`` is a group session (not a contact's)."""
        return conn.peer_id is not None and (
            self._sessions.get(conn.peer_id) is conn or conn in self._tentative
        )

    def _online(self, replica: GroupReplica) -> list[bytes]:
        return [
            key
            for key in replica.state().members
            if key != self.me and self.session(self._pid(key)) is not None
        ]

    def _send(self, key: bytes, frame: GroupFrame) -> bool:
        conn = self.session(self._pid(key))
        return conn is not None and conn.send(frame)

    def _joined(self) -> list[tuple[bytes, GroupReplica]]:
        return [
            (gid, r)
            for gid, r in self._replicas.items()
            if self._rows[gid].status == "joined"
        ]

    def _strike(self, conn: PeerConnection, count: int, why: str) -> None:
        """Input no honest member sends counts like an invalid frame."""
        if count <= 0:
            return
        log.warning("group input from %s refused: %s", conn.address, why)
        conn.bad_frames += count
        if conn.bad_frames >= MAX_BAD_FRAMES:
            conn.close("too many invalid frames")

    def _set_status(self, gid: bytes, status: GroupStatus, *, inviter: str | None = None) -> None:
        row = self._rows.get(gid)
        replica = self._replicas.get(gid)
        name = replica.state().name if replica else (row.name if row else "")
        self._rows[gid] = self.db.upsert_group(
            gid, name=name, status=status, inviter=inviter, now=self._now()
        )
        self.node._emit(GroupChanged(gid.hex(), status))

    # --------------------------------------------------------- public API
    def find(self, ref: str) -> bytes:
        """A group by full id, unique name (any case) or id prefix of 4+ characters."""
        ref = ref.strip()
        folded = ref.casefold()
        rows = list(self._rows.values())
        for row in rows:
            if row.id.hex() == folded:
                return row.id
        for matches in (
            [r for r in rows if self._name(r).casefold() == folded],
            [r for r in rows if len(ref) >= 4 and r.id.hex().startswith(folded)],
        ):
            if len(matches) == 1:
                return matches[0].id
            if matches:
                names = ", ".join(f"{self._name(r)} ({r.id.hex()[:12]})" for r in matches)
                raise GroupError(f"{ref!r} matches several groups: {names}")
        raise UnknownGroup(f"no group matches {ref!r}")

    def _display_name(self, key: bytes) -> str:
        """Our name, a contact's name, or the start of a member's peer ID (members choose
        no names that others see)."""
        if key == self.me:
            return self.node.name
        pid = self._pid(key)
        contact = self.node.store.get_contact(pid)
        return contact.name if contact else pid[:8]

    def _cached_name(self, key: bytes, names: dict[bytes, str] | None) -> str:
        if names is None:
            return self._display_name(key)
        name = names.get(key)
        if name is None:
            name = names[key] = self._display_name(key)
        return name

    def _name(self, row: GroupRow) -> str:
        replica = self._replicas.get(row.id)
        return replica.state().name if replica is not None else row.name

    def _replica(self, ref: str) -> tuple[bytes, GroupReplica]:
        gid = self.find(ref)
        replica = self._replicas.get(gid)
        if replica is None:
            raise GroupError("this invitation has not arrived completely yet")
        return gid, replica

    def _member_key(self, ref: str, replica: GroupReplica | None = None) -> bytes:
        """A person by contact reference, or by the peer ID (or 8+ character prefix) of
        a member of ``replica``."""
        try:
            return key_from_peer_id(self.node.store.find_contact(ref).peer_id)
        except (UnknownContact, AmbiguousContact) as exc:
            with contextlib.suppress(InvalidPeerId):
                return key_from_peer_id(ref)
            if replica is not None and len(ref.strip()) >= 8:
                found = [
                    k for k in replica.state().members
                    if self._pid(k).startswith(ref.strip().lower())
                ]
                if len(found) == 1:
                    return found[0]
            raise GroupError(str(exc)) from exc

    def view(self, gid: bytes) -> GroupView:
        row = self._rows[gid]
        replica = self._replicas.get(gid)
        state = replica.state() if replica else None
        return GroupView(
            group_id=gid.hex(),
            name=state.name if state else row.name,
            status=row.status,
            role=state.role(self.me) if state else None,
            members=len(state.members) if state else 0,
            online=len(self._online(replica)) if replica else 0,
            unread=self.db.unread(gid, self.me) if row.status != "invited" else 0,
            inviter=row.inviter,
            created_at=row.created_at,
        )

    def all(self) -> list[GroupView]:
        """Every group this node knows: joined, invited, left, removed, declined."""
        return [self.view(gid) for gid in self._rows]

    def get(self, ref: str) -> GroupView:
        return self.view(self.find(ref))

    def invites(self) -> list[GroupView]:
        """Invitations waiting for ``accept`` or ``decline``."""
        return [v for v in self.all() if v.status == "invited" and v.members]

    def members(self, ref: str) -> list[GroupMemberView]:
        """Current members, admins first, with presence."""
        _, replica = self._replica(ref)
        out = []
        for key, role in replica.state().members.items():
            pid = self._pid(key)
            out.append(
                GroupMemberView(
                    peer_id=pid,
                    name=self._display_name(key),
                    role=role,
                    online=key != self.me and self.session(pid) is not None,
                    is_contact=self.node.store.get_contact(pid) is not None,
                    is_me=key == self.me,
                )
            )
        return sorted(out, key=lambda m: (m.role != "admin", not m.is_me, m.name, m.peer_id))

    def create(self, name: str, members: Iterable[str] = ()) -> GroupView:
        """Found a group with us as admin and invite contacts into it."""
        name = normalise_name(name)
        keys = [self._contact_key(ref) for ref in members]
        replica = GroupReplica.found(
            self.node.identity.sign, self.me, name, at=self._now(), limits=self.limits
        )
        gid = replica.group_id
        ops: list[Op] = [replica.membership.genesis]
        for key in dict.fromkeys(keys):
            if key != self.me:
                ops.append(replica.propose("add", at=self._now(), target=key, role="member"))
        self._replicas[gid] = replica
        self.db.upsert_group(gid, name=name, status="joined", inviter=None, now=self._now())
        self.db.add_ops(gid, ops)
        self._set_status(gid, "joined")
        for key in keys:
            self._invite(gid, replica, key)
        self.node._poke()
        return self.view(gid)

    def _contact_key(self, ref: str) -> bytes:
        return key_from_peer_id(self.node.store.find_contact(ref).peer_id)

    def add_member(self, ref: str, contact: str, *, admin: bool = False) -> GroupView:
        """Add a contact (admins only); it gets an invitation to accept or decline."""
        gid, replica = self._require_joined(ref)
        key = self._contact_key(contact)
        op = self._propose(replica, "add", target=key, role="admin" if admin else "member")
        self._publish(gid, replica, [op])
        self._invite(gid, replica, key)
        return self.view(gid)

    def remove_member(self, ref: str, member: str) -> GroupView:
        """Remove a member (admins only): it receives nothing sent after this."""
        gid, replica = self._require_joined(ref)
        key = self._member_key(member, replica)
        op = self._propose(replica, "remove", target=key)
        self._publish(gid, replica, [op])
        self._drop_sessions()
        return self.view(gid)

    def promote(self, ref: str, member: str) -> GroupView:
        gid, replica = self._require_joined(ref)
        op = self._propose(replica, "promote", target=self._member_key(member, replica))
        self._publish(gid, replica, [op])
        return self.view(gid)

    def rename(self, ref: str, name: str) -> GroupView:
        gid, replica = self._require_joined(ref)
        op = self._propose(replica, "rename", name=normalise_name(name))
        self._publish(gid, replica, [op])
        return self.view(gid)

    def leave(self, ref: str) -> GroupView:
        """Leave: our history stays readable; nothing new arrives."""
        gid, replica = self._require_joined(ref)
        op = self._propose(replica, "leave")
        self._publish(gid, replica, [op])
        self._set_status(gid, "left")
        self._drop_sessions()
        return self.view(gid)

    def accept(self, ref: str) -> GroupView:
        """Accept an invitation: start taking part (history arrives from members)."""
        gid = self.find(ref)
        row, replica = self._rows[gid], self._replicas.get(gid)
        if row.status != "invited" or replica is None or not replica.is_member():
            raise GroupError("no complete invitation to this group is waiting")
        self._set_status(gid, "joined")
        for key in self._online(replica):
            self._ask(gid, replica, key)
        self.node._poke()
        return self.view(gid)

    def decline(self, ref: str) -> None:
        """Decline an invitation: we leave at once (the group learns it), keep nothing."""
        gid = self.find(ref)
        row, replica = self._rows[gid], self._replicas.get(gid)
        if row.status != "invited":
            raise GroupError("no invitation to this group is waiting")
        if replica is not None and replica.is_member():
            op = self._propose(replica, "leave")
            self._publish(gid, replica, [op])
        self._set_status(gid, "declined")

    def send(self, ref: str, text: str) -> GroupMessageView:
        """Post a text message: stored, shown, and pushed to the online members."""
        body = text.strip("\n")
        if not body.strip():
            raise GroupError("refusing to send an empty message")
        data = body.encode("utf-8")
        if len(data) > MAX_CONTENT_BYTES:
            raise GroupError(f"message too long (limit {MAX_CONTENT_BYTES} bytes)")
        gid, replica = self._require_joined(ref)
        return self._post(gid, replica, data, "text")

    async def offer_files(
        self, ref: str, paths: Iterable[Path]
    ) -> tuple[GroupMessageView, list[Transfer]]:
        """Share files with every current member: one signed ``files`` message (paths,
        sizes, BLAKE3) and one transfer per member, sent whenever it is reachable; each
        member accepts or declines its own."""
        gid, replica = self._require_joined(ref)
        entries = await asyncio.to_thread(collect, [Path(p) for p in paths])
        files = [(rel, size, digest) for rel, size, digest, _src, _mtime in entries]
        content = encode_files(files)
        if len(content) > MAX_CONTENT_BYTES:
            raise GroupError("too many files for one group message")
        view = self._post(gid, replica, content, FILES_KIND)
        transfers = []
        for key in replica.state().members:
            if key == self.me:
                continue
            transfers.append(
                await self.node.transfers.offer(
                    self._pid(key),
                    [Path(p) for p in paths],
                    transfer_id=transfer_id_for(view.message_id, key),
                    entries=entries,
                )
            )
        return view, transfers

    def history(self, ref: str, *, limit: int | None = None) -> list[GroupMessageView]:
        """Shown messages in the shared display order, the newest ``limit``."""
        gid = self.find(ref)
        replica = self._replicas.get(gid)
        names: dict[bytes, str] = {}
        return [
            self._message_view(gid, replica, m, names)
            for m in self.db.history(gid, limit=limit)
        ]

    def mark_read(self, ref: str) -> None:
        """Everything shown so far counts as read (unread counts drop to 0)."""
        self.db.mark_read(self.find(ref))

    def delivered(self, ref: str, message_id: str) -> int:
        """How many current members are known to hold a message (us included)."""
        gid = self.find(ref)
        replica = self._replicas.get(gid)
        m = self.db.by_id(gid, message_id)
        if replica is None or m is None:
            raise GroupError(f"no message {message_id} in this group")
        return len(replica.delivered_to(m.author, m.seq))

    async def wait_delivered(
        self, ref: str, message_id: str, at_least: int, timeout: float
    ) -> int:
        """Wait until ``at_least`` members hold the message, or ``timeout`` seconds;
        return how many hold it then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        events = self.node.events()
        try:
            while (count := self.delivered(ref, message_id)) < at_least:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        while True:
                            event = await anext(events)
                            if isinstance(event, GroupDeliveryChanged):
                                break
            return count
        finally:
            await events.aclose()

    # ------------------------------------------------------- local changes
    def _require_joined(self, ref: str) -> tuple[bytes, GroupReplica]:
        gid, replica = self._replica(ref)
        if self._rows[gid].status != "joined":
            raise GroupError(f"you are not taking part in this group ({self._rows[gid].status})")
        return gid, replica

    def _propose(self, replica: GroupReplica, kind: str, **kw: Any) -> Op:
        try:
            return replica.propose(kind, at=self._now(), **kw)
        except LocalProtocolError as exc:
            raise GroupError(str(exc)) from exc

    def _publish(self, gid: bytes, replica: GroupReplica, ops: list[Op]) -> None:
        """Store our own operations and push them to every online member (and to the
        members they remove, so those learn it)."""
        self.db.add_ops(gid, ops)
        name = replica.state().name
        if name != self._rows[gid].name:
            self.db.set_name(gid, name)
        self._rows[gid] = self.db.get(gid) or self._rows[gid]
        targets = set(self._online(replica))
        targets.update(op.target for op in ops if op.target is not None and op.target != self.me)
        for key in targets:
            for frame in op_frames(gid, [op.wire for op in ops]):
                self._send(key, frame)
        self.node._emit(GroupChanged(gid.hex(), self._rows[gid].status))
        self.node._poke()

    def _post(
        self, gid: bytes, replica: GroupReplica, content: bytes, kind: str
    ) -> GroupMessageView:
        try:
            message = replica.author(content, at=self._now(), kind=kind)
        except LocalProtocolError as exc:
            raise GroupError(str(exc)) from exc
        self.db.apply(
            gid,
            new=[(message, True)],
            counters={self.me: replica.author_state(self.me)[:3]},
            now=self._now(),
        )
        self._push(gid, replica, [message], source=None, fanout=())
        self._retain(gid, replica, [message])
        stored = self.db.message(gid, message.author, message.seq)
        assert stored is not None
        return self._message_view(gid, replica, stored)

    def _push(
        self,
        gid: bytes,
        replica: GroupReplica,
        messages: Sequence[GroupMessage],
        *,
        source: bytes | None,
        fanout: Sequence[bytes],
    ) -> None:
        online = self._online(replica)
        per_target: dict[bytes, list[GroupMessage]] = {}
        for m in messages:
            for key in replica.push_targets(m, online, source=source, fanout=fanout):
                per_target.setdefault(key, []).append(m)
        if not per_target:
            return
        keys = [*fanout, *per_target, self.me, *([source] if source else [])]
        out = tuple(prefixes(keys))
        for key, batch in per_target.items():
            for frame in message_frames(gid, batch, fanout=out):
                self._send(key, frame)
            replica.sent(key, [(m.author, m.seq) for m in batch])

    def _invite(self, gid: bytes, replica: GroupReplica, key: bytes) -> None:
        """Send a contact its invitation (again after each reconnect, until it syncs)."""
        conn = self.node._active.get(self._pid(key))
        if conn is None:
            return
        conn.send(GroupInvite(gid, replica.state().name))
        for frame in op_frames(gid, replica.membership.wire()):
            conn.send(frame)

    def _ask(self, gid: bytes, replica: GroupReplica, key: bytes) -> None:
        """Send a member our summary (it answers with what we lack)."""
        if self._send(key, GroupSummary(gid, replica.summary())):
            replica.asking(key, self._mono())

    # ----------------------------------------------------------- sessions
    def hello_groups(self, conn: PeerConnection) -> tuple[bytes, ...]:
        """Groups to name in our Hello on ``conn``: on a dial to a fellow member who is
        not a contact, the groups we take part in with it."""
        key = conn.expected_peer
        if not conn.initiator or key is None or conn.peer_id is None:
            return ()
        if self.node.store.get_contact(conn.peer_id) is not None:
            return ()
        return tuple(gid for gid, r in self._joined() if r.state().is_member(key))[:16]

    def admit(self, conn: PeerConnection, hello: chat.Hello) -> bool:
        """A non-contact introduced itself: take the session as a group session if the
        peer is a member of a group we know (or we dialled it as one).  If it is not
        (yet) to us but its Hello names groups, hold the session for up to
        ``TENTATIVE_TIMEOUT``: the operations that make it a member may still be on
        their way (to us, or to it).  Otherwise it is a stranger: a contact request."""
        key = conn.peer_key
        if conn.peer_id is None or key is None:
            return False
        if self._is_member_somewhere(key):
            self._attach(conn)
            return True
        if not hello.groups or len(self._tentative) >= MAX_TENTATIVE:
            return False
        self._tentative[conn] = self._mono()
        return True

    def _is_member_somewhere(self, key: bytes) -> bool:
        return any(
            r.state().is_member(key)
            for gid, r in self._replicas.items()
            if self._rows[gid].status in ("joined", "invited")
        )

    def _attach(self, conn: PeerConnection) -> None:
        peer = conn.peer_id
        assert peer is not None
        self._tentative.pop(conn, None)
        old = self._sessions.get(peer)
        if old is not None and old is not conn:
            keep = self.node._prefer(old, conn)
            drop = conn if keep is old else old
            self._sessions[peer] = keep
            drop.close("duplicate connection")
            if keep is old:
                return
        self._sessions[peer] = conn
        if self.node._dialer is not None:
            self.node._dialer.established(peer, conn)
        self._learn(peer, (conn.address,), proven=True)
        self.node._emit(GroupMemberOnline(peer, True))
        self.peer_online(conn)
        self.node.transfers.peer_online(conn)

    def peer_online(self, conn: PeerConnection) -> None:
        """A session with ``conn``'s peer came up: sync every group we share, send hints
        about other members, and repeat invitations it has not taken up."""
        key = conn.peer_key
        if key is None:
            return
        self._announce(conn)
        for gid, replica in list(self._replicas.items()):
            status = self._rows[gid].status
            if status != "joined":
                continue
            state = replica.state()
            if not state.is_member(key):
                continue
            self._ask(gid, replica, key)
            self._send_hints(gid, replica, conn)
            if (gid, key) not in self._heard and self.node._active.get(conn.peer_id or "") is conn:
                self._invite(gid, replica, key)

    def _addresses(self, peer_id: str) -> tuple[str, ...]:
        """Where we would reach someone: the live session's address, then a contact's
        stored addresses, then what members told us (all claims to whoever we tell)."""
        found: list[str] = []
        conn = self.session(peer_id)
        if conn is not None:
            found.append(conn.address)
        contact = self.node.store.get_contact(peer_id)
        if contact is not None:
            found.extend(contact.addresses)
        found.extend(self._hints.get(peer_id, ()))
        return tuple(dict.fromkeys(found))[:MAX_HINTS]

    def _learn(self, peer_id: str, addresses: Sequence[str], *, proven: bool = False) -> None:
        """Remember where a fellow member may be reached: an address a session with it
        came from goes first; claims from other members go after what we had."""
        old = self._hints.get(peer_id, ())
        merged = (*addresses, *old) if proven else (*old, *addresses)
        new = tuple(dict.fromkeys(merged))[:MAX_HINTS]
        if new != old:
            self._hints[peer_id] = new
            self.db.save_hint(peer_id, new, now=self._now())

    def _send_hints(self, gid: bytes, replica: GroupReplica, conn: PeerConnection) -> None:
        """Tell a member where we reach the other members (at most every HINTS_EVERY)."""
        now = self._mono()
        if now - self._hinted.get((conn, gid), -HINTS_EVERY) < HINTS_EVERY:
            return
        self._hinted[(conn, gid)] = now
        peers = []
        for key in replica.state().members:
            if key in (self.me, conn.peer_key):
                continue
            addresses = self._addresses(self._pid(key))
            if addresses:
                peers.append((key, addresses))
        if peers:
            conn.send(GroupPeers(gid, tuple(peers[:256])))

    def _announce(self, conn: PeerConnection) -> None:
        """A member came online here: tell the other online members where it is."""
        key = conn.peer_key
        if key is None:
            return
        for gid, replica in self._joined():
            if not replica.state().is_member(key):
                continue
            for other in self._online(replica):
                if other != key:
                    self._send(other, GroupPeers(gid, ((key, (conn.address,)),)))

    def connection_closed(self, conn: PeerConnection) -> None:
        for gid in self._replicas:
            self._hinted.pop((conn, gid), None)
        self._tentative.pop(conn, None)
        peer = conn.peer_id
        if peer is None:
            return
        if self._sessions.get(peer) is conn:
            del self._sessions[peer]
            self.node._emit(GroupMemberOnline(peer, False))
            if self.node._dialer is not None:
                # The larger key waits a little, so both sides rarely dial at once.
                delay = 0.1 if self.me < (conn.peer_key or b"") else 1.0
                self.node._dialer.retry_after(peer, delay * random.uniform(1, 2), reset=True)
        if self.session(peer) is None and conn.peer_key is not None:
            for replica in self._replicas.values():
                replica.peer_gone(conn.peer_key)

    def _drop_sessions(self) -> None:
        """Close group sessions with peers we no longer share a joined group with."""
        wanted = {self._pid(k) for _, r in self._joined() for k in r.state().members}
        for peer, conn in list(self._sessions.items()):
            if peer not in wanted:
                conn.close("no group in common")

    def tick(self, now: float) -> None:
        """From the node's dial loop: expire unproven sessions, dial members, save."""
        for conn, since in list(self._tentative.items()):
            if conn.peer_key is not None and self._is_member_somewhere(conn.peer_key):
                self._attach(conn)
            elif now - since > TENTATIVE_TIMEOUT:
                conn.close("not a member of the group it named")
        wanted: dict[str, list[bytes]] = {}
        for gid, replica in self._joined():
            if not replica.is_member():
                continue
            for key in replica.state().members:
                if key != self.me:
                    wanted.setdefault(self._pid(key), []).append(gid)
        dialer = self.node._dialer
        busy = sum(1 for peer in wanted if dialer is not None and dialer.busy(peer))
        budget = min(MAX_GROUP_SESSIONS - len(self._sessions), MAX_GROUP_DIALS) - busy
        for peer in wanted:
            if dialer is None:
                break
            if (
                self.session(peer) is not None
                or self.node.store.get_contact(peer) is not None
                or self.node.is_blocked(peer)
            ):
                continue
            running = dialer.busy(peer)
            if not running and budget <= 0:
                continue
            if peer not in self._held:
                self._held.add(peer)
                key = key_from_peer_id(peer)
                # Only for members we never synced with: both sides just learned of each
                # other (a new member, a new group) and dial at once.  One coming back
                # to members it knows dials at once: its return is what they wait for.
                fresh = not any(self._replicas[g].met(key) for g in wanted[peer])
                if fresh and self.me > key:
                    dialer.retry_after(peer, FIRST_DIAL_HOLD * random.uniform(1, 2))
                    continue
            # A running attempt is handed over too: ``want`` is where the dialer ends
            # one that is over (all its dials closed, or timed out) and backs off;
            # skipping busy peers here left such an attempt, and the member, stuck.
            self._want(dialer, peer, now)
            if not running and dialer.busy(peer):
                budget -= 1
        self._held.intersection_update(wanted)
        if now - self._marks_at >= MARKS_EVERY:
            self._marks_at = now
            self.save()

    def _want(self, dialer: Dialer, peer: str, now: float) -> None:
        """Hand what we know about reaching a member to the node's dialer (which dials,
        races paths and backs off exactly as for contacts); ask the DHT when we know
        nothing or the known ways keep failing."""
        nearby = self.node._nearby.get(peer)
        claims = (*self._hints.get(peer, ()), *(nearby.addresses if nearby else ()))
        addresses = []
        for text in dict.fromkeys(claims):
            with contextlib.suppress(ValueError):
                addresses.append(parse_address(text))
        if not addresses or dialer.failures(peer) >= 2:
            self._maybe_resolve(peer, now)
        if addresses:
            dialer.want(peer, Route(addresses=tuple(addresses)), now)

    def _maybe_resolve(self, peer: str, now: float) -> None:
        lookup = self._lookups.setdefault(peer, _Lookup())
        if self.node._dht is None or peer in self._resolving or now < lookup.next_at:
            return
        lookup.next_at = now + lookup.delay
        lookup.delay = min(DHT_RETRY_MAX, lookup.delay * 2)
        self._resolving.add(peer)
        self.node._spawn(self._resolve(peer))

    async def _resolve(self, peer: str) -> None:
        try:
            addresses = await self.node.dht_lookup(peer)
        except Exception as exc:  # a failed lookup only means no hint this time
            log.info("DHT lookup of group member %s failed: %s", peer, exc)
            return
        finally:
            self._resolving.discard(peer)
        if addresses:
            self._learn(peer, addresses[:MAX_HINTS], proven=False)
            if self.node._dialer is not None:
                self.node._dialer.refresh(peer)
            self.node._poke()

    def save(self) -> None:
        """Persist what members told us they hold (delivery counts survive restarts)."""
        for gid in list(self._dirty_marks):
            replica = self._replicas.get(gid)
            if replica is not None:
                self.db.save_marks(gid, replica.peers_known())
        self._dirty_marks.clear()

    # ------------------------------------------------------------- frames
    def frame_received(self, conn: PeerConnection, frame: chat.ChatFrame) -> None:
        """A frame on a group session, or a group frame on a contact's session."""
        if isinstance(frame, chat.FileOffer | chat.FileAccept | chat.FileDecline
                      | chat.FileCancel | chat.FileProgress | chat.FileResult):
            if self.owns(conn) and conn not in self._tentative:
                self._file_frame(conn, frame)
            return
        if not isinstance(frame, GroupSummary | GroupOps | GroupMessages | GroupEnd
                          | GroupHave | GroupInvite | GroupPeers):
            return  # a group session carries nothing else
        try:
            self._group_frame(conn, frame)
        except RemoteProtocolError as exc:
            self._strike(conn, 1, str(exc))

    def _group_frame(self, conn: PeerConnection, frame: GroupFrame) -> None:
        key = conn.peer_key
        assert key is not None
        gid = frame.group_id
        if isinstance(frame, GroupInvite):
            self._on_invite(conn, frame)
            return
        row = self._rows.get(gid)
        if row is None:
            return
        replica = self._replicas.get(gid)
        if isinstance(frame, GroupOps):
            self._on_ops(conn, gid, replica, frame)
            return
        if replica is None or conn in self._tentative:
            return
        if isinstance(frame, GroupPeers):
            # Hints are welcome before we accept an invitation too: we will need them.
            if row.status in ("joined", "invited"):
                self._on_peers(replica, frame)
            return
        if row.status != "joined":
            return
        now = self._mono()
        if isinstance(frame, GroupSummary):
            self._heard.add((gid, key))
            known = replica.known_coverage(key, self.me)
            plan = replica.peer_summary(key, frame.summary, now)
            self._delivery_changed(gid, replica, replica.known_coverage(key, self.me).minus(known))
            self._dirty_marks.add(gid)
            if plan is not None:
                self._send_plan(conn, gid, replica, key, plan)
                self._send_hints(gid, replica, conn)
            if replica.lacks_from(key, frame.summary, now):
                self._ask(gid, replica, key)
        elif isinstance(frame, GroupMessages):
            self._heard.add((gid, key))
            self._on_messages(conn, gid, replica, key, frame)
        elif isinstance(frame, GroupEnd):
            if replica.peer_done(key, frame.more, now):
                self._ask(gid, replica, key)
        elif isinstance(frame, GroupHave):
            self._dirty_marks.add(gid)
            ask = False
            for author, shown in frame.marks:
                known = replica.known_coverage(key, author)
                ask = replica.peer_has(key, author, shown, now) or ask
                if author == self.me:
                    newly = replica.known_coverage(key, author).minus(known)
                    self._delivery_changed(gid, replica, newly)
            if ask:
                self._ask(gid, replica, key)

    def _on_peers(self, replica: GroupReplica, frame: GroupPeers) -> None:
        members = replica.state().members
        for member, addresses in frame.peers[: len(members)]:
            pid = self._pid(member)
            if member in members and member != self.me and addresses:
                if self.node.store.get_contact(pid) is None:
                    self._learn(pid, addresses)
        self.node._poke()

    def _delivery_changed(self, gid: bytes, replica: GroupReplica, newly: SeqSet) -> None:
        """One more member holds these of our messages: tell the UI (for the newest
        ``MAX_DELIVERY_EVENTS`` of them; an acknowledged backlog is not worth more)."""
        seqs = list(newly)[-MAX_DELIVERY_EVENTS:]
        members = len(replica.state().members)
        for m in self.db.messages(gid, [(self.me, seq) for seq in seqs]):
            count = len(replica.delivered_to(self.me, m.seq))
            self.node._emit(GroupDeliveryChanged(gid.hex(), m.id, count, members))

    def _send_plan(
        self, conn: PeerConnection, gid: bytes, replica: GroupReplica, key: bytes, plan: SyncPlan
    ) -> None:
        for ops in op_frames(gid, list(plan.ops)):
            conn.send(ops)
        more = False
        if plan.wants:
            if plan.budget <= 0:
                more = True
            else:
                chosen, more = self.db.select(gid, plan.wants, plan.budget)
                for batch in message_frames(gid, chosen, skips=plan.skips):
                    conn.send(batch)
                replica.spent(key, sum(m.size for m in chosen), self._mono())
                replica.sent(key, [(m.author, m.seq) for m in chosen])
        conn.send(GroupEnd(gid, more))

    def _on_invite(self, conn: PeerConnection, frame: GroupInvite) -> None:
        """Invitations come only from contacts; the operations that follow must make us
        a member, or the invitation is forgotten."""
        peer = conn.peer_id
        if peer is None or self.node._active.get(peer) is not conn:
            return
        gid = frame.group_id
        row = self._rows.get(gid)
        if row is not None:
            if row.status == "invited" and row.inviter != peer:
                self._rows[gid] = self.db.upsert_group(
                    gid, name=row.name, status="invited", inviter=peer, now=self._now()
                )
            return
        pending = sorted(
            (r for r in self._rows.values() if r.status == "invited"), key=lambda r: r.updated_at
        )
        if len(pending) >= MAX_INVITES:
            self._forget(pending[0].id)
        self._rows[gid] = self.db.upsert_group(
            gid, name=frame.name, status="invited", inviter=peer, now=self._now()
        )

    def _forget(self, gid: bytes) -> None:
        self.db.delete(gid)
        self._rows.pop(gid, None)
        self._replicas.pop(gid, None)

    def _on_ops(
        self, conn: PeerConnection, gid: bytes, replica: GroupReplica | None, frame: GroupOps
    ) -> None:
        row = self._rows[gid]
        if replica is None:
            # The rest of an invitation: it must start with the group's create operation
            # and come from the contact who invited us.
            if row.status != "invited" or row.inviter != conn.peer_id:
                return
            try:
                replica = GroupReplica.from_ops(
                    gid, frame.ops, self.me, self.node.identity.sign, limits=self.limits
                )
            except RemoteProtocolError as exc:
                self._strike(conn, 1, f"invitation: {exc}")
                self._forget(gid)
                return
            self._replicas[gid] = replica
            self.db.add_ops(gid, list(replica.membership.ordered()))
            self._invitation_ready(gid, replica)
            return
        before = replica.state()
        receipt = replica.receive_ops(frame.ops)
        bad = [why for why in receipt.invalid if "full" not in why]
        self._strike(conn, len(bad), "; ".join(bad[:3]))
        if not receipt.added:
            return
        self.db.add_ops(gid, receipt.added)
        key = conn.peer_key
        # Pass new operations on to the other online members, and its removal to a
        # member they remove: its remover may have had no session with it, and once
        # removed it is nobody's member to sync with, so it would believe itself in the
        # group until its next summary.
        if row.status == "joined":
            for other in self._online(replica):
                if other != key:
                    for f in op_frames(gid, [op.wire for op in receipt.added]):
                        self._send(other, f)
            state = replica.state()
            removed = {op.target for op in receipt.added if op.is_removal and op.target}
            for member in removed - {key, self.me}:
                if not state.is_member(member):
                    for f in op_frames(gid, list(replica.removal_of(member))):
                        self._send(member, f)
        if receipt.changed:
            self._state_changed(gid, replica, before)
        now = self._mono()
        for peer, plan in replica.deferred_plans(now):
            session = self.session(self._pid(peer))
            if session is not None:
                self._send_plan(session, gid, replica, peer, plan)
        if conn in self._tentative and self._is_member_somewhere(key or b""):
            self._attach(conn)

    def _invitation_ready(self, gid: bytes, replica: GroupReplica) -> None:
        row = self._rows[gid]
        state = replica.state()
        if not state.is_member(self.me):
            self._forget(gid)  # not an invitation for us after all
            return
        self._rows[gid] = self.db.upsert_group(
            gid, name=state.name, status="invited", inviter=row.inviter, now=self._now()
        )
        self.node._emit(
            GroupInviteReceived(
                gid.hex(),
                state.name,
                row.inviter or "",
                tuple(sorted(self._pid(k) for k in state.members)),
            )
        )

    def _state_changed(self, gid: bytes, replica: GroupReplica, before: Any) -> None:
        state = replica.state()
        row = self._rows[gid]
        if state.name != row.name:
            self.db.set_name(gid, state.name)
            self._rows[gid] = self.db.get(gid) or row
        status = row.status
        if status == "joined" and not state.is_member(self.me):
            self._set_status(gid, "removed")
            self._drop_sessions()
            return
        if status in ("left", "declined", "removed") and state.is_member(self.me):
            if not before.is_member(self.me):
                self._set_status(gid, "invited")
                self._invitation_ready(gid, replica)
                return
        if status == "invited" and not state.is_member(self.me):
            self._set_status(gid, "declined")
            return
        self.node._emit(GroupChanged(gid.hex(), self._rows[gid].status))
        if status == "joined":
            self._drop_sessions()
            self.node._poke()

    def _on_messages(
        self, conn: PeerConnection, gid: bytes, replica: GroupReplica, key: bytes,
        frame: GroupMessages,
    ) -> None:
        receipts = replica.receive_batch(list(frame.messages), dict(frame.skips))
        self._strike(
            conn,
            sum(r.verdict == "invalid" for r in receipts),
            next((r.reason for r in receipts if r.verdict == "invalid"), ""),
        )
        fresh = [r.message for r in receipts if r.verdict == "new" and r.message is not None]
        shown = [ref for r in receipts for ref in r.shown]
        dropped = [ref for r in receipts for ref in r.dropped]
        if not fresh and not shown and not dropped:
            if any(r.verdict == "need_ops" for r in receipts):
                self._ask(gid, replica, key)
            return
        shown_set = set(shown)
        fresh_refs = {(m.author, m.seq) for m in fresh}
        touched = {m.author for m in fresh} | {a for a, _ in shown} | {a for a, _ in dropped}
        self.db.apply(
            gid,
            new=[(m, (m.author, m.seq) in shown_set) for m in fresh],
            shown=[ref for ref in shown if ref not in fresh_refs],
            dropped=dropped,
            counters={a: replica.author_state(a)[:3] for a in touched},
            now=self._now(),
        )
        conn.send(  # acknowledge: our new marks for the authors this frame touched
            GroupHave(gid, tuple((a, replica.shown(a)) for a in sorted(touched)))
        )
        if fresh:
            self._push(gid, replica, fresh, source=key, fanout=frame.fanout)
        names: dict[bytes, str] = {}  # one lookup per author, not per message of a backlog
        for m in self.db.messages(gid, shown):
            self.node._emit(GroupMessageReceived(self._message_view(gid, replica, m, names)))
        if any(r.verdict == "need_ops" for r in receipts):
            self._ask(gid, replica, key)
        self._retain(gid, replica, fresh)

    def _retain(
        self, gid: bytes, replica: GroupReplica, added: Sequence[GroupMessage] = ()
    ) -> None:
        """Keep the group within its storage budget.  Usage is counted in memory (read
        from the database once), so a new message costs no scan of the table."""
        usage = self._usage.get(gid)
        if usage is None:
            usage = self.db.usage(gid)
        else:
            usage = (usage[0] + len(added), usage[1] + sum(m.size for m in added))
        self._usage[gid] = usage
        if usage[0] <= self.max_messages and usage[1] <= self.max_bytes:
            return
        dropped = self.db.prune(gid, keep=self.max_messages, max_bytes=self.max_bytes)
        for author, seq in dropped.items():
            replica.dropped(author, seq)
        self._usage[gid] = self.db.usage(gid)

    # --------------------------------------------------------- file drop
    def _file_frame(self, conn: PeerConnection, frame: Any) -> None:
        """File frames on a group session: an offer is taken only if it brings the
        files of a ``files`` message its sender signed in a group we share, under the
        transfer id derived for us; the other frames go to file drop, which checks that
        they concern a transfer with this peer."""
        peer = conn.peer_id
        key = conn.peer_key
        if peer is None or key is None:
            return
        if isinstance(frame, chat.FileOffer):
            # A group's files message carries the hashes, so its offers do too.
            wanted = [(f.path, f.size, f.hash or b"") for f in frame.files]
            if not self._offer_matches(key, frame.id, wanted):
                conn.send(chat.FileDecline(frame.id, "not the files of a group message"))
                return
        self.node.transfers.frame_received(peer, frame)

    def _offer_matches(
        self, sender: bytes, transfer_id: str, files: list[tuple[str, int, bytes]]
    ) -> bool:
        for gid, replica in self._joined():
            if not replica.state().is_member(sender):
                continue
            for m in self.db.of_kind(gid, sender, FILES_KIND):
                if transfer_id_for(m.id, self.me) != transfer_id:
                    continue
                try:
                    return decode_files(m.content) == files
                except RemoteProtocolError:
                    return False
        return False

    # ------------------------------------------------------------- views
    def _message_view(
        self,
        gid: bytes,
        replica: GroupReplica | None,
        m: StoredMessage,
        names: dict[bytes, str] | None = None,
    ) -> GroupMessageView:
        author = self._pid(m.author)
        mine = m.author == self.me
        text: str | None = None
        files: tuple[tuple[str, int], ...] = ()
        transfer: str | None = None
        if m.kind == "text":
            text = m.content.decode("utf-8", "replace")
        elif m.kind == FILES_KIND:
            with contextlib.suppress(RemoteProtocolError):
                files = tuple((p, s) for p, s, _ in decode_files(m.content))
            if not mine:
                tid = transfer_id_for(m.id, self.me)
                transfer = tid if self.node.store.get_transfer(tid) is not None else None
        members = len(replica.state().members) if replica else 0
        delivered = len(replica.delivered_to(m.author, m.seq)) if replica else 0
        return GroupMessageView(
            group_id=gid.hex(),
            message_id=m.id,
            author=author,
            author_name=self._cached_name(m.author, names),
            seq=m.seq,
            clock=m.clock,
            sent_at=m.sent_at,
            received_at=m.received_at,
            kind=m.kind,
            text=text,
            files=files,
            transfer_id=transfer,
            mine=mine,
            delivered=delivered,
            members=members,
        )


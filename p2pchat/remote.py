"""The node already running for a home, driven through its control socket.

One node runs per home; whichever process starts first owns it (the daemon, or
the terminal app), and every other app attaches here.  ``RemoteNode`` offers
the same methods as ``Node`` for everything the app uses, with the same return
types, so the app does not know which one it has.

Calls are synchronous over a blocking Unix socket: the owner answers from
memory and SQLite in about a millisecond, which is cheaper than turning every
UI call into a coroutine.  Events arrive on a second, asynchronous connection
that the owner switches into streaming mode (``{"op": "events"}``).

The owner can go away at any moment (it quits, crashes, is SIGKILLed or
stopped).  Nothing here then raises a socket error: the event stream ends with
``NodeConnectionLost`` the moment its socket closes, every later call raises
``OwnerGone``, and a call the owner does not answer in time (SIGSTOP) raises
``OwnerNotResponding`` after ``CALL_TIMEOUT``.  ``take_over`` (and
``attach_or_own`` for a fresh start) then starts the node in this process, or
attaches to whoever owns the home by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

from p2pchat.atrest import PassphraseChange
from p2pchat.config import NodeAlreadyRunning, NodeLock, Paths, load_settings
from p2pchat.core import events as events_module
from p2pchat.core.events import NodeConnectionLost, NodeEvent, PeerOffline, PeerOnline
from p2pchat.core.group import events as group_events
from p2pchat.core.group.errors import GroupError, UnknownGroup
from p2pchat.core.group.events import (
    GroupMemberView,
    GroupMessageReceived,
    GroupMessageView,
    GroupView,
)
from p2pchat.identity import InvalidInvite, InvalidPeerId, WrongPassphrase
from p2pchat.names import InvalidName
from p2pchat.node import (
    SEARCH_LIMIT,
    TRANSFER_PAGE_SIZE,
    ContactView,
    NearbyPeer,
    Node,
    NodeError,
)
from p2pchat.owner import start_owned
from p2pchat.store import (
    AmbiguousContact,
    BlockedPeer,
    Contact,
    ContactExists,
    ContactRequest,
    DatabaseBusy,
    Message,
    StoreError,
    Transfer,
    TransferFile,
    UnknownContact,
)

CONNECT_TIMEOUT = 2.0
CALL_TIMEOUT = 3.0
# After a call timed out, calls fail at once for this long instead of each
# freezing the caller again; then the next call tries the owner afresh.
QUIET_AFTER_TIMEOUT = 2.0
TAKE_OVER_WAIT = 10.0

_ERRORS: dict[str, Callable[[str], Exception]] = {
    "UnknownContact": UnknownContact,
    "AmbiguousContact": AmbiguousContact,
    "ContactExists": ContactExists,
    "StoreError": StoreError,
    "InvalidInvite": InvalidInvite,
    "InvalidPeerId": InvalidPeerId,
    "InvalidName": InvalidName,
    "ValueError": ValueError,
    "WrongPassphrase": WrongPassphrase,
    "DatabaseBusy": DatabaseBusy,
    "GroupError": GroupError,
    "UnknownGroup": UnknownGroup,
}


class RemoteError(NodeError):
    """The running node refused or failed the request."""


class OwnerUnavailable(NodeError):
    """The process that owns the node cannot be reached (see the subclasses)."""


class OwnerGone(OwnerUnavailable):
    """The owner closed its control socket or is not there any more."""


class OwnerNotResponding(OwnerUnavailable):
    """The owner accepted the connection but did not answer in time (stopped, hung)."""


@dataclass(frozen=True, slots=True)
class _IdentityView:
    peer_id: str
    fingerprint: str


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _build(cls: type[Any], data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: _tuples(v) for k, v in data.items() if k in names})


def _transfer(data: dict[str, Any]) -> Transfer:
    files = tuple(
        _build(TransferFile, {**f, "hash": bytes.fromhex(f["hash"])}) for f in data["files"]
    )
    return _build(Transfer, {**data, "files": files})  # type: ignore[no-any-return]


class _Transfers:
    """``node.transfers`` as far as the app uses it."""

    def __init__(self, node: RemoteNode) -> None:
        self._node = node

    def progress(self, transfer_id: str) -> tuple[int, int] | None:
        result = self._node._call("progress", id=transfer_id)
        return (int(result[0]), int(result[1])) if result else None


class _Groups:
    """``node.groups`` as far as the app uses it, carried out by the owner."""

    def __init__(self, node: RemoteNode) -> None:
        self._node = node

    def _view(self, op: str, **args: Any) -> GroupView:
        return _build(GroupView, self._node._call(op, **args))  # type: ignore[no-any-return]

    def all(self) -> list[GroupView]:
        return [_build(GroupView, g) for g in self._node._call("groups")]

    def get(self, ref: str) -> GroupView:
        return self._view("group", group=ref)

    def invites(self) -> list[GroupView]:
        return [g for g in self.all() if g.status == "invited"]

    def members(self, ref: str) -> list[GroupMemberView]:
        return [_build(GroupMemberView, m) for m in self._node._call("group_members", group=ref)]

    def history(self, ref: str, *, limit: int | None = None) -> list[GroupMessageView]:
        found = self._node._call("group_history", group=ref, limit=limit)
        return [_build(GroupMessageView, m) for m in found]

    def create(self, name: str, members: Iterable[str] = ()) -> GroupView:
        return self._view("group_create", name=name, members=list(members))

    def add_member(self, ref: str, contact: str, *, admin: bool = False) -> GroupView:
        return self._view("group_add", group=ref, contact=contact, admin=admin)

    def remove_member(self, ref: str, member: str) -> GroupView:
        return self._view("group_remove", group=ref, member=member)

    def promote(self, ref: str, member: str) -> GroupView:
        return self._view("group_promote", group=ref, member=member)

    def rename(self, ref: str, name: str) -> GroupView:
        return self._view("group_rename", group=ref, name=name)

    def leave(self, ref: str) -> GroupView:
        return self._view("group_leave", group=ref)

    def accept(self, ref: str) -> GroupView:
        return self._view("group_accept", group=ref)

    def decline(self, ref: str) -> None:
        self._node._call("group_decline", group=ref)

    def send(self, ref: str, text: str) -> GroupMessageView:
        result = self._node._call("group_msg", group=ref, text=text, wait=0)
        return _build(GroupMessageView, result["message"])  # type: ignore[no-any-return]

    def mark_read(self, ref: str) -> None:
        self._node._call("group_read", group=ref)


class _Line:
    """One blocking request/answer connection to the control socket."""

    def __init__(self, path: Path, timeout: float | None) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(path))
        except TimeoutError:
            sock.close()
            raise OwnerNotResponding("the running node does not accept connections") from None
        except OSError as exc:
            sock.close()
            raise OwnerGone(f"no node answers on {path}: {exc.strerror or exc}") from None
        sock.settimeout(timeout)
        self.sock = sock
        self.file: BinaryIO = sock.makefile("rb")

    def call(self, op: str, args: dict[str, Any]) -> Any:
        """One request and its answer; socket trouble becomes ``OwnerUnavailable``."""
        try:
            self.sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
            line = self.file.readline()
        except TimeoutError:
            raise OwnerNotResponding(
                "the running node did not answer in time (is it stopped?)"
            ) from None
        except OSError as exc:
            raise OwnerGone(f"the running node went away ({exc.strerror or exc})") from None
        if not line:
            raise OwnerGone("the running node closed the connection")
        try:
            reply = json.loads(line)
        except ValueError:
            raise RemoteError("the running node sent a malformed answer") from None
        if not isinstance(reply, dict):
            raise RemoteError("the running node sent a malformed answer")
        if not reply.get("ok"):
            kind, message = str(reply.get("kind")), str(reply.get("error"))
            raise _ERRORS.get(kind, RemoteError)(message)
        return reply.get("result")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class RemoteNode:
    def __init__(
        self,
        paths: Paths,
        *,
        clock: Callable[[], float] = time.time,
        call_timeout: float = CALL_TIMEOUT,
    ) -> None:
        self.paths = paths
        self.clock = clock
        self.call_timeout = call_timeout
        self.settings: dict[str, Any] = load_settings(paths)
        self.running = False
        self.transfers = _Transfers(self)
        self.groups = _Groups(self)
        self.lost: str | None = None
        """Why the owner went away (set once ``NodeConnectionLost`` was seen), else None."""
        self._line: _Line | None = None
        self._quiet_until = 0.0
        self._info: dict[str, Any] = {}
        self._online: set[str] = set()
        self.streaming = asyncio.Event()
        """Set once an ``events()`` stream is subscribed at the owner: every event from
        then on reaches it (a view waits on this before acting on what it will hear)."""

    # ------------------------------------------------------------ plumbing
    async def start(self, **_options: Any) -> None:
        """Attach; the owner already has its network options.

        Raises ``OwnerGone`` when no node answers, ``OwnerNotResponding`` when
        one holds the socket but stays silent for ``call_timeout``.
        """
        self._info = self._call("info")
        self._online = set(self._info.get("online", []))
        self.running = True

    async def stop(self) -> None:
        """Detach (the owner keeps running)."""
        self.running = False
        line, self._line = self._line, None
        if line is not None:
            line.close()

    def _call(self, op: str, **args: Any) -> Any:
        if self.lost is not None:
            raise OwnerGone(f"the node's owner went away: {self.lost}")
        if time.monotonic() < self._quiet_until:
            raise OwnerNotResponding("the running node is not answering (is it stopped?)")
        try:
            if self._line is None:
                self._line = _Line(self.paths.control_socket, self.call_timeout)
            return self._line.call(op, args)
        except OwnerUnavailable as exc:
            # The stream may be out of step now (an answer may still come): start over.
            if self._line is not None:
                self._line.close()
                self._line = None
            if isinstance(exc, OwnerNotResponding):
                self._quiet_until = time.monotonic() + QUIET_AFTER_TIMEOUT
            raise

    def _call_fresh(self, op: str, **args: Any) -> Any:
        """A call on its own connection with no time limit, for slow operations run
        off the loop (hashing files to offer)."""
        if self.lost is not None:
            raise OwnerGone(f"the node's owner went away: {self.lost}")
        line = _Line(self.paths.control_socket, None)
        try:
            return line.call(op, args)
        finally:
            line.close()

    def events(self) -> AsyncGenerator[NodeEvent, None]:
        """The owner's events; ends with ``NodeConnectionLost`` when the owner goes."""

        async def stream() -> AsyncGenerator[NodeEvent, None]:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(str(self.paths.control_socket), limit=1 << 22),
                    CONNECT_TIMEOUT,
                )
            except (OSError, TimeoutError) as exc:
                yield self._lose(f"cannot reach the node's owner: {exc or 'timeout'}")
                return
            reason = "the node's owner closed the connection"
            try:
                writer.write(b'{"op": "events"}\n')
                await writer.drain()
                await reader.readline()  # {"ok": true, "result": "streaming"}
                # Who is online, read again now that no change can be missed: a session
                # that came up between ``start`` and this subscription sent its
                # PeerOnline to nobody.  Events queued meanwhile are applied after
                # this, in order, and end in the same state.
                with contextlib.suppress(OwnerUnavailable, RemoteError):
                    self._online = set(self._call("info").get("online", []))
                self.streaming.set()
                while line := await reader.readline():
                    try:
                        event = self._event(json.loads(line))
                    except (ValueError, TypeError, KeyError):
                        continue  # one event this version cannot read, not a lost owner
                    if event is not None:
                        yield event
            except (OSError, ValueError) as exc:  # ValueError: an over-long line
                reason = f"the connection to the node's owner failed: {exc}"
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            yield self._lose(reason)

        return stream()

    def _lose(self, reason: str) -> NodeConnectionLost:
        self.lost = reason
        self.running = False
        self.streaming.clear()
        self._online.clear()
        return NodeConnectionLost(reason)

    async def take_over(
        self, *, passphrase: str | None = None, wait: float = TAKE_OVER_WAIT, **start_options: Any
    ) -> Node | RemoteNode:
        """After the owner went away: run the node here, or attach to its new owner.

        Detaches this view, then ``attach_or_own`` (see there). ``start_options``
        go to ``Node.start`` if the node starts here; a sealed identity needs
        ``passphrase`` (``PassphraseRequired``/``WrongPassphrase`` otherwise,
        from ``p2pchat.identity``).
        """
        await self.stop()
        return await attach_or_own(
            self.paths, passphrase=passphrase, clock=self.clock, wait=wait, **start_options
        )

    def _event(self, data: dict[str, Any]) -> NodeEvent | None:
        kind = str(data.pop("type", ""))
        cls = getattr(events_module, kind, None) or getattr(group_events, kind, None)
        if not (isinstance(cls, type) and issubclass(cls, NodeEvent)):
            return None  # a newer owner's event this version does not know
        if cls is GroupMessageReceived:
            data = {**data, "message": _build(GroupMessageView, data.get("message") or {})}
        event: NodeEvent = _build(cls, data)
        if isinstance(event, PeerOnline):
            self._online.add(event.peer_id)
        elif isinstance(event, PeerOffline):
            self._online.discard(event.peer_id)
        return event

    # ------------------------------------------------------------ identity
    @property
    def peer_id(self) -> str:
        return str(self._info.get("peer_id", ""))

    @property
    def name(self) -> str:
        return str(self._info.get("name", ""))

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(self._info.get("addresses", ()))

    @property
    def identity(self) -> _IdentityView:
        return _IdentityView(self.peer_id, str(self._info.get("fingerprint", "")))

    def info(self) -> dict[str, Any]:
        self._info = self._call("info")
        return self._info

    def network_status(self) -> dict[str, Any]:
        return dict(self._call("network_status"))

    def invite(self, *, one_time: bool = False) -> str:
        return str(self._call("invite", one_time=one_time))

    def set_name(self, name: str) -> str:
        result = str(self._call("set_name", name=name))
        self._info["name"] = result
        return result

    def update_settings(self, **values: Any) -> None:
        self.settings = dict(self._call("update_settings", values=values))

    # ------------------------------------------------------------ contacts
    def contacts(self) -> list[ContactView]:
        return [_build(ContactView, c) for c in self._call("contacts")]

    def requests(self) -> list[ContactRequest]:
        return [_build(ContactRequest, r) for r in self._call("requests")]

    def nearby(self) -> list[NearbyPeer]:
        return [_build(NearbyPeer, p) for p in self._call("nearby")]

    def is_online(self, peer_id: str) -> bool:
        return peer_id in self._online

    def find_contact(self, ref: str) -> Contact:
        return _build(Contact, self._call("find_contact", ref=ref))  # type: ignore[no-any-return]

    def add_contact(
        self, ref: str, *, name: str | None = None, addresses: Iterable[str] = ()
    ) -> Contact:
        result = self._call("add", ref=ref, name=name, addresses=list(addresses))
        return _build(Contact, result)  # type: ignore[no-any-return]

    def accept_request(self, ref: str, *, name: str | None = None) -> Contact:
        return _build(Contact, self._call("accept", ref=ref, name=name))  # type: ignore[no-any-return]

    def decline_request(self, ref: str) -> None:
        self._call("decline", ref=ref)

    def remove_contact(self, ref: str) -> Contact:
        return _build(Contact, self._call("remove", contact=ref))  # type: ignore[no-any-return]

    def block(self, ref: str) -> BlockedPeer:
        return _build(BlockedPeer, self._call("block", ref=ref))  # type: ignore[no-any-return]

    def unblock(self, ref: str) -> BlockedPeer:
        return _build(BlockedPeer, self._call("unblock", ref=ref))  # type: ignore[no-any-return]

    def blocked(self) -> list[BlockedPeer]:
        return [_build(BlockedPeer, b) for b in self._call("blocked")]

    def is_blocked(self, peer_id: str) -> bool:
        return any(b.peer_id == peer_id for b in self.blocked())

    def set_muted(self, ref: str, muted: bool = True) -> Contact:
        return _build(Contact, self._call("mute", contact=ref, muted=muted))  # type: ignore[no-any-return]

    def rename_contact(self, ref: str, name: str) -> Contact:
        return _build(Contact, self._call("rename", contact=ref, name=name))  # type: ignore[no-any-return]

    def verify_contact(self, ref: str, verified: bool = True) -> Contact:
        result = self._call("verify", contact=ref, verified=verified)
        return _build(Contact, result["contact"])  # type: ignore[no-any-return]

    def safety_number(self, ref: str) -> str:
        return str(self._call("safety_number", contact=ref))

    # ------------------------------------------------------------ messages
    def history(
        self, contact: str, *, limit: int | None = None, before: str | None = None
    ) -> list[Message]:
        found = self._call("history", contact=contact, limit=limit, before=before)
        return [_build(Message, m) for m in found]

    def search(
        self, text: str, *, contact: str | None = None, limit: int = SEARCH_LIMIT
    ) -> list[Message]:
        found = self._call("search", text=text, contact=contact, limit=limit)
        return [_build(Message, m) for m in found]

    def send_message(self, contact: str, text: str, *, reply_to: str | None = None) -> Message:
        result = self._call("send", contact=contact, text=text, wait=0, reply_to=reply_to)
        return _build(Message, result["message"])  # type: ignore[no-any-return]

    def edit_message(self, ref: str, text: str) -> Message:
        return _build(Message, self._call("edit", id=ref, text=text))  # type: ignore[no-any-return]

    def delete_message(self, ref: str) -> Message:
        return _build(Message, self._call("delete", id=ref))  # type: ignore[no-any-return]

    def get_message(self, message_id: str, *, contact: str | None = None) -> Message | None:
        found = self._call("message", id=message_id, contact=contact)
        return None if found is None else _build(Message, found)

    def find_message(self, ref: str, *, contact: str | None = None) -> Message:
        found = self.get_message(ref, contact=contact)
        if found is None:
            raise RemoteError(f"no single message with id {ref!r}")
        return found

    def set_typing(self, contact: str, active: bool) -> None:
        self._call("typing", contact=contact, active=active)

    def mark_read(self, contact: str) -> int:
        return int(self._call("mark_read", contact=contact))

    def view_state(self, key: str) -> str | None:
        value = self._call("view_state", key=key)
        return None if value is None else str(value)

    def set_view_state(self, key: str, value: str | None) -> None:
        self._call("set_view_state", key=key, value=value)

    async def change_passphrase(self, old: str | None, new: str | None) -> PassphraseChange:
        """Carried out by the owner, which holds the database (``Node.change_passphrase``)."""

        def call() -> Any:
            return self._call_fresh("passphrase", old=old, new=new)

        # Argon2id and a copy of the whole database: no time limit, off the loop.
        result = await asyncio.get_running_loop().run_in_executor(None, call)
        return _build(PassphraseChange, result)  # type: ignore[no-any-return]

    # ------------------------------------------------------------ files
    async def offer_files(self, contact: str, paths: Iterable[Path]) -> Transfer:
        loop = asyncio.get_running_loop()
        wanted = list(paths)

        def call() -> Any:
            files = [str(Path(p).expanduser().absolute()) for p in wanted]
            return self._call_fresh("send_files", contact=contact, paths=files)

        # Hashing large files takes the daemon a while: do not block the app meanwhile.
        return _transfer(await loop.run_in_executor(None, call))

    def list_transfers(
        self,
        contact: str | None = None,
        *,
        limit: int = TRANSFER_PAGE_SIZE,
        before: str | None = None,
    ) -> list[Transfer]:
        page = self._call("transfers", contact=contact, limit=limit, before=before)
        return [_transfer(t) for t in page]

    def get_transfer(self, transfer_id: str) -> Transfer:
        return _transfer(self._call("transfer", id=transfer_id))

    def accept_transfer(
        self, transfer_id: str, *, only: list[int] | None = None, folder: Path | None = None
    ) -> Transfer:
        result = self._call(
            "accept_file", id=transfer_id, only=only, folder=str(folder) if folder else None
        )
        return _transfer(result)

    def decline_transfer(self, transfer_id: str, reason: str = "declined") -> None:
        self._call("decline_file", id=transfer_id)

    def cancel_transfer(self, transfer_id: str) -> None:
        self._call("cancel_file", id=transfer_id)

    def running_transfers(self) -> list[Transfer]:
        return [_transfer(t) for t in self._call("running_transfers")]

    def pending_offers(self, contact: str | None = None) -> list[Transfer]:
        return [_transfer(t) for t in self._call("pending_offers", contact=contact)]


async def attach_or_own(
    paths: Paths,
    *,
    passphrase: str | None = None,
    clock: Callable[[], float] = time.time,
    wait: float = TAKE_OVER_WAIT,
    **start_options: Any,
) -> Node | RemoteNode:
    """The home's node: started here (with its control socket) if nobody owns it,
    else a ``RemoteNode`` attached to its owner.

    Two views racing for a free home both end up right: the loser of the lock
    attaches to the winner.  An owner that is starting up or shutting down holds
    the lock without answering for a moment, so this retries for ``wait``
    seconds before raising ``OwnerNotResponding`` or ``OwnerGone``.  Opening the
    identity runs Argon2id for a sealed key, in a thread.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    lock = NodeLock(paths)
    while True:
        error: OwnerUnavailable
        if not lock.is_held_elsewhere():
            node = await asyncio.to_thread(Node, paths, passphrase=passphrase, clock=clock)
            try:
                await start_owned(node, **start_options)
            except NodeAlreadyRunning:
                await node.stop()
                error = OwnerGone("another process took the node meanwhile")
            except BaseException:
                await node.stop()
                raise
            else:
                return node
        else:
            remote = RemoteNode(paths, clock=clock)
            try:
                await remote.start()
            except OwnerUnavailable as exc:
                error = exc
            else:
                return remote
        if loop.time() >= deadline:
            raise error
        await asyncio.sleep(0.1)

"""The node already running for a home, driven through its control socket.

``p2pchat`` (the terminal app) attaches to a running ``p2pchat daemon`` instead of
refusing to start.  ``RemoteNode`` offers the same methods as ``Node`` for
everything the app uses, with the same return types, so the app does not know
which one it has.

Calls are synchronous over a blocking Unix socket: the daemon answers from memory
and SQLite in about a millisecond, which is cheaper than turning every UI call into
a coroutine.  Events arrive on a second, asynchronous connection that the daemon
switches into streaming mode (``{"op": "events"}``).
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

from p2pchat.config import Paths, load_settings
from p2pchat.core import events as events_module
from p2pchat.core.events import NodeEvent, PeerOffline, PeerOnline
from p2pchat.identity import InvalidInvite, InvalidPeerId
from p2pchat.names import InvalidName
from p2pchat.node import TRANSFER_PAGE_SIZE, ContactView, NearbyPeer, NodeError
from p2pchat.store import (
    AmbiguousContact,
    Contact,
    ContactExists,
    ContactRequest,
    Message,
    StoreError,
    Transfer,
    TransferFile,
    UnknownContact,
)

_ERRORS: dict[str, Callable[[str], Exception]] = {
    "UnknownContact": UnknownContact,
    "AmbiguousContact": AmbiguousContact,
    "ContactExists": ContactExists,
    "StoreError": StoreError,
    "InvalidInvite": InvalidInvite,
    "InvalidPeerId": InvalidPeerId,
    "InvalidName": InvalidName,
    "ValueError": ValueError,
}


class RemoteError(NodeError):
    """The running node refused or failed the request."""


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


class RemoteNode:
    def __init__(self, paths: Paths, *, clock: Callable[[], float] = time.time) -> None:
        self.paths = paths
        self.clock = clock
        self.settings: dict[str, Any] = load_settings(paths)
        self.running = False
        self.transfers = _Transfers(self)
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None
        self._info: dict[str, Any] = {}
        self._online: set[str] = set()

    # ------------------------------------------------------------ plumbing
    async def start(self, **_options: Any) -> None:
        """Attach; the daemon already has its network options."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        try:
            sock.connect(str(self.paths.control_socket))
        except OSError as exc:
            sock.close()
            raise RemoteError(f"the running node does not answer: {exc}") from exc
        self._sock = sock
        self._file = sock.makefile("rb")
        self._info = self._call("info")
        self._online = set(self._info.get("online", []))
        self.running = True

    async def stop(self) -> None:
        """Detach (the daemon keeps running)."""
        self.running = False
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _call(self, op: str, **args: Any) -> Any:
        if self._sock is None or self._file is None:
            raise RemoteError("not attached to a running node")
        self._sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        line = self._file.readline()
        if not line:
            raise RemoteError("the running node closed the control socket")
        reply = json.loads(line)
        if not reply.get("ok"):
            kind, message = str(reply.get("kind")), str(reply.get("error"))
            raise _ERRORS.get(kind, RemoteError)(message)
        return reply.get("result")

    def events(self) -> AsyncGenerator[NodeEvent, None]:
        async def stream() -> AsyncGenerator[NodeEvent, None]:
            reader, writer = await asyncio.open_unix_connection(
                str(self.paths.control_socket), limit=1 << 22
            )
            try:
                writer.write(b'{"op": "events"}\n')
                await writer.drain()
                await reader.readline()  # {"ok": true, "result": "streaming"}
                while line := await reader.readline():
                    event = self._event(json.loads(line))
                    if event is not None:
                        yield event
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

        return stream()

    def _event(self, data: dict[str, Any]) -> NodeEvent | None:
        cls = getattr(events_module, str(data.pop("type", "")), None)
        if not (isinstance(cls, type) and issubclass(cls, NodeEvent)):
            return None  # a newer daemon's event this version does not know
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

    def rename_contact(self, ref: str, name: str) -> Contact:
        return _build(Contact, self._call("rename", contact=ref, name=name))  # type: ignore[no-any-return]

    def verify_contact(self, ref: str, verified: bool = True) -> Contact:
        result = self._call("verify", contact=ref, verified=verified)
        return _build(Contact, result["contact"])  # type: ignore[no-any-return]

    def safety_number(self, ref: str) -> str:
        return str(self._call("safety_number", contact=ref))

    # ------------------------------------------------------------ messages
    def history(self, contact: str, *, limit: int | None = None) -> list[Message]:
        return [_build(Message, m) for m in self._call("history", contact=contact, limit=limit)]

    def send_message(self, contact: str, text: str) -> Message:
        result = self._call("send", contact=contact, text=text, wait=0)
        return _build(Message, result["message"])  # type: ignore[no-any-return]

    def set_typing(self, contact: str, active: bool) -> None:
        self._call("typing", contact=contact, active=active)

    def mark_read(self, contact: str) -> int:
        return int(self._call("mark_read", contact=contact))

    # ------------------------------------------------------------ files
    async def offer_files(self, contact: str, paths: Iterable[Path]) -> Transfer:
        loop = asyncio.get_running_loop()
        wanted = list(paths)

        def call() -> Any:
            files = [str(Path(p).expanduser().absolute()) for p in wanted]
            return self._call_fresh("send_files", contact=contact, paths=files)

        # Hashing large files takes the daemon a while: do not block the app meanwhile.
        return _transfer(await loop.run_in_executor(None, call))

    def _call_fresh(self, op: str, **args: Any) -> Any:
        """A call on its own connection, for slow operations run off the loop."""
        other = RemoteNode(self.paths)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.paths.control_socket))
        other._sock, other._file = sock, sock.makefile("rb")
        try:
            return other._call(op, **args)
        finally:
            other._file.close()
            sock.close()

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

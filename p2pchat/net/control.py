"""The local control socket: how ``p2pchat msg`` reaches the node already running.

A Unix socket in the state folder, created owner-only (umask 0177, then
chmod 0600) in a 0700 folder, and every connecting process is checked with
``SO_PEERCRED`` so another local user cannot drive the node even if the
permissions were loosened.  One JSON object per line each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2pchat.node import Node

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20


class ControlError(Exception):
    """The running node answered with an error (carries its kind for exit codes)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ControlServer:
    def __init__(self, path: Path, node: Node) -> None:
        self.path = path
        self.node = node
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        # We hold the home's lock, so a socket file left here is stale.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            if not _same_user(writer):
                return
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    break
                if not line:
                    break
                if line.strip() == b'{"op": "events"}':
                    await self._stream_events(reader, writer)
                    break
                writer.write(json.dumps(await self._handle(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()

    async def _stream_events(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Turn this connection into the node's event stream (an attached UI's view).

        Ends when the client hangs up; a client that stops reading is dropped once
        the socket buffer fills instead of holding events in memory forever.
        """
        from p2pchat import rpc

        events = self.node.events()
        writer.write(b'{"ok": true, "result": "streaming"}\n')
        hangup = asyncio.ensure_future(reader.read())
        try:
            while not hangup.done():
                next_event = asyncio.ensure_future(anext(events))
                done, _ = await asyncio.wait(
                    {next_event, hangup}, return_when=asyncio.FIRST_COMPLETED
                )
                if next_event not in done:
                    next_event.cancel()
                    break
                writer.write(json.dumps(rpc.event_to_json(next_event.result())).encode() + b"\n")
                await asyncio.wait_for(writer.drain(), 10)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            hangup.cancel()
            await events.aclose()

    async def _handle(self, line: bytes) -> dict[str, Any]:
        from p2pchat import rpc  # rpc imports node, which imports this module

        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError("request must be an object with an 'op'")
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise ValueError("'args' must be an object")
            result = await rpc.call(self.node, request["op"], args)
        except Exception as exc:  # reported to the client, never fatal to the node
            return {"ok": False, "error": str(exc), "kind": type(exc).__name__}
        return {"ok": True, "result": result}


def _same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


class ControlClient:
    """Talks to the running node; same ``call`` signature as ``rpc.call``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_unix_connection(
            str(self.path), limit=64 * MAX_REQUEST
        )

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        assert self._reader is not None and self._writer is not None
        self._writer.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
        await self._writer.drain()
        line = await self._reader.readline()
        if not line:
            raise ControlError("the running node closed the control socket", "ControlError")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error")), str(reply.get("kind")))
        return reply.get("result")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()

"""The local control socket: how other processes reach the node that owns a home.

A Unix socket in the state folder, created owner-only (umask 0177, then
chmod 0600) in a 0700 folder, and every connecting process is checked with
``SO_PEERCRED`` so another local user cannot drive the node even if the
permissions were loosened.  One JSON object per line each way.

This module knows nothing of the node: the process that owns the node (the
daemon, or the app that started first; see ``p2pchat/owner.py``) hands the
server a request handler and an event source.  That keeps ``net/`` below the
facade: nothing here imports ``p2pchat.node`` or ``p2pchat.rpc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from p2pchat.net.control_client import CALL_TIMEOUT as CALL_TIMEOUT
from p2pchat.net.control_client import CONNECT_TIMEOUT as CONNECT_TIMEOUT
from p2pchat.net.control_client import MAX_REPLY as MAX_REPLY
from p2pchat.net.control_client import MAX_REQUEST as MAX_REQUEST
from p2pchat.net.control_client import ControlError as ControlError
from p2pchat.net.control_client import ControlUnavailable as ControlUnavailable
from p2pchat.net.control_client import (
    decode_reply,
    encode_request,
    not_accepting,
    unanswered,
)

log = logging.getLogger(__name__)

# A streaming client that stops reading is dropped after this long instead of
# making the owner hold its events in memory.
STREAM_DRAIN_TIMEOUT = 10.0
ACCEPT_DRAIN = 0.05

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""Runs one operation and returns its JSON-ready result (or raises)."""
EventSource = Callable[[], AsyncIterator[dict[str, Any]]]
"""A fresh subscription to the owner's events, each one a JSON-ready object."""


class ControlServer:
    """Serves ``handler`` to owner-only clients; ``{"op": "events"}`` streams ``events``."""

    def __init__(self, path: Path, handler: Handler, events: EventSource | None = None) -> None:
        self.path = path
        self.handler = handler
        self.events = events
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self._closing = False

    async def start(self) -> None:
        # The owner holds the home's lock, so a socket file left here is stale.
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
        """Close the socket and every client connection: attached views see EOF now."""
        self._closing = True
        if self._server is not None:
            # Unlink first: no new client can connect.  Then let the loop accept what
            # is already queued (those connections are closed at once, ``_closing``):
            # asyncio 3.11 leaks, open and silent, a connection it accepts after
            # ``Server.close()``, and the client would wait on it forever.
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            await asyncio.sleep(ACCEPT_DRAIN)
            self._server.close()
            while self._clients:
                for task in list(self._clients):
                    task.cancel()
                for task in list(self._clients):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                    self._clients.discard(task)
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            if self._closing or not _same_user(writer):
                return
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    break
                if not line:
                    break
                request = _parse(line)
                if isinstance(request, tuple) and request[0] == "events" and self.events:
                    await self._stream_events(reader, writer)
                    break
                writer.write(json.dumps(await self._handle(request)).encode() + b"\n")
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
        """Turn this connection into the owner's event stream (an attached view).

        Ends when the client hangs up; a client that stops reading is dropped once
        the socket buffer fills instead of holding events in memory forever.
        """
        assert self.events is not None
        events = self.events()
        writer.write(b'{"ok": true, "result": "streaming"}\n')
        hangup = asyncio.ensure_future(reader.read())
        next_event: asyncio.Future[dict[str, Any]] | None = None
        try:
            while not hangup.done():
                next_event = asyncio.ensure_future(anext(events))
                done, _ = await asyncio.wait(
                    {next_event, hangup}, return_when=asyncio.FIRST_COMPLETED
                )
                if next_event not in done:
                    break
                writer.write(json.dumps(next_event.result()).encode() + b"\n")
                next_event = None
                async with asyncio.timeout(STREAM_DRAIN_TIMEOUT):
                    await writer.drain()
        except (ConnectionError, TimeoutError, StopAsyncIteration):
            pass
        finally:
            hangup.cancel()
            if next_event is not None and not next_event.done():
                # The generator is suspended inside this task: end it there first.
                next_event.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await next_event
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _handle(self, request: tuple[str, dict[str, Any]] | Exception) -> dict[str, Any]:
        try:
            if isinstance(request, Exception):
                raise request
            result = await self.handler(*request)
        except Exception as exc:  # reported to the client, never fatal to the owner
            return {"ok": False, "error": str(exc), "kind": type(exc).__name__}
        return {"ok": True, "result": result}


def _parse(line: bytes) -> tuple[str, dict[str, Any]] | Exception:
    try:
        request = json.loads(line)
    except ValueError as exc:
        return ValueError(f"request is not JSON: {exc}")
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        return ValueError("request must be an object with an 'op'")
    args = request.get("args") or {}
    if not isinstance(args, dict):
        return ValueError("'args' must be an object")
    return request["op"], args


def _same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


class ControlClient:
    """Talks to the running node; same ``call`` signature as ``rpc.call``.

    For processes that run an event loop anyway (the app's attached view, tests,
    benchmarks); a CLI command uses ``control_client.BlockingControlClient``.

    Connecting and every call are bounded (``timeout``; an operation that waits
    on purpose, like ``msg --wait``, passes its own): an owner that was stopped
    with SIGSTOP makes the call fail with ``ControlUnavailable`` instead of
    hanging the caller.
    """

    def __init__(self, path: Path, *, timeout: float = CALL_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.path), limit=MAX_REPLY),
                CONNECT_TIMEOUT,
            )
        except TimeoutError:
            raise not_accepting(self.path) from None

    async def call(self, op: str, args: dict[str, Any], *, timeout: float | None = None) -> Any:
        if self._reader is None or self._writer is None:
            raise ControlUnavailable("not connected to the running node")
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                self._writer.write(encode_request(op, args))
                await self._writer.drain()
                line = await self._reader.readline()
        except TimeoutError:
            await self.close()
            raise unanswered(limit) from None
        except (ConnectionError, OSError) as exc:
            await self.close()
            raise ControlUnavailable(f"the running node went away: {exc}") from exc
        if not line:
            await self.close()
        return decode_reply(line)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
